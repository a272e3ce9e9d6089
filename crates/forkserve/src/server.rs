//! [`Server`]: the listeners, the signals, the settings, and `serve`.

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use netcore::{ListenOptions, Listener};
use procmgr::{ProcError, Signal, Signals};

use crate::child::ChildSetup;
use crate::datagram::{Datagrams, Reply};
use crate::event::Observer;
use crate::pool::PoolSettings;
use crate::proxy::{DEFAULT_TIMEOUT, ProxySettings};
use crate::supervisor::{Parts, Settings, Supervisor};
use crate::{Admit, Cidr, Connection, Event, ServeError};

/// Replies a second per source address, by default, for datagrams.
const DEFAULT_DATAGRAM_RATE: u32 = 10;

/// The shortest pause the loop takes (a back-off, a [`Verdict::Wait`](crate::Verdict::Wait)): a
/// zero pause would make it spin.
pub(crate) const MIN_PAUSE: Duration = Duration::from_millis(1);

/// A fork-per-connection TCP server: listeners, settings, and the loop that
/// accepts, forks a child per connection, reaps, and shuts down in stages.
///
/// Building one blocks, in the calling thread, SIGCHLD and every signal whose
/// default action would end the process ([`Signal::fatal_by_default`]: SIGHUP,
/// SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGALRM, …); [`Server::serve`] reads
/// them from a `signalfd`, so a child that exits at once, a Ctrl-C during
/// start-up or a stray `kill -HUP` is never lost and never kills the server
/// without a word. What each one does:
///
/// | signal | effect |
/// |---|---|
/// | SIGCHLD | children that exited are reaped |
/// | SIGTERM, SIGINT | graceful shutdown: listeners close, children get the grace period, then SIGTERM, then SIGKILL; a second signal cuts the wait, a third kills |
/// | SIGQUIT | the same without the grace period: children get SIGTERM at once |
/// | SIGUSR1 | the counters are logged ([`Event::Stats`]) |
/// | SIGHUP and the rest | logged ([`Event::Signal`]) and otherwise ignored |
///
/// A signal the server's launcher set to be ignored (a shell starting a
/// background job ignores SIGINT and SIGQUIT; `nohup` ignores SIGHUP) stays
/// ignored, in the server and in its children; SIGTERM is the exception: it
/// always asks for shutdown, and children always get its default action back.
///
/// Build it before starting any thread, and serve from the same thread: `fork`
/// refuses a process with more than one thread, and [`Server::serve`] checks
/// before it listens.
pub struct Server {
    listeners: Vec<Listener>,
    signals: Signals,
    settings: Settings,
    admit: Box<dyn Admit>,
    observer: Option<Observer>,
    /// Pool mode's spares; 0 for fork mode.
    spares: usize,
    /// Pool mode's connections per child.
    per_child: u32,
    /// The balancers that send PROXY headers.
    proxy_from: Vec<Cidr>,
    /// The datagram service's sockets and reply, if any.
    datagrams: Option<(Vec<UdpSocket>, Reply)>,
    /// Its replies a second per source address.
    datagram_rate: u32,
    /// How long their headers may take.
    proxy_timeout: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("settings", &self.settings)
            .field("spares", &self.spares)
            .field("per_child", &self.per_child)
            .finish_non_exhaustive()
    }
}

/// How many listeners one server can serve: its loop waits on all of them, its
/// signals and (in pool mode) its members' reports in one `poll(2)` whose state
/// lives on the stack.
pub const MAX_LISTENERS: usize = procmgr::Ready::CAPACITY - 1;

/// Refuses no listener, or more than [`MAX_LISTENERS`].
fn check_count(count: usize) -> Result<(), ServeError> {
    match count {
        0 => Err(ServeError::NoListeners),
        count if count > MAX_LISTENERS => {
            Err(ServeError::TooManyListeners { count, max: MAX_LISTENERS })
        }
        _ => Ok(()),
    }
}

impl Server {
    /// Blocks the server's signals, then binds and listens on every address in
    /// `addrs`, all on one port: with port 0 the first gets a free port from
    /// the kernel and the others take the same one. IPv6 listeners are
    /// v6-only, so `0.0.0.0` and `[::]` can be bound together.
    ///
    /// # Errors
    /// [`ServeError::NoListeners`] for no address,
    /// [`ServeError::TooManyListeners`] for more than [`MAX_LISTENERS`],
    /// [`ServeError::Signals`], or [`ServeError::Listen`] with the address that
    /// could not be bound.
    pub fn bind(addrs: &[SocketAddr], backlog: i32) -> Result<Self, ServeError> {
        Self::bind_with(addrs, ListenOptions::backlog(backlog))
    }

