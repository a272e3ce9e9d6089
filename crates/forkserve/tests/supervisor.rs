//! The forkserve loop in process, seen through its typed [`Event`]s and its
//! admission seam ([`Admit`]), which the end-to-end tests over the echo-server
//! binary cannot see.
//!
//! `Server::bind` blocks SIGCHLD, SIGTERM and SIGINT in the calling thread and
//! `serve` returns only at shutdown, so each scenario forks a server process:
//! it binds 127.0.0.1 on a free port, reports the port and then every event as
//! one line over a socketpair, and forks a child per connection as usual. This
//! process plays the clients, reads the events (each wait bounded), sends the
//! shutdown signals and reaps the server, which must exit 0. A server left
//! behind by a failed scenario is killed and reaped by pid.
//!
//! This target has no test harness (`harness = false`), so `main` is the only
//! thread and may fork; the scenarios run one after another.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::time::{Duration, Instant};

use forkserve::{Admit, ChildExit, ChildPid, Connection, Event, Server, Signal, Verdict};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use procmgr::InChild;

/// The longest any one wait in this file may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a served client reads first.
const GREETING: &[u8] = b"hello\n";

/// How a child ends on SIGTERM, or SIGKILL.
const TERMINATED: ChildExit = ChildExit::Signaled { signal: Signal::TERM, core_dumped: false };
const KILLED: ChildExit = ChildExit::Signaled { signal: Signal::KILL, core_dumped: false };

fn main() {
    // Enough of libtest's interface for `cargo nextest` to list and run us.
    if std::env::args().any(|a| a == "--list") {
        println!("scenarios: test");
        return;
    }
    type Scenario = (&'static str, fn());
    let scenarios: [Scenario; 13] = [
        ("one connection: listening, accepted, reaped, shutdown, finished", one_connection),
        ("a refused connection is closed unserved; release frees the slot", refuse_and_release),
        ("a deferred connection is held, asked again, then served", deferred_then_served),
        ("a held connection is closed at shutdown, not released", held_at_shutdown),
        ("at the child limit clients wait in the backlog", child_limit),
        ("after the grace period children get SIGTERM", grace_then_terminate),
        ("a second signal cuts the grace period", second_signal_cuts_grace),
        ("a child that outlives SIGTERM gets SIGKILL", kill_after_terminate),
        ("a third signal kills at once; the listener is closed", third_signal_kills),
        ("a panicking child exits 101 and serving goes on", panicking_work),
        ("HUP, USR1 and USR2 are reported, not fatal", other_signals_are_reported),
        ("a descriptor the program opened stays open in children", own_descriptor_is_kept),
        ("an idle timeout of zero means none", zero_idle_timeout_means_none),
    ];
    assert_eq!(procmgr::thread_count().unwrap(), 1, "this target must stay single-threaded");
    for (name, scenario) in scenarios {
        scenario();
        println!("test {name} ... ok");
    }
    println!("\ntest result: ok. {} passed", scenarios.len());
}

// ---------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------

fn one_connection() {
    let grace = Duration::from_secs(3);
    let mut server = Running::start(|s| s.grace(grace), |mut conn| echo(&mut conn.stream, 7));
    serve_one(&mut server, b"ping", 7);
    server.signal(Signal::TERM);
    server.expect(Ev::ShutdownStarted { signal: Signal::TERM, children: 0, grace });
    server.expect(Ev::Finished);
    server.finish();
}

/// Signals an operator or a tool sends (logrotate's HUP, a counters request)
/// are events, and the server keeps serving through them.
fn other_signals_are_reported() {
    let mut server = Running::start(|s| s, |mut conn| echo(&mut conn.stream, 0));
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    server.signal(Signal::HUP);
    server.expect(Ev::Signal(Signal::HUP));
    server.signal(Signal::USR1);
    server.expect(Ev::Stats { accepted: 1, active: 1 });
    server.signal(Signal::USR2);
    server.expect(Ev::Signal(Signal::USR2));
    // The connection was never disturbed.
    client.write_all(b"still here").unwrap();
    let mut buf = [0; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    drop(client);
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: ChildExit::Exited(0) });
    server.stop_idle();
}

