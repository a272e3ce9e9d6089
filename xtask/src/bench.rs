//! `cargo xtask bench [--quick]`: our `echo-server` against a C textbook
//! fork-per-connection server (`xtask/reference/echo.c`) and, when
//! installed, `socat` and `tcpserver`, on loopback, with a table of medians.
//!
//! Workloads, each verifying every byte that comes back:
//! - **connrate**: 8 workers, each connecting, sending 64 bytes, reading
//!   them back, shutting down its side and waiting for the server's close,
//!   again and again; connections a second, the p50/p99 of that whole
//!   exchange, and the CPU the server's whole process tree spent per
//!   connection (`/proc`: its own time, its reaped children's and its live
//!   children's; steadier than the rate on a noisy machine);
//! - **latency**: the same with one client at a time;
//! - **pingpong**: one connection with `TCP_NODELAY`, 64-byte round trips;
//! - **bulk**: 1 and 4 connections, each streaming M MiB from a writer
//!   thread while a reader thread checks the echo; MiB/s of echoed payload;
//! - **hold**: C connections open at once; each child's RSS and PSS from
//!   `/proc/PID/smaps_rollup` (averaged), and the parent's RSS.
//!
//! The servers run side by side for the whole bench; each workload is run
//! on each server in turn (A B C, A B C, … for at least three rounds) and
//! the table shows medians over the rounds, with ratios against the C
//! reference: the machine is noisy, so only ratios within one run count.
//! Limits come in the same report: a no-fork accept/echo/close C server
//! (connrate and latency), fork + `_exit` + `waitpid` alone
//! (`xtask/reference/forkrate.c`), and `iperf3` on loopback when installed.
//!
//! The `echo-server` measured is always the release build, made with
//! `cargo build --release -p server` through `$CARGO` whatever profile xtask
//! itself runs in; it runs with `-q` (warnings only: logging costs little),
//! a child limit above the held count and the default idle timeout spelled
//! out. The C programs are compiled with `cc -O2` into `target/bench/`. The
//! load generator is this process, always a release build: `cargo xtask
//! bench` (a debug build) reruns itself with `cargo run --release -p xtask`,
//! since on two shared cores a debug load generator takes CPU the servers
//! would have had (`XTASK_BENCH_DEBUG=1` keeps the debug build; the report
//! says which ran).
//!
//! Bounded: every socket operation by a timeout, every loop by a count and
//! a deadline, the whole run by a watchdog; every process started is killed
//! by pid at the end or on failure. No figure is ever asserted: the bench
//! fails only when a server fails to start or a byte is lost or corrupted.

mod cpu;
mod limits;
mod load;
mod memory;
mod report;
mod servers;
mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::json;

use load::Pattern;
use report::{Column, Limit, Metric, Status, Unit, number};
use servers::{Binaries, REFERENCE, SERVERS, Spec, Started};

use crate::watchdog::Watchdog;
use stats::Percentiles;

/// The usage line.
pub(crate) const USAGE: &str = "usage: cargo xtask bench [--quick]";

/// A workload of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Short connections from [`WORKERS`] threads.
    Connrate,
    /// Short connections, one client at a time.
    Latency,
    /// Round trips on one connection.
    Pingpong,
    /// Streaming over one connection.
    Bulk1,
    /// Streaming over [`BULK_CONNECTIONS`] connections.
    Bulk4,
    /// Connections held open, and the memory they cost.
    Hold,
}

impl Workload {
    /// Every workload, in the order each round runs them.
    const ALL: &'static [Self] =
        &[Self::Connrate, Self::Latency, Self::Pingpong, Self::Bulk1, Self::Bulk4, Self::Hold];

