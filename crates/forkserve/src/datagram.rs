//! Datagrams answered in the parent's loop, without a fork: a UDP service
//! beside the TCP one (RFC 862 echo, say), with the guard such a service
//! needs on the open Internet. A reply to a spoofed source is how two echo
//! services bounce a datagram forever, and how a server is turned into a
//! reflector: so no source port of a service that would answer back is ever
//! answered, and each source address gets a few replies a second at most.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Instant;

use crate::Stats;
use crate::policy::Source;

/// Source ports never answered: 0 (not a real port), every port under 1024
/// (echo 7, discard 9, daytime 13, qotd 17, chargen 19, time 37, DNS 53,
/// NTP 123, SNMP 161, …: services that may answer whatever they get), and
/// the well-known high ports of services that answer too (SSDP 1900,
/// WS-Discovery 3702, mDNS 5353, CoAP 5683, memcached 11211).
#[must_use]
pub fn is_guarded_port(port: u16) -> bool {
    port < 1024 || matches!(port, 1900 | 3702 | 5353 | 5683 | 11211)
}

/// The reply a service gives: from the datagram received and its source,
/// write the reply into the buffer and return its length, or `None` for no
/// reply.
pub(crate) type Reply = Box<dyn FnMut(&[u8], SocketAddr, &mut [u8]) -> Option<usize>>;

/// Datagrams read per socket and wake-up, before the loop looks at the
/// rest of its work.
const BATCH: usize = 64;
/// Buckets of the per-source limiter: sources hash into them; two that
/// collide share one (each is then limited a little more, never less).
const BUCKETS: usize = 1024;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;

/// A token bucket per source (hashed).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    source: Option<Source>,
    tokens: f64,
    last: Option<Instant>,
}

/// The datagram side of a server.
pub(crate) struct Datagrams {
    pub(crate) sockets: Vec<UdpSocket>,
    reply: Reply,
    /// Replies a second per source address (and the burst).
    per_source: u32,
    buckets: Vec<Bucket>,
    /// Allocated once; a small datagram touches only their first page.
    input: Vec<u8>,
    output: Vec<u8>,
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams")
            .field("sockets", &self.sockets)
            .field("per_source", &self.per_source)
            .finish_non_exhaustive()
    }
}

impl Datagrams {
    pub(crate) fn new(sockets: Vec<UdpSocket>, reply: Reply, per_source: u32) -> Self {
        let empty = Bucket { source: None, tokens: 0.0, last: None };
        Self {
            sockets,
            reply,
            per_source: per_source.max(1),
            buckets: vec![empty; BUCKETS],
            input: vec![0; MAX_DATAGRAM],
            output: vec![0; MAX_DATAGRAM],
        }
    }

    /// Reads what waits on socket `index` (up to a batch) and answers what
    /// the guard lets through; counts everything in `stats`.
    ///
    /// # Errors
    /// A receive error other than "nothing more" or a transient one.
    pub(crate) fn serve(&mut self, index: usize, stats: &mut Stats) -> io::Result<()> {
        let Some(socket) = self.sockets.get(index) else { return Ok(()) };
        for _ in 0..BATCH {
            let (len, source) = match socket.recv_from(&mut self.input) {
                Ok(received) => received,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // An ICMP error for an earlier reply (ECONNREFUSED) and the
                // like: about that reply, not about this socket.
                Err(err) if transient(&err) => continue,
                Err(err) => return Err(err),
            };
            stats.datagrams_received += 1;
            if is_guarded_port(source.port()) {
                stats.datagrams_guarded += 1;
                continue;
            }
            if !admit(&mut self.buckets, self.per_source, source.ip(), Instant::now()) {
                stats.datagrams_limited += 1;
                continue;
            }
            let Some(reply_len) = (self.reply)(&self.input[..len], source, &mut self.output) else {
                continue;
            };
            let reply = &self.output[..reply_len.min(self.output.len())];
            match socket.send_to(reply, source) {
                Ok(_) => stats.datagrams_answered += 1,
                // A full send buffer drops the reply, as UDP may.
                Err(_) => stats.datagrams_unsent += 1,
            }
        }
        Ok(())
    }
}

/// Receive errors that concern one earlier datagram, not the socket.
fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Takes a token from the bucket of `ip`'s source (its address, or for IPv6
/// its /64, so one host cannot get a fresh bucket per address of its
/// network), refilled at `per_second`, holding at most `per_second`; false
/// when it is empty.
fn admit(buckets: &mut [Bucket], per_second: u32, ip: IpAddr, now: Instant) -> bool {
    let rate = f64::from(per_second);
    let source = Source::of(ip);
    let bucket = &mut buckets[slot(source, buckets.len())];
    if bucket.source != Some(source) {
        // A new source (or one that shares the slot): a full bucket, but the
        // other's spent tokens stay spent, so a collision never adds replies.
        let tokens = if bucket.source.is_none() { rate } else { bucket.tokens.min(rate) };
        *bucket = Bucket { source: Some(source), tokens, last: Some(now) };
    }
    let elapsed = bucket.last.map_or(0.0, |last| now.saturating_duration_since(last).as_secs_f64());
    bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
    bucket.last = Some(now);
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// The bucket of `source`: a hash of it.
fn slot(source: Source, buckets: usize) -> usize {
    // Fibonacci hashing: the high bits of key × 2^64/φ.
    let hashed = source.key().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    usize::try_from(hashed >> 54).unwrap_or(0) % buckets
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reflecting_ports_are_guarded_and_ephemeral_ones_are_not() {
        for port in [0, 7, 13, 19, 37, 53, 123, 1023, 1900, 5353, 11211] {
            assert!(is_guarded_port(port), "{port}");
        }
        for port in [1024, 8080, 32768, 40000, 60999, 65535] {
            assert!(!is_guarded_port(port), "{port}");
        }
    }

    #[test]
    fn each_source_gets_its_rate_and_a_burst_of_it() {
        let empty = Bucket { source: None, tokens: 0.0, last: None };
        let mut buckets = vec![empty; BUCKETS];
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let passed = (0..20).filter(|_| admit(&mut buckets, 5, a, start)).count();
        assert_eq!(passed, 5, "a burst of the rate, then nothing");
        // Another source has its own bucket (unless they collide).
        if slot(Source::of(a), BUCKETS) != slot(Source::of(b), BUCKETS) {
            assert!(admit(&mut buckets, 5, b, start));
        }
        // A second later, the rate again.
        let later = start + Duration::from_secs(1);
        let passed = (0..20).filter(|_| admit(&mut buckets, 5, a, later)).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn an_ipv6_network_shares_one_bucket() {
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let other: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(slot(Source::of(one), BUCKETS), slot(Source::of(other), BUCKETS));
        // And they share its tokens: one reply a second for the whole /64.
        let empty = Bucket { source: None, tokens: 0.0, last: None };
        let mut buckets = vec![empty; BUCKETS];
        let now = Instant::now();
        assert!(admit(&mut buckets, 1, one, now));
        assert!(!admit(&mut buckets, 1, other, now), "another address of the /64");
    }
}
