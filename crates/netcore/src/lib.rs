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

pub use error::{NetError, Recovery};
pub use listener::{DEFAULT_BACKLOG, Listener};

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Resolves `host` (an IPv4 or IPv6 literal, or a name) and connects to the
/// first of its addresses that accepts, in the resolver's order.
///
/// With a `timeout`, each address gets at most that long to complete the
/// handshake; without one, the kernel's own limit applies.
///
/// # Errors
/// [`NetError::Resolve`] when the name cannot be resolved or resolves to nothing,
/// otherwise the [`NetError::Connect`] of the last address tried.
pub fn connect(host: &str, port: u16, timeout: Option<Duration>) -> Result<TcpStream, NetError> {
    // A bracketed IPv6 literal (`[::1]`) is accepted as well as a bare one.
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs = (bare, port).to_socket_addrs().map_err(|source| NetError::Resolve {
        host: host.to_owned(),
        port,
        source,
    })?;
    let mut last = None;
    for addr in addrs {
        match connect_addr(addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                tracing::debug!(%addr, error = %err, "address failed, trying the next");
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| NetError::Resolve {
        host: host.to_owned(),
        port,
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "name has no addresses"),
    }))
}

/// `socket(2)` + `connect(2)` to one address, optionally bounded by `timeout`.
///
/// The stream returned is blocking and close-on-exec. Without a timeout the call
/// blocks in `connect(2)`; a signal caught meanwhile by a handler of the caller's
/// surfaces as [`NetError::Connect`] with [`std::io::ErrorKind::Interrupted`].
///
/// # Errors
/// [`NetError::Socket`] if no socket can be created, [`NetError::Connect`] if the
/// connection is refused, unreachable or times out.
pub fn connect_addr(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, NetError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| NetError::Socket { addr, source })?;
    let target = SockAddr::from(addr);
    match timeout {
        Some(limit) => socket.connect_timeout(&target, limit),
        None => socket.connect(&target),
    }
    .map_err(|source| NetError::Connect { addr, source })?;
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
