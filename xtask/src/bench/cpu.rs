//! The CPU a server spends, read from `/proc`: its own user and system time,
//! what its reaped children spent (`cutime`, `cstime`: the kernel adds a
//! child's time, and its reaped descendants', to its parent's when it is
//! reaped), and what its live children have spent so far. The difference of
//! two readings is what the whole process tree did in between, whether the
//! children came and went (fork mode) or lived through it (a pool).

use std::time::Duration;

use integration_tests::procfs;
use nix::unistd::{SysconfVar, sysconf};

/// User + system time of `pid` and of its reaped children, from the fields
/// after the command name in `/proc/PID/stat` (14 to 17: `utime`, `stime`,
/// `cutime`, `cstime`), in clock ticks; `None` if unreadable.
pub(super) fn parse_stat(text: &str) -> Option<u64> {
    // The command name is in parentheses and may contain anything: the
    // fields start after the last `)`, with field 3 (the state) first.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    let tick = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(tick(14)? + tick(15)? + tick(16)? + tick(17)?)
}

/// The CPU time of `pid`'s whole tree so far; `None` if the server is gone.
/// The parent is read first, then its live children: a child reaped in
/// between is missed, never counted twice.
pub(super) fn tree(pid: i32) -> Option<Duration> {
    let ticks_per_second = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|&t| t > 0)?;
    let ticks_of =
        |pid: i32| parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?);
    let parent = ticks_of(pid)?;
    let children: u64 = procfs::children_of(pid).iter().filter_map(|c| ticks_of(c.pid)).sum();
    let ticks = parent + children;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_times_are_read_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority …
        let line = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 200 0 0 7 11 13 17 20 0 1 0";
        assert_eq!(parse_stat(line), Some(7 + 11 + 13 + 17));
        assert_eq!(parse_stat("42 (cut) S 1 42"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_has_spent_some_time() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0);
        }
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(tree(pid).is_some_and(|cpu| cpu > Duration::ZERO));
    }
}
