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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use client::Client;
pub use process::{Finished, run_to_end};
pub use server::Server;

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

/// Runs `cargo build ARGS…` with the profile and target directory of the
/// running executable; returns the profile's directory (`target/<profile>`).
fn build(args: &[&str]) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    // A test runs from target/<profile>/deps, xtask from target/<profile>.
    let mut dir = exe.parent().ok_or("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
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
