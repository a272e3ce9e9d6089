//! `cargo xtask stress [--quick] [--prefork N [--connections-per-child M] [--parent-accepts]]`:
//! the real `echo-server` under load on loopback, phase by phase, with a
//! table of figures; with `--prefork`, every server runs in pool mode.
//!
//! 1. churn: short connections from 32 threads, random payloads verified
//!    byte for byte, every tenth reset mid-stream;
//! 2. held: many connections open at once, verified at the start and the end;
//! 3. slow and idle: clients that trickle bytes (all must come back) beside
//!    clients that fall silent (the server's idle timeout must close them);
//! 4. flood: connect-and-close from many threads while a probe measures how
//!    long a fresh client waits for its echo;
//! 5. stalled log reader: `-v` logging into a pipe nobody reads, under churn;
//! 6. signals: SIGHUP, SIGUSR1 and SIGUSR2 during churn, then SIGTERM.
//!
//! Phases 1, 2, 4 and 6 share one server, as a long-running daemon would
//! live through them; 3 and 5 need servers started differently. A sampler
//! watches each server's process tree from `/proc` throughout. The run fails
//! on any lost or corrupted byte, unexpected client error, zombie that
//! outlives a reap cycle, server that does not exit 0 on SIGTERM, or growth
//! of the parent's descriptors once every connection is closed (in pool
//! mode: beyond its one channel per child, with at most twice the spares
//! left idle). Every
//! socket operation, wait and loop is bounded; the only timed checks are
//! bounds that mean "hung".

mod client;
mod counters;
mod monitor;
mod report;

use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::{Server, TIMEOUT, procfs, wait_until};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use client::Tally;
use counters::Counters;
use integration_tests::Stalled;

use crate::watchdog::{Watchdog, unwatch, watch};
use monitor::{Footprint, Monitor, Watch};
use report::{Footprints, Row};

/// The usage line.
pub(crate) const USAGE: &str = "usage: cargo xtask stress [--quick] [--prefork N [--connections-per-child M] [--parent-accepts]]";

/// How much of each phase to run.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// `full` or `quick`.
    name: &'static str,
    /// Short connections in phase 1.
    churn: usize,
    /// Connections held at once in phase 2.
    held: usize,
    /// Slow clients in phase 3, and the bytes each trickles.
    slow: usize,
    slow_bytes: usize,
    /// Idle clients in phase 3.
    idle: usize,
    /// How long the flood of phase 4 lasts, and its most connections.
    flood: Duration,
    flood_max: usize,
    /// Short connections in phase 5, against the stalled log.
    stalled: usize,
    /// Short connections in phase 6, under signals.
    signalled: usize,
    /// The whole run's bound: beyond it, it is hung.
    limit: Duration,
}

/// The default run: a couple of minutes on two cores.
const FULL: Scale = Scale {
    name: "full",
    churn: 20_000,
    held: 1_000,
    slow: 16,
    slow_bytes: 300,
    idle: 16,
    flood: Duration::from_secs(30),
    flood_max: 500_000,
    stalled: 5_000,
    signalled: 5_000,
    limit: Duration::from_secs(15 * 60),
};

/// `--quick`: under a minute on two cores.
const QUICK: Scale = Scale {
    name: "quick",
    churn: 2_000,
    held: 200,
    slow: 4,
    slow_bytes: 100,
    idle: 4,
    flood: Duration::from_secs(5),
    flood_max: 100_000,
    stalled: 1_000,
    signalled: 1_000,
    limit: Duration::from_secs(3 * 60),
};

/// Concurrent client threads in the churn phases.
const CHURN_THREADS: usize = 32;
/// Threads opening and closing the held connections.
const HELD_THREADS: usize = 8;
/// Threads flooding.
const FLOOD_THREADS: usize = 32;
/// One probe every 20 ms.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Quiet probing before the flood, for a baseline.
const BASELINE: Duration = Duration::from_secs(1);
/// The idle timeout of phase 3's server, in seconds.
const IDLE_TIMEOUT: &str = "1";
/// Time between two signals of phase 6.
const SIGNAL_EVERY: Duration = Duration::from_millis(25);
/// How long a server may take to exit on SIGTERM once idle: beyond it, hung.
const EXIT_BOUND: Duration = Duration::from_secs(30);

