//! The servers the bench compares, as data, and the processes it starts:
//! building `echo-server`, compiling the C programs of `xtask/reference/`,
//! starting each server on a loopback port and learning that port, stopping
//! every process by pid, and a watchdog for a run that hangs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::process::Running;
use integration_tests::{procfs, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Workload;

use crate::watchdog::{unwatch, watch};

/// The name of the server every ratio is taken against.
pub(super) const REFERENCE: &str = "C reference";

/// How a server is found and started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Program {
    /// The `echo-server` release build, started with [`OURS_ARGS`] before
    /// the spec's own arguments; it logs `listening on ADDR:PORT`.
    Ours,
    /// A C program of `xtask/reference/` (the file's stem), compiled by the
    /// bench; it binds 127.0.0.1 port 0 and prints the port on stdout.
    Reference(&'static str),
    /// A program found on `PATH`, given a free port through `{port}`; ready
    /// once it accepts a connection. Its row says "not installed" without it.
    Installed(&'static str),
}

/// One server of the comparison.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec {
    /// Its column's name.
    pub(super) name: &'static str,
    /// What runs.
    pub(super) program: Program,
    /// Its arguments: `{port}` is replaced with a free port and `{children}`
    /// with the held count plus a margin (a concurrency limit that never
    /// binds).
    pub(super) args: &'static [&'static str],
    /// The workloads it takes part in.
    pub(super) workloads: &'static [Workload],
    /// How many idle children it may keep once every client has left (a
    /// pre-forked pool's spares); 0 for a server that forks per connection.
    pub(super) idle: usize,
    /// Each short connection starts with a PROXY v1 header, as from a
    /// balancer.
    pub(super) proxy: bool,
    /// Part of `--quick` runs too.
    pub(super) quick: bool,
}

/// What `echo-server` is always given: loopback port 0 (the port is read
/// from its `listening on` line), warnings only (`-q`, so logging costs
/// little), room for every held connection, and the default idle timeout
/// spelled out: 300 s, far longer than any connection of the bench lives,
/// so it never fires (and a change of default cannot change what is measured).
const OURS_ARGS: &[&str] =
    &["0", "--bind", "127.0.0.1", "-q", "--max-children", "{children}", "--idle-timeout", "300"];

