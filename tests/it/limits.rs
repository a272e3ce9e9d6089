//! Limits and exhaustion: the child cap defers clients to the backlog, and
//! running out of descriptors or processes pauses accepting without dropping a
//! connection or spinning.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use integration_tests::process::Running;
use integration_tests::{Server, TIMEOUT, procfs};

use crate::{as_nobody, connect, echo, ipv6_or_skip, server, tool_or_skip};

/// Sets a resource limit of a running process with prlimit(1).
fn prlimit(pid: i32, limit: &str) {
    let status = Command::new("prlimit").args(["--pid", &pid.to_string(), limit]).status().unwrap();
    assert!(status.success(), "prlimit {limit} failed");
}

/// CPU time (user + system, in clock ticks) a process has used so far.
pub(crate) fn cpu_ticks(pid: i32) -> u64 {
    procfs::cpu_ticks(pid).unwrap().own
}

#[test]
fn at_the_child_limit_new_clients_wait_in_the_backlog() {
    let server = server("127.0.0.1", &["--max-children", "2"]);
    let (first, _second) = crate::filling_two_children(&server);

    // The third client's handshake completes in the kernel's backlog, but no
    // child serves it while two are alive.
    let mut third = crate::waiting_in_the_backlog(&server);
    assert_eq!(procfs::children_of(server.pid()).len(), 2);

    // When one client leaves, the waiting one is served, and nothing was lost.
    drop(first);
    third.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reply = [0; 5];
    third.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"three");
    server.wait_for_log(&["below the child limit; accepting again"], 1, TIMEOUT).unwrap();
    server.wait_for_children(2, TIMEOUT).unwrap();
}

/// The lowest descriptor number a process has free: its next `accept(2)` gets
/// it, and fails with EMFILE if `RLIMIT_NOFILE` is not above it.
fn lowest_free_descriptor(pid: i32) -> usize {
    let open: Vec<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).unwrap()
}

#[test]
fn out_of_descriptors_the_server_pauses_then_serves_the_waiting_client() {
    if !tool_or_skip("prlimit") {
        return;
    }
    let server = server("127.0.0.1", &[]);
    // A limit at the next free descriptor: the next accept(2) fails with EMFILE.
    let limit = lowest_free_descriptor(server.pid());
    prlimit(server.pid(), &format!("--nofile={limit}:4096"));
    let mut client = connect(&server);
    client.write_all(b"patience").unwrap();
    server.wait_for_log(&["cannot accept; pausing", "Too many open files"], 1, TIMEOUT).unwrap();

    // Backing off, not spinning: over a second of exhaustion the server uses a
    // small fraction of a CPU (a busy loop would use all of it).
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server.pid()) - before;
    assert!(used < 30, "the server used {used} ticks of CPU in 100 while out of descriptors");
    let warnings = server.log().iter().filter(|l| l.contains("WARN")).count();
    assert_eq!(warnings, 1, "an episode is one warning:\n{}", server.log().join("\n"));

    // More descriptors: the waiting client is served, its bytes intact.
    prlimit(server.pid(), "--nofile=1024:4096");
    let mut reply = [0; 8];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"patience");
    server.wait_for_log(&["accepting again"], 1, TIMEOUT).unwrap();
}

#[test]
fn a_connection_accepted_with_the_last_descriptor_is_still_served() {
    if !tool_or_skip("prlimit") {
        return;
    }
    let server = server("127.0.0.1", &[]);
    // Room for exactly one more descriptor: accept takes it, and the fork
    // that follows (with its thread check) must not need another.
    let limit = lowest_free_descriptor(server.pid()) + 1;
    prlimit(server.pid(), &format!("--nofile={limit}:4096"));
    let mut client = connect(&server);
    echo(&mut client, b"last one");
    drop(client);
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
    let log = server.log().join("\n");
    assert!(!log.contains("cannot fork"), "{log}");
}