/// Runs the stress test with `args` (`--quick` or nothing); true if it passed.
pub(crate) fn run(args: &[String]) -> bool {
    let Some((scale, pool)) = parse(args) else {
        eprintln!("{USAGE}");
        return false;
    };
    let _watchdog = Watchdog::start("stress", scale.limit);
    let mut run = Run::new(scale, pool);
    let started = Instant::now();
    if let Err(e) = run.all_phases() {
        run.fail(format!("the run stopped early: {e}"));
    }
    run.finish(started.elapsed())
}

/// Reads `[--quick] [--prefork N [--connections-per-child M] [--parent-accepts]]`.
fn parse(args: &[String]) -> Option<(Scale, Option<Pool>)> {
    let mut scale = FULL;
    let (mut spares, mut per_child, mut parent_accepts) = (None, None, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => scale = QUICK,
            "--prefork" => spares = Some(args.next()?.parse().ok().filter(|&n: &usize| n > 0)?),
            "--connections-per-child" => per_child = Some(args.next()?.parse().ok()?),
            "--parent-accepts" => parent_accepts = true,
            _ => return None,
        }
    }
    match (spares, per_child, parent_accepts) {
        (None, Some(_), _) | (None, _, true) => None,
        (None, None, false) => Some((scale, None)),
        (Some(spares), per_child, parent_accepts) => {
            Some((scale, Some(Pool { spares, per_child, parent_accepts })))
        }
    }
}

/// Pool mode: every server of the run is started with `--prefork`.
#[derive(Debug, Clone, Copy)]
struct Pool {
    /// `--prefork N`.
    spares: usize,
    /// `--connections-per-child M`, if given.
    per_child: Option<u32>,
    /// The parent accepts and hands each connection over, as it does when a
    /// per-address policy needs to see each one: the server gets a limit
    /// per address too high to matter (idle members accept for themselves
    /// otherwise).
    parent_accepts: bool,
}

impl Pool {
    /// The server's arguments.
    fn args(self) -> Vec<String> {
        let mut args = vec!["--prefork".to_owned(), self.spares.to_string()];
        if let Some(m) = self.per_child {
            args.extend(["--connections-per-child".to_owned(), m.to_string()]);
        }
        if self.parent_accepts {
            args.extend(["--max-per-ip".to_owned(), u32::MAX.to_string()]);
        }
        args
    }

    /// The most children an idle pool keeps: idle members beyond twice the
    /// spares are retired after a second.
    fn idle_ceiling(self) -> usize {
        2 * self.spares
    }
}

/// One run: its settings, and what it found so far.
#[derive(Debug)]
struct Run {
    scale: Scale,
    /// Pool mode, or fork mode (`None`).
    pool: Option<Pool>,
    /// What every server of the run is started with for its mode (pool
    /// mode's arguments; none in fork mode).
    mode_args: Vec<String>,
    /// Seeds every payload and delay (`STRESS_SEED` replays a run).
    seed: u64,
    rows: Vec<Row>,
    footprints: Vec<Footprints>,
    notes: Vec<String>,
    failures: Vec<String>,
    /// The server binary used.
    binary: String,
}

/// The main server of phases 1, 2, 4 and 6, with its sampler and the state
/// carried between phases.
#[derive(Debug)]
struct Main {
    server: Server,
    monitor: Monitor,
    /// Its counters at the end of the last phase.
    counters: Counters,
    /// Before any connection.
    before: Footprint,
    /// Its descriptor count after each phase.
    fds_by_phase: Vec<String>,
}

impl Run {
    /// A run at `scale`, seeded from `STRESS_SEED` (hex) or the clock.
    fn new(scale: Scale, pool: Option<Pool>) -> Self {
        let seed = std::env::var("STRESS_SEED")
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                now.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        Self {
            scale,
            pool,
            mode_args: pool.map(Pool::args).unwrap_or_default(),
            seed,
            rows: Vec::new(),
            footprints: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
            binary: String::new(),
        }
    }

    /// Records a failure (the run will exit non-zero).
    fn fail(&mut self, what: String) {
        println!("    FAIL: {what}");
        self.failures.push(what);
    }

    /// Records a note for the report.
    fn note(&mut self, what: String) {
        println!("    {what}");
        self.notes.push(what);
    }

    /// Fails on every client error of `tally`, showing the first few.
    fn check_tally(&mut self, phase: &str, tally: &Tally) {
        if tally.errors > 0 {
            let samples = tally.samples.join("; ");
            self.fail(format!("{phase}: {} client error(s), first: {samples}", tally.errors));
        }
    }

