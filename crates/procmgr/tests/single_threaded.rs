//! Scenarios that need a single-threaded process, exactly as a server runs:
//! the checked fork, SIGCHLD read from the signalfd, the child's signal reset,
//! and a panicking child. This target has no test harness (`harness = false`),
//! so `main` is the only thread; the scenarios run one after another.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{SigHandler, SigSet, Signal as NixSignal};
use procmgr::{ChildExit, ChildPid, Children, Fork, InChild, Signal, Signals};

fn main() {
    // Enough of libtest's interface for `cargo nextest` to list and run us.
    if std::env::args().any(|a| a == "--list") {
        println!("scenarios: test");
        return;
    }
    type Scenario = (&'static str, fn(&Signals));
    let scenarios: [Scenario; 13] = [
        ("checked fork, exit code through SIGCHLD", checked_fork_reports_exit_code),
        ("an exit before the parent waits is not lost", early_exit_is_not_lost),
        ("many exits, one wake-up, all reaped", coalesced_exits_are_all_reaped),
        ("the child's signal state is reset", child_signal_state_is_reset),
        ("SIGTERM reaches a child whose parent blocks it", child_can_be_terminated),
        ("a panicking child exits 101", panicking_child_exits_101),
        ("the low-level fork tells the sides apart", low_level_fork),
        ("a dropped InChild ends the child", dropped_in_child_ends_the_child),
        ("children reaped elsewhere leave the registry", children_reaped_elsewhere),
        ("threads are counted, and fork refuses a second one", fork_refuses_a_second_thread),
        ("an ignored SIGINT stays ignored in the child", ignored_signal_survives_the_reset),
        ("an orphan dies with its parent", orphan_dies_with_its_parent),
        ("ignored signals are listed and restored", ignored_signals_are_listed_and_restored),
    ];
    assert_eq!(procmgr::thread_count().unwrap(), 1, "this target must stay single-threaded");
    // Before anything else: an inherited "ignore SIGCHLD" must not make exits
    // vanish (the kernel would reap children itself and send no SIGCHLD).
    inherited_ignored_sigchld_is_undone();
    println!("test an inherited SIG_IGN for SIGCHLD is undone ... ok");
    // Block SIGCHLD before the first fork, as a server must.
    let signals = Signals::new(&[Signal::CHLD, Signal::TERM]).unwrap();
    for (name, scenario) in scenarios {
        scenario(&signals);
        println!("test {name} ... ok");
    }
    println!("\ntest result: ok. {} passed", scenarios.len() + 1);
}

/// Waits for SIGCHLD and reaps until `count` children have been reaped, for at
/// most 10 s; returns what was reaped.
fn reap_n<T>(
    signals: &Signals,
    children: &mut Children<T>,
    count: usize,
) -> Vec<procmgr::Reaped<T>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reaped = Vec::new();
    while reaped.len() < count {
        let left =
            deadline.checked_duration_since(Instant::now()).expect("children not reaped in 10 s");
        let wakeup = signals.wait(&[], Some(left)).unwrap();
        if !wakeup.signaled {
            continue;
        }
        while let Some(signal) = signals.next().unwrap() {
            assert_eq!(signal, Signal::CHLD);
        }
        reaped.extend(children.reap_ready().map(Result::unwrap));
    }
    reaped
}

fn checked_fork_reports_exit_code(signals: &Signals) {
    let mut children = Children::new();
    let pid = procmgr::fork_child(|| 42).unwrap();
    children.insert(pid, "answer");
    let reaped = reap_n(signals, &mut children, 1);
    assert_eq!(reaped[0].pid, pid);
    assert_eq!(reaped[0].exit, ChildExit::Exited(42));
    assert_eq!(reaped[0].info, Some("answer"));
    assert!(children.is_empty());
}

fn early_exit_is_not_lost(signals: &Signals) {
    let mut children = Children::new();
    let pid = procmgr::fork_child(|| 0).unwrap();
    children.insert(pid, ());
    // Let the child exit long before the parent looks: its SIGCHLD must stay
    // pending on the signalfd (the point of blocking it before the fork).
    wait_until_zombie(pid);
    let wakeup = signals.wait(&[], Some(Duration::ZERO)).unwrap();
    assert!(wakeup.signaled, "the SIGCHLD of an early exit was lost");
    assert_eq!(signals.next().unwrap(), Some(Signal::CHLD));
    let reaped = children.reap().unwrap().unwrap();
    assert_eq!((reaped.pid, reaped.exit), (pid, ChildExit::Exited(0)));
}

/// Polls /proc until `pid` is a zombie, for at most 10 s.
fn wait_until_zombie(pid: ChildPid) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit_once(')').unwrap().1.split_whitespace().next().unwrap();
        if state == "Z" {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("child {pid} did not exit within 10 s");
}