    /// Its name in progress lines.
    fn name(self) -> &'static str {
        match self {
            Self::Connrate => "connrate",
            Self::Latency => "latency",
            Self::Pingpong => "pingpong",
            Self::Bulk1 => "bulk x1",
            Self::Bulk4 => "bulk x4",
            Self::Hold => "hold",
        }
    }

    /// The figures it yields.
    fn metrics(self) -> &'static [Metric] {
        match self {
            Self::Connrate => {
                &[Metric::ConnRate, Metric::ConnP50, Metric::ConnP99, Metric::ConnCpu]
            }
            Self::Latency => &[Metric::LatencyP50, Metric::LatencyP99],
            Self::Pingpong => &[Metric::PingRate, Metric::PingP50, Metric::PingP99],
            Self::Bulk1 => &[Metric::Bulk1],
            Self::Bulk4 => &[Metric::Bulk4],
            Self::Hold => &[Metric::ChildPss, Metric::ChildRss, Metric::ParentRss],
        }
    }
}

/// How much of each workload to run.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// `full` or `quick`.
    name: &'static str,
    /// Rounds (each workload on each server once per round).
    rounds: usize,
    /// How long each connrate run lasts.
    connrate: Duration,
    /// How long each latency run lasts.
    latency: Duration,
    /// How long each ping-pong run lasts.
    pingpong: Duration,
    /// MiB streamed by the single bulk connection.
    bulk1_mib: u64,
    /// MiB streamed by each of the [`BULK_CONNECTIONS`] bulk connections.
    bulk4_mib: u64,
    /// Connections held at once.
    hold: usize,
    /// How long each forkrate run lasts.
    forkrate: Duration,
    /// Seconds of each iperf3 run.
    iperf_seconds: u32,
    /// The whole run's bound: beyond it, it is hung.
    limit: Duration,
}

/// The default run: under ten minutes on two cores, build included.
const FULL: Scale = Scale {
    name: "full",
    rounds: 3,
    connrate: Duration::from_secs(2),
    latency: Duration::from_millis(1500),
    pingpong: Duration::from_millis(1500),
    bulk1_mib: 512,
    bulk4_mib: 128,
    hold: 1000,
    forkrate: Duration::from_secs(1),
    iperf_seconds: 2,
    limit: Duration::from_secs(15 * 60),
};

/// `--quick`: under two minutes on two cores, once built; our modes and the
/// C reference only (the servers marked `quick`).
const QUICK: Scale = Scale {
    name: "quick",
    rounds: 3,
    connrate: Duration::from_millis(500),
    latency: Duration::from_millis(400),
    pingpong: Duration::from_millis(400),
    bulk1_mib: 128,
    bulk4_mib: 32,
    hold: 200,
    forkrate: Duration::from_millis(300),
    iperf_seconds: 1,
    limit: Duration::from_secs(4 * 60),
};

// Every run has at least three rounds (medians need them), and --quick is smaller.
const _: () = assert!(QUICK.rounds >= 3 && FULL.rounds >= 3 && QUICK.hold < FULL.hold);

/// Concurrent clients of connrate.
const WORKERS: usize = 8;
/// Connections of the second bulk workload.
const BULK_CONNECTIONS: usize = 4;
/// Threads opening and closing the held connections.
const HOLD_THREADS: usize = 8;
/// The most exchanges of one connrate, latency or ping-pong run, whatever
/// its duration.
const MAX_EXCHANGES: usize = 2_000_000;
/// Verified short connections before each connrate, latency and ping-pong
/// run, not counted: the server's pages are warm when timing starts.
const WARMUP: usize = 20;
/// How long a server may take to reap every child after a workload.
const SETTLE: Duration = Duration::from_secs(20);
/// The bound on one bulk run: beyond it, the server is taken to be hung.
const BULK_DEADLINE: Duration = Duration::from_secs(120);
/// MiB the parent of the second forkrate run touches before forking.
const TOUCHED_MIB: u32 = 20;
/// The child limit given to the servers: the held count plus this.
const CHILDREN_MARGIN: usize = 100;

