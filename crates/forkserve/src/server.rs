//! [`Server`]: the listeners, the signals, the settings, and `serve`.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use netcore::Listener;
use procmgr::{Signal, Signals};

use crate::child::ChildSetup;
use crate::event::Observer;
use crate::supervisor::{Settings, Supervisor};
use crate::{Admit, Connection, Event, ServeError, Verdict};

/// The signals the server reads from its signalfd: a child's exit and the two
/// shutdown requests.
const SIGNALS: [Signal; 3] = [Signal::CHLD, Signal::TERM, Signal::INT];

/// The shortest pause the loop takes (a back-off, a [`Verdict::Wait`]): a
/// zero pause would make it spin.
pub(crate) const MIN_PAUSE: Duration = Duration::from_millis(1);

/// A fork-per-connection TCP server: listeners, settings, and the loop that
/// accepts, forks a child per connection, reaps, and shuts down in stages.
///
/// Building one blocks SIGCHLD, SIGTERM and SIGINT in the calling thread (they
/// are read from a `signalfd` by [`Server::serve`]), so a child that exits at
/// once, or a Ctrl-C during start-up, is never lost. Build it before starting
/// any thread, and serve from the same thread: `fork` refuses a process with
/// more than one thread.
pub struct Server {
    listeners: Vec<Listener>,
    signals: Signals,
    settings: Settings,
    admit: Box<dyn Admit>,
    observer: Option<Observer>,
    keep: Vec<OwnedFd>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("settings", &self.settings)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Blocks the server's signals, then binds and listens on every address in
    /// `addrs`, all on one port: with port 0 the first gets a free port from
    /// the kernel and the others take the same one. IPv6 listeners are
    /// v6-only, so `0.0.0.0` and `[::]` can be bound together.
    ///
    /// # Errors
    /// [`ServeError::Signals`], or [`ServeError::Listen`] with the address
    /// that could not be bound.
    pub fn bind(addrs: &[SocketAddr], backlog: i32) -> Result<Self, ServeError> {
        let signals = Self::signals()?;
        let mut listeners: Vec<Listener> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let port = listeners.first().map_or(addr.port(), |first| first.local_addr().port());
            let addr = SocketAddr::new(addr.ip(), port);
            listeners.push(Listener::bind(addr, backlog).map_err(ServeError::Listen)?);
        }
        Ok(Self::with(listeners, signals))
    }

    /// A server on listeners made elsewhere: bound by the caller, or inherited
    /// (systemd's `LISTEN_FDS`, through [`Listener::from_fd`]).
    ///
    /// # Errors
    /// [`ServeError::Signals`].
    pub fn new(listeners: Vec<Listener>) -> Result<Self, ServeError> {
        Ok(Self::with(listeners, Self::signals()?))
    }

    fn signals() -> Result<Signals, ServeError> {
        let signals = Signals::new(&SIGNALS).map_err(ServeError::Signals)?;
        // The check before each fork reads /proc/self/stat through a
        // descriptor opened here, once, so forking never needs a free one.
        procmgr::thread_count().map_err(ServeError::Signals)?;
        Ok(signals)
    }

    fn with(listeners: Vec<Listener>, signals: Signals) -> Self {
        Self {
            listeners,
            signals,
            settings: Settings::default(),
            admit: Box::new(|_| Verdict::Serve),
            observer: None,
            keep: Vec::new(),
        }
    }

    /// The addresses listened on, with their real ports.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// Most children alive at once (default 1024, at least 1). At the limit
    /// the listeners are not watched, so new clients wait in the kernel's
    /// backlog instead of being refused.
    #[must_use]
    pub fn max_children(mut self, limit: usize) -> Self {
        self.settings.max_children = limit.max(1);
        self
    }

    /// On SIGTERM or SIGINT, how long children may finish on their own before
    /// they are sent SIGTERM (default 5 s). A second signal cuts it short.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.settings.grace = grace;
        self
    }

    /// After SIGTERM to the children at shutdown, how long before SIGKILL
    /// (default 2 s). A third signal cuts it short.
    #[must_use]
    pub fn kill_after(mut self, wait: Duration) -> Self {
        self.settings.kill_after = wait;
        self
    }

    /// How long to stop accepting after running out of descriptors, or before
    /// retrying a fork that failed for lack of processes or memory (default
    /// 100 ms, at least 1 ms so the loop never spins).
    #[must_use]
    pub fn backoff(mut self, pause: Duration) -> Self {
        self.settings.backoff = pause.max(MIN_PAUSE);
        self
    }

    /// Set on every connection before the child's work runs, as
    /// `SO_RCVTIMEO` and `SO_SNDTIMEO`: a read or write that waits this long
    /// fails with [`std::io::ErrorKind::WouldBlock`]. `None` (the default)
    /// waits forever.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The policy that decides on each connection in the parent, before any
    /// fork (default: serve everyone).
    #[must_use]
    pub fn admit(mut self, policy: impl Admit + 'static) -> Self {
        self.admit = Box::new(policy);
        self
    }

    /// Calls `observer` with every [`Event`], in the parent, after it is
    /// logged: to count, export or react. It runs in the event loop and must
    /// not block.
    #[must_use]
    pub fn on_event(mut self, observer: impl FnMut(&Event<'_>) + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// A descriptor every child keeps (a log file, say). Children close every
    /// other descriptor but their standard streams and their connection; the
    /// server owns `fd` until it is dropped. At most 15 can be kept.
    #[must_use]
    pub fn keep_in_children(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.keep.push(fd.into());
        self
    }

    /// Serves until SIGTERM or SIGINT, then shuts down in stages: the
    /// listeners close at once, children get the grace period, then SIGTERM,
    /// then SIGKILL; returns `Ok` once every child is reaped.
    ///
    /// Each accepted connection the admission policy lets through is served
    /// by a new child process that runs `work` with it and exits with the code
    /// `work` returns (a panic exits 101). Before `work` runs, the child keeps
    /// only its standard streams and the connection, has the signal state of
    /// a fresh program (SIGINT, SIGQUIT and SIGPIPE ignored), gets SIGTERM if
    /// the parent dies, and has the idle timeout set; a child that cannot set
    /// itself up exits with [`SETUP_FAILED`](crate::SETUP_FAILED).
    ///
    /// # Errors
    /// A [`ServeError`] when the loop cannot go on: a listener or the
    /// signalfd fails, reaping fails, or fork is refused for good (the process
    /// has threads). Transient trouble (out of descriptors, processes or
    /// memory) pauses and retries instead.
    pub fn serve(self, work: impl FnMut(Connection) -> i32) -> Result<(), ServeError> {
        for listener in &self.listeners {
            // Readiness can be stale by the time accept runs (the client may
            // have reset), and a blocking accept would stall every other duty.
            listener.set_nonblocking(true).map_err(ServeError::Listen)?;
        }
        let child = ChildSetup::new(self.settings.idle_timeout, self.keep);
        let mut supervisor = Supervisor::new(
            self.listeners,
            self.signals,
            self.settings,
            self.admit,
            self.observer,
            child,
            work,
        );
        supervisor.run()
    }
}
