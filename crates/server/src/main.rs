//! `echo-server`: the fork-per-connection echo server.
//!
//! Only wiring: parse the arguments, set up logging, and hand a
//! [`forkserve::Server`] the addresses, the settings and the echo loop
//! ([`conn::Echo::serve`]) as each child's work. The library owns the rest: the
//! accept, fork and reap loop, limits, back-off and staged shutdown.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod addr;
mod conn;
mod help;
mod log;
mod notify;

use std::error::Error;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::addr::BindAddr;

/// The port used when none is given: unprivileged, so no root is needed.
const DEFAULT_PORT: u16 = 7000;

/// A multi-process TCP echo server: one child process per connection.
///
/// Every byte a client sends is written back to it. The parent process accepts
/// connections, forks a child for each, and reaps the children as they exit,
/// logging how each one ended. SIGTERM or SIGINT stops it gracefully.
#[derive(Debug, Parser)]
#[command(name = "echo-server", version, after_long_help = manual::help(help::SECTIONS))]
struct Args {
    /// TCP port to listen on; 0 picks a free one (the log says which).
    #[arg(default_value_t = DEFAULT_PORT)]
    port: u16,

    /// Local address to listen on: IPv4 or IPv6 (an IPv6 listener is v6-only;
    /// a link-local one needs its interface, as in fe80::1%eth0). Repeat it to
    /// listen on several, all on the same port. Without it: every IPv4 and
    /// IPv6 address (0.0.0.0 and ::, IPv4 alone where the host has no IPv6).
    #[arg(short, long, value_name = "ADDR", value_parser = BindAddr::parse)]
    bind: Vec<BindAddr>,

    /// Without --bind: IPv4 only (0.0.0.0).
    #[arg(short = '4', conflicts_with_all = ["bind", "ipv6_only"])]
    ipv4_only: bool,

    /// Without --bind: IPv6 only (::).
    #[arg(short = '6', conflicts_with = "bind")]
    ipv6_only: bool,

    /// Length of the kernel's queue of connections waiting to be accepted.
    #[arg(long, value_name = "N", default_value_t = forkserve::DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(i32).range(1..))]
    backlog: i32,

    /// Share the port with other echo-server instances started with
    /// --reuse-port, by the same user (SO_REUSEPORT): the kernel spreads new
    /// connections among them, each keeps its own limits, and one that shuts
    /// down first serves the clients already queued to it. With
    /// net.ipv4.tcp_migrate_req=1 the kernel also hands over those that
    /// arrive while it closes. Off by default. Example: two `echo-server 7000
    /// --reuse-port` side by side.
    #[arg(long)]
    reuse_port: bool,

    /// Most children alive at once; further clients wait in the backlog until
    /// one leaves, instead of exhausting the process table.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_children: u32,

    /// Keep N children forked ahead of connections, so none waits for a fork:
    /// each connection goes to an idle child, and a spare is forked for each
    /// one taken (within --max-children). Idle children accept connections
    /// themselves, unless --allow, --deny, --max-per-ip, --max-rate or
    /// --proxy-protocol needs the parent to see each one first (it then
    /// hands them over). Default: fork per connection. Example: `--prefork
    /// 16`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    prefork: Option<u32>,

    /// With --prefork, how many connections a child serves, one after
    /// another, before it exits and is replaced; 0 for no limit. Above 1, a
    /// client runs in a process an earlier client used (no longer isolated
    /// from it) and connections are cheaper.
    #[arg(long, value_name = "M", default_value_t = 1, requires = "prefork")]
    connections_per_child: u32,

    /// On SIGTERM or SIGINT, how long children may finish on their own before
    /// they are sent SIGTERM (and SIGKILL 2 s later). A second signal skips it.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_secs)]
    grace: f64,

    /// Close a connection whose peer sends nothing, or takes none of the echo,
    /// for this long; 0 never does.
    #[arg(long, value_name = "SECS", default_value_t = 300.0, value_parser = parse_timeout)]
    idle_timeout: f64,

    /// Refuse, without forking, a client whose address already has N
    /// connections (IPv6: N in its /64). Off by default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_per_ip: Option<u32>,

    /// Accept at most N new connections a second (bursts of up to N); beyond
    /// that, clients wait in the backlog. Off by default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_rate: Option<u32>,

    /// Admit clients in this address prefix (e.g. 10.0.0.0/8 or ::1); once
    /// one is given, clients in no --allow prefix are refused. Repeatable.
    #[arg(long, value_name = "CIDR")]
    allow: Vec<forkserve::Cidr>,

    /// Refuse clients in this address prefix. Repeatable. The most specific
    /// prefix containing a client decides; on a tie, deny wins.
    #[arg(long, value_name = "CIDR")]
    deny: Vec<forkserve::Cidr>,

