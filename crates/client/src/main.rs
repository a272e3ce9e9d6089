//! `echo-client`: connects to an echo server, sends standard input, and writes
//! the echo to standard output.
//!
//! Only wiring: arguments, logging, [`netcore::connect`], then one of two
//! modes over `echo-proto`:
//! - lines (the default on a terminal): each line is sent, its whole echo read
//!   back and printed before the next line goes out; a server that closes is
//!   noticed at once, even while the user is typing;
//! - stream (the default otherwise): standard input is streamed to the server
//!   while the echo is streamed to standard output, concurrently, so input of
//!   any size goes through without deadlock.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use echo_proto::{BUFFER_SIZE, EchoError, Totals};
use tracing_subscriber::EnvFilter;

/// Sends standard input to an echo server and prints what comes back.
///
/// On a terminal, each line typed is sent and its echo printed; Ctrl-D ends.
/// With standard input from a pipe or file, all of it is streamed and the echo
/// written to standard output byte for byte.
#[derive(Debug, Parser)]
#[command(name = "echo-client", version)]
struct Args {
    /// Server: an IPv4 or IPv6 address, or a host name.
    host: String,

    /// Server's TCP port.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// How to send standard input: `lines` waits for each line's echo,
    /// `stream` sends and receives concurrently; `auto` picks `lines` on a
    /// terminal and `stream` otherwise.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,

    /// Give up on each of the server's addresses after this many seconds
    /// (name resolution not included).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    connect_timeout: u64,

    /// Log more (-v, -vv) to standard error.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Log only errors.
    #[arg(short, long)]
    quiet: bool,
}

/// See [`Args::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Auto,
    Lines,
    Stream,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(match (args.quiet, args.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    });
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let timeout = Duration::from_secs(args.connect_timeout);
    let stream = netcore::connect(&args.host, args.port, Some(timeout))?;
    let target = format!("{} port {}", args.host, args.port);
    let setup = |source| Failure::Setup { target: target.clone(), source };
    let server = stream.peer_addr().map_err(setup)?;
    tracing::info!("connected to {server} from {}", stream.local_addr().map_err(setup)?);
    // Lines are request/response: send each one at once (no Nagle delay).
    stream.set_nodelay(true).map_err(setup)?;
    // Standard output unbuffered, written in whole pieces as they arrive.
    let stdout = io::stdout().as_fd().try_clone_to_owned().map_err(Failure::Output)?;
    let lines = match args.mode {
        Mode::Lines => true,
        Mode::Stream => false,
        Mode::Auto => io::stdin().is_terminal(),
    };
    let totals = if lines {
        send_lines(&stream, server, File::from(stdout))
    } else {
        send_stream(&stream, server, File::from(stdout))
    }?;
    tracing::debug!(sent = totals.sent, received = totals.received, "done");
    Ok(())
}

/// Why a session ended badly; each variant is one line for the user.
#[derive(Debug)]
enum Failure {
    /// Setting up the connection failed after it was made.
    Setup { target: String, source: io::Error },
    /// Reading standard input failed.
    Input(io::Error),
    /// Writing standard output failed.
    Output(io::Error),
    /// The connection failed (reset, timeout, …).
    Connection { server: SocketAddr, source: io::Error },
    /// The server closed before echoing everything; `sent` is `None` when
    /// it is not known how much input went out.
    Closed { server: SocketAddr, sent: Option<u64>, echoed: u64 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup { target, source } => write!(f, "connection to {target} failed: {source}"),
            Self::Input(err) => write!(f, "cannot read standard input: {err}"),
            Self::Output(err) => write!(f, "cannot write standard output: {err}"),
            Self::Connection { server, source } => {
                write!(f, "connection to {server} failed: {source}")
            }
            Self::Closed { server, sent: Some(sent), echoed } if echoed < sent => write!(
                f,
                "server {server} closed the connection after echoing {echoed} of {sent} bytes"
            ),
            Self::Closed { server, sent: Some(_), echoed } => {
                write!(f, "server {server} closed the connection ({echoed} bytes echoed)")
            }
            Self::Closed { server, sent: None, echoed } => write!(
                f,
                "server {server} closed the connection before all input was sent \
                 ({echoed} bytes echoed)"
            ),
        }
    }
}

