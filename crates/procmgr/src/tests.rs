//! Unit tests. The test harness is multi-threaded, so children forked here only
//! do async-signal-safe work (`_exit`, `pause`), through the unchecked entry
//! points. The single-threaded paths (the checked fork, SIGCHLD through the
//! signalfd, the child's signal reset, panics) are covered by the
//! `single_threaded` test target, which has no harness.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::libc;

use crate::{ChildExit, ChildPid, Children, ProcError, Signal, Signals};

/// `waitpid(-1)` in one test would reap another test's children.
static FORK_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forks a child that only calls `_exit(code)`.
fn spawn_exiting(code: i32) -> ChildPid {
    // SAFETY: the child only returns an integer, and `fork_child_unchecked`
    // then calls `_exit`; nothing in between allocates or locks.
    unsafe { crate::fork_child_unchecked(move || code) }.unwrap()
}

/// Forks a child that waits for a signal forever.
fn spawn_pausing() -> ChildPid {
    let child = || loop {
        // SAFETY: pause(2) is async-signal-safe and has no preconditions.
        unsafe { libc::pause() };
    };
    // SAFETY: the child only calls pause(2), which is async-signal-safe.
    unsafe { crate::fork_child_unchecked(child) }.unwrap()
}

/// Reaps through `children` until `pid` shows up, for at most 10 s.
fn reap_until<T>(children: &mut Children<T>, pid: ChildPid) -> crate::Reaped<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(reaped) = children.reap().unwrap() {
            if reaped.pid == pid {
                return reaped;
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    panic!("child {pid} was not reaped within 10 s");
}

#[test]
fn reaps_a_child_that_exits_with_a_code() {
    let _guard = lock();
    let mut children = Children::new();
    let pid = spawn_exiting(7);
    children.insert(pid, "seven");
    assert_eq!(children.len(), 1);
    let reaped = reap_until(&mut children, pid);
    assert_eq!(reaped.exit, ChildExit::Exited(7));
    assert_eq!(reaped.info, Some("seven"));
    assert!(children.is_empty());
    assert_eq!(reaped.exit.to_string(), "exited with status 7");
}

#[test]
fn reaps_a_child_killed_by_a_signal() {
    let _guard = lock();
    let mut children = Children::new();
    let pid = spawn_pausing();
    children.insert(pid, ());
    assert_eq!(children.signal_all(Signal::KILL).unwrap(), 1);
    let reaped = reap_until(&mut children, pid);
    assert_eq!(reaped.exit, ChildExit::Signaled { signal: Signal::KILL, core_dumped: false });
    assert_eq!(reaped.exit.to_string(), "killed by signal 9 (SIGKILL)");
    assert!(!reaped.exit.success());
}

#[test]
fn one_reap_ready_pass_collects_every_child_that_has_exited() {
    let _guard = lock();
    let mut children = Children::new();
    let mut pids: Vec<ChildPid> = (0..20)
        .map(|code| {
            let pid = spawn_exiting(code);
            children.insert(pid, code);
            pid
        })
        .collect();
    // All twenty exit before the parent looks, as when their SIGCHLDs
    // coalesce into one wake-up.
    for &pid in &pids {
        wait_until_zombie(pid);
    }
    // One pass, not a loop of calls: it goes on until waitpid finds nothing.
    let mut reaped: Vec<_> = children.reap_ready().map(Result::unwrap).collect();
    assert_eq!(reaped.len(), 20, "one pass reaped {reaped:?}");
    for child in &reaped {
        assert_eq!(child.exit, ChildExit::Exited(child.info.unwrap()), "{child:?}");
    }
    reaped.sort_by_key(|child| child.pid);
    pids.sort();
    assert_eq!(reaped.iter().map(|child| child.pid).collect::<Vec<_>>(), pids);
    assert!(children.is_empty());
    assert!(children.reap().unwrap().is_none(), "nothing left, no error either");
}

#[test]
fn unregistered_children_are_reaped_without_info() {
    let _guard = lock();
    let mut children: Children<()> = Children::new();
    let pid = spawn_exiting(3);
    let reaped = reap_until(&mut children, pid);
    assert_eq!(reaped.info, None);
    assert_eq!(reaped.exit, ChildExit::Exited(3));
}

#[test]
fn refuses_to_fork_a_multithreaded_process() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || rx.recv());
    let err = crate::fork_child(|| 0).unwrap_err();
    assert!(matches!(err, ProcError::MultiThreaded { threads } if threads >= 2), "{err:?}");
    assert!(err.to_string().starts_with("refusing to fork: the process has"));
    drop(tx);
    helper.join().unwrap().unwrap_err();
}

