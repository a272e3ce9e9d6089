//! What held connections cost in memory, read from `/proc/PID/smaps_rollup`:
//! each child's resident set (RSS) and proportional share (PSS, where a page
//! shared by N processes counts 1/N to each), and the parent's RSS.

use std::time::Duration;

use integration_tests::{procfs, wait_until};

use super::stats::mean;

/// How long the held connections' children may take to all show up.
const APPEAR: Duration = Duration::from_secs(10);

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Memory {
    /// Resident set size: every page mapped and present, shared or not.
    pub(super) rss_kib: u64,
    /// Proportional set size: each present page divided by its sharers.
    pub(super) pss_kib: u64,
}

/// Parses the `Rss:` and `Pss:` lines (in kB) of a `smaps_rollup` file;
/// `None` when either is missing (a zombie's file is empty).
pub(super) fn parse_rollup(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let mut words = line.strip_prefix(name)?.split_whitespace();
            let value = words.next()?.parse().ok()?;
            (words.next() == Some("kB")).then_some(value)
        })
    };
    Some(Memory { rss_kib: field("Rss:")?, pss_kib: field("Pss:")? })
}

/// Reads `/proc/PID/smaps_rollup`; `None` if the process is gone (or a zombie).
pub(super) fn of(pid: i32) -> Option<Memory> {
    parse_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// The memory of a server holding connections open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Held {
    /// Live children measured.
    pub(super) children: usize,
    /// Mean RSS of a child, KiB.
    pub(super) child_rss_kib: f64,
    /// Mean PSS of a child, KiB.
    pub(super) child_pss_kib: f64,
    /// The parent's RSS, KiB.
    pub(super) parent_rss_kib: f64,
}

/// Averages the children's figures; `None` without any child.
pub(super) fn summarize(parent: Memory, children: &[Memory]) -> Option<Held> {
    let rss: Vec<f64> = children.iter().map(|m| m.rss_kib as f64).collect();
    let pss: Vec<f64> = children.iter().map(|m| m.pss_kib as f64).collect();
    Some(Held {
        children: children.len(),
        child_rss_kib: mean(&rss)?,
        child_pss_kib: mean(&pss)?,
        parent_rss_kib: parent.rss_kib as f64,
    })
}

/// Waits (bounded) until `parent` has at least `expected` live children,
/// then reads the memory of each and of the parent.
///
/// # Errors
/// When the children do not all appear in time, or nothing can be read.
pub(super) fn held(parent: i32, expected: usize) -> Result<Held, String> {
    let live = || procfs::children_of(parent).into_iter().filter(|c| !c.is_zombie());
    wait_until(APPEAR, &format!("{expected} live children of {parent}"), || {
        (live().count() >= expected).then_some(())
    })?;
    let children: Vec<Memory> = live().filter_map(|child| of(child.pid)).collect();
    let parent_memory = of(parent).ok_or_else(|| format!("cannot read the memory of {parent}"))?;
    summarize(parent_memory, &children)
        .ok_or_else(|| format!("cannot read the memory of any child of {parent}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "\
55f2c7a1e000-7ffc4a9f3000 ---p 00000000 00:00 0                          [rollup]
Rss:                 860 kB
Pss:                  97 kB
Pss_Dirty:            60 kB
Pss_Anon:             56 kB
Pss_File:             41 kB
Pss_Shmem:             0 kB
Shared_Clean:        764 kB
Private_Dirty:        56 kB
";

    #[test]
    fn the_rollup_gives_rss_and_pss_not_their_variants() {
        assert_eq!(parse_rollup(ROLLUP), Some(Memory { rss_kib: 860, pss_kib: 97 }));
        assert_eq!(parse_rollup(""), None);
        assert_eq!(parse_rollup("Rss: 12 kB\n"), None);
        assert_eq!(parse_rollup("Rss: 12 MB\nPss: 3 kB\n"), None);
    }

    #[test]
    fn children_are_averaged_and_the_parent_is_kept_apart() {
        let m = |rss_kib, pss_kib| Memory { rss_kib, pss_kib };
        let held = summarize(m(3000, 900), &[m(800, 30), m(900, 40)]);
        let expected =
            Held { children: 2, child_rss_kib: 850.0, child_pss_kib: 35.0, parent_rss_kib: 3000.0 };
        assert_eq!(held, Some(expected));
        assert_eq!(summarize(m(1, 1), &[]), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.rss_kib > 0 && me.pss_kib > 0 && me.pss_kib <= me.rss_kib, "{me:?}");
    }
}