    /// Adds a row for `phase` and prints it.
    fn row(&mut self, row: Row) {
        let t = &row.tally;
        println!(
            "    {} connections: {} served, {} reset on purpose, {} errors, {} bytes verified, \
             {} zombies at most, {:.1} s",
            t.connections,
            t.served,
            t.resets,
            t.errors,
            t.bytes,
            row.zombies,
            row.duration.as_secs_f64()
        );
        self.rows.push(row);
    }

    /// Every phase in order; an error is what stopped the run early (a
    /// server that would not start), a failure inside a phase is recorded
    /// and the run goes on.
    fn all_phases(&mut self) -> Result<(), String> {
        let (soft, hard) = raise_nofile()?;
        let program = integration_tests::binary("echo-server")?;
        self.binary = program.display().to_string();
        let mode =
            if self.pool.is_some() { self.mode_args.join(" ") } else { "fork mode".to_owned() };
        println!("stress ({}, {mode}): {}, seed {:#x}", self.scale.name, self.binary, self.seed);
        if let Some(pool) = self.pool {
            self.note(format!(
                "{mode}: each server keeps idle children, up to {} once idle; the parent's \
                 descriptor counts below leave out its one channel per child",
                pool.idle_ceiling()
            ));
        }
        self.note(format!("RLIMIT_NOFILE of this process: soft {soft} raised to {hard}"));

        let mut main = self.start_main(&program)?;
        self.churn(&mut main);
        self.held(&mut main);
        self.slow_and_idle(&program)?;
        self.flood(&mut main);
        self.stalled()?;
        self.signals(&mut main);
        self.retire_main(main);
        Ok(())
    }

    /// Starts the main server at the default log level, with room for every
    /// held connection. `Server::start_program` rather than `Server::start`,
    /// which adds `-v` unless given `-q`: `-v` logs every chunk, and `-q`
    /// hides the counters SIGUSR1 logs (at info, as are the two or three
    /// lines per connection, which the harness collects).
    fn start_main(&mut self, program: &Path) -> Result<Main, String> {
        let max_children = (self.scale.held + 100).to_string();
        let mut args = vec!["0", "--bind", "127.0.0.1", "--max-children", max_children.as_str()];
        args.extend(self.mode_args.iter().map(String::as_str));
        let server = Server::start_program(program, &args)?;
        watch(server.pid());
        let pid = server.pid();
        let before = self.footprint(pid)?;
        let limit = monitor::nofile_limit(pid).unwrap_or_else(|| "?".to_owned());
        self.note(format!(
            "main server: pid {pid}, {}, --max-children {max_children}; its open-file limit \
             {limit} (the parent holds no connection, each child one)",
            server.addr()
        ));
        Ok(Main {
            monitor: Monitor::start(pid),
            server,
            counters: Counters::default(),
            before,
            fds_by_phase: Vec::new(),
        })
    }

    /// After a phase on the main server: waits for every child to be reaped,
    /// reads the counters (SIGUSR1) and the parent's descriptors; returns
    /// what the server counted over the phase.
    fn settle(&mut self, main: &mut Main, phase: &str) -> Option<Counters> {
        self.wait_until_idle(main.server.pid(), phase);
        match self.footprint_after(main.server.pid(), &main.before, phase) {
            Ok(now) => main.fds_by_phase.push(format!("{phase} {}", now.fds)),
            Err(e) => self.fail(format!("{phase}: {e}")),
        }
        match usr1_counters(&main.server) {
            Ok(now) => {
                let delta = now.since(&main.counters);
                main.counters = now;
                self.check_counters(phase, &delta);
                Some(delta)
            }
            Err(e) => {
                self.fail(format!("{phase}: no counters from the server: {}", shorten(&e)));
                None
            }
        }
    }

    /// Fails on counters that must stay at zero.
    fn check_counters(&mut self, phase: &str, counters: &Counters) {
        let troubles = counters.troubles();
        if !troubles.is_empty() {
            self.fail(format!("{phase}: the server counted {}", troubles.join(", ")));
        }
    }