impl Error for Failure {}

impl Failure {
    /// Sorts a copy's failure: the socket's side is the connection's fault,
    /// the other side is standard input's or output's.
    fn from_copy(err: EchoError, socket_reads: bool, server: SocketAddr) -> Self {
        match (err, socket_reads) {
            (EchoError::Read { source, .. }, true) | (EchoError::Write { source, .. }, false) => {
                Self::Connection { server, source }
            }
            (EchoError::Read { source, .. }, false) => Self::Input(source),
            (EchoError::Write { source, .. }, true) => Self::Output(source),
            (other, _) => Self::Connection { server, source: io::Error::other(other.to_string()) },
        }
    }
}

/// What the helper threads of lines mode report to the main thread.
#[derive(Debug)]
enum Event {
    /// A line of input, or a piece of at most [`BUFFER_SIZE`] bytes of a
    /// longer one; empty at end of input.
    Input(io::Result<Vec<u8>>),
    /// Bytes from the server; empty when it has closed.
    Echo(io::Result<Vec<u8>>),
    /// The writer thread finished sending a piece (or shutting down the
    /// sending side).
    Sent(io::Result<()>),
}

/// Lines mode. Three helper threads (one reading input, one reading from the
/// server, one writing to it) report to this one, which only ever waits for
/// their events: each piece is handed to the writer once the previous piece's
/// echo is all back, and that echo is printed whole. Never blocking on the
/// terminal or the socket is what lets a server that closes be reported while
/// the user is still typing, and keeps a server that misbehaves (sends without
/// reading) from wedging the client. Input is read one piece ahead at most.
/// At end of input the sending side is shut down and the rest drained.
fn send_lines(stream: &TcpStream, server: SocketAddr, mut output: File) -> Result<Totals, Failure> {
    let connection = |source| Failure::Connection { server, source };
    let (events, inbox) = mpsc::sync_channel(16);
    // None of the helpers is joined: one may be blocked in a read or a write
    // when the session ends, and ending the process ends it.
    let (go_ahead, next_piece) = mpsc::sync_channel::<()>(1);
    let input_events = events.clone();
    std::thread::spawn(move || {
        let mut input = io::stdin().lock();
        let read = |piece: &mut Vec<u8>| {
            // Bounded pieces: a huge "line" costs at most BUFFER_SIZE of memory.
            input.by_ref().take(BUFFER_SIZE as u64).read_until(b'\n', piece)
        };
        // The next piece is read only once this one has been handed over.
        forward_pieces(&input_events, Event::Input, read, || next_piece.recv().is_ok());
    });
    let from_server = stream.try_clone().map_err(connection)?;
    let echo_events = events.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0; BUFFER_SIZE];
        let read = |piece: &mut Vec<u8>| {
            let n = (&from_server).read(&mut buf)?;
            piece.extend_from_slice(&buf[..n]);
            Ok(n)
        };
        forward_pieces(&echo_events, Event::Echo, read, || true);
    });
    let to_server = stream.try_clone().map_err(connection)?;
    let (writer, pieces) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        // `None` asks for the sending side to be shut down.
        for piece in pieces {
            let sent = match piece {
                Some(piece) => (&to_server).write_all(&piece),
                None => to_server.shutdown(Shutdown::Write),
            };
            let failed = sent.is_err();
            if events.send(Event::Sent(sent)).is_err() || failed {
                return;
            }
        }
    });

    let mut totals = Totals::default();
    let mut queued = None; // the next piece, read ahead
    let mut due = 0; // echo bytes still expected for the piece last sent
    let mut echo = Vec::new();
    let (mut writing, mut input_done, mut shut_down) = (false, false, false);
    // The helpers hold senders until they end, and the server's reader always
    // reports its end, so the loop ends by returning, never by a closed channel.
    while let Ok(event) = inbox.recv() {
        match event {
            Event::Input(Ok(piece)) if piece.is_empty() => input_done = true,
            Event::Input(Ok(piece)) => queued = Some(piece),
            Event::Input(Err(err)) => return Err(Failure::Input(err)),
            Event::Echo(Ok(bytes)) if bytes.is_empty() => {
                output.write_all(&echo).map_err(Failure::Output)?;
                let finished = input_done && queued.is_none() && due == 0;
                return if finished {
                    Ok(totals)
                } else {
                    Err(Failure::Closed {
                        server,
                        sent: Some(totals.sent),
                        echoed: totals.received,
                    })
                };
            }
            Event::Echo(Ok(bytes)) => {
                totals.received += bytes.len() as u64;
                echo.extend_from_slice(&bytes);
                if echo.len() >= due {
                    output.write_all(&echo).map_err(Failure::Output)?;
                    echo.clear();
                    due = 0;
                }
            }
            Event::Echo(Err(err)) | Event::Sent(Err(err)) => return Err(connection(err)),
            Event::Sent(Ok(())) => writing = false,
        }
        if due > 0 || writing {
            continue;
        }
        if let Some(piece) = queued.take() {
            totals.sent += piece.len() as u64;
            due = piece.len();
            writing = writer.send(Some(piece)).is_ok();
            let _ = go_ahead.try_send(());
        } else if input_done && !shut_down {
            // End of input: tell the server, then drain until it closes.
            writing = writer.send(None).is_ok();
            shut_down = true;
        }
    }
    Err(connection(io::Error::other("the helper threads ended unexpectedly")))
}

