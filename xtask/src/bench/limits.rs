//! The limits measured beside the servers: how fast this machine forks,
//! exits and reaps with nothing else around (`xtask/reference/forkrate.c`),
//! and what TCP carries on loopback (`iperf3`, when installed).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::run_to_end;

use super::servers::{self, Ready, Started};

/// Runs `forkrate COUNT SECONDS MIB` (at most `count` forks or `seconds`,
/// the parent having touched `mib` MiB first); returns forks a second.
///
/// # Errors
/// When it fails or prints no rate.
pub(super) fn fork_rate(program: &Path, seconds: Duration, mib: u32) -> Result<f64, String> {
    let mut command = Command::new(program);
    command.args(["1000000", &format!("{:.3}", seconds.as_secs_f64()), &mib.to_string()]);
    let done = run_to_end(command, b"", seconds + Duration::from_secs(30))?;
    let stdout = String::from_utf8_lossy(&done.stdout);
    if !done.status.success() {
        return Err(format!("forkrate exited with {}: {}", done.status, done.stderr.join(" ")));
    }
    parse_fork_rate(&stdout).ok_or_else(|| format!("forkrate printed no rate: {stdout:?}"))
}

/// The rate in forkrate's line `forks N seconds S rate R`.
fn parse_fork_rate(line: &str) -> Option<f64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "rate")?;
    words.next()?.parse().ok()
}

/// An `iperf3 -s` on a free loopback port, for the whole run.
#[derive(Debug)]
pub(super) struct Iperf {
    server: Started,
    program: std::path::PathBuf,
}

impl Iperf {
    /// Starts the server if `iperf3` is on `PATH`; `Ok(None)` when it is not.
    ///
    /// # Errors
    /// When it is installed but does not start.
    pub(super) fn start() -> Result<Option<Self>, String> {
        let Some(program) = servers::which("iperf3") else { return Ok(None) };
        let port = servers::free_port()?;
        let args: Vec<String> = ["-s", "-B", "127.0.0.1", "-p", &port.to_string(), "--forceflush"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let server = servers::launch(&program, &args, Ready::Says("Server listening", port))?;
        Ok(Some(Self { server, program }))
    }

    /// `iperf3 -c` with `streams` parallel streams for `seconds`; returns
    /// the MiB/s received.
    ///
    /// # Errors
    /// When the client fails or its JSON has no receiving rate.
    pub(super) fn measure(&self, streams: usize, seconds: u32) -> Result<f64, String> {
        let addr = self.server.addr();
        let mut command = Command::new(&self.program);
        command.args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()]).args([
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ]);
        let done = run_to_end(command, b"", Duration::from_secs(u64::from(seconds) + 30))?;
        parse_iperf(&done.stdout).map_err(|e| format!("iperf3 -P {streams} ({}): {e}", done.status))
    }
}

/// MiB/s from `end.sum_received.bits_per_second` of iperf3's JSON report.
fn parse_iperf(json: &[u8]) -> Result<f64, String> {
    let report: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(error) = report.get("error").and_then(serde_json::Value::as_str) {
        return Err(error.to_owned());
    }
    report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|bits| bits / 8.0 / f64::from(1 << 20))
        .ok_or_else(|| "no end.sum_received.bits_per_second".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fork_rate_is_read() {
        assert_eq!(parse_fork_rate("forks 8382 seconds 2.000178 rate 4190.6\n"), Some(4190.6));
        assert_eq!(parse_fork_rate("fork: Resource temporarily unavailable"), None);
    }

    #[test]
    fn the_iperf_rate_is_read() {
        let json = br#"{"end": {"sum_received": {"bits_per_second": 8388608.0}}}"#;
        assert_eq!(parse_iperf(json), Ok(1.0));
        assert_eq!(
            parse_iperf(br#"{"error": "unable to connect"}"#),
            Err("unable to connect".into())
        );
        assert!(parse_iperf(b"{}").is_err());
    }
}