/// Runs the bench with `args` (`--quick` or nothing); true unless a server
/// failed to start or a byte was lost or corrupted.
pub(crate) fn run(args: &[String]) -> bool {
    // The load generator shares two cores with the servers: a debug build of
    // it takes CPU they would have had. So a debug xtask (`cargo xtask`) hands
    // the run to a release build of itself.
    if cfg!(debug_assertions) && std::env::var_os(DEBUG_LOAD).is_none() {
        return run_in_release(args);
    }
    let scale = match args {
        [] => FULL,
        [flag] if flag == "--quick" => QUICK,
        _ => {
            eprintln!("{USAGE}");
            return false;
        }
    };
    let _watchdog = Watchdog::start("bench", scale.limit);
    let started = Instant::now();
    let mut bench = Bench::new(scale);
    let outcome = bench.run_all();
    if let Err(e) = outcome {
        bench.fail(format!("the bench stopped early: {e}"));
    }
    bench.finish(started.elapsed())
}

/// Set to keep the load generator a debug build (for working on the bench).
const DEBUG_LOAD: &str = "XTASK_BENCH_DEBUG";

/// `cargo run --release -p xtask -- bench ARGS`, through `$CARGO`.
fn run_in_release(args: &[String]) -> bool {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building the load generator in release mode ({DEBUG_LOAD}=1 skips this)");
    let status = std::process::Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "xtask", "--", "bench"])
        .args(args)
        .status();
    match status {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("bench: cannot run the release build: {e}");
            false
        }
    }
}

/// One run: its settings and what it found.
#[derive(Debug)]
struct Bench {
    scale: Scale,
    /// Seeds every payload.
    seed: u64,
    /// The target directory (`target/`): builds and reports go there.
    target: Option<PathBuf>,
    /// The servers of this run: every one of [`SERVERS`], or with
    /// `--quick` those marked for it.
    specs: Vec<&'static Spec>,
    /// One per server of `specs`, in order.
    columns: Vec<Column>,
    limits: Vec<Limit>,
    notes: Vec<String>,
    failures: Vec<String>,
}

impl Bench {
    /// A run at `scale`, seeded from the clock.
    fn new(scale: Scale) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            scale,
            seed: now.as_nanos() as u64 ^ u64::from(std::process::id()),
            target: None,
            specs: SERVERS.iter().filter(|spec| scale.name != QUICK.name || spec.quick).collect(),
            columns: Vec::new(),
            limits: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Records a failure (the bench will exit non-zero).
    fn fail(&mut self, what: String) {
        eprintln!("bench: FAIL: {what}");
        self.failures.push(what);
    }

    /// Records a note for the report.
    fn note(&mut self, what: String) {
        eprintln!("bench: note: {what}");
        self.notes.push(what);
    }

