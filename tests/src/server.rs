//! A real server process on an ephemeral loopback port: `echo-server`, or any
//! program that logs `listening on ADDR:PORT` on stderr (forkserve's examples).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{Finished, Running, run_to_end};
use crate::procfs::{self, Proc};
use crate::{TIMEOUT, binary, wait_until};

/// A running server (`echo-server`, or another program started with
/// [`Server::start_program`]), stopped (children first) when dropped.
#[derive(Debug)]
pub struct Server {
    process: Running,
    addr: SocketAddr,
}

impl Server {
    /// Starts `echo-server 0 --bind IP -v ARGS…` (without `-v` if ARGS has
    /// `-q`) in a process group of its own, and waits for its
    /// `listening on ADDR:PORT` line to learn the port.
    ///
    /// # Errors
    /// When it cannot be built or started, or does not report listening.
    pub fn start(ip: &str, args: &[&str]) -> Result<Self, String> {
        Self::start_wrapped(&[], ip, args)
    }

    /// As [`Server::start`], run through `wrapper` (a program that execs its
    /// arguments, such as `prlimit --nofile=5 --`), so the pid is the server's.
    ///
    /// # Errors
    /// As [`Server::start`].
    pub fn start_wrapped(wrapper: &[&str], ip: &str, args: &[&str]) -> Result<Self, String> {
        Self::start_wrapped_at(wrapper, &binary("echo-server")?, ip, args)
    }

    /// As [`Server::start_wrapped`], with the `echo-server` binary at `server`
    /// (a [`SharedCopy`](crate::SharedCopy) of it, for another user to run).
    ///
    /// # Errors
    /// As [`Server::start`].
    pub fn start_wrapped_at(
        wrapper: &[&str],
        server: &Path,
        ip: &str,
        args: &[&str],
    ) -> Result<Self, String> {
        let mut command = command(wrapper, server);
        command.args(["0", "--bind", ip]).args(args);
        if !args.contains(&"-q") {
            command.arg("-v");
        }
        Self::launch(command)
    }

    /// Starts `program ARGS…`, any server that logs `listening on ADDR:PORT`
    /// on stderr (forkserve's examples: `ARGS` = `0 127.0.0.1`), as
    /// [`Server::start`] starts `echo-server`: in a process group of its own,
    /// with `RUST_LOG` unset, waiting for that line to learn the port.
    ///
    /// # Errors
    /// When it cannot be started, or does not report listening.
    pub fn start_program(program: &Path, args: &[&str]) -> Result<Self, String> {
        let mut command = command(&[], program);
        command.args(args);
        Self::launch(command)
    }

    /// Spawns `command` and waits for its `listening on ADDR:PORT` line.
    fn launch(command: Command) -> Result<Self, String> {
        let mut process = Running::spawn(command)?;
        let found = wait_until(TIMEOUT, "the server's 'listening on' line", || {
            let listening = process.stderr().iter().find_map(|line| listening_addr(line));
            listening.map(Ok).or_else(|| {
                process.try_status().map(|status| {
                    Err(format!("server exited with {status}: {}", process.stderr().join("\n")))
                })
            })
        });
        let addr = found.and_then(|result| result)?;
        Ok(Self { process, addr })
    }

    /// Runs `echo-server ARGS…` (through `wrapper`, if any) to completion, for
    /// at most `timeout`: for arguments that must make it fail.
    ///
    /// # Errors
    /// When it cannot start or does not finish in time.
    pub fn run(wrapper: &[&str], args: &[&str], timeout: Duration) -> Result<Finished, String> {
        Self::run_at(wrapper, &binary("echo-server")?, args, timeout)
    }

