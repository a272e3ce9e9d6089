//! `Listener`: a bound, listening TCP socket and its `accept(2)`.

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::NetError;

/// The `listen(2)` backlog the textbook server uses, and our default.
///
/// The kernel caps it at `net.core.somaxconn` (4096 on current Linux).
pub const DEFAULT_BACKLOG: i32 = 128;

/// A listening TCP socket, IPv4 or IPv6, close-on-exec, with `SO_REUSEADDR`.
///
/// An IPv6 listener is v6-only, so `[::]` and `0.0.0.0` on the same port are two
/// listeners that never steal each other's connections.
#[derive(Debug)]
pub struct Listener {
    inner: Socket,
    local: SocketAddr,
    /// Adopted from a descriptor ([`Listener::from_fd`]), not bound here.
    inherited: bool,
}

/// How [`Listener::bind_with`] sets a listener up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The `listen(2)` backlog (default [`DEFAULT_BACKLOG`]).
    pub backlog: i32,
    /// `SO_REUSEPORT`: several sockets, in one process or several, may bind
    /// the same address and port, each with its own queue; the kernel spreads
    /// new connections among them by a hash of the client's address and
    /// port. Every socket sharing the port must set it, and belong to the
    /// same user. Default off.
    pub reuse_port: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self { backlog: DEFAULT_BACKLOG, reuse_port: false }
    }
}

impl ListenOptions {
    /// The defaults with this backlog.
    #[must_use]
    pub fn backlog(backlog: i32) -> Self {
        Self { backlog, ..Self::default() }
    }

    /// These options with `SO_REUSEPORT` on or off.
    #[must_use]
    pub fn reuse_port(self, reuse_port: bool) -> Self {
        Self { reuse_port, ..self }
    }
}

impl Listener {
    /// `socket(2)` + `setsockopt(SO_REUSEADDR)` + `bind(2)` + `listen(2)`.
    ///
    /// Bind port 0 to let the kernel pick a free port, then read it back with
    /// [`Listener::local_addr`].
    ///
    /// # Errors
    /// [`NetError::Socket`] if the socket cannot be created or configured,
    /// [`NetError::Bind`] if the address is in use, not local or privileged,
    /// [`NetError::Listen`] if `listen(2)` fails.
    pub fn bind(addr: SocketAddr, backlog: i32) -> Result<Self, NetError> {
        Self::bind_with(addr, ListenOptions::backlog(backlog))
    }

    /// [`Listener::bind`] with more options (`SO_REUSEPORT`).
    ///
    /// # Errors
    /// As [`Listener::bind`]; [`NetError::SocketOption`] names an option the
    /// kernel refused.
    pub fn bind_with(addr: SocketAddr, options: ListenOptions) -> Result<Self, NetError> {
        let ListenOptions { backlog, reuse_port } = options;
        let socket = new_socket(addr, Type::STREAM, Protocol::TCP, reuse_port)?;
        socket.set_reuse_address(true).map_err(|source| NetError::SocketOption {
            addr,
            option: "SO_REUSEADDR",
            source,
        })?;
        socket.bind(&addr.into()).map_err(|source| NetError::Bind { addr, source })?;
        socket.listen(backlog).map_err(|source| NetError::Listen { addr, source })?;
        let local = bound_addr(&socket).map_err(|source| NetError::Listen { addr, source })?;
        tracing::trace!(%local, backlog, "bound and listening");
        Ok(Self { inner: socket, local, inherited: false })
    }

