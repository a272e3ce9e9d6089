//! The PROXY protocol (`--proxy-protocol CIDR`): behind a load balancer, the
//! client's real address, carried in a header, drives admission, logs and
//! exec mode's variables; a header is taken only from the balancers named,
//! read with a deadline, and never past its end. HAProxy itself, in front of
//! two instances, as `docs/deploy/haproxy.md` configures it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{Server, TIMEOUT, wait_until};
use nix::sys::signal::Signal;

use crate::{expect_unserved, installed_or_skip, server};

/// A v1 header for a client at `client` reaching `server`.
fn v1(client: &str, server: SocketAddr) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let (sip, dip) = (client.ip(), server.ip());
    format!("PROXY {family} {sip} {dip} {} {}\r\n", client.port(), server.port()).into_bytes()
}

/// A v2 `PROXY` header for an IPv6 client (the server's address given as
/// `::ffff:` of its IPv4 one).
fn v2_ipv6(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V6(client), SocketAddr::V4(server)) = (client, server) else { panic!() };
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.extend_from_slice(&[0x21, 0x21, 0, 36]);
    bytes.extend_from_slice(&client.ip().octets());
    bytes.extend_from_slice(&server.ip().to_ipv6_mapped().octets());
    bytes.extend_from_slice(&client.port().to_be_bytes());
    bytes.extend_from_slice(&server.port().to_be_bytes());
    bytes
}

/// Connects to `server`, sends `header` then `data`, closes the sending side
/// and returns everything that came back.
fn through(server: SocketAddr, header: &[u8], data: &[u8]) -> Vec<u8> {
    crate::exchange(server, &[header, data].concat())
}

/// A held connection from a "client" at `client`, echoed once.
fn held(server: SocketAddr, client: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(&v1(client, server)).unwrap();
    crate::echo(&mut stream, b"held");
    stream
}

#[test]
fn a_balancers_header_names_the_client_and_is_not_echoed() {
    let server = server("127.0.0.1", &["--proxy-protocol", "127.0.0.1/32"]);
    let addr = server.addr();
    assert_eq!(through(addr, &v1("192.0.2.7:40000", addr), b"hello"), b"hello");
    server.wait_for_log(&["accepted a connection", "peer=192.0.2.7:40000"], 1, TIMEOUT).unwrap();
    // The child's own lines carry the client too.
    server.wait_for_log(&["conn{", "peer=192.0.2.7:40000", "peer closed"], 1, TIMEOUT).unwrap();
    // v2, an IPv6 client.
    let client: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
    assert_eq!(through(addr, &v2_ipv6(client, addr), b"v2 payload"), b"v2 payload");
    server.wait_for_log(&["accepted a connection", "peer=[2001:db8::1]:5555"], 1, TIMEOUT).unwrap();
    // UNKNOWN: the balancer's own address stands.
    let (stream, back) = crate::exchange_on(addr, b"PROXY UNKNOWN\r\nlocal");
    let own = stream.local_addr().unwrap().to_string();
    assert_eq!(back, b"local");
    server.wait_for_log(&["accepted a connection", &format!("peer={own}")], 1, TIMEOUT).unwrap();
}

#[test]
fn a_header_split_over_several_segments_is_waited_for() {
    let server = server("127.0.0.1", &["--proxy-protocol", "127.0.0.1/32"]);
    let header = v1("198.51.100.9:1234", server.addr());
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    for piece in header.chunks(7) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::echo(&mut stream, b"after a slow header");
    server.wait_for_log(&["accepted a connection", "peer=198.51.100.9:1234"], 1, TIMEOUT).unwrap();
}

#[test]
fn the_clients_address_drives_the_limits_and_the_access_rules() {
    let args = ["--proxy-protocol", "127.0.0.1/32", "--max-per-ip", "1", "--deny", "192.0.2.66/32"];
    let server = server("127.0.0.1", &args);
    let addr = server.addr();
    // Denied by its real address, though the balancer is allowed.
    expect_unserved(addr, &v1("192.0.2.66:1", addr));
    server.wait_for_log(&["refused a connection", "peer=192.0.2.66:1"], 1, TIMEOUT).unwrap();
    // One connection per client address: the same client twice is refused,
    // another client through the same balancer is not.
    let _first = held(addr, "192.0.2.7:1000");
    expect_unserved(addr, &v1("192.0.2.7:1001", addr));
    let _other = held(addr, "192.0.2.8:1000");
    // (One refusal line a second: the counters have them all.)
    server.signal(Signal::SIGUSR1).unwrap();
    let counted =
        "refused 2 (denied by the access rules 1, too many connections from this address 1)";
    crate::counters_with(&server, counted);
}

