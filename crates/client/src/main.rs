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
//!
//! In both, `--timeout` bounds every wait on the server (see `watch`), a
//! reader of standard output that goes away ends the session quietly, and
//! every other failure is one line on stderr and exit status 1.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod help;
mod watch;

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use echo_proto::{BUFFER_SIZE, EchoError, Totals};
use netcore::NetError;
use tracing_subscriber::EnvFilter;

use crate::watch::{Ledger, Output, Stalled, Waiting, Watched};

/// Sends standard input to an echo server and prints what comes back.
///
/// On a terminal, each line typed is sent and its echo printed; Ctrl-D ends.
/// With standard input from a pipe or file, all of it is streamed and the echo
/// written to standard output byte for byte.
#[derive(Debug, Parser)]
#[command(name = "echo-client", version, after_long_help = manual::help(help::SECTIONS))]
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
    /// (name resolution not included); decimals allowed, at least 0.001.
    #[arg(long, value_name = "SECS", default_value = "10",
          value_parser = watch::parse_connect_timeout)]
    connect_timeout: Duration,

    /// Give up once the server has kept the client waiting this many seconds
    /// without progress: taking none of a write, owing an echo, or not
    /// closing after the end of input. Waiting for standard input, or for
    /// standard output to take the echo, does not count. Decimals allowed, at
    /// least 0.001; 0 = no timeout.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = watch::parse_timeout)]
    timeout: Duration,

    /// Health probe for monitoring: connect, send a random token, check that
    /// exactly the token comes back, print the times on standard output, and
    /// exit 0, or 1 with the reason. `--timeout` bounds the whole probe (and
    /// is then required to be more than 0). Standard input is not read.
    /// Example: `echo-client --check --timeout 2 db1.example.org 7`.
    #[arg(long, conflicts_with = "mode")]
    check: bool,

    /// Log more (-v, -vv) to standard error.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Log only errors.
    #[arg(short, long)]
    quiet: bool,

    /// Write this manual as a man page (`man`) or shell completions (`bash`,
    /// `zsh`, `fish`) to standard output, and exit. Example: `echo-client
    /// --generate man > /usr/local/share/man/man1/echo-client.1`.
    #[arg(long, value_name = "KIND", value_enum, exclusive = true)]
    generate: Option<manual::Generate>,
}

/// See [`Args::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Auto,
    Lines,
    Stream,
}

