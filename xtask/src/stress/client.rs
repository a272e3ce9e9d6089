//! The client side of `cargo xtask stress`: short verified connections (some
//! reset on purpose), held connections, trickling and idle clients, a
//! connect-and-close flood and latency probes, over plain loopback sockets.
//!
//! Every connect, read and write is bounded by [`HANG`], every loop by a
//! count or a deadline, so a server that stops answering ends the run with
//! errors instead of hanging it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

pub(crate) use crate::rng::Rng;
use crate::wire::close_cleanly;

/// The longest any single connect, read or write may take: beyond it the
/// server is taken to be hung. (A connect whose SYN the kernel dropped, the
/// backlog being full, is retried after 1, 3, 7 and 15 s; 30 s covers four
/// such retries.)
pub(super) const HANG: Duration = Duration::from_secs(30);

/// How many loopback source addresses the clients spread over:
/// 127.0.0.1 to 127.0.0.8 (every 127/8 address is local on Linux).
const SOURCES: usize = 8;

/// Every tenth short connection is reset after half its payload.
const RESET_EVERY: usize = 10;

/// How many error messages a [`Tally`] keeps, to show what went wrong.
const ERROR_SAMPLES: usize = 5;

/// The loopback source address for connection `i`, round robin from
/// 127.0.0.`first` over [`SOURCES`] addresses.
fn source(i: usize, first: u8) -> Ipv4Addr {
    let offset = u8::try_from(i % SOURCES).unwrap_or(0);
    Ipv4Addr::new(127, 0, 0, first.saturating_add(offset))
}

/// How one connection ended, when it ended as the phase intends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every byte sent came back, verified (this many), and the connection
    /// ended as planned (a clean close, or a close by the server when idle).
    Served(u64),
    /// Reset on purpose (SO_LINGER 0, then close) after this many bytes came
    /// back verified.
    Reset(u64),
}

/// What a set of client connections saw. Every connection is counted once:
/// `connections = served + resets + errors`.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    /// Connections attempted.
    pub(super) connections: u64,
    /// Connections that went exactly as planned.
    pub(super) served: u64,
    /// Connections reset on purpose, their bytes up to the reset verified.
    pub(super) resets: u64,
    /// Connections that failed: an unexpected error, a lost or wrong byte.
    pub(super) errors: u64,
    /// Bytes that came back and were compared with what was sent.
    pub(super) bytes: u64,
    /// The first few error messages.
    pub(super) samples: Vec<String>,
}

impl Tally {
    /// Counts one connection.
    pub(super) fn record(&mut self, result: Result<Outcome, String>) {
        self.connections += 1;
        match result {
            Ok(Outcome::Served(bytes)) => {
                self.served += 1;
                self.bytes += bytes;
            }
            Ok(Outcome::Reset(bytes)) => {
                self.resets += 1;
                self.bytes += bytes;
            }
            Err(message) => self.error(message),
        }
    }

    /// Counts one failed connection.
    pub(super) fn error(&mut self, message: String) {
        self.errors += 1;
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(message);
        }
    }

    /// Adds `other`'s counts to these.
    pub(super) fn merge(&mut self, other: Self) {
        self.connections += other.connections;
        self.served += other.served;
        self.resets += other.resets;
        self.errors += other.errors;
        self.bytes += other.bytes;
        let room = ERROR_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }
}

/// Joins client threads and adds up their tallies; a thread that panicked
/// counts as one error.
fn join_all(threads: Vec<ScopedJoinHandle<'_, Tally>>) -> Tally {
    let mut total = Tally::default();
    for thread in threads {
        match thread.join() {
            Ok(tally) => total.merge(tally),
            Err(_) => total.error("a client thread panicked".to_owned()),
        }
    }
    total
}

/// `connect(2)` to `server` from `from` (the kernel's choice when `None`),
/// bounded by [`HANG`], with reads and writes bounded by [`HANG`] and
/// `TCP_NODELAY` set.
///
/// # Errors
/// When a step fails; the error names the step.
fn connect(server: SocketAddr, from: Option<Ipv4Addr>) -> Result<TcpStream, String> {
    let step = |what: &'static str| move |e: io::Error| format!("{what}: {e}");
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(step("socket"))?;
    if let Some(ip) = from {
        socket.bind(&SocketAddr::new(ip.into(), 0).into()).map_err(step("bind"))?;
    }
    socket.connect_timeout(&server.into(), HANG).map_err(step("connect"))?;
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(HANG)).map_err(step("SO_RCVTIMEO"))?;
    stream.set_write_timeout(Some(HANG)).map_err(step("SO_SNDTIMEO"))?;
    stream.set_nodelay(true).map_err(step("TCP_NODELAY"))?;
    Ok(stream)
}

