//! Unit tests: real sockets on 127.0.0.1 and ::1, port 0.
#![allow(clippy::print_stderr)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use crate::{
    DEFAULT_BACKLOG, ListenOptions, Listener, NetError, Recovery, connect, connect_addr,
    connect_first,
};

const V4: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const V6: SocketAddr = SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::LOCALHOST), 0);

/// Binds port 0 on `addr`, or returns `None` (and says why) when the family is
/// not available on this machine.
fn bind_or_skip(addr: SocketAddr) -> Option<Listener> {
    match Listener::bind(addr, DEFAULT_BACKLOG) {
        Ok(listener) => Some(listener),
        // CI has ::1: there a skip would hide a failure.
        Err(err) if addr.is_ipv6() && std::env::var("CI").is_err() => {
            eprintln!("SKIP: IPv6 loopback unavailable: {err}");
            None
        }
        Err(err) => panic!("cannot bind {addr}: {err}"),
    }
}

/// Is close-on-exec set? Read from /proc so the test needs no unsafe code.
fn is_cloexec(fd: &impl AsRawFd) -> bool {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
    u32::from_str_radix(flags, 8).unwrap() & 0o2_000_000 != 0
}

fn round_trip_over(addr: SocketAddr) {
    let Some(listener) = bind_or_skip(addr) else { return };
    let local = listener.local_addr();
    assert_eq!(local.ip(), addr.ip());
    assert_ne!(local.port(), 0, "port 0 must be replaced by the real port");
    assert!(is_cloexec(&listener));

    let mut client = connect_addr(local, Some(Duration::from_secs(5))).unwrap();
    let (mut served, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert!(is_cloexec(&client));
    assert!(is_cloexec(&served));

    client.write_all(b"\0binary\xffdata").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    served.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\0binary\xffdata");
}

#[test]
fn bind_accept_connect_ipv4() {
    round_trip_over(V4);
}

#[test]
fn bind_accept_connect_ipv6() {
    round_trip_over(V6);
}

#[test]
fn connect_by_name_and_bracketed_literal() {
    let listener = bind_or_skip(V4).unwrap();
    let port = listener.local_addr().port();
    let (stream, reached) = connect("localhost", port, None).unwrap();
    // "localhost" may resolve to ::1 first; the v4 address must still be reached,
    // and the address returned is the one the stream is connected to.
    assert_eq!(stream.peer_addr().unwrap(), listener.local_addr());
    assert_eq!(reached, listener.local_addr());

    if let Some(listener6) = bind_or_skip(V6) {
        let port6 = listener6.local_addr().port();
        let (stream, reached) = connect("[::1]", port6, None).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener6.local_addr());
        assert_eq!(reached, listener6.local_addr());
        let (stream, _) = connect("::1", port6, None).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener6.local_addr());
    }
}

#[test]
fn ipv6_listener_is_v6_only() {
    let Some(listener6) = bind_or_skip(V6) else { return };
    // `[::]` on a port that an IPv4 listener holds must bind, since the v6
    // socket is v6-only (a dual-stack one would clash with the v4 listener).
    // Another test may take the same port on IPv6 in between, so a clash is
    // retried on a fresh port; a socket that is not v6-only clashes every time.
    let mut last = None;
    let bound = (0..20).any(|_| {
        let v4 = Listener::bind((Ipv4Addr::LOCALHOST, 0).into(), DEFAULT_BACKLOG).unwrap();
        let port = v4.local_addr().port();
        let v6 = Listener::bind((Ipv6Addr::UNSPECIFIED, port).into(), DEFAULT_BACKLOG);
        let ok = v6.is_ok();
        last = v6.err();
        ok
    });
    assert!(bound, "[::] on an IPv4 listener's port failed 20 times: {last:?}");
    drop(listener6);
}

#[test]
fn address_in_use_names_the_address() {
    let first = bind_or_skip(V4).unwrap();
    let addr = first.local_addr();
    // SO_REUSEADDR lets a restarted server rebind past TIME_WAIT, but two
    // listening sockets may still never share an address.
    let err = Listener::bind(addr, DEFAULT_BACKLOG).unwrap_err();
    assert!(matches!(&err, NetError::Bind { addr: a, .. } if *a == addr), "{err:?}");
    assert_eq!(err.io_error().kind(), ErrorKind::AddrInUse);
    assert_eq!(err.to_string(), format!("cannot bind {addr}"));
}

