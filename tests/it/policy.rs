//! Access policy, decided on the client's address before any fork:
//! `--max-per-ip`, `--allow`/`--deny` and `--max-rate`. Clients come from
//! several 127/8 addresses (all local on Linux) to look like several hosts.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use integration_tests::{Server, TIMEOUT};
use socket2::{Domain, Socket, Type};

use crate::{echo, loopbacks, server};

/// Connects to `server` from the local address `from` (port chosen by the
/// kernel).
fn connect_from(server: &Server, from: &str) -> TcpStream {
    let from: IpAddr = from.parse().unwrap();
    let socket = Socket::new(Domain::for_address(server.addr()), Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect(&server.addr().into()).unwrap();
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Expects the server to close the connection without echoing anything.
fn assert_refused(stream: &mut TcpStream) {
    // The write may already fail (the server closed first); what matters is
    // that nothing comes back but the end of the stream.
    let _ = stream.write_all(b"anyone?");
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "a refused client got {rest:?}"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}"),
    }
}

#[test]
fn max_per_ip_refuses_one_address_too_many_and_spares_the_others() {
    let server = server("127.0.0.1", &["--max-per-ip", "2"]);
    let mut first = connect_from(&server, "127.0.0.2");
    let mut second = connect_from(&server, "127.0.0.2");
    echo(&mut first, b"one");
    echo(&mut second, b"two");

    let mut third = connect_from(&server, "127.0.0.2");
    assert_refused(&mut third);
    let peer = format!("peer={}", third.local_addr().unwrap());
    let needles = ["refused a connection", "too many connections from this address", &peer];
    server.wait_for_log(&needles, 1, TIMEOUT).unwrap();
    // Refused before fork: still two children, no child ever served it.
    assert_eq!(server.children().len(), 2);

    // Another address is unaffected.
    let mut other = connect_from(&server, "127.0.0.3");
    echo(&mut other, b"other host");

    // When one of the two leaves, the address gets its slot back.
    let gone = format!("peer={}", first.local_addr().unwrap());
    drop(first);
    server.wait_for_log(&["child exited with status 0", &gone], 1, TIMEOUT).unwrap();
    let mut again = connect_from(&server, "127.0.0.2");
    echo(&mut again, b"again");
}

#[test]
fn max_per_ip_counts_ipv6_clients_too() {
    let Some(ip) = loopbacks().into_iter().find(|ip| ip.contains(':')) else { return };
    let server = server(ip, &["--max-per-ip", "1"]);
    let mut first = connect_from(&server, ip);
    echo(&mut first, b"v6");
    let mut second = connect_from(&server, ip);
    assert_refused(&mut second);
    server.wait_for_log(&["too many connections from this address"], 1, TIMEOUT).unwrap();
}

#[test]
fn deny_and_allow_refuse_by_prefix_the_most_specific_deciding() {
    // 127.0.0.0/8 is denied, but 127.0.0.1 and 127.0.0.3/32 are allowed.
    let args = ["--deny", "127.0.0.0/8", "--allow", "127.0.0.1", "--allow", "127.0.0.3/32"];
    let server = server("127.0.0.1", &args);
    let mut denied = connect_from(&server, "127.0.0.2");
    assert_refused(&mut denied);
    let peer = format!("peer={}", denied.local_addr().unwrap());
    server
        .wait_for_log(&["refused a connection", "denied by the access rules", &peer], 1, TIMEOUT)
        .unwrap();
    echo(&mut connect_from(&server, "127.0.0.1"), b"allowed");
    echo(&mut connect_from(&server, "127.0.0.3"), b"allowed too");
}

#[test]
fn allow_alone_refuses_everyone_else() {
    let server = server("127.0.0.1", &["--allow", "127.0.0.4"]);
    assert_refused(&mut connect_from(&server, "127.0.0.1"));
    echo(&mut connect_from(&server, "127.0.0.4"), b"the only one");
}

#[test]
fn a_bad_prefix_is_a_usage_error() {
    let done = Server::run(&[], &["0", "--deny", "10.0.0.0/33"], TIMEOUT).unwrap();
    done.expect_error(2, &["'10.0.0.0/33' is not an IPv4 or IPv6 address"]).unwrap();
}

#[test]
fn max_rate_holds_clients_in_the_backlog_and_serves_them_all() {
    // One new connection a second: four clients connecting at once are all
    // served, the later ones after a pause, and none is refused.
    let server = server("127.0.0.1", &["--max-rate", "1"]);
    let mut clients: Vec<TcpStream> = (0..4).map(|_| connect_from(&server, "127.0.0.1")).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        echo(client, format!("client {i}").as_bytes());
    }
    server.wait_for_log(&["admission deferred; holding the connection"], 1, TIMEOUT).unwrap();
    let log = server.log().join("\n");
    assert!(!log.contains("refused a connection"), "{log}");
}