#[test]
fn when_fork_fails_the_connection_is_kept_and_served_later() {
    // RLIMIT_NPROC is not enforced for root, so the server runs as nobody, with
    // a limit that nobody's processes already reach: the server itself plus a
    // placeholder. Every fork then fails with EAGAIN until the placeholder goes.
    if !tool_or_skip("prlimit") {
        return;
    }
    let Some(nobody) = as_nobody() else { return };
    let mut sleep = Command::new("setpriv");
    sleep.args(&nobody.wrapper[1..]).args(["sleep", "60"]);
    // Killed by pid when dropped, whatever happens below.
    let mut placeholder = Running::spawn(sleep).unwrap();
    let placeholder_pid = placeholder.pid();
    integration_tests::wait_until(TIMEOUT, "the placeholder to run as nobody", || {
        let comm = std::fs::read_to_string(format!("/proc/{placeholder_pid}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    })
    .unwrap();
    let limit = format!("--nproc={}:4096", procfs::tasks_of_uid(65534) + 1);
    let mut wrapper = nobody.wrapper.clone();
    wrapper.extend(["prlimit", &limit, "--"]);
    let server =
        Server::start_wrapped_at(&wrapper, nobody.server.path(), "127.0.0.1", &[]).unwrap();

    let mut client = connect(&server);
    client.write_all(b"held").unwrap();
    let waiting = ["cannot fork; keeping the connection", "Resource temporarily unavailable"];
    let logged = server.wait_for_log(&waiting, 1, TIMEOUT);
    let children = procfs::children_of(server.pid());

    // Free a process slot: the held connection is forked for and served.
    placeholder.kill();
    logged.unwrap();
    assert!(children.is_empty(), "forked despite the limit: {children:?}");
    let mut reply = [0; 4];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"held");
    server.wait_for_log(&["forking again"], 1, TIMEOUT).unwrap();
}

#[test]
fn an_idle_peer_is_disconnected_after_the_idle_timeout() {
    let server = server("127.0.0.1", &["--idle-timeout", "0.3"]);
    let mut quiet = connect(&server);
    echo(&mut quiet, b"then silence");
    let mut rest = Vec::new();
    quiet.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.wait_for_log(&["peer idle for 0.3 s; closing the connection"], 1, TIMEOUT).unwrap();
    server.wait_for_log(&["child exited with status 2"], 1, TIMEOUT).unwrap();
}

#[test]
fn with_an_idle_timeout_of_0_a_silent_connection_is_served_and_stays_open() {
    // 0 means never: not a zero timeout on the socket, which std refuses
    // (every child would fail its set-up), nor one that ends at once.
    let server = server("127.0.0.1", &["--idle-timeout", "0"]);
    let mut quiet = connect(&server);
    echo(&mut quiet, b"served");
    // Over a second of silence: no close (EOF) and no reset, only our timeout.
    quiet.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let err = quiet.read(&mut [0; 1]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err:?}");
    server.wait_for_children(1, TIMEOUT).unwrap();
    // And it still echoes.
    quiet.set_read_timeout(Some(TIMEOUT)).unwrap();
    echo(&mut quiet, b"still here after the silence");
    let log = server.log().join("\n");
    assert!(!log.contains("idle"), "{log}");
    assert!(!log.contains("child exited"), "{log}");
}

#[test]
fn a_peer_that_stops_reading_is_disconnected_after_the_idle_timeout() {
    let server = server("127.0.0.1", &["--idle-timeout", "0.3"]);
    let mut flooder = connect(&server);
    flooder.set_write_timeout(Some(TIMEOUT)).unwrap();
    // Write and never read: once the buffers fill, the child's writes stall,
    // and it gives up; our writes then fail instead of blocking.
    let chunk = vec![0_u8; 1 << 20];
    let failed = (0..1000).find_map(|_| flooder.write_all(&chunk).err());
    let err = failed.expect("1 GiB went into a connection nobody reads");
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "expected a reset, got {err:?}"
    );
    server.wait_for_log(&["peer idle for 0.3 s"], 1, TIMEOUT).unwrap();
    server.wait_for_log(&["child exited with status 2"], 1, TIMEOUT).unwrap();
}

#[test]
fn at_the_child_limit_no_listener_is_starved() {
    // Two listeners, one child at a time: a client waiting on ::1 must get the
    // next free slot rather than wait behind every IPv4 client queued after it.
    if !ipv6_or_skip() {
        return;
    }
    let server = server("127.0.0.1", &["--bind", "::1", "--max-children", "1"]);
    let port = server.addr().port();
    let mut holder = connect(&server);
    echo(&mut holder, b"holding the only slot");
    let mut waiting_v6 = TcpStream::connect(("::1", port)).unwrap();
    waiting_v6.set_read_timeout(Some(TIMEOUT)).unwrap();
    waiting_v6.write_all(b"v6").unwrap();
    let mut waiting_v4: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    for client in &mut waiting_v4 {
        client.write_all(b"v4").unwrap();
    }
    drop(holder);
    // The IPv6 client is served next...
    let mut reply = [0; 2];
    waiting_v6.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"v6");
    // ...while every IPv4 client still waits (the slot is the IPv6 client's).
    for client in &mut waiting_v4 {
        client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let err = client.read(&mut [0; 2]).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err:?}");
    }
    // Then the others, one at a time.
    drop(waiting_v6);
    for client in &mut waiting_v4 {
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut reply = [0; 2];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"v4");
        client.shutdown(std::net::Shutdown::Both).unwrap();
    }
}