/// `--generate KIND`: the manual or the completions on standard output.
fn generate(kind: manual::Generate) -> ExitCode {
    use clap::CommandFactory;
    match manual::generate(kind, Args::command(), help::SECTIONS, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot write the {} output: {err}", kind.name());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // `--generate` stands alone, without the HOST and PORT every other use
    // requires: when it is there, a lenient parse finds it first.
    let asked =
        std::env::args_os().skip(1).any(|arg| arg.to_string_lossy().starts_with("--generate"));
    if asked {
        let early = <Args as clap::CommandFactory>::command().ignore_errors(true).get_matches();
        if let Some(&kind) = early.get_one::<manual::Generate>("generate") {
            return generate(kind);
        }
    }
    let args = Args::parse();
    init_tracing(match (args.quiet, args.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    });
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the echo went away (`| head`): nobody wants the rest,
        // so stop, quietly and successfully, as a filter does.
        Err(Failure::Output(err)) if err.kind() == io::ErrorKind::BrokenPipe => {
            tracing::debug!("standard output closed by its reader: stopping");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    if args.check {
        return check(args);
    }
    let (stream, server) = netcore::connect(&args.host, args.port, Some(args.connect_timeout))
        .map_err(Failure::connect)?;
    let connection = |source| Failure::connection(server, source);
    // A reset that arrived as the connection was made is pending on the
    // socket: report it as such, before anything can mistake it for a close.
    if let Some(err) = stream.take_error().map_err(connection)? {
        return Err(connection(err));
    }
    tracing::info!("connected to {server} from {}", stream.local_addr().map_err(connection)?);
    // Lines are request/response: send each one at once (no Nagle delay).
    stream.set_nodelay(true).map_err(connection)?;
    // Standard output unbuffered, written in whole pieces as they arrive.
    let stdout = io::stdout().as_fd().try_clone_to_owned().map_err(Failure::Output)?;
    let lines = match args.mode {
        Mode::Lines => true,
        Mode::Stream => false,
        Mode::Auto => io::stdin().is_terminal(),
    };
    let timeout = Some(args.timeout).filter(|limit| !limit.is_zero());
    let totals = if lines {
        send_lines(&stream, server, File::from(stdout), timeout)
    } else {
        send_stream(&stream, server, File::from(stdout), timeout)
    }?;
    tracing::debug!(sent = totals.sent, received = totals.received, "done");
    Ok(())
}

/// `--check`: one round trip of a random token within `--timeout`; prints
/// `ok SERVER: connected in T ms, echoed N bytes in T ms`.
fn check(args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let limit = Some(args.timeout).filter(|limit| !limit.is_zero()).ok_or(Failure::NoLimit)?;
    let (stream, server) =
        netcore::connect(&args.host, args.port, Some(args.connect_timeout.min(limit)))
            .map_err(Failure::connect)?;
    let connected = started.elapsed();
    let connection = |source| Failure::connection(server, source);
    if let Some(err) = stream.take_error().map_err(connection)? {
        return Err(connection(err));
    }
    stream.set_nodelay(true).map_err(connection)?;
    // One deadline for the whole probe: each write and each read may wait
    // only for what is left of it, so a server that trickles its echo a byte
    // at a time is cut off at the limit, not at 33 times it.
    let deadline = started + limit;
    let late = |received| Failure::ProbeTimedOut { server, limit, received };
    let timed_out =
        |err: &io::Error| matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let token = token();
    let sent_at = Instant::now();
    stream.set_write_timeout(Some(left().ok_or(late(0))?)).map_err(connection)?;
    (&stream).write_all(&token).map_err(
        |err| {
            if timed_out(&err) { late(0) } else { connection(err) }
        },
    )?;
    let mut reply = vec![0; token.len()];
    let mut received = 0;
    while received < token.len() {
        let wait = left().ok_or(late(received as u64))?;
        stream.set_read_timeout(Some(wait)).map_err(connection)?;
        match (&stream).read(&mut reply[received..]) {
            Ok(0) => {
                let (sent, received) = (Some(token.len() as u64), received as u64);
                return Err(Failure::Closed { server, sent, received });
            }
            Ok(n) => received += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if timed_out(&err) => return Err(late(received as u64)),
            Err(err) => return Err(connection(err)),
        }
    }
    let round_trip = sent_at.elapsed();
    if reply != token {
        return Err(Failure::WrongEcho { server, bytes: token.len() });
    }
    let millis = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "ok {server}: connected in {:.3} ms, echoed {} bytes in {:.3} ms",
        millis(connected),
        token.len(),
        millis(round_trip)
    );
    Ok(())
}

/// 32 random hexadecimal digits and a newline: a line any echo server
/// handles, and one a stale or canned reply cannot match.
fn token() -> Vec<u8> {
    use std::hash::BuildHasher;
    // Each `RandomState` is keyed from the OS's random source (per thread,
    // then varied per instance), so two hashes make 128 unpredictable bits.
    let state = std::collections::hash_map::RandomState::new();
    let (high, low) = (state.hash_one(std::process::id()), state.hash_one(Instant::now()));
    format!("{high:016x}{low:016x}\n").into_bytes()
}

/// Why a session ended badly; each variant is one line for the user.
#[derive(Debug)]
enum Failure {
    /// No connection could be made.
    Connect(NetError),
    /// Reading standard input failed.
    Input(io::Error),
    /// Writing standard output failed.
    Output(io::Error),
    /// The connection failed (a broken pipe, a kernel timeout, …).
    Connection { server: SocketAddr, source: io::Error },
    /// The server reset the connection, possibly as soon as it was made.
    Reset { server: SocketAddr },
    /// The server kept the client waiting for the whole `--timeout`.
    TimedOut { server: SocketAddr, stalled: Stalled },
    /// The server closed before echoing everything; `sent` is `None` when
    /// it is not known how much input went out.
    Closed { server: SocketAddr, sent: Option<u64>, received: u64 },
    /// `--check`: the server sent back something other than the token.
    WrongEcho { server: SocketAddr, bytes: usize },
    /// `--check` with `--timeout 0`: a probe must have a limit.
    NoLimit,
    /// `--check`: the token's echo was not all back within the limit.
    ProbeTimedOut { server: SocketAddr, limit: Duration, received: u64 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(err) => write!(f, "{err}"),
            Self::Input(err) => write!(f, "cannot read standard input: {err}"),
            Self::Output(err) => write!(f, "cannot write standard output: {err}"),
            Self::Connection { server, source } => {
                write!(f, "connection to {server} failed: {source}")
            }
            Self::Reset { server } => write!(f, "connection reset by the server {server}"),
            Self::TimedOut { server, stalled } => write!(f, "server {server} timed out: {stalled}"),
            Self::Closed { server, sent: Some(sent), received } if received < sent => write!(
                f,
                "server {server} closed the connection before echoing everything \
                 (sent {sent} bytes, received {received})"
            ),
            Self::Closed { server, sent: Some(sent), received } => write!(
                f,
                "server {server} closed the connection (sent {sent} bytes, received {received})"
            ),
            Self::Closed { server, sent: None, received } => write!(
                f,
                "server {server} closed the connection before all input was sent \
                 (received {received} bytes)"
            ),
            Self::WrongEcho { server, bytes } => {
                write!(f, "server {server} sent back something other than the {bytes} bytes sent")
            }
            Self::NoLimit => write!(f, "--check needs a --timeout of more than 0"),
            Self::ProbeTimedOut { server, limit, received } => write!(
                f,
                "server {server} did not echo the token within {} s (received {received} bytes)",
                limit.as_secs_f64()
            ),
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            // The message is the library's; its causes follow it.
            Self::Connect(err) => err.source(),
            _ => None,
        }
    }
}