    /// Builds, starts every server, runs the rounds, measures the limits.
    fn run_all(&mut self) -> Result<(), String> {
        let (soft, hard) = raise_nofile()?;
        if soft < hard {
            self.note(format!("RLIMIT_NOFILE of the load generator raised from {soft} to {hard}"));
        }
        let target = target_dir()?;
        self.target = Some(target.clone());
        eprintln!("bench ({}): building echo-server (release) and the C programs", self.scale.name);
        let binaries = Binaries::prepare(&target)?;
        let mut running = self.start_servers(&binaries);
        let iperf = match limits::Iperf::start() {
            Ok(iperf) => iperf,
            Err(e) => {
                self.note(format!("iperf3 is installed but did not start: {e}"));
                None
            }
        };
        let pattern = Pattern::new(self.seed);
        let mut forks = [Vec::new(), Vec::new()];
        let mut iperfs = [Vec::new(), Vec::new()];
        for round in 1..=self.scale.rounds {
            eprintln!("bench: round {round}/{}", self.scale.rounds);
            for &workload in Workload::ALL {
                for (i, spec) in self.specs.clone().into_iter().enumerate() {
                    if !spec.workloads.contains(&workload) {
                        continue;
                    }
                    let Some(server) = running[i].as_ref() else { continue };
                    let seed = self.seed ^ ((round as u64) << 56);
                    match self.measure(workload, server, &pattern, seed, spec.proxy) {
                        Ok(figures) => {
                            let shown: Vec<String> = figures
                                .iter()
                                .map(|(m, v)| format!("{} {}", m.key(), number(*v)))
                                .collect();
                            eprintln!(
                                "  {:<9} {:<18} {}",
                                workload.name(),
                                spec.name,
                                shown.join(", ")
                            );
                            for (metric, value) in figures {
                                self.columns[i].values.entry(metric).or_default().push(value);
                            }
                            if let Err(e) = server.settle(spec.idle, SETTLE) {
                                let what = format!("{}: after {}: {e}", spec.name, workload.name());
                                self.note(what);
                            }
                        }
                        Err(e) => {
                            let why = format!("{} (round {round}): {e}", workload.name());
                            self.fail(format!("{}: {why}", spec.name));
                            self.columns[i].status = Status::Failed(why);
                            running[i] = None;
                        }
                    }
                }
            }
            self.limits_round(&binaries, iperf.as_ref(), &mut forks, &mut iperfs);
        }
        for (i, server) in running.iter_mut().enumerate() {
            if let Some(status) = server.as_mut().and_then(Started::exited) {
                let why = format!("exited during the run with {status}");
                self.fail(format!("{}: {why}", self.specs[i].name));
                self.columns[i].status = Status::Failed(why);
            }
        }
        drop(running);
        drop(iperf);
        self.limits = self.limit_rows(forks, iperfs);
        Ok(())
    }

    /// Starts every server of this run that is installed; fills
    /// [`Bench::columns`] and returns the running ones (`None` for the others).
    fn start_servers(&mut self, binaries: &Binaries) -> Vec<Option<Started>> {
        let children = self.scale.hold + CHILDREN_MARGIN;
        let mut running = Vec::new();
        for spec in self.specs.clone() {
            let mut column = Column {
                name: spec.name.to_owned(),
                command: String::new(),
                status: Status::Measured,
                metrics: spec.workloads.iter().flat_map(|w| w.metrics()).copied().collect(),
                values: Default::default(),
            };
            let started = if binaries.path_of(spec.program).is_none() {
                eprintln!("bench: {}: not installed", spec.name);
                column.status = Status::NotInstalled;
                None
            } else {
                match servers::start(spec, binaries, children) {
                    Ok(server) => {
                        eprintln!(
                            "bench: {}: listening on {} (pid {}): {}",
                            spec.name,
                            server.addr(),
                            server.pid(),
                            server.command()
                        );
                        column.command = server.command().to_owned();
                        Some(server)
                    }
                    Err(e) => {
                        self.fail(format!("{} failed to start: {e}", spec.name));
                        column.status = Status::Failed(format!("failed to start: {e}"));
                        None
                    }
                }
            };
            self.columns.push(column);
            running.push(started);
        }
        running
    }