    /// Notes whether the server's own account of a phase matches the
    /// clients': one accept per connection, exit 0 for each clean close,
    /// another exit for each reset.
    fn compare_accounts(&mut self, phase: &str, tally: &Tally, server: Option<&Counters>) {
        let Some(server) = server else { return };
        let (accepted, clean, other) =
            (server.get("accepted"), server.get("exited 0:"), server.get("exited otherwise"));
        if (accepted, clean, other) != (tally.connections, tally.served, tally.resets) {
            self.note(format!(
                "{phase}: the server counted {accepted} accepted, {clean} exit 0, {other} other \
                 exits; the clients {} connections, {} clean, {} reset",
                tally.connections, tally.served, tally.resets
            ));
        }
    }

    /// Phase 1.
    fn churn(&mut self, main: &mut Main) {
        let phase = "1. churn";
        let n = self.scale.churn;
        println!("==> {phase}: {n} short connections from {CHURN_THREADS} threads, 10 % reset");
        let _ = main.monitor.take_peaks();
        let started = Instant::now();
        let tally = client::churn(main.server.addr(), n, CHURN_THREADS, self.seed ^ 1);
        let duration = started.elapsed();
        let server = self.settle(main, phase);
        self.check_tally(phase, &tally);
        self.compare_accounts(phase, &tally, server.as_ref());
        let zombies = main.monitor.take_peaks().zombies;
        self.row(Row { phase: phase.to_owned(), tally, server, zombies, probe: None, duration });
    }

    /// Phase 2.
    fn held(&mut self, main: &mut Main) {
        let phase = "2. held";
        let n = self.scale.held;
        println!("==> {phase}: {n} connections open at once, verified at the start and the end");
        let _ = main.monitor.take_peaks();
        let started = Instant::now();
        let (held, mut tally) =
            client::open_held(main.server.addr(), n, HELD_THREADS, self.seed ^ 2);
        let open = held.len();
        // One child per open connection; a pool keeps idle ones besides.
        let most = open + self.pool.map_or(0, Pool::idle_ceiling);
        let children = wait_until(TIMEOUT, &format!("{open} to {most} live children"), || {
            let children = procfs::children_of(main.server.pid());
            let live = children.iter().filter(|c| !c.is_zombie()).count();
            (open..=most).contains(&live).then_some(live)
        });
        match children {
            Ok(live) => self.note(format!(
                "{phase}: {open} connections open, {live} live children, in {:.1} s",
                started.elapsed().as_secs_f64()
            )),
            Err(e) => self.fail(format!("{phase}: {}", shorten(&e))),
        }
        tally.merge(client::finish_held(held, HELD_THREADS, self.seed ^ 2));
        let duration = started.elapsed();
        let server = self.settle(main, phase);
        self.check_tally(phase, &tally);
        self.compare_accounts(phase, &tally, server.as_ref());
        let zombies = main.monitor.take_peaks().zombies;
        self.row(Row { phase: phase.to_owned(), tally, server, zombies, probe: None, duration });
    }

    /// Phase 3, on a server of its own with a short idle timeout.
    fn slow_and_idle(&mut self, program: &Path) -> Result<(), String> {
        let phase = "3. slow + idle";
        let (slow, bytes, idle) = (self.scale.slow, self.scale.slow_bytes, self.scale.idle);
        println!(
            "==> {phase}: {slow} clients trickle {bytes} bytes each, {idle} fall silent, \
             --idle-timeout {IDLE_TIMEOUT}"
        );
        let mut args = vec!["0", "--bind", "127.0.0.1", "--idle-timeout", IDLE_TIMEOUT];
        args.extend(self.mode_args.iter().map(String::as_str));
        let mut server = Server::start_program(program, &args)?;
        watch(server.pid());
        let pid = server.pid();
        let monitor = Monitor::start(pid);
        let before = self.footprint(pid)?;
        let started = Instant::now();
        let result = client::slow_and_idle(server.addr(), slow, bytes, idle, self.seed ^ 3);
        let duration = started.elapsed();
        self.wait_until_idle(pid, phase);
        let counters = usr1_counters(&server);
        if let (Some(least), Some(most)) =
            (result.idle_waits.iter().min(), result.idle_waits.iter().max())
        {
            self.note(format!(
                "{phase}: idle clients disconnected by the server {} to {} after their last \
                 byte (idle timeout {IDLE_TIMEOUT} s)",
                report::ms(*least),
                report::ms(*most)
            ));
        }
        let server_counters = match counters {
            Ok(counters) => {
                self.check_counters(phase, &counters);
                let ended_idle = counters.get("exited otherwise");
                if ended_idle != idle as u64 {
                    self.note(format!(
                        "{phase}: {ended_idle} children exited non-zero; {idle} clients were idle"
                    ));
                }
                Some(counters)
            }
            Err(e) => {
                self.fail(format!("{phase}: no counters from the server: {}", shorten(&e)));
                None
            }
        };
        let after = self.footprint_after(pid, &before, &format!("pid {pid}"));
        let status = server.terminate(EXIT_BOUND);
        unwatch(pid);
        let peaks = monitor.take_peaks();
        self.conclude("phase 3's server (--idle-timeout 1)", before, after, status, monitor.stop());
        self.check_tally(phase, &result.tally);
        self.row(Row {
            phase: phase.to_owned(),
            tally: result.tally,
            server: server_counters,
            zombies: peaks.zombies,
            probe: None,
            duration,
        });
        Ok(())
    }