#[test]
fn a_balancer_without_a_valid_header_in_time_is_refused_and_holds_up_no_one() {
    let args = ["--proxy-protocol", "127.0.0.1/32", "--proxy-timeout", "0.5"];
    let server = server("127.0.0.1", &args);
    let addr = server.addr();
    // Silent: refused at the deadline, and meanwhile others are served.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(through(addr, &v1("192.0.2.1:1", addr), b"meanwhile"), b"meanwhile");
    let mut back = Vec::new();
    let _ = silent.read_to_end(&mut back);
    assert!(back.is_empty(), "{back:?}");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the deadline");
    server.wait_for_log(&["refused a connection", "PROXY header timed out"], 1, TIMEOUT).unwrap();
    // Plain data instead of a header: refused at once.
    expect_unserved(addr, b"hello, no header\r\n");
    // Half a header, then the connection closes: refused at the deadline
    // (its end of file is behind bytes a peek keeps seeing).
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"PROXY TCP4 192.0.2").unwrap();
    drop(half);
    // (One refusal line a second: the counters have them all.)
    let counted = "refused 3 (PROXY header timed out 2, no valid PROXY header 1)";
    crate::counters_with(&server, counted);
    assert_eq!(
        server.log().iter().filter(|l| l.contains("accepted a connection")).count(),
        1,
        "only the client with a header was served"
    );
}

#[test]
fn a_client_not_from_a_balancer_cannot_pass_off_an_address() {
    // 127.0.0.1 is not a balancer here.
    let mut server = server("127.0.0.1", &["--proxy-protocol", "192.0.2.0/24"]);
    let addr = server.addr();
    // Without a header it is served as itself.
    assert_eq!(crate::exchange(addr, b"plain"), b"plain");
    // With one, waiting in the backlog (the server is stopped) so that the
    // header has arrived when the connection is accepted: refused.
    crate::stop(&server);
    let mut spoof = TcpStream::connect(addr).unwrap();
    spoof.set_read_timeout(Some(TIMEOUT)).unwrap();
    spoof.write_all(&v1("203.0.113.5:80", addr)).unwrap();
    server.signal(Signal::SIGCONT).unwrap();
    let mut back = Vec::new();
    let _ = spoof.read_to_end(&mut back);
    assert!(back.is_empty(), "the spoofed header was served: {back:?}");
    server
        .wait_for_log(
            &["refused a connection", "PROXY header from an untrusted address"],
            1,
            TIMEOUT,
        )
        .unwrap();
    assert!(!server.log().iter().any(|line| line.contains("203.0.113.5")), "{:?}", server.log());
    assert!(server.is_running());
}

#[test]
fn exec_mode_gets_the_clients_address() {
    let args = [
        "--proxy-protocol",
        "127.0.0.1/32",
        "--",
        "sh",
        "-c",
        "printf '%s %s ' \"$TCPREMOTEIP\" \"$TCPREMOTEPORT\"; exec cat",
    ];
    let server = server("127.0.0.1", &args);
    let addr = server.addr();
    assert_eq!(through(addr, &v1("192.0.2.44:4444", addr), b"x"), b"192.0.2.44 4444 x");
}

