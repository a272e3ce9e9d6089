//! The parent's event loop: wait on the signalfd and the listeners, accept,
//! decide, fork a child per connection, reap children, and shut down in stages.
//!
//! One `poll(2)` waits for everything, so a SIGCHLD, a SIGTERM and a new
//! connection are all handled in ordinary code, in the order they matter:
//! signals first (reaping frees child slots), then accepts.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use netcore::{Listener, Recovery};
use procmgr::{ChildExit, ChildPid, Children, Handoff, ProcError, Signal, Signals};

use crate::child::ChildSetup;
use crate::datagram::Datagrams;
use crate::event::{LogContext, Observer, Throttle};
use crate::pool::{self, Job, Member, Pool, PoolSettings, Report};
use crate::proxy::{self, Pending, ProxySettings};
use crate::{Admit, Connection, Event, ServeError, ShutdownSummary, Stats, Verdict};

/// Connections accepted per wake-up before signals get another look.
const ACCEPT_BATCH: usize = 64;
/// At most one "refused" line a second.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(1);
/// At most one "child limit reached" warning in ten seconds.
const LIMIT_LOGGED_EVERY: Duration = Duration::from_secs(10);
/// How long more than twice the spares may sit idle before the extra ones
/// are retired.
const TRIM_AFTER: Duration = Duration::from_secs(1);
/// When members accept and some are serving, how long the pool may stay
/// short of spares (by less than half) before the next is forked: a fork
/// then competes with the connections being served for the CPU.
const REFILL_DELAY: Duration = Duration::from_millis(10);
/// When members accept, how long the parent leaves their reports to gather
/// after reading some: one wake-up for many reports, not two per connection.
const REPORTS_GATHER: Duration = Duration::from_millis(1);

/// The loop's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_children: usize,
    pub(crate) grace: Duration,
    pub(crate) kill_after: Duration,
    pub(crate) backoff: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    /// Pre-forked children, if any.
    pub(crate) prefork: Option<PoolSettings>,
    /// At shutdown, serve what waits in the backlogs first.
    pub(crate) finish_backlog: bool,
    /// PROXY protocol headers expected from these balancers.
    pub(crate) proxy: Option<ProxySettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_children: 1024,
            grace: Duration::from_secs(5),
            kill_after: Duration::from_secs(2),
            backoff: Duration::from_millis(100),
            idle_timeout: None,
            prefork: None,
            finish_backlog: false,
            proxy: None,
        }
    }
}

/// `now + wait`, or a moment decades away when that overflows: a huge
/// duration means "no deadline", never a panic.
pub(crate) fn after(now: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    now.checked_add(wait).or_else(|| now.checked_add(FAR)).unwrap_or(now)
}

/// Where shutdown stands, once a shutdown signal has arrived.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Children may finish on their own until the deadline.
    Grace { until: Instant },
    /// Children were sent SIGTERM; SIGKILL follows at the deadline.
    Terminate { until: Instant },
    /// Children were sent SIGKILL; past the deadline, the rest are given up.
    Kill { until: Instant },
}

/// A connection accepted but not served yet: the policy asked to wait, or
/// fork failed.
#[derive(Debug)]
struct Held {
    stream: TcpStream,
    peer: SocketAddr,
    /// The listener's address.
    listener: SocketAddr,
    /// The policy already said [`Verdict::Serve`] (so it owes a release).
    admitted: bool,
}

/// The parts of the loop a [`Server`](crate::Server) hands over.
pub(crate) struct Parts {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) signals: Signals,
    pub(crate) settings: Settings,
    pub(crate) admit: Box<dyn Admit>,
    pub(crate) observer: Option<Observer>,
    pub(crate) child: ChildSetup,
    pub(crate) datagrams: Option<Datagrams>,
}

pub(crate) struct Supervisor<W> {
    /// Empty once shutdown has begun (closed at once, and when pool members
    /// hold copies, stopped first, so new clients are refused).
    listeners: Vec<Listener>,
    /// The listener served first on the next wake-up.
    first_listener: usize,
    signals: Signals,
    /// Live children and what each one is for.
    children: Children<Job>,
    /// The pre-forked children's side of things, in pool mode.
    pool: Option<Pool>,
    settings: Settings,
    admit: Box<dyn Admit>,
    observer: Option<Observer>,
    child: ChildSetup,
    work: W,
    /// A connection accepted but not yet served.
    held: Option<Held>,
    /// The datagram service, if any (closed at shutdown).
    datagrams: Option<Datagrams>,
    /// Balancers' connections waiting for their PROXY header.
    pending: Vec<Pending>,
    /// How many may wait at once.
    pending_capacity: usize,
    /// Accepting is paused until then.
    paused_until: Option<Instant>,
    /// The pool's reports are left to gather until then.
    reports_after: Option<Instant>,
    /// Consecutive accept failures for lack of descriptors or memory.
    accept_trouble: Episode,
    /// Consecutive fork failures.
    fork_trouble: Episode,
    /// Tenths of the child limit in use at the last [`Event::Status`].
    status_tenth: usize,
    /// The child limit was reached (and reported).
    at_limit: bool,
    /// The last "limit reached" was logged, so its end is logged too.
    limit_logged: bool,
    refusal_log: Throttle,
    limit_log: Throttle,
    stats: Stats,
    shutdown: Option<Stage>,
    summary: ShutdownSummary,
    /// Children outlived SIGKILL and were given up on.
    gave_up: bool,
}