/// With SO_REUSEPORT on both, two listeners share a port and each accepts;
/// without it on the second, the port is taken.
#[test]
fn reuse_port_lets_two_listeners_share_a_port() {
    let shared = ListenOptions::default().reuse_port(true);
    let first = Listener::bind_with(V4, shared).unwrap();
    let addr = first.local_addr();
    let second = Listener::bind_with(addr, shared).unwrap();
    assert_eq!(second.local_addr(), addr);
    let err = Listener::bind(addr, DEFAULT_BACKLOG).unwrap_err();
    assert!(matches!(err, NetError::Bind { .. }), "{err:?}");
    // The kernel spreads connections by a hash of the client's port: across
    // 32 of them, both listeners get some.
    let clients: Vec<std::net::TcpStream> =
        (0..32).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let drain = |listener: &Listener| {
        listener.set_nonblocking(true).unwrap();
        std::iter::from_fn(|| listener.accept().ok()).count()
    };
    std::thread::sleep(Duration::from_millis(50));
    let (a, b) = (drain(&first), drain(&second));
    assert_eq!(a + b, clients.len());
    assert!(a > 0 && b > 0, "one listener took everything: {a} and {b}");
}

#[test]
fn non_local_address_is_a_bind_error() {
    // 192.0.2.1 is TEST-NET-1: never assigned to this machine, so bind(2) says
    // EADDRNOTAVAIL without a single packet being sent.
    let addr: SocketAddr = "192.0.2.1:0".parse().unwrap();
    let err = Listener::bind(addr, DEFAULT_BACKLOG).unwrap_err();
    assert!(matches!(err, NetError::Bind { .. }), "{err:?}");
    assert_eq!(err.io_error().kind(), ErrorKind::AddrNotAvailable);
}

#[test]
fn refused_connection_names_the_address() {
    // Find a port nobody listens on: bind one, note it, close it.
    let addr = TcpListener::bind(V4).unwrap().local_addr().unwrap();
    let err = connect_addr(addr, None).unwrap_err();
    assert!(matches!(&err, NetError::Connect { addr: a, .. } if *a == addr), "{err:?}");
    assert_eq!(err.io_error().kind(), ErrorKind::ConnectionRefused);
    // A name with a single address reports that address's own error.
    let err = connect("127.0.0.1", addr.port(), Some(Duration::from_secs(5))).unwrap_err();
    assert!(matches!(&err, NetError::Connect { addr: a, .. } if *a == addr), "{err:?}");
    assert_eq!(err.io_error().kind(), ErrorKind::ConnectionRefused);
}

/// A port nobody listens on at 127.0.0.1, nor (almost surely) at other
/// loopback addresses: bind one, note it, close it.
fn closed_port() -> u16 {
    TcpListener::bind(V4).unwrap().local_addr().unwrap().port()
}

/// The whole error line a binary would print: the error and its causes.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(err), |&e| e.source()).map(ToString::to_string);
    causes.collect::<Vec<_>>().join(": ")
}

#[test]
fn every_address_tried_is_named_with_its_reason() {
    let port = closed_port();
    // 127.0.0.2 is local on Linux: refused at once, like 127.0.0.1.
    let addrs: Vec<SocketAddr> =
        vec![(Ipv4Addr::LOCALHOST, port).into(), (Ipv4Addr::new(127, 0, 0, 2), port).into()];
    let timeout = Some(Duration::from_secs(5));
    let err = connect_first("two.example", port, addrs.clone(), |a| connect_addr(a, timeout))
        .unwrap_err();
    let NetError::ConnectAll { host, port: p, attempts } = &err else {
        panic!("expected every address in one error, got {err:?}")
    };
    assert_eq!((host.as_str(), *p), ("two.example", port));
    let tried: Vec<_> = attempts
        .iter()
        .map(|e| match e {
            NetError::Connect { addr, source } => (*addr, source.kind()),
            other => panic!("not a connect error: {other:?}"),
        })
        .collect();
    let refused = ErrorKind::ConnectionRefused;
    assert_eq!(tried, vec![(addrs[0], refused), (addrs[1], refused)]);
    // The io::Error stays typed: the last address's, as with one address.
    assert_eq!(err.io_error().kind(), refused);
    let reason = io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string();
    assert_eq!(
        chain(&err),
        format!(
            "cannot connect to two.example port {port} at any of its addresses: \
             127.0.0.1:{port}: {reason}; 127.0.0.2:{port}: {reason}"
        )
    );
}