/// A descriptor the program opened itself (close-on-exec, as Rust opens them
/// all) is not closed in children: the work can use what it captured, and the
/// connection's local address is the listener's.
fn own_descriptor_is_kept() {
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    mine.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut server = Running::start(
        |s| s,
        move |conn| {
            let line = format!("child saw {} -> {}\n", conn.peer, conn.local);
            match (&theirs).write_all(line.as_bytes()) {
                Ok(()) => 0,
                Err(_) => 9,
            }
        },
    );
    let client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: ChildExit::Exited(0) });
    let mut line = Vec::new();
    let mut byte = [0; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(mine.read(&mut byte).unwrap(), 1, "the child's line ended early: {line:?}");
        line.push(byte[0]);
    }
    let expected = format!("child saw {peer} -> {}\n", server.addr);
    assert_eq!(String::from_utf8(line).unwrap(), expected);
    server.stop_idle();
}

/// `idle_timeout(Some(ZERO))` is "no timeout", not a zero `SO_RCVTIMEO`
/// (which the socket refuses, so every child would fail its set-up).
fn zero_idle_timeout_means_none() {
    let mut server = Running::start(
        |s| s.idle_timeout(Some(Duration::ZERO)),
        |mut conn| echo(&mut conn.stream, 0),
    );
    serve_one(&mut server, b"zero", 0);
    server.stop_idle();
}

/// One client: accepted, `message` echoed, closed, and its child reaped with
/// exit code `code`.
fn serve_one(server: &mut Running, message: &[u8], code: i32) {
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    client.write_all(message).unwrap();
    let mut reply = vec![0; message.len()];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(reply, message);
    drop(client);
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: ChildExit::Exited(code) });
}

/// The policy's reason for refusing a second connection from one address.
const BUSY: &str = "one connection per address at a time";

/// At most one live connection per address.
#[derive(Debug, Default)]
struct OnePerAddress(HashMap<IpAddr, usize>);

impl Admit for OnePerAddress {
    fn admit(&mut self, peer: SocketAddr) -> Verdict {
        let live = self.0.entry(peer.ip()).or_default();
        if *live >= 1 {
            return Verdict::Refuse(BUSY.into());
        }
        *live += 1;
        Verdict::Serve
    }

    fn release(&mut self, peer: SocketAddr) {
        if let Some(live) = self.0.get_mut(&peer.ip()) {
            *live = live.saturating_sub(1);
        }
    }
}

fn refuse_and_release() {
    let mut server = Running::start(|s| s.admit(OnePerAddress::default()), greet_then_echo);
    let mut first = connect(server.addr);
    let first_peer = first.local_addr().unwrap();
    let first_pid = server.expect_accepted(first_peer);
    expect_greeting(&mut first);

    // Same address while the first is live: closed unserved, with no fork.
    let mut second = connect(server.addr);
    let second_peer = second.local_addr().unwrap();
    server.expect(Ev::Refused { peer: second_peer, reason: BUSY.to_owned() });
    expect_eof(&mut second);

    // Once the first is reaped, the policy has been told and serves again.
    drop(first);
    server.expect(Ev::Reaped {
        pid: first_pid,
        peer: Some(first_peer),
        exit: ChildExit::Exited(0),
    });
    let mut third = connect(server.addr);
    let third_peer = third.local_addr().unwrap();
    let third_pid = server.expect_accepted(third_peer);
    expect_greeting(&mut third);
    drop(third);
    server.expect(Ev::Reaped {
        pid: third_pid,
        peer: Some(third_peer),
        exit: ChildExit::Exited(0),
    });
    server.stop_idle();
}

