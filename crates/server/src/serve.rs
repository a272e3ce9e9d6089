//! The parent's event loop: wait on the signalfd and the listeners, accept,
//! fork a child per connection, reap children, and shut down in stages.
//!
//! One `poll(2)` waits for everything, so a SIGCHLD, a SIGTERM and a new
//! connection are all handled in ordinary code, in the order they matter:
//! signals first (reaping frees child slots), then accepts.

use std::error::Error;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netcore::{Listener, Recovery};
use procmgr::{ChildExit, Children, ProcError, Signal, Signals};
use tracing::{debug, info, warn};

use crate::{chain, conn};

/// How long to stop accepting after running out of descriptors or processes.
const BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per wake-up before signals get another look.
const ACCEPT_BATCH: usize = 64;
/// After SIGTERM to the children, how long before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// The loop's settings, from the command line.
#[derive(Debug)]
pub(crate) struct Config {
    /// Most children alive at once.
    pub(crate) max_children: usize,
    /// How long children may finish on their own once shutdown starts.
    pub(crate) grace: Duration,
    /// How long a child waits for its peer to send or to take the echo;
    /// `None` waits forever.
    pub(crate) idle_timeout: Option<Duration>,
}

/// Where shutdown stands, once a SIGTERM or SIGINT has arrived.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Children may finish on their own until the deadline.
    Grace { until: Instant },
    /// Children were sent SIGTERM; SIGKILL follows at the deadline.
    Terminate { until: Instant },
    /// Children were sent SIGKILL; only reaping is left.
    Kill,
}

/// Serves until a shutdown request has been carried out; `Ok` means every child
/// was reaped and the process can exit 0.
pub(crate) fn run(
    listeners: Vec<Listener>,
    signals: Signals,
    config: &Config,
) -> Result<(), Box<dyn Error>> {
    // Readiness can be stale by the time accept runs (the client may have reset),
    // and a blocking accept would then stall every other duty of the loop.
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    let mut server = Server {
        listeners,
        first_listener: 0,
        signals,
        children: Children::new(),
        config,
        pending: None,
        paused_until: None,
        accept_trouble: Episode::default(),
        fork_trouble: Episode::default(),
        at_limit: false,
        shutdown: None,
    };
    server.run()
}

struct Server<'a> {
    /// Empty once shutdown has begun (closing them at once refuses new clients).
    listeners: Vec<Listener>,
    /// The listener served first on the next wake-up.
    first_listener: usize,
    signals: Signals,
    /// Live children and the peer each one serves.
    children: Children<SocketAddr>,
    config: &'a Config,
    /// A connection accepted but not yet forked, because fork failed.
    pending: Option<(TcpStream, SocketAddr)>,
    /// Accepting is paused until then, after descriptors or processes ran out.
    paused_until: Option<Instant>,
    /// Consecutive accept failures for lack of descriptors or memory.
    accept_trouble: Episode,
    /// Consecutive fork failures.
    fork_trouble: Episode,
    /// The child limit was reached (and said so in the log).
    at_limit: bool,
    shutdown: Option<Stage>,
}