/// Writes `message`, reads back exactly as many bytes and compares them.
///
/// # Errors
/// On any I/O error (a timeout means the server hung), or when the echo differs.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Result<(), String> {
    stream.write_all(message).map_err(|e| format!("write: {e}"))?;
    let mut echo = vec![0; message.len()];
    stream.read_exact(&mut echo).map_err(|e| format!("reading the echo: {e}"))?;
    match message.iter().zip(&echo).position(|(sent, got)| sent != got) {
        None => Ok(()),
        Some(at) => Err(format!("echo differs at byte {at} of {}", message.len())),
    }
}

/// Resets the connection: SO_LINGER 0, then close, which sends RST.
///
/// # Errors
/// When SO_LINGER cannot be set.
fn reset(stream: TcpStream) -> Result<(), String> {
    SockRef::from(&stream).set_linger(Some(Duration::ZERO)).map_err(|e| format!("SO_LINGER 0: {e}"))
}

/// `count` short connections from `threads` threads, from 127.0.0.1 to
/// 127.0.0.8: each sends 100 to 599 random bytes, verifies the echo byte for
/// byte and closes cleanly; every tenth sends half, verifies that half's
/// echo, sends the rest and resets the connection without reading it.
pub(super) fn churn(server: SocketAddr, count: usize, threads: usize, seed: u64) -> Tally {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut tally = Tally::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return tally;
                        }
                        let result = short_connection(server, i, seed);
                        tally.record(result.map_err(|e| format!("connection {i}: {e}")));
                    }
                })
            })
            .collect();
        join_all(workers)
    })
}

/// Short connection `i` of a churn (see [`churn`]).
fn short_connection(server: SocketAddr, i: usize, seed: u64) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed, i);
    let len = 100 + rng.below(500);
    let payload = rng.bytes(len);
    let mut stream = connect(server, Some(source(i, 1)))?;
    if i % RESET_EVERY == RESET_EVERY - 1 {
        let half = len / 2;
        round_trip(&mut stream, &payload[..half])?;
        stream.write_all(&payload[half..]).map_err(|e| format!("write: {e}"))?;
        reset(stream)?;
        return Ok(Outcome::Reset(half as u64));
    }
    round_trip(&mut stream, &payload)?;
    close_cleanly(&mut stream)?;
    Ok(Outcome::Served(len as u64))
}

/// A connection held open, with the index that seeds its payloads.
#[derive(Debug)]
pub(super) struct Held {
    index: usize,
    stream: TcpStream,
}

/// Bytes in each round trip of a held connection.
const HELD_MESSAGE: usize = 64;

/// Opens `count` connections from `threads` threads and verifies a round
/// trip on each; returns those that passed, and a tally of those that failed
/// (only errors: the others are counted by [`finish_held`]).
pub(super) fn open_held(
    server: SocketAddr,
    count: usize,
    threads: usize,
    seed: u64,
) -> (Vec<Held>, Tally) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut held, mut tally) = (Vec::new(), Tally::default());
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            return (held, tally);
                        }
                        let message = Rng::new(seed, index).bytes(HELD_MESSAGE);
                        let opened = connect(server, Some(source(index, 1)))
                            .and_then(|mut s| round_trip(&mut s, &message).map(|()| s));
                        match opened {
                            Ok(stream) => held.push(Held { index, stream }),
                            Err(e) => tally.record(Err(format!("held {index}, opening: {e}"))),
                        }
                    }
                })
            })
            .collect();
        let (mut all, mut total) = (Vec::new(), Tally::default());
        for worker in workers {
            match worker.join() {
                Ok((held, tally)) => {
                    all.extend(held);
                    total.merge(tally);
                }
                Err(_) => total.error("a client thread panicked".to_owned()),
            }
        }
        (all, total)
    })
}