    /// Connections from this address prefix (your load balancers: HAProxy
    /// with send-proxy or send-proxy-v2, nginx, AWS NLB) must start with a
    /// PROXY protocol header, v1 or v2, whose client address then counts for
    /// the limits, access rules, logs and exec mode's TCPREMOTEIP; one
    /// without a valid header within 5 s is refused, as is a client from
    /// elsewhere that sends a header. Repeatable. Off by default. Example:
    /// `--proxy-protocol 10.0.0.0/24`.
    #[arg(long, value_name = "CIDR")]
    proxy_protocol: Vec<forkserve::Cidr>,

    /// With --proxy-protocol, how long a balancer's connection may take to
    /// send its whole header before it is refused (at least 0.001; waiting
    /// forever would let a balancer hold the server's 32 waiting slots).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_deadline,
          requires = "proxy_protocol")]
    proxy_timeout: f64,

    /// Also echo UDP datagrams on the same addresses and port (RFC 862), from
    /// the parent, without a fork: never to a source port under 1024 or of a
    /// service that answers back (so two echo services cannot bounce a
    /// datagram forever), and at most --udp-rate replies a second to one
    /// address. Off by default.
    #[arg(long)]
    udp: bool,

    /// With --udp, the most replies a second (and burst) to one source
    /// address (an IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = 10, requires = "udp",
          value_parser = clap::value_parser!(u32).range(1..))]
    udp_rate: u32,

    /// Log more: -v shows each connection's data, -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Log only warnings and errors.
    #[arg(short, long)]
    quiet: bool,

    /// Serve one connection already open on standard input and output, then
    /// exit with its status, for inetd or xinetd (`nowait`), tcpserver, or
    /// systemd (`Accept=yes`): they listen and fork. --allow, --deny and
    /// --idle-timeout apply; the limits that need a listening parent do not.
    #[arg(long, conflicts_with_all = ["port", "bind", "backlog", "max_children", "grace",
          "max_per_ip", "max_rate", "prefork", "reuse_port", "proxy_protocol", "udp"])]
    inetd: bool,

    /// After binding, run as this user (and its supplementary groups) for
    /// good: the parent and every child. Refuses to start if that fails.
    /// Needs root, e.g. `--user nobody` with a port under 1024.
    #[arg(long, value_name = "NAME", conflicts_with = "inetd")]
    user: Option<String>,

    /// With --user, run as this group instead of the user's own.
    #[arg(long, value_name = "NAME", requires = "user")]
    group: Option<String>,

    /// Exec mode: run PROGRAM [ARGS...] in each child instead of echoing,
    /// with the connection on its standard input and output, the server's
    /// standard error, and PROTO=TCP, TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP
    /// and TCPLOCALPORT set (as tcpserver does); its exit status is the
    /// child's. Every limit, access rule and shutdown stage applies. Example:
    /// `echo-server 7000 -- cat`.
    #[arg(last = true, value_name = "PROGRAM", conflicts_with = "inetd")]
    program: Vec<String>,

    /// Log lines as text, or as one JSON object per line (`timestamp`,
    /// `level`, `message`, `target`, the fields, and the connection's `pid`
    /// and `peer` under `span` for a child's lines).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = log::Format::Text)]
    log_format: log::Format,

    /// Write this manual as a man page (`man`) or shell completions (`bash`,
    /// `zsh`, `fish`) to standard output, and exit. Example: `echo-server
    /// --generate man > /usr/local/share/man/man1/echo-server.1`.
    #[arg(long, value_name = "KIND", value_enum, exclusive = true)]
    generate: Option<manual::Generate>,
}

/// A timeout: 0 (never), or at least a millisecond, so that a tiny value is
/// never silently taken for "never" or for a timeout no client can meet.
fn parse_timeout(text: &str) -> Result<f64, String> {
    match parse_secs(text)? {
        secs if secs == 0.0 || secs >= 0.001 => Ok(secs),
        _ => Err(format!("'{text}' is under a millisecond; 0 means never")),
    }
}

/// A number of seconds for a deadline: at least a millisecond, never "no
/// deadline".
fn parse_deadline(text: &str) -> Result<f64, String> {
    match parse_secs(text)? {
        secs if secs >= 0.001 => Ok(secs),
        _ => Err(format!("'{text}' is under a millisecond")),
    }
}