#[test]
fn a_socket_that_cannot_be_created_is_one_of_the_attempts() {
    let v6: SocketAddr = "[::1]:7".parse().unwrap();
    let v4: SocketAddr = "127.0.0.1:7".parse().unwrap();
    let fail = |addr: SocketAddr| {
        Err(if addr.is_ipv6() {
            NetError::Socket { addr, source: io::Error::from_raw_os_error(libc::EAFNOSUPPORT) }
        } else {
            NetError::Connect { addr, source: io::Error::from_raw_os_error(libc::ETIMEDOUT) }
        })
    };
    let err = connect_first("localhost", 7, [v6, v4], fail).unwrap_err();
    let afnosupport = io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
    let timedout = io::Error::from_raw_os_error(libc::ETIMEDOUT);
    assert_eq!(
        chain(&err),
        format!(
            "cannot connect to localhost port 7 at any of its addresses: \
             cannot create a socket for [::1]:7: {afnosupport}; 127.0.0.1:7: {timedout}"
        )
    );
    assert_eq!(err.io_error().kind(), ErrorKind::TimedOut);
}

#[test]
fn a_reset_ends_the_search() {
    let addrs: Vec<SocketAddr> = vec!["[::1]:7".parse().unwrap(), "127.0.0.1:7".parse().unwrap()];
    let mut tried = Vec::new();
    let err = connect_first("localhost", 7, addrs.clone(), |addr| {
        tried.push(addr);
        Err(NetError::Reset { addr, source: io::Error::from(ErrorKind::ConnectionReset) })
    })
    .unwrap_err();
    // The first server was reached and said no: the next is not tried.
    assert_eq!(tried, addrs[..1]);
    assert!(matches!(&err, NetError::Reset { addr, .. } if *addr == addrs[0]), "{err:?}");
    assert_eq!(err.to_string(), "connection to [::1]:7 reset by the peer as soon as it was made");
}

#[test]
fn no_address_at_all_is_a_resolve_error() {
    let err = connect_first("nothing", 7, [], |_| unreachable!()).unwrap_err();
    assert!(matches!(&err, NetError::Resolve { .. }), "{err:?}");
    assert_eq!(err.io_error().kind(), ErrorKind::NotFound);
}

#[test]
fn a_name_where_nothing_listens_names_each_of_its_addresses() {
    let port = closed_port();
    let resolved: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port)).unwrap().collect();
    let err = connect("localhost", port, Some(Duration::from_secs(5))).unwrap_err();
    let line = chain(&err);
    for addr in &resolved {
        assert!(line.contains(&addr.to_string()), "{addr} missing from {line:?}");
    }
    if resolved.len() > 1 {
        assert!(matches!(err, NetError::ConnectAll { .. }), "{err:?}");
    } else {
        eprintln!("localhost has one address here ({resolved:?}): a single-address error");
        assert!(matches!(err, NetError::Connect { .. }), "{err:?}");
    }
}

#[test]
fn unknown_host_is_a_resolve_error() {
    let err = connect("no-such-host.invalid", 7, Some(Duration::from_secs(5))).unwrap_err();
    assert!(
        matches!(&err, NetError::Resolve { host, port: 7, .. } if host == "no-such-host.invalid")
    );
    assert_eq!(err.to_string(), "cannot resolve no-such-host.invalid (port 7)");
}

#[test]
fn nonblocking_accept_reports_drained() {
    let listener = bind_or_skip(V4).unwrap();
    listener.set_nonblocking(true).unwrap();
    let err = listener.accept().unwrap_err();
    assert_eq!(err.recovery(), Recovery::Drained);

    // A queued connection is still accepted, and the stream is blocking.
    let _client = connect_addr(listener.local_addr(), None).unwrap();
    let (served, _) = bounded_accept(&listener);
    served.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let err = (&served).read(&mut [0; 1]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err:?}");
}

/// Accepts on a non-blocking listener, waiting at most a few seconds.
fn bounded_accept(listener: &Listener) -> (std::net::TcpStream, SocketAddr) {
    for _ in 0..500 {
        match listener.accept() {
            Ok(pair) => return pair,
            Err(err) if err.recovery() == Recovery::Drained => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("{err}"),
        }
    }
    panic!("no connection arrived within 5 s");
}