fn coalesced_exits_are_all_reaped(signals: &Signals) {
    let mut children = Children::new();
    let mut pids: Vec<ChildPid> = (0..20)
        .map(|code| {
            let pid = procmgr::fork_child(move || code).unwrap();
            children.insert(pid, code);
            pid
        })
        .collect();
    // Every child has exited before the parent looks: twenty exits, and the
    // kernel keeps one SIGCHLD pending, not twenty.
    for &pid in &pids {
        wait_until_zombie(pid);
    }
    let wakeup = signals.wait(&[], Some(Duration::ZERO)).unwrap();
    assert!(wakeup.signaled, "twenty exits and no SIGCHLD");
    let mut wakeups = 0;
    while let Some(signal) = signals.next().unwrap() {
        assert_eq!(signal, Signal::CHLD);
        wakeups += 1;
    }
    assert_eq!(wakeups, 1, "standard signals coalesce");
    // So one wake-up must be enough: a single reap_ready pass collects all.
    let mut reaped: Vec<_> = children.reap_ready().map(Result::unwrap).collect();
    assert_eq!(reaped.len(), 20, "one pass reaped only {reaped:?}");
    for child in &reaped {
        assert_eq!(child.exit, ChildExit::Exited(child.info.unwrap()), "{child:?}");
    }
    reaped.sort_by_key(|child| child.pid);
    pids.sort();
    assert_eq!(reaped.iter().map(|child| child.pid).collect::<Vec<_>>(), pids);
    assert!(children.is_empty());
    assert!(children.reap().unwrap().is_none(), "no zombie may outlive a reap cycle");
}

extern "C" fn noop_handler(_: libc::c_int) {}

fn disposition(signal: NixSignal) -> SigHandler {
    let probe = nix::sys::signal::SigAction::new(
        SigHandler::SigDfl,
        nix::sys::signal::SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: installs SIG_DFL for a moment to read the old action, then puts
    // the old action back; no handler of ours can run in between.
    let old = unsafe { nix::sys::signal::sigaction(signal, &probe) }.unwrap();
    // SAFETY: restores exactly what was installed before.
    unsafe { nix::sys::signal::sigaction(signal, &old) }.unwrap();
    old.handler()
}

/// `sigaction(2)` on a raw signal number: installs `handler` if given (no
/// flags, empty mask), returns the previous action.
///
/// # Safety
/// `handler` must be async-signal-safe.
unsafe fn raw_sigaction(
    signo: libc::c_int,
    handler: Option<libc::sighandler_t>,
) -> libc::sigaction {
    // SAFETY: all-zero bytes are a valid `sigaction` (SIG_DFL, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let new = match handler {
        Some(handler) => {
            action.sa_sigaction = handler;
            &raw const action
        }
        None => std::ptr::null(),
    };
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: `new` is null or a valid action whose handler the caller vouches
    // for; `old` is valid for one write.
    assert_eq!(unsafe { libc::sigaction(signo, new, old.as_mut_ptr()) }, 0);
    // SAFETY: zeroed is a valid `sigaction`, and the call wrote valid values.
    unsafe { old.assume_init() }
}

/// Puts `old` back as the action of `signo`.
///
/// # Safety
/// `old` must come from [`raw_sigaction`] on the same signal.
unsafe fn libc_sigaction_restore(signo: libc::c_int, old: &libc::sigaction) {
    // SAFETY: `old` is an action this process had installed before.
    assert_eq!(unsafe { libc::sigaction(signo, old, std::ptr::null_mut()) }, 0);
}

