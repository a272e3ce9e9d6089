//! Socket activation as systemd does it, driven by systemd-socket-activate
//! (package systemd): `Accept=no` (it binds, waits for the first client, then
//! execs the server with the listening socket as descriptor 3, `LISTEN_FDS`),
//! and `Accept=yes`, inetd style (it accepts, and starts `echo-server
//! --inetd` for each connection with the connection on stdin and stdout).
//!
//! systemd-socket-activate refuses port 0, so each test asks the kernel for a
//! free ephemeral port on 127.0.0.1 and hands that over (retried if another
//! process takes it in between).

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use integration_tests::process::Running;
use integration_tests::{TIMEOUT, binary, wait_until};

use crate::{Ready, started_on_a_free_port};

/// systemd-socket-activate listening on a free port of 127.0.0.1 (or on
/// `listen`), about to start `echo-server ARGS` on the first connection, and
/// that address.
pub(crate) fn activate(
    flags: &[&str],
    listen: Option<&str>,
    args: &[&str],
) -> (Running, SocketAddr) {
    let server = binary("echo-server").unwrap();
    started_on_a_free_port("systemd-socket-activate", Ready::LogLine("Listening on "), |addr| {
        let listen = listen.map_or_else(|| addr.to_string(), str::to_owned);
        let mut command = Command::new("systemd-socket-activate");
        command.args(flags).args(["-l", &listen]).arg(&server).args(args).env_remove("RUST_LOG");
        command
    })
}

#[test]
fn the_server_serves_the_socket_systemd_passes() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    // PORT and --bind are given, and must not be used: the passed socket is
    // (were they used, the server would listen elsewhere and never answer).
    let (mut server, addr) = activate(&[], None, &["0", "--bind", "127.0.0.1"]);
    // The first client starts the server, and is served by it.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    crate::echo(&mut stream, b"activated");
    drop(stream);
    let log = server
        .wait_for_stderr(TIMEOUT, "the child's end", |line| {
            line.contains("child exited with status 0")
        })
        .unwrap();
    let passed = "serving 1 socket(s) passed by the service manager (LISTEN_FDS)";
    assert!(log.iter().any(|line| line.contains(passed)), "{log:#?}");
    assert!(log.iter().any(|line| line.contains(&format!("listening on {addr}"))), "{log:#?}");
    // A second client, after the first child is gone: still the same server.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    crate::echo(&mut stream, b"again");
    server.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    drop(stream);
    assert!(server.wait(TIMEOUT).unwrap().success(), "{:#?}", server.stderr());
}

#[test]
fn a_passed_descriptor_that_is_not_a_tcp_listener_is_an_error() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("echo-activate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("unix.sock");
    let _ = std::fs::remove_file(&path);
    let (mut server, _) = activate(&[], Some(path.to_str().unwrap()), &[]);
    // A Unix socket: the first connection starts the server, which refuses it.
    let _client = wait_until(TIMEOUT, "a connection to the Unix socket", || {
        std::os::unix::net::UnixStream::connect(&path).ok()
    })
    .unwrap();
    let status = server.wait(TIMEOUT).unwrap();
    let log = server.stderr();
    let errors: Vec<_> = log.iter().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(status.code(), Some(1), "{log:#?}");
    assert_eq!(errors.len(), 1, "{log:#?}");
    assert!(errors[0].contains("LISTEN_FDS: descriptor 3"), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inetd_mode_serves_the_connection_it_is_given_and_exits() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    let (manager, addr) = activate(&["--inetd", "-a"], None, &["--inetd"]);
    assert_eq!(crate::exchange(addr, b"first"), b"first");
    assert_eq!(crate::exchange(addr, b"second"), b"second");
    // One server process per connection, each gone with status 0.
    let log = wait_until(TIMEOUT, "two servers' exits", || {
        let log = manager.stderr();
        let exits = log.iter().filter(|line| line.ends_with("died with code 0")).count();
        (exits == 2).then_some(log)
    })
    .unwrap();
    let served = log.iter().filter(|line| line.contains("serving one connection (inetd mode)"));
    assert_eq!(served.count(), 2, "{log:#?}");
}

#[test]
fn inetd_mode_applies_the_access_rules() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    let (manager, addr) = activate(&["--inetd", "-a"], None, &["--inetd", "--deny", "127.0.0.0/8"]);
    crate::expect_unserved(addr, b"let me in");
    let log = manager
        .wait_for_stderr(TIMEOUT, "the refusal", |line| line.ends_with("died with code 1"))
        .unwrap();
    assert!(log.iter().any(|line| line.contains("refused a connection: denied")), "{log:#?}");
}