fn deferred_then_served() {
    let pause = Duration::from_millis(200);
    // Wait, and wait again when asked again; then serve.
    let mut asked = 0;
    let policy = move |_: SocketAddr| {
        asked += 1;
        if asked <= 2 { Verdict::Wait(pause) } else { Verdict::Serve }
    };
    let mut server = Running::start(|s| s.admit(policy), greet_then_echo);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    server.expect(Ev::Deferred { peer, pause });
    server.expect(Ev::Deferred { peer, pause });
    let pid = server.expect_accepted(peer);
    expect_greeting(&mut client);
    drop(client);
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: ChildExit::Exited(0) });
    server.stop_idle();
}

/// Serves the first connection and holds every later one for a long time; a
/// release for any connection but the one it served ends the server (a panic
/// in its loop: the scenario sees the event stream close).
#[derive(Debug, Default)]
struct ServeOneThenWait {
    served: Option<SocketAddr>,
    released: bool,
}

impl Admit for ServeOneThenWait {
    fn admit(&mut self, peer: SocketAddr) -> Verdict {
        if self.served.is_some() {
            return Verdict::Wait(Duration::from_secs(60));
        }
        self.served = Some(peer);
        Verdict::Serve
    }

    fn release(&mut self, peer: SocketAddr) {
        assert!(self.served == Some(peer) && !self.released, "{peer} released, never admitted");
        self.released = true;
    }
}

fn held_at_shutdown() {
    // A live child keeps the server in its grace period, so the held
    // connection must be closed by the server, not by its exit.
    let grace = 3 * PATIENCE;
    let settings = move |s: Server| s.admit(ServeOneThenWait::default()).grace(grace);
    let mut server = Running::start(settings, greet_then_sleep);
    let mut served = connect(server.addr);
    let served_peer = served.local_addr().unwrap();
    let pid = server.expect_accepted(served_peer);
    expect_greeting(&mut served);
    let mut held = connect(server.addr);
    let held_peer = held.local_addr().unwrap();
    server.expect(Ev::Deferred { peer: held_peer, pause: Duration::from_secs(60) });

    server.signal(Signal::TERM);
    server.expect(Ev::ShutdownStarted { signal: Signal::TERM, children: 1, grace });
    server.expect(Ev::DroppedAtShutdown(held_peer));
    expect_eof(&mut held);
    server.signal(Signal::TERM);
    server.expect(Ev::GraceCut(Signal::TERM));
    server.expect(Ev::Terminating(1));
    server.expect(Ev::Reaped { pid, peer: Some(served_peer), exit: TERMINATED });
    server.expect(Ev::Finished);
    server.finish();
}

fn child_limit() {
    let mut server = Running::start(|s| s.max_children(1), greet_then_echo);
    let mut first = connect(server.addr);
    let first_peer = first.local_addr().unwrap();
    let first_pid = server.expect_accepted(first_peer);
    server.expect(Ev::LimitReached(1));
    expect_greeting(&mut first);

    // The kernel completes the handshake, but nobody accepts it yet.
    let mut second = connect(server.addr);
    let second_peer = second.local_addr().unwrap();
    expect_silence(&mut second);

    drop(first);
    server.expect(Ev::Reaped {
        pid: first_pid,
        peer: Some(first_peer),
        exit: ChildExit::Exited(0),
    });
    server.expect(Ev::LimitCleared(0));
    let second_pid = server.expect_accepted(second_peer);
    server.expect(Ev::LimitReached(1));
    expect_greeting(&mut second);
    drop(second);
    server.expect(Ev::Reaped {
        pid: second_pid,
        peer: Some(second_peer),
        exit: ChildExit::Exited(0),
    });
    server.expect(Ev::LimitCleared(0));
    server.stop_idle();
}

fn grace_then_terminate() {
    let grace = Duration::from_millis(200);
    // SIGKILL would come long after this file stops waiting.
    let settings = move |s: Server| s.grace(grace).kill_after(3 * PATIENCE);
    let mut server = Running::start(settings, greet_then_sleep);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    expect_greeting(&mut client);
    server.signal(Signal::TERM);
    server.expect(Ev::ShutdownStarted { signal: Signal::TERM, children: 1, grace });
    server.expect(Ev::Terminating(1));
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: TERMINATED });
    server.expect(Ev::Finished);
    expect_eof(&mut client);
    server.finish();
}

