//! Socket activation as systemd does it (`LISTEN_FDS`, `Accept=no`), driven
//! by systemd-socket-activate (package systemd), which binds, waits for the
//! first client, then execs the server with the socket as descriptor 3.
//!
//! systemd-socket-activate refuses port 0, so each test asks the kernel for a
//! free ephemeral port on 127.0.0.1 and hands that over (retried if another
//! process takes it in between).

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use integration_tests::process::Running;
use integration_tests::{TIMEOUT, binary, wait_until};

/// systemd-socket-activate listening on a free port of 127.0.0.1, about to
/// start `echo-server ARGS` on the first connection, and that address.
fn activate(listen: Option<&str>, args: &[&str]) -> (Running, SocketAddr) {
    let server = binary("echo-server").unwrap();
    for _ in 0..5 {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let listen = listen.map_or_else(|| addr.to_string(), str::to_owned);
        let mut command = Command::new("systemd-socket-activate");
        command.args(["-l", &listen]).arg(&server).args(args).env_remove("RUST_LOG");
        let mut manager = Running::spawn(command).unwrap();
        let up = wait_until(TIMEOUT, "systemd-socket-activate listening", || {
            let log = manager.stderr();
            if log.iter().any(|line| line.starts_with("Listening on ")) {
                return Some(true);
            }
            manager.try_status().map(|_| false)
        });
        if up == Ok(true) {
            return (manager, addr);
        }
    }
    panic!("systemd-socket-activate could not listen on a free port five times");
}

#[test]
fn the_server_serves_the_socket_systemd_passes() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    // PORT and --bind are given, and must not be used: the passed socket is
    // (were they used, the server would listen elsewhere and never answer).
    let (mut server, addr) = activate(None, &["0", "--bind", "127.0.0.1"]);
    // The first client starts the server, and is served by it.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    crate::echo(&mut stream, b"activated");
    drop(stream);
    let log = wait_until(TIMEOUT, "the child's end", || {
        let log = server.stderr();
        log.iter().any(|line| line.contains("child exited with status 0")).then_some(log)
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
    let (mut server, _) = activate(Some(path.to_str().unwrap()), &[]);
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
