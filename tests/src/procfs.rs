//! The process tree as `/proc` shows it: children of a pid and their states,
//! and what a process holds: its open descriptors and its signal state.

use std::fs;

/// One process, as read from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// The state letter: `R`, `S`, `Z` (zombie), …
    pub state: char,
}

impl Proc {
    /// Whether it has exited but not been reaped.
    #[must_use]
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Reads `/proc/PID/stat`; `None` if the process is gone.
#[must_use]
pub fn stat(pid: i32) -> Option<Proc> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the fields
    // after the last ')' are: state, ppid, …
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc { pid, ppid, state })
}

/// When the process started (`/proc/PID/stat` field 22, in clock ticks after
/// boot): with the pid, it tells one process from a later one given the same
/// pid. `None` if the process is gone.
#[must_use]
pub fn start_time(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&text, 22)
}

/// CPU time `pid` has used so far, in clock ticks: its own user and system
/// time (`utime` + `stime`), and that of its reaped children (`cutime` +
/// `cstime`; the kernel adds a child's time, and its reaped descendants', to
/// its parent's when it is reaped). `None` if the process is gone.
#[must_use]
pub fn cpu_ticks(pid: i32) -> Option<CpuTicks> {
    parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// What [`cpu_ticks`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// User + system time of the process itself.
    pub own: u64,
    /// User + system time of its reaped children.
    pub reaped_children: u64,
}

/// [`cpu_ticks`] from the text of `/proc/PID/stat` (fields 14 to 17).
#[must_use]
pub fn parse_cpu_ticks(text: &str) -> Option<CpuTicks> {
    let field = |n| stat_field::<u64>(text, n);
    Some(CpuTicks { own: field(14)? + field(15)?, reaped_children: field(16)? + field(17)? })
}

/// Field `n` of `/proc/PID/stat` text, numbered as in proc(5). The command
/// name (field 2) is in parentheses and may contain anything, spaces and
/// parentheses included: the fields after it start after the last `)`,
/// with field 3 (the state).
fn stat_field<T: std::str::FromStr>(text: &str, n: usize) -> Option<T> {
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// The open descriptors of `pid` and what each refers to (the target of
/// `/proc/PID/fd/N`: a path, `socket:[INODE]`, `pipe:[INODE]`,
/// `anon_inode:[signalfd]`, …), by number. `None` if the process is gone or
/// its descriptors cannot be read.
#[must_use]
pub fn fds(pid: i32) -> Option<Vec<(i32, String)>> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds: Vec<(i32, String)> = fs::read_dir(&dir)
        .ok()?
        .filter_map(|entry| {
            let fd = entry.ok()?.file_name().to_str()?.parse().ok()?;
            // A descriptor closed between the listing and this read is skipped.
            let target = fs::read_link(format!("{dir}/{fd}")).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    Some(fds)
}

/// A process's signal state, from the `SigBlk`, `SigIgn` and `SigCgt` lines of
/// `/proc/PID/status`, as sorted lists of signal numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalState {
    /// Blocked signals (the mask of its main thread).
    pub blocked: Vec<i32>,
    /// Ignored signals (`SIG_IGN`).
    pub ignored: Vec<i32>,
    /// Caught signals (a handler is installed).
    pub caught: Vec<i32>,
}

/// Reads the signal state of `pid`; `None` if the process is gone.
#[must_use]
pub fn signal_state(pid: i32) -> Option<SignalState> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // A hex mask in which bit N-1 stands for signal N.
    let signals = |name| {
        let mask = u64::from_str_radix(field(&status, name)?, 16).ok()?;
        Some((1..=64).filter(|&signo: &i32| mask & (1 << (signo - 1)) != 0).collect())
    };
    Some(SignalState {
        blocked: signals("SigBlk:")?,
        ignored: signals("SigIgn:")?,
        caught: signals("SigCgt:")?,
    })
}

/// The processes whose parent is `parent`, zombies included, by pid.
#[must_use]
pub fn children_of(parent: i32) -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut children: Vec<Proc> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|p| p.ppid == parent)
        .collect();
    children.sort_by_key(|p| p.pid);
    children
}

/// How many processes `pid` stands for in a process listing: itself (if
/// alive) and its live children. This is the seed's "four server processes"
/// with three clients connected.
#[must_use]
pub fn process_count(pid: i32) -> usize {
    let own = usize::from(stat(pid).is_some_and(|p| !p.is_zombie()));
    own + children_of(pid).iter().filter(|c| !c.is_zombie()).count()
}

/// How many tasks (threads) run under real user id `uid`, zombies included:
/// what `RLIMIT_NPROC` counts against that user.
#[must_use]
pub fn tasks_of_uid(uid: u32) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter(|status| field(status, "Uid:").and_then(|u| u.parse().ok()) == Some(uid))
        .map(|status| field(&status, "Threads:").and_then(|t| t.parse().ok()).unwrap_or(1))
        .sum()
}

/// The first value of a `Name:\tvalue…` line of a status file.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| line.strip_prefix(name))?.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_times_are_read_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority …
        let line = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 200 0 0 7 11 13 17 20 0 1 0";
        let ticks = parse_cpu_ticks(line).map(|t| t.own + t.reaped_children);
        assert_eq!(ticks, Some(7 + 11 + 13 + 17));
        assert_eq!(parse_cpu_ticks("42 (cut) S 1 42"), None);
        assert_eq!(parse_cpu_ticks(""), None);
    }
}
