//! An `echo-server -v` whose standard error is a pipe nobody reads: read up
//! to its `listening on` line, then left full (the read end stays open, so
//! writes find a full pipe, not a broken one) until [`Stalled::drain`].

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{TIMEOUT, procfs, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The server, killed with its children (by pid) when dropped.
#[derive(Debug)]
pub struct Stalled {
    child: Child,
    addr: SocketAddr,
    /// The read end of its stderr, not read until [`Stalled::drain`].
    stderr: Option<BufReader<ChildStderr>>,
    /// What has been read since the drain began, and the reading thread.
    drained: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Stalled {
    /// Starts `echo-server 0 --bind 127.0.0.1 -v` in a process group of its
    /// own, with `RUST_LOG` unset, and reads its stderr up to the `listening
    /// on` line.
    ///
    /// # Errors
    /// When it cannot be built or started, or does not say where it listens.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// As [`Stalled::start`], with more arguments for the server.
    ///
    /// # Errors
    /// As [`Stalled::start`].
    pub fn start_with(args: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(crate::binary("echo-server")?)
            .args(["0", "--bind", "127.0.0.1", "-v"])
            .args(args)
            .env_remove("RUST_LOG")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start echo-server: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        // Read on a thread, so the wait is bounded; the reader comes back,
        // still open.
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    let _ = sender.send((addr, stderr));
                    return;
                }
                line.clear();
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: None,
            drained: Arc::default(),
            reader: None,
        };
        let (addr, stderr) = receiver
            .recv_timeout(TIMEOUT)
            .map_err(|_| "the stalled server never said where it listens".to_owned())?;
        server.addr = addr.ok_or("no address in the 'listening on' line")?;
        server.stderr = Some(stderr);
        Ok(server)
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts reading its stderr, on a thread, to the end.
    pub fn drain(&mut self) {
        let Some(mut stderr) = self.stderr.take() else { return };
        let sink = Arc::clone(&self.drained);
        self.reader = Some(std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock().unwrap_or_else(PoisonError::into_inner).push_str(&text);
            }
        }));
    }

    /// Everything read since [`Stalled::drain`].
    #[must_use]
    pub fn drained(&self) -> String {
        self.drained.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The lines read since [`Stalled::drain`] that contain `needle`.
    #[must_use]
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = self.drained.lock().unwrap_or_else(PoisonError::into_inner);
        text.lines().filter(|line| line.contains(needle)).map(str::to_owned).collect()
    }

    /// Waits until at least `count` drained lines contain `needle`.
    ///
    /// # Errors
    /// On timeout.
    pub fn wait_for(&self, needle: &str, count: usize) -> Result<Vec<String>, String> {
        wait_until(TIMEOUT, &format!("{count} line(s) with {needle:?} in the drained log"), || {
            let lines = self.lines_with(needle);
            (lines.len() >= count).then_some(lines)
        })
    }

    /// Sends `signal` to the server.
    ///
    /// # Errors
    /// When `kill(2)` fails.
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        kill(Pid::from_raw(self.pid()), signal).map_err(|e| format!("kill {}: {e}", self.pid()))
    }

    /// Sends SIGTERM and waits, at most `timeout`, for it to exit and for
    /// its stderr to end.
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        self.signal(Signal::SIGTERM)?;
        let status = wait_until(timeout, "the stalled server to exit", || {
            self.child.try_wait().ok().flatten()
        })?;
        if let Some(reader) = self.reader.take() {
            let _ = wait_until(timeout, "its stderr to end", || reader.is_finished().then_some(()));
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        Ok(status)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        for child in procfs::children_of(self.pid()) {
            let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
