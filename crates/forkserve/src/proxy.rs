//! The PROXY protocol in the parent's loop: connections from trusted load
//! balancers wait, each with a deadline, until their header is whole; the
//! client's address it carries then goes through admission as if the client
//! had connected itself. Parsing and reading are `netcore::proxy`'s.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Cidr;

/// How long a balancer's connection may take to send its header, by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections waiting for their header at once (each is one more
/// descriptor in the loop's `poll`).
pub(crate) const MAX_PENDING: usize = 32;
/// After a wake-up that found half a header, how long before looking again
/// (the data already there keeps the socket readable, so polling it would
/// spin).
pub(crate) const RETRY_PARTIAL: Duration = Duration::from_millis(5);

/// Refusal reasons, as counted and logged.
pub(crate) const NO_HEADER: &str = "no valid PROXY header";
pub(crate) const TIMED_OUT: &str = "PROXY header timed out";
pub(crate) const UNTRUSTED: &str = "PROXY header from an untrusted address";
pub(crate) const TOO_MANY_WAITING: &str = "too many balancer connections waiting for a header";

/// Who must send a header, and how soon.
#[derive(Debug, Clone)]
pub(crate) struct ProxySettings {
    pub(crate) trusted: Vec<Cidr>,
    pub(crate) timeout: Duration,
}

impl ProxySettings {
    /// Whether connections from `ip` come from a balancer (and must start
    /// with a header).
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|cidr| cidr.contains(ip))
    }
}

/// A balancer's connection waiting for its header.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Non-blocking while it waits.
    pub(crate) stream: TcpStream,
    /// The balancer's address (the connection's peer).
    pub(crate) balancer: SocketAddr,
    /// The listener's address.
    pub(crate) listener: SocketAddr,
    /// Refused if the header is not whole by then.
    pub(crate) until: Instant,
    /// Half a header was there (or a whole one that cannot be taken yet):
    /// not polled again before then.
    pub(crate) retry_at: Option<Instant>,
    /// The header is whole: the deadline no longer applies.
    pub(crate) complete: bool,
}

impl Pending {
    /// When the loop must look at it again without an event.
    pub(crate) fn next_look(&self) -> Instant {
        match (self.retry_at, self.complete) {
            (Some(retry), true) => retry,
            (Some(retry), false) => retry.min(self.until),
            (None, _) => self.until,
        }
    }
}