#[test]
fn inetd_mode_without_a_connection_is_a_one_line_error() {
    let done = integration_tests::Server::run(&[], &["--inetd"], TIMEOUT).unwrap();
    done.expect_error(1, &["standard input is not a TCP connection"]).unwrap();
}

#[test]
fn inetd_mode_runs_under_tcpserver() {
    if !crate::installed_or_skip("tcpserver") {
        return;
    }
    let server = binary("echo-server").unwrap();
    let ready = Ready::LogLine("tcpserver: status: 0/");
    let (manager, addr) = started_on_a_free_port("tcpserver", ready, |addr| {
        let mut command = Command::new("tcpserver");
        command.args(["-v", "-R", "-H", "-l", "0", "127.0.0.1", &addr.port().to_string()]);
        command.arg(&server).arg("--inetd").env_remove("RUST_LOG");
        command
    });
    assert_eq!(crate::exchange(addr, b"ucspi"), b"ucspi");
    let log = manager
        .wait_for_stderr(TIMEOUT, "the server's end", |line| line.contains(" status 0"))
        .unwrap();
    assert!(log.iter().any(|line| line.contains("serving one connection")), "{log:#?}");
}

#[test]
fn inetd_mode_never_logs_into_the_connection_on_descriptor_2() {
    // inetd and xinetd put the connection on descriptors 0, 1 and 2: a log
    // line on standard error would reach the client inside its echo.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let fd = |stream: &std::net::TcpStream| {
        std::process::Stdio::from(std::os::fd::OwnedFd::from(stream.try_clone().unwrap()))
    };
    let mut command = Command::new(binary("echo-server").unwrap());
    // Not -q: at the default level it has lines to log.
    command.arg("--inetd").env_remove("RUST_LOG");
    command.stdin(fd(&accepted)).stdout(fd(&accepted)).stderr(fd(&accepted));
    let mut server = command.spawn().unwrap();
    // The command holds its copies of the connection until dropped.
    drop(command);
    let _cleanup = integration_tests::process::KillOnDrop::new(server.id().try_into().unwrap());
    drop(accepted);
    let mut back = Vec::new();
    {
        use std::io::{Read, Write};
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        (&client).write_all(b"nothing but this").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        (&client).read_to_end(&mut back).unwrap();
    }
    assert_eq!(String::from_utf8_lossy(&back), "nothing but this");
    let status = wait_until(TIMEOUT, "the server's exit", || server.try_wait().ok().flatten());
    assert!(status.unwrap().success());
}

#[test]
fn listen_fds_without_this_process_s_pid_is_not_for_it() {
    // A stray LISTEN_FDS (no LISTEN_PID, or another process's): the server
    // binds as asked instead of taking descriptor 3.
    for env in [&["LISTEN_FDS=1"][..], &["LISTEN_FDS=1", "LISTEN_PID=1"]] {
        let wrapper: Vec<&str> = ["env"].iter().chain(env).copied().collect();
        let server = integration_tests::Server::start_wrapped(&wrapper, "127.0.0.1", &[]).unwrap();
        let log = server.log();
        assert!(!log.iter().any(|line| line.contains("LISTEN_FDS")), "{env:?}: {log:#?}");
        let mut stream = crate::connect(&server);
        crate::echo(&mut stream, b"bound, not inherited");
    }
}

#[test]
fn a_pool_on_a_passed_socket_serves_and_leaves_it_listening_at_shutdown() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    let args = ["--prefork", "2", "--connections-per-child", "0"];
    let (mut server, addr) = activate(&[], None, &args);
    // The first client starts the server; its idle children accept on the
    // passed socket themselves.
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(TIMEOUT)).unwrap();
    crate::echo(&mut held, b"held");
    server
        .wait_for_stderr(TIMEOUT, "the pool's mode", |line| {
            line.contains("idle children accept connections themselves")
        })
        .unwrap();
    server.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    server.wait_for_stderr(TIMEOUT, "shutdown", |line| line.contains("received SIGTERM")).unwrap();
    // The socket is the service manager's, which listens on after this
    // server (queueing clients for the next start): shutdown does not stop
    // it, so a client now is queued, not refused.
    let queued = std::net::TcpStream::connect(addr);
    assert!(queued.is_ok(), "{queued:?}: the passed socket was stopped");
    // The client being served is not disturbed.
    crate::echo(&mut held, b"still served");
    drop(held);
    assert!(server.wait(TIMEOUT).unwrap().success(), "{:#?}", server.stderr());
}
