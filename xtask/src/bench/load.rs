//! The bench's load generator: plain blocking loopback sockets driven from
//! std threads, every byte that comes back compared with what was sent.
//!
//! - short connections (connrate with several workers, latency with one):
//!   connect, send [`MESSAGE`] bytes, read them back, shut down the sending
//!   side, wait for the server's close; the latency is that whole exchange;
//! - ping-pong: one connection with `TCP_NODELAY`, [`MESSAGE`]-byte round
//!   trips back to back;
//! - bulk: connections that each stream a fixed amount through a writer
//!   thread while a reader thread checks the echo;
//! - held connections: opened with a verified round trip, kept, then
//!   finished with another round trip and a clean close.
//!
//! Every connect, read and write is bounded by [`HANG`] and every loop by a
//! count and a deadline, so a server that stops answering makes an error,
//! never a hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::rng::Rng;
use crate::wire::close_cleanly;

/// The longest any single connect, read or write may take: beyond it the
/// server is taken to be hung.
pub(super) const HANG: Duration = Duration::from_secs(10);

/// Bytes in each short connection's and each ping-pong round trip.
pub(super) const MESSAGE: usize = 64;

/// The most bytes one read or write of a bulk stream moves.
const CHUNK: usize = 64 * 1024;

/// The period of the bulk payload: a little over 1 MiB and a multiple of no
/// power of two, so chunk boundaries fall elsewhere in each period and a
/// repeated or skipped chunk shows.
const PERIOD: usize = (1 << 20) + 4099;

/// `connect(2)` to `server`, bounded by [`HANG`], with reads and writes
/// bounded by [`HANG`] too.
///
/// # Errors
/// When a step fails; the error names it.
fn connect(server: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&server, HANG).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(HANG)).map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    stream.set_write_timeout(Some(HANG)).map_err(|e| format!("SO_SNDTIMEO: {e}"))?;
    Ok(stream)
}

/// The index of the first byte where `got` differs from `expected`, if any.
fn first_difference(expected: &[u8], got: &[u8]) -> Option<usize> {
    if expected == got {
        return None;
    }
    Some(
        expected.iter().zip(got).position(|(a, b)| a != b).unwrap_or(expected.len().min(got.len())),
    )
}

/// Writes `message`, reads back as many bytes into `echo` and compares them.
///
/// # Errors
/// On an I/O error (a timeout means the server hung) or a different echo.
fn round_trip(stream: &mut TcpStream, message: &[u8], echo: &mut [u8]) -> Result<(), String> {
    stream.write_all(message).map_err(|e| format!("write: {e}"))?;
    read_echo(stream, message, echo)
}

/// Reads `message`'s echo into `echo` and checks it byte for byte.
fn read_echo(stream: &mut TcpStream, message: &[u8], echo: &mut [u8]) -> Result<(), String> {
    let echo = &mut echo[..message.len()];
    stream.read_exact(echo).map_err(|e| format!("reading the echo: {e}"))?;
    match first_difference(message, echo) {
        None => Ok(()),
        Some(at) => Err(format!("echo differs at byte {at} of {}: corrupted", message.len())),
    }
}

/// One short connection with payload `message`: connect, round trip, clean
/// close. Returns how long the whole exchange took, from before `connect`
/// to the server's close.
///
/// # Errors
/// As [`round_trip`] and [`close_cleanly`].
fn short_connection(server: SocketAddr, message: &[u8], proxy: bool) -> Result<Duration, String> {
    let mut echo = [0; MESSAGE];
    let started = Instant::now();
    let mut stream = connect(server)?;
    if proxy {
        // As a balancer would: the client's address (a documentation prefix,
        // the connection's own port) in the same segment as the payload.
        let local = stream.local_addr().map_err(|e| format!("local address: {e}"))?;
        let (ip, port) = (server.ip(), server.port());
        let header = format!("PROXY TCP4 192.0.2.1 {ip} {} {port}\r\n", local.port());
        let mut first = header.into_bytes();
        first.extend_from_slice(message);
        stream.write_all(&first).map_err(|e| format!("write: {e}"))?;
        read_echo(&mut stream, message, &mut echo)?;
    } else {
        round_trip(&mut stream, message, &mut echo)?;
    }
    close_cleanly(&mut stream)?;
    Ok(started.elapsed())
}

