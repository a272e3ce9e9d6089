//! The CPU a server spends, read from `/proc`: its own user and system time,
//! what its reaped children spent (`cutime`, `cstime`: the kernel adds a
//! child's time, and its reaped descendants', to its parent's when it is
//! reaped), and what its live children have spent so far. The difference of
//! two readings is what the whole process tree did in between, whether the
//! children came and went (fork mode) or lived through it (a pool).

use std::time::Duration;

use integration_tests::procfs;
use nix::unistd::{SysconfVar, sysconf};

/// The CPU time of `pid`'s whole tree so far; `None` if the server is gone.
/// The parent is read first, then its live children: a child reaped in
/// between is missed, never counted twice.
pub(super) fn tree(pid: i32) -> Option<Duration> {
    let ticks_per_second = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|&t| t > 0)?;
    let ticks_of = |pid: i32| procfs::cpu_ticks(pid).map(|t| t.own + t.reaped_children);
    let parent = ticks_of(pid)?;
    let children: u64 = procfs::children_of(pid).iter().filter_map(|c| ticks_of(c.pid)).sum();
    let ticks = parent + children;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

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
