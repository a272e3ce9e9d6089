//! The end-to-end harness shared by the `it` test target and `cargo xtask e2e`:
//! build the real binaries (and forkserve's examples), start `echo-server` (or
//! any program that logs `listening on ADDR:PORT`) on an ephemeral loopback
//! port, drive `echo-client` processes, and inspect the server's process tree
//! in `/proc`.
//!
//! Every wait is bounded in time, and every process started here is stopped
//! by pid when its handle is dropped. Functions return `Result<_, String>` so
//! that `xtask` can print a failed step and go on, and tests can `unwrap`.

#![allow(clippy::print_stderr)]

pub mod client;
pub mod process;
pub mod procfs;
pub mod server;
pub mod stalled;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use client::Client;
pub use process::{Finished, run_to_end};
pub use server::Server;
pub use stalled::Stalled;

/// The default bound on any single wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `probe` every few milliseconds until it returns `Some`, for at most
/// `timeout`; the error names `what` was awaited.
///
/// # Errors
/// `"timed out after …: {what}"` when the time is up.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?}: {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The path of a workspace binary (`echo-server`, `echo-client`), built once
/// per process through `$CARGO` with the profile of the running executable,
/// so a test never runs a stale binary.
///
/// # Errors
/// When the build fails or the binary is not where cargo puts it.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| build(&["--package", "server", "--package", "client"]));
    built(dir.clone()?.join(name))
}

/// The path of an example of the forkserve library (`daytime`, `uppercase`):
/// `target/<profile>/examples/<name>`. Every example is built once per
/// process, as [`binary`] builds the binaries.
///
/// # Errors
/// When the build fails or the example is not where cargo puts it.
pub fn example(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| build(&["--package", "forkserve", "--examples"]));
    built(dir.clone()?.join("examples").join(name))
}

/// `path`, if the build left a file there.
fn built(path: PathBuf) -> Result<PathBuf, String> {
    if path.is_file() { Ok(path) } else { Err(format!("{} was not built", path.display())) }
}

/// The profile directory (`target/<profile>`) of the running executable: a
/// test runs from `target/<profile>/deps`, xtask from `target/<profile>`.
fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let mut dir = exe.parent().ok_or("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Runs `cargo build ARGS…` with the profile and target directory of the
/// running executable; returns the profile's directory (`target/<profile>`).
fn build(args: &[&str]) -> Result<PathBuf, String> {
    let dir = profile_dir()?;
    let profile = dir.file_name().and_then(|p| p.to_str()).ok_or("no profile directory")?;
    let target_dir = dir.parent().ok_or("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", if profile == "debug" { "dev" } else { profile }])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build {} failed: {status}", args.join(" ")));
    }
    Ok(dir)
}

/// The workspace's root directory.
#[must_use]
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."))
}

/// Whether this machine can bind the IPv6 loopback address.
#[must_use]
pub fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// The file where [`skip`] records skipped tests: `skips.txt` in the target
/// directory of the running executable (`target/skips.txt`), shared by the
/// test binaries and xtask, which clears it before its test step and reports
/// it after.
///
/// # Errors
/// When the running executable's location is unknown.
pub fn skips_file() -> Result<PathBuf, String> {
    let profile = profile_dir()?;
    Ok(profile.parent().ok_or("no target directory")?.join("skips.txt"))
}

/// Says that `test` cannot run here, and why, where it is seen: a
/// `SKIP <test>: <reason>` line written straight to standard error (not
/// captured by the test harness, so it shows among the test results), and
/// the same line appended to [`skips_file`], which `cargo xtask ci` reports
/// (and fails on, under `CI=true`). The caller then returns.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIP {test}: {}\n", reason.replace('\n', " "));
    // Not eprintln!: libtest captures that, and hides it when the test passes.
    let _ = std::io::stderr().write_all(line.as_bytes());
    let recorded = skips_file().and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            // One write of one line: concurrent tests' lines never interleave.
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .map_err(|e| format!("cannot record the skip in {}: {e}", path.display()))
    });
    if let Err(err) = recorded {
        let _ = std::io::stderr().write_all(format!("{err}\n").as_bytes());
    }
}

/// The name of the running test: libtest names each test's thread after it
/// (`limits::at_the_child_limit_no_listener_is_starved`).
#[must_use]
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("unnamed test").to_owned()
}

/// The tests recorded as skipped in [`skips_file`], one `SKIP …` line each,
/// without repeats; empty when nothing was skipped (or nothing recorded).
#[must_use]
pub fn recorded_skips() -> Vec<String> {
    let text = skips_file().and_then(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()));
    let mut lines: Vec<String> = text.unwrap_or_default().lines().map(str::to_owned).collect();
    lines.sort();
    lines.dedup();
    lines
}

/// A copy of a binary in a fresh directory of its own under `/tmp`, both
/// readable and executable by everyone (mode 0755), so that a process switched
/// to another user (`nobody`) can run it wherever the checkout lives, even in
/// a home directory only its owner may enter. Removed when dropped.
#[derive(Debug)]
pub struct SharedCopy {
    dir: PathBuf,
    path: PathBuf,
}

impl SharedCopy {
    /// Copies `binary` into a new directory under `/tmp`.
    ///
    /// # Errors
    /// When the directory cannot be made or the copy fails.
    pub fn of(binary: &Path) -> Result<Self, String> {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let name = binary.file_name().ok_or("the binary has no file name")?;
        let dir = PathBuf::from(format!(
            "/tmp/integration-tests-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        // create_dir, not create_dir_all: a directory someone else made first
        // (with other permissions) is refused, not reused.
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // From here on, the drop removes the directory whatever fails.
        let copy = Self { path: dir.join(name), dir };
        let everyone = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&copy.dir, everyone.clone())
            .and_then(|()| std::fs::copy(binary, &copy.path).map(drop))
            .and_then(|()| std::fs::set_permissions(&copy.path, everyone))
            .map_err(|e| {
                format!("cannot copy {} to {}: {e}", binary.display(), copy.dir.display())
            })?;
        Ok(copy)
    }

    /// The copy's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SharedCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