/// What a run of short connections or round trips saw.
#[derive(Debug, Default)]
pub(super) struct Timed {
    /// Exchanges completed and verified.
    pub(super) count: usize,
    /// From the first exchange's start to the last one's end.
    pub(super) elapsed: Duration,
    /// Each exchange's latency.
    pub(super) latencies: Vec<Duration>,
}

/// Short connections from `workers` threads, each one after the other in
/// its thread, until `limit` has passed or `max` were made; every payload is
/// different ([`MESSAGE`] bytes seeded with `seed` and the connection's
/// index). One worker measures latency one client at a time; several
/// measure the connection rate.
///
/// # Errors
/// The first failed connection (the others stop then).
pub(super) fn short_connections(
    server: SocketAddr,
    workers: usize,
    limit: Duration,
    max: usize,
    seed: u64,
    proxy: bool,
) -> Result<Timed, String> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let deadline = started + limit;
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= max {
                            break;
                        }
                        let message = Rng::new(seed, i).bytes(MESSAGE);
                        match short_connection(server, &message, proxy) {
                            Ok(latency) => latencies.push(latency),
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(format!("connection {i}: {e}"));
                            }
                        }
                    }
                    Ok(latencies)
                })
            })
            .collect();
        threads.into_iter().map(joined).collect()
    });
    let elapsed = started.elapsed();
    let mut timed = Timed { elapsed, ..Timed::default() };
    for result in results {
        timed.latencies.extend(result?);
    }
    timed.count = timed.latencies.len();
    Ok(timed)
}

/// Ping-pong: one connection with `TCP_NODELAY`, [`MESSAGE`]-byte round
/// trips one after the other until `limit` has passed or `max` were made
/// (each message numbered, so a stale echo shows), then a clean close.
///
/// # Errors
/// On any failed or differing round trip.
pub(super) fn ping_pong(
    server: SocketAddr,
    limit: Duration,
    max: usize,
    seed: u64,
) -> Result<Timed, String> {
    let mut stream = connect(server)?;
    stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut message = Rng::new(seed, 0).bytes(MESSAGE);
    let mut echo = [0; MESSAGE];
    let mut timed = Timed::default();
    let started = Instant::now();
    let deadline = started + limit;
    while timed.latencies.len() < max {
        let sent = Instant::now();
        if sent >= deadline {
            break;
        }
        let i = timed.latencies.len();
        message[..8].copy_from_slice(&(i as u64).to_le_bytes());
        round_trip(&mut stream, &message, &mut echo).map_err(|e| format!("round trip {i}: {e}"))?;
        timed.latencies.push(sent.elapsed());
    }
    timed.elapsed = started.elapsed();
    timed.count = timed.latencies.len();
    close_cleanly(&mut stream)?;
    Ok(timed)
}

/// The bulk payload: [`PERIOD`] random bytes, followed by the first
/// [`CHUNK`] of them again so that any chunk is one contiguous slice.
#[derive(Debug)]
pub(super) struct Pattern {
    bytes: Vec<u8>,
}

impl Pattern {
    /// The payload seeded with `seed`.
    pub(super) fn new(seed: u64) -> Self {
        let mut bytes = Rng::new(seed, usize::MAX).bytes(PERIOD);
        bytes.extend_from_within(..CHUNK);
        Self { bytes }
    }

    /// The `len` (at most [`CHUNK`]) bytes of the stream from offset `at`.
    fn window(&self, at: u64, len: usize) -> &[u8] {
        let start = usize::try_from(at % PERIOD as u64).unwrap_or(0);
        &self.bytes[start..start + len.min(CHUNK)]
    }
}

/// What a bulk run moved.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bulk {
    /// Echoed bytes received and verified, over every connection.
    pub(super) bytes: u64,
    /// From the start of streaming (every connection open) to the last byte.
    pub(super) elapsed: Duration,
}

