//! Real `echo-client` processes.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{self, Finished, KillOnDrop, Running};
use crate::{TIMEOUT, binary, wait_until};

/// A running `echo-client`, killed by pid when dropped.
#[derive(Debug)]
pub struct Client {
    process: Running,
}

impl Client {
    /// Starts `echo-client IP PORT ARGS…` connected to `server`.
    ///
    /// # Errors
    /// When it cannot be built or started.
    pub fn connect(server: SocketAddr, args: &[&str]) -> Result<Self, String> {
        let (ip, port) = (server.ip().to_string(), server.port().to_string());
        Self::start(
            &[ip.as_str(), port.as_str()]
                .into_iter()
                .chain(args.iter().copied())
                .collect::<Vec<_>>(),
        )
    }

    /// Starts `echo-client ARGS…` with exactly these arguments.
    ///
    /// # Errors
    /// When it cannot be built or started.
    pub fn start(args: &[&str]) -> Result<Self, String> {
        Ok(Self { process: Running::spawn(command(args)?)? })
    }

    /// The client's pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Writes `bytes` to the client's stdin.
    ///
    /// # Errors
    /// When stdin is closed or the client is gone.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.process.stdin().ok_or("stdin already closed")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("client stdin: {e}"))
    }

    /// Closes the client's stdin (end of input, as Ctrl-D on a terminal).
    pub fn close_input(&mut self) {
        self.process.close_stdin();
    }

    /// Waits until at least `len` bytes have come out of the client's stdout.
    ///
    /// # Errors
    /// On timeout, with what did come.
    pub fn wait_for_output(&mut self, len: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        let result = wait_until(timeout, &format!("{len} bytes of output"), || {
            let out = self.process.stdout();
            (out.len() >= len).then_some(out)
        });
        result.map_err(|e| {
            let got = self.process.stdout();
            format!("{e}; got {:?}; stderr: {:?}", String::from_utf8_lossy(&got), self.stderr())
        })
    }

    /// Everything written to stdout so far.
    #[must_use]
    pub fn stdout(&self) -> Vec<u8> {
        self.process.stdout()
    }

    /// The stderr lines so far.
    #[must_use]
    pub fn stderr(&self) -> Vec<String> {
        self.process.stderr()
    }

    /// The client's own address, from its `connected to SERVER from LOCAL` line.
    ///
    /// # Errors
    /// When the line does not appear in time.
    pub fn local_addr(&self) -> Result<SocketAddr, String> {
        wait_until(TIMEOUT, "the client's 'connected to' line", || {
            self.stderr().iter().find_map(|line| {
                let (_, rest) = line.split_once("connected to ")?;
                rest.split_once(" from ")?.1.split_whitespace().next()?.parse().ok()
            })
        })
    }

    /// Waits for the client to exit and returns what it printed.
    ///
    /// # Errors
    /// When it is still running after `timeout` (it is then killed).
    pub fn finish(mut self, timeout: Duration) -> Result<Finished, String> {
        let status = self.process.wait(timeout)?;
        Ok(Finished { status, stdout: self.stdout(), stderr: self.stderr() })
    }

    /// Runs a client to completion with `input` on stdin, for at most `timeout`.
    ///
    /// # Errors
    /// When it cannot start or does not finish in time.
    pub fn run(args: &[&str], input: &[u8], timeout: Duration) -> Result<Finished, String> {
        process::run_to_end(command(args)?, input, timeout)
    }

    /// Runs a client to completion as [`Client::run`] does, but with its
    /// standard output going to `stdout` (a pipe whose reader goes away,
    /// `/dev/full`) rather than collected: the result's `stdout` is empty.
    /// The client is killed by pid if it outlives `timeout`.
    ///
    /// # Errors
    /// When it cannot start or does not finish in time.
    pub fn run_with_stdout(
        args: &[&str],
        input: &[u8],
        stdout: Stdio,
        timeout: Duration,
    ) -> Result<Finished, String> {
        // The command (and with it this process's copy of `stdout`) is gone
        // once the client runs: the client alone holds its output open.
        let mut child = command(args)?
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start echo-client: {e}"))?;
        let guard = KillOnDrop::new(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let input = input.to_vec();
        // A client that stops early closes its input; that is its answer.
        let feeder = std::thread::spawn(move || drop(stdin.write_all(&input)));
        let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text.lines().map(str::to_owned).collect()
        });
        let status = wait_until(timeout, "echo-client to exit", || child.try_wait().ok().flatten());
        // On a timeout the guard kills it, which ends the feeder and the reader.
        drop(guard);
        let status = status.inspect_err(|_| drop(child.wait()))?;
        let _ = feeder.join();
        let stderr = reader.join().map_err(|_| "the stderr reader panicked")?;
        Ok(Finished { status, stdout: Vec::new(), stderr })
    }
}

/// A command running `echo-client ARGS…`, with `RUST_LOG` unset.
fn command(args: &[&str]) -> Result<Command, String> {
    let mut command = Command::new(binary("echo-client")?);
    command.args(args).env_remove("RUST_LOG");
    Ok(command)
}