fn second_signal_cuts_grace() {
    // Without the cut, the grace outlasts this file's patience.
    let grace = 3 * PATIENCE;
    let settings = move |s: Server| s.grace(grace).kill_after(3 * PATIENCE);
    let mut server = Running::start(settings, greet_then_sleep);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    expect_greeting(&mut client);
    server.signal(Signal::TERM);
    server.expect(Ev::ShutdownStarted { signal: Signal::TERM, children: 1, grace });
    // Only now: two SIGTERMs pending at once would be one.
    server.signal(Signal::TERM);
    server.expect(Ev::GraceCut(Signal::TERM));
    server.expect(Ev::Terminating(1));
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: TERMINATED });
    server.expect(Ev::Finished);
    server.finish();
}

fn kill_after_terminate() {
    let (grace, kill_after) = (Duration::from_millis(200), Duration::from_millis(200));
    let settings = move |s: Server| s.grace(grace).kill_after(kill_after);
    let mut server = Running::start(settings, ignore_term_then_sleep);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    // The child greets once it ignores SIGTERM.
    expect_greeting(&mut client);
    server.signal(Signal::TERM);
    server.expect(Ev::ShutdownStarted { signal: Signal::TERM, children: 1, grace });
    server.expect(Ev::Terminating(1));
    server.expect(Ev::Killing(1));
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: KILLED });
    server.expect(Ev::Finished);
    server.finish();
}

fn third_signal_kills() {
    let settings = |s: Server| s.grace(3 * PATIENCE).kill_after(3 * PATIENCE);
    let mut server = Running::start(settings, ignore_term_then_sleep);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    let pid = server.expect_accepted(peer);
    expect_greeting(&mut client);
    server.signal(Signal::TERM);
    server.expect_shutdown_started(1);
    server.signal(Signal::TERM);
    server.expect(Ev::GraceCut(Signal::TERM));
    server.expect(Ev::Terminating(1));
    // The server still runs (its child ignores SIGTERM), but no longer listens.
    let refused = TcpStream::connect_timeout(&server.addr, PATIENCE).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    server.signal(Signal::INT);
    server.expect(Ev::KillRequested(Signal::INT));
    server.expect(Ev::Killing(1));
    server.expect(Ev::Reaped { pid, peer: Some(peer), exit: KILLED });
    server.expect(Ev::Finished);
    server.finish();
}

fn panicking_work() {
    let mut server = Running::start(|s| s, panic_on_request);
    let mut doomed = connect(server.addr);
    let doomed_peer = doomed.local_addr().unwrap();
    let doomed_pid = server.expect_accepted(doomed_peer);
    doomed.write_all(b"!").unwrap();
    server.expect(Ev::Reaped {
        pid: doomed_pid,
        peer: Some(doomed_peer),
        exit: ChildExit::Exited(InChild::PANIC_EXIT_CODE),
    });
    expect_eof(&mut doomed);

    let mut next = connect(server.addr);
    let next_peer = next.local_addr().unwrap();
    let next_pid = server.expect_accepted(next_peer);
    next.write_all(b"?").unwrap();
    expect_greeting(&mut next);
    drop(next);
    server.expect(Ev::Reaped { pid: next_pid, peer: Some(next_peer), exit: ChildExit::Exited(0) });
    server.stop_idle();
}

// ---------------------------------------------------------------------------
// What the children do (each runs in a child of the server process).
// ---------------------------------------------------------------------------

/// Echoes until the client closes its side, then returns `code` (1 on an I/O
/// error).
fn echo(stream: &mut TcpStream, code: i32) -> i32 {
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return code,
            Ok(len) => {
                if stream.write_all(&buf[..len]).is_err() {
                    return 1;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return 1,
        }
    }
}

fn greet_then_echo(mut conn: Connection) -> i32 {
    match conn.stream.write_all(GREETING) {
        Ok(()) => echo(&mut conn.stream, 0),
        Err(_) => 1,
    }
}