/// A server of the comparison: every workload, no idle children, no PROXY
/// header, full runs only.
const fn spec(name: &'static str, program: Program, args: &'static [&'static str]) -> Spec {
    Spec { name, program, args, workloads: Workload::ALL, idle: 0, proxy: false, quick: false }
}

/// `echo-server` in a mode: its column's name and the mode's arguments; in
/// quick runs too.
const fn ours(name: &'static str, args: &'static [&'static str]) -> Spec {
    Spec { quick: true, ..spec(name, Program::Ours, args) }
}

/// `echo-server` in pool mode, which keeps up to `idle` children waiting.
const fn pooled(name: &'static str, args: &'static [&'static str], idle: usize) -> Spec {
    Spec { idle, ..ours(name, args) }
}

/// Every server of the comparison, in column order. A mode of ours is one
/// more line, for instance `ours("ours --prefork 16", &["--prefork", "16"])`.
pub(super) const SERVERS: &[Spec] = &[
    ours("ours", &[]),
    // Pool mode: single-use children forked ahead, then reused ones.
    // (Single-use children never come back: the spares are all that stay. Reused
    // ones do, up to twice the spares until the pool trims them.)
    pooled("ours --prefork 16", &["--prefork", "16"], 16),
    pooled("ours --prefork 16 -c 0", &["--prefork", "16", "--connections-per-child", "0"], 32),
    // What reading a balancer's PROXY header costs (short connections only).
    Spec {
        proxy: true,
        quick: false,
        workloads: &[Workload::Connrate, Workload::Latency],
        ..ours("ours + PROXY v1", &["--proxy-protocol", "127.0.0.1/32"])
    },
    Spec { quick: true, ..spec(REFERENCE, Program::Reference("echo"), &[]) },
    // The listen backlog is 5 unless set: 128, as for the others. `-t`: after
    // the client's EOF socat waits only 0.5 s (its default) for the echo
    // still in flight and then closes, which cut bulk echoes short.
    spec(
        "socat",
        Program::Installed("socat"),
        &["-t", "30", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=128", "PIPE"],
    ),
    // Exec mode against what it replaces, tcpserver running the same cat.
    Spec { quick: false, ..ours("ours -- cat", &["--", "cat"]) },
    // No DNS or ident lookups (-R -H -l 0): they would measure the resolver.
    // Its backlog (20) and concurrency limit (40) raised.
    spec(
        "tcpserver + cat",
        Program::Installed("tcpserver"),
        &["-R", "-H", "-l", "0", "-b", "128", "-c", "{children}", "127.0.0.1", "{port}", "cat"],
    ),
    Spec {
        workloads: &[Workload::Connrate, Workload::Latency],
        ..spec("no-fork C (limit)", Program::Reference("nofork"), &[])
    },
];

/// The C programs of `xtask/reference/` the bench compiles.
const C_PROGRAMS: &[&str] = &["echo", "nofork", "forkrate"];

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub(super) struct Binaries {
    /// The `echo-server` release build.
    pub(super) ours: PathBuf,
    /// The directory of the compiled C programs (`target/bench`).
    pub(super) reference: PathBuf,
}

impl Binaries {
    /// Builds `echo-server` with `cargo build --release -p server` through
    /// `$CARGO` (whatever profile xtask itself runs in, the server measured
    /// is always the release build), and compiles each C program with
    /// `cc -O2` into `TARGET/bench/`.
    ///
    /// # Errors
    /// When a build fails, or `cc` is not on `PATH`.
    pub(super) fn prepare(target: &Path) -> Result<Self, String> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(integration_tests::workspace_root())
            .args(["build", "--release", "--quiet", "--package", "server", "--target-dir"])
            .arg(target)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build --release --package server failed: {status}"));
        }
        let ours = target.join("release").join("echo-server");
        if !ours.is_file() {
            return Err(format!("{} was not built", ours.display()));
        }
        let cc = which("cc").ok_or(
            "cc not found on PATH: the bench compiles its C reference servers with `cc -O2`; \
             install a C compiler (for instance `apt-get install gcc`)",
        )?;
        let reference = target.join("bench");
        std::fs::create_dir_all(&reference)
            .map_err(|e| format!("cannot create {}: {e}", reference.display()))?;
        let sources = integration_tests::workspace_root().join("xtask").join("reference");
        for name in C_PROGRAMS {
            let source = sources.join(format!("{name}.c"));
            let output = Command::new(&cc)
                .args(["-O2", "-Wall", "-o"])
                .arg(reference.join(name))
                .arg(&source)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", cc.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "cc -O2 {} failed ({}): {}",
                    source.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(Self { ours, reference })
    }

    /// The path of the compiled C program `name`.
    pub(super) fn c_program(&self, name: &str) -> PathBuf {
        self.reference.join(name)
    }

    /// The program `spec` runs; `None` when it is not installed.
    pub(super) fn path_of(&self, program: Program) -> Option<PathBuf> {
        match program {
            Program::Ours => Some(self.ours.clone()),
            Program::Reference(name) => Some(self.c_program(name)),
            Program::Installed(name) => which(name),
        }
    }
}

/// The first executable file called `name` in a directory of `PATH`.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A loopback port that was free a moment ago: bound with port 0, read,
/// and released, for a program that must be told its port.
///
/// # Errors
/// When no port can be bound.
pub(super) fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("getsockname: {e}"))
}

/// How long a server may take to be ready.
const STARTUP: Duration = Duration::from_secs(10);

/// How to tell that a started program is ready, and where it listens.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ready {
    /// It logs `listening on ADDR:PORT` on stderr.
    ListeningLine,
    /// It prints its port, alone on the first line, on stdout.
    PortLine,
    /// It accepts connections on 127.0.0.1 at this port.
    Accepts(u16),
    /// It prints this on stdout once listening on 127.0.0.1 at this port.
    Says(&'static str, u16),
}

impl Ready {
    /// The address, if `process` is ready.
    fn probe(self, process: &Running) -> Option<SocketAddr> {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        match self {
            Self::ListeningLine => process.stderr().iter().find_map(|line| {
                let (_, rest) = line.split_once("listening on ")?;
                rest.split_whitespace().next()?.parse().ok()
            }),
            Self::PortLine => {
                let stdout = process.stdout();
                let line = std::str::from_utf8(&stdout).ok()?.split_once('\n')?.0;
                line.trim().parse().ok().map(loopback)
            }
            Self::Accepts(port) => {
                let addr = loopback(port);
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok().map(|_| addr)
            }
            Self::Says(needle, port) => {
                String::from_utf8_lossy(&process.stdout()).contains(needle).then(|| loopback(port))
            }
        }
    }
}

/// A started server: its process, where it listens, and the command line.
/// Dropping it kills its children by pid, then the server (SIGTERM, then
/// SIGKILL after 5 s).
#[derive(Debug)]
pub(super) struct Started {
    process: Running,
    addr: SocketAddr,
    command: String,
}

impl Started {
    /// The server's pid.
    pub(super) fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Where it listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The command line it was started with.
    pub(super) fn command(&self) -> &str {
        &self.command
    }

    /// Waits, for at most `timeout`, until the server has no more than
    /// `idle` children left (its pool's spares), zombies included; the error
    /// says how many remain.
    ///
    /// # Errors
    /// When more remain after `timeout`.
    pub(super) fn settle(&self, idle: usize, timeout: Duration) -> Result<(), String> {
        let mut left = 0;
        wait_until(timeout, "no child left but the spares", || {
            left = procfs::children_of(self.pid()).len();
            (left <= idle).then_some(())
        })
        .map_err(|_| format!("{left} children still there {timeout:?} after the last close"))
    }

    /// Whether the server process has exited (it is reaped then).
    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_status()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let pid = self.pid();
        if self.process.try_status().is_none() {
            for child in procfs::children_of(pid) {
                let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
            }
            let _ = self.process.signal(Signal::SIGTERM);
            let _ = self.process.wait(Duration::from_secs(5));
        }
        // `Running`'s own drop kills the server if it still runs.
        unwatch(pid);
    }
}

