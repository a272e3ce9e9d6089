//! Time limits on the server: parsing `--timeout` and `--connect-timeout`,
//! and, for stream mode, the [`Ledger`] of who is waiting on whom with the
//! socket and output wrappers that enforce `--timeout` through it.
//!
//! The rule, in both modes: the client gives up on the server when it has
//! waited on it for the whole timeout without progress: for a write the
//! server takes nothing of, for an echo it owes, or for its close after the
//! end of input. Time spent waiting for standard input, or for standard
//! output to take the echo, is the client's own and never counts.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest time limit accepted, in seconds.
const MAX_SECS: u64 = 86_400;

/// The shortest non-zero time limit accepted: anything shorter would be
/// rounded to zero somewhere below (poll(2) counts milliseconds), and zero
/// means "no limit" to the kernel.
const MIN_LIMIT: Duration = Duration::from_millis(1);

/// Parses `--timeout`: decimal seconds from 0 (no timeout) to 86400; a
/// non-zero value under 1 ms is refused rather than rounded to "never".
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_secs(text).map_err(|err| format!("{err}; 0 means no timeout"))
}

/// Parses `--connect-timeout`: decimal seconds from 0.001 to 86400.
pub(crate) fn parse_connect_timeout(text: &str) -> Result<Duration, String> {
    match parse_secs(text) {
        Ok(limit) if limit.is_zero() => {
            Err(format!("'{text}' would mean no limit; give at least 0.001 seconds"))
        }
        other => other,
    }
}

/// Decimal seconds (`30`, `0.5`, `.25`), exactly, without going through a
/// float: 0, or from 1 ms to [`MAX_SECS`].
fn parse_secs(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a number of seconds between 0 and {MAX_SECS}");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    let secs = if whole.is_empty() { 0 } else { whole.parse::<u64>().map_err(|_| bad())? };
    // Nanoseconds from the first nine decimals; the rest only matter below,
    // to tell a tiny value from zero.
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0_u32, |nanos, digit| nanos * 10 + u32::from(digit - b'0'));
    let limit = Duration::new(secs, nanos);
    if limit > Duration::from_secs(MAX_SECS) {
        return Err(bad());
    }
    let zero = text.bytes().all(|b| b == b'0' || b == b'.');
    if !zero && limit < MIN_LIMIT {
        return Err(format!("'{text}' is under the minimum of 0.001 seconds"));
    }
    Ok(limit)
}

/// What the client was waiting on the server for when it gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// An echo of bytes already sent.
    Echo,
    /// The close that should follow the end of input, everything echoed.
    Close,
    /// A write: the server took none of it.
    Write,
}

