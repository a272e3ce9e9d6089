//! Unit tests over in-memory readers and writers that misbehave the way the
//! kernel is allowed to: short reads, short writes, interruptions, resets.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};

use crate::{BUFFER_SIZE, EchoError, Printable, Totals, echo, relay, round_trip};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value in `1..=max`.
    fn size(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Hands out its data in random-sized pieces, with an `Interrupted` now and then.
struct Chunky {
    data: Vec<u8>,
    pos: usize,
    rng: Rng,
}

impl Read for Chunky {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rng.next() % 7 == 0 {
            return Err(ErrorKind::Interrupted.into());
        }
        let n = self.rng.size(4096).min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Accepts random short writes, with an `Interrupted` now and then.
struct Stingy {
    out: Vec<u8>,
    rng: Rng,
    max: usize,
}

impl Write for Stingy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.rng.next() % 5 == 0 {
            return Err(ErrorKind::Interrupted.into());
        }
        let n = self.rng.size(self.max).min(buf.len());
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn echoes_random_binary_data_through_random_chunking() {
    for seed in 1..=20 {
        let mut rng = Rng(seed);
        let len = rng.size(300_000);
        let data = rng.bytes(len);
        let reader = Chunky { data: data.clone(), pos: 0, rng: Rng(seed * 31) };
        let mut writer = Stingy { out: Vec::new(), rng: Rng(seed * 17), max: 9000 };
        let totals = echo(reader, &mut writer).unwrap();
        assert_eq!(totals, Totals { received: len as u64, sent: len as u64 }, "seed {seed}");
        assert!(writer.out == data, "seed {seed}: echoed bytes differ");
    }
}

#[test]
fn finishes_writes_one_byte_at_a_time() {
    let data = b"\0nul\nnewline\xff\xfe no terminator".to_vec();
    let mut writer = Stingy { out: Vec::new(), rng: Rng(3), max: 1 };
    let totals = echo(&data[..], &mut writer).unwrap();
    assert_eq!(writer.out, data);
    assert_eq!(totals.sent, data.len() as u64);
}

#[test]
fn retries_a_read_interrupted_once() {
    struct InterruptedOnce(bool, &'static [u8]);
    impl Read for InterruptedOnce {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.0 {
                self.0 = true;
                return Err(ErrorKind::Interrupted.into());
            }
            self.1.read(buf)
        }
    }
    let mut out = Vec::new();
    echo(InterruptedOnce(false, b"after EINTR"), &mut out).unwrap();
    assert_eq!(out, b"after EINTR");
}

#[test]
fn empty_input_echoes_nothing() {
    let mut out = Vec::new();
    assert_eq!(echo(io::empty(), &mut out).unwrap(), Totals::default());
    assert!(out.is_empty());
}

/// Yields `data`, then fails with `kind`.
struct FailsAfter {
    data: &'static [u8],
    kind: ErrorKind,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(self.kind.into());
        }
        self.data.read(buf)
    }
}

#[test]
fn a_reset_peer_is_a_read_error_with_totals() {
    let mut out = Vec::new();
    let reader = FailsAfter { data: b"12345", kind: ErrorKind::ConnectionReset };
    let err = echo(reader, &mut out).unwrap_err();
    assert!(matches!(&err, EchoError::Read { .. }), "{err:?}");
    assert_eq!(err.totals(), Totals { received: 5, sent: 5 });
    assert_eq!(err.io_error().unwrap().kind(), ErrorKind::ConnectionReset);
    assert_eq!(err.to_string(), "read failed after 5 bytes in, 5 out");
    assert_eq!(out, b"12345", "what was read before the reset was still echoed");
}

#[test]
fn a_broken_pipe_is_a_write_error_with_exact_totals() {
    /// Takes `room` bytes, then reports a broken pipe.
    struct Cramped {
        room: usize,
    }
    impl Write for Cramped {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = echo(&b"0123456789"[..], Cramped { room: 4 }).unwrap_err();
    assert!(matches!(&err, EchoError::Write { .. }), "{err:?}");
    assert_eq!(err.totals(), Totals { received: 10, sent: 4 });
    assert_eq!(err.io_error().unwrap().kind(), ErrorKind::BrokenPipe);
}

#[test]
fn a_writer_that_takes_nothing_is_an_error_not_a_hang() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = echo(&b"x"[..], Full).unwrap_err();
    assert_eq!(err.io_error().unwrap().kind(), ErrorKind::WriteZero);
}

#[test]
fn relay_copies_one_direction() {
    let data = Rng(9).bytes(200_000);
    let mut out = Vec::new();
    let totals = relay(Chunky { data: data.clone(), pos: 0, rng: Rng(5) }, &mut out).unwrap();
    assert_eq!(totals.received, data.len() as u64);
    assert!(out == data);
}

/// An echo peer in memory: what is written comes back on read, split at random.
/// It fails the test if more than `window` bytes are ever left unread, which is
/// what would deadlock against a real echo server once socket buffers fill.
struct Loopback {
    pending: VecDeque<u8>,
    rng: Rng,
    window: usize,
    /// Stop echoing (EOF on read) after this many bytes.
    close_after: usize,
    echoed: usize,
}