/// The HAProxy configuration in `docs/deploy/haproxy.md`: its one `haproxy`
/// code block.
fn documented_haproxy_config() -> String {
    let doc = crate::deploy::file("haproxy.md");
    let start = doc.find("```haproxy\n").expect("a ```haproxy block") + "```haproxy\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[test]
fn haproxy_in_front_of_two_instances_passes_each_clients_address() {
    if !installed_or_skip("haproxy") {
        return;
    }
    let config = documented_haproxy_config();
    for needed in ["mode tcp", "send-proxy-v2", "bind 127.0.0.1:7000"] {
        assert!(config.contains(needed), "haproxy.md lacks {needed:?}");
    }
    let instances: Vec<Server> =
        (0..2).map(|_| server("127.0.0.1", &["--proxy-protocol", "127.0.0.1/32"])).collect();
    let dir = std::env::temp_dir().join(format!("forkecho-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("haproxy.cfg");
    let (haproxy, front) =
        crate::started_on_a_free_port("haproxy", crate::Ready::Connects, |front| {
            let text = config
                .replace("127.0.0.1:7000", &front.to_string())
                .replace("127.0.0.1:7001", &instances[0].addr().to_string())
                .replace("127.0.0.1:7002", &instances[1].addr().to_string());
            std::fs::write(&file, text).unwrap();
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(&file);
            command
        });
    // Clients through HAProxy: each echoed, each logged by an instance under
    // its own address (its port), not HAProxy's.
    let mut ports = Vec::new();
    for index in 0..8 {
        let message = format!("through haproxy {index}");
        let (stream, back) = crate::exchange_on(front, message.as_bytes());
        ports.push(stream.local_addr().unwrap().port());
        assert_eq!(back, message.as_bytes());
    }
    for port in &ports {
        let peer = format!("peer=127.0.0.1:{port}");
        wait_until(TIMEOUT, &format!("an instance logging {peer}"), || {
            instances
                .iter()
                .any(|s| {
                    s.log().iter().any(|l| l.contains("accepted a connection") && l.contains(&peer))
                })
                .then_some(())
        })
        .unwrap();
    }
    // Round robin: both instances served.
    for instance in &instances {
        assert!(instance.log().iter().any(|l| l.contains("accepted a connection")));
    }
    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `stream` sees its connection closed (end of file or a reset)
/// within [`TIMEOUT`].
fn closed_within_timeout(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn a_connection_waiting_for_its_header_is_held_by_no_child() {
    for mode in [&[][..], &["--prefork", "1", "--connections-per-child", "0"][..]] {
        let mut args = vec!["--proxy-protocol", "127.0.0.1/32", "--proxy-timeout", "0.5"];
        args.extend_from_slice(mode);
        let server = server("127.0.0.1", &args);
        let addr = server.addr();
        // Half a header waits in the parent while a client is served (and a
        // child forked, or a spare): the child must not get a copy of it.
        let mut waiting = TcpStream::connect(addr).unwrap();
        waiting.write_all(b"PROXY TCP4 ").unwrap();
        let _served = held(addr, "192.0.2.5:5");
        let _spare_forked_meanwhile = held(addr, "192.0.2.6:6");
        // Refused at its deadline by the parent: the connection really closes.
        assert!(closed_within_timeout(&mut waiting), "{mode:?}: a child still holds it");
        server.wait_for_log(&["PROXY header timed out"], 1, TIMEOUT).unwrap();
    }
}

#[test]
fn whole_headers_wait_for_a_pause_and_the_child_limit_and_none_is_lost() {
    // One new connection a second, at most one child: four balancer
    // connections whose headers are all there at once are served one after
    // the other, none dropped, never two children.
    let args = ["--proxy-protocol", "127.0.0.1/32", "--max-rate", "1", "--max-children", "1"];
    let server = server("127.0.0.1", &args);
    let addr = server.addr();
    // Accepted first, silent, so that all four wait in the parent; then the
    // headers come together and complete in one wake-up.
    let mut streams: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    for (index, stream) in streams.iter_mut().enumerate() {
        let mut first = v1(&format!("192.0.2.{}:9", index + 1), addr);
        first.extend_from_slice(format!("client {index}").as_bytes());
        stream.write_all(&first).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for (index, stream) in streams.iter_mut().enumerate() {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).unwrap();
        assert_eq!(back, format!("client {index}").as_bytes(), "client {index}");
        assert!(server.children().len() <= 1, "more children than the limit");
    }
    server.signal(Signal::SIGUSR1).unwrap();
    server.wait_for_log(&["counters: accepted 4, refused 0"], 1, TIMEOUT).unwrap();
}

#[test]
fn a_full_waiting_room_refuses_more_balancer_connections_but_stops_no_one_else() {
    if !crate::ipv6_or_skip() {
        return;
    }
    // 127.0.0.1 is the balancer; ::1 is an ordinary client.
    let args = ["--bind", "::1", "--proxy-protocol", "127.0.0.1/32", "--proxy-timeout", "30"];
    let server = server("127.0.0.1", &args);
    let v4 = server.addr();
    let silent: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(v4).unwrap()).collect();
    // The 33rd balancer connection is refused at once…
    let mut extra = TcpStream::connect(v4).unwrap();
    assert!(closed_within_timeout(&mut extra), "a 33rd waiting connection was kept");
    // …and an ordinary client is served all the same.
    let line = server.wait_for_log(&["listening on [::1]:"], 1, TIMEOUT).unwrap();
    let v6 = integration_tests::server::listening_addr(&line[0]).unwrap();
    assert_eq!(crate::exchange(v6, b"not stopped"), b"not stopped");
    drop(silent);
}
