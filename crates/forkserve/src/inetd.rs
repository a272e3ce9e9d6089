//! One connection already open on standard input and output, as inetd and
//! xinetd (`nowait`), tcpserver and systemd (`Accept=yes`) hand it over: they
//! accepted and forked already, so it is served in this process, with the
//! same child set-up and the same `work` as [`Server`](crate::Server)'s
//! children.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Duration;

use procmgr::Signal;
use tracing::info;

use crate::child::{CHILD_IGNORES, conn_span};
use crate::{Admit, Connection, ServeError, Verdict};

/// The exit code [`Inetd::serve`] returns for a connection it refused.
pub const REFUSED: i32 = 1;

/// Serves the connection on standard input (and output) in this process.
///
/// ```no_run
/// // Under inetd: `echo stream tcp nowait nobody /usr/local/bin/my-echo my-echo`
/// use std::io::Read;
/// let code = forkserve::Inetd::new().serve(|mut conn| {
///     let mut request = String::new();
///     let _ = conn.stream.read_to_string(&mut request);
///     0
/// })?;
/// std::process::exit(code);
/// # Ok::<(), forkserve::ServeError>(())
/// ```
#[must_use]
pub struct Inetd {
    idle_timeout: Option<Duration>,
    admit: Option<Box<dyn Admit>>,
}

impl std::fmt::Debug for Inetd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inetd")
            .field("idle_timeout", &self.idle_timeout)
            .field("admit", &self.admit.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Default for Inetd {
    fn default() -> Self {
        Self::new()
    }
}

impl Inetd {
    /// No idle timeout, every peer admitted.
    pub fn new() -> Self {
        Self { idle_timeout: None, admit: None }
    }

    /// As [`Server::idle_timeout`](crate::Server::idle_timeout).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout.filter(|timeout| !timeout.is_zero());
        self
    }

    /// The decision on the peer, once, before `work` runs: a refusal closes
    /// the connection unserved and [`Inetd::serve`] returns [`REFUSED`]. A
    /// [`Verdict::Wait`] serves at once: pacing needs a process that sees
    /// every connection, which under inetd only the superserver is (so of a
    /// [`Policy`](crate::Policy), the access rules are what applies).
    pub fn admit(mut self, admit: impl Admit + 'static) -> Self {
        self.admit = Some(Box::new(admit));
        self
    }

    /// Takes the connection on standard input, sets the process up as a
    /// [`Server`](crate::Server)'s child would be (SIGTERM's default action
    /// back, SIGINT, SIGQUIT and SIGPIPE ignored, the idle timeout), then runs
    /// `work` inside a `conn{pid, peer}` span and returns its exit code.
    ///
    /// # Errors
    /// [`ServeError::NotAConnection`] if standard input is not a connected
    /// TCP socket, [`ServeError::Signals`] if the set-up fails.
    pub fn serve(mut self, work: impl FnOnce(Connection) -> i32) -> Result<i32, ServeError> {
        let not_a_connection = ServeError::NotAConnection;
        let stdin = io::stdin().as_fd().try_clone_to_owned().map_err(not_a_connection)?;
        let stream = TcpStream::from(stdin);
        let peer = stream.peer_addr().map_err(not_a_connection)?;
        let local = stream.local_addr().map_err(not_a_connection)?;
        let _span = conn_span(std::process::id(), peer).entered();
        if let Some(admit) = self.admit.as_mut() {
            if let Verdict::Refuse(reason) = admit.admit(peer) {
                info!(%peer, "refused a connection: {reason}");
                return Ok(REFUSED);
            }
        }
        // A superserver may leave signals blocked across execve; a child of
        // `Server` starts with none blocked, and so does this.
        procmgr::unblock_all().map_err(ServeError::Signals)?;
        procmgr::restore_default(&[Signal::TERM]).map_err(ServeError::Signals)?;
        procmgr::ignore(&CHILD_IGNORES).map_err(ServeError::Signals)?;
        let timeouts = stream
            .set_read_timeout(self.idle_timeout)
            .and_then(|()| stream.set_write_timeout(self.idle_timeout));
        timeouts.map_err(not_a_connection)?;
        info!(%local, "serving one connection (inetd mode)");
        Ok(work(Connection { stream, peer, local }))
    }
}