fn greet_then_sleep(mut conn: Connection) -> i32 {
    match conn.stream.write_all(GREETING) {
        Ok(()) => sleep_until_orphaned(),
        Err(_) => 1,
    }
}

fn ignore_term_then_sleep(conn: Connection) -> i32 {
    match procmgr::ignore(&[Signal::TERM]) {
        Ok(()) => greet_then_sleep(conn),
        Err(_) => 1,
    }
}

/// Sleeps until a signal ends this child, or until its server is gone (so a
/// child that ignores SIGTERM cannot outlive a failed scenario).
fn sleep_until_orphaned() -> i32 {
    let server = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == server {
        std::thread::sleep(Duration::from_millis(50));
    }
    9
}

/// Panics if the client's first byte is `!`; otherwise greets and echoes.
fn panic_on_request(mut conn: Connection) -> i32 {
    let mut first = [0];
    if conn.stream.read_exact(&mut first).is_err() {
        return 1;
    }
    if first == *b"!" {
        // The expected panic need not clutter the test's output.
        std::panic::set_hook(Box::new(|_| {}));
        panic!("asked to panic");
    }
    greet_then_echo(conn)
}

// ---------------------------------------------------------------------------
// The clients (in this process).
// ---------------------------------------------------------------------------

/// A connection to the server, with bounded reads and writes.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A child serves this client: it reads the greeting.
fn expect_greeting(client: &mut TcpStream) {
    let mut buf = [0; GREETING.len()];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(buf, GREETING);
}

/// The connection was closed on the server's side: a read finds EOF.
fn expect_eof(client: &mut TcpStream) {
    let mut buf = [0; 64];
    let len = client.read(&mut buf).unwrap();
    assert_eq!(len, 0, "expected EOF, read {:?}", &buf[..len]);
}

/// Nothing arrives for a while: nobody serves this client (yet).
fn expect_silence(client: &mut TcpStream) {
    client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0; 64];
    match client.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected no reply yet, got {other:?}"),
    }
    client.set_read_timeout(Some(PATIENCE)).unwrap();
}

// ---------------------------------------------------------------------------
// The server process, and its events.
// ---------------------------------------------------------------------------

/// A server running in a child process of this one, and the events it
/// reports. Dropped unreaped (a scenario failed), it is killed with SIGKILL
/// and reaped; its own children get SIGTERM from the kernel when it dies.
struct Running {
    pid: ChildPid,
    /// Where it listens.
    addr: SocketAddr,
    /// This end of the socketpair its observer writes to.
    events: UnixStream,
    /// Bytes read from `events` that do not make a whole line yet.
    pending: Vec<u8>,
    /// Every event read so far, for failure messages.
    seen: Vec<Ev>,
    reaped: bool,
}

impl Running {
    /// Forks a server on 127.0.0.1, a free port, with `configure`d settings and
    /// `work` for each connection; returns once it reported `Listening`.
    fn start(
        configure: impl FnOnce(Server) -> Server,
        work: impl FnMut(Connection) -> i32,
    ) -> Self {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let test = std::process::id();
        let mut ours = Some(ours);
        let ours_in_child = &mut ours;
        let pid = procmgr::fork_child(move || {
            drop(ours_in_child.take());
            run_server(test, theirs, configure, work)
        })
        .unwrap();
        // The closure, and with it our copy of the server's end, is dropped.
        let mut server = Self {
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            events: ours.take().unwrap(),
            pending: Vec::new(),
            seen: Vec::new(),
            reaped: false,
        };
        let line = server.line();
        let port =
            line.as_deref().and_then(|l| l.strip_prefix("port ")).and_then(|p| p.parse().ok());
        let port: u16 = port.unwrap_or_else(|| panic!("expected the server's port, got {line:?}"));
        assert_ne!(port, 0);
        server.addr.set_port(port);
        server.expect(Ev::Listening(server.addr));
        server
    }

