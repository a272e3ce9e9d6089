//! The bound on a whole `stress` or `bench` run: if it outlives its limit,
//! every bound inside it failed to hold, so it is hung; the processes it
//! started (in process groups of their own, which no Ctrl-C reaches) are
//! killed with their children, by pid, and the run ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use integration_tests::procfs;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The processes the watchdog kills if the run hangs: pid and start time.
static WATCHED: Mutex<Vec<(i32, Option<u64>)>> = Mutex::new(Vec::new());

/// Puts a started process under the watchdog.
pub(crate) fn watch(pid: i32) {
    WATCHED.lock().unwrap_or_else(PoisonError::into_inner).push((pid, procfs::start_time(pid)));
}

/// Takes a process that has ended away from the watchdog.
pub(crate) fn unwatch(pid: i32) {
    WATCHED.lock().unwrap_or_else(PoisonError::into_inner).retain(|&(p, _)| p != pid);
}

/// Armed while it lives; disarmed when dropped.
#[derive(Debug)]
pub(crate) struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    /// Arms it for `limit` from now; `run` names the run in its message.
    pub(crate) fn start(run: &'static str, limit: Duration) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let deadline = Instant::now() + limit;
        std::thread::spawn(move || {
            while Instant::now() < deadline {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("{run}: still running after {limit:?}: hung; killing the servers");
            let watched = WATCHED.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for (pid, started) in watched {
                if started.is_some() && procfs::start_time(pid) == started {
                    for child in procfs::children_of(pid) {
                        let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
                    }
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            std::process::exit(1);
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}