#[test]
fn decodes_raw_wait_statuses() {
    assert_eq!(ChildExit::from_wait_status(3 << 8), Some(ChildExit::Exited(3)));
    assert_eq!(
        ChildExit::from_wait_status(libc::SIGSEGV | 0x80),
        Some(ChildExit::Signaled { signal: Signal::from_raw(11).unwrap(), core_dumped: true })
    );
    // A stop report (0x7f in the low byte) is not an exit.
    assert_eq!(ChildExit::from_wait_status((libc::SIGSTOP << 8) | 0x7f), None);
    let rt = ChildExit::from_wait_status(40).unwrap();
    assert_eq!(rt.to_string(), "killed by signal 40");
    let segv = ChildExit::Signaled { signal: Signal::from_raw(11).unwrap(), core_dumped: true };
    assert_eq!(segv.to_string(), "killed by signal 11 (SIGSEGV), core dumped");
    assert_eq!(ChildExit::Unknown.to_string(), "ended with an unknown status");
}

#[test]
fn signal_numbers_are_checked() {
    assert_eq!(Signal::from_raw(0), None);
    assert_eq!(Signal::from_raw(65), None);
    assert_eq!(Signal::from_raw(15), Some(Signal::TERM));
    assert_eq!(Signal::TERM.to_string(), "SIGTERM");
    assert_eq!(Signal::from_raw(40).unwrap().to_string(), "signal 40");
    assert_eq!(ChildPid::from_raw(0), None);
    assert_eq!(ChildPid::from_raw(42).unwrap().as_raw(), 42);
}

#[test]
fn signalfd_reports_a_blocked_signal_and_descriptors() {
    let signals = Signals::new(&[Signal::USR1]).unwrap();
    let (mut tx, rx) = UnixStream::pair().unwrap();

    // Nothing pending: the timeout ends the wait.
    let wakeup = signals.wait(&[Some(rx.as_fd()), None], Some(Duration::from_millis(10))).unwrap();
    assert!(!wakeup.signaled);
    assert_eq!(wakeup.ready, vec![false, false]);
    assert_eq!(signals.next().unwrap(), None);

    // raise(3) targets this thread, which blocks SIGUSR1: it stays pending and
    // shows up on the signalfd instead of killing the test.
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR1).unwrap();
    tx.write_all(b"x").unwrap();
    let wakeup = signals.wait(&[Some(rx.as_fd()), None], Some(Duration::from_secs(5))).unwrap();
    assert!(wakeup.signaled);
    assert_eq!(wakeup.ready, vec![true, false]);
    assert_eq!(signals.next().unwrap(), Some(Signal::USR1));
    assert_eq!(signals.next().unwrap(), None);
}

#[test]
fn mask_guard_restores_the_previous_mask() {
    use nix::sys::signal::{SigSet, Signal as NixSignal};
    let before = SigSet::thread_get_mask().unwrap();
    assert!(!before.contains(NixSignal::SIGUSR2));
    {
        let _guard = crate::block(&[Signal::USR2]).unwrap();
        assert!(SigSet::thread_get_mask().unwrap().contains(NixSignal::SIGUSR2));
    }
    assert_eq!(SigSet::thread_get_mask().unwrap(), before);
}

#[test]
fn a_zombie_can_still_be_signalled_until_it_is_reaped() {
    let _guard = lock();
    let mut children = Children::new();
    let pid = spawn_exiting(0);
    children.insert(pid, ());
    // Exited but not reaped: the pid is still this child's, so kill(2) works
    // and cannot hit another process.
    wait_until_zombie(pid);
    assert_eq!(children.signal_all(Signal::TERM).unwrap(), 1);
    let reaped = reap_until(&mut children, pid);
    assert_eq!(reaped.exit, ChildExit::Exited(0), "a signal to a zombie changes nothing");
    assert_eq!(children.signal_all(Signal::TERM).unwrap(), 0, "nobody is left to signal");
}

