//! Shutdown on SIGTERM and SIGINT: the listener closes at once, children get a
//! grace period, then SIGTERM, then SIGKILL; every child is reaped; exit 0.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use integration_tests::process::KillOnDrop;
use integration_tests::{TIMEOUT, procfs};
use nix::sys::signal::Signal;

use crate::server;

fn connected(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"hi").unwrap();
    let mut reply = [0; 2];
    stream.read_exact(&mut reply).unwrap();
    stream
}

/// Stops the server's one child with SIGSTOP and waits until it is stopped. A
/// stopped process does not act on SIGTERM; only SIGKILL ends it.
fn stop_the_only_child(server: &integration_tests::Server) {
    let child = server.signal_only_child(Signal::SIGSTOP).unwrap();
    // Only once it is stopped: a pending SIGTERM would be taken before SIGSTOP.
    integration_tests::wait_until(TIMEOUT, "the child to stop", || {
        procfs::stat(child).filter(|p| p.state == 'T').map(drop)
    })
    .unwrap();
}

#[test]
fn without_grace_idle_children_are_terminated_and_reaped() {
    let mut server = server("127.0.0.1", &["--grace", "0"]);
    let _clients = [connected(server.addr()), connected(server.addr())];
    let children = server.wait_for_children(2, TIMEOUT).unwrap();

    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
    let log = server.log().join("\n");
    assert_eq!(log.matches("child killed by signal 15 (SIGTERM)").count(), 2, "{log}");
    assert!(log.contains("all children reaped; exiting"), "{log}");
    for child in children {
        assert!(procfs::stat(child.pid).is_none(), "child {} outlived the server", child.pid);
    }
}

#[test]
fn during_grace_the_listener_is_closed_but_clients_are_still_served() {
    let mut server = server("127.0.0.1", &["--grace", "600"]);
    let addr = server.addr();
    let mut client = connected(addr);
    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM"], 1, TIMEOUT).unwrap();

    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    client.write_all(b"still here").unwrap();
    let mut reply = [0; 10];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"still here");

    // The last client leaving ends the server long before the grace period.
    drop(client);
    let status = server.wait(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
    let log = server.log().join("\n");
    assert!(log.contains("child exited with status 0"), "{log}");
    assert!(!log.contains("sent SIGTERM"), "children were not given their grace: {log}");
}

#[test]
fn a_second_signal_cuts_the_grace_short() {
    let mut server = server("127.0.0.1", &["--grace", "600"]);
    let _client = connected(server.addr());
    server.wait_for_children(1, TIMEOUT).unwrap();
    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM"], 1, TIMEOUT).unwrap();
    server.signal(Signal::SIGINT).unwrap();
    let status = server.wait(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
    server.wait_for_log(&["child killed by signal 15 (SIGTERM)"], 1, TIMEOUT).unwrap();
}

#[test]
fn a_child_that_outlives_sigterm_is_killed() {
    let mut server = server("127.0.0.1", &["--grace", "0"]);
    let _client = connected(server.addr());
    stop_the_only_child(&server);
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
    let log = server.log().join("\n");
    assert!(log.contains("children outlived SIGTERM; sent SIGKILL"), "{log}");
    assert!(log.contains("child killed by signal 9 (SIGKILL)"), "{log}");
}

#[test]
fn ctrl_c_to_the_process_group_leaves_children_their_grace() {
    let mut server = server("127.0.0.1", &["--grace", "600"]);
    let mut client = connected(server.addr());
    server.wait_for_children(1, TIMEOUT).unwrap();
    // What a terminal does on Ctrl-C: SIGINT to every process in the group.
    server.signal_group(Signal::SIGINT).unwrap();
    server.wait_for_log(&["received SIGINT"], 1, TIMEOUT).unwrap();

    client.write_all(b"alive").unwrap();
    let mut reply = [0; 5];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"alive", "the child must survive the group's SIGINT");

    drop(client);
    let status = server.wait(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
}

#[test]
fn children_do_not_outlive_a_parent_killed_with_sigkill() {
    let mut server = server("127.0.0.1", &[]);
    let mut client = connected(server.addr());
    let child = server.wait_for_children(1, TIMEOUT).unwrap()[0].pid;
    // Should the child outlive its parent, the test kills it when it fails,
    // rather than leave it serving until its idle timeout.
    let _orphan = KillOnDrop::new(child);
    server.signal(Signal::SIGKILL).unwrap();
    // The kernel sends the child SIGTERM as its parent dies: it ends at once.
    // Whoever adopts it then may or may not reap it, but it no longer runs.
    integration_tests::wait_until(ORPHAN_DEADLINE, "the orphaned child to end", || {
        procfs::stat(child).is_none_or(|p| p.is_zombie()).then_some(())
    })
    .unwrap();
    let status = server.wait(TIMEOUT).unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "the server: {status}");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the connection closed with the child");
}

/// How long an orphan may take to end after its parent is killed: the
/// parent-death signal is sent as the parent exits, so a few seconds is
/// ample, and a missing one fails the test in seconds, not minutes.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(5);

#[test]
fn a_third_signal_kills_what_is_left() {
    let mut server = server("127.0.0.1", &["--grace", "600"]);
    let _client = connected(server.addr());
    stop_the_only_child(&server);
    for (signal, said) in [
        (Signal::SIGTERM, "received SIGTERM: closing the listeners"),
        (Signal::SIGINT, "sent SIGTERM to the remaining children"),
        (Signal::SIGTERM, "received SIGTERM again: killing the remaining children"),
    ] {
        server.signal(signal).unwrap();
        server.wait_for_log(&[said], 1, TIMEOUT).unwrap();
    }
    let status = server.wait(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
    server.wait_for_log(&["child killed by signal 9 (SIGKILL)"], 1, TIMEOUT).unwrap();
}
