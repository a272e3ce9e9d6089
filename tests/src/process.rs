//! A spawned process whose output is collected by background threads, with
//! bounded waits and kill-by-pid on drop; and a guard that kills, by pid, a
//! process the harness did not spawn itself (a server's child).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{procfs, wait_until};

/// How long [`Running::wait`] waits, once the process has exited, for its
/// output pipes to close.
pub const DRAIN: Duration = Duration::from_secs(3);

/// What a finished process printed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// The stderr lines: logs and errors.
    pub stderr: Vec<String>,
}

impl Finished {
    /// The lines that report an error (`error: …`).
    #[must_use]
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.iter().map(String::as_str).filter(|l| l.starts_with("error:")).collect()
    }

    /// Checks the contract for bad input: exit `code`, exactly one `error:`
    /// line containing every one of `needles`, and no panic or backtrace.
    ///
    /// # Errors
    /// Says what differs, with the whole stderr.
    pub fn expect_error(&self, code: i32, needles: &[&str]) -> Result<(), String> {
        let all = self.stderr.join("\n");
        let errors = self.error_lines();
        if self.status.code() != Some(code) {
            return Err(format!("expected exit {code}, got {}: {all}", self.status));
        }
        if errors.len() != 1 || !needles.iter().all(|n| errors[0].contains(n)) {
            return Err(format!("expected one error line with {needles:?}, got: {all}"));
        }
        if all.contains("panicked") || all.contains("backtrace") {
            return Err(format!("panic output: {all}"));
        }
        Ok(())
    }
}

/// Runs `command` to completion with `input` on stdin, for at most `timeout`
/// (killed after that).
///
/// # Errors
/// When it cannot start or does not finish in time.
pub fn run_to_end(command: Command, input: &[u8], timeout: Duration) -> Result<Finished, String> {
    let mut process = Running::spawn(command)?;
    // Feed stdin from a thread: the process may be writing output meanwhile,
    // and a large input would otherwise deadlock against a full stdout pipe.
    let stdin = process.take_stdin();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A process that exits early closes the pipe; that is its answer.
            let _ = stdin.write_all(&input);
        }
    });
    let status = process.wait(timeout);
    if status.is_err() {
        process.kill();
    }
    let _ = feeder.join();
    Ok(Finished { status: status?, stdout: process.stdout(), stderr: process.stderr() })
}

/// A running process with its stdout collected as bytes and its stderr as lines.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn locked<T: Clone>(shared: &Mutex<T>) -> T {
    shared.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

impl Running {
    /// Spawns `command` with piped stdin, stdout and stderr.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(mut command: Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            let sink = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            let echo = std::env::var_os("E2E_SHOW_LOGS").is_some();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("  | {line}");
                    }
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(line);
                }
            }));
        }
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, stdout, stderr, readers, status: None })
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Everything written to stdout so far.
    #[must_use]
    pub fn stdout(&self) -> Vec<u8> {
        locked(&self.stdout)
    }

    /// Every line written to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> Vec<String> {
        locked(&self.stderr)
    }

    /// Waits, for at most `timeout`, until a line of stderr satisfies
    /// `found`; returns every line so far.
    ///
    /// # Errors
    /// When no line does in time (`what` names the wait).
    pub fn wait_for_stderr(
        &self,
        timeout: Duration,
        what: &str,
        found: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, String> {
        wait_until(timeout, what, || {
            let log = self.stderr();
            log.iter().any(|line| found(line)).then_some(log)
        })
    }

    /// The stdin pipe, until [`Running::close_stdin`].
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Takes the stdin pipe, to feed it from another thread.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Closes stdin: the process sees end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status, if the process has exited (it is reaped then).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the process to exit, for at most `timeout`, then for its
    /// output to be read to the end, for at most [`DRAIN`] more. Whatever the
    /// process wrote is in its pipes once it has exited, so reading it takes
    /// moments; only a descendant that outlives it (an orphaned child of a
    /// killed server) can keep the pipes open longer, and that is not waited
    /// for: what it writes is still collected, later.
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let pid = self.pid();
        let status = wait_until(timeout, &format!("process {pid} to exit"), || self.try_status())?;
        let _ = wait_until(timeout.min(DRAIN), &format!("the output of {pid} to end"), || {
            self.readers.iter().all(JoinHandle::is_finished).then_some(())
        });
        let (finished, reading): (Vec<_>, Vec<_>) =
            self.readers.drain(..).partition(JoinHandle::is_finished);
        self.readers = reading;
        for reader in finished {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// Sends `signal` to the process (not to its children).
    ///
    /// # Errors
    /// When `kill(2)` fails.
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        kill(Pid::from_raw(self.pid()), signal).map_err(|e| format!("kill {}: {e}", self.pid()))
    }

    /// Kills the process with SIGKILL if it still runs, and reaps it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.signal(Signal::SIGKILL);
            let _ = self.wait(Duration::from_secs(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.close_stdin();
        self.kill();
    }
}

/// A process someone else started (a server's child, say), killed with
/// SIGKILL by pid when dropped, so that a test that fails half-way leaves no
/// process behind, even one whose parent is gone. It is left alone if it has
/// already ended (or is a zombie), or if its pid now names another process.
#[derive(Debug)]
#[must_use = "the process is killed when the guard is dropped"]
pub struct KillOnDrop {
    pid: i32,
    /// When it started: a later process given the same pid started later.
    started: Option<u64>,
}

impl KillOnDrop {
    /// Guards the running process `pid`.
    pub fn new(pid: i32) -> Self {
        Self { pid, started: procfs::start_time(pid) }
    }

    /// The guarded pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let alive = procfs::stat(self.pid).is_some_and(|p| !p.is_zombie());
        if alive && self.started.is_some() && procfs::start_time(self.pid) == self.started {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}