/// Polls /proc until `pid` is a zombie, for at most 10 s.
fn wait_until_zombie(pid: ChildPid) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat.rsplit_once(')').unwrap().1.trim_start().starts_with('Z') {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("child {pid} did not exit within 10 s");
}

#[test]
fn guards_unblock_only_what_they_blocked_in_any_order() {
    use nix::sys::signal::{SigSet, Signal as NixSignal};
    let mask = || SigSet::thread_get_mask().unwrap();
    let first = crate::block(&[Signal::USR1]).unwrap();
    let second = crate::block(&[Signal::USR1, Signal::USR2]).unwrap();
    drop(first);
    assert!(!mask().contains(NixSignal::SIGUSR1), "the first guard blocked SIGUSR1");
    assert!(mask().contains(NixSignal::SIGUSR2), "the second guard still holds SIGUSR2");
    drop(second);
    assert!(!mask().contains(NixSignal::SIGUSR2));
}

#[test]
fn real_time_signals_can_be_blocked() {
    let rt = Signal::from_raw(libc::SIGRTMIN() + 2).unwrap();
    let guard = crate::block(&[rt]).unwrap();
    let raw = *nix::sys::signal::SigSet::thread_get_mask().unwrap().as_ref();
    // SAFETY: `raw` is a valid sigset_t, only read.
    assert_eq!(unsafe { libc::sigismember(&raw, rt.as_raw()) }, 1);
    drop(guard);
}

/// Whether `fd` is open, by `fcntl(F_GETFD)`; async-signal-safe.
fn is_open(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is allowed.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Forks a child that runs `close` and then reports, as its exit code, a bit
/// per wrong descriptor: 1 if the kept one was closed, 2 if a dropped one
/// survived, 4 if a standard stream was closed.
fn check_closing(close: fn(std::os::fd::RawFd) -> bool) {
    use std::os::fd::AsRawFd;
    let _guard = lock();
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..3).map(|_| UnixStream::pair().unwrap()).collect();
    let fds: Vec<i32> = pairs.iter().flat_map(|(a, b)| [a.as_raw_fd(), b.as_raw_fd()]).collect();
    // Keep one from the middle, so descriptors on both sides of it must go.
    let keep = fds[2];
    let dropped: [i32; 5] = [fds[0], fds[1], fds[3], fds[4], fds[5]];
    let child = move || {
        if !close(keep) {
            return 8;
        }
        let mut failures = 0;
        if !is_open(keep) {
            failures |= 1;
        }
        if dropped.iter().any(|&fd| is_open(fd)) {
            failures |= 2;
        }
        if !(0..=2).all(is_open) {
            failures |= 4;
        }
        failures
    };
    // SAFETY: the child only calls close_range/close/fcntl/getrlimit through
    // `close`, compares integers and returns; all async-signal-safe, no
    // allocation (the captured array is copied, not heap-allocated).
    let pid = unsafe { crate::fork_child_unchecked(child) }.unwrap();
    let mut children = Children::new();
    children.insert(pid, ());
    assert_eq!(reap_until(&mut children, pid).exit, ChildExit::Exited(0));
    drop(pairs);
}

#[test]
fn close_other_fds_keeps_only_the_standard_streams_and_the_kept_one() {
    check_closing(|keep| {
        // SAFETY: `keep` is open in this child for the whole call.
        let keep = unsafe { std::os::fd::BorrowedFd::borrow_raw(keep) };
        crate::close_other_fds(&[keep]).is_ok()
    });
}

#[test]
fn the_close_fallback_closes_every_number_up_to_the_limit() {
    // What runs on kernels without close_range(2): the same result.
    check_closing(|keep| {
        let keep = u32::try_from(keep).unwrap_or(3);
        crate::fds::close_each(3, keep - 1);
        crate::fds::close_each(keep + 1, u32::MAX);
        true
    });
}