    /// Runs `workload` once on `server`; returns its figures.
    fn measure(
        &self,
        workload: Workload,
        server: &Started,
        pattern: &Pattern,
        seed: u64,
        proxy: bool,
    ) -> Result<Vec<(Metric, f64)>, String> {
        let addr = server.addr();
        let scale = &self.scale;
        let warm_up =
            || load::short_connections(addr, 1, load::HANG, WARMUP, !seed, proxy).map(drop);
        match workload {
            Workload::Connrate => {
                warm_up()?;
                let (limit, max) = (scale.connrate, MAX_EXCHANGES);
                let cpu = || cpu::tree(server.pid()).ok_or("cannot read the server's CPU time");
                let before = cpu()?;
                let timed = load::short_connections(addr, WORKERS, limit, max, seed, proxy)?;
                let spent = cpu()?.saturating_sub(before);
                let rate = stats::rate(timed.count as f64, timed.elapsed);
                let p = Percentiles::of(timed.latencies);
                let per_connection = spent.as_secs_f64() * 1e6 / timed.count.max(1) as f64;
                Ok(vec![
                    (Metric::ConnRate, rate),
                    (Metric::ConnP50, p.micros(50)),
                    (Metric::ConnP99, p.micros(99)),
                    (Metric::ConnCpu, per_connection),
                ])
            }
            Workload::Latency => {
                warm_up()?;
                // One client at a time: its rate would only be 1 / latency.
                let (limit, max) = (scale.latency, MAX_EXCHANGES);
                let timed = load::short_connections(addr, 1, limit, max, seed, proxy)?;
                let p = Percentiles::of(timed.latencies);
                Ok(vec![(Metric::LatencyP50, p.micros(50)), (Metric::LatencyP99, p.micros(99))])
            }
            Workload::Pingpong => {
                warm_up()?;
                let timed = load::ping_pong(addr, scale.pingpong, MAX_EXCHANGES, seed)?;
                let rate = stats::rate(timed.count as f64, timed.elapsed);
                let p = Percentiles::of(timed.latencies);
                Ok(vec![
                    (Metric::PingRate, rate),
                    (Metric::PingP50, p.micros(50)),
                    (Metric::PingP99, p.micros(99)),
                ])
            }
            Workload::Bulk1 | Workload::Bulk4 => {
                let (connections, mib, metric) = if workload == Workload::Bulk1 {
                    (1, scale.bulk1_mib, Metric::Bulk1)
                } else {
                    (BULK_CONNECTIONS, scale.bulk4_mib, Metric::Bulk4)
                };
                let deadline = Instant::now() + BULK_DEADLINE;
                let moved = load::bulk(addr, connections, mib << 20, pattern, deadline)?;
                let mib_moved = moved.bytes as f64 / f64::from(1 << 20);
                Ok(vec![(metric, stats::rate(mib_moved, moved.elapsed))])
            }
            Workload::Hold => {
                let held = load::open_held(addr, scale.hold, HOLD_THREADS, seed)?;
                let memory = memory::held(server.pid(), scale.hold);
                // Released whatever the reading gave, and verified.
                load::release_held(held, HOLD_THREADS, seed)?;
                let memory = memory?;
                Ok(vec![
                    (Metric::ChildPss, memory.child_pss_kib),
                    (Metric::ChildRss, memory.child_rss_kib),
                    (Metric::ParentRss, memory.parent_rss_kib),
                ])
            }
        }
    }

    /// One round of the limits: forkrate with and without touched memory,
    /// iperf3 with 1 and [`BULK_CONNECTIONS`] streams.
    fn limits_round(
        &mut self,
        binaries: &Binaries,
        iperf: Option<&limits::Iperf>,
        forks: &mut [Vec<f64>; 2],
        iperfs: &mut [Vec<f64>; 2],
    ) {
        let forkrate = binaries.c_program("forkrate");
        for (values, mib) in forks.iter_mut().zip([0, TOUCHED_MIB]) {
            match limits::fork_rate(&forkrate, self.scale.forkrate, mib) {
                Ok(rate) => {
                    eprintln!(
                        "  {:<9} {:<18} {} /s",
                        "limit",
                        format!("forkrate {mib} MiB"),
                        number(rate)
                    );
                    values.push(rate);
                }
                Err(e) => self.note(format!("forkrate ({mib} MiB touched): {e}")),
            }
        }
        let Some(iperf) = iperf else { return };
        for (values, streams) in iperfs.iter_mut().zip([1, BULK_CONNECTIONS]) {
            match iperf.measure(streams, self.scale.iperf_seconds) {
                Ok(rate) => {
                    let name = format!("iperf3 -P {streams}");
                    eprintln!("  {:<9} {name:<18} {} MiB/s", "limit", number(rate));
                    values.push(rate);
                }
                Err(e) => self.note(format!("iperf3: {e}")),
            }
        }
    }

