//! Scaling out with the kernel's help: several `echo-server` instances sharing
//! one port (`--reuse-port`).

use std::io::{Read, Write};

use integration_tests::{Server, TIMEOUT, binary, wait_until};
use nix::sys::signal::Signal;

use crate::{exchange, server};

/// A second instance on `first`'s port, with `args`.
fn beside(first: &Server, args: &[&str]) -> Result<Server, String> {
    let port = first.addr().port().to_string();
    let mut all = vec![port.as_str(), "--bind", "127.0.0.1", "-v"];
    all.extend_from_slice(args);
    Server::start_program(&binary("echo-server").unwrap(), &all)
}

/// How many connections a server's log says it accepted.
fn accepted(server: &Server) -> usize {
    server.log().iter().filter(|line| line.contains("accepted a connection")).count()
}

#[test]
fn two_instances_share_a_port_and_the_kernel_spreads_clients_over_both() {
    let first = server("127.0.0.1", &["--reuse-port"]);
    let second = beside(&first, &["--reuse-port"]).unwrap();
    // Each connection comes from a new source port; the kernel picks an
    // instance by a hash of it: 64 all on one side would be a 1 in 2^63 event.
    for round in 0..64 {
        let message = format!("round {round}");
        assert_eq!(exchange(first.addr(), message.as_bytes()), message.as_bytes());
    }
    // The parents log each accept; wait until both logs have them all.
    wait_until(TIMEOUT, "64 accepted connections in the two logs", || {
        (accepted(&first) + accepted(&second) == 64).then_some(())
    })
    .unwrap();
    let (a, b) = (accepted(&first), accepted(&second));
    assert!(a > 0 && b > 0, "one instance served everything: first {a}, second {b}");
}

#[test]
fn without_reuse_port_a_second_instance_cannot_bind_the_port() {
    let first = server("127.0.0.1", &["--reuse-port"]);
    let port = first.addr().port().to_string();
    let second = Server::run(&[], &[&port, "--bind", "127.0.0.1"], TIMEOUT).unwrap();
    second.expect_error(1, &["Address already in use"]).unwrap();
}

#[test]
fn an_instance_that_shuts_down_serves_the_clients_already_queued_to_it() {
    let mut first = server("127.0.0.1", &["--reuse-port"]);
    let second = beside(&first, &["--reuse-port"]).unwrap();
    // Stopped, the first instance accepts nothing: the clients the kernel
    // hashes to it wait, handshake done, in its backlog.
    crate::stop(&first);
    let mut clients: Vec<std::net::TcpStream> = (0..16)
        .map(|index| {
            let mut stream = std::net::TcpStream::connect(first.addr()).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream.write_all(format!("client {index:02}").as_bytes()).unwrap();
            stream
        })
        .collect();
    // Shutdown starts as it wakes up: it takes what waits for it, serves it
    // through the grace period, and only then closes its listener (the other
    // instance could not take those clients).
    first.signal(Signal::SIGTERM).unwrap();
    first.signal(Signal::SIGCONT).unwrap();
    for (index, stream) in clients.iter_mut().enumerate() {
        let mut reply = [0; 9];
        stream.read_exact(&mut reply).unwrap_or_else(|e| panic!("client {index}: {e}"));
        assert_eq!(reply, format!("client {index:02}").as_bytes());
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let status = first.wait(TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", first.log());
    let queued = accepted(&first);
    assert!(queued > 0, "no client was queued to the stopped instance: {:?}", second.log());
    let taken = format!("connections={queued}");
    first
        .wait_for_log(&["took the connections waiting in the backlog", &taken], 1, TIMEOUT)
        .unwrap();
    wait_until(TIMEOUT, "the other 16 connections in the second log", || {
        (queued + accepted(&second) == 16).then_some(())
    })
    .unwrap();
    // The other instance serves on, alone now (the first has exited: its
    // listener is gone).
    assert_eq!(exchange(second.addr(), b"still here"), b"still here");
}