    /// [`Server::bind`] with more listener options: `SO_REUSEPORT`, to share
    /// the port with other servers (see [`ListenOptions::reuse_port`] and
    /// [`Server::finish_backlog`]).
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub fn bind_with(addrs: &[SocketAddr], options: ListenOptions) -> Result<Self, ServeError> {
        check_count(addrs.len())?;
        let signals = Self::signals()?;
        let mut listeners: Vec<Listener> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            // `set_port`, not a new address: an IPv6 zone must survive.
            let mut addr = addr;
            if let Some(first) = listeners.first() {
                addr.set_port(first.local_addr().port());
            }
            listeners.push(Listener::bind_with(addr, options).map_err(ServeError::Listen)?);
        }
        Ok(Self::with(listeners, signals))
    }

    /// A server on listeners made elsewhere: bound by the caller, or inherited
    /// (systemd's `LISTEN_FDS`, through [`Listener::from_fd`]).
    ///
    /// # Errors
    /// [`ServeError::NoListeners`] for an empty list,
    /// [`ServeError::TooManyListeners`] for more than [`MAX_LISTENERS`], or
    /// [`ServeError::Signals`].
    pub fn new(listeners: Vec<Listener>) -> Result<Self, ServeError> {
        check_count(listeners.len())?;
        Ok(Self::with(listeners, Self::signals()?))
    }

    /// Blocks and opens the signalfd for the signals the loop reads: SIGCHLD,
    /// SIGTERM, and every other fatal-by-default signal the launcher did not
    /// ignore.
    fn signals() -> Result<Signals, ServeError> {
        let ignored = procmgr::ignored_signals();
        let mut set = vec![Signal::CHLD, Signal::TERM];
        set.extend(
            Signal::fatal_by_default()
                .into_iter()
                .filter(|signal| *signal != Signal::TERM && !ignored.contains(signal)),
        );
        let signals = Signals::new(&set).map_err(ServeError::Signals)?;
        // The check before each fork reads /proc/self/status through a
        // descriptor opened here, once, so forking never needs a free one.
        procmgr::thread_count().map_err(ServeError::Signals)?;
        Ok(signals)
    }

    fn with(listeners: Vec<Listener>, signals: Signals) -> Self {
        Self {
            listeners,
            signals,
            settings: Settings::default(),
            admit: Box::new(crate::admit::ServeAll),
            observer: None,
            spares: 0,
            per_child: 1,
            proxy_from: Vec::new(),
            datagrams: None,
            datagram_rate: DEFAULT_DATAGRAM_RATE,
            proxy_timeout: DEFAULT_TIMEOUT,
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
    /// they are sent SIGTERM (default 5 s; `Duration::MAX` waits for ever). A
    /// second signal cuts it short.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.settings.grace = grace;
        self
    }

    /// After SIGTERM to the children at shutdown, how long before SIGKILL,
    /// and after SIGKILL, how long before `serve` gives up on children that
    /// still have not ended (default 2 s). A third signal cuts the first wait
    /// short.
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

    /// Pool mode: keeps `spares` children forked ahead of connections, each
    /// waiting for one, so no fork is on a connection's path (0, the default,
    /// forks a child per connection as it comes).
    ///
    /// Who accepts depends on whether a decision needs the parent:
    ///
    /// - When the admission policy [admits everyone](Admit::admits_everyone)
    ///   (the default) and no PROXY header is read, idle children accept on
    ///   the listeners themselves, one woken per connection
    ///   (`EPOLLEXCLUSIVE`), so the parent is not on the connection's path.
    ///   Each reports the connection it took; the parent counts and logs it,
    ///   applies the child limit, and at shutdown stops the listening
    ///   sockets themselves (a child serving a connection holds a copy), so
    ///   new clients are refused at once as in fork mode. An inherited
    ///   listener (systemd's) is not stopped: its owner keeps listening.
    /// - Otherwise the parent accepts, asks the admission policy, counts and
    ///   logs exactly as in fork mode, and hands each connection it serves to
    ///   an idle child (`SCM_RIGHTS` over the child's own channel).
    ///
    /// Either way a connection that finds no idle child gets one forked for
    /// it, a spare is forked for each one taken (as long as the children stay
    /// within [`Server::max_children`]; when children accept, one at a time,
    /// and while some serve and at least half the spares are idle, 10 ms
    /// after the pool fell short, so the fork does not compete with them for
    /// the CPU), and shutdown is fork mode's. After a burst, children idle
    /// beyond twice `spares` for a second are retired.
    /// Each child is set up as in fork mode before its first connection, and
    /// by default serves one connection and exits
    /// ([`Server::connections_per_child`]).
    #[must_use]
    pub fn prefork(mut self, spares: usize) -> Self {
        self.spares = spares;
        self
    }

    /// In pool mode ([`Server::prefork`]), how many connections a child serves,
    /// one after another, before it exits and a fresh one replaces it
    /// (Apache's `MaxConnectionsPerChild`); 0 for no limit. Default 1.
    ///
    /// The trade-off: with 1, every connection has a process of its own, as
    /// in fork mode, and nothing one client does (memory it makes the child
    /// allocate, state `work` keeps, a crash) can reach another. Above 1, a
    /// later client of the same child runs in the process an earlier one used:
    /// whatever `work` leaves behind (captured state, heap, a changed working
    /// directory or signal mask, a leaked descriptor) it inherits, and the
    /// fork's cost is shared among them. Work that `exec`s a program uses its
    /// child up whatever the setting.
    ///
    /// Has no effect without [`Server::prefork`].
    #[must_use]
    pub fn connections_per_child(mut self, limit: u32) -> Self {
        self.per_child = limit;
        self
    }

    /// At shutdown, before the listeners close, accept the connections
    /// already waiting in their backlogs and serve them through the grace
    /// period, as far as the child limit allows, instead of leaving them to
    /// be reset with the listeners (default off). For a server that shares
    /// its port (`SO_REUSEPORT`): the kernel queued those clients to this
    /// server, and no other can take them once its listeners are gone.
    #[must_use]
    pub fn finish_backlog(mut self, finish: bool) -> Self {
        self.settings.finish_backlog = finish;
        self
    }

    /// Connections from these addresses (load balancers: HAProxy with
    /// `send-proxy` or `send-proxy-v2`, nginx, AWS NLB, …) must start with a
    /// PROXY protocol header, v1 or v2; the client's address it carries then
    /// stands for the connection everywhere: admission (limits per address,
    /// access rules), events, the child's [`Connection::peer`]. A v2 `LOCAL`
    /// or v1 `UNKNOWN` header keeps the balancer's address.
    ///
    /// The parent reads each header before admission, without waiting on it:
    /// up to 32 balancer connections wait at once, each for at most
    /// [`Server::proxy_timeout`], and nothing past the header is read. A
    /// trusted connection without a valid header in time is refused, and so
    /// is a connection from any other address whose first bytes, as far as
    /// they have arrived when it is accepted, look like a header (a client
    /// must not pass off an address). An empty list (the default) reads no
    /// header from anyone.
    #[must_use]
    pub fn proxy_protocol(mut self, from: impl IntoIterator<Item = Cidr>) -> Self {
        self.proxy_from = from.into_iter().collect();
        self
    }

    /// How long a balancer's connection may take to send its whole PROXY
    /// header before it is refused (default 5 s, at least 1 ms).
    #[must_use]
    pub fn proxy_timeout(mut self, timeout: Duration) -> Self {
        self.proxy_timeout = timeout.max(MIN_PAUSE);
        self
    }

    /// Also answers datagrams on `sockets` (bound with
    /// [`netcore::bind_udp`], non-blocking), in the parent's loop, without a
    /// fork: `reply(datagram, source, buffer)` writes the reply into the
    /// buffer (64 KiB) and returns its length, or `None` for no reply.
    ///
    /// The guard such a service needs comes with it: no datagram from a
    /// source port [`is_guarded_port`](crate::is_guarded_port) names is answered (two echo or
    /// chargen services would bounce datagrams forever; a spoofed source
    /// would make this server a reflector), and each source address (each
    /// IPv6 /64) gets at most [`Server::datagram_rate`] replies a second.
    /// Everything is counted in [`Stats`](crate::Stats). The sockets close
    /// with the listeners at shutdown; children never hold them.
    #[must_use]
    pub fn datagrams(
        mut self,
        sockets: Vec<UdpSocket>,
        reply: impl FnMut(&[u8], SocketAddr, &mut [u8]) -> Option<usize> + 'static,
    ) -> Self {
        self.datagrams = Some((sockets, Box::new(reply)));
        self
    }

    /// With [`Server::datagrams`], the most replies a second to one source
    /// address, and the largest burst (default 10, at least 1).
    #[must_use]
    pub fn datagram_rate(mut self, per_source: u32) -> Self {
        self.datagram_rate = per_source.max(1);
        self
    }

    /// The policy that decides on each connection in the parent, before any
    /// fork (default: serve everyone). [`Policy`](crate::Policy) is a ready-made
    /// one.
    #[must_use]
    pub fn admit(mut self, policy: impl Admit + 'static) -> Self {
        self.admit = Box::new(policy);
        self
    }

    /// Calls `observer` with every [`Event`], in the parent, whether or not
    /// its log line was throttled: to count, export or react. It runs in the
    /// event loop and must not block, start a thread, or spawn processes of
    /// its own (the loop reaps every child of the process).
    #[must_use]
    pub fn on_event(mut self, observer: impl FnMut(&Event<'_>) + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Serves until a shutdown signal, then shuts down in stages: the
    /// listeners close at once, children get the grace period, then SIGTERM,
    /// then SIGKILL; returns `Ok` once every child is reaped.
    ///
    /// Each accepted connection the admission policy lets through is served
    /// by a new child process that runs `work` with it and exits with the code
    /// `work` returns (a panic exits 101). Before `work` runs, the child:
    ///
    /// - closes the descriptors the server's launcher leaked to it (those not
    ///   close-on-exec), the listeners and the signalfd; descriptors the
    ///   program opened itself (a log file, a connection to a backend) stay
    ///   open, so a `tracing` writer or a captured file keeps working;
    /// - has an empty signal mask, caught signals back to their defaults,
    ///   SIGTERM's default action even if the launcher ignored it, and SIGINT,
    ///   SIGQUIT and SIGPIPE ignored;
    /// - gets SIGTERM if the parent dies, however it dies;
    /// - has the idle timeout set on the connection.
    ///
    /// A child that cannot set itself up exits with
    /// [`SETUP_FAILED`](crate::SETUP_FAILED). The parent reaps every child of
    /// the process with `waitpid(-1)`: do not start other child processes in
    /// it while it serves.
    ///
    /// # Errors
    /// [`ServeError::Fork`] at once if the process has more than one thread;
    /// later, a [`ServeError`] when the loop cannot go on (a listener or the
    /// signalfd fails, reaping fails, children outlive SIGKILL). Live children
    /// are then sent SIGTERM, then SIGKILL, and reaped before `serve`
    /// returns. Transient trouble (out of descriptors, processes or memory)
    /// pauses and retries instead.
    pub fn serve(self, work: impl FnMut(Connection) -> i32) -> Result<(), ServeError> {
        // A second thread now would make every fork fail: say so before
        // announcing that the server listens.
        let threads = procmgr::thread_count().map_err(ServeError::Fork)?;
        if threads != 1 {
            return Err(ServeError::Fork(ProcError::MultiThreaded { threads }));
        }
        for listener in &self.listeners {
            // Readiness can be stale by the time accept runs (the client may
            // have reset), and a blocking accept would stall every other duty.
            listener.set_nonblocking(true).map_err(ServeError::Listen)?;
        }
        let mut child = ChildSetup::new(&self.signals, self.settings.idle_timeout)?;
        let datagrams = match self.datagrams {
            Some((sockets, reply)) => {
                for socket in &sockets {
                    // A blocking socket would stall the loop on its second read.
                    socket.set_nonblocking(true).map_err(ServeError::Datagrams)?;
                    child.close_too(socket.as_fd());
                }
                Some(Datagrams::new(sockets, reply, self.datagram_rate))
            }
            None => None,
        };
        let mut settings = self.settings;
        settings.prefork = (self.spares > 0)
            .then_some(PoolSettings { spares: self.spares, per_child: self.per_child });
        settings.proxy = (!self.proxy_from.is_empty())
            .then_some(ProxySettings { trusted: self.proxy_from, timeout: self.proxy_timeout });
        let parts = Parts {
            datagrams,
            listeners: self.listeners,
            signals: self.signals,
            settings,
            admit: self.admit,
            observer: self.observer,
            child,
        };
        Supervisor::new(parts, work)?.run()
    }
}
