//! A ready-made admission [`Policy`]: access rules by address prefix, a limit
//! of live connections per source, and a rate of new connections.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::{Admit, Verdict};

/// The reason given for a peer the access rules refuse.
pub const DENIED: &str = "denied by the access rules";
/// The reason given for a peer whose source already has the most connections
/// allowed.
pub const TOO_MANY_FROM_SOURCE: &str = "too many connections from this address";

/// An IPv4 or IPv6 address prefix, such as `10.0.0.0/8` or `2001:db8::/32`; a
/// bare address is a prefix of its full length (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` lies in this prefix. An IPv4-mapped IPv6 address
    /// (`::ffff:192.0.2.1`) counts as the IPv4 address it carries.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }

    /// The prefix length in bits.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
        let net = match bare.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => bare
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| CidrError { text: text.to_owned() })?,
        };
        // `10.1.2.3/8` is read as the network it names, `10.0.0.0/8`; an
        // IPv4-mapped IPv6 prefix as the IPv4 prefix it carries.
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
                None => net,
            },
            other => other,
        };
        Ok(Self(net.trunc()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A string that is neither an address nor an address prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not an IPv4 or IPv6 address or address prefix (such as 10.0.0.0/8)")]
pub struct CidrError {
    text: String,
}

/// Where a connection (or a datagram) comes from, for the limits per source:
/// an IPv4 address, or the /64 an IPv6 address belongs to (one host or one
/// site's LAN usually holds a whole /64, and picks addresses in it at will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    V6(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6((v6.to_bits() >> 64) as u64),
        }
    }

    /// The source as a number, for hashing: the IPv4 address, or the /64.
    pub(crate) fn key(self) -> u64 {
        match self {
            Self::V4(v4) => u64::from(u32::from(v4)),
            Self::V6(prefix) => prefix,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; any other as is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// New connections per second, with a burst of one second's worth: a token
/// bucket that refills continuously.
#[derive(Debug, Clone)]
struct Rate {
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Rate {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self { per_second, tokens: per_second, last: None }
    }

    /// Takes a token at `now`, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second))
        }
    }
}

/// Access rules, a per-source limit and a connection rate, decided on the
/// peer's address in the parent, before any fork.
///
/// - **Access rules** (`allow`, `deny`): the most specific prefix that
///   contains the peer decides (`--deny 10.0.0.0/8 --allow 10.1.0.0/16`
///   admits 10.1.2.3 and refuses 10.2.3.4, in either order); between an allow
///   and a deny of the same prefix, deny wins. A peer no rule contains is
///   admitted, unless there is at least one allow rule. Refused peers get
///   [`DENIED`].
/// - **Per-source limit** (`max_per_source`): a peer whose IPv4 address, or
///   IPv6 /64, already has that many live connections is refused with
///   [`TOO_MANY_FROM_SOURCE`]; other sources are unaffected.
/// - **Rate** (`max_rate`): beyond that many new connections per second
///   (bursts of up to one second's worth), the server holds the connection
///   and stops accepting until the rate allows it ([`Verdict::Wait`]): clients
///   wait in the kernel's backlog, as with xinetd's `cps`, and none is refused.
///
/// ```no_run
/// use forkserve::{Policy, Server};
///
/// let policy = Policy::new()
///     .deny("10.0.0.0/8".parse()?)
///     .allow("10.1.0.0/16".parse()?)
///     .max_per_source(8)
///     .max_rate(200);
/// let server = Server::bind(&["0.0.0.0:7000".parse()?], 128)?.admit(policy);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Each rule and whether it allows.
    rules: Vec<(Cidr, bool)>,
    max_per_source: Option<usize>,
    live: HashMap<Source, usize>,
    rate: Option<Rate>,
}

impl Policy {
    /// A policy that admits everyone, at any rate.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits peers in `prefix` (unless a more specific deny rule says
    /// otherwise); once there is one allow rule, peers no rule contains are
    /// refused.
    #[must_use]
    pub fn allow(mut self, prefix: Cidr) -> Self {
        self.rules.push((prefix, true));
        self
    }

    /// Refuses peers in `prefix` (unless a more specific allow rule says
    /// otherwise).
    #[must_use]
    pub fn deny(mut self, prefix: Cidr) -> Self {
        self.rules.push((prefix, false));
        self
    }

    /// At most `limit` live connections from one IPv4 address or IPv6 /64
    /// (at least 1).
    #[must_use]
    pub fn max_per_source(mut self, limit: usize) -> Self {
        self.max_per_source = Some(limit.max(1));
        self
    }

    /// At most `per_second` new connections a second (at least 1), in bursts
    /// of up to one second's worth.
    #[must_use]
    pub fn max_rate(mut self, per_second: u32) -> Self {
        self.rate = Some(Rate::new(per_second));
        self
    }

    /// Whether the access rules admit `ip`.
    #[must_use]
    pub fn permits(&self, ip: IpAddr) -> bool {
        let mut best: Option<(u8, bool)> = None;
        for &(prefix, allows) in self.rules.iter().filter(|(prefix, _)| prefix.contains(ip)) {
            let len = prefix.prefix_len();
            best = match best {
                Some((best_len, best_allows)) if best_len > len => Some((best_len, best_allows)),
                Some((best_len, best_allows)) if best_len == len => {
                    Some((len, best_allows && allows))
                }
                _ => Some((len, allows)),
            };
        }
        best.map_or_else(|| !self.rules.iter().any(|&(_, allows)| allows), |(_, allows)| allows)
    }

    /// [`Admit::admit`] at a given moment (for the rate).
    fn admit_at(&mut self, peer: SocketAddr, now: Instant) -> Verdict {
        if !self.permits(peer.ip()) {
            return Verdict::Refuse(Cow::Borrowed(DENIED));
        }
        let source = Source::of(peer.ip());
        if let Some(limit) = self.max_per_source {
            if self.live.get(&source).copied().unwrap_or(0) >= limit {
                return Verdict::Refuse(Cow::Borrowed(TOO_MANY_FROM_SOURCE));
            }
        }
        if let Some(rate) = &mut self.rate {
            if let Err(wait) = rate.take(now) {
                return Verdict::Wait(wait);
            }
        }
        if self.max_per_source.is_some() {
            *self.live.entry(source).or_default() += 1;
        }
        Verdict::Serve
    }
}

impl Admit for Policy {
    fn admit(&mut self, peer: SocketAddr) -> Verdict {
        self.admit_at(peer, Instant::now())
    }

    fn release(&mut self, peer: SocketAddr) {
        let source = Source::of(peer.ip());
        if let Some(live) = self.live.get_mut(&source) {
            *live = live.saturating_sub(1);
            if *live == 0 {
                self.live.remove(&source);
            }
        }
    }

    /// No access rule, no limit per source, no rate.
    fn admits_everyone(&self) -> bool {
        self.rules.is_empty() && self.max_per_source.is_none() && self.rate.is_none()
    }
}

#[cfg(test)]
mod tests;