impl<W: FnMut(Connection) -> i32> Supervisor<W> {
    pub(crate) fn new(parts: Parts, work: W) -> Result<Self, ServeError> {
        let Parts { listeners, signals, settings, admit, observer, child, datagrams } = parts;
        // Members accept connections themselves when no decision needs the
        // parent: no per-peer policy, no PROXY header to read first.
        let members_accept = admit.admits_everyone() && settings.proxy.is_none();
        let pool = match settings.prefork {
            Some(prefork) => Some(
                Pool::new(prefork, members_accept, settings.max_children)
                    .map_err(ServeError::Prefork)?,
            ),
            None => None,
        };
        // The loop's one poll holds the listeners, the pool's reports and the
        // connections waiting for a header.
        let udp = datagrams.as_ref().map_or(0, |d| d.sockets.len());
        if listeners.len() + 1 + udp > procmgr::Ready::CAPACITY {
            let (count, max) = (listeners.len() + udp, procmgr::Ready::CAPACITY - 1);
            return Err(ServeError::TooManyListeners { count, max });
        }
        let room = procmgr::Ready::CAPACITY.saturating_sub(listeners.len() + 1 + udp);
        let pending_capacity =
            if settings.proxy.is_some() { room.min(proxy::MAX_PENDING) } else { 0 };
        if settings.proxy.is_some() && pending_capacity == 0 {
            let (count, max) = (listeners.len(), procmgr::Ready::CAPACITY - 2);
            return Err(ServeError::TooManyListeners { count, max });
        }
        Ok(Self {
            datagrams,
            pending: Vec::with_capacity(pending_capacity),
            pending_capacity,
            listeners,
            first_listener: 0,
            signals,
            children: Children::new(),
            pool,
            settings,
            admit,
            observer,
            child,
            work,
            held: None,
            paused_until: None,
            reports_after: None,
            accept_trouble: Episode::default(),
            fork_trouble: Episode::default(),
            status_tenth: 0,
            at_limit: false,
            limit_logged: false,
            refusal_log: Throttle::new(REFUSALS_LOGGED_EVERY),
            limit_log: Throttle::new(LIMIT_LOGGED_EVERY),
            stats: Stats::default(),
            shutdown: None,
            summary: ShutdownSummary::default(),
            gave_up: false,
        })
    }

    /// Logs `event` and hands it to the observer.
    fn report(&mut self, event: &Event<'_>) {
        self.report_with(event, 0);
    }

    /// [`report`](Self::report), saying how many like it went unlogged.
    fn report_with(&mut self, event: &Event<'_>, suppressed: u64) {
        event.log(LogContext { suppressed, shutting_down: self.shutdown.is_some() });
        self.observe(event);
    }

    /// Hands `event` to the observer without logging it.
    fn observe(&mut self, event: &Event<'_>) {
        if let Some(observer) = &mut self.observer {
            observer(event);
        }
    }

    pub(crate) fn run(&mut self) -> Result<(), ServeError> {
        for addr in self.listeners.iter().map(Listener::local_addr).collect::<Vec<_>>() {
            self.report(&Event::Listening { addr });
        }
        if let Some(pool) = &self.pool {
            let (settings, members_accept) = (pool.settings, pool.members_accept);
            let (spares, per_child) = (settings.spares, settings.per_child);
            self.report(&Event::Pool { spares, per_child, members_accept });
        }
        // The last wait found nothing to do. Spares are forked only then: a
        // connection already waiting is served first, not held up by a fork
        // (when none is idle it gets a child forked for it anyway).
        let mut quiet = true;
        loop {
            if self.shutdown.is_some() {
                // Reap before judging deadlines, so a child that has exited
                // is not counted as one that outlived its grace.
                self.handle_signals()?;
            }
            let now = Instant::now();
            if let Some(stage) = self.shutdown {
                if self.children.is_empty() {
                    let (summary, stats) = (self.summary, self.stats.clone());
                    self.report(&Event::Finished { summary, stats: &stats });
                    return Ok(());
                }
                self.escalate(stage, now)?;
            }
            if self.paused_until.is_some_and(|until| now >= until) {
                self.paused_until = None;
                if let Some(held) = self.held.take() {
                    self.take(held)?;
                }
            }
            self.tend_pool(now, quiet);
            self.look_at_pending(now, |_| false)?;
            // Idle members that accept for themselves leave the listeners to
            // them; the parent accepts only when none is idle.
            let accepting = self.may_accept() && !self.members_take_connections();
            let timeout = self.next_deadline(now);
            let watched = self.listeners.iter().map(|l| accepting.then(|| l.as_fd()));
            let gathering = self.reports_after.is_some_and(|after| now < after);
            let reports = self.pool.as_ref().filter(|_| !gathering).map(Pool::reports_fd);
            let (pooled, reports_index) = (self.pool.is_some(), self.listeners.len());
            let udp = self.datagrams.as_ref().map_or(&[][..], |d| &d.sockets[..]);
            let (udp_count, first_udp) = (udp.len(), reports_index + 1);
            let udp = udp.iter().map(|socket| Some(socket.as_fd()));
            let waiting =
                self.pending.iter().map(|p| p.retry_at.is_none().then(|| p.stream.as_fd()));
            // On the stack: the parent writes no heap page per wait.
            let ready = self
                .signals
                .wait_ready(watched.chain([reports]).chain(udp).chain(waiting), timeout)
                .map_err(ServeError::Wait)?;
            quiet = ready.is_empty();
            let reported = pooled && ready.is_ready(reports_index);
            if ready.signaled || reported {
                self.handle_signals()?;
            }
            if reported {
                self.reports_after = self
                    .pool
                    .as_ref()
                    .filter(|pool| pool.members_accept)
                    .map(|_| after(Instant::now(), REPORTS_GATHER));
            }
            for index in (0..udp_count).filter(|&i| ready.is_ready(first_udp + i)) {
                self.answer_datagrams(index);
            }
            if !self.pending.is_empty() {
                let first = first_udp + udp_count;
                self.look_at_pending(Instant::now(), |index| ready.is_ready(first + index))?;
            }
            // Round-robin over the listeners: the next pass starts after the
            // last one that yielded a connection, so none is always served
            // last (counting passes instead would not do: at the child limit
            // each freed slot takes two passes, one to reap, one to accept).
            let (count, first) = (self.listeners.len(), self.first_listener);
            for index in (0..count).map(|i| (first + i) % count) {
                if ready.is_ready(index) && self.accept_batch(index)? > 0 {
                    self.first_listener = (index + 1) % count;
                }
            }
        }
    }