/// Verifies a second round trip on every held connection (from `threads`
/// threads), then closes each cleanly.
pub(super) fn finish_held(held: Vec<Held>, threads: usize, seed: u64) -> Tally {
    let mut shares: Vec<Vec<Held>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, conn) in held.into_iter().enumerate() {
        shares[i % threads].push(conn);
    }
    std::thread::scope(|scope| {
        let workers = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    for Held { index, mut stream } in share {
                        let mut rng = Rng::new(seed, index);
                        let _first = rng.bytes(HELD_MESSAGE);
                        let message = rng.bytes(HELD_MESSAGE);
                        let result = round_trip(&mut stream, &message)
                            .and_then(|()| close_cleanly(&mut stream))
                            .map(|()| Outcome::Served(2 * HELD_MESSAGE as u64))
                            .map_err(|e| format!("held {index}, at the end: {e}"));
                        tally.record(result);
                    }
                    tally
                })
            })
            .collect();
        join_all(workers)
    })
}

/// What the slow and idle clients saw.
#[derive(Debug, Default)]
pub(super) struct SlowAndIdle {
    /// Every client, slow and idle.
    pub(super) tally: Tally,
    /// How long each idle client waited, after its round trip, for the
    /// server to close the connection.
    pub(super) idle_waits: Vec<Duration>,
}

/// Bytes in the round trip an idle client makes before it falls silent.
const IDLE_MESSAGE: usize = 16;

/// `slow` clients that trickle `len` bytes each, one at a time with random
/// delays of up to 10 ms and a 300 ms pause every 64 bytes (each under the
/// server's idle timeout, so none may be cut), reading back each byte before
/// sending the next; alongside them, `idle` clients that make one round trip
/// and then send nothing, and must be disconnected by the server.
pub(super) fn slow_and_idle(
    server: SocketAddr,
    slow: usize,
    len: usize,
    idle: usize,
    seed: u64,
) -> SlowAndIdle {
    std::thread::scope(|scope| {
        let slow_threads: Vec<_> = (0..slow)
            .map(|i| {
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let result = trickle(server, i, len, seed);
                    tally.record(result.map_err(|e| format!("slow client {i}: {e}")));
                    tally
                })
            })
            .collect();
        let idle_threads: Vec<_> =
            (0..idle).map(|i| scope.spawn(move || idle_client(server, slow + i, seed))).collect();
        let mut result = SlowAndIdle { tally: join_all(slow_threads), idle_waits: Vec::new() };
        for (i, thread) in idle_threads.into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(waited)) => {
                    result.tally.record(Ok(Outcome::Served(IDLE_MESSAGE as u64)));
                    result.idle_waits.push(waited);
                }
                Ok(Err(e)) => result.tally.record(Err(format!("idle client {i}: {e}"))),
                Err(_) => result.tally.error("a client thread panicked".to_owned()),
            }
        }
        result
    })
}

/// One slow client (see [`slow_and_idle`]).
fn trickle(server: SocketAddr, i: usize, len: usize, seed: u64) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed, i);
    let payload = rng.bytes(len);
    let mut stream = connect(server, Some(source(i, 1)))?;
    for (at, byte) in payload.iter().enumerate() {
        round_trip(&mut stream, std::slice::from_ref(byte))
            .map_err(|e| format!("byte {at}: {e}"))?;
        let pause = if at % 64 == 63 { 300 } else { rng.below(11) as u64 };
        std::thread::sleep(Duration::from_millis(pause));
    }
    close_cleanly(&mut stream)?;
    Ok(Outcome::Served(len as u64))
}

/// One idle client: a round trip, then silence until the server closes the
/// connection; returns how long that took.
fn idle_client(server: SocketAddr, i: usize, seed: u64) -> Result<Duration, String> {
    let mut stream = connect(server, Some(source(i, 1)))?;
    round_trip(&mut stream, &Rng::new(seed, i).bytes(IDLE_MESSAGE))?;
    let since = Instant::now();
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => Ok(since.elapsed()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(since.elapsed()),
        Ok(_) => Err("the server sent bytes nobody sent it".to_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(format!("still connected after {HANG:?}: the idle timeout never fired"))
        }
        Err(e) => Err(format!("waiting to be disconnected: {e}")),
    }
}

