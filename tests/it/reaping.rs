//! Reaping: every child is reaped and logged, whatever ends it, and the server
//! keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;

use integration_tests::{Client, TIMEOUT};
use nix::sys::signal::Signal;

use crate::server;

/// Connects, echoes one message, and returns the stream still open.
fn echoing_stream(server: &integration_tests::Server, message: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(message).unwrap();
    let mut reply = vec![0; message.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, message);
    stream
}

#[test]
fn a_child_killed_by_sigkill_is_reaped_and_logged_while_serving_goes_on() {
    let server = server("127.0.0.1", &[]);
    let mut victim = Client::connect(server.addr(), &["--mode", "lines"]).unwrap();
    victim.send(b"before\n").unwrap();
    victim.wait_for_output(7, TIMEOUT).unwrap();
    let child = server.signal_only_child(Signal::SIGKILL).unwrap();
    let pid = format!("pid={child}");
    server.wait_for_log(&["child killed by signal 9 (SIGKILL)", &pid], 1, TIMEOUT).unwrap();
    server.wait_for_children(0, TIMEOUT).unwrap();

    // The client whose server side died says so at once, without waiting for
    // another line of input, and fails.
    let done = victim.finish(TIMEOUT).unwrap();
    done.expect_error(1, &["closed the connection", &server.addr().to_string()]).unwrap();

    // The server itself is unaffected.
    drop(echoing_stream(&server, b"still serving"));
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
}

#[test]
fn two_hundred_short_connections_leave_the_server_up_with_no_zombie() {
    // The seed died here: SIGCHLD interrupted accept(2) and the EINTR was fatal.
    let mut server = server("127.0.0.1", &[]);
    for i in 0..200 {
        drop(echoing_stream(&server, format!("connection {i}").as_bytes()));
    }
    server.wait_for_log(&["child exited with status 0"], 200, TIMEOUT).unwrap();
    server.wait_for_children(0, TIMEOUT).unwrap();
    assert!(server.is_running());
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "server exited with {status}");
}

#[test]
fn a_reset_connection_ends_its_child_with_a_reason_and_status_1() {
    let server = server("127.0.0.1", &[]);
    let stream = echoing_stream(&server, b"about to reset");
    let child = server.wait_for_children(1, TIMEOUT).unwrap()[0].pid;
    // SO_LINGER with a zero timeout makes close(2) send RST instead of FIN.
    socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO)).unwrap();
    drop(stream);

    let conn = format!("pid={child}");
    let reason = server.wait_for_log(&["connection failed", &conn], 1, TIMEOUT).unwrap();
    assert!(reason[0].contains("Connection reset by peer"), "{reason:?}");
    server.wait_for_log(&["child exited with status 1", &conn], 1, TIMEOUT).unwrap();
    server.wait_for_children(0, TIMEOUT).unwrap();
    drop(echoing_stream(&server, b"next client"));
}