    /// Phase 4.
    fn flood(&mut self, main: &mut Main) {
        let phase = "4. flood + probes";
        let secs = self.scale.flood.as_secs();
        println!(
            "==> {phase}: {FLOOD_THREADS} threads connect and close for {secs} s; a probe \
             every {} ms",
            PROBE_EVERY.as_millis()
        );
        let addr = main.server.addr();
        let (mut tally, quiet) =
            client::probes(addr, Instant::now() + BASELINE, PROBE_EVERY, self.seed ^ 4);
        let _ = main.monitor.take_peaks();
        let overflows_before = listen_overflows();
        let started = Instant::now();
        let until = started + self.scale.flood;
        let flood = client::flood(
            addr,
            FLOOD_THREADS,
            until,
            self.scale.flood_max,
            PROBE_EVERY,
            self.seed ^ 5,
        );
        let duration = started.elapsed();
        if let (Some(before), Some(after)) = (overflows_before, listen_overflows()) {
            self.note(format!(
                "{phase}: the kernel dropped {} handshakes on a full accept queue \
                 (ListenOverflows; such a client retries its SYN after 1 s)",
                after.saturating_sub(before)
            ));
        }
        let server = self.settle(main, phase);
        let p = |values: &[Duration], pct| client::percentile(values, pct);
        let latencies = &flood.latencies;
        let rate = flood.flood.connections as f64 / duration.as_secs_f64();
        self.note(format!(
            "{phase}: {} flood connections ({} closed, {} reset) in {:.1} s, {rate:.0}/s; {} \
             probes during it: p50 {}, p99 {}, max {}; {} quiet probes before it: p50 {}, p99 {}",
            flood.flood.connections,
            flood.flood.served,
            flood.flood.resets,
            duration.as_secs_f64(),
            flood.probes.connections,
            report::ms(p(latencies, 50)),
            report::ms(p(latencies, 99)),
            report::ms(p(latencies, 100)),
            quiet.len(),
            report::ms(p(&quiet, 50)),
            report::ms(p(&quiet, 99)),
        ));
        if flood.probes.served == 0 {
            self.fail(format!("{phase}: no probe was served during the flood"));
        }
        if let Some(server) = &server {
            let (accepted, connected) = (server.get("accepted"), flood.flood.connections);
            self.note(format!(
                "{phase}: the server accepted {accepted} connections (flood {connected}, probes \
                 {}); children: {} exit 0, {} other exits",
                flood.probes.connections,
                server.get("exited 0:"),
                server.get("exited otherwise")
            ));
        }
        tally.merge(flood.probes);
        tally.merge(flood.flood);
        self.check_tally(phase, &tally);
        let probe = Some((p(latencies, 50), p(latencies, 99)));
        let peaks = main.monitor.take_peaks();
        self.note(format!("{phase}: at most {} children at once (sampled)", peaks.children));
        let zombies = peaks.zombies;
        self.row(Row { phase: phase.to_owned(), tally, server, zombies, probe, duration });
    }