/// What a flood with probes saw.
#[derive(Debug, Default)]
pub(super) struct Flood {
    /// The flood's connections: served when connected and closed (FIN),
    /// resets when connected and reset (RST).
    pub(super) flood: Tally,
    /// The probes: served when their round trip was verified.
    pub(super) probes: Tally,
    /// Each served probe's latency, from `connect` to the whole echo.
    pub(super) latencies: Vec<Duration>,
}

/// Bytes in each probe's round trip.
const PROBE_MESSAGE: usize = 32;

/// Until `until` (and at most `max` connections), `threads` threads connect
/// from 127.0.0.2 to 127.0.0.9 and close at once without sending, half with
/// FIN, half with RST; meanwhile a probe from 127.0.0.1 every `every`
/// measures how long a fresh client takes to get an echo.
pub(super) fn flood(
    server: SocketAddr,
    threads: usize,
    until: Instant,
    max: usize,
    every: Duration,
    seed: u64,
) -> Flood {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| probes(server, until, every, seed));
        let workers = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut tally = Tally::default();
                    while Instant::now() < until {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= max {
                            break;
                        }
                        let result = connect(server, Some(source(i, 2))).and_then(|stream| {
                            if i % 2 == 0 {
                                drop(stream);
                                Ok(Outcome::Served(0))
                            } else {
                                reset(stream).map(|()| Outcome::Reset(0))
                            }
                        });
                        tally.record(result.map_err(|e| format!("flood connection {i}: {e}")));
                    }
                    tally
                })
            })
            .collect();
        let flood = join_all(workers);
        let (probes, latencies) = prober.join().unwrap_or_else(|_| {
            let mut tally = Tally::default();
            tally.error("the probe thread panicked".to_owned());
            (tally, Vec::new())
        });
        Flood { flood, probes, latencies }
    })
}

/// A probe from 127.0.0.1 every `every` until `until`: connect, verify a
/// round trip, close cleanly. Returns the tally and the served probes'
/// latencies (connect to whole echo). A slow probe delays the next one; the
/// missed ticks are skipped, not made up in a burst.
pub(super) fn probes(
    server: SocketAddr,
    until: Instant,
    every: Duration,
    seed: u64,
) -> (Tally, Vec<Duration>) {
    let (mut tally, mut latencies) = (Tally::default(), Vec::new());
    let mut tick = Instant::now();
    let mut i = 0;
    while tick < until {
        let message = Rng::new(seed, i).bytes(PROBE_MESSAGE);
        let started = Instant::now();
        let result = connect(server, None).and_then(|mut stream| {
            round_trip(&mut stream, &message)?;
            let latency = started.elapsed();
            close_cleanly(&mut stream).map(|()| latency)
        });
        match result {
            Ok(latency) => {
                latencies.push(latency);
                tally.record(Ok(Outcome::Served(PROBE_MESSAGE as u64)));
            }
            Err(e) => tally.record(Err(format!("probe {i}: {e}"))),
        }
        i += 1;
        tick = (tick + every).max(Instant::now());
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
    (tally, latencies)
}

/// The `pct`th percentile (nearest rank) of `values`; zero when empty.
pub(super) fn percentile(values: &[Duration], pct: usize) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let values: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&values, 50), ms(50));
        assert_eq!(percentile(&values, 99), ms(99));
        assert_eq!(percentile(&values, 100), ms(100));
        assert_eq!(percentile(&[ms(7)], 99), ms(7));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn payloads_are_reproducible_and_sized() {
        let (a, b) = (Rng::new(7, 3).bytes(13), Rng::new(7, 3).bytes(13));
        assert_eq!((a.len(), &a), (13, &b));
        assert_ne!(Rng::new(7, 4).bytes(13), a);
    }

    #[test]
    fn every_connection_is_counted_once() {
        let mut tally = Tally::default();
        tally.record(Ok(Outcome::Served(10)));
        tally.record(Ok(Outcome::Reset(4)));
        tally.record(Err("lost".to_owned()));
        let mut total = Tally::default();
        total.merge(tally);
        assert_eq!((total.connections, total.served, total.resets, total.errors), (3, 1, 1, 1));
        assert_eq!((total.bytes, total.samples), (14, vec!["lost".to_owned()]));
    }
}
