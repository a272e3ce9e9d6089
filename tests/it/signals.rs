//! Signals an operator or a tool sends: none but the shutdown signals ends the
//! server, each is logged, SIGUSR1 logs the counters, SIGQUIT shuts down at
//! once, and a signal the launcher ignored stays ignored.

use std::net::TcpStream;

use integration_tests::{Server, TIMEOUT};
use nix::sys::signal::Signal;

use crate::{echo, server};

/// A connection that has been echoed once, still open.
fn served(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    echo(&mut stream, b"first");
    stream
}

/// Sends signal number `signo` (real-time ones included) to `pid`.
fn send(pid: i32, signo: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the
    // pid is the server's, positive.
    assert_eq!(unsafe { nix::libc::kill(pid, signo) }, 0, "kill {pid} {signo}");
}

#[test]
fn hup_usr1_usr2_alrm_and_real_time_signals_are_logged_and_serving_goes_on() {
    let mut server = server("127.0.0.1", &[]);
    let mut client = served(&server);
    let rt = nix::libc::SIGRTMIN() + 1;
    let cases: [(i32, String); 5] = [
        (Signal::SIGHUP as i32, "received SIGHUP: nothing to reload; carrying on".into()),
        (Signal::SIGUSR1 as i32, "counters: accepted 1, refused 0".into()),
        (Signal::SIGUSR2 as i32, "received SIGUSR2: ignored; carrying on".into()),
        (Signal::SIGALRM as i32, "received SIGALRM: ignored; carrying on".into()),
        (rt, format!("received signal {rt}: ignored; carrying on")),
    ];
    for (signo, line) in &cases {
        send(server.pid(), *signo);
        server.wait_for_log(&[line], 1, TIMEOUT).unwrap();
        assert!(server.is_running(), "signal {signo} ended the server");
    }
    // The log's own counter follows the loop's.
    server.wait_for_log(&["log lines dropped: 0"], 1, TIMEOUT).unwrap();
    // The counters line has the live child and every field.
    server
        .wait_for_log(&["counters:", "active 1", "exited 0: 0", "fork failures 0"], 1, TIMEOUT)
        .unwrap();
    // The connection was never disturbed.
    echo(&mut client, b"still served");
    drop(client);
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn sigquit_shuts_down_without_the_grace_period() {
    // A long grace: only SIGQUIT's skipping it ends the held child quickly.
    let mut server = server("127.0.0.1", &["--grace", "600"]);
    let _held = served(&server);
    server.wait_for_children(1, TIMEOUT).unwrap();
    server.signal(Signal::SIGQUIT).unwrap();
    let status = server.wait(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
    let log = server.log().join("\n");
    assert!(log.contains("received SIGQUIT: closing the listeners"), "{log}");
    assert!(log.contains("sent SIGTERM to the remaining children"), "{log}");
    let summary = "all children reaped; exiting: served 1; 1 running at shutdown: \
                   0 finished, 1 ended by SIGTERM, 0 killed";
    assert!(log.contains(summary), "{log}");
}

#[test]
fn the_shutdown_summary_tells_finished_from_terminated_children() {
    let mut server = server("127.0.0.1", &["--grace", "2"]);
    // One client leaves during the grace period, one is still there after it.
    let leaving = served(&server);
    let _staying = served(&server);
    drop(served(&server)); // served and gone before shutdown
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
    server.wait_for_children(2, TIMEOUT).unwrap();
    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM"], 1, TIMEOUT).unwrap();
    drop(leaving);
    let status = server.wait(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
    let summary = "served 3; 2 running at shutdown: 1 finished, 1 ended by SIGTERM, 0 killed";
    server.wait_for_log(&[summary], 1, TIMEOUT).unwrap();
}

#[test]
fn sigint_ignored_by_the_launcher_stays_ignored() {
    // A non-interactive shell starts background jobs with SIGINT ignored, so
    // that a Ctrl-C meant for the script leaves them alone.
    let launcher = ["sh", "-c", "trap '' INT; exec \"$0\" \"$@\""];
    let mut server = Server::start_wrapped(&launcher, "127.0.0.1", &[]).unwrap();
    let mut client = served(&server);
    server.signal(Signal::SIGINT).unwrap();
    // Then a signal that is logged, to know the SIGINT has been dealt with.
    server.signal(Signal::SIGUSR2).unwrap();
    server.wait_for_log(&["received SIGUSR2"], 1, TIMEOUT).unwrap();
    assert!(server.is_running());
    let log = server.log().join("\n");
    assert!(!log.contains("SIGINT"), "{log}");
    echo(&mut client, b"still served");
    // SIGTERM still shuts it down.
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn with_q_the_counters_and_the_shutdown_summary_are_still_logged() {
    // An operator who asks for the counters gets them, however quiet the log.
    let mut server = server("127.0.0.1", &["-q"]);
    drop(served(&server));
    server.wait_for_children(0, TIMEOUT).unwrap();
    server.signal(Signal::SIGUSR1).unwrap();
    server.wait_for_log(&["counters: accepted 1"], 1, TIMEOUT).unwrap();
    server.wait_for_log(&["log lines dropped: 0"], 1, TIMEOUT).unwrap();
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
    server.wait_for_log(&["all children reaped; exiting: served 1"], 1, TIMEOUT).unwrap();
    // Quiet otherwise: no per-connection line.
    let log = server.log().join("\n");
    assert!(!log.contains("accepted a connection"), "{log}");
}