#[test]
fn the_close_list_finds_inheritable_descriptors_and_closes_only_its_own() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _guard = lock();
    let (kept, _peer) = UnixStream::pair().unwrap();
    // dup(2) makes a descriptor without close-on-exec, as a launcher leaks one.
    // SAFETY: dup of a descriptor we own; the new one is owned below.
    let raw = unsafe { libc::dup(kept.as_raw_fd()) };
    assert!(raw > 2);
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let leaked = unsafe { OwnedFd::from_raw_fd(raw) };
    let (added, _other) = UnixStream::pair().unwrap();
    let mut list = crate::CloseList::leaked().unwrap();
    assert!(list.contains(leaked.as_fd()), "a descriptor without FD_CLOEXEC is listed");
    assert!(!list.contains(kept.as_fd()), "a close-on-exec descriptor is not");
    list.add(added.as_fd());
    let (kept_fd, leaked_fd, added_fd) = (kept.as_raw_fd(), raw, added.as_raw_fd());
    let child = move || {
        list.close();
        let mut failures = 0;
        if !is_open(kept_fd) {
            failures |= 1;
        }
        if is_open(leaked_fd) || is_open(added_fd) {
            failures |= 2;
        }
        if !(0..=2).all(is_open) {
            failures |= 4;
        }
        // Leaking the list's memory is fine: the child ends here.
        std::mem::forget(list);
        failures
    };
    // SAFETY: the child only calls close/fcntl and a try_lock, compares
    // integers and forgets the list instead of freeing it: no allocation, no
    // waiting for a lock.
    let pid = unsafe { crate::fork_child_unchecked(child) }.unwrap();
    let mut children = Children::new();
    children.insert(pid, ());
    assert_eq!(reap_until(&mut children, pid).exit, ChildExit::Exited(0));
    // The parent's descriptors are untouched.
    assert!(is_open(leaked_fd) && is_open(added_fd));
}

#[test]
fn signal_each_counts_the_signalled_and_lists_the_failures() {
    let _guard = lock();
    let mut children = Children::new();
    let live = spawn_pausing();
    children.insert(live, "live");
    // A pid no process has (beyond pid_max): kill(2) says ESRCH, which means
    // reaped behind the registry's back: neither sent nor an error.
    children.insert(ChildPid::from_raw(i32::MAX).unwrap(), "gone");
    let signalled = children.signal_each(Signal::TERM);
    assert_eq!((signalled.sent, signalled.errors.len()), (1, 0));
    assert_eq!(reap_until(&mut children, live).exit.to_string(), "killed by signal 15 (SIGTERM)");
    // (The EPERM path, a child that may not be signalled, cannot happen to
    // root, which these tests run as in CI.)
}

#[test]
fn status_gives_threads_and_the_caught_set() {
    let text = b"Name:\tx\nThreads:\t3\nSigQ:\t0/1\nSigIgn:\t0000000000001000\n\
                 SigCgt:\t8000000000004a02\nCapInh:\t0\n";
    let status = crate::fork::parse_status(text).unwrap();
    assert_eq!(status.threads, 3);
    assert_eq!(status.caught, Some(0x8000_0000_0000_4a02));
    // Without a whole SigCgt line, the child queries each signal instead.
    let no_mask = crate::fork::parse_status(b"Threads:\t1\n").unwrap();
    assert_eq!(no_mask.caught, None);
    let cut = crate::fork::parse_status(b"Threads:\t1\nSigCgt:\t00000000000").unwrap();
    assert_eq!(cut.caught, None, "a line cut by the read is not trusted");
    let wide = b"Threads:\t1\nSigCgt:\t00000000000000000000000000004a02\n";
    assert_eq!(crate::fork::parse_status(wide).unwrap().caught, None, "128 signals");
    assert_eq!(crate::fork::parse_status(b"Threads:\tx\nSigCgt:\t0\n"), None);
    assert_eq!(crate::fork::parse_status(b"Threads:\t1"), None, "a cut Threads line");
    // SIGINT is bit 1, SIGUSR1 bit 9, signal 64 the top bit.
    assert_eq!(crate::fork::signal_bit(2), 1 << 1);
    assert_eq!(crate::fork::signal_bit(10), 1 << 9);
    assert_eq!(crate::fork::signal_bit(64), 1 << 63);
    assert_eq!(crate::fork::signal_bit(65), 0);
    assert_eq!(crate::fork::signal_bit(0), 0);
}