/// Bulk echo: `connections` connections, opened first, then each streams
/// `bytes` bytes of `pattern` (each from another offset) from a writer
/// thread while a reader thread checks every byte of the echo; the writer
/// then shuts down its side and the reader expects the server's close.
/// `deadline` bounds the whole run.
///
/// # Errors
/// On any I/O error, a lost, extra or corrupted byte, or the deadline.
pub(super) fn bulk(
    server: SocketAddr,
    connections: usize,
    bytes: u64,
    pattern: &Pattern,
    deadline: Instant,
) -> Result<Bulk, String> {
    let mut pairs = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = connect(server)?;
        let writer = stream.try_clone().map_err(|e| format!("dup: {e}"))?;
        pairs.push((writer, stream));
    }
    let gate = Barrier::new(2 * connections + 1);
    let (started, results) = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for (i, (writer, reader)) in pairs.into_iter().enumerate() {
            let offset = (i as u64) * 7919;
            let gate = &gate;
            threads.push(scope.spawn(move || {
                gate.wait();
                send(writer, pattern, offset, bytes, deadline)
            }));
            threads.push(scope.spawn(move || {
                gate.wait();
                receive(reader, pattern, offset, bytes, deadline)
            }));
        }
        gate.wait();
        let started = Instant::now();
        let results: Vec<Result<(), String>> = threads.into_iter().map(joined).collect();
        (started, results)
    });
    let elapsed = started.elapsed();
    for (i, result) in results.into_iter().enumerate() {
        result.map_err(|e| format!("connection {}: {e}", i / 2))?;
    }
    Ok(Bulk { bytes: bytes * connections as u64, elapsed })
}

/// The writing half of a bulk connection: `total` bytes of `pattern` from
/// `offset`, then a shutdown of the sending side.
fn send(
    mut stream: TcpStream,
    pattern: &Pattern,
    offset: u64,
    total: u64,
    deadline: Instant,
) -> Result<(), String> {
    let mut sent = 0;
    while sent < total {
        if Instant::now() > deadline {
            return Err(format!("still sending after the deadline ({sent} of {total} bytes)"));
        }
        let len = usize::try_from(total - sent).unwrap_or(CHUNK).min(CHUNK);
        match stream.write(pattern.window(offset + sent, len)) {
            Ok(0) => return Err(format!("write took nothing after {sent} bytes")),
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write after {sent} bytes: {e}")),
        }
    }
    stream.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))
}

/// The reading half of a bulk connection: `total` bytes that must match
/// `pattern` from `offset`, then the server's close. On a failure it shuts
/// the connection down, so that its writer stops at once.
fn receive(
    mut stream: TcpStream,
    pattern: &Pattern,
    offset: u64,
    total: u64,
    deadline: Instant,
) -> Result<(), String> {
    let result = check_stream(&mut stream, pattern, offset, total, deadline);
    if result.is_err() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    result
}

/// See [`receive`].
fn check_stream(
    stream: &mut TcpStream,
    pattern: &Pattern,
    offset: u64,
    total: u64,
    deadline: Instant,
) -> Result<(), String> {
    let mut buf = vec![0; CHUNK];
    let mut got = 0;
    while got < total {
        if Instant::now() > deadline {
            return Err(format!("still receiving after the deadline ({got} of {total} bytes)"));
        }
        let want = usize::try_from(total - got).unwrap_or(CHUNK).min(CHUNK);
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("the server closed after {got} of {total} bytes: lost")),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {got} of {total} bytes: {e}")),
        };
        if let Some(at) = first_difference(pattern.window(offset + got, n), &buf[..n]) {
            return Err(format!("byte {} of the echo differs: corrupted", got + at as u64));
        }
        got += n as u64;
    }
    match stream.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!("the server sent more than the {total} bytes sent to it")),
        Err(e) => Err(format!("waiting for the server to close: {e}")),
    }
}

/// A connection held open, with the index that seeds its messages.
#[derive(Debug)]
pub(super) struct Held {
    index: usize,
    stream: TcpStream,
}

