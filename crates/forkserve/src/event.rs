//! What the server does, as typed values: each [`Event`] is logged as a
//! `tracing` event with fields, and handed to the caller's observer, if any.

use std::net::SocketAddr;
use std::time::Duration;

use netcore::NetError;
use procmgr::{ChildExit, ChildPid, ProcError, Signal};
use tracing::{debug, info, warn};

use crate::error::chain;
use crate::{SETUP_FAILED, ShutdownSummary, Stats};

/// What the loop knows about an event's circumstances, for its log line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogContext {
    /// How many events like this one went unlogged since the last line.
    pub(crate) suppressed: u64,
    /// Shutdown has begun (children killed by SIGTERM or SIGKILL are expected).
    pub(crate) shutting_down: bool,
}

/// Lets one log line through per interval, and counts the others.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub(crate) const fn new(interval: std::time::Duration) -> Self {
        Self { interval, last: None, suppressed: 0 }
    }

    /// `Some(suppressed since the last line)` if a line may go out at `now`.
    pub(crate) fn pass(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The caller's observer of events, set with
/// [`Server::on_event`](crate::Server::on_event).
pub(crate) type Observer = Box<dyn FnMut(&Event<'_>)>;

/// Something the server did or met. Every event is logged through `tracing`
/// (levels in each variant's doc) and passed to the observer set with
/// [`Server::on_event`](crate::Server::on_event), in the parent process.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Serving starts on this listener (info; target `forkserve::listening`,
    /// so a quiet log can still keep it).
    Listening {
        /// The bound address, with its real port.
        addr: SocketAddr,
    },
    /// A child took a connection to serve: forked for it (fork mode), handed
    /// it (pool mode), or accepted it itself (pool mode, members accepting)
    /// (info).
    Accepted {
        /// The child's pid.
        pid: ChildPid,
        /// The client's address.
        peer: SocketAddr,
    },
    /// Pool mode, once at start, after [`Event::Listening`]: how connections
    /// reach the pre-forked children (info).
    Pool {
        /// Idle children kept ready.
        spares: usize,
        /// Connections a child serves before it exits; 0 for no limit.
        per_child: u32,
        /// Idle children accept connections on the listeners themselves
        /// (the admission policy admits everyone and no PROXY header is
        /// read); otherwise the parent accepts each one, decides, and hands
        /// it over.
        members_accept: bool,
    },
    /// Pool mode: a child was forked ahead of connections and waits for one
    /// (debug).
    Preforked {
        /// Its pid.
        pid: ChildPid,
    },
    /// Pool mode: a child finished a connection and waits for the next one
    /// (info, as [`Event::Reaped`] is for a child that exits after its
    /// connection).
    Served {
        /// The child's pid.
        pid: ChildPid,
        /// The client it served.
        peer: SocketAddr,
        /// What the work returned for this connection.
        code: i32,
    },
    /// Pool mode: a child that was not serving anyone ended (debug when it
    /// exited with status 0: retired as a spare no longer needed, or at
    /// shutdown; warn otherwise: it could not set itself up, or was killed
    /// while waiting).
    SpareReaped {
        /// Its pid.
        pid: ChildPid,
        /// How it ended.
        exit: ChildExit,
    },
    /// Pool mode: forking a spare failed for lack of processes or memory;
    /// connections are still handed to idle children, or forked for, and
    /// the pool is refilled after a pause (warn for the first failure of an
    /// episode, debug for the rest).
    PreforkPaused {
        /// The failure.
        error: &'a ProcError,
        /// How long until the next try.
        pause: Duration,
        /// This failure starts an episode.
        first: bool,
    },
    /// A trusted balancer's PROXY header named the client (debug; for a v2
    /// `LOCAL` or v1 `UNKNOWN` header, `peer` is the balancer itself). The
    /// connection goes on to admission as `peer`'s.
    Proxied {
        /// The client's address, from the header.
        peer: SocketAddr,
        /// The balancer's address (the connection's own peer).
        balancer: SocketAddr,
    },
    /// The admission policy refused a connection; it was closed unserved (info,
    /// at most one line a second: the next line says how many went unlogged).
    Refused {
        /// The client's address.
        peer: SocketAddr,
        /// The policy's reason.
        reason: &'a str,
    },
    /// The admission policy asked to hold a connection and pause accepting
    /// (debug).
    Deferred {
        /// The client's address.
        peer: SocketAddr,
        /// How long accepting pauses.
        pause: Duration,
    },
    /// A child ended and was reaped (info when it exited, whatever the
    /// status: a client can cause any of them; warn when a signal killed it
    /// outside shutdown, or it could not set itself up or panicked).
    Reaped {
        /// Its pid.
        pid: ChildPid,
        /// The client it served; `None` for a child the server did not fork.
        peer: Option<SocketAddr>,
        /// How it ended.
        exit: ChildExit,
    },
    /// The child limit was reached: the listeners are not watched until a
    /// child ends, so new clients wait in the backlog (warn, at most once in
    /// ten seconds, so a flapping limit cannot flood the log).
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// Below the child limit again: accepting resumes (info, when the limit's
    /// warning was logged).
    LimitCleared {
        /// Children alive now.
        children: usize,
    },
    /// The number of live children crossed a tenth of the limit, up or down
    /// (info: `status: N/M`, as tcpserver says it): load at a glance, a few
    /// lines however busy the server is.
    Status {
        /// Children alive now.
        children: usize,
        /// The child limit.
        limit: usize,
    },
    /// `accept(2)` failed in a way worth retrying at once (debug).
    AcceptRetried {
        /// The failure.
        error: &'a NetError,
    },
    /// Out of descriptors or memory: accepting pauses (warn for the first
    /// failure of an episode, debug for the rest).
    AcceptPaused {
        /// The failure.
        error: &'a NetError,
        /// How long accepting pauses.
        pause: Duration,
        /// This failure starts an episode.
        first: bool,
    },
    /// Accepting works again after an episode of failures (info).
    AcceptResumed {
        /// How many failures the episode had.
        failures: u32,
    },
    /// `fork(2)` failed for lack of processes or memory: the connection is held
    /// and retried after a pause (warn for the first failure of an episode,
    /// debug for the rest).
    ForkPaused {
        /// The client whose connection is held.
        peer: SocketAddr,
        /// The failure.
        error: &'a ProcError,
        /// How long until the next try.
        pause: Duration,
        /// This failure starts an episode.
        first: bool,
    },
    /// Forking works again after an episode of failures (info).
    ForkResumed {
        /// How many failures the episode had.
        failures: u32,
    },
    /// A shutdown signal arrived: the listeners are closed, children may
    /// finish during the grace period (info).
    ShutdownStarted {
        /// SIGTERM or SIGINT.
        signal: Signal,
        /// Children alive.
        children: usize,
        /// How long they may take.
        grace: Duration,
    },
    /// Shutdown began with connections waiting in the listeners' backlogs, and
    /// [`Server::finish_backlog`](crate::Server::finish_backlog) asked to
    /// take them: they were accepted (info).
    BacklogFinished {
        /// How many.
        connections: usize,
    },
    /// A held connection was closed unserved because shutdown began (warn).
    DroppedAtShutdown {
        /// The client's address.
        peer: SocketAddr,
    },
    /// A second shutdown signal: the grace period ends now (info).
    GraceCut {
        /// The signal.
        signal: Signal,
    },
    /// A shutdown signal while children were being terminated: SIGKILL now
    /// (info).
    KillRequested {
        /// The signal.
        signal: Signal,
    },
    /// The grace period is over: the remaining children were sent SIGTERM (info).
    Terminating {
        /// How many were signalled.
        children: usize,
    },
    /// Children outlived SIGTERM: they were sent SIGKILL (warn).
    Killing {
        /// How many were signalled.
        children: usize,
    },
    /// Some child could not be signalled during shutdown (warn).
    SignalFailed {
        /// The failure.
        error: &'a ProcError,
    },
    /// Receiving datagrams failed in a way that concerns the socket (warn);
    /// the loop carries on.
    DatagramFailed {
        /// The failure.
        error: &'a std::io::Error,
    },
    /// A signal with no job of its own in the loop (SIGHUP, SIGUSR2, SIGALRM,
    /// a real-time signal…): logged, and otherwise ignored (info).
    Signal {
        /// The signal.
        signal: Signal,
    },
    /// SIGUSR1: the counters, as they stand (info; target
    /// `forkserve::counters`, so a quiet log can still keep it).
    Stats {
        /// The counters.
        stats: &'a Stats,
    },
    /// Children still alive after SIGKILL and the wait that follows it (stuck
    /// in the kernel, say): `serve` gives up on them and fails (warn).
    Unreaped {
        /// Their pids.
        pids: &'a [ChildPid],
    },
    /// Every child is reaped after a shutdown request; `serve` returns `Ok`
    /// (info; target `forkserve::counters`).
    Finished {
        /// How the shutdown went.
        summary: ShutdownSummary,
        /// The counters at the end.
        stats: &'a Stats,
    },
}

impl Event<'_> {
    /// Emits this event through `tracing`, with fields.
    pub(crate) fn log(&self, context: LogContext) {
        let LogContext { suppressed, shutting_down } = context;
        match *self {
            Self::Listening { addr } => {
                let pid = std::process::id();
                info!(target: "forkserve::listening", pid, "listening on {addr}");
            }
            Self::Accepted { pid, peer } => {
                info!(pid = pid.as_raw(), %peer, "accepted a connection")
            }
            Self::Proxied { peer, balancer } => {
                debug!(%peer, %balancer, "PROXY header: the client is {peer}");
            }
            Self::Pool { spares, per_child, members_accept } => {
                let how = if members_accept {
                    "idle children accept connections themselves"
                } else {
                    "the parent accepts and hands each connection over"
                };
                info!(spares, per_child, members_accept, "pre-forked pool: {how}");
            }
            Self::Preforked { pid } => debug!(pid = pid.as_raw(), "forked a spare child"),
            Self::Served { pid, peer, code } => {
                let pid = pid.as_raw();
                if code == SETUP_FAILED || code == procmgr::InChild::PANIC_EXIT_CODE {
                    warn!(pid, %peer, "child served the connection with status {code}");
                } else {
                    info!(pid, %peer, "child served the connection with status {code}");
                }
            }
            Self::SpareReaped { pid, exit } => {
                let pid = pid.as_raw();
                let expected =
                    exit.success() || (shutting_down && matches!(exit, ChildExit::Signaled { .. }));
                if expected {
                    debug!(pid, "spare child {exit}");
                } else {
                    warn!(pid, "spare child {exit}");
                }
            }
            Self::PreforkPaused { error, pause, first } => {
                let message = "cannot fork a spare child; retrying after a pause";
                log_pause(message, None, error, pause, first);
            }
            Self::Refused { peer, reason } if suppressed > 0 => {
                info!(%peer, reason, suppressed, "refused a connection");
            }
            Self::Refused { peer, reason } => info!(%peer, reason, "refused a connection"),
            Self::Deferred { peer, pause } => {
                let pause_ms = pause.as_millis();
                debug!(%peer, pause_ms, "admission deferred; holding the connection");
            }
            Self::Reaped { pid, peer, exit } => {
                let peer = peer.map(tracing::field::display);
                // A client can make a child exit with any status (a reset is
                // 1, say); a child that could not start or panicked, or that
                // a signal killed, says something about the server.
                let troubled = match exit {
                    ChildExit::Exited(code) => {
                        code == SETUP_FAILED || code == procmgr::InChild::PANIC_EXIT_CODE
                    }
                    // SIGTERM and SIGKILL are what shutdown sends.
                    _ => !shutting_down,
                };
                if troubled {
                    warn!(pid = pid.as_raw(), peer, "child {exit}");
                } else {
                    info!(pid = pid.as_raw(), peer, "child {exit}");
                }
            }
            Self::LimitReached { limit } if suppressed > 0 => {
                let times = suppressed + 1;
                warn!(limit, times, "child limit reached; new connections wait in the backlog");
            }
            Self::LimitReached { limit } => {
                warn!(limit, "child limit reached; new connections wait in the backlog");
            }
            Self::LimitCleared { children } => {
                info!(children, "below the child limit; accepting again");
            }
            Self::Status { children, limit } => {
                info!(children, limit, "status: {children}/{limit}")
            }
            Self::AcceptRetried { error } => {
                debug!(error = chain(error), "accept failed; retrying");
            }
            Self::AcceptPaused { error, pause, first } => {
                let message = "cannot accept; pausing, connections wait in the backlog";
                log_pause(message, None, error, pause, first);
            }
            Self::AcceptResumed { failures } => info!(failures, "accepting again"),
            Self::ForkPaused { peer, error, pause, first } => {
                let message = "cannot fork; keeping the connection and retrying after a pause";
                log_pause(message, Some(peer), error, pause, first);
            }
            Self::ForkResumed { failures } => info!(failures, "forking again"),
            Self::ShutdownStarted { signal, children, grace } => {
                let grace_secs = grace.as_secs_f64();
                info!(
                    children,
                    grace_secs, "received {signal}: closing the listeners, letting children finish"
                );
            }
            Self::BacklogFinished { connections } => {
                info!(connections, "took the connections waiting in the backlog before closing");
            }
            Self::DroppedAtShutdown { peer } => {
                warn!(%peer, "closing a connection that could not be served before shutdown");
            }
            Self::GraceCut { signal } => info!("received {signal} again: not waiting any longer"),
            Self::KillRequested { signal } => {
                info!("received {signal} again: killing the remaining children");
            }
            Self::Terminating { children } => {
                info!(children, "sent SIGTERM to the remaining children");
            }
            Self::Killing { children } => {
                warn!(children, "children outlived SIGTERM; sent SIGKILL");
            }
            Self::SignalFailed { error } => {
                warn!(error = chain(error), "cannot signal every child");
            }
            Self::DatagramFailed { error } => {
                warn!(error = chain(error), "cannot receive datagrams");
            }
            Self::Signal { signal } if signal == Signal::HUP => {
                info!("received {signal}: nothing to reload; carrying on");
            }
            Self::Signal { signal } => info!("received {signal}: ignored; carrying on"),
            Self::Stats { stats } => info!(target: "forkserve::counters", "counters: {stats}"),
            Self::Unreaped { pids } => {
                let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
                let pids = pids.join(" ");
                warn!(%pids, "children outlived SIGKILL; giving up on them");
            }
            Self::Finished { summary, stats } => {
                info!(target: "forkserve::counters", %stats, "all children reaped; exiting: {summary}");
            }
        }
    }
}

/// A failure that pauses the loop: a warning when it starts an episode of
/// failures, a debug line for each one after; `peer`, when given, is the
/// client kept waiting.
fn log_pause(
    message: &str,
    peer: Option<SocketAddr>,
    error: &(dyn std::error::Error + 'static),
    pause: Duration,
    first: bool,
) {
    let (peer, error, pause_ms) =
        (peer.map(tracing::field::display), chain(error), pause.as_millis());
    if first {
        warn!(peer, error, pause_ms, "{message}");
    } else {
        debug!(peer, error, pause_ms, "{message}");
    }
}