/// The server kept the client waiting for the whole timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stalled {
    /// What for.
    pub(crate) waiting: Waiting,
    /// The timeout.
    pub(crate) after: Duration,
    /// Bytes sent to the server so far.
    pub(crate) sent: u64,
    /// Bytes echoed so far.
    pub(crate) received: u64,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.after.as_secs_f64();
        match self.waiting {
            Waiting::Echo => write!(f, "no echo for {secs} s")?,
            Waiting::Close => {
                write!(
                    f,
                    "echoed everything but did not close for {secs} s after the end of input"
                )?;
            }
            Waiting::Write => write!(f, "took no data for {secs} s")?,
        }
        write!(f, " (sent {} bytes, received {})", self.sent, self.received)
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// As an I/O error (`TimedOut`), to travel through `echo_proto::relay`.
    fn into_io(self) -> io::Error {
        io::Error::new(ErrorKind::TimedOut, self)
    }

    /// The stall inside an error made by [`Stalled::into_io`], if it is one
    /// (a kernel's `ETIMEDOUT` is not).
    pub(crate) fn from_io(err: &io::Error) -> Option<Self> {
        err.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// Stream mode's shared record: what went out, what came back, whether
/// input has ended and whether standard output is busy, and since when the
/// client has been waiting on the server without progress.
#[derive(Debug)]
pub(crate) struct Ledger {
    timeout: Option<Duration>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    sent: u64,
    received: u64,
    input_done: bool,
    /// How long standard output has been busy writing, in all, not counting
    /// the write under way, if there is one, which began at `busy_from`.
    busy_total: Duration,
    busy_from: Option<Instant>,
    /// The last progress on the echo: bytes of it received, or written out,
    /// or the moment the server came to owe some.
    since: Instant,
}

impl State {
    fn busy_time(&self) -> Duration {
        self.busy_total + self.busy_from.map_or(Duration::ZERO, |from| from.elapsed())
    }

    /// Whether the server owes the client anything: an echo, or its close.
    fn owes(&self) -> bool {
        self.sent > self.received || self.input_done
    }

    /// How much longer the client may wait for the server's echo or close,
    /// or the stall.
    fn wait_left(&self, limit: Duration) -> Result<Duration, Stalled> {
        let waited = self.since.elapsed();
        if waited < limit {
            return Ok((limit - waited).max(MIN_LIMIT));
        }
        let waiting = if self.sent > self.received { Waiting::Echo } else { Waiting::Close };
        Err(Stalled { waiting, after: limit, sent: self.sent, received: self.received })
    }
}

impl Ledger {
    /// A ledger for a session with this `--timeout` (`None`: no timeout).
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        let state = State {
            sent: 0,
            received: 0,
            input_done: false,
            busy_total: Duration::ZERO,
            busy_from: None,
            since: Instant::now(),
        };
        Self { timeout, state: Mutex::new(state) }
    }

    /// Sets the socket's timeouts for reading and writing to the ledger's
    /// (for every descriptor of it: they belong to the socket).
    pub(crate) fn arm(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_read_timeout(self.timeout)?;
        stream.set_write_timeout(self.timeout)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the end of input (after which the server owes its close).
    pub(crate) fn input_ended(&self) {
        let mut state = self.state();
        if !state.owes() {
            state.since = Instant::now();
        }
        state.input_done = true;
    }

    fn sent(&self, n: usize) {
        let mut state = self.state();
        if !state.owes() {
            state.since = Instant::now();
        }
        state.sent += n as u64;
    }

    fn received(&self, n: usize) {
        let mut state = self.state();
        state.received += n as u64;
        state.since = Instant::now();
    }

    fn output_busy(&self, busy: bool) {
        let mut state = self.state();
        let now = Instant::now();
        if busy {
            state.busy_from = Some(now);
        } else if let Some(from) = state.busy_from.take() {
            state.busy_total += now - from;
            // Time spent on standard output was the client's own.
            state.since = now;
        }
    }

    /// How long standard output has been busy so far, in all.
    fn busy_time(&self) -> Duration {
        self.state().busy_time()
    }

    /// After a read timed out: how long the next read may wait, or the stall
    /// if the server owes something and has been silent for the whole timeout.
    fn read_left(&self, limit: Duration) -> Result<Duration, Stalled> {
        let state = self.state();
        if !state.owes() {
            // Waiting for input to send, not on the server.
            return Ok(limit);
        }
        state.wait_left(limit)
    }

    /// After a write that has been `blocked` so far timed out (it began when
    /// [`Ledger::busy_time`] said `busy_before`): how long it may go on
    /// waiting, or the stall if the server took nothing for the whole timeout,
    /// not counting the time standard output was busy (a server whose echo is
    /// not being read may rightly stop reading).
    fn write_left(
        &self,
        limit: Duration,
        blocked: Duration,
        busy_before: Duration,
    ) -> Result<Duration, Stalled> {
        let state = self.state();
        let servers = blocked.saturating_sub(state.busy_time().saturating_sub(busy_before));
        if servers < limit {
            return Ok((limit - servers).max(MIN_LIMIT));
        }
        Err(Stalled {
            waiting: Waiting::Write,
            after: limit,
            sent: state.sent,
            received: state.received,
        })
    }
}

/// The socket as one of stream mode's threads sees it: every byte counted in
/// the ledger, and a read or write cut short by the socket's timeout
/// (`SO_RCVTIMEO`, `SO_SNDTIMEO`) either resumed, when the server is not the
/// one holding things up, or failed with a [`Stalled`] inside a `TimedOut`.
#[derive(Debug)]
pub(crate) struct Watched<'a> {
    stream: &'a TcpStream,
    ledger: &'a Ledger,
    /// Whether the socket's write timeout is below the ledger's, for a write
    /// that resumed: the next write gets the whole timeout again.
    shortened: bool,
}

impl<'a> Watched<'a> {
    /// Watches `stream`, whose timeouts [`Ledger::arm`] has set.
    pub(crate) fn new(stream: &'a TcpStream, ledger: &'a Ledger) -> Self {
        Self { stream, ledger, shortened: false }
    }
}

