//! Pool mode (`--prefork N`, `--connections-per-child M`): children forked
//! ahead of connections, which accept connections themselves when no
//! per-peer decision needs the parent, and are handed each one by the parent
//! otherwise; either way every decision, limit, log line and shutdown stage
//! of fork mode holds.

use std::io::{Read, Write};
use std::time::Duration;

use integration_tests::process::KillOnDrop;
use integration_tests::procfs::{self, SignalState};
use integration_tests::{Server, TIMEOUT, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::hygiene::{LEAKING_LAUNCHER, extra_descriptors};
use crate::{connect, echo, exchange, expect_unserved, server};

/// The pid a log line names (`pid=123`).
fn pid_in(line: &str) -> i32 {
    let (_, rest) = line.split_once("pid=").unwrap_or_else(|| panic!("no pid in {line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// The pids of the first `count` "accepted a connection" lines, in order.
fn served_by(server: &Server, count: usize) -> Vec<i32> {
    let lines = server.wait_for_log(&["accepted a connection"], count, TIMEOUT).unwrap();
    lines.iter().take(count).map(|line| pid_in(line)).collect()
}

/// The pid of the child that served the first connection, checked to be one
/// of `spares` (forked ahead, so no fork was on the connection's path), once
/// its exit is logged as that connection's end.
fn first_served_by_one_of(server: &Server, spares: &[i32]) -> i32 {
    let pid = served_by(server, 1)[0];
    assert!(spares.contains(&pid), "served by {pid}, not one of the spares {spares:?}");
    let exited = format!("pid={pid}");
    server
        .wait_for_log(&["child exited with status 0", &exited, "peer=127.0.0.1:"], 1, TIMEOUT)
        .unwrap();
    pid
}

/// The server's live children's pids, once there are exactly `count`.
fn children(server: &Server, count: usize) -> Vec<i32> {
    server.wait_for_children(count, TIMEOUT).unwrap().iter().map(|c| c.pid).collect()
}

#[test]
fn spares_are_forked_ahead_and_each_serves_one_connection() {
    let server = server("127.0.0.1", &["--prefork", "2"]);
    // Two children wait before any client comes.
    let spares = children(&server, 2);

    assert_eq!(exchange(server.addr(), b"first"), b"first");
    // The connection went to a child that was already there: no fork on its
    // path. It served one connection and exited, logged as in fork mode; a
    // new spare took its place.
    let pid = first_served_by_one_of(&server, &spares);
    let now = children(&server, 2);
    assert!(!now.contains(&pid), "the child that served is still there: {now:?}");

    assert_eq!(exchange(server.addr(), b"second"), b"second");
    let second = served_by(&server, 2)[1];
    assert_ne!(second, pid, "a single-use child served twice");
}

#[test]
fn with_no_limit_one_child_serves_connection_after_connection() {
    let server = server("127.0.0.1", &["--prefork", "1", "--connections-per-child", "0"]);
    for round in 0..3 {
        let message = format!("round {round}");
        assert_eq!(exchange(server.addr(), message.as_bytes()), message.as_bytes());
        // Each end is reported before the next client connects: the same
        // child is idle again, and gets the next one.
        server
            .wait_for_log(&["child served the connection with status 0"], round + 1, TIMEOUT)
            .unwrap();
    }
    let pids = served_by(&server, 3);
    assert!(pids.iter().all(|&pid| pid == pids[0]), "served by {pids:?}");
    assert!(procfs::stat(pids[0]).is_some_and(|p| !p.is_zombie()), "the child is gone");
    assert!(!server.log().iter().any(|line| line.contains("child exited")), "{:?}", server.log());
}

#[test]
fn a_child_serves_its_connections_per_child_then_is_replaced() {
    let server = server("127.0.0.1", &["--prefork", "1", "--connections-per-child", "2"]);
    for round in 0..3 {
        let message = format!("round {round}");
        assert_eq!(exchange(server.addr(), message.as_bytes()), message.as_bytes());
        // Wait for the child's report or exit, so the next connection goes
        // to whichever child is idle by then.
        let needles: &[&str] = if round == 1 { &["child exited"] } else { &["child served"] };
        server.wait_for_log(needles, 1 + usize::from(round == 2), TIMEOUT).unwrap();
    }
    let pids = served_by(&server, 3);
    assert_eq!(pids[0], pids[1], "the first child served once only: {pids:?}");
    assert_ne!(pids[2], pids[0], "the first child served a third time: {pids:?}");
    let exited = format!("pid={}", pids[0]);
    server.wait_for_log(&["child exited with status 0", &exited], 1, TIMEOUT).unwrap();
}

#[test]
fn a_reused_childs_client_is_released_at_the_end_of_its_connection() {
    let args = ["--prefork", "1", "--connections-per-child", "0", "--max-per-ip", "1"];
    let server = server("127.0.0.1", &args);
    let mut first = connect(&server);
    echo(&mut first, b"held");
    // One connection from 127.0.0.1 is the limit: the next is refused before
    // it reaches a child.
    expect_unserved(server.addr(), b"refused");
    server.wait_for_log(&["refused a connection"], 1, TIMEOUT).unwrap();

    // The child lives on after the first connection; its end (reported, not
    // an exit) frees the address's slot.
    drop(first);
    server.wait_for_log(&["child served the connection with status 0"], 1, TIMEOUT).unwrap();
    assert_eq!(exchange(server.addr(), b"admitted again"), b"admitted again");
}

#[test]
fn spares_count_against_the_child_limit() {
    let server = server("127.0.0.1", &["--prefork", "4", "--max-children", "2"]);
    children(&server, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.children().len(), 2, "more children than the limit");

    let (first, _second) = crate::filling_two_children(&server);
    // The third waits in the backlog, as in fork mode.
    let mut third = crate::waiting_in_the_backlog(&server);
    drop(first);
    let mut reply = [0; 5];
    third.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"three");
}

#[test]
fn at_shutdown_spares_exit_at_once_and_a_client_being_served_finishes() {
    let mut server = server("127.0.0.1", &["--prefork", "3", "--connections-per-child", "0"]);
    let mut held = connect(&server);
    echo(&mut held, b"before");
    let busy = served_by(&server, 1)[0];
    children(&server, 4);

    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM", "children=1"], 1, TIMEOUT).unwrap();
    // The idle ones go at once; the busy one serves on through the grace.
    assert_eq!(children(&server, 1), [busy]);
    echo(&mut held, b"during the grace period");
    drop(held);
    let status = server.wait(TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", server.log());
    server
        .wait_for_log(&["1 running at shutdown: 1 finished, 0 ended by SIGTERM"], 1, TIMEOUT)
        .unwrap();
}

#[test]
fn a_client_that_outlives_the_grace_period_is_ended_by_sigterm() {
    let mut server = server("127.0.0.1", &["--prefork", "2", "--grace", "0.2"]);
    let mut held = connect(&server);
    echo(&mut held, b"held");
    server.signal(Signal::SIGTERM).unwrap();
    let status = server.wait(TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", server.log());
    server
        .wait_for_log(&["sent SIGTERM to the remaining children", "children=1"], 1, TIMEOUT)
        .unwrap();
    server
        .wait_for_log(&["1 running at shutdown: 0 finished, 1 ended by SIGTERM"], 1, TIMEOUT)
        .unwrap();
}

#[test]
fn a_spare_killed_while_idle_is_reported_and_replaced() {
    let server = server("127.0.0.1", &["--prefork", "1"]);
    let spare = children(&server, 1)[0];
    kill(Pid::from_raw(spare), Signal::SIGKILL).unwrap();
    let pid = format!("pid={spare}");
    let lines = server
        .wait_for_log(&["spare child killed by signal 9 (SIGKILL)", &pid], 1, TIMEOUT)
        .unwrap();
    assert!(lines[0].contains("WARN"), "{lines:?}");
    let replacement = children(&server, 1)[0];
    assert_ne!(replacement, spare);
    assert_eq!(exchange(server.addr(), b"still served"), b"still served");
}

/// The descriptors a pool child may hold besides stdio: its channel and the
/// report socket; when members accept, also the listener and its own epoll
/// set.
fn expected_pool_descriptors(members_accept: bool) -> (usize, Vec<String>) {
    if members_accept { (3, vec!["anon_inode:[eventpoll]".to_owned()]) } else { (2, Vec::new()) }
}

/// The descriptors besides stdio that `pid` holds: sockets, and the names of
/// the others.
fn pool_descriptors(pid: i32) -> (usize, Vec<String>) {
    let (sockets, others) = extra_descriptors(pid);
    (sockets, others.into_iter().map(|(_, to)| to).collect())
}

/// [`pool_descriptors`] once they are `expected`, or as they are after
/// [`TIMEOUT`]: a child just forked may still be setting itself up (closing
/// what it must not hold, making its epoll set); what it holds for good is
/// what counts.
fn settled_descriptors(pid: i32, expected: &(usize, Vec<String>)) -> (usize, Vec<String>) {
    let settled = wait_until(TIMEOUT, "the child's descriptors", || {
        let held = pool_descriptors(pid);
        (held == *expected).then_some(held)
    });
    settled.unwrap_or_else(|_| pool_descriptors(pid))
}

#[test]
fn a_pool_child_holds_its_channel_and_the_report_socket_and_nothing_of_its_siblings() {
    // Members accepting (the default), and the parent handing over (a
    // per-address limit needs the parent to see each connection).
    for (members_accept, policy) in [(true, &[][..]), (false, &["--max-per-ip", "64"][..])] {
        let mut args = vec!["--prefork", "3", "--connections-per-child", "0"];
        args.extend(policy);
        let server = Server::start_wrapped(&LEAKING_LAUNCHER, "127.0.0.1", &args).unwrap();
        // Every spare: what its kind of pool needs, nothing leaked, none of
        // the other children's channels, nothing blocked or caught.
        let expected = expected_pool_descriptors(members_accept);
        for pid in children(&server, 3) {
            let held = settled_descriptors(pid, &expected);
            assert_eq!(held, expected, "spare {pid}: {:?}", procfs::fds(pid));
            let state: SignalState = procfs::signal_state(pid).unwrap();
            assert!(state.blocked.is_empty() && state.caught.is_empty(), "spare {pid}: {state:?}");
        }
        // Serving: the connection besides.
        let mut held = connect(&server);
        echo(&mut held, b"ping");
        let busy = served_by(&server, 1)[0];
        let expected = (expected.0 + 1, expected.1);
        assert_eq!(pool_descriptors(busy), expected, "busy {busy}: {:?}", procfs::fds(busy));
    }
}

#[test]
fn idle_children_accept_for_themselves_while_the_parent_is_stopped() {
    let server = server("127.0.0.1", &["--prefork", "2"]);
    server.wait_for_log(&["idle children accept connections themselves"], 1, TIMEOUT).unwrap();
    let spares = children(&server, 2);
    // The parent cannot run: a connection served now never went through it.
    crate::stop(&server);
    let addr = server.addr();
    let reply = std::panic::catch_unwind(|| exchange(addr, b"parent stopped"));
    server.signal(Signal::SIGCONT).unwrap();
    assert_eq!(reply.unwrap(), b"parent stopped");
    // Once it runs again, the parent logs and counts the connection from the
    // member's report, and the member's exit as that connection's end.
    first_served_by_one_of(&server, &spares);
    assert!(!server.log().iter().any(|l| l.contains("spare child exited")), "{:?}", server.log());
}

#[test]
fn a_per_peer_policy_or_proxy_protocol_has_the_parent_hand_connections_over() {
    for extra in [&["--max-per-ip", "8"][..], &["--allow", "127.0.0.1"], &["--max-rate", "100"]] {
        let mut args = vec!["--prefork", "1"];
        args.extend(extra);
        let server = server("127.0.0.1", &args);
        let needle = "the parent accepts and hands each connection over";
        server.wait_for_log(&[needle], 1, TIMEOUT).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_eq!(exchange(server.addr(), b"handed"), b"handed", "{extra:?}");
    }
}

#[test]
fn every_connection_a_member_took_is_logged_and_counted_once() {
    // Members that accept for themselves report each connection they take,
    // serve it, and (at their last) exit at once, so an exit often reaches
    // the parent with reports still unread: that a connection was taken, or
    // (two per child) that the one before ended and the next was taken.
    // Every connection must still be logged and counted once, never as a
    // spare's quiet end nor folded into the previous client's. (The races
    // are of timing: without the parent's second look at the reports, about
    // one connection in a hundred here was lost.)
    const CONNECTIONS: usize = 150;
    for per_child in ["1", "2"] {
        let server = server("127.0.0.1", &["--prefork", "2", "--connections-per-child", per_child]);
        children(&server, 2);
        for round in 0..CONNECTIONS {
            let message = format!("round {round}");
            assert_eq!(exchange(server.addr(), message.as_bytes()), message.as_bytes());
        }
        // Each connection's end: the child's exit, or its report.
        let ends = |log: &[String]| {
            let exits = log.iter().filter(|l| l.contains("child exited with status 0"));
            let served = log.iter().filter(|l| l.contains("child served the connection"));
            exits.chain(served).filter(|l| l.contains("peer=127.0.0.1:")).count()
        };
        wait_until(TIMEOUT, "every connection's end logged", || {
            (ends(&server.log()) >= CONNECTIONS).then_some(())
        })
        .unwrap_or_else(|e| panic!("-c {per_child}: {e}: {:?}", server.log()));
        server.signal(Signal::SIGUSR1).unwrap();
        let stats = format!(
            "accepted {CONNECTIONS}, refused 0, deferred 0, active 0, exited 0: {CONNECTIONS},"
        );
        server.wait_for_log(&["counters:", &stats], 1, TIMEOUT).unwrap();
        let log = server.log();
        let accepted = log.iter().filter(|l| l.contains("accepted a connection")).count();
        assert_eq!((accepted, ends(&log)), (CONNECTIONS, CONNECTIONS), "-c {per_child}: {log:?}");
        assert!(!log.iter().any(|l| l.contains("spare child exited")), "{log:?}");
    }
}

#[test]
fn at_shutdown_new_clients_are_refused_though_a_busy_child_holds_the_listener() {
    // A member serving a connection holds a copy of the listener (it
    // accepts on it); shutdown must still refuse new clients at once, as in
    // fork mode, not queue them on a socket no one will accept from.
    let mut server = server("127.0.0.1", &["--prefork", "2", "--connections-per-child", "0"]);
    let mut held = connect(&server);
    echo(&mut held, b"held");
    served_by(&server, 1);
    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM", "children=1"], 1, TIMEOUT).unwrap();
    match std::net::TcpStream::connect(server.addr()) {
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}"),
        Ok(_) => panic!("a new client was let in after shutdown began"),
    }
    // The client being served is not disturbed.
    echo(&mut held, b"still served");
    drop(held);
    let status = server.wait(TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", server.log());
}

#[test]
fn pool_children_die_with_their_parent() {
    let server = server("127.0.0.1", &["--prefork", "2"]);
    let mut held = connect(&server);
    echo(&mut held, b"held");
    let pids = children(&server, 3);
    let _guards: Vec<KillOnDrop> = pids.iter().map(|&pid| KillOnDrop::new(pid)).collect();
    kill(Pid::from_raw(server.pid()), Signal::SIGKILL).unwrap();
    wait_until(TIMEOUT, "every pool child to die with its parent", || {
        pids.iter().all(|&pid| procfs::stat(pid).is_none_or(|p| p.is_zombie())).then_some(())
    })
    .unwrap();
}

#[test]
fn exec_mode_runs_the_program_in_a_pool_child() {
    let args = ["--prefork", "2", "--", "sh", "-c", "printf '%s ' \"$TCPREMOTEIP\"; exec cat"];
    let server = server("127.0.0.1", &args);
    let spares = children(&server, 2);
    assert_eq!(exchange(server.addr(), b"through cat"), b"127.0.0.1 through cat");
    let pid = served_by(&server, 1)[0];
    assert!(spares.contains(&pid), "served by {pid}, not one of the spares {spares:?}");
    let exited = format!("pid={pid}");
    server.wait_for_log(&["child exited with status 0", &exited], 1, TIMEOUT).unwrap();
}

#[test]
fn a_burst_that_outruns_the_spares_is_served_and_every_connection_closes() {
    // One spare, reused children, and sixteen clients at once: most find no
    // idle child and get one forked for them, while their connections are
    // open in the parent. Each must still be served and, after its client's
    // end, closed by the server: no child may keep a copy of a connection it
    // does not serve.
    let server = server("127.0.0.1", &["--prefork", "1", "--connections-per-child", "0"]);
    let mut streams: Vec<std::net::TcpStream> = (0..16).map(|_| connect(&server)).collect();
    for (index, stream) in streams.iter_mut().enumerate() {
        echo(stream, format!("client {index}").as_bytes());
    }
    for stream in &mut streams {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
    server.wait_for_log(&["child served the connection with status 0"], 16, TIMEOUT).unwrap();
    // Idle now, every child holds what a pool child needs, and no client's
    // connection.
    let expected = expected_pool_descriptors(true);
    for child in server.children() {
        let held = settled_descriptors(child.pid, &expected);
        assert_eq!(held, expected, "{}: {:?}", child.pid, procfs::fds(child.pid));
    }
}

#[test]
fn a_paused_pool_waits_without_spinning() {
    // One new connection a second: a burst holds the loop paused with the
    // pool short of spares. The parent must sleep through the pause, not
    // poll in a loop.
    let server = server("127.0.0.1", &["--prefork", "2", "--max-rate", "1"]);
    children(&server, 2);
    let mut streams: Vec<std::net::TcpStream> = (0..6).map(|_| connect(&server)).collect();
    for stream in &mut streams {
        stream.write_all(b"burst").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = crate::limits::cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = crate::limits::cpu_ticks(server.pid()) - before;
    assert!(used < 30, "the parent used {used} ticks of CPU in 100 while paused");
    for stream in &mut streams {
        let mut reply = [0; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"burst");
    }
}

#[test]
fn after_a_burst_idle_children_beyond_twice_the_spares_are_retired() {
    let server = server("127.0.0.1", &["--prefork", "1", "--connections-per-child", "0"]);
    let mut streams: Vec<std::net::TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for stream in &mut streams {
        echo(stream, b"burst");
    }
    drop(streams);
    server.wait_for_log(&["child served the connection with status 0"], 8, TIMEOUT).unwrap();
    // A second after the burst, twice the spares stay; the rest exit, logged.
    wait_until(TIMEOUT, "the pool trimmed to two", || (server.children().len() <= 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}: {} children", server.children().len()));
    assert!(server.log().iter().any(|line| line.contains("spare child exited with status 0")));
}

#[test]
fn finishing_the_backlog_at_shutdown_stays_within_the_child_limit() {
    // With --reuse-port, shutdown first takes what waits in the backlog. When
    // members accept, each connection the parent takes gets a member forked
    // for it: within --max-children, never past it, however many wait.
    let args = [
        "--reuse-port",
        "--prefork",
        "2",
        "--max-children",
        "4",
        "--grace",
        "0.3",
        "--connections-per-child",
        "0",
    ];
    let mut server = server("127.0.0.1", &args);
    let spares = children(&server, 2);
    // Stopped, the spares take nothing: eight clients wait in the backlog.
    for &pid in &spares {
        crate::stop_pid(pid);
    }
    let _guards: Vec<KillOnDrop> = spares.iter().map(|&pid| KillOnDrop::new(pid)).collect();
    let _clients: Vec<std::net::TcpStream> = (0..8).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(100));
    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM"], 1, TIMEOUT).unwrap();
    let most = server.children().len();
    for &pid in &spares {
        kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    }
    assert!(most <= 4, "{most} children at shutdown with --max-children 4: {:?}", server.log());
    let line = server.wait_for_log(&["took the connections waiting in the backlog"], 1, TIMEOUT);
    assert!(line.unwrap()[0].contains("connections=2"), "{:?}", server.log());
    let status = server.wait(TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", server.log());
}