/// Every errno [`NetError::recovery`] classifies, by class, named so that a
/// failure says which one moved. Any errno in none of these lists must be fatal.
const RETRY: &[(i32, &str)] = &[
    (libc::EINTR, "EINTR"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::EPROTO, "EPROTO"),
    (libc::EPERM, "EPERM"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::ENOPROTOOPT, "ENOPROTOOPT"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::ENONET, "ENONET"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNRESET, "ECONNRESET"),
];
const DRAINED: &[(i32, &str)] = &[(libc::EAGAIN, "EAGAIN"), (libc::EWOULDBLOCK, "EWOULDBLOCK")];
const BACK_OFF: &[(i32, &str)] = &[
    (libc::EMFILE, "EMFILE"),
    (libc::ENFILE, "ENFILE"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::ENOMEM, "ENOMEM"),
];

fn accept_error(source: io::Error) -> NetError {
    NetError::Accept { local: V4, source }
}

#[test]
fn every_accept_errno_has_its_recovery_and_every_other_is_fatal() {
    let classes =
        [(Recovery::Retry, RETRY), (Recovery::Drained, DRAINED), (Recovery::BackOff, BACK_OFF)];
    for (class, errnos) in classes {
        for &(errno, name) in errnos {
            let got = accept_error(io::Error::from_raw_os_error(errno)).recovery();
            assert_eq!(got, class, "accept failing with {name} ({errno})");
        }
    }
    // Every other errno Linux has (they end at 133, EHWPOISON) is fatal, so an
    // errno added to a class must be added to the lists above too.
    let listed = |errno| classes.iter().any(|(_, list)| list.iter().any(|&(e, _)| e == errno));
    let mut fatal = 0;
    for errno in (1..=200).filter(|&errno| !listed(errno)) {
        let source = io::Error::from_raw_os_error(errno);
        let what = source.to_string();
        assert_eq!(accept_error(source).recovery(), Recovery::Fatal, "errno {errno}: {what}");
        fatal += 1;
    }
    assert!(fatal > 150, "only {fatal} errnos checked as fatal");
    for (errno, name) in [
        (libc::EBADF, "EBADF"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOTSOCK, "ENOTSOCK"),
        (libc::EFAULT, "EFAULT"),
    ] {
        let got = accept_error(io::Error::from_raw_os_error(errno)).recovery();
        assert_eq!(got, Recovery::Fatal, "accept failing with {name} ({errno})");
    }
    // Errors that carry a kind but no errno: an empty queue is still drained,
    // anything else (a peer that is not an IP address) is fatal.
    let would_block = io::Error::from(ErrorKind::WouldBlock);
    assert_eq!(accept_error(would_block).recovery(), Recovery::Drained);
    let not_ip = io::Error::new(ErrorKind::InvalidData, "peer is not an IP address");
    assert_eq!(accept_error(not_ip).recovery(), Recovery::Fatal);
}

#[test]
fn only_accept_failures_are_classified() {
    let addr = V4;
    for &(errno, name) in RETRY.iter().chain(DRAINED).chain(BACK_OFF) {
        let os = || io::Error::from_raw_os_error(errno);
        for err in [
            NetError::Socket { addr, source: os() },
            NetError::SocketOption { addr, option: "SO_REUSEADDR", source: os() },
            NetError::Bind { addr, source: os() },
            NetError::Listen { addr, source: os() },
            NetError::Mode { local: addr, source: os() },
            NetError::Shutdown { local: addr, source: os() },
            NetError::Inherit { source: os() },
            NetError::Resolve { host: "localhost".into(), port: 7, source: os() },
            NetError::Connect { addr, source: os() },
        ] {
            assert_eq!(err.recovery(), Recovery::Fatal, "{err:?} with {name}");
        }
    }
}

#[test]
fn adopts_an_inherited_listener() {
    let original = bind_or_skip(V4).unwrap();
    let addr = original.local_addr();
    assert!(!original.is_inherited());
    let adopted = Listener::from_fd(OwnedFd::from(original)).unwrap();
    assert!(adopted.is_inherited());
    assert_eq!(adopted.local_addr(), addr);
    let _client = connect_addr(addr, None).unwrap();
    let (_, peer) = adopted.accept().unwrap();
    assert_eq!(peer.ip(), addr.ip());
}