    /// Phase 5, on a `-v` server whose log pipe nobody reads.
    fn stalled(&mut self) -> Result<(), String> {
        let phase = "5. stalled log";
        let n = self.scale.stalled;
        println!("==> {phase}: -v logging into a full pipe; {n} short connections, 10 % reset");
        let mut server =
            Stalled::start_with(&self.mode_args.iter().map(String::as_str).collect::<Vec<_>>())?;
        watch(server.pid());
        let pid = server.pid();
        let monitor = Monitor::start(pid);
        let before = self.footprint(pid)?;
        let started = Instant::now();
        let mut tally = client::churn(server.addr(), n, CHURN_THREADS, self.seed ^ 6);
        let duration = started.elapsed();
        self.wait_until_idle(pid, phase);
        // The parent's footprint while its log pipe is still full.
        let after = self.footprint_after(pid, &before, &format!("pid {pid}"));

        // Drain the pipe; one more connection gives the parent a line to
        // write, which the count of lost lines precedes.
        server.drain();
        let drained = wait_until(TIMEOUT, "the drain to read something", || {
            (!server.lines_with("").is_empty()).then_some(())
        });
        if let Err(e) = drained {
            self.fail(format!("{phase}: {e}"));
        }
        tally.merge(client::churn(server.addr(), 1, 1, self.seed ^ 7));
        self.wait_until_idle(pid, phase);
        match server.wait_for("log line(s) dropped", 1) {
            Ok(lines) => {
                let counts: Vec<String> = lines
                    .iter()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                    .collect();
                self.note(format!(
                    "{phase}: after the drain, {} line(s) counting dropped lines: {}",
                    lines.len(),
                    counts.join(", ")
                ));
            }
            Err(e) => self.fail(format!("{phase}: no line counting the dropped ones: {e}")),
        }
        let server_counters = server
            .signal(Signal::SIGUSR1)
            .and_then(|()| server.wait_for("counters: accepted ", 1))
            .map(|lines| lines.last().and_then(|l| Counters::parse(l)));
        let server_counters = match server_counters {
            Ok(Some(counters)) => {
                self.check_counters(phase, &counters);
                self.compare_accounts(phase, &tally, Some(&counters));
                Some(counters)
            }
            Ok(None) | Err(_) => {
                self.fail(format!("{phase}: no counters from the server after the drain"));
                None
            }
        };
        let status = server.terminate(EXIT_BOUND);
        unwatch(pid);
        let peaks = monitor.take_peaks();
        self.conclude("phase 5's server (-v, stalled log)", before, after, status, monitor.stop());
        self.check_tally(phase, &tally);
        self.row(Row {
            phase: phase.to_owned(),
            tally,
            server: server_counters,
            zombies: peaks.zombies,
            probe: None,
            duration,
        });
        Ok(())
    }

    /// Phase 6.
    fn signals(&mut self, main: &mut Main) {
        let phase = "6. signals";
        let n = self.scale.signalled;
        println!(
            "==> {phase}: {n} short connections while SIGHUP, SIGUSR1, SIGUSR2 arrive every \
             {} ms",
            SIGNAL_EVERY.as_millis()
        );
        let needles = ["received SIGHUP", "counters: accepted ", "received SIGUSR2"];
        let count = |server: &Server| needles.map(|n| log_count(server, n));
        let logged_before = count(&main.server);
        let _ = main.monitor.take_peaks();
        let (pid, addr) = (Pid::from_raw(main.server.pid()), main.server.addr());
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let (tally, sent) = std::thread::scope(|scope| {
            let signaller = scope.spawn(|| {
                let kinds = [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2];
                let (mut sent, mut failed) = ([0_u64; 3], None);
                // At least one of each, however quick the churn.
                for i in 0..100_000 {
                    if i >= kinds.len() && stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match kill(pid, kinds[i % 3]) {
                        Ok(()) => sent[i % 3] += 1,
                        Err(e) => failed = Some(format!("kill {pid}: {e}")),
                    }
                    std::thread::sleep(SIGNAL_EVERY);
                }
                (sent, failed)
            });
            let tally = client::churn(addr, n, CHURN_THREADS, self.seed ^ 8);
            stop.store(true, Ordering::Relaxed);
            (tally, signaller.join().unwrap_or(([0; 3], Some("signaller panicked".to_owned()))))
        });
        let duration = started.elapsed();
        let (sent, failed) = sent;
        if let Some(e) = failed {
            self.fail(format!("{phase}: {e}"));
        }
        let server = self.settle(main, phase);
        let logged_after = count(&main.server);
        let logged: Vec<usize> =
            logged_after.iter().zip(&logged_before).map(|(a, b)| a - b).collect();
        self.note(format!(
            "{phase}: sent SIGHUP {}, SIGUSR1 {}, SIGUSR2 {}; logged 'received SIGHUP' {}, \
             'counters:' {} (one is the phase's own snapshot), 'received SIGUSR2' {} \
             (pending signals of one kind merge)",
            sent[0], sent[1], sent[2], logged[0], logged[1], logged[2]
        ));
        for (i, name) in ["SIGHUP", "SIGUSR1", "SIGUSR2"].into_iter().enumerate() {
            let minimum = if i == 1 { 2 } else { 1 };
            if sent[i] > 0 && logged[i] < minimum {
                self.fail(format!("{phase}: {name} sent {} times, never logged", sent[i]));
            }
        }
        self.check_tally(phase, &tally);
        self.compare_accounts(phase, &tally, server.as_ref());
        let zombies = main.monitor.take_peaks().zombies;
        self.row(Row { phase: phase.to_owned(), tally, server, zombies, probe: None, duration });
    }

