//! The child's side: one ordered list of set-up steps, then the caller's work
//! on one [`Connection`].

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use procmgr::{CloseList, ProcError, Signal, Signals};
use tracing::warn;

use crate::ServeError;
use crate::error::chain;

/// Exit code of a child that could not set itself up before serving
/// (`EX_SOFTWARE` from sysexits.h): its connection is closed unserved.
pub const SETUP_FAILED: i32 = 70;

/// One accepted connection, handed to the child's work.
#[derive(Debug)]
#[non_exhaustive]
pub struct Connection {
    /// The connection, blocking, close-on-exec; closed when dropped.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address on this connection (the listener's, or for a
    /// listener on `0.0.0.0` or `[::]`, the address the client reached).
    pub local: SocketAddr,
}

/// Signals a child ignores: a Ctrl-C or Ctrl-\ at the terminal reaches the
/// whole process group, and shutting down is the parent's business; SIGPIPE,
/// as in every Rust program, so a write to a vanished peer is an `EPIPE` error.
pub(crate) const CHILD_IGNORES: [Signal; 3] = [Signal::INT, Signal::QUIT, Signal::PIPE];

/// What every child needs to know before it serves, fixed when serving starts.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    /// The parent's pid, taken before any fork (for the parent-death check).
    parent: u32,
    /// The descriptors a child must not hold: leaked by the server's launcher,
    /// and the parent's signalfd.
    close: CloseList,
    /// SO_RCVTIMEO and SO_SNDTIMEO for each connection.
    idle_timeout: Option<Duration>,
}

impl ChildSetup {
    /// Reads what children will need: called in the parent once, before the
    /// first fork.
    pub(crate) fn new(
        signals: &Signals,
        idle_timeout: Option<Duration>,
    ) -> Result<Self, ServeError> {
        let mut close = CloseList::leaked().map_err(ServeError::Descriptors)?;
        close.add(signals.as_fd());
        // The first span a process makes and enters has the subscriber set
        // up its span storage (tracing-subscriber's registry allocates slab
        // pages and its stack of entered spans) and register the call site.
        // Done here once, in the parent, that work is shared by every child
        // instead of repeated in each as private memory: about 16 KiB less
        // per held child with `echo-server`'s subscriber (PERFORMANCE.md).
        // The span closes at once and logs nothing unless the subscriber
        // logs span creation.
        drop(conn_span(0, SocketAddr::from(([0, 0, 0, 0], 0))).entered());
        Ok(Self { parent: std::process::id(), close, idle_timeout })
    }

    /// Adds a descriptor of the parent's (a datagram socket) for children to
    /// close.
    pub(crate) fn close_too(&mut self, fd: std::os::fd::BorrowedFd<'_>) {
        self.close.add(fd);
    }

    /// Runs in a new child: the process's set-up, then [`serve`](Self::serve);
    /// returns the exit code.
    pub(crate) fn run(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        listener: SocketAddr,
        work: &mut impl FnMut(Connection) -> i32,
    ) -> i32 {
        let pid = std::process::id();
        if let Err(err) = self.prepare_process() {
            let _span = conn_span(pid, peer).entered();
            warn!(error = chain(&err), "cannot set up the child");
            return SETUP_FAILED;
        }
        self.serve(pid, stream, peer, listener, work)
    }

    /// In a child already set up, whose pid is `pid` (asked once per
    /// process, not per connection): the connection's set-up, then `work`,
    /// inside a `conn{pid, peer}` span; returns `work`'s exit code.
    pub(crate) fn serve(
        &self,
        pid: u32,
        stream: TcpStream,
        peer: SocketAddr,
        listener: SocketAddr,
        work: &mut impl FnMut(Connection) -> i32,
    ) -> i32 {
        let _span = conn_span(pid, peer).entered();
        match self.prepare_connection(&stream, listener) {
            Ok(local) => work(Connection { stream, peer, local }),
            Err(err) => {
                let err = SetupError::Socket(err);
                warn!(error = chain(&err), "cannot set up the child");
                SETUP_FAILED
            }
        }
    }

    /// The process's set-up steps, in order; each may fail the child. (A
    /// child that serves several connections in turn runs them once.)
    ///
    /// 1. Descriptors: close what the server's launcher leaked (descriptors
    ///    not close-on-exec) and the parent's signalfd; the listeners are
    ///    already dropped (but in a pool member that accepts for itself).
    ///    Descriptors the program opened itself stay.
    /// 2. Signals: `fork` already emptied the mask and reset caught signals;
    ///    give SIGTERM back its default action even if the launcher ignored it
    ///    (shutdown and the parent-death signal rely on it), and ignore
    ///    [`CHILD_IGNORES`]. Other signals the launcher ignored stay ignored,
    ///    as in any program it starts (`nohup`'s SIGHUP, say).
    /// 3. Lifetime: SIGTERM when the parent dies, however it dies.
    pub(crate) fn prepare_process(&self) -> Result<(), SetupError> {
        self.close.close();
        procmgr::restore_default(&[Signal::TERM])?;
        procmgr::ignore(&CHILD_IGNORES)?;
        procmgr::die_with_parent(Signal::TERM, self.parent)?;
        Ok(())
    }

    /// The connection's set-up steps: the idle timeout, and the local address
    /// (the listener's, unless it is a wildcard); returns the local address.
    fn prepare_connection(
        &self,
        stream: &TcpStream,
        listener: SocketAddr,
    ) -> Result<SocketAddr, std::io::Error> {
        // A new connection has no timeouts: set them only when asked.
        if self.idle_timeout.is_some() {
            stream.set_read_timeout(self.idle_timeout)?;
            stream.set_write_timeout(self.idle_timeout)?;
        }
        if listener.ip().is_unspecified() { stream.local_addr() } else { Ok(listener) }
    }
}

/// The span every child's work runs in: `conn{pid, peer}`.
pub(crate) fn conn_span(pid: u32, peer: SocketAddr) -> tracing::Span {
    tracing::info_span!("conn", pid, %peer)
}

/// Why a child could not set itself up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error(transparent)]
    Process(#[from] ProcError),
    #[error("cannot set up the connection")]
    Socket(#[source] std::io::Error),
}
