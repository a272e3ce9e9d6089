//! `echo-client`: connects to an echo server, sends standard input, and writes
//! the echo to standard output.
//!
//! Only wiring: arguments, logging, [`netcore::connect`], then one of two
//! modes over `echo-proto`:
//! - lines (the default on a terminal): each line is sent, its whole echo read
//!   back and printed before the next line is read;
//! - stream (the default otherwise): standard input is streamed to the server
//!   while the echo is streamed to standard output, concurrently, so input of
//!   any size goes through without deadlock.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use echo_proto::{EchoError, Totals};
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

    /// Give up connecting after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
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
    let timeout = Duration::from_secs(args.connect_timeout.max(1));
    let stream = netcore::connect(&args.host, args.port, Some(timeout))?;
    let server = stream.peer_addr()?;
    tracing::info!("connected to {server} from {}", stream.local_addr()?);
    // Lines are request/response: send each one at once (no Nagle delay).
    stream.set_nodelay(true)?;
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let lines = match args.mode {
        Mode::Lines => true,
        Mode::Stream => false,
        Mode::Auto => io::stdin().is_terminal(),
    };
    let totals = if lines {
        send_lines(&stream, server, io::stdin().lock(), stdout)
    } else {
        send_stream(&stream, server, stdout)
    }?;
    tracing::debug!(sent = totals.sent, received = totals.received, "done");
    Ok(())
}

/// Why a session ended badly; each variant is one line for the user.
#[derive(Debug)]
enum Failure {
    /// Reading standard input failed.
    Input(io::Error),
    /// Writing standard output failed.
    Output(io::Error),
    /// The connection failed (reset, timeout, …).
    Connection { server: SocketAddr, source: io::Error },
    /// The server closed before echoing everything; `sent` is `None` when
    /// input was still coming.
    Closed { server: SocketAddr, sent: Option<u64>, echoed: u64 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input(err) => write!(f, "cannot read standard input: {err}"),
            Self::Output(err) => write!(f, "cannot write standard output: {err}"),
            Self::Connection { server, source } => {
                write!(f, "connection to {server} failed: {source}")
            }
            Self::Closed { server, sent: Some(sent), echoed } => write!(
                f,
                "server {server} closed the connection after echoing {echoed} of {sent} bytes"
            ),
            Self::Closed { server, sent: None, echoed } => write!(
                f,
                "server {server} closed the connection before all input was sent \
                 ({echoed} bytes echoed)"
            ),
        }
    }
}

impl Error for Failure {}

/// Which side of a copy is the socket, to tell whose fault an error is.
#[derive(Clone, Copy)]
enum Socket {
    /// Copying from the socket to standard output.
    IsReader,
    /// Copying from standard input to the socket.
    IsWriter,
}

impl Failure {
    fn from_copy(err: EchoError, socket: Socket, server: SocketAddr) -> Self {
        let connection = |source| Self::Connection { server, source };
        match (err, socket) {
            (EchoError::Read { source, .. }, Socket::IsReader)
            | (EchoError::Write { source, .. }, Socket::IsWriter) => connection(source),
            (EchoError::Read { source, .. }, Socket::IsWriter) => Self::Input(source),
            (EchoError::Write { source, .. }, Socket::IsReader) => Self::Output(source),
            (other, _) => connection(io::Error::other(other.to_string())),
        }
    }
}

/// Sends one line at a time and prints each echo once all of it is back. At
/// end of input, shuts down the sending side and prints whatever still comes.
fn send_lines(
    stream: &TcpStream,
    server: SocketAddr,
    mut input: impl BufRead,
    mut output: File,
) -> Result<Totals, Failure> {
    let mut totals = Totals::default();
    let mut line = Vec::new();
    let mut reply = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(Failure::Input)? == 0 {
            break;
        }
        match echo_proto::round_trip(stream, &line, &mut reply) {
            Ok(()) => {}
            Err(EchoError::Closed { expected, got }) => {
                let (sent, echoed) = (totals.sent + expected as u64, totals.received + got as u64);
                output.write_all(&reply).map_err(Failure::Output)?;
                return Err(Failure::Closed { server, sent: Some(sent), echoed });
            }
            Err(err) => return Err(Failure::from_copy(err, Socket::IsReader, server)),
        }
        totals.sent += line.len() as u64;
        totals.received += reply.len() as u64;
        output.write_all(&reply).map_err(Failure::Output)?;
    }
    // End of input: tell the server, then drain until it closes its side.
    let _ = stream.shutdown(Shutdown::Write);
    let rest = echo_proto::relay(stream, output)
        .map_err(|err| Failure::from_copy(err, Socket::IsReader, server))?;
    totals.received += rest.received;
    Ok(totals)
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
        .map_err(|err| Failure::from_copy(err, Socket::IsReader, server))?
        .received;
    let Ok(sent) = sender.try_recv() else {
        // The server closed while input was still coming: say so now rather
        // than wait for input that may never end.
        return Err(Failure::Closed { server, sent: None, echoed: received });
    };
    let sent = sent.map_err(|err| Failure::from_copy(err, Socket::IsWriter, server))?.received;
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