    /// The end of the main server: its footprint once idle, then SIGTERM.
    fn retire_main(&mut self, main: Main) {
        let Main { mut server, monitor, before, fds_by_phase, .. } = main;
        let pid = server.pid();
        self.note(format!(
            "main server: parent descriptors after each phase: {}",
            fds_by_phase.join(", ")
        ));
        let after = self.footprint_after(pid, &before, &format!("pid {pid}"));
        println!("==> SIGTERM to the main server");
        let status = server.terminate(EXIT_BOUND);
        unwatch(pid);
        match server.wait_for_log(&["all children reaped; exiting"], 1, Duration::ZERO) {
            Ok(lines) => {
                let line = &lines[0];
                let summary = line.split_once("exiting: ").map_or(line.as_str(), |(_, s)| s);
                self.note(format!("main server's last line: {summary}"));
            }
            Err(_) => self.fail("main server: no 'all children reaped; exiting' line".to_owned()),
        }
        self.conclude("main server (phases 1, 2, 4, 6)", before, after, status, monitor.stop());
    }

    /// The parent's footprint once idle (see [`Footprint::settled`]), noting
    /// descriptors it held only for a moment.
    fn footprint_after(
        &mut self,
        pid: i32,
        before: &Footprint,
        label: &str,
    ) -> Result<Footprint, String> {
        let (after, extra) = Footprint::settled(pid, before, self.channels_per_child())?;
        if !extra.is_empty() {
            self.note(format!(
                "{label}: the idle parent held {} extra descriptor(s) for a moment: {}",
                extra.len(),
                extra.join(", ")
            ));
        }
        Ok(after)
    }

    /// The parent's footprint now (see [`Footprint::of`]).
    fn footprint(&self, pid: i32) -> Result<Footprint, String> {
        Footprint::of(pid, self.channels_per_child())
    }

    /// Descriptors the parent holds per live child: a pool member's
    /// channel, in pool mode; none in fork mode.
    fn channels_per_child(&self) -> usize {
        usize::from(self.pool.is_some())
    }

    /// Once every connection is closed: waits until no child is left (fork
    /// mode) or only idle pool members, at most twice the spares (pool mode),
    /// and none is a zombie; fails the phase otherwise.
    fn wait_until_idle(&mut self, pid: i32, phase: &str) {
        let most = self.pool.map_or(0, Pool::idle_ceiling);
        let (mut live, mut zombies) = (0, 0);
        let idle = wait_until(TIMEOUT, &format!("at most {most} live children, no zombie"), || {
            let children = procfs::children_of(pid);
            zombies = children.iter().filter(|c| c.is_zombie()).count();
            live = children.len() - zombies;
            (live <= most && zombies == 0).then_some(())
        });
        if let Err(e) = idle {
            self.fail(format!(
                "{phase}: children left after every connection closed: {e}; last seen: {live} \
                 live, {zombies} zombie(s)"
            ));
        }
    }