#[test]
fn refuses_to_adopt_what_is_not_a_listener() {
    let listener = bind_or_skip(V4).unwrap();
    let client = connect_addr(listener.local_addr(), None).unwrap();
    let err = Listener::from_fd(OwnedFd::from(client)).unwrap_err();
    assert!(matches!(err, NetError::Inherit { .. }), "{err:?}");

    let file = std::fs::File::open("/proc/self/status").unwrap();
    let err = Listener::from_fd(OwnedFd::from(file)).unwrap_err();
    assert!(matches!(err, NetError::Inherit { .. }), "{err:?}");
}

#[test]
fn send_dontwait_fills_a_socket_then_says_would_block_instead_of_waiting() {
    use std::os::fd::AsFd;
    let (writer, _reader) = std::os::unix::net::UnixStream::pair().unwrap();
    // The socket itself stays blocking: only this call does not wait.
    let chunk = [7_u8; 4096];
    let mut sent = 0_usize;
    let err = loop {
        match crate::send_dontwait(writer.as_fd(), &chunk) {
            Ok(n) => sent += n,
            Err(err) => break err,
        }
        assert!(sent < 64 << 20, "64 MiB went into a socket nobody reads");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err:?}");
    assert!(sent > 0);
    let not_a_socket = std::fs::File::open("/dev/null").unwrap();
    assert!(crate::send_dontwait(not_a_socket.as_fd(), b"x").is_err());
}

/// Whether `/proc/net/tcp` shows a socket in TIME_WAIT bound to 127.0.0.1:`port`.
fn time_wait_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    // Each row: sl local_address rem_address st …; TIME_WAIT is state 06.
    table.lines().skip(1).any(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"06")
    })
}

#[test]
fn a_listener_rebinds_its_address_while_a_closed_connection_is_in_time_wait() {
    let listener = bind_or_skip(V4).unwrap();
    let addr = listener.local_addr();
    let mut client = connect_addr(addr, Some(Duration::from_secs(5))).unwrap();
    let (served, _) = listener.accept().unwrap();
    // The server's side closes first, so the TIME_WAIT is on the server's
    // port, as when a server that closed its connections restarts.
    drop(served);
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the server's close reaches the client");
    drop(client);
    drop(listener);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !time_wait_on(addr.port()) {
        assert!(std::time::Instant::now() < deadline, "no TIME_WAIT on {addr} within 5 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SO_REUSEADDR: the same address binds again at once, TIME_WAIT or not.
    let again = Listener::bind(addr, DEFAULT_BACKLOG);
    assert!(time_wait_on(addr.port()), "the TIME_WAIT ended before the bind");
    let again = again.unwrap_or_else(|err| panic!("rebinding {addr} in TIME_WAIT: {err:?}"));
    assert_eq!(again.local_addr(), addr);
}

/// `stop_listening` acts on the socket, not on one descriptor: an `accept`
/// blocked on another copy of it wakes with an error, a client waiting in the
/// backlog is reset, and new clients are refused.
#[test]
fn stop_listening_wakes_every_copy_and_refuses_new_clients() {
    let listener = bind_or_skip(V4).unwrap();
    let addr = listener.local_addr();
    let copy = Listener::from_fd(listener.as_fd().try_clone_to_owned().unwrap()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(copy.accept().map(|(_, peer)| peer));
    });
    // The copy's accept is blocked (or about to be): neither outcome lets a
    // connection through once the socket has stopped listening.
    std::thread::sleep(Duration::from_millis(50));
    listener.stop_listening().unwrap();
    let woke = rx.recv_timeout(Duration::from_secs(5)).expect("the blocked accept woke up");
    let err = woke.expect_err("no connection was accepted");
    assert!(err.is_stopped_listener(), "{err:?}");
    waiter.join().unwrap();
    let refused = connect_addr(addr, Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(refused.io_error().kind(), ErrorKind::ConnectionRefused, "{refused:?}");
}

/// A client queued in the backlog when the socket stops listening is reset,
/// not left waiting.
#[test]
fn stop_listening_resets_the_backlog() {
    let listener = bind_or_skip(V4).unwrap();
    let mut queued = connect_addr(listener.local_addr(), None).unwrap();
    queued.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    listener.stop_listening().unwrap();
    let mut byte = [0_u8; 1];
    match queued.read(&mut byte) {
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}"),
        Ok(n) => panic!("read {n} bytes from a connection that should be reset"),
    }
}