#[test]
fn this_process_status_reads() {
    let status = crate::fork::status().unwrap();
    assert!(status.threads >= 1);
    // The Rust runtime catches SIGSEGV (stack overflow) in every program.
    assert_ne!(status.caught.unwrap() & crate::fork::signal_bit(libc::SIGSEGV), 0);
}

#[test]
fn wait_ready_reports_by_index_and_refuses_too_many() {
    let signals = Signals::new(&[Signal::USR2]).unwrap();
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let (_tx2, idle) = UnixStream::pair().unwrap();
    let quiet = Some(Duration::from_millis(10));

    let ready = signals.wait_ready([Some(idle.as_fd()), None, Some(rx.as_fd())], quiet).unwrap();
    assert_eq!(ready, crate::Ready::default(), "nothing pending");

    tx.write_all(b"x").unwrap();
    let ready = signals.wait_ready([Some(idle.as_fd()), None, Some(rx.as_fd())], quiet).unwrap();
    assert!(!ready.signaled);
    let seen: Vec<bool> = (0..4).map(|index| ready.is_ready(index)).collect();
    assert_eq!(seen, [false, false, true, false]);
    // An index past the capacity is simply not ready.
    assert!(!ready.is_ready(crate::Ready::CAPACITY + 3));

    // The last slot that fits, and one too many.
    let many = |count| std::iter::repeat_n(None, count - 1).chain([Some(rx.as_fd())]);
    let ready = signals.wait_ready(many(crate::Ready::CAPACITY), quiet).unwrap();
    assert!(ready.is_ready(crate::Ready::CAPACITY - 1));
    let err = signals.wait_ready(many(crate::Ready::CAPACITY + 1), quiet).unwrap_err();
    assert!(err.to_string().contains("cannot wait"), "{err}");
    assert!(format!("{:?}", err).contains("at most 64"), "{err:?}");
}

/// A small deterministic generator for the table's model test.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn the_pid_table_behaves_as_a_map() {
    use std::collections::HashMap;
    use std::rc::Rc;

    // Values count their drops: each must be dropped exactly once, whether
    // replaced, removed, moved by a growth or left in the table at its end.
    let token = Rc::new(());
    let mut table = crate::table::PidTable::new();
    let mut model: HashMap<ChildPid, u64> = HashMap::new();
    let mut state = 0x2545_f491_4f6c_dd1d;
    for step in 0..20_000 {
        // Few distinct pids (hits and misses both common), some clustered.
        let raw = 1 + (xorshift(&mut state) % 700) as i32;
        let pid = ChildPid::from_raw(if step % 3 == 0 { raw * 4096 } else { raw }).unwrap();
        match xorshift(&mut state) % 5 {
            0 | 1 => {
                let old = table.insert(pid, (step, Rc::clone(&token)));
                assert_eq!(old.map(|(v, _)| v), model.insert(pid, step), "insert {pid}");
            }
            2 | 3 => {
                assert_eq!(table.remove(pid).map(|(v, _)| v), model.remove(&pid), "remove {pid}");
            }
            _ => {
                if let Some((value, _)) = table.get_mut(pid) {
                    *value += 1;
                    *model.get_mut(&pid).unwrap() += 1;
                }
                assert_eq!(table.get(pid).map(|(v, _)| *v), model.get(&pid).copied());
            }
        }
        assert_eq!(table.len(), model.len());
        if step % 997 == 0 {
            let mut listed: Vec<_> = table.iter().map(|(pid, (v, _))| (pid, *v)).collect();
            let mut expected: Vec<_> = model.iter().map(|(&pid, &v)| (pid, v)).collect();
            listed.sort_unstable();
            expected.sort_unstable();
            assert_eq!(listed, expected, "step {step}");
        }
    }
    assert_eq!(Rc::strong_count(&token), 1 + model.len());
    for (_, (value, _)) in table.iter_mut() {
        *value = 0;
    }
    assert!(table.iter().all(|(_, (v, _))| *v == 0));
    drop(table);
    assert_eq!(Rc::strong_count(&token), 1, "every value dropped once");
}

