//! The decision on each accepted connection, taken in the parent before any
//! fork: serve it, refuse it, or hold it and pause accepting.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

/// What to do with one accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fork a child to serve it.
    Serve,
    /// Close it at once, without a fork; the reason is logged and reported as
    /// [`Event::Refused`](crate::Event::Refused).
    Refuse(Cow<'static, str>),
    /// Keep it unserved and stop accepting for this long (later clients wait
    /// in the kernel's backlog, as xinetd's `cps` does), then ask again. A
    /// pause under 1 ms counts as 1 ms.
    Wait(Duration),
}

/// A policy consulted in the parent for every accepted connection, before any
/// fork: per-address limits, allow and deny lists, a connection rate.
///
/// It runs in the parent's event loop, so it must not block. Any
/// `FnMut(SocketAddr) -> Verdict` closure is a policy that never needs to know
/// when a connection ends.
///
/// ```no_run
/// use std::collections::HashMap;
/// use std::net::{IpAddr, SocketAddr};
/// use forkserve::{Admit, Verdict};
///
/// /// At most two connections at a time from one address.
/// #[derive(Default)]
/// struct PerAddress(HashMap<IpAddr, usize>);
///
/// impl Admit for PerAddress {
///     fn admit(&mut self, peer: SocketAddr) -> Verdict {
///         let live = self.0.entry(peer.ip()).or_default();
///         if *live >= 2 {
///             return Verdict::Refuse("two connections from this address already".into());
///         }
///         *live += 1;
///         Verdict::Serve
///     }
///     fn release(&mut self, peer: SocketAddr) {
///         if let Some(live) = self.0.get_mut(&peer.ip()) {
///             *live -= 1;
///         }
///     }
/// }
///
/// let server = forkserve::Server::bind(&["127.0.0.1:0".parse()?], 128)?
///     .admit(PerAddress::default());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Admit {
    /// Decides on a connection from `peer`, just accepted (or held after a
    /// [`Verdict::Wait`]).
    fn admit(&mut self, peer: SocketAddr) -> Verdict;

    /// Called once for every connection this policy answered
    /// [`Verdict::Serve`], when it is over: its child was reaped, or it was
    /// closed unserved at shutdown.
    fn release(&mut self, peer: SocketAddr) {
        let _ = peer;
    }

    /// Whether this policy serves every peer, at any time, and counts
    /// nothing ([`Admit::release`] does nothing): then it need not see each
    /// connection, and in pool mode ([`Server::prefork`](crate::Server::prefork))
    /// the children accept connections themselves, without the parent on
    /// the connection's path. Default `false`: a policy is asked about
    /// every connection.
    fn admits_everyone(&self) -> bool {
        false
    }
}

/// The default policy: serve everyone.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServeAll;

impl Admit for ServeAll {
    fn admit(&mut self, _peer: SocketAddr) -> Verdict {
        Verdict::Serve
    }

    fn admits_everyone(&self) -> bool {
        true
    }
}

impl<F: FnMut(SocketAddr) -> Verdict> Admit for F {
    fn admit(&mut self, peer: SocketAddr) -> Verdict {
        self(peer)
    }
}
