//! The process tree as `/proc` shows it: children of a pid and their states.

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
