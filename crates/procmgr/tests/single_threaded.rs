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
    let scenarios: [Scenario; 7] = [
        ("checked fork, exit code through SIGCHLD", checked_fork_reports_exit_code),
        ("an exit before the parent waits is not lost", early_exit_is_not_lost),
        ("many exits, one wake-up, all reaped", coalesced_exits_are_all_reaped),
        ("the child's signal state is reset", child_signal_state_is_reset),
        ("SIGTERM reaches a child whose parent blocks it", child_can_be_terminated),
        ("a panicking child exits 101", panicking_child_exits_101),
        ("the low-level fork tells the sides apart", low_level_fork),
    ];
    assert_eq!(procmgr::thread_count().unwrap(), 1, "this target must stay single-threaded");
    // Block SIGCHLD before the first fork, as a server must.
    let signals = Signals::new(&[Signal::CHLD, Signal::TERM]).unwrap();
    for (name, scenario) in scenarios {
        scenario(&signals);
        println!("test {name} ... ok");
    }
    println!("\ntest result: ok. {} passed", scenarios.len());
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
        let wakeup = signals.wait([], Some(left)).unwrap();
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
    let wakeup = signals.wait([], Some(Duration::ZERO)).unwrap();
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
    for code in 0..20 {
        children.insert(procmgr::fork_child(move || code).unwrap(), code);
    }
    let reaped = reap_n(signals, &mut children, 20);
    let mut codes: Vec<_> = reaped
        .iter()
        .map(|r| {
            assert_eq!(r.exit, ChildExit::Exited(r.info.unwrap()));
            r.info.unwrap()
        })
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, (0..20).collect::<Vec<_>>());
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

fn child_signal_state_is_reset(signals: &Signals) {
    let handler = nix::sys::signal::SigAction::new(
        SigHandler::Handler(noop_handler),
        nix::sys::signal::SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: `noop_handler` does nothing, which is async-signal-safe.
    let old_usr1 = unsafe { nix::sys::signal::sigaction(NixSignal::SIGUSR1, &handler) }.unwrap();
    // SAFETY: ignoring a signal installs no code.
    let old_usr2 =
        unsafe { nix::sys::signal::signal(NixSignal::SIGUSR2, SigHandler::SigIgn) }.unwrap();

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
    unsafe { nix::sys::signal::signal(NixSignal::SIGUSR2, old_usr2) }.unwrap();
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
