//! `NetError`: which socket step failed, on which address, and what an accept
//! loop should do about it.

use std::io;
use std::net::SocketAddr;

/// A failed socket operation, naming the step and the address it concerned.
///
/// The underlying [`io::Error`] is kept as the [`source`](std::error::Error::source),
/// so callers can still match on its [`kind`](io::Error::kind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// `socket(2)` failed before binding or connecting.
    #[error("cannot create a socket for {addr}")]
    Socket {
        /// The address the socket was for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `setsockopt(2)` failed for a listener about to be bound.
    #[error("cannot set {option} on a socket for {addr}")]
    SocketOption {
        /// The address the socket was for.
        addr: SocketAddr,
        /// The option, as named in C (`SO_REUSEADDR`).
        option: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `bind(2)` failed: the address is in use, not local, or privileged.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `listen(2)` failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The bound address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `accept(2)` failed; see [`NetError::recovery`] for what to do next.
    #[error("cannot accept on {local}")]
    Accept {
        /// The listener's address.
        local: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Changing a listener's blocking mode failed.
    #[error("cannot change the blocking mode of {local}")]
    Mode {
        /// The listener's address.
        local: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A listener could not be made to stop listening.
    #[error("cannot stop listening on {local}")]
    Shutdown {
        /// The listener's address.
        local: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An inherited descriptor is not a usable listening TCP socket.
    #[error("inherited descriptor is not a listening TCP socket")]
    Inherit {
        /// The OS error, or a description of what the descriptor is instead.
        #[source]
        source: io::Error,
    },
    /// The host name could not be resolved, or resolved to no address.
    #[error("cannot resolve {host} (port {port})")]
    Resolve {
        /// The name as given.
        host: String,
        /// The port that was asked for.
        port: u16,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// `connect(2)` failed: refused, unreachable or timed out.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The handshake was done, but the peer reset the connection before
    /// [`connect_addr`](crate::connect_addr) could return it.
    #[error("connection to {addr} reset by the peer as soon as it was made")]
    Reset {
        /// The address connected to.
        addr: SocketAddr,
        /// The OS error (`ConnectionReset`).
        #[source]
        source: io::Error,
    },
    /// A host name had several addresses and none of them could be connected
    /// to; the source lists each address and why it failed.
    #[error("cannot connect to {host} port {port} at any of its addresses")]
    ConnectAll {
        /// The name as given.
        host: String,
        /// The port that was asked for.
        port: u16,
        /// Every address tried, in order, with its failure.
        #[source]
        attempts: ConnectAttempts,
    },
}

/// The failed attempts behind [`NetError::ConnectAll`], in the order they were
/// made: at least two, each a [`NetError::Connect`] or a [`NetError::Socket`].
///
/// As an error it reads `ADDR: reason; ADDR: reason`, and has no source of
/// its own (its causes are several); [`ConnectAttempts::iter`] gives each
/// attempt as a typed error, whose [`NetError::io_error`] can be matched.
#[derive(Debug)]
pub struct ConnectAttempts {
    pub(crate) first: Box<NetError>,
    pub(crate) rest: Vec<NetError>,
}

impl ConnectAttempts {
    /// Each attempt's error, in the order the addresses were tried.
    pub fn iter(&self) -> impl Iterator<Item = &NetError> {
        std::iter::once(&*self.first).chain(&self.rest)
    }

    /// The last attempt's error.
    #[must_use]
    pub fn last(&self) -> &NetError {
        self.rest.last().unwrap_or(&self.first)
    }
}

impl std::fmt::Display for ConnectAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, attempt) in self.iter().enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            match attempt {
                NetError::Connect { addr, source } => write!(f, "{separator}{addr}: {source}")?,
                other => write!(f, "{separator}{other}: {}", other.io_error())?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConnectAttempts {}

/// What an accept loop should do after [`Listener::accept`](crate::Listener::accept)
/// fails.
///
/// `accept(2)` fails for reasons of very different weight: a signal, a client
/// that reset before it was accepted, an empty queue on a non-blocking listener,
/// or a process out of descriptors. Treating them all as fatal is how the
/// textbook server dies when a child exits; treating them all as "retry" is how a
/// server spins at 100% CPU when it runs out of descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Accept again now: interrupted by a signal, or the connection was aborted
    /// or failed before it could be accepted (Linux passes such network errors
    /// through `accept`).
    Retry,
    /// The queue is empty (non-blocking listener): wait for readiness.
    Drained,
    /// Out of descriptors or kernel memory (`EMFILE`, `ENFILE`, `ENOBUFS`,
    /// `ENOMEM`): stop accepting for a while. The pending connection stays in
    /// the kernel's queue, so polling again at once would spin.
    BackOff,
    /// Anything else, including every error that is not from `accept`.
    Fatal,
}

impl NetError {
    /// The OS error behind this failure; for [`NetError::ConnectAll`], the
    /// last address's.
    #[must_use]
    pub fn io_error(&self) -> &io::Error {
        match self {
            Self::Socket { source, .. }
            | Self::SocketOption { source, .. }
            | Self::Bind { source, .. }
            | Self::Listen { source, .. }
            | Self::Accept { source, .. }
            | Self::Mode { source, .. }
            | Self::Shutdown { source, .. }
            | Self::Inherit { source }
            | Self::Resolve { source, .. }
            | Self::Connect { source, .. }
            | Self::Reset { source, .. } => source,
            Self::ConnectAll { attempts, .. } => attempts.last().io_error(),
        }
    }

    /// Whether this is an accept that failed because the socket no longer
    /// listens (`EINVAL`): [`Listener::stop_listening`](crate::Listener::stop_listening)
    /// was called on it, by this process or another that shares it.
    #[must_use]
    pub fn is_stopped_listener(&self) -> bool {
        matches!(self, Self::Accept { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
    }

    /// Classifies an accept failure for the caller's loop; see [`Recovery`].
    #[must_use]
    pub fn recovery(&self) -> Recovery {
        let Self::Accept { source, .. } = self else { return Recovery::Fatal };
        if source.kind() == io::ErrorKind::WouldBlock {
            return Recovery::Drained;
        }
        match source.raw_os_error() {
            Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => Recovery::Retry,
            // accept(2): "Linux passes already-pending network errors on the new
            // socket as an error code from accept()"; treat them like EAGAIN and retry.
            Some(
                libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
                | libc::ECONNRESET,
            ) => Recovery::Retry,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Recovery::BackOff,
            _ => Recovery::Fatal,
        }
    }
}
