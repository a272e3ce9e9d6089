//! Watches a server's process tree from `/proc` while it is under load:
//! the most children and zombies seen at once, and any zombie that outlives
//! a reap cycle; and reads the parent's descriptor count and resident size.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration_tests::{TIMEOUT, procfs, wait_until};

/// How often the tree is sampled.
const PERIOD: Duration = Duration::from_millis(50);

/// A zombie seen in two samples this far apart has outlived a reap cycle:
/// the parent reaps on every SIGCHLD, within milliseconds.
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// A sampling thread on one server's process tree; stopped when dropped.
#[derive(Debug)]
pub(super) struct Monitor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the sampling thread and its owner share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
}

/// What the samples showed.
#[derive(Debug, Default, Clone)]
struct State {
    /// Most zombies at once since the last [`Monitor::take_peaks`].
    zombies: usize,
    /// Most children (zombies included) at once since then.
    children: usize,
    /// Zombies that outlived a reap cycle, described.
    lingering: Vec<String>,
    /// Samples taken.
    samples: u64,
}

/// The most children and zombies seen at once over a stretch of time.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Peaks {
    /// Zombies (exited, not yet reaped).
    pub(super) zombies: usize,
    /// Children, zombies included.
    pub(super) children: usize,
}

/// What the whole watch found.
#[derive(Debug, Clone, Default)]
pub(super) struct Watch {
    /// Zombies that outlived a reap cycle, described.
    pub(super) lingering: Vec<String>,
    /// Samples taken.
    pub(super) samples: u64,
}

impl Monitor {
    /// Starts sampling the children of `pid` every 50 ms.
    pub(super) fn start(pid: i32) -> Self {
        let shared = Arc::new(Shared::default());
        let sampler = Arc::clone(&shared);
        let thread = std::thread::spawn(move || sample(pid, &sampler));
        Self { shared, thread: Some(thread) }
    }

    /// The most children and zombies seen at once since the last call (or
    /// the start); the next stretch starts now.
    pub(super) fn take_peaks(&self) -> Peaks {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        let peaks = Peaks { zombies: state.zombies, children: state.children };
        (state.zombies, state.children) = (0, 0);
        peaks
    }

    /// Stops sampling and says what the whole watch found.
    pub(super) fn stop(mut self) -> Watch {
        self.halt();
        let state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        Watch { lingering: state.lingering.clone(), samples: state.samples }
    }

    /// Tells the thread to stop and waits for it.
    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The sampling loop: runs until told to stop.
fn sample(pid: i32, shared: &Shared) {
    // Each zombie, by pid and start time (a pid can be reused), with when it
    // was first seen a zombie.
    let mut first_seen: HashMap<(i32, u64), Instant> = HashMap::new();
    let mut reported: HashSet<(i32, u64)> = HashSet::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let children = children_of(pid);
        let mut zombies = HashSet::new();
        for &child in &children {
            if procfs::stat(child).is_some_and(|p| p.is_zombie()) {
                zombies.insert((child, procfs::start_time(child).unwrap_or(0)));
            }
        }
        first_seen.retain(|key, _| zombies.contains(key));
        let mut lingering = Vec::new();
        for &key in &zombies {
            let since = *first_seen.entry(key).or_insert(now);
            let age = now.duration_since(since);
            if age >= LINGER && reported.insert(key) {
                lingering.push(format!("pid {} a zombie for at least {age:.1?}", key.0));
            }
        }
        {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.zombies = state.zombies.max(zombies.len());
            state.children = state.children.max(children.len());
            state.lingering.extend(lingering);
            state.samples += 1;
        }
        std::thread::sleep(PERIOD);
    }
}

/// The children of `pid`, zombies included: from
/// `/proc/PID/task/PID/children` (one file, cheap with a thousand children;
/// the server is single-threaded, so its main thread has them all), or by
/// scanning `/proc` where that file does not exist.
fn children_of(pid: i32) -> Vec<i32> {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(text) => text.split_ascii_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => procfs::children_of(pid).iter().map(|p| p.pid).collect(),
    }
}

