//! `--udp`: RFC 862 echo over UDP, answered by the parent without a fork,
//! never to a source port of a service that would answer back, and at most
//! `--udp-rate` replies a second to one address.

use std::net::UdpSocket;
use std::time::Duration;

use integration_tests::{TIMEOUT, procfs};

use crate::{connect, echo, is_root, server};

/// A UDP client on `local`, reads bounded by `wait`.
fn client(local: &str, wait: Duration) -> UdpSocket {
    let socket = UdpSocket::bind(local).unwrap();
    socket.set_read_timeout(Some(wait)).unwrap();
    socket
}

/// Replies that arrive on `socket` within its read timeout.
fn replies(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0; 2048];
    while let Ok((len, _)) = socket.recv_from(&mut buf) {
        got.push(buf[..len].to_vec());
    }
    got
}

#[test]
fn datagrams_are_echoed_by_the_parent_without_a_fork() {
    let server = server("127.0.0.1", &["--udp"]);
    let socket = client("127.0.0.1:0", TIMEOUT);
    for message in [&b"one"[..], b"two", &[7_u8; 1400]] {
        socket.send_to(message, server.addr()).unwrap();
        let mut buf = [0; 2048];
        let (len, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], from), (message, server.addr()));
    }
    assert!(server.children().is_empty(), "a datagram was given a child");
    crate::counters_with(
        &server,
        "datagrams received 3, answered 3, guarded port 0, over the rate 0",
    );
    // TCP on the same port is served as ever, and its child does not hold
    // the UDP socket: its connection is its one socket.
    let mut stream = connect(&server);
    echo(&mut stream, b"tcp too");
    let child = server.wait_for_children(1, TIMEOUT).unwrap()[0].pid;
    let (sockets, _) = crate::hygiene::extra_descriptors(child);
    assert_eq!(sockets, 1, "the child holds more than its connection: {:?}", procfs::fds(child));
}

#[test]
fn each_address_gets_at_most_its_rate_of_replies() {
    let server = server("127.0.0.1", &["--udp", "--udp-rate", "3"]);
    let socket = client("127.0.0.1:0", Duration::from_millis(300));
    for index in 0..10 {
        socket.send_to(format!("burst {index}").as_bytes(), server.addr()).unwrap();
    }
    let answered = replies(&socket).len();
    // Three at once, perhaps one more if a third of a second passed.
    assert!((3..=4).contains(&answered), "{answered} replies to a burst of 10 at 3 a second");
    crate::counters_with(&server, "datagrams received 10");
    // A second later there are tokens again.
    std::thread::sleep(Duration::from_millis(1100));
    socket.send_to(b"later", server.addr()).unwrap();
    assert_eq!(replies(&socket), [b"later".to_vec()]);
}

/// A client socket on a guarded source port: 5683 (CoAP, any user may bind
/// it) and, as root, 7 (echo itself), or the next guarded port below 1024
/// that is free; these are the one kind of fixed port the tests bind, since
/// the guard is about them.
fn guarded_clients() -> Vec<UdpSocket> {
    let mut sockets = Vec::new();
    if let Ok(socket) = UdpSocket::bind("127.0.0.1:5683") {
        sockets.push(socket);
    }
    if is_root() {
        let privileged = [7_u16, 19, 13, 37, 1023, 1022].into_iter();
        if let Some(socket) =
            privileged.filter_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok()).next()
        {
            sockets.push(socket);
        }
    } else {
        integration_tests::skip(
            &integration_tests::current_test(),
            "not root: no source port under 1024 tested",
        );
    }
    sockets
}

#[test]
fn a_service_that_would_answer_back_is_never_answered() {
    let server = server("127.0.0.1", &["--udp"]);
    let sockets = guarded_clients();
    assert!(!sockets.is_empty(), "no guarded source port could be bound");
    for socket in &sockets {
        socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        socket.send_to(b"are you an echo service?", server.addr()).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(replies(socket).is_empty(), "source port {port} was answered");
    }
    let guarded = format!("guarded port {}", sockets.len());
    crate::counters_with(&server, &guarded);
    // An ordinary client still is.
    let ordinary = client("127.0.0.1:0", Duration::from_millis(500));
    ordinary.send_to(b"hello", server.addr()).unwrap();
    assert_eq!(replies(&ordinary), [b"hello".to_vec()]);
}