    /// The next line from the server, or `None` once it has closed its end;
    /// panics after [`PATIENCE`].
    fn line(&mut self) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event within {PATIENCE:?}; seen so far: {:#?}", self.seen);
            self.events.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0; 4096];
            match self.events.read(&mut buf) {
                Ok(0) => {
                    let partial = String::from_utf8_lossy(&self.pending);
                    assert!(partial.is_empty(), "the server ended mid-line: {partial:?}");
                    return None;
                }
                Ok(len) => self.pending.extend_from_slice(&buf[..len]),
                Err(e) if is_timeout_or_interrupt(e.kind()) => {}
                Err(e) => panic!("cannot read the server's events: {e}"),
            }
        }
    }

    /// The next event; panics if the server ended instead.
    fn next(&mut self) -> Ev {
        loop {
            let Some(line) = self.line() else {
                panic!("the server ended; events seen: {:#?}", self.seen);
            };
            let event = Ev::decode(&line);
            self.seen.push(event.clone());
            // A status comes with each tenth of the limit crossed, so with
            // every child at the small limits used here; the scenarios are
            // about the other events (echo-server's log tests the statuses).
            if !matches!(&event, Ev::Other(text) if text.starts_with("Status ")) {
                return event;
            }
        }
    }

    fn expect(&mut self, want: Ev) {
        let got = self.next();
        assert_eq!(got, want, "unexpected event; seen so far: {:#?}", self.seen);
    }

    /// Expects a child forked for `peer`; returns its pid.
    fn expect_accepted(&mut self, peer: SocketAddr) -> ChildPid {
        match self.next() {
            Ev::Accepted { pid, peer: got } if got == peer => pid,
            other => panic!("expected a child for {peer}, got {other:?}; seen: {:#?}", self.seen),
        }
    }

    /// Expects shutdown on SIGTERM with `children` alive (whatever the grace).
    fn expect_shutdown_started(&mut self, children: usize) {
        match self.next() {
            Ev::ShutdownStarted { signal, children: alive, .. }
                if signal == Signal::TERM && alive == children => {}
            other => panic!("expected shutdown, got {other:?}; seen: {:#?}", self.seen),
        }
    }

    fn signal(&self, signal: Signal) {
        procmgr::kill(self.pid, signal).unwrap();
    }

    /// Shuts down a server with no children: SIGTERM, then it finishes at once.
    fn stop_idle(mut self) {
        self.signal(Signal::TERM);
        self.expect_shutdown_started(0);
        self.expect(Ev::Finished);
        self.finish();
    }

    /// Reaps the server, which must exit 0 and report nothing more.
    fn finish(mut self) {
        let exit = self.wait_exit();
        let pid = Pid::from_raw(self.pid.as_raw());
        assert_eq!(exit, Ok(WaitStatus::Exited(pid, 0)), "events: {:#?}", self.seen);
        if let Some(line) = self.line() {
            panic!("an event after the end: {line:?}; seen before: {:#?}", self.seen);
        }
    }

    /// Reaps the server, waiting for it at most [`PATIENCE`].
    fn wait_exit(&mut self) -> Result<WaitStatus, String> {
        let pid = Pid::from_raw(self.pid.as_raw());
        let deadline = Instant::now() + PATIENCE;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(WaitStatus::StillAlive) => {
                    return Err(format!("server {pid} still running after {PATIENCE:?}"));
                }
                Ok(status) => {
                    self.reaped = true;
                    return Ok(status);
                }
                Err(errno) => {
                    self.reaped = true;
                    return Err(format!("cannot reap server {pid}: {errno}"));
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = procmgr::kill(self.pid, Signal::KILL);
            let _ = self.wait_exit();
        }
    }
}