impl Server<'_> {
    fn run(&mut self) -> Result<(), Box<dyn Error>> {
        loop {
            if self.shutdown.is_some() {
                // Reap before judging deadlines, so a child that has exited
                // is not counted as one that outlived its grace.
                self.handle_signals()?;
            }
            let now = Instant::now();
            if let Some(stage) = self.shutdown {
                if self.children.is_empty() {
                    info!("all children reaped; exiting");
                    return Ok(());
                }
                self.escalate(stage, now);
            }
            if self.paused_until.is_some_and(|until| now >= until) {
                self.paused_until = None;
                if let Some((stream, peer)) = self.pending.take() {
                    self.spawn(stream, peer)?;
                }
            }
            let accepting = self.may_accept();
            let watched: Vec<_> =
                self.listeners.iter().map(|l| accepting.then(|| l.as_fd())).collect();
            let wakeup = self.signals.wait(&watched, self.next_deadline(now))?;
            if wakeup.signaled {
                self.handle_signals()?;
            }
            // Round-robin over the listeners, so none is always served last.
            let (count, first) = (wakeup.ready.len(), self.first_listener);
            for index in (0..count).map(|i| (first + i) % count) {
                if wakeup.ready[index] {
                    self.accept_batch(index)?;
                }
            }
            self.first_listener = (self.first_listener + 1) % count.max(1);
        }
    }

    /// Whether to watch the listeners: not while paused, holding a connection
    /// that could not be forked yet, or at the child limit (new clients then
    /// wait in the kernel's backlog instead of being dropped).
    fn may_accept(&mut self) -> bool {
        if self.paused_until.is_some() || self.pending.is_some() {
            return false;
        }
        let full = self.children.len() >= self.config.max_children;
        if full != self.at_limit {
            self.at_limit = full;
            if self.listeners.is_empty() {
                // Shutting down: nothing is accepted either way.
            } else if full {
                warn!(
                    limit = self.config.max_children,
                    "child limit reached; new connections wait in the backlog"
                );
            } else {
                info!(children = self.children.len(), "below the child limit; accepting again");
            }
        }
        !full
    }

    /// The earliest moment the loop must wake up without any event.
    fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let shutdown = match self.shutdown {
            Some(Stage::Grace { until } | Stage::Terminate { until }) => Some(until),
            Some(Stage::Kill) | None => None,
        };
        [shutdown, self.paused_until]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn handle_signals(&mut self) -> Result<(), Box<dyn Error>> {
        let mut child_exited = false;
        while let Some(signal) = self.signals.next()? {
            match signal {
                Signal::CHLD => child_exited = true,
                Signal::TERM | Signal::INT => self.request_shutdown(signal),
                other => debug!(%other, "ignoring signal"),
            }
        }
        if child_exited {
            self.reap()?;
        }
        Ok(())
    }

    /// Reaps every child that has exited, logging how each one ended.
    fn reap(&mut self) -> Result<(), Box<dyn Error>> {
        for reaped in self.children.reap_ready() {
            let reaped = reaped?;
            let (pid, exit) = (reaped.pid, reaped.exit);
            // An unregistered child (none should exist) is logged without a peer.
            let peer = reaped.info.map(tracing::field::display);
            match exit {
                ChildExit::Exited(0) => info!(%pid, peer, "child {exit}"),
                _ => warn!(%pid, peer, "child {exit}"),
            }
        }
        Ok(())
    }

    fn request_shutdown(&mut self, signal: Signal) {
        let now = Instant::now();
        match self.shutdown {
            None => {
                info!(
                    children = self.children.len(),
                    grace_secs = self.config.grace.as_secs_f64(),
                    "received {signal}: closing the listeners, letting children finish"
                );
                self.listeners.clear();
                // A connection we could not fork for is closed with the listeners.
                if let Some((_, peer)) = self.pending.take() {
                    warn!(%peer, "closing a connection that could not be served before shutdown");
                }
                self.shutdown = Some(Stage::Grace { until: now + self.config.grace });
            }
            Some(Stage::Grace { .. }) => {
                info!("received {signal} again: not waiting any longer");
                self.shutdown = Some(Stage::Grace { until: now });
            }
            Some(Stage::Terminate { .. }) => {
                info!("received {signal} again: killing the remaining children");
                self.shutdown = Some(Stage::Terminate { until: now });
            }
            Some(Stage::Kill) => {}
        }
        if let Some(stage) = self.shutdown {
            self.escalate(stage, now);
        }
    }

    /// Moves shutdown on when a deadline has passed: grace, then SIGTERM to the
    /// children, then SIGKILL.
    fn escalate(&mut self, stage: Stage, now: Instant) {
        if self.children.is_empty() {
            return;
        }
        match stage {
            Stage::Grace { until } if now >= until => {
                let sent = self.signal_children(Signal::TERM);
                info!(children = sent, "sent SIGTERM to the remaining children");
                self.shutdown = Some(Stage::Terminate { until: now + KILL_AFTER });
            }
            Stage::Terminate { until } if now >= until => {
                let sent = self.signal_children(Signal::KILL);
                warn!(children = sent, "children outlived SIGTERM; sent SIGKILL");
                self.shutdown = Some(Stage::Kill);
            }
            _ => {}
        }
    }

    /// Signals every live child; a failure for one (logged) does not stop
    /// shutdown, which still reaps everyone it can.
    fn signal_children(&self, signal: Signal) -> usize {
        self.children.signal_all(signal).unwrap_or_else(|err| {
            warn!(error = %chain(&err), "cannot signal every child");
            0
        })
    }

    /// Accepts what is queued on one listener, up to a batch, forking a child
    /// for each.
    fn accept_batch(&mut self, index: usize) -> Result<(), Box<dyn Error>> {
        for _ in 0..ACCEPT_BATCH {
            if !self.may_accept() {
                return Ok(());
            }
            let Some(listener) = self.listeners.get(index) else { return Ok(()) };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Some(failures) = self.accept_trouble.recovered() {
                        info!(failures, "accepting again");
                    }
                    self.spawn(stream, peer)?;
                }
                Err(err) => match err.recovery() {
                    Recovery::Retry => debug!(error = %chain(&err), "accept failed; retrying"),
                    Recovery::Drained => return Ok(()),
                    Recovery::BackOff => {
                        let error = chain(&err);
                        let pause_ms = BACKOFF.as_millis();
                        let message = "cannot accept; pausing, connections wait in the backlog";
                        if self.accept_trouble.failed() {
                            warn!(error, pause_ms, "{message}");
                        } else {
                            debug!(error, pause_ms, "{message}");
                        }
                        self.paused_until = Some(Instant::now() + BACKOFF);
                        return Ok(());
                    }
                    _ => return Err(err.into()),
                },
            }
        }
        Ok(())
    }

    /// Forks a child to serve `stream`. If fork fails (out of processes or
    /// memory) the connection is kept and retried after a pause, not dropped.
    fn spawn(&mut self, stream: TcpStream, peer: SocketAddr) -> Result<(), Box<dyn Error>> {
        let mut stream = Some(stream);
        let listeners = &mut self.listeners;
        let (parent, idle_timeout) = (std::process::id(), self.config.idle_timeout);
        let forked = procmgr::fork_child(|| {
            // In the child, on its own copy of memory: the listening sockets
            // are the parent's business, so close them first; then serve.
            listeners.clear();
            let Some(stream) = stream.take() else { return conn::INTERNAL_ERROR };
            conn::serve(stream, peer, parent, idle_timeout)
        });
        match forked {
            Ok(pid) => {
                if let Some(failures) = self.fork_trouble.recovered() {
                    info!(failures, "forking again");
                }
                info!(%pid, %peer, "accepted a connection");
                self.children.insert(pid, peer);
                // `stream` is dropped here, closing the parent's copy.
            }
            // Out of processes or memory, or /proc unreadable for a moment: worth
            // another try. Anything else (a thread was started, the mask cannot
            // be set) will not get better by waiting.
            Err(err @ (ProcError::Fork { .. } | ProcError::ThreadCount { .. })) => {
                let (error, pause_ms) = (chain(&err), BACKOFF.as_millis());
                let message = "cannot fork; keeping the connection and retrying after a pause";
                if self.fork_trouble.failed() {
                    warn!(%peer, error, pause_ms, "{message}");
                } else {
                    debug!(%peer, error, pause_ms, "{message}");
                }
                self.pending = stream.map(|stream| (stream, peer));
                self.paused_until = Some(Instant::now() + BACKOFF);
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }
}

/// Consecutive failures of one kind: a long episode is logged as a warning
/// once, then at debug level, and its end once more.
#[derive(Debug, Default)]
struct Episode {
    failures: u32,
}

impl Episode {
    /// Counts a failure; true if it starts an episode.
    fn failed(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.failures == 1
    }

    /// Ends an episode, if one was going on; returns how many failures it had.
    fn recovered(&mut self) -> Option<u32> {
        (self.failures > 0).then(|| std::mem::take(&mut self.failures))
    }
}