/// Starts `spec`'s server from `binaries`, with `{children}` = `children`.
/// In the bench's process group (not one of its own), so that a Ctrl-C at
/// the terminal reaches every server and its children too.
///
/// # Errors
/// When it is not installed, cannot be started, or is not ready in time.
pub(super) fn start(spec: &Spec, binaries: &Binaries, children: usize) -> Result<Started, String> {
    let path =
        binaries.path_of(spec.program).ok_or_else(|| format!("{} not installed", spec.name))?;
    let port = match spec.program {
        Program::Installed(_) => free_port()?,
        Program::Ours | Program::Reference(_) => 0,
    };
    let base: &[&str] = if spec.program == Program::Ours { OURS_ARGS } else { &[] };
    let args: Vec<String> = base
        .iter()
        .chain(spec.args)
        .map(|arg| {
            arg.replace("{port}", &port.to_string()).replace("{children}", &children.to_string())
        })
        .collect();
    let ready = match spec.program {
        Program::Ours => Ready::ListeningLine,
        Program::Reference(_) => Ready::PortLine,
        Program::Installed(_) => Ready::Accepts(port),
    };
    launch(&path, &args, ready)
}

/// Spawns `path ARGS…` and waits until it is `ready`.
///
/// # Errors
/// When it cannot be started, exits, or is not ready within 10 s.
pub(super) fn launch(path: &Path, args: &[String], ready: Ready) -> Result<Started, String> {
    let mut command = Command::new(path);
    command.args(args).env_remove("RUST_LOG");
    let process = Running::spawn(command)?;
    watch(process.pid());
    let shown = std::iter::once(path.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    // From here on, dropping `started` stops the process.
    let mut started =
        Started { process, addr: SocketAddr::from(([127, 0, 0, 1], 0)), command: shown };
    let what = format!("`{}` to be ready", started.command);
    let found = wait_until(STARTUP, &what, || {
        if let Some(status) = started.process.try_status() {
            let output = started.process.stderr().join("\n");
            return Some(Err(format!("`{}` exited with {status}: {output}", started.command)));
        }
        ready.probe(&started.process).map(Ok)
    });
    started.addr = found.and_then(|result| result)?;
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_in_the_list_and_names_are_unique() {
        assert!(SERVERS.iter().any(|s| s.name == REFERENCE));
        let mut names: Vec<&str> = SERVERS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVERS.len());
        for spec in SERVERS {
            if let Program::Installed(_) = spec.program {
                assert!(spec.args.iter().any(|a| a.contains("{port}")), "{}", spec.name);
            }
        }
    }

    #[test]
    fn which_finds_programs_on_the_path() {
        assert!(which("sh").is_some());
        assert_eq!(which("no-such-program-here"), None);
    }
}