#[test]
#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn a_forked_child_finds_the_registry_empty() {
    let _guard = lock();
    let mut children = Children::new();
    children.insert(spawn_pausing(), "pausing");
    let mut scratch = crate::pages::ParentPages::new(8192).unwrap();
    if !scratch.wiped_in_children() {
        eprintln!(
            "SKIP a_forked_child_finds_the_registry_empty: no MADV_WIPEONFORK (Linux < 4.14)"
        );
        crate::kill(children.pids().next().unwrap(), Signal::KILL).unwrap();
        let pausing = children.pids().next().unwrap();
        reap_until(&mut children, pausing);
        return;
    }
    scratch.as_mut_slice().fill(0xaa);
    // The child exits with what it sees: how many children the registry
    // lists, and whether the parent's pages read as zeros.
    let (registry, pages) = (&children, &scratch);
    let child = move || {
        // SAFETY: only reads bytes of the parent's mapping, which the child
        // has too (zero-filled or copied).
        let page = unsafe { std::slice::from_raw_parts(pages.as_ptr(), 8192) };
        let zeroed = page.iter().all(|&b| b == 0);
        i32::try_from(registry.len()).unwrap_or(99) * 2 + i32::from(!zeroed)
    };
    // SAFETY: the child only reads memory (the registry's count and the
    // pages) and returns an integer; nothing allocates or locks.
    let pid = unsafe { crate::fork_child_unchecked(child) }.unwrap();
    let mut reaper = Children::<()>::new();
    assert_eq!(reap_until(&mut reaper, pid).exit, ChildExit::Exited(0), "registry 0, pages 0");
    // The parent's own view is untouched.
    assert_eq!(children.len(), 1);
    assert!(scratch.as_mut_slice().iter().all(|&b| b == 0xaa));
    for pid in children.pids() {
        crate::kill(pid, Signal::KILL).unwrap();
    }
    let pausing = children.pids().next().unwrap();
    assert_eq!(reap_until(&mut children, pausing).info, Some("pausing"));
}

/// A descriptor several waiters share wakes one of them per event, not all;
/// each waiter's own descriptors still wake it.
#[test]
fn a_shared_descriptor_wakes_one_waiter_not_all() {
    use std::os::unix::net::UnixDatagram;
    use std::sync::mpsc;

    const WAITERS: usize = 4;
    let (shared, sender) = UnixDatagram::pair().unwrap();
    let shared = std::sync::Arc::new(shared);
    let (woke_tx, woke_rx) = mpsc::channel();
    let mut nudges = Vec::new();
    let mut threads = Vec::new();
    let mut tids = Vec::new();
    for waiter in 0..WAITERS {
        let (own, nudge) = UnixDatagram::pair().unwrap();
        nudges.push(nudge);
        let (shared, woke_tx) = (std::sync::Arc::clone(&shared), woke_tx.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        threads.push(std::thread::spawn(move || {
            let mut wait = crate::SharedWait::new().unwrap();
            let shared_index = wait.add_shared(shared.as_fd()).unwrap();
            let own_index = wait.add(own.as_fd()).unwrap();
            ready_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            // Bounded: every waiter is nudged on its own descriptor below.
            for _ in 0..100 {
                let ready = wait.wait().unwrap();
                if ready.is_ready(shared_index) || ready.is_ready(own_index) {
                    let _ = woke_tx.send((waiter, ready.is_ready(shared_index)));
                    return;
                }
            }
        }));
        tids.push(ready_rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    // One event, once every thread is in its wait: one that is not yet would
    // find the descriptor ready when it gets there, and count as woken.
    for tid in tids {
        let wchan = format!("/proc/self/task/{tid}/wchan");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match std::fs::read_to_string(&wchan) {
                Ok(at) if at.contains("epoll") => break,
                // No wait channel shown (a hardened kernel): a pause instead.
                Ok(at) if at.trim() == "0" || at.is_empty() => {
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
    sender.send(b"one").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let woken: Vec<_> = woke_rx.try_iter().collect();
    for nudge in &nudges {
        // Refused where the waiter has already returned (and closed its end).
        let _ = nudge.send(b"go");
    }
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(
        !woken.is_empty() && woken.iter().all(|&(_, shared)| shared),
        "the event woke a waiter: {woken:?}"
    );
    assert!(woken.len() < WAITERS, "one event woke every waiter: {woken:?}");
}