/// Whether `err` is a socket timeout expiring (`EAGAIN` on a blocking socket).
fn timed_out(err: &io::Error) -> bool {
    err.kind() == ErrorKind::WouldBlock
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    self.ledger.received(n);
                    return Ok(n);
                }
                Err(err) if timed_out(&err) => {
                    let Some(limit) = self.ledger.timeout else { return Err(err) };
                    let left = self.ledger.read_left(limit).map_err(Stalled::into_io)?;
                    self.stream.set_read_timeout(Some(left))?;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Write for Watched<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shortened {
            self.stream.set_write_timeout(self.ledger.timeout)?;
            self.shortened = false;
        }
        let (started, busy_before) = (Instant::now(), self.ledger.busy_time());
        loop {
            match self.stream.write(buf) {
                Ok(n) => {
                    self.ledger.sent(n);
                    return Ok(n);
                }
                Err(err) if timed_out(&err) => {
                    let Some(limit) = self.ledger.timeout else { return Err(err) };
                    let left = self
                        .ledger
                        .write_left(limit, started.elapsed(), busy_before)
                        .map_err(Stalled::into_io)?;
                    self.stream.set_write_timeout(Some(left))?;
                    self.shortened = true;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Standard output in stream mode: tells the ledger while a write is under
/// way, so that a slow reader of the echo never counts against the server.
#[derive(Debug)]
pub(crate) struct Output<'a, W> {
    inner: W,
    ledger: &'a Ledger,
}

impl<'a, W: Write> Output<'a, W> {
    /// Watches `inner`.
    pub(crate) fn new(inner: W, ledger: &'a Ledger) -> Self {
        Self { inner, ledger }
    }
}

impl<W: Write> Write for Output<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ledger.output_busy(true);
        let written = self.inner.write(buf);
        self.ledger.output_busy(false);
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ledger.output_busy(true);
        let flushed = self.inner.flush();
        self.ledger.output_busy(false);
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_parsed_exactly_and_tiny_values_are_refused() {
        let ms = Duration::from_millis;
        for (text, limit) in [
            ("30", Duration::from_secs(30)),
            ("0", Duration::ZERO),
            ("0.000", Duration::ZERO),
            (".5", ms(500)),
            ("2.", ms(2000)),
            ("0.001", ms(1)),
            ("0.0010000001", Duration::from_nanos(1_000_000)),
            ("86400", Duration::from_secs(86_400)),
        ] {
            assert_eq!(parse_timeout(text), Ok(limit), "{text}");
        }
        // Never rounded down to zero, which would mean "no timeout".
        for text in ["0.0009", "0.000000001", "0.0000000001"] {
            let err = parse_timeout(text).unwrap_err();
            assert!(err.contains("under the minimum of 0.001 seconds"), "{text}: {err}");
        }
        for text in
            ["", ".", "-1", "+1", "1e3", "1e-9", "NaN", "inf", "86400.5", "99999999999999999999"]
        {
            assert!(parse_timeout(text).is_err(), "{text} accepted");
        }
        assert_eq!(parse_connect_timeout("0.25"), Ok(ms(250)));
        assert!(parse_connect_timeout("0").unwrap_err().contains("would mean no limit"));
        assert!(parse_connect_timeout("0.0001").unwrap_err().contains("under the minimum"));
    }

    #[test]
    fn the_server_is_waited_on_only_while_it_owes_something() {
        let limit = Duration::from_millis(20);
        let ledger = Ledger::new(Some(limit));
        std::thread::sleep(limit * 2);
        // Nothing sent, input still open: the client waits for its input.
        assert_eq!(ledger.read_left(limit), Ok(limit));
        ledger.sent(5);
        assert!(ledger.read_left(limit).is_ok(), "the debt just began");
        std::thread::sleep(limit * 2);
        let stalled = ledger.read_left(limit).unwrap_err();
        assert_eq!((stalled.waiting, stalled.sent, stalled.received), (Waiting::Echo, 5, 0));
        ledger.received(5);
        ledger.input_ended();
        std::thread::sleep(limit * 2);
        assert_eq!(ledger.read_left(limit).unwrap_err().waiting, Waiting::Close);
        // A write is the server's fault only for the time standard output
        // was not busy while it was blocked.
        let before = ledger.busy_time();
        ledger.output_busy(true);
        std::thread::sleep(limit * 2);
        assert!(ledger.write_left(limit, limit * 2, before).is_ok(), "output busy all along");
        ledger.output_busy(false);
        assert!(ledger.write_left(limit, limit * 2, before).is_ok(), "output busy all along");
        assert!(ledger.write_left(limit, limit * 5 / 2, before).is_ok(), "idle for half of it");
        let stalled = ledger.write_left(limit, limit * 4, before).unwrap_err();
        assert_eq!(stalled.waiting, Waiting::Write);
        // Echo coming in does not excuse a server that takes nothing.
        ledger.received(1);
        let before = ledger.busy_time();
        assert_eq!(ledger.write_left(limit, limit, before).unwrap_err().waiting, Waiting::Write);
    }

    #[test]
    fn a_stall_survives_the_trip_through_an_io_error() {
        let stalled = Stalled {
            waiting: Waiting::Echo,
            after: Duration::from_millis(1500),
            sent: 6,
            received: 3,
        };
        let err = stalled.into_io();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert_eq!(Stalled::from_io(&err), Some(stalled));
        assert_eq!(Stalled::from_io(&io::Error::from(ErrorKind::TimedOut)), None);
        assert_eq!(stalled.to_string(), "no echo for 1.5 s (sent 6 bytes, received 3)");
    }
}