fn is_timeout_or_interrupt(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// The server process: binds 127.0.0.1 on a free port, writes `port N` to
/// `events`, then serves with every event written there as a line. Exits 0
/// if `serve` returns `Ok`, 1 if it fails, 2 to 4 if it cannot start.
fn run_server(
    test: u32,
    mut events: UnixStream,
    configure: impl FnOnce(Server) -> Server,
    work: impl FnMut(Connection) -> i32,
) -> i32 {
    // Should the test process die, the server dies too (and its children,
    // which die with it).
    if procmgr::die_with_parent(Signal::KILL, test).is_err() {
        return 2;
    }
    let Ok(server) = Server::bind(&["127.0.0.1:0".parse().unwrap()], 128) else { return 3 };
    let port = server.local_addrs().first().map_or(0, SocketAddr::port);
    if events.write_all(format!("port {port}\n").as_bytes()).is_err() {
        return 4;
    }
    let server = configure(server).on_event(move |event| {
        // Nothing useful can be done if the test stopped reading.
        let _ = events.write_all(format!("{}\n", Ev::of(event).encode()).as_bytes());
    });
    match server.serve(work) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// An [`Event`] as an owned value, to cross from the server process to this
/// one as a line of words.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Listening(SocketAddr),
    Accepted {
        pid: ChildPid,
        peer: SocketAddr,
    },
    Refused {
        peer: SocketAddr,
        reason: String,
    },
    Deferred {
        peer: SocketAddr,
        pause: Duration,
    },
    Reaped {
        pid: ChildPid,
        peer: Option<SocketAddr>,
        exit: ChildExit,
    },
    LimitReached(usize),
    LimitCleared(usize),
    ShutdownStarted {
        signal: Signal,
        children: usize,
        grace: Duration,
    },
    DroppedAtShutdown(SocketAddr),
    GraceCut(Signal),
    KillRequested(Signal),
    Terminating(usize),
    Killing(usize),
    Finished,
    /// A signal with no job of its own.
    Signal(Signal),
    /// The counters: accepted and active.
    Stats {
        accepted: u64,
        active: usize,
    },
    /// Any other event (none is expected here), as its `Debug` text.
    Other(String),
}

impl Ev {
    fn of(event: &Event<'_>) -> Self {
        match *event {
            Event::Listening { addr } => Self::Listening(addr),
            Event::Accepted { pid, peer } => Self::Accepted { pid, peer },
            Event::Refused { peer, reason } => Self::Refused { peer, reason: reason.to_owned() },
            Event::Deferred { peer, pause } => Self::Deferred { peer, pause },
            Event::Reaped { pid, peer, exit } => Self::Reaped { pid, peer, exit },
            Event::LimitReached { limit } => Self::LimitReached(limit),
            Event::LimitCleared { children } => Self::LimitCleared(children),
            Event::ShutdownStarted { signal, children, grace } => {
                Self::ShutdownStarted { signal, children, grace }
            }
            Event::DroppedAtShutdown { peer } => Self::DroppedAtShutdown(peer),
            Event::GraceCut { signal } => Self::GraceCut(signal),
            Event::KillRequested { signal } => Self::KillRequested(signal),
            Event::Terminating { children } => Self::Terminating(children),
            Event::Killing { children } => Self::Killing(children),
            Event::Finished { .. } => Self::Finished,
            Event::Signal { signal } => Self::Signal(signal),
            Event::Stats { stats } => {
                Self::Stats { accepted: stats.accepted, active: stats.active }
            }
            ref other => Self::Other(format!("{other:?}").replace('\n', " ")),
        }
    }

    /// One line of words, without the newline; [`Ev::decode`] reads it back.
    fn encode(&self) -> String {
        match self {
            Self::Listening(addr) => format!("listening {addr}"),
            Self::Accepted { pid, peer } => format!("accepted {pid} {peer}"),
            Self::Refused { peer, reason } => format!("refused {peer} {reason}"),
            Self::Deferred { peer, pause } => format!("deferred {peer} {}", pause.as_nanos()),
            Self::Reaped { pid, peer, exit } => {
                let peer = peer.map_or_else(|| "-".to_owned(), |peer| peer.to_string());
                let exit = match exit {
                    ChildExit::Exited(code) => format!("exited {code}"),
                    ChildExit::Signaled { signal, core_dumped } => {
                        format!("signaled {} {}", signal.as_raw(), u8::from(*core_dumped))
                    }
                    ChildExit::Unknown => "unknown".to_owned(),
                };
                format!("reaped {pid} {peer} {exit}")
            }
            Self::LimitReached(limit) => format!("limit-reached {limit}"),
            Self::LimitCleared(children) => format!("limit-cleared {children}"),
            Self::ShutdownStarted { signal, children, grace } => {
                format!("shutdown-started {} {children} {}", signal.as_raw(), grace.as_nanos())
            }
            Self::DroppedAtShutdown(peer) => format!("dropped-at-shutdown {peer}"),
            Self::GraceCut(signal) => format!("grace-cut {}", signal.as_raw()),
            Self::KillRequested(signal) => format!("kill-requested {}", signal.as_raw()),
            Self::Terminating(children) => format!("terminating {children}"),
            Self::Killing(children) => format!("killing {children}"),
            Self::Finished => "finished".to_owned(),
            Self::Signal(signal) => format!("signal {}", signal.as_raw()),
            Self::Stats { accepted, active } => format!("stats {accepted} {active}"),
            Self::Other(text) => format!("other {text}"),
        }
    }

    /// Reads back a line from [`Ev::encode`]; panics on anything else.
    fn decode(line: &str) -> Self {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut w = Words { line, rest };
        let event = match tag {
            "listening" => Self::Listening(w.next()),
            "accepted" => Self::Accepted { pid: w.pid(), peer: w.next() },
            "refused" => Self::Refused { peer: w.next(), reason: w.rest().to_owned() },
            "deferred" => Self::Deferred { peer: w.next(), pause: Duration::from_nanos(w.next()) },
            "reaped" => {
                let pid = w.pid();
                let peer = if w.rest().starts_with("- ") {
                    w.word();
                    None
                } else {
                    Some(w.next())
                };
                let exit = match w.word() {
                    "exited" => ChildExit::Exited(w.next()),
                    "signaled" => {
                        ChildExit::Signaled { signal: w.signal(), core_dumped: w.next::<u8>() == 1 }
                    }
                    "unknown" => ChildExit::Unknown,
                    other => panic!("unknown exit {other:?} in event line {line:?}"),
                };
                Self::Reaped { pid, peer, exit }
            }
            "limit-reached" => Self::LimitReached(w.next()),
            "limit-cleared" => Self::LimitCleared(w.next()),
            "shutdown-started" => Self::ShutdownStarted {
                signal: w.signal(),
                children: w.next(),
                grace: Duration::from_nanos(w.next()),
            },
            "dropped-at-shutdown" => Self::DroppedAtShutdown(w.next()),
            "grace-cut" => Self::GraceCut(w.signal()),
            "kill-requested" => Self::KillRequested(w.signal()),
            "terminating" => Self::Terminating(w.next()),
            "killing" => Self::Killing(w.next()),
            "finished" => Self::Finished,
            "signal" => Self::Signal(w.signal()),
            "stats" => Self::Stats { accepted: w.next(), active: w.next() },
            "other" => return Self::Other(rest.to_owned()),
            _ => panic!("unknown event line {line:?}"),
        };
        assert!(w.rest().is_empty() || matches!(event, Self::Refused { .. }), "long line {line:?}");
        event
    }
}

/// The words of an event line, read one at a time.
struct Words<'a> {
    line: &'a str,
    rest: &'a str,
}

impl<'a> Words<'a> {
    fn word(&mut self) -> &'a str {
        let (word, rest) = self.rest.split_once(' ').unwrap_or((self.rest, ""));
        self.rest = rest;
        word
    }

    fn next<T: FromStr<Err: Debug>>(&mut self) -> T {
        let word = self.word();
        word.parse().unwrap_or_else(|e| panic!("bad {word:?} in event line {:?}: {e:?}", self.line))
    }

    fn pid(&mut self) -> ChildPid {
        ChildPid::from_raw(self.next()).unwrap()
    }

    fn signal(&mut self) -> Signal {
        Signal::from_raw(self.next()).unwrap()
    }

    fn rest(&self) -> &'a str {
        self.rest
    }
}