/// Reads pieces with `read` (which appends to the buffer it is given and
/// returns how much) and sends each as an event, retrying interruptions, until
/// end of input (sent as an empty piece), an error, nobody listening, or
/// `proceed` saying no before the next piece.
fn forward_pieces(
    events: &mpsc::SyncSender<Event>,
    wrap: fn(io::Result<Vec<u8>>) -> Event,
    mut read: impl FnMut(&mut Vec<u8>) -> io::Result<usize>,
    mut proceed: impl FnMut() -> bool,
) {
    loop {
        let mut piece = Vec::new();
        let result = match read(&mut piece) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            result => result.map(|_| piece),
        };
        let last = !matches!(&result, Ok(piece) if !piece.is_empty());
        if events.send(wrap(result)).is_err() || last || !proceed() {
            return;
        }
    }
}

/// Streams standard input to the server on one thread while the echo streams
/// to `output` on this one. At end of input the sending side is shut down; the
/// server then finishes echoing and closes, which ends the receiving side.
fn send_stream(stream: &TcpStream, server: SocketAddr, output: File) -> Result<Totals, Failure> {
    let to_server = stream.try_clone().map_err(|source| Failure::Connection { server, source })?;
    let (done, sender) = mpsc::sync_channel(1);
    // Not a scoped thread: if the server closes early, this thread may be stuck
    // reading input that never ends, and must not be waited for.
    std::thread::spawn(move || {
        let sent = echo_proto::relay(io::stdin().lock(), &to_server);
        // Report before the shutdown: the server's close, and so our EOF, can
        // only come after it, so the receiving side always finds the report.
        let _ = done.send(sent);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let received = echo_proto::relay(stream, output)
        .map_err(|err| Failure::from_copy(err, true, server))?
        .received;
    // The report normally waits here already; the short wait covers a server
    // that closed on its own just as input ended.
    let Ok(sent) = sender.recv_timeout(Duration::from_millis(100)) else {
        // The server closed while input was still coming: say so now rather
        // than wait for input that may never end.
        return Err(Failure::Closed { server, sent: None, echoed: received });
    };
    let sent = sent.map_err(|err| Failure::from_copy(err, false, server))?.received;
    if received < sent {
        return Err(Failure::Closed { server, sent: Some(sent), echoed: received });
    }
    Ok(Totals { sent, received })
}

/// Sets up logging to stderr (stdout carries the echo), `level` unless
/// `RUST_LOG` says otherwise.
fn init_tracing(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
}

/// An error and its causes on one line.
fn chain(err: &(dyn Error + 'static)) -> String {
    let causes = std::iter::successors(Some(err), |&e| e.source()).map(ToString::to_string);
    causes.collect::<Vec<_>>().join(": ")
}