    /// Whether to watch the listeners: not while paused, holding a connection,
    /// or at the child limit (new clients then wait in the kernel's backlog
    /// instead of being dropped).
    fn may_accept(&mut self) -> bool {
        if self.paused_until.is_some() || self.held.is_some() {
            return false;
        }
        // Idle members take connections whatever the count.
        let idle = self.pool.as_ref().map_or(0, |pool| pool.idle.len());
        let full = idle == 0 && self.children.len() >= self.settings.max_children;
        if full != self.at_limit {
            self.at_limit = full;
            if self.listeners.is_empty() {
                // Shutting down: nothing is accepted either way.
            } else if full {
                let event = Event::LimitReached { limit: self.settings.max_children };
                match self.limit_log.pass(Instant::now()) {
                    Some(suppressed) => {
                        self.limit_logged = true;
                        self.report_with(&event, suppressed);
                    }
                    None => self.observe(&event),
                }
            } else {
                let event = Event::LimitCleared { children: self.serving() };
                if std::mem::take(&mut self.limit_logged) {
                    self.report(&event);
                } else {
                    self.observe(&event);
                }
            }
        }
        self.can_take()
    }

    /// Whether idle pool members are accepting connections themselves.
    fn members_take_connections(&self) -> bool {
        self.pool.as_ref().is_some_and(|pool| pool.members_accept && !pool.idle.is_empty())
    }

    /// How long until the loop must wake up without any event.
    fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let shutdown = match self.shutdown {
            Some(Stage::Grace { until } | Stage::Terminate { until } | Stage::Kill { until }) => {
                Some(until)
            }
            None => None,
        };
        // While paused, the pool waits too (`tend_pool` does nothing then).
        let pool = self.pool.as_ref().filter(|_| self.paused_until.is_none()).and_then(|pool| {
            [self.next_spare(pool, now), pool.trim_at].into_iter().flatten().min()
        });
        let pending = self.pending.iter().map(Pending::next_look).min();
        let reports = self.reports_after.filter(|&after| after > now);
        [shutdown, self.paused_until, pool, pending, reports]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    /// Whether the pool has fewer idle members than it should, and room to
    /// fork another.
    fn pool_short(&self, pool: &Pool) -> bool {
        pool.idle.len() < pool.settings.spares && self.children.len() < self.settings.max_children
    }

    /// When the next spare is due, if the pool is short of them: now, or
    /// after the back-off of a failed fork; and when members accept and some
    /// of them are serving, not before the pool has been short for
    /// [`REFILL_DELAY`], unless half the spares are gone. On a small machine
    /// a fork beside a connection being served slows that connection down;
    /// a fork once none is busy (a single-use member's exit, say) does not.
    fn next_spare(&self, pool: &Pool, now: Instant) -> Option<Instant> {
        if self.shutdown.is_some() || !self.pool_short(pool) {
            return None;
        }
        let at = pool.refill_after.unwrap_or(now);
        let plenty = pool.idle.len().saturating_mul(2) >= pool.settings.spares;
        if pool.members_accept && pool.busy > 0 && plenty {
            let since = pool.short_since.unwrap_or(now);
            return Some(at.max(after(since, REFILL_DELAY)));
        }
        Some(at)
    }

    /// Connections being served: children in fork mode, busy members in
    /// pool mode.
    fn serving(&self) -> usize {
        self.pool.as_ref().map_or(self.children.len(), |pool| pool.busy)
    }