    /// The limits' rows, with their context from the reference's medians.
    fn limit_rows(&self, forks: [Vec<f64>; 2], iperfs: [Vec<f64>; 2]) -> Vec<Limit> {
        let reference = self.columns.iter().find(|c| c.name == REFERENCE);
        let base = |metric| reference.and_then(|c| c.median(metric));
        let versus = |value: Option<f64>, metric: Metric, what: &str| match (value, base(metric)) {
            (Some(v), Some(b)) if b > 0.0 => format!("{:.2}× the C reference's {what}", v / b),
            _ => String::new(),
        };
        let [untouched, touched] = forks;
        let untouched_median = stats::median(&untouched);
        let touched_context = match (stats::median(&touched), untouched_median) {
            (Some(t), Some(u)) if u > 0.0 => format!(
                "{}; {:.2}× the rate of an untouched parent",
                versus(Some(t), Metric::ConnRate, "connrate"),
                t / u
            ),
            _ => String::new(),
        };
        let mut rows = vec![
            Limit {
                name: "fork + _exit + waitpid, one child at a time (forkrate.c)".to_owned(),
                unit: Unit::PerSecond,
                missing: None,
                context: versus(untouched_median, Metric::ConnRate, "connrate"),
                values: untouched,
            },
            Limit {
                name: format!("the same, the parent having touched {TOUCHED_MIB} MiB"),
                unit: Unit::PerSecond,
                missing: None,
                context: touched_context,
                values: touched,
            },
        ];
        let missing = servers::which("iperf3").is_none().then(|| "not installed".to_owned());
        let [one, four] = iperfs;
        let bulk = |metric: Metric, connections: usize, mib: u64| {
            base(metric).map_or_else(String::new, |b| {
                format!(
                    "C reference bulk, {connections} × {mib} MiB: {} MiB/s (an echo carries each \
                     byte over loopback twice)",
                    number(b)
                )
            })
        };
        rows.push(Limit {
            name: "iperf3 on loopback, 1 stream (one way)".to_owned(),
            unit: Unit::MibPerSecond,
            missing: missing.clone(),
            context: bulk(Metric::Bulk1, 1, self.scale.bulk1_mib),
            values: one,
        });
        rows.push(Limit {
            name: format!("iperf3 on loopback, {BULK_CONNECTIONS} streams (one way)"),
            unit: Unit::MibPerSecond,
            missing,
            context: bulk(Metric::Bulk4, BULK_CONNECTIONS, self.scale.bulk4_mib),
            values: four,
        });
        rows
    }

    /// The Markdown report.
    fn document(&self, elapsed: Duration) -> String {
        let s = &self.scale;
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut text = format!("# `cargo xtask bench` ({})\n\n", s.name);
        text.push_str(&format!(
            "{cpus} CPUs, Linux {}, loopback; {} rounds, each workload run on each server in \
             turn, medians over the rounds; {:.0} s in all; load generator: a {} build of xtask.\n\n",
            kernel.trim(),
            s.rounds,
            elapsed.as_secs_f64(),
            if cfg!(debug_assertions) { "debug" } else { "release" },
        ));
        text.push_str(&format!(
            "Workloads (every echoed byte verified): connrate, {WORKERS} workers for {:.1} s, \
             each connecting, sending 64 B, reading them back, shutting down and waiting for \
             the server's close (the latency is that whole exchange; CPU per connection is the \
             user and system time of the server's process tree, from /proc, over the run); \
             latency, the same with one \
             client at a time for {:.1} s; pingpong, one TCP_NODELAY connection, 64 B round trips \
             for {:.1} s; bulk, 1 connection streaming {} MiB and {BULK_CONNECTIONS} streaming {} \
             MiB each, writer and reader concurrent; hold, {} connections open at once, memory \
             from /proc/PID/smaps_rollup averaged over the children.\n\n",
            s.connrate.as_secs_f64(),
            s.latency.as_secs_f64(),
            s.pingpong.as_secs_f64(),
            s.bulk1_mib,
            s.bulk4_mib,
            s.hold,
        ));
        text.push_str(&report::table(&self.columns, REFERENCE));
        text.push_str("\n## Limits\n\n");
        text.push_str(&report::limits_table(&self.limits));
        text.push_str("\n## Servers\n\n");
        for column in &self.columns {
            let how = match &column.status {
                Status::NotInstalled => "not installed".to_owned(),
                Status::Failed(why) if column.command.is_empty() => format!("failed: {why}"),
                Status::Failed(why) => format!("`{}`; failed: {why}", column.command),
                Status::Measured => format!("`{}`", column.command),
            };
            text.push_str(&format!("- {}: {how}\n", column.name));
        }
        for (title, lines) in [("Notes", &self.notes), ("Failures", &self.failures)] {
            if !lines.is_empty() {
                text.push_str(&format!("\n## {title}\n\n"));
                for line in lines {
                    text.push_str(&format!("- {line}\n"));
                }
            }
        }
        text
    }