/// A non-negative, finite number of seconds.
fn parse_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!("'{text}' is not a number of seconds between 0 and 86400")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(kind) = args.generate {
        return generate(kind);
    }
    // Under inetd or xinetd the connection is descriptor 2 as well: a log
    // line there would go to the client, in the middle of its echo.
    let stderr_is_the_client = args.inetd && same_file("/proc/self/fd/0", "/proc/self/fd/2");
    // Whatever the level, the `listening on` line is written: with port 0
    // nothing else tells where the server listens.
    log::init(
        match (args.quiet, args.verbose) {
            (true, _) => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            (false, _) => "trace",
        },
        args.log_format,
        stderr_is_the_client,
    );
    let outcome = if args.inetd { inetd(&args) } else { run(&args).map(|()| ExitCode::SUCCESS) };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            if !stderr_is_the_client {
                eprintln!("error: {}", chain(err.as_ref()));
            }
            ExitCode::FAILURE
        }
    }
}

/// `--generate KIND`: the manual or the completions on standard output.
fn generate(kind: manual::Generate) -> ExitCode {
    use clap::CommandFactory;
    match manual::generate(kind, Args::command(), help::SECTIONS, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot write the {} output: {err}", kind.name());
            ExitCode::FAILURE
        }
    }
}

/// Whether two paths name the same file (device and inode), as
/// `/proc/self/fd/N` does for a descriptor's socket.
fn same_file(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// `--inetd`: serves the one connection on standard input and exits with the
/// child's exit code.
fn inetd(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    let idle_timeout = Some(Duration::from_secs_f64(args.idle_timeout)).filter(|t| !t.is_zero());
    let code = forkserve::Inetd::new()
        .idle_timeout(idle_timeout)
        .admit(policy(args)?)
        .serve(|conn| conn::Echo::new(idle_timeout).serve(conn))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
}

/// Checks, before anything is bound, that exec mode's program can be run
/// (a typo must stop the server, not fail every connection later).
fn check_program(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        runnable(std::path::Path::new(program))
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).any(|dir| runnable(&dir.join(program)))
    };
    if found { Ok(()) } else { Err(format!("cannot run {program}: no such executable")) }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    if let Some(program) = args.program.first() {
        check_program(program)?;
    }
    // Binding blocks the signals the loop reads first, long before the first
    // fork: a child that exits at once cannot be missed, and a Ctrl-C during
    // start-up becomes a clean exit.
    let (binds, both) = addr::listen_on(&args.bind, args.ipv4_only, args.ipv6_only);
    let addrs: Vec<SocketAddr> = binds.iter().map(|addr| addr.with_port(args.port)).collect();
    let idle_timeout = Some(Duration::from_secs_f64(args.idle_timeout)).filter(|t| !t.is_zero());
    let notifier = notify::Notifier::from_env();
    let options = forkserve::ListenOptions::backlog(args.backlog).reuse_port(args.reuse_port);
    let (server, listeners) = match inherited_listeners()? {
        Some(listeners) => {
            let count = listeners.len();
            tracing::info!(
                "serving {count} socket(s) passed by the service manager (LISTEN_FDS); \
                 PORT and --bind are not used"
            );
            (forkserve::Server::new(listeners)?, count)
        }
        None => match forkserve::Server::bind_with(&addrs, options) {
            Ok(server) => (server, addrs.len()),
            // The default asks for both families; a host without IPv6 gets
            // IPv4 alone rather than no server.
            Err(forkserve::ServeError::Listen(err)) if both && addr::no_ipv6(&err) => {
                tracing::info!("no IPv6 here ({}); listening on IPv4 only", chain(&err));
                (forkserve::Server::bind_with(&addrs[..1], options)?, 1)
            }
            Err(err) => return Err(err.into()),
        },
    };
    // RFC 862 over UDP on the same addresses and port, bound while root too.
    let udp = if args.udp {
        let sockets = server
            .local_addrs()
            .into_iter()
            .map(|addr| netcore::bind_udp(addr, options))
            .collect::<Result<Vec<_>, _>>()?;
        for socket in &sockets {
            tracing::info!(target: "forkserve::listening", "answering UDP datagrams on {}", socket.local_addr()?);
        }
        Some(sockets)
    } else {
        None
    };
    // Bound (a port under 1024 needs root): now give root up, before anyone
    // is served, or do not serve at all.
    if let Some(user) = &args.user {
        let now = forkserve::drop_privileges(user, args.group.as_deref())?;
        tracing::info!(
            "running as user {} (uid {}), group {} (gid {}), supplementary groups {:?}",
            now.user,
            now.uid,
            now.group,
            now.gid,
            now.groups
        );
    }
    let mut readiness = Readiness { listeners, listening: Vec::new() };
    let server = server
        .max_children(usize::try_from(args.max_children)?)
        .prefork(usize::try_from(args.prefork.unwrap_or(0))?)
        .connections_per_child(args.connections_per_child)
        .grace(Duration::from_secs_f64(args.grace))
        .finish_backlog(args.reuse_port)
        .proxy_protocol(args.proxy_protocol.iter().cloned())
        .datagram_rate(args.udp_rate)
        .proxy_timeout(Duration::from_secs_f64(args.proxy_timeout))
        .idle_timeout(idle_timeout)
        .admit(policy(args)?)
        .on_event(move |event| {
            // The log's own counter, beside the loop's (SIGUSR1, shutdown).
            if let forkserve::Event::Stats { .. } | forkserve::Event::Finished { .. } = event {
                let dropped = log::dropped_total();
                tracing::info!(target: "forkserve::counters", "log lines dropped: {dropped}");
            }
            if let Some(notifier) = &notifier {
                readiness.report(notifier, event);
            }
        });
    // Echo: the reply is the datagram.
    let server = match udp {
        Some(sockets) => server.datagrams(sockets, |datagram, _, reply| {
            reply.get_mut(..datagram.len())?.copy_from_slice(datagram);
            Some(datagram.len())
        }),
        None => server,
    };
    match args.program.split_first() {
        Some((program, program_args)) => {
            let exec = forkserve::Exec::new(program, program_args);
            server.serve(|conn| exec.run(conn))?;
        }
        None => {
            let echo = conn::Echo::new(idle_timeout);
            server.serve(|conn| echo.serve(conn))?;
        }
    }
    Ok(())
}