    /// As [`Server::run`], with the `echo-server` binary at `server`.
    ///
    /// # Errors
    /// When it cannot start or does not finish in time.
    pub fn run_at(
        wrapper: &[&str],
        server: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Finished, String> {
        let mut command = command(wrapper, server);
        command.args(args);
        run_to_end(command, b"", timeout)
    }

    /// Runs `program ARGS…` to completion, for at most `timeout`, as
    /// [`Server::run`] runs `echo-server`.
    ///
    /// # Errors
    /// When it cannot start or does not finish in time.
    pub fn run_program(
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Finished, String> {
        let mut command = command(&[], program);
        command.args(args);
        run_to_end(command, b"", timeout)
    }

    /// The address the server is listening on, with its real port.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Every log line so far.
    #[must_use]
    pub fn log(&self) -> Vec<String> {
        self.process.stderr()
    }

    /// Waits until at least `count` log lines contain every one of `needles`;
    /// returns those lines.
    ///
    /// # Errors
    /// On timeout, with the log attached.
    pub fn wait_for_log(
        &self,
        needles: &[&str],
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let what = format!("{count} log line(s) containing {needles:?}");
        wait_until(timeout, &what, || {
            let lines: Vec<String> = self
                .log()
                .into_iter()
                .filter(|line| needles.iter().all(|n| line.contains(n)))
                .collect();
            (lines.len() >= count).then_some(lines)
        })
        .map_err(|e| format!("{e}\nserver log:\n{}", self.log().join("\n")))
    }

    /// The server's child processes right now, zombies included.
    #[must_use]
    pub fn children(&self) -> Vec<Proc> {
        procfs::children_of(self.pid())
    }

    /// Waits until the server has exactly `count` children, none of them a
    /// zombie; returns them.
    ///
    /// # Errors
    /// On timeout, saying what was seen last.
    pub fn wait_for_children(&self, count: usize, timeout: Duration) -> Result<Vec<Proc>, String> {
        let mut last = Vec::new();
        wait_until(timeout, &format!("exactly {count} live children"), || {
            last = self.children();
            (last.len() == count && !last.iter().any(Proc::is_zombie)).then(|| last.clone())
        })
        .map_err(|e| format!("{e}; last seen: {last:?}"))
    }

    /// Waits for the server's one child and sends it `signal`; returns its pid.
    ///
    /// # Errors
    /// When there is not exactly one child in time, or `kill(2)` fails.
    pub fn signal_only_child(&self, signal: Signal) -> Result<i32, String> {
        let child = self.wait_for_children(1, TIMEOUT)?[0].pid;
        kill(Pid::from_raw(child), signal).map_err(|e| format!("kill {child}: {e}"))?;
        Ok(child)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.try_status().is_none()
    }

    /// Sends `signal` to the server process.
    ///
    /// # Errors
    /// When `kill(2)` fails.
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        self.process.signal(signal)
    }

    /// Sends `signal` to the server's whole process group (itself and its
    /// children), as a terminal does for Ctrl-C.
    ///
    /// # Errors
    /// When `killpg(2)` fails.
    pub fn signal_group(&self, signal: Signal) -> Result<(), String> {
        nix::sys::signal::killpg(Pid::from_raw(self.pid()), signal)
            .map_err(|e| format!("killpg {}: {e}", self.pid()))
    }

    /// Sends SIGTERM and waits for the server to exit.
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        self.signal(Signal::SIGTERM)?;
        self.wait(timeout)
    }

    /// Waits for the server to exit.
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        self.process.wait(timeout)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        // Children first, by pid, so none outlives the test; the server then
        // reaps them and exits on SIGTERM.
        for child in self.children() {
            let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
        }
        let _ = self.terminate(Duration::from_secs(5));
        // `Running`'s own drop kills the server if it is still there.
    }
}

/// A command running `server` through `wrapper` (its first argument after the
/// wrapper's own), with `RUST_LOG` unset.
fn command(wrapper: &[&str], server: &Path) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(server);
            command
        }
        None => Command::new(server),
    };
    // Its own process group, as under a shell's job control: a signal to the
    // group reaches the server and its children, never the tests.
    command.env_remove("RUST_LOG").process_group(0);
    command
}

/// The address in a `listening on ADDR:PORT` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    // Ends at a space (text) or at the closing quote of a JSON string.
    rest.split(|c: char| c.is_whitespace() || c == '"').next()?.parse().ok()
}