    /// Prints the report, writes `target/bench.md` and `target/bench.json`;
    /// true if nothing failed.
    fn finish(mut self, elapsed: Duration) -> bool {
        // Stopped before any server was started: nothing to report, and the
        // last run's report is left alone.
        let target = self.target.clone().filter(|_| !self.columns.is_empty());
        if let Some(target) = target {
            let document = self.document(elapsed);
            println!("{document}");
            let s = &self.scale;
            let settings = vec![
                ("connrate_workers", json!(WORKERS)),
                ("connrate_seconds", json!(s.connrate.as_secs_f64())),
                ("latency_seconds", json!(s.latency.as_secs_f64())),
                ("pingpong_seconds", json!(s.pingpong.as_secs_f64())),
                ("message_bytes", json!(load::MESSAGE)),
                ("bulk1_mib", json!(s.bulk1_mib)),
                ("bulk4_connections", json!(BULK_CONNECTIONS)),
                ("bulk4_mib_each", json!(s.bulk4_mib)),
                ("hold", json!(s.hold)),
                ("load_generator", json!(if cfg!(debug_assertions) { "debug" } else { "release" })),
            ];
            let run = report::Run {
                scale: s.name,
                rounds: s.rounds,
                seconds: elapsed.as_secs_f64(),
                settings,
                columns: &self.columns,
                limits: &self.limits,
                notes: &self.notes,
                failures: &self.failures,
            };
            let json = format!("{:#}\n", report::json(&run));
            for (name, contents) in [("bench.md", document), ("bench.json", json)] {
                let path = target.join(name);
                match std::fs::write(&path, contents) {
                    Ok(()) => eprintln!("bench: wrote {}", path.display()),
                    Err(e) => self.fail(format!("cannot write {}: {e}", path.display())),
                }
            }
        }
        if self.failures.is_empty() {
            eprintln!("bench: done in {:.0} s", elapsed.as_secs_f64());
            true
        } else {
            eprintln!("bench: {} failure(s):", self.failures.len());
            for failure in &self.failures {
                eprintln!("  {failure}");
            }
            false
        }
    }
}

/// The target directory of the running xtask (`target/` beside
/// `target/<profile>/xtask`).
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let mut dir = exe.parent().ok_or("the executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.parent().map(PathBuf::from).ok_or_else(|| "no target directory".to_owned())
}

/// Raises this process's soft limit on open files to the hard one, for the
/// held connections; returns both limits as they were.
fn raise_nofile() -> Result<(u64, u64), String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))?;
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_comes_from_exactly_one_workload() {
        for metric in Metric::ALL {
            let sources = Workload::ALL.iter().filter(|w| w.metrics().contains(&metric)).count();
            assert_eq!(sources, 1, "{metric:?}");
        }
    }
}