impl Read for Loopback {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.close_after - self.echoed;
        let n = self.rng.size(1500).min(buf.len()).min(self.pending.len()).min(left);
        for slot in &mut buf[..n] {
            *slot = self.pending.pop_front().expect("counted above");
        }
        self.echoed += n;
        Ok(n)
    }
}

impl Write for Loopback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.rng.size(3000).min(buf.len());
        self.pending.extend(&buf[..n]);
        assert!(self.pending.len() <= self.window, "{} bytes in flight", self.pending.len());
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn loopback(seed: u64) -> Loopback {
    Loopback {
        pending: VecDeque::new(),
        rng: Rng(seed),
        window: BUFFER_SIZE,
        close_after: usize::MAX,
        echoed: 0,
    }
}

#[test]
fn round_trip_reads_back_exactly_the_message() {
    let mut peer = loopback(11);
    let mut reply = b"stale contents".to_vec();
    for len in [1, 2, 100, 1500, 4096, 70_000] {
        let message = Rng(len as u64).bytes(len);
        round_trip(&mut peer, &message, &mut reply).unwrap();
        assert!(reply == message, "length {len}");
        assert!(peer.pending.is_empty(), "nothing left unread after a round trip");
    }
    round_trip(&mut peer, b"", &mut reply).unwrap();
    assert!(reply.is_empty());
}

#[test]
fn round_trip_of_a_huge_message_keeps_little_in_flight() {
    // 1 MiB with at most BUFFER_SIZE unread at any time (asserted by Loopback).
    let message = Rng(77).bytes(1 << 20);
    let mut reply = Vec::new();
    round_trip(loopback(12), &message, &mut reply).unwrap();
    assert!(reply == message);
}

#[test]
fn round_trip_reports_a_peer_that_closes_early() {
    let mut peer = loopback(13);
    peer.close_after = 3;
    let mut reply = Vec::new();
    let err = round_trip(&mut peer, b"hello", &mut reply).unwrap_err();
    let totals = Totals { received: 3, sent: 5 };
    assert!(matches!(err, EchoError::Closed { expected: 5, totals: t } if t == totals), "{err:?}");
    assert_eq!(reply, b"hel");
    assert_eq!(err.to_string(), "peer closed the connection after echoing 3 of 5 bytes");
}

#[test]
fn a_close_midway_through_a_long_message_counts_only_what_was_sent() {
    let mut peer = loopback(14);
    peer.close_after = 100;
    let message = Rng(15).bytes(3 * BUFFER_SIZE);
    let err = round_trip(&mut peer, &message, &mut Vec::new()).unwrap_err();
    // Only the first piece went out before the echo stopped.
    let totals = Totals { received: 100, sent: BUFFER_SIZE as u64 };
    assert!(matches!(err, EchoError::Closed { totals: t, .. } if t == totals), "{err:?}");
    assert_eq!(err.totals(), totals);
}

#[test]
fn printable_escapes_and_truncates() {
    assert_eq!(Printable(b"hi\n\0\xff\"").to_string(), r#""hi\n\x00\xff\"""#);
    let long = vec![b'a'; Printable::LIMIT + 10];
    let shown = Printable(&long).to_string();
    assert!(shown.ends_with("\" (+10 bytes)"), "{shown}");
    assert_eq!(shown.matches('a').count(), Printable::LIMIT);
}

/// Hands out `pieces` in turn, noting how large a buffer each read offered.
struct Offered {
    pieces: VecDeque<usize>,
    offered: Vec<usize>,
}

impl Read for Offered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.offered.push(buf.len());
        let n = self.pieces.pop_front().unwrap_or(0).min(buf.len());
        buf[..n].fill(b'z');
        Ok(n)
    }
}

#[test]
fn small_exchanges_use_a_small_buffer_and_bulk_a_large_one() {
    // Request/response sized reads never get the large buffer, even a few
    // KiB at once (a full TCP segment, or more).
    for pieces in [[64, 1023, 1, 0], [64, 1500, 4000, 1]] {
        let mut small = Offered { pieces: pieces.into(), offered: Vec::new() };
        echo(&mut small, io::sink()).unwrap();
        assert!(small.offered.iter().all(|&len| len < BUFFER_SIZE), "{:?}", small.offered);
    }
    // Reads that fill each buffer in turn: bulk, so every later read may fill
    // the large one.
    let mut bulk =
        Offered { pieces: [64, usize::MAX, usize::MAX, usize::MAX, 3].into(), offered: Vec::new() };
    let totals = echo(&mut bulk, io::sink()).unwrap();
    let (small, medium) = (bulk.offered[0], bulk.offered[2]);
    assert!(small < medium && medium < BUFFER_SIZE, "{:?}", bulk.offered);
    assert_eq!(bulk.offered, [small, small, medium, BUFFER_SIZE, BUFFER_SIZE, BUFFER_SIZE]);
    assert_eq!(totals.received, (64 + small + medium + BUFFER_SIZE + 3) as u64);
}