impl Failure {
    /// A failure to connect; a reset means the server was reached, and is
    /// reported as what it is.
    fn connect(err: NetError) -> Self {
        match err {
            NetError::Reset { addr, .. } => Self::Reset { server: addr },
            other => Self::Connect(other),
        }
    }

    /// A failure of the connection to `server`, sorted: a reset, a timeout
    /// of ours, or anything else.
    fn connection(server: SocketAddr, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::ConnectionReset {
            return Self::Reset { server };
        }
        match Stalled::from_io(&source) {
            Some(stalled) => Self::TimedOut { server, stalled },
            None => Self::Connection { server, source },
        }
    }

    /// Sorts a copy's failure: the socket's side is the connection's fault,
    /// the other side is standard input's or output's.
    fn from_copy(err: EchoError, socket_reads: bool, server: SocketAddr) -> Self {
        match (err, socket_reads) {
            (EchoError::Read { source, .. }, true) | (EchoError::Write { source, .. }, false) => {
                Self::connection(server, source)
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
///
/// With a `timeout`, this thread gives up when it has waited that long for
/// the server without an event from it: a piece's write to finish, an echo
/// owed, or the close after the end of input.
fn send_lines(
    stream: &TcpStream,
    server: SocketAddr,
    mut output: File,
    timeout: Option<Duration>,
) -> Result<Totals, Failure> {
    let connection = |source| Failure::connection(server, source);
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
    // When the server last did something (or came to owe something).
    let mut since = Instant::now();
    loop {
        // The helpers hold senders until they end, and the server's reader
        // always reports its end, so the loop never finds the channel closed.
        let waiting = writing || due > 0 || shut_down;
        let event = match timeout.filter(|_| waiting) {
            Some(limit) => match inbox.recv_timeout(limit.saturating_sub(since.elapsed())) {
                Ok(event) => event,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let waiting = match (writing, due) {
                        (true, _) => Waiting::Write,
                        (false, 1..) => Waiting::Echo,
                        (false, 0) => Waiting::Close,
                    };
                    let (sent, received) = (totals.sent, totals.received);
                    let stalled = Stalled { waiting, after: limit, sent, received };
                    return Err(Failure::TimedOut { server, stalled });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match inbox.recv() {
                Ok(event) => event,
                Err(mpsc::RecvError) => break,
            },
        };
        match event {
            Event::Input(Ok(piece)) if piece.is_empty() => input_done = true,
            Event::Input(Ok(piece)) => queued = Some(piece),
            Event::Input(Err(err)) => return Err(Failure::Input(err)),
            Event::Echo(Ok(bytes)) if bytes.is_empty() => {
                output.write_all(&echo).map_err(Failure::Output)?;
                let finished = input_done && queued.is_none() && due == 0;
                if finished {
                    return Ok(totals);
                }
                let closed =
                    Failure::Closed { server, sent: Some(totals.sent), received: totals.received };
                return Err(prefer_reset(closed, &inbox, server));
            }
            Event::Echo(Ok(bytes)) => {
                totals.received += bytes.len() as u64;
                echo.extend_from_slice(&bytes);
                if echo.len() >= due {
                    output.write_all(&echo).map_err(Failure::Output)?;
                    echo.clear();
                    due = 0;
                }
                since = Instant::now();
            }
            Event::Echo(Err(err)) | Event::Sent(Err(err)) => {
                return Err(prefer_reset(connection(err), &inbox, server));
            }
            Event::Sent(Ok(())) => {
                writing = false;
                since = Instant::now();
            }
        }
        if due > 0 || writing {
            continue;
        }
        if let Some(piece) = queued.take() {
            totals.sent += piece.len() as u64;
            due = piece.len();
            writing = writer.send(Some(piece)).is_ok();
            let _ = go_ahead.try_send(());
            since = Instant::now();
        } else if input_done && !shut_down {
            // End of input: tell the server, then drain until it closes.
            writing = writer.send(None).is_ok();
            shut_down = true;
            since = Instant::now();
        }
    }
    Err(connection(io::Error::other("the helper threads ended unexpectedly")))
}

/// `failure`, or a reset that another helper thread reports within a moment:
/// of two threads using a connection that is reset, only the first learns of
/// the reset; the other sees its aftermath, an end of file or a broken pipe,
/// and may well report first.
fn prefer_reset(failure: Failure, inbox: &mpsc::Receiver<Event>, server: SocketAddr) -> Failure {
    if matches!(failure, Failure::Reset { .. }) {
        return failure;
    }
    let deadline = Instant::now() + Duration::from_millis(100);
    while let Ok(event) = inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        match event {
            Event::Echo(Err(err)) | Event::Sent(Err(err))
                if err.kind() == io::ErrorKind::ConnectionReset =>
            {
                return Failure::Reset { server };
            }
            _ => {}
        }
    }
    failure
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
///
/// With a `timeout`, both sides go through the [`Ledger`]: a read or write
/// that the server holds up for that long ends the session.
fn send_stream(
    stream: &TcpStream,
    server: SocketAddr,
    output: File,
    timeout: Option<Duration>,
) -> Result<Totals, Failure> {
    let connection = |source| Failure::connection(server, source);
    let ledger = Arc::new(Ledger::new(timeout));
    ledger.arm(stream).map_err(connection)?;
    let to_server = stream.try_clone().map_err(connection)?;
    let (done, sender) = mpsc::sync_channel(1);
    let sending = Arc::clone(&ledger);
    // Not a scoped thread: if the server closes early, this thread may be stuck
    // reading input that never ends, and must not be waited for.
    std::thread::spawn(move || {
        let sent = echo_proto::relay(io::stdin().lock(), Watched::new(&to_server, &sending));
        if sent.is_ok() {
            sending.input_ended();
        }
        // After a failure, end the receiving side too: the failure is the news.
        let how = if sent.is_ok() { Shutdown::Write } else { Shutdown::Both };
        // Report before the shutdown: the server's close, and so our EOF, can
        // only come after it, so the receiving side always finds the report.
        let _ = done.send(sent);
        let _ = to_server.shutdown(how);
    });
    let received = echo_proto::relay(Watched::new(stream, &ledger), Output::new(output, &ledger))
        .map_err(|err| Failure::from_copy(err, true, server))?
        .received;
    // The report normally waits here already; the short wait covers a server
    // that closed on its own just as input ended.
    let Ok(sent) = sender.recv_timeout(Duration::from_millis(100)) else {
        // The server closed while input was still coming: say so now rather
        // than wait for input that may never end.
        return Err(Failure::Closed { server, sent: None, received });
    };
    let sent = sent.map_err(|err| Failure::from_copy(err, false, server))?.received;
    if received < sent {
        return Err(Failure::Closed { server, sent: Some(sent), received });
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

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7);

    #[test]
    fn connection_failures_are_sorted() {
        let reset = Failure::connection(SERVER, io::ErrorKind::ConnectionReset.into());
        assert_eq!(reset.to_string(), "connection reset by the server 127.0.0.1:7");
        let stalled = Stalled {
            waiting: Waiting::Write,
            after: Duration::from_secs(2),
            sent: 9,
            received: 4,
        };
        let ours = io::Error::new(io::ErrorKind::TimedOut, stalled);
        assert_eq!(
            Failure::connection(SERVER, ours).to_string(),
            "server 127.0.0.1:7 timed out: took no data for 2 s (sent 9 bytes, received 4)"
        );
        // The kernel's own timeout is not ours: it keeps its words.
        let kernel = Failure::connection(SERVER, io::Error::from_raw_os_error(110));
        assert!(matches!(kernel, Failure::Connection { .. }), "{kernel:?}");
        let reset = NetError::Reset { addr: SERVER, source: io::ErrorKind::ConnectionReset.into() };
        assert!(matches!(Failure::connect(reset), Failure::Reset { server: SERVER }));
    }

    #[test]
    fn a_reset_another_thread_saw_is_preferred_to_its_aftermath() {
        let closed = || Failure::Closed { server: SERVER, sent: Some(6), received: 0 };
        let (events, inbox) = mpsc::sync_channel(4);
        events.send(Event::Input(Ok(b"more\n".to_vec()))).unwrap();
        events.send(Event::Sent(Err(io::ErrorKind::ConnectionReset.into()))).unwrap();
        assert!(matches!(prefer_reset(closed(), &inbox, SERVER), Failure::Reset { .. }));
        // Nothing else to say within a moment: the failure stands.
        events.send(Event::Sent(Err(io::ErrorKind::BrokenPipe.into()))).unwrap();
        let started = Instant::now();
        assert!(matches!(prefer_reset(closed(), &inbox, SERVER), Failure::Closed { .. }));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