/// Opens `count` connections from `threads` threads, each with a verified
/// round trip (so its child, if the server forks one, is up and serving).
///
/// # Errors
/// The first connection that fails (the ones already open are closed).
pub(super) fn open_held(
    server: SocketAddr,
    count: usize,
    threads: usize,
    seed: u64,
) -> Result<Vec<Held>, String> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Vec<Result<Vec<Held>, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut held = Vec::new();
                    let mut echo = [0; MESSAGE];
                    while !stop.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break;
                        }
                        let message = Rng::new(seed, index).bytes(MESSAGE);
                        let opened = connect(server)
                            .and_then(|mut s| round_trip(&mut s, &message, &mut echo).map(|()| s));
                        match opened {
                            Ok(stream) => held.push(Held { index, stream }),
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(format!("held connection {index}, opening: {e}"));
                            }
                        }
                    }
                    Ok(held)
                })
            })
            .collect();
        workers.into_iter().map(joined).collect()
    });
    let mut all = Vec::with_capacity(count);
    for result in results {
        all.extend(result?);
    }
    Ok(all)
}

/// Verifies a second round trip on every held connection (from `threads`
/// threads), then closes each cleanly.
///
/// # Errors
/// The first connection that fails.
pub(super) fn release_held(held: Vec<Held>, threads: usize, seed: u64) -> Result<(), String> {
    let mut shares: Vec<Vec<Held>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    let share_count = shares.len();
    for (i, conn) in held.into_iter().enumerate() {
        shares[i % share_count].push(conn);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    let mut echo = [0; MESSAGE];
                    for Held { index, mut stream } in share {
                        let message = Rng::new(seed, index + (1 << 20)).bytes(MESSAGE);
                        round_trip(&mut stream, &message, &mut echo)
                            .and_then(|()| close_cleanly(&mut stream))
                            .map_err(|e| format!("held connection {index}, at the end: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(joined)
    })
}

/// A client thread's result; a panic in it is an error like any other.
fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, Result<T, String>>) -> Result<T, String> {
    thread.join().unwrap_or_else(|_| Err("a client thread panicked".to_owned()))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn differences_are_located() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
    }

    #[test]
    fn the_pattern_wraps_without_a_seam() {
        let pattern = Pattern::new(3);
        let at = PERIOD as u64 - 10;
        let window = pattern.window(at, 20);
        assert_eq!(&window[..10], &pattern.bytes[PERIOD - 10..PERIOD]);
        assert_eq!(&window[10..], &pattern.bytes[..10]);
        assert_eq!(pattern.window(at + PERIOD as u64, 20), window);
    }

    /// An in-process echo server on loopback that serves `connections`
    /// connections, one thread each.
    fn echo_server(connections: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let _ = std::io::copy(&mut reader, &mut stream);
                });
            }
        });
        addr
    }

    #[test]
    fn every_workload_passes_against_a_true_echo() {
        let addr = echo_server(1 + 5 + 1 + 2 + 3);
        let limit = Duration::from_secs(5);
        let timed = short_connections(addr, 1, limit, 1, 1, false).unwrap();
        assert_eq!((timed.count, timed.latencies.len()), (1, 1));
        let timed = short_connections(addr, 2, limit, 5, 1, false).unwrap();
        assert_eq!(timed.count, 5);
        assert_eq!(ping_pong(addr, limit, 50, 1).unwrap().count, 50);
        let pattern = Pattern::new(1);
        let deadline = Instant::now() + limit;
        let moved = bulk(addr, 2, 300_000, &pattern, deadline).unwrap();
        assert_eq!(moved.bytes, 600_000);
        let held = open_held(addr, 3, 2, 1).unwrap();
        assert_eq!(held.len(), 3);
        release_held(held, 2, 1).unwrap();
    }

    #[test]
    fn a_corrupting_server_is_caught() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0; MESSAGE];
            stream.read_exact(&mut buf).unwrap();
            buf[5] ^= 1;
            stream.write_all(&buf).unwrap();
        });
        let err = short_connections(addr, 1, Duration::from_secs(5), 1, 1, false).unwrap_err();
        assert!(err.contains("byte 5") && err.contains("corrupted"), "{err}");
    }
}