fn child_signal_state_is_reset(signals: &Signals) {
    let handler = nix::sys::signal::SigAction::new(
        SigHandler::Handler(noop_handler),
        nix::sys::signal::SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: `noop_handler` does nothing, which is async-signal-safe.
    let old_usr1 = unsafe { nix::sys::signal::sigaction(NixSignal::SIGUSR1, &handler) }.unwrap();
    // SIGCHLD is blocked and read from the signalfd, so this handler never
    // runs; the child must still not inherit it.
    // SAFETY: as above.
    let old_chld = unsafe { nix::sys::signal::sigaction(NixSignal::SIGCHLD, &handler) }.unwrap();
    // SAFETY: ignoring a signal installs no code.
    let old_usr2 =
        unsafe { nix::sys::signal::signal(NixSignal::SIGUSR2, SigHandler::SigIgn) }.unwrap();
    // A real-time signal: the caught set is 64 bits wide, not 32.
    let rt = libc::SIGRTMIN() + 5;
    let noop = noop_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: as above. nix has no `Signal` for real-time signals, hence libc.
    let old_rt = unsafe { raw_sigaction(rt, Some(noop)) };

    let mut children = Children::new();
    let pid = procmgr::fork_child(|| {
        let mut failures = 0;
        let mask = SigSet::thread_get_mask().unwrap();
        if mask.iter().next().is_some() {
            failures |= 1; // the mask must be empty
        }
        if !matches!(disposition(NixSignal::SIGUSR1), SigHandler::SigDfl) {
            failures |= 2; // a caught signal must be back to its default
        }
        if !matches!(disposition(NixSignal::SIGUSR2), SigHandler::SigIgn) {
            failures |= 4; // an ignored signal stays ignored
        }
        if !matches!(disposition(NixSignal::SIGPIPE), SigHandler::SigIgn) {
            failures |= 8; // so a write to a vanished peer is EPIPE
        }
        if !matches!(disposition(NixSignal::SIGCHLD), SigHandler::SigDfl) {
            failures |= 16;
        }
        // SAFETY: no new action: a pure query.
        let rt_handler = unsafe { raw_sigaction(rt, None) }.sa_sigaction;
        if rt_handler != libc::SIG_DFL {
            failures |= 32; // a caught real-time signal too
        }
        if !matches!(disposition(NixSignal::SIGSEGV), SigHandler::SigDfl) {
            failures |= 64; // and the Rust runtime's own stack-overflow handler
        }
        failures
    })
    .unwrap();
    children.insert(pid, ());
    let reaped = reap_n(signals, &mut children, 1);
    assert_eq!(reaped[0].exit, ChildExit::Exited(0), "failure bits in the exit status");

    // The parent's own state is untouched by the child's reset.
    assert!(matches!(disposition(NixSignal::SIGUSR1), SigHandler::Handler(_)));
    assert!(SigSet::thread_get_mask().unwrap().contains(NixSignal::SIGCHLD));
    // SAFETY: puts back the dispositions this scenario found.
    unsafe { nix::sys::signal::sigaction(NixSignal::SIGUSR1, &old_usr1) }.unwrap();
    // SAFETY: as above.
    unsafe { nix::sys::signal::sigaction(NixSignal::SIGCHLD, &old_chld) }.unwrap();
    // SAFETY: as above.
    unsafe { nix::sys::signal::signal(NixSignal::SIGUSR2, old_usr2) }.unwrap();
    // SAFETY: puts back what this scenario found.
    unsafe { libc_sigaction_restore(rt, &old_rt) };
}

fn child_can_be_terminated(signals: &Signals) {
    let mut children = Children::new();
    let pid = procmgr::fork_child(|| {
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    })
    .unwrap();
    children.insert(pid, ());
    assert_eq!(children.signal_all(Signal::TERM).unwrap(), 1);
    let reaped = reap_n(signals, &mut children, 1);
    assert_eq!(reaped[0].exit, ChildExit::Signaled { signal: Signal::TERM, core_dumped: false });
}

fn panicking_child_exits_101(signals: &Signals) {
    let mut children = Children::new();
    let pid = procmgr::fork_child(|| {
        std::panic::set_hook(Box::new(|_| {}));
        panic!("a panic must not unwind into the parent");
    })
    .unwrap();
    children.insert(pid, ());
    let reaped = reap_n(signals, &mut children, 1);
    assert_eq!(reaped[0].exit, ChildExit::Exited(InChild::PANIC_EXIT_CODE));
}

fn low_level_fork(signals: &Signals) {
    let mut children = Children::new();
    match procmgr::fork().unwrap() {
        Fork::Child(me) => me.exit(5),
        Fork::Parent(pid) => children.insert(pid, ()),
    }
    let reaped = reap_n(signals, &mut children, 1);
    assert_eq!(reaped[0].exit, ChildExit::Exited(5));
}

fn inherited_ignored_sigchld_is_undone() {
    // SAFETY: ignoring a signal installs no code.
    unsafe { nix::sys::signal::signal(NixSignal::SIGCHLD, SigHandler::SigIgn) }.unwrap();
    let signals = Signals::new(&[Signal::CHLD]).unwrap();
    assert!(matches!(disposition(NixSignal::SIGCHLD), SigHandler::SigDfl));
    let mut children = Children::new();
    children.insert(procmgr::fork_child(|| 3).unwrap(), ());
    let reaped = reap_n(&signals, &mut children, 1);
    assert_eq!(reaped[0].exit, ChildExit::Exited(3));
}

fn dropped_in_child_ends_the_child(signals: &Signals) {
    let mut children = Children::new();
    let pid = match procmgr::fork().unwrap() {
        Fork::Parent(pid) => pid,
        Fork::Child(me) => {
            // Forgetting to call `exit` must not let the child run on.
            drop(me);
            unreachable!("the child ended in InChild's drop");
        }
    };
    children.insert(pid, ());
    let reaped = reap_n(signals, &mut children, 1);
    assert_eq!(reaped[0].exit, ChildExit::Exited(InChild::DROPPED_EXIT_CODE));
}

fn children_reaped_elsewhere(_: &Signals) {
    // A registered pid that is not our child (init, here): waitpid says there
    // are no children, and the registry must let go of it.
    let mut children = Children::new();
    children.insert(ChildPid::from_raw(1).unwrap(), "not ours");
    let reaped = children.reap().unwrap().expect("the stale entry is reported");
    assert_eq!((reaped.exit, reaped.info), (ChildExit::Unknown, Some("not ours")));
    assert!(children.is_empty());
    assert!(children.reap().unwrap().is_none());
}

fn fork_refuses_a_second_thread(_: &Signals) {
    assert_eq!(procmgr::thread_count().unwrap(), 1);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || rx.recv());
    assert_eq!(procmgr::thread_count().unwrap(), 2);
    let err = procmgr::fork_child(|| 0).unwrap_err();
    assert!(matches!(err, procmgr::ProcError::MultiThreaded { threads: 2 }), "{err:?}");
    drop(tx);
    helper.join().unwrap().unwrap_err();
    // Joined: single-threaded again (the kernel may take a moment to reap it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while procmgr::thread_count().unwrap() != 1 {
        assert!(Instant::now() < deadline, "the helper thread never went away");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ignored_signal_survives_the_reset(signals: &Signals) {
    let mut children = Children::new();
    let pid = procmgr::fork_child(|| {
        if procmgr::ignore(&[Signal::INT]).is_err() {
            return 1;
        }
        // An ignored signal is discarded: the child carries on.
        let _ = nix::sys::signal::raise(NixSignal::SIGINT);
        0
    })
    .unwrap();
    children.insert(pid, ());
    assert_eq!(reap_n(signals, &mut children, 1)[0].exit, ChildExit::Exited(0));
    assert!(!matches!(disposition(NixSignal::SIGINT), SigHandler::SigIgn), "the parent's stays");
}

fn orphan_dies_with_its_parent(signals: &Signals) {
    use std::io::{Read, Write};
    // As a subreaper, this process adopts the orphaned grandchild and can reap it.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer and touches no memory.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let (mut ready_rx, mut ready_tx) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut children = Children::new();
    let middle = procmgr::fork_child(move || {
        let parent = std::process::id();
        let grandchild = procmgr::fork_child(move || {
            if procmgr::die_with_parent(Signal::TERM, parent).is_err() {
                return 9;
            }
            let _ = ready_tx.write_all(b"r");
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        });
        // Exit (and orphan the grandchild) once it has asked to follow us.
        match grandchild {
            Ok(_) if ready_rx.read_exact(&mut [0]).is_ok() => 0,
            _ => 1,
        }
    })
    .unwrap();
    children.insert(middle, "middle");
    let reaped = reap_n(signals, &mut children, 2);
    // SAFETY: as above, switching it off again.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) }, 0);
    let exits: Vec<_> = reaped.iter().map(|r| (r.info, r.exit)).collect();
    let term = ChildExit::Signaled { signal: Signal::TERM, core_dumped: false };
    assert!(exits.contains(&(Some("middle"), ChildExit::Exited(0))), "{exits:?}");
    assert!(exits.contains(&(None, term)), "the orphan did not get SIGTERM: {exits:?}");
}

fn ignored_signals_are_listed_and_restored(signals: &Signals) {
    let mut children = Children::new();
    let pid = procmgr::fork_child(|| {
        let rt = Signal::from_raw(libc::SIGRTMIN() + 3).unwrap();
        // As a launcher would leave them: SIGTERM, SIGHUP and a real-time one ignored.
        if procmgr::ignore(&[Signal::TERM, Signal::HUP, rt]).is_err() {
            return 1;
        }
        let ignored = procmgr::ignored_signals();
        let mut failures = 0;
        // SIGPIPE is ignored by the Rust runtime in every program.
        if ![Signal::TERM, Signal::HUP, Signal::PIPE, rt].iter().all(|s| ignored.contains(s)) {
            failures |= 2;
        }
        if ignored.contains(&Signal::USR1) || ignored.contains(&Signal::CHLD) {
            failures |= 4;
        }
        if procmgr::restore_default(&[Signal::TERM, Signal::HUP, rt]).is_err() {
            return 8;
        }
        let still = procmgr::ignored_signals();
        if still.contains(&Signal::TERM) || still.contains(&Signal::HUP) || still.contains(&rt) {
            failures |= 16;
        }
        if !still.contains(&Signal::PIPE) {
            failures |= 32; // only the named signals change
        }
        if !matches!(disposition(NixSignal::SIGTERM), SigHandler::SigDfl) {
            failures |= 64;
        }
        failures
    })
    .unwrap();
    children.insert(pid, ());
    assert_eq!(reap_n(signals, &mut children, 1)[0].exit, ChildExit::Exited(0), "failure bits");
}
