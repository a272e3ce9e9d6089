//! The TCP socket lifecycle for a process-per-connection server: create, bind,
//! listen, accept, connect and close, over IPv4 and IPv6.
//!
//! `netcore` knows nothing of processes, signals or what the bytes mean: it hands
//! out [`Listener`]s and plain [`std::net::TcpStream`]s, and says which step
//! failed on which address when something goes wrong ([`NetError`]). Every
//! descriptor it creates is close-on-exec. Closing is dropping: a `Listener` or a
//! `TcpStream` closes its descriptor when it goes out of scope.
//!
//! ```
//! use std::io::{Read, Write};
//!
//! let listener = netcore::Listener::bind("127.0.0.1:0".parse()?, netcore::DEFAULT_BACKLOG)?;
//! let addr = listener.local_addr();
//!
//! let mut client = netcore::connect_addr(addr, None)?;
//! let (mut served, peer) = listener.accept()?;
//! assert_eq!(peer, client.local_addr()?);
//!
//! client.write_all(b"ping")?;
//! let mut buf = [0; 4];
//! served.read_exact(&mut buf)?;
//! assert_eq!(&buf, b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod listener;
pub mod proxy;

pub use error::{ConnectAttempts, NetError, Recovery};
pub use listener::{DEFAULT_BACKLOG, ListenOptions, Listener, bind_udp};

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Resolves `host` (an IPv4 or IPv6 literal, or a name) and connects to the
/// first of its addresses that accepts, in the resolver's order; returns the
/// stream and the address it reached.
///
/// With a `timeout`, each address gets at most that long to complete the
/// handshake; without one, the kernel's own limit applies. An address whose
/// peer resets the connection as soon as it is made ends the search: that
/// server was reached, and said no.
///
/// # Errors
/// [`NetError::Resolve`] when the name cannot be resolved or resolves to
/// nothing; [`NetError::Reset`] when the connection was reset as soon as it was
/// made; otherwise the [`NetError::Connect`] (or [`NetError::Socket`]) of the
/// only address there was, or [`NetError::ConnectAll`] listing every address
/// tried and why each failed.
pub fn connect(
    host: &str,
    port: u16,
    timeout: Option<Duration>,
) -> Result<(TcpStream, SocketAddr), NetError> {
    // A bracketed IPv6 literal (`[::1]`) is accepted as well as a bare one.
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs = (bare, port).to_socket_addrs().map_err(|source| NetError::Resolve {
        host: host.to_owned(),
        port,
        source,
    })?;
    connect_first(host, port, addrs, |addr| connect_addr(addr, timeout))
}

/// Tries `attempt` on each of `addrs` in turn, up to the first that connects
/// or is reset, and sums up the failures: one address's own error, or every
/// address's in a [`NetError::ConnectAll`] for `host` and `port`.
fn connect_first(
    host: &str,
    port: u16,
    addrs: impl IntoIterator<Item = SocketAddr>,
    mut attempt: impl FnMut(SocketAddr) -> Result<TcpStream, NetError>,
) -> Result<(TcpStream, SocketAddr), NetError> {
    let mut failed = Vec::new();
    for addr in addrs {
        match attempt(addr) {
            Ok(stream) => return Ok((stream, addr)),
            Err(err @ NetError::Reset { .. }) => return Err(err),
            Err(err) => {
                tracing::debug!(%addr, error = %err, "address failed, trying the next");
                failed.push(err);
            }
        }
    }
    let mut failed = failed.into_iter();
    let Some(first) = failed.next() else {
        return Err(NetError::Resolve {
            host: host.to_owned(),
            port,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "name has no addresses"),
        });
    };
    let rest: Vec<_> = failed.collect();
    if rest.is_empty() {
        return Err(first);
    }
    let attempts = ConnectAttempts { first: Box::new(first), rest };
    Err(NetError::ConnectAll { host: host.to_owned(), port, attempts })
}

/// `socket(2)` + `connect(2)` to one address, optionally bounded by `timeout`.
///
/// The stream returned is blocking and close-on-exec. Without a timeout the call
/// blocks in `connect(2)`; a signal caught meanwhile by a handler of the caller's
/// surfaces as [`NetError::Connect`] with [`std::io::ErrorKind::Interrupted`].
///
/// # Errors
/// [`NetError::Socket`] if no socket can be created, [`NetError::Connect`] if the
/// connection is refused, unreachable or times out, [`NetError::Reset`] if the
/// peer reset it before this call could return it (the handshake was done).
pub fn connect_addr(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, NetError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| NetError::Socket { addr, source })?;
    let target = SockAddr::from(addr);
    match timeout {
        Some(limit) => socket.connect_timeout(&target, limit),
        None => socket.connect(&target),
    }
    .map_err(|source| match source.kind() {
        // Only an established connection can be reset; a port nobody listens
        // on answers the handshake with a refusal instead.
        std::io::ErrorKind::ConnectionReset => NetError::Reset { addr, source },
        _ => NetError::Connect { addr, source },
    })?;
    tracing::debug!(%addr, "connected");
    Ok(socket.into())
}

/// `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL` on any connected socket
/// descriptor (a journald stream on standard error, say): writes what fits
/// now and never blocks, even on a blocking socket, and without changing the
/// flags the descriptor shares with other processes.
///
/// # Errors
/// [`std::io::ErrorKind::WouldBlock`] when nothing fits now; any other
/// `send(2)` error (`ENOTSOCK` for a descriptor that is not a socket).
pub fn send_dontwait(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> std::io::Result<usize> {
    socket2::SockRef::from(&fd).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

#[cfg(test)]
mod tests;