    /// Checks a server's end: exit 0 on SIGTERM, no descriptor growth in the
    /// parent, no zombie that outlived a reap cycle; records its footprints.
    fn conclude(
        &mut self,
        name: &str,
        before: Footprint,
        after: Result<Footprint, String>,
        status: Result<ExitStatus, String>,
        watch: Watch,
    ) {
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => self.fail(format!("{name}: exited with {status} on SIGTERM")),
            Err(e) => self.fail(format!("{name}: SIGTERM: {e}")),
        }
        match after {
            Ok(after) => {
                if after.fds > before.fds {
                    self.fail(format!(
                        "{name}: the parent holds {} descriptors once idle, {} before the load; \
                         new: {}",
                        after.fds,
                        before.fds,
                        after.beyond(&before).join(", ")
                    ));
                }
                self.footprints.push(Footprints { server: name.to_owned(), before, after });
            }
            Err(e) => self.fail(format!("{name}: {e}")),
        }
        for zombie in &watch.lingering {
            self.fail(format!("{name}: {zombie} (outlived a reap cycle)"));
        }
        self.note(format!("{name}: {} samples of its process tree", watch.samples));
    }

    /// Prints the report, writes it to `target/stress.md` (pool mode:
    /// `target/stress-prefork.md`, or `target/stress-prefork-parent.md` with
    /// `--parent-accepts`); true if it passed.
    fn finish(self, elapsed: Duration) -> bool {
        let verdict = if self.failures.is_empty() { "PASS" } else { "FAIL" };
        let mut text = format!(
            "# cargo xtask stress{}{}\n\n{} on {} CPU(s); seed {:#x} (STRESS_SEED replays it); \
             {:.0} s in all. {verdict}.\n\n",
            if self.scale.name == "quick" { " --quick" } else { "" },
            self.mode_args.iter().map(|arg| format!(" {arg}")).collect::<String>(),
            self.binary,
            std::thread::available_parallelism().map_or(0, usize::from),
            self.seed,
            elapsed.as_secs_f64()
        );
        text.push_str(&report::table(&self.rows));
        text.push_str(
            "\nserved: every byte echoed and verified, then closed as planned; expected resets: \
             reset on purpose (SO_LINGER 0) after their part was verified; served + resets + \
             errors = connections. max zombies: most at once in 50 ms samples. server: its own \
             counters over the phase (SIGUSR1).\n\n",
        );
        text.push_str(&report::footprints(&self.footprints));
        text.push('\n');
        for note in &self.notes {
            text.push_str(&format!("- {note}\n"));
        }
        if !self.failures.is_empty() {
            text.push_str("\n## Failures\n\n");
            for failure in &self.failures {
                text.push_str(&format!("- {failure}\n"));
            }
        }
        println!("\n{text}");
        let name = match self.pool {
            Some(pool) if pool.parent_accepts => "stress-prefork-parent.md",
            Some(_) => "stress-prefork.md",
            None => "stress.md",
        };
        let path = integration_tests::workspace_root().join("target").join(name);
        let written = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(&path, &text));
        match written {
            Ok(()) => println!("written to {}", path.display()),
            Err(e) => eprintln!("stress: cannot write {}: {e}", path.display()),
        }
        self.failures.is_empty()
    }
}

/// Asks the server for its counters (SIGUSR1) and reads the line it logs.
/// Called once every child is reaped: a line that still shows an active
/// child came from an earlier signal, and is asked for again.
fn usr1_counters(server: &Server) -> Result<Counters, String> {
    for _ in 0..5 {
        let before = log_count(server, "counters: accepted ");
        server.signal(Signal::SIGUSR1)?;
        let lines = server.wait_for_log(&["counters: accepted "], before + 1, TIMEOUT)?;
        let last = lines.last().and_then(|line| Counters::parse(line));
        match last {
            Some(counters) if counters.get("active") == 0 => return Ok(counters),
            Some(_) => {}
            None => return Err(format!("unreadable counters line: {:?}", lines.last())),
        }
    }
    Err("every counters line still shows an active child".to_owned())
}

/// How many lines of the server's log contain `needle`.
fn log_count(server: &Server, needle: &str) -> usize {
    server.log().iter().filter(|line| line.contains(needle)).count()
}

/// The kernel's count of handshakes dropped on a full accept queue in this
/// network namespace (`ListenOverflows` in `/proc/net/netstat`).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let at = names.split_whitespace().position(|name| name == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// An error message cut to a readable length (some carry a whole log).
fn shorten(message: &str) -> String {
    const MAX: usize = 400;
    match message.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

/// Raises this process's soft limit on open files to the hard limit (the
/// held phase needs a descriptor per connection); returns the old soft
/// limit and the hard one.
fn raise_nofile() -> Result<(u64, u64), String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))?;
    }
    Ok((soft, hard))
}