/// The listeners a service manager passed (systemd's `LISTEN_FDS`, with
/// `LISTEN_PID` naming this process), if any; the variables are removed so no
/// child sees them. A passed descriptor that is not a listening TCP socket is
/// an error.
fn inherited_listeners() -> Result<Option<Vec<forkserve::Listener>>, Box<dyn Error>> {
    // As sd_listen_fds(3): the sockets are ours only if LISTEN_PID names this
    // process (listenfd alone would also take them with no LISTEN_PID).
    let pid = std::env::var("LISTEN_PID").ok().and_then(|pid| pid.parse::<u32>().ok());
    if pid != Some(std::process::id()) {
        return Ok(None);
    }
    let first: usize =
        std::env::var("LISTEN_FDS_FIRST_FD").ok().and_then(|fd| fd.parse().ok()).unwrap_or(3);
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() == 0 {
        return Ok(None);
    }
    let mut listeners = Vec::with_capacity(passed.len());
    for index in 0..passed.len() {
        let fd = index + first;
        let listener = passed
            .take_tcp_listener(index)
            .map_err(|err| format!("LISTEN_FDS: descriptor {fd}: {err}"))?
            .ok_or_else(|| format!("LISTEN_FDS: descriptor {fd} was already taken"))?;
        listeners.push(forkserve::Listener::from_fd(OwnedFd::from(listener))?);
    }
    Ok(Some(listeners))
}

/// What the service manager is told, and when (see `notify`).
#[derive(Debug)]
struct Readiness {
    /// Listeners to wait for before `READY=1`.
    listeners: usize,
    /// Those listening so far.
    listening: Vec<SocketAddr>,
}

impl Readiness {
    fn report(&mut self, notifier: &notify::Notifier, event: &forkserve::Event<'_>) {
        match *event {
            forkserve::Event::Listening { addr } => {
                self.listening.push(addr);
                if self.listening.len() == self.listeners {
                    let addrs: Vec<String> = self.listening.iter().map(|a| a.to_string()).collect();
                    notifier.send(&format!("READY=1\nSTATUS=listening on {}", addrs.join(", ")));
                }
            }
            forkserve::Event::Status { children, limit } => {
                notifier.send(&format!("STATUS={children}/{limit} children"));
            }
            forkserve::Event::ShutdownStarted { .. } => notifier.send("STOPPING=1"),
            _ => {}
        }
    }
}

/// The access rules and limits decided before fork, from the arguments.
fn policy(args: &Args) -> Result<forkserve::Policy, Box<dyn Error>> {
    let mut policy = forkserve::Policy::new();
    for &prefix in &args.allow {
        policy = policy.allow(prefix);
    }
    for &prefix in &args.deny {
        policy = policy.deny(prefix);
    }
    if let Some(limit) = args.max_per_ip {
        policy = policy.max_per_source(usize::try_from(limit)?);
    }
    if let Some(rate) = args.max_rate {
        policy = policy.max_rate(rate);
    }
    Ok(policy)
}

/// An error and its causes on one line:
/// `cannot bind 0.0.0.0:7000: Address already in use (os error 98)`.
fn chain(err: &(dyn Error + 'static)) -> String {
    let causes = std::iter::successors(Some(err), |&e| e.source()).map(ToString::to_string);
    causes.collect::<Vec<_>>().join(": ")
}