    /// Adopts a descriptor that is already a bound, listening TCP socket, such
    /// as one inherited from systemd (`LISTEN_FDS`) or inetd. It is made
    /// close-on-exec.
    ///
    /// # Errors
    /// [`NetError::Inherit`] if the descriptor is not a listening stream socket
    /// of an IP family.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, NetError> {
        let inherit = |source| NetError::Inherit { source };
        let socket = Socket::from(fd);
        let invalid = |what: &str| inherit(io::Error::new(io::ErrorKind::InvalidInput, what));
        if socket.r#type().map_err(inherit)? != Type::STREAM {
            return Err(invalid("not a stream socket"));
        }
        if !socket.is_listener().map_err(inherit)? {
            return Err(invalid("socket is not listening"));
        }
        let local = bound_addr(&socket).map_err(inherit)?;
        socket.set_cloexec(true).map_err(inherit)?;
        tracing::debug!(%local, "adopted an inherited listener");
        Ok(Self { inner: socket, local, inherited: true })
    }

    /// The address actually bound: after binding port 0, this has the real port.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// `accept(2)` (as `accept4` with `SOCK_CLOEXEC`): the next completed
    /// connection and its peer's address.
    ///
    /// The stream is blocking even when the listener is not, because Linux does
    /// not pass `O_NONBLOCK` on to accepted sockets.
    ///
    /// A signal does not make this retry behind the caller's back: it returns
    /// [`NetError::Accept`] with [`io::ErrorKind::Interrupted`], so a loop that
    /// also waits for shutdown requests sees them at once. Use
    /// [`NetError::recovery`] to decide what to do with any failure.
    ///
    /// # Errors
    /// [`NetError::Accept`], whatever the cause.
    pub fn accept(&self) -> Result<(TcpStream, SocketAddr), NetError> {
        let accept_err = |source| NetError::Accept { local: self.local, source };
        let (socket, peer) = self.inner.accept().map_err(accept_err)?;
        let peer = peer.as_socket().ok_or_else(|| {
            accept_err(io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address"))
        })?;
        tracing::trace!(%peer, "accepted");
        Ok((socket.into(), peer))
    }

    /// Whether this listener was adopted ([`Listener::from_fd`]) rather than
    /// bound by this process: a socket from systemd or inetd is shared with
    /// the service manager, which goes on listening on it after this process
    /// is done.
    #[must_use]
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// `shutdown(2)` on the listening socket: it stops listening for every
    /// process that holds it, not only this one. Connections waiting in its
    /// backlog are reset, new ones are refused (unless another socket shares
    /// the port), and every process blocked in `accept` or `poll` on it wakes
    /// up (`accept` then fails with `EINVAL`).
    ///
    /// This is how a server whose children hold copies of the listener (to
    /// accept on it themselves) stops new clients at once, as closing its own
    /// copy would if it were the only one. Never use it on an
    /// [inherited](Listener::is_inherited) socket: the service manager's copy
    /// would stop listening too.
    ///
    /// # Errors
    /// [`NetError::Shutdown`] if `shutdown(2)` fails.
    pub fn stop_listening(&self) -> Result<(), NetError> {
        self.inner
            .shutdown(std::net::Shutdown::Read)
            .map_err(|source| NetError::Shutdown { local: self.local, source })
    }

    /// Makes [`Listener::accept`] return [`Recovery::Drained`](crate::Recovery::Drained)
    /// instead of blocking when no connection is waiting. An event loop that polls
    /// the listener needs this: a client can reset between the poll and the
    /// accept, and a blocking accept would then stall the loop.
    ///
    /// # Errors
    /// [`NetError::Mode`] if `fcntl(2)` fails.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), NetError> {
        self.inner
            .set_nonblocking(nonblocking)
            .map_err(|source| NetError::Mode { local: self.local, source })
    }
}

/// A UDP socket bound to `addr`, non-blocking and close-on-exec, for a
/// datagram service beside the TCP one: IPv6 sockets are v6-only (as
/// listeners are), and `options.reuse_port` applies (its backlog does
/// not).
///
/// # Errors
/// [`NetError::Socket`], [`NetError::SocketOption`] or [`NetError::Bind`].
pub fn bind_udp(addr: SocketAddr, options: ListenOptions) -> Result<UdpSocket, NetError> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP, options.reuse_port)?;
    socket.set_nonblocking(true).map_err(|source| NetError::SocketOption {
        addr,
        option: "O_NONBLOCK",
        source,
    })?;
    socket.bind(&addr.into()).map_err(|source| NetError::Bind { addr, source })?;
    tracing::trace!(%addr, "bound a UDP socket");
    Ok(socket.into())
}

fn bound_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket.local_addr()?.as_socket().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "socket is not bound to an IP address")
    })
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl From<Listener> for OwnedFd {
    fn from(listener: Listener) -> Self {
        listener.inner.into()
    }
}

/// A socket of `kind` for `addr`, close-on-exec (socket2's default), with
/// `SO_REUSEPORT` if asked and, for IPv6, `IPV6_V6ONLY`, so `[::]` and
/// `0.0.0.0` on one port are two sockets that never take each other's
/// clients.
fn new_socket(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
    reuse_port: bool,
) -> Result<Socket, NetError> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))
        .map_err(|source| NetError::Socket { addr, source })?;
    let option = |option| move |source| NetError::SocketOption { addr, option, source };
    if reuse_port {
        socket.set_reuse_port(true).map_err(option("SO_REUSEPORT"))?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(option("IPV6_V6ONLY"))?;
    }
    Ok(socket)
}
