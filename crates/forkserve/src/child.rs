//! The child's side: one ordered list of set-up steps, then the caller's work
//! on one [`Connection`].

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use procmgr::{ProcError, Signal};
use tracing::warn;

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
}

/// What every child needs to know before it serves, fixed when serving starts.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    /// The parent's pid, taken before any fork (for the parent-death check).
    pub(crate) parent: u32,
    /// Signals the parent found ignored at start-up, to be given back their
    /// default action (SIGPIPE, SIGINT and SIGQUIT excepted).
    pub(crate) restore: Vec<Signal>,
    /// SO_RCVTIMEO and SO_SNDTIMEO for the connection.
    pub(crate) idle_timeout: Option<Duration>,
    /// Descriptors the caller asked every child to keep.
    pub(crate) keep: Vec<OwnedFd>,
}

/// Signals a child ignores: a Ctrl-C or Ctrl-\ at the terminal reaches the
/// whole process group, and shutting down is the parent's business; SIGPIPE,
/// as in every Rust program, so a write to a vanished peer is an `EPIPE` error.
pub(crate) const CHILD_IGNORES: [Signal; 3] = [Signal::INT, Signal::QUIT, Signal::PIPE];

impl ChildSetup {
    /// Reads what children will need: to be called in the parent once, before
    /// the first fork.
    pub(crate) fn new(idle_timeout: Option<Duration>, keep: Vec<OwnedFd>) -> Self {
        let restore = procmgr::ignored_signals()
            .into_iter()
            .filter(|signal| !CHILD_IGNORES.contains(signal))
            .collect();
        Self { parent: std::process::id(), restore, idle_timeout, keep }
    }

    /// Runs in a new child: the set-up steps, then `work`, inside a
    /// `conn{pid, peer}` span; returns the exit code.
    pub(crate) fn run(
        &self,
        connection: Connection,
        work: &mut impl FnMut(Connection) -> i32,
    ) -> i32 {
        let pid = std::process::id();
        let _span = tracing::info_span!("conn", pid, peer = %connection.peer).entered();
        if let Err(err) = self.prepare(&connection.stream) {
            warn!(error = chain(&err), "cannot set up the child");
            return SETUP_FAILED;
        }
        work(connection)
    }

    /// The set-up steps, in order; each may fail the child.
    ///
    /// 1. Descriptors: keep 0, 1, 2, the connection and the caller's kept
    ///    ones; close everything else (the parent's listeners and signalfd, and
    ///    whatever the server's launcher leaked).
    /// 2. Signals: what a fresh program would have. `fork` already emptied the
    ///    mask and reset caught signals; undo what the launcher ignored, and
    ///    ignore [`CHILD_IGNORES`].
    /// 3. Lifetime: SIGTERM when the parent dies, however it dies.
    /// 4. The connection's idle timeout.
    fn prepare(&self, stream: &TcpStream) -> Result<(), SetupError> {
        let mut keep: Vec<BorrowedFd<'_>> = self.keep.iter().map(AsFd::as_fd).collect();
        keep.push(stream.as_fd());
        procmgr::close_other_fds(&keep)?;
        procmgr::restore_default(&self.restore)?;
        procmgr::ignore(&CHILD_IGNORES)?;
        procmgr::die_with_parent(Signal::TERM, self.parent)?;
        stream.set_read_timeout(self.idle_timeout).map_err(SetupError::Timeout)?;
        stream.set_write_timeout(self.idle_timeout).map_err(SetupError::Timeout)?;
        Ok(())
    }
}

/// Why a child could not set itself up.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Process(#[from] ProcError),
    #[error("cannot set the idle timeout")]
    Timeout(#[source] std::io::Error),
}