/// The parent's descriptors and resident memory at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Footprint {
    /// Open descriptors (`/proc/PID/fd`).
    pub(super) fds: usize,
    /// What each refers to, by number: `socket:[INODE]`, `pipe:[INODE]`, …
    pub(super) targets: Vec<(i32, String)>,
    /// Resident set size in KiB (`VmRSS` in `/proc/PID/status`).
    pub(super) rss_kib: u64,
}

impl Footprint {
    /// Reads it for `pid`.
    ///
    /// # Errors
    /// When the process is gone or `/proc` cannot be read.
    /// `per_child` descriptors for each live child (a pool member's channel)
    /// are left out of the count, which is then the parent's own.
    pub(super) fn of(pid: i32, per_child: usize) -> Result<Self, String> {
        // The children are counted on both sides of the listing, until both
        // counts agree: a child forked in between would skew the count (in
        // fork mode, with nothing to leave out, they are not counted).
        let count = || if per_child == 0 { 0 } else { children_of(pid).len() };
        let read = || {
            let before = count();
            let targets = procfs::fds(pid);
            (before == count()).then_some((targets, before))
        };
        let (targets, children) = (0..100)
            .find_map(|_| read())
            .ok_or_else(|| format!("/proc/{pid}: children kept coming and going"))?;
        let targets = targets.ok_or_else(|| format!("cannot list /proc/{pid}/fd"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
        let fds = targets.len().saturating_sub(per_child * children);
        Ok(Self { fds, targets, rss_kib })
    }

    /// Reads it for `pid` once the parent is idle: a descriptor count above
    /// `before`'s is read again until it comes back, for at most `TIMEOUT`
    /// (a descriptor the parent holds for a moment, such as a connection
    /// completing late, is not a leak). Returns the footprint, and the extra
    /// descriptors seen on the way, if any.
    ///
    /// # Errors
    /// When the process is gone or `/proc` cannot be read.
    pub(super) fn settled(
        pid: i32,
        before: &Self,
        per_child: usize,
    ) -> Result<(Self, Vec<String>), String> {
        let first = Self::of(pid, per_child)?;
        if first.fds <= before.fds {
            return Ok((first, Vec::new()));
        }
        let extra = first.beyond(before);
        let settled = wait_until(TIMEOUT, "the parent's descriptors to come back", || {
            Self::of(pid, per_child).ok().filter(|now| now.fds <= before.fds)
        });
        Ok((settled.or_else(|_| Self::of(pid, per_child))?, extra))
    }

    /// The descriptors open now that were not open in `before`.
    pub(super) fn beyond(&self, before: &Self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|fd| !before.targets.contains(fd))
            .map(|(fd, target)| format!("{fd} -> {target}"))
            .collect()
    }
}

/// The soft limit on open files of `pid` (`Max open files` in
/// `/proc/PID/limits`), as written there.
pub(super) fn nofile_limit(pid: i32) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use integration_tests::process::Running;

    use super::*;

    /// A parent that never reaps: `sh` forks a `true` and execs `sleep`,
    /// which knows nothing of the child; its zombie must be reported.
    #[test]
    fn a_zombie_that_is_never_reaped_is_reported() {
        let mut command = Command::new("sh");
        command.args(["-c", "true & exec sleep 30"]);
        let parent = Running::spawn(command).unwrap();
        let monitor = Monitor::start(parent.pid());
        let peaks = wait_until(TIMEOUT, "a zombie to outlive a reap cycle", || {
            let state = monitor.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            (!state.lingering.is_empty()).then(|| (state.zombies, state.lingering.clone()))
        })
        .unwrap();
        assert_eq!(peaks.0, 1, "{peaks:?}");
        assert!(peaks.1[0].contains("a zombie for at least"), "{peaks:?}");
        let watch = monitor.stop();
        assert_eq!(watch.lingering.len(), 1, "reported once: {watch:?}");
        let footprint = Footprint::of(parent.pid(), 0).unwrap();
        assert!(footprint.fds >= 3 && footprint.rss_kib > 0, "{footprint:?}");
        // `parent` is killed by pid when dropped; its zombie child goes with it.
    }
}