    /// Pool upkeep, once per turn of the loop. Forks one spare when one is
    /// due ([`next_spare`](Self::next_spare)), one per turn, with a wait
    /// between forks that serves whatever arrived: when the parent hands
    /// connections over, only on a turn that follows a wait that found
    /// nothing ready (`quiet`; a connection waiting gets a member forked for
    /// it anyway); when members accept, on any turn (they take connections
    /// only while idle ones exist). On any turn, retires the idle members
    /// beyond twice the spares once they have been idle for [`TRIM_AFTER`].
    fn tend_pool(&mut self, now: Instant, quiet: bool) {
        let Some(pool) = &self.pool else { return };
        if self.shutdown.is_some() || self.paused_until.is_some() {
            return;
        }
        let short = self.pool_short(pool);
        let due = self.next_spare(pool, now).is_some_and(|at| now >= at);
        if let Some(pool) = &mut self.pool {
            pool.short_since = if short { Some(pool.short_since.unwrap_or(now)) } else { None };
        }
        let Some(pool) = &self.pool else { return };
        if (quiet || pool.members_accept) && due {
            if let Err(error) = self.fork_member(None) {
                self.stats.fork_failures += 1;
                let (pause, first) = (self.settings.backoff, self.fork_trouble.failed());
                self.report(&Event::PreforkPaused { error: &error, pause, first });
                if let Some(pool) = &mut self.pool {
                    pool.refill_after = Some(after(now, pause));
                }
            }
        }
        let Some(pool) = &mut self.pool else { return };
        let keep = pool.settings.spares.saturating_mul(2);
        if pool.idle.len() <= keep {
            pool.trim_at = None;
            return;
        }
        match pool.trim_at {
            None => pool.trim_at = Some(after(now, TRIM_AFTER)),
            Some(at) if now >= at => {
                pool.trim_at = None;
                // The least recently idle go first.
                let extra = pool.idle.len() - keep;
                for pid in pool.idle.drain(..extra) {
                    if let Some(Job::Member(member)) = self.children.get_mut(pid) {
                        member.channel = None; // end of file: it exits
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// Forks a pool member, idle until a connection is handed to it.
    /// `connection` is the one it is forked for, if any, which the parent
    /// holds open right now.
    fn fork_member(&mut self, connection: Option<BorrowedFd<'_>>) -> Result<ChildPid, ProcError> {
        let Some(pool) = &mut self.pool else {
            unreachable!("fork_member outside pool mode");
        };
        // The other members' channels, listed here in the parent: a forked
        // child finds the registry empty.
        pool.siblings.clear();
        pool.siblings.extend(self.children.iter().filter_map(|(_, job)| job.channel()));
        let pool = &*pool;
        let (ours, theirs) = Handoff::pair()?;
        let (pending, held) = (&self.pending, self.held.as_ref());
        let (listeners, child, work) = (&mut self.listeners, &self.child, &mut self.work);
        let pid = procmgr::fork_child(|| {
            // In the child: besides what every child closes, the other
            // members' channels, this member's parent end and the parent's
            // end of the reports are the parent's business; so are the
            // listeners, unless members accept on them.
            pool.siblings.close();
            let pool_ends = [ours.as_fd(), pool.reports_fd()];
            let parents = connection.into_iter().chain(pool_ends);
            let keep_listeners = pool.members_accept;
            close_the_parents((!keep_listeners).then_some(&mut *listeners), pending, held, parents);
            let handed_first = connection.is_some();
            pool::member(&theirs, pool, listeners, handed_first, child, work)
        })?;
        drop(theirs);
        if let Some(failures) = self.fork_trouble.recovered() {
            self.report(&Event::ForkResumed { failures });
        }
        let member = Member { channel: Some(ours), serving: None, admitted: false };
        self.children.insert(pid, Job::Member(member));
        if let Some(pool) = &mut self.pool {
            pool.idle.push(pid);
            pool.refill_after = None;
        }
        self.report(&Event::Preforked { pid });
        Ok(pid)
    }

    /// Reads what pool members reported: a connection a member took itself
    /// makes it busy; each connection's end makes its member idle again (or
    /// retires it), and releases its client. Reports from `gone`, a member
    /// just reaped (out of the registry already), apply to it: one that took
    /// a connection and exited at once is reaped as serving it.
    fn drain_reports(
        &mut self,
        mut gone: Option<(ChildPid, &mut Member)>,
    ) -> Result<(), ServeError> {
        loop {
            let Some(pool) = &self.pool else { return Ok(()) };
            let Some(report) = pool.next_report().map_err(ServeError::Prefork)? else {
                return Ok(());
            };
            let (Report::Took { pid, .. } | Report::Ended { pid, .. }) = report;
            let Some(pid) = ChildPid::from_raw(pid) else { continue };
            let member = match &mut gone {
                Some((gone_pid, member)) if *gone_pid == pid => &mut **member,
                _ => match self.children.get_mut(pid) {
                    Some(Job::Member(member)) => member,
                    _ => continue,
                },
            };
            match report {
                Report::Took { peer, .. } => {
                    // One connection at a time: a member reports each end
                    // before it takes the next.
                    if member.serving.is_some() {
                        continue;
                    }
                    member.serving = Some(peer);
                    member.admitted = false;
                    if let Some(pool) = &mut self.pool {
                        pool.forget_idle(pid);
                        pool.busy += 1;
                    }
                    if self.shutdown.is_some() {
                        // Taken before the listeners stopped, reported after
                        // shutdown began: one more running at shutdown.
                        self.summary.running += 1;
                        self.summary.served += 1;
                    }
                    self.stats.accepted += 1;
                    self.report(&Event::Accepted { pid, peer });
                    self.report_status();
                }
                Report::Ended { code, .. } => {
                    let Some(peer) = member.serving.take() else { continue };
                    let admitted = std::mem::take(&mut member.admitted);
                    let open = member.channel.is_some();
                    let exit = ChildExit::Exited(code);
                    self.stats.count_exit(exit);
                    if self.shutdown.is_some() {
                        self.summary.count(exit);
                    }
                    if admitted {
                        self.admit.release(peer);
                    }
                    if let Some(pool) = &mut self.pool {
                        pool.busy = pool.busy.saturating_sub(1);
                        if open {
                            pool.idle.push(pid);
                        }
                    }
                    self.report(&Event::Served { pid, peer, code });
                    self.report_status();
                }
            }
        }
    }

    /// Reads every pending signal; reaps first (so shutdown never signals a
    /// child that has already exited), then acts on the others in order.
    fn handle_signals(&mut self) -> Result<(), ServeError> {
        let mut child_exited = false;
        let mut others = Vec::new();
        while let Some(signal) = self.signals.next().map_err(ServeError::Wait)? {
            match signal {
                Signal::CHLD => child_exited = true,
                other => others.push(other),
            }
        }
        // A member's report comes before its exit: read them first, so a
        // member that reported and then ended is reaped as idle.
        self.drain_reports(None)?;
        if child_exited {
            self.reap()?;
        }
        for signal in others {
            match signal {
                Signal::TERM | Signal::INT => self.request_shutdown(signal, false)?,
                Signal::QUIT => self.request_shutdown(signal, true)?,
                Signal::USR1 => {
                    let stats = self.current_stats();
                    self.report(&Event::Stats { stats: &stats });
                }
                other => self.report(&Event::Signal { signal: other }),
            }
        }
        Ok(())
    }

    /// The counters, with the live children counted now.
    fn current_stats(&self) -> Stats {
        Stats { active: self.serving(), ..self.stats.clone() }
    }

    /// Reaps every child that has exited, reporting how each one ended.
    fn reap(&mut self) -> Result<(), ServeError> {
        while let Some(mut reaped) = self.children.reap().map_err(ServeError::Reap)? {
            let (pid, exit) = (reaped.pid, reaped.exit);
            // A member reports before it exits: a report still unread (the
            // end of one connection, a connection it took itself) is read
            // now, so the member is reaped as what it last was, and a
            // connection it took is not taken for a spare's quiet end.
            if let Some(Job::Member(member)) = &mut reaped.info {
                self.drain_reports(Some((pid, member)))?;
            }
            let peer = reaped.info.as_ref().and_then(Job::peer);
            let admitted = reaped.info.as_ref().and_then(Job::admitted_peer);
            if let (Some(pool), Some(Job::Member(_))) = (&mut self.pool, &reaped.info) {
                if peer.is_some() {
                    pool.busy = pool.busy.saturating_sub(1);
                } else {
                    pool.forget_idle(pid);
                    // A spare that failed (could not set itself up, or was
                    // killed) is replaced after the back-off, not at once: a
                    // spare that dies on start must not become a fork storm.
                    if !exit.success() && self.shutdown.is_none() {
                        let pause = self.settings.backoff;
                        pool.refill_after = Some(after(Instant::now(), pause));
                    }
                    // No connection was lost: pool upkeep, not a client's.
                    self.report(&Event::SpareReaped { pid, exit });
                    continue;
                }
            }
            self.stats.count_exit(exit);
            if self.shutdown.is_some() {
                self.summary.count(exit);
            }
            if let Some(peer) = admitted {
                self.admit.release(peer);
            }
            self.report(&Event::Reaped { pid, peer, exit });
            self.report_status();
        }
        Ok(())
    }

    /// Reports [`Event::Status`] when the live children have crossed a tenth
    /// of the limit since the last report.
    fn report_status(&mut self) {
        let (children, limit) = (self.serving(), self.settings.max_children);
        let tenth = children.saturating_mul(10) / limit.max(1);
        if tenth != self.status_tenth {
            self.status_tenth = tenth;
            self.report(&Event::Status { children, limit });
        }
    }

    /// A shutdown signal: the first starts shutdown (`fast` skips the grace
    /// period), a later one moves it on a stage.
    fn request_shutdown(&mut self, signal: Signal, fast: bool) -> Result<(), ServeError> {
        let now = Instant::now();
        match self.shutdown {
            None => {
                let grace = if fast { Duration::ZERO } else { self.settings.grace };
                if self.settings.finish_backlog && !fast {
                    self.finish_backlog()?;
                }
                let children = self.serving();
                self.summary.running = children;
                self.summary.served = self.stats.accepted;
                // Each event is reported once what it says has happened.
                self.stop_listeners();
                self.listeners.clear();
                self.datagrams = None;
                self.close_pool();
                self.shutdown = Some(Stage::Grace { until: after(now, grace) });
                self.report(&Event::ShutdownStarted { signal, children, grace });
                // Connections not served yet are closed with the listeners.
                for Pending { stream, balancer, .. } in std::mem::take(&mut self.pending) {
                    drop(stream);
                    self.report(&Event::DroppedAtShutdown { peer: balancer });
                }
                if let Some(Held { stream, peer, admitted, .. }) = self.held.take() {
                    drop(stream);
                    if admitted {
                        self.admit.release(peer);
                    }
                    self.report(&Event::DroppedAtShutdown { peer });
                }
                self.paused_until = None;
            }
            Some(Stage::Grace { .. }) => {
                self.report(&Event::GraceCut { signal });
                self.shutdown = Some(Stage::Grace { until: now });
            }
            Some(Stage::Terminate { .. }) => {
                self.report(&Event::KillRequested { signal });
                self.shutdown = Some(Stage::Terminate { until: now });
            }
            Some(Stage::Kill { .. }) => {}
        }
        match self.shutdown {
            Some(stage) => self.escalate(stage, now),
            None => Ok(()),
        }
    }

    /// At shutdown, before the listeners close: accepts and serves what
    /// waits in their backlogs, as far as the child limit allows (a held
    /// connection, or a full house, ends it).
    fn finish_backlog(&mut self) -> Result<(), ServeError> {
        let mut finished = 0;
        for index in 0..self.listeners.len() {
            while self.may_accept() {
                match self.accept_batch(index)? {
                    0 => break,
                    taken => finished += taken,
                }
            }
        }
        if finished > 0 {
            self.report(&Event::BacklogFinished { connections: finished });
        }
        Ok(())
    }

    /// At shutdown, when pool members hold copies of the listeners (to
    /// accept on them): stops the sockets themselves, so a member still
    /// serving a connection does not keep them listening, with new clients
    /// queued and never served. Not a socket inherited from a service
    /// manager, which goes on listening on it after this server.
    fn stop_listeners(&mut self) {
        if !self.pool.as_ref().is_some_and(|pool| pool.members_accept) {
            return;
        }
        for listener in self.listeners.iter().filter(|l| !l.is_inherited()) {
            if let Err(error) = listener.stop_listening() {
                tracing::warn!(
                    error = crate::error::chain(&error),
                    "children serving connections keep the listener open until they end"
                );
            }
        }
    }

    /// At shutdown: closes every member's channel, so idle members exit now
    /// and busy ones after their connection.
    fn close_pool(&mut self) {
        let Some(pool) = &mut self.pool else { return };
        pool.idle.clear();
        pool.trim_at = None;
        for (_, job) in self.children.iter_mut() {
            if let Job::Member(member) = job {
                member.channel = None;
            }
        }
    }

    /// Moves shutdown on when a deadline has passed: grace, then SIGTERM to the
    /// children, then SIGKILL, then giving up on what SIGKILL did not end.
    fn escalate(&mut self, stage: Stage, now: Instant) -> Result<(), ServeError> {
        if self.children.is_empty() {
            return Ok(());
        }
        let kill_after = self.settings.kill_after;
        match stage {
            Stage::Grace { until } if now >= until => {
                let children = self.signal_children(Signal::TERM);
                self.report(&Event::Terminating { children });
                self.shutdown = Some(Stage::Terminate { until: after(now, kill_after) });
            }
            Stage::Terminate { until } if now >= until => {
                let children = self.signal_children(Signal::KILL);
                self.report(&Event::Killing { children });
                self.shutdown = Some(Stage::Kill { until: after(now, kill_after) });
            }
            Stage::Kill { until } if now >= until => {
                let mut pids: Vec<ChildPid> = self.children.pids().collect();
                pids.sort_unstable();
                self.report(&Event::Unreaped { pids: &pids });
                self.gave_up = true;
                return Err(ServeError::Unreaped { pids });
            }
            _ => {}
        }
        Ok(())
    }

    /// Signals every live child; a failure for one (reported) does not stop
    /// shutdown, which still reaps everyone it can.
    fn signal_children(&mut self, signal: Signal) -> usize {
        let signalled = self.children.signal_each(signal);
        for error in &signalled.errors {
            self.report(&Event::SignalFailed { error });
        }
        signalled.sent
    }

    /// Accepts what is queued on one listener, up to a batch; returns
    /// how many connections it accepted.
    fn accept_batch(&mut self, index: usize) -> Result<usize, ServeError> {
        let mut accepted = 0;
        for _ in 0..ACCEPT_BATCH {
            if !self.may_accept() {
                return Ok(accepted);
            }
            let Some(listener) = self.listeners.get(index) else { return Ok(accepted) };
            let local = listener.local_addr();
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Some(failures) = self.accept_trouble.recovered() {
                        self.report(&Event::AcceptResumed { failures });
                    }
                    accepted += 1;
                    self.arrived(stream, peer, local)?;
                }
                Err(error) => match error.recovery() {
                    Recovery::Drained => return Ok(accepted),
                    Recovery::Retry => {
                        self.stats.accept_errors += 1;
                        self.report(&Event::AcceptRetried { error: &error });
                    }
                    Recovery::BackOff => {
                        self.stats.accept_errors += 1;
                        let (pause, first) = (self.settings.backoff, self.accept_trouble.failed());
                        self.report(&Event::AcceptPaused { error: &error, pause, first });
                        self.paused_until = Some(after(Instant::now(), pause));
                        return Ok(accepted);
                    }
                    _ => {
                        self.stats.accept_errors += 1;
                        return Err(ServeError::Accept(error));
                    }
                },
            }
        }
        Ok(accepted)
    }

    /// Answers what waits on datagram socket `index`; a failure of the
    /// socket is reported and the loop goes on.
    fn answer_datagrams(&mut self, index: usize) {
        let Some(datagrams) = &mut self.datagrams else { return };
        if let Err(error) = datagrams.serve(index, &mut self.stats) {
            self.report(&Event::DatagramFailed { error: &error });
        }
    }

    /// A connection just accepted: one from a trusted balancer waits for its
    /// PROXY header; one from anywhere else that starts like a header is
    /// refused (a client must not pass off an address); the rest go on to
    /// admission.
    fn arrived(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        listener: SocketAddr,
    ) -> Result<(), ServeError> {
        let Some(settings) = &self.settings.proxy else {
            return self.take(Held { stream, peer, listener, admitted: false });
        };
        if settings.trusts(peer.ip()) {
            // Never more than the loop's poll can watch: a balancer that
            // opens connections and sends nothing cannot stop the server
            // for anyone else.
            if self.pending.len() >= self.pending_capacity {
                self.refuse(peer, proxy::TOO_MANY_WAITING);
                return Ok(());
            }
            let until = after(Instant::now(), settings.timeout);
            if stream.set_nonblocking(true).is_err() {
                self.refuse(peer, proxy::NO_HEADER);
                return Ok(());
            }
            let pending = Pending {
                stream,
                balancer: peer,
                listener,
                until,
                retry_at: None,
                complete: false,
            };
            self.pending.push(pending);
            // It may have come with the connection.
            let last = self.pending.len() - 1;
            return self.look_at_pending(Instant::now(), |index| index == last);
        }
        // What has arrived already, without waiting for more.
        let mut first = [0_u8; 12];
        let seen = stream.set_nonblocking(true).ok().and_then(|()| stream.peek(&mut first).ok());
        if stream.set_nonblocking(false).is_err() {
            self.refuse(peer, proxy::NO_HEADER);
            return Ok(());
        }
        match seen {
            Some(len) if len > 0 && netcore::proxy::looks_like_header(&first[..len]) => {
                self.refuse(peer, proxy::UNTRUSTED);
                Ok(())
            }
            _ => self.take(Held { stream, peer, listener, admitted: false }),
        }
    }

    /// Looks at each waiting balancer connection that `ready` names, or whose
    /// retry time or deadline has come: a whole header sends the connection
    /// on to admission under the client's address; a bad one, a closed
    /// connection or a passed deadline refuses it.
    fn look_at_pending(
        &mut self,
        now: Instant,
        ready: impl Fn(usize) -> bool,
    ) -> Result<(), ServeError> {
        // From the last, so that `swap_remove` moves only entries already seen.
        for index in (0..self.pending.len()).rev() {
            let can_take = self.can_take();
            let entry = &mut self.pending[index];
            let due = entry.retry_at.is_some_and(|retry| now >= retry);
            let expired = now >= entry.until && !entry.complete;
            if !(ready(index) || due || expired) {
                continue;
            }
            let peeked = netcore::proxy::peek(&entry.stream);
            let verdict = match peeked {
                // Whole, but no room for it yet (a connection held, a pause,
                // the child limit): it waits as a client in the backlog
                // would, without a deadline, looked at again shortly.
                Ok(Some(netcore::proxy::Parsed::Complete { .. })) if !can_take => {
                    entry.complete = true;
                    let soon = after(now, proxy::RETRY_PARTIAL);
                    entry.retry_at = Some(self.paused_until.map_or(soon, |p| p.max(soon)));
                    continue;
                }
                Ok(Some(netcore::proxy::Parsed::Complete { header, len })) => Ok((header, len)),
                // Nothing yet: the socket is polled, and wakes the loop when
                // something comes.
                Ok(None) if now < entry.until => {
                    entry.retry_at = None;
                    continue;
                }
                // Half a header: what is there keeps the socket readable, so
                // it is looked at again a little later instead.
                Ok(Some(netcore::proxy::Parsed::Incomplete)) if now < entry.until => {
                    entry.retry_at = Some(after(now, proxy::RETRY_PARTIAL));
                    continue;
                }
                Ok(None | Some(netcore::proxy::Parsed::Incomplete)) => Err(proxy::TIMED_OUT),
                Ok(Some(netcore::proxy::Parsed::Invalid(_))) | Err(_) => Err(proxy::NO_HEADER),
            };
            let Pending { stream, balancer, listener, .. } = self.pending.swap_remove(index);
            let taken = verdict.and_then(|(header, len)| {
                stream.set_nonblocking(false).map_err(|_| proxy::NO_HEADER)?;
                netcore::proxy::consume(&stream, len).map_err(|_| proxy::NO_HEADER)?;
                Ok(header)
            });
            match taken {
                Ok(header) => {
                    let peer = match header {
                        netcore::proxy::Header::Proxied { source, .. } => source,
                        netcore::proxy::Header::Local => balancer,
                    };
                    self.report(&Event::Proxied { peer, balancer });
                    self.take(Held { stream, peer, listener, admitted: false })?;
                }
                Err(reason) => self.refuse(balancer, reason),
            }
        }
        Ok(())
    }

    /// Whether a connection can go on to admission now: none is held, nothing
    /// is paused, and a child can be had: room under the child limit, or an
    /// idle member the parent hands connections to (when members accept, a
    /// connection the parent takes gets a member forked for it).
    fn can_take(&self) -> bool {
        let handed_to_idle =
            self.pool.as_ref().is_some_and(|pool| !pool.members_accept && !pool.idle.is_empty());
        self.held.is_none()
            && self.paused_until.is_none()
            && (handed_to_idle || self.children.len() < self.settings.max_children)
    }

    /// Refuses a connection before admission (closed already, or now), and
    /// counts and reports it as the policy's refusals are.
    fn refuse(&mut self, peer: SocketAddr, reason: &str) {
        self.stats.count_refusal(reason);
        let event = Event::Refused { peer, reason };
        match self.refusal_log.pass(Instant::now()) {
            Some(suppressed) => self.report_with(&event, suppressed),
            None => self.observe(&event),
        }
    }

    /// Asks the policy about a connection (unless it already said yes), then
    /// serves, refuses or holds it.
    fn take(&mut self, mut held: Held) -> Result<(), ServeError> {
        if !held.admitted {
            match self.admit.admit(held.peer) {
                Verdict::Serve => held.admitted = true,
                Verdict::Refuse(reason) => {
                    let Held { stream, peer, .. } = held;
                    drop(stream);
                    self.refuse(peer, &reason);
                    return Ok(());
                }
                Verdict::Wait(pause) => {
                    let pause = pause.max(crate::server::MIN_PAUSE);
                    self.stats.deferred += 1;
                    self.report(&Event::Deferred { peer: held.peer, pause });
                    self.paused_until = Some(after(Instant::now(), pause));
                    self.held = Some(held);
                    return Ok(());
                }
            }
        }
        self.spawn(held)
    }

    /// Forks a child to serve `held`. If fork fails for lack of processes or
    /// memory, the connection is kept and retried after a pause, not dropped.
    fn spawn(&mut self, held: Held) -> Result<(), ServeError> {
        if self.pool.is_some() {
            return self.dispatch(held);
        }
        let Held { stream, peer, listener, admitted } = held;
        let mut stream = Some(stream);
        let (listeners, child, work) = (&mut self.listeners, &self.child, &mut self.work);
        let (pending, held) = (&self.pending, self.held.as_ref());
        let forked = procmgr::fork_child(|| {
            // In the child, on its own copy of memory: the parent's sockets
            // are the parent's business, so close them first; then serve.
            close_the_parents(Some(listeners), pending, held, std::iter::empty());
            let Some(stream) = stream.take() else { return crate::SETUP_FAILED };
            child.run(stream, peer, listener, work)
        });
        match forked {
            Ok(pid) => {
                if let Some(failures) = self.fork_trouble.recovered() {
                    self.report(&Event::ForkResumed { failures });
                }
                self.stats.accepted += 1;
                self.children.insert(pid, Job::Conn(peer));
                self.report(&Event::Accepted { pid, peer });
                self.report_status();
                // `stream` is dropped here, closing the parent's copy.
            }
            Err(error) => match stream {
                Some(stream) => {
                    return self.fork_failed(Held { stream, peer, listener, admitted }, error);
                }
                None => unreachable!("the connection is only taken in the child"),
            },
        }
        Ok(())
    }

    /// A fork for `held` failed. Out of processes, memory or descriptors, or
    /// /proc unreadable for a moment: worth another try, so the connection is
    /// kept and accepting pauses. Anything else (a thread was started, the
    /// mask cannot be set) will not get better by waiting.
    fn fork_failed(&mut self, held: Held, error: ProcError) -> Result<(), ServeError> {
        if transient(&error) {
            self.stats.fork_failures += 1;
            let (pause, first) = (self.settings.backoff, self.fork_trouble.failed());
            self.report(&Event::ForkPaused { peer: held.peer, error: &error, pause, first });
            self.held = Some(held);
            self.paused_until = Some(after(Instant::now(), pause));
            return Ok(());
        }
        if held.admitted {
            self.admit.release(held.peer);
        }
        Err(ServeError::Fork(error))
    }

    /// Pool mode: hands `held` to an idle member (the most recently idle), or
    /// to one forked for it when none is idle.
    fn dispatch(&mut self, held: Held) -> Result<(), ServeError> {
        let message = pool::encode(held.peer, held.listener);
        loop {
            // When members accept, an idle one may be taking a connection of
            // its own right now: the parent's goes to a member forked for it.
            let idle = self
                .pool
                .as_mut()
                .filter(|pool| !pool.members_accept)
                .and_then(|pool| pool.idle.pop());
            let (pid, fresh) = match idle {
                Some(pid) => (pid, false),
                None => match self.fork_member(Some(held.stream.as_fd())) {
                    Ok(pid) => {
                        self.pool.as_mut().and_then(|pool| pool.idle.pop());
                        (pid, true)
                    }
                    Err(error) => return self.fork_failed(held, error),
                },
            };
            let Some(Job::Member(member)) = self.children.get_mut(pid) else { continue };
            let Some(channel) = &member.channel else { continue };
            match channel.send(held.stream.as_fd(), &message) {
                Ok(()) => {
                    member.serving = Some(held.peer);
                    member.admitted = held.admitted;
                    if let Some(pool) = &mut self.pool {
                        pool.busy += 1;
                    }
                    self.stats.accepted += 1;
                    self.report(&Event::Accepted { pid, peer: held.peer });
                    self.report_status();
                    // `held.stream` is dropped here, closing the parent's copy.
                    return Ok(());
                }
                // A member forked for this very connection cannot take it:
                // the trouble is not the member's.
                Err(error) if fresh => {
                    member.channel = None;
                    return self.fork_failed(held, error);
                }
                // The member is gone (its exit is reaped later): the next.
                Err(_) => member.channel = None,
            }
        }
    }
}

impl<W> Drop for Supervisor<W> {
    /// The loop ended early (an error, or a panic in the policy or the
    /// observer): stop the children rather than leave them orphaned or as
    /// zombies: SIGTERM, up to `kill_after` to exit, then SIGKILL, and as long
    /// again to reap them. A clean shutdown leaves no child, and does nothing
    /// here.
    fn drop(&mut self) {
        if self.children.is_empty() || self.gave_up {
            return;
        }
        tracing::warn!(
            children = self.children.len(),
            "the server loop ended early; stopping its children"
        );
        for signal in [Signal::TERM, Signal::KILL] {
            let _ = self.children.signal_each(signal);
            let deadline = after(Instant::now(), self.settings.kill_after);
            while !self.children.is_empty() && Instant::now() < deadline {
                match self.children.reap() {
                    Ok(Some(reaped)) => {
                        tracing::info!(pid = reaped.pid.as_raw(), "child {}", reaped.exit);
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break,
                }
            }
            if self.children.is_empty() {
                return;
            }
        }
        let left: Vec<String> = self.children.pids().map(|pid| pid.to_string()).collect();
        tracing::warn!(pids = %left.join(" "), "children outlived SIGKILL; giving up on them");
    }
}

/// In a new child, whatever its kind: closes the parent's listeners (if given), the
/// connections the parent holds (balancers' connections waiting for their
/// header, one held back) and `more` of the parent's descriptors. A child
/// that kept one of those connections would keep it open after the parent is
/// done with it: its client would never see it close. Closed without
/// writing to the parent's memory (but for the listeners' vector), so no
/// page of it is copied.
fn close_the_parents<'fd>(
    listeners: Option<&mut Vec<Listener>>,
    pending: &'fd [Pending],
    held: Option<&'fd Held>,
    more: impl IntoIterator<Item = BorrowedFd<'fd>>,
) {
    if let Some(listeners) = listeners {
        listeners.clear();
    }
    let waiting = pending.iter().map(|p| p.stream.as_fd());
    let held = held.map(|h| h.stream.as_fd());
    procmgr::close_in_child(waiting.chain(held).chain(more));
}

/// Whether a failed fork (or a member's channel) is worth another try: out of
/// processes, memory or descriptors, or /proc unreadable for a moment.
fn transient(error: &ProcError) -> bool {
    matches!(
        error,
        ProcError::Fork { .. } | ProcError::ThreadCount { .. } | ProcError::Handoff { .. }
    )
}

/// Consecutive failures of one kind: a long episode is a warning once, then
/// debug lines, and its end is reported once more.
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
