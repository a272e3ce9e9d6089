//! Unit tests: real sockets on 127.0.0.1 and ::1, port 0.
#![allow(clippy::print_stderr)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::{DEFAULT_BACKLOG, Listener, NetError, Recovery, connect, connect_addr};

const V4: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const V6: SocketAddr = SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::LOCALHOST), 0);

/// Binds port 0 on `addr`, or returns `None` (and says why) when the family is
/// not available on this machine.
fn bind_or_skip(addr: SocketAddr) -> Option<Listener> {
    match Listener::bind(addr, DEFAULT_BACKLOG) {
        Ok(listener) => Some(listener),
        Err(err) if addr.is_ipv6() => {
            eprintln!("skipping: IPv6 loopback unavailable: {err}");
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
    let by_name = connect("localhost", port, None);
    // "localhost" may resolve to ::1 first; the v4 address must still be reached.
    assert_eq!(by_name.unwrap().peer_addr().unwrap(), listener.local_addr());

    if let Some(listener6) = bind_or_skip(V6) {
        let port6 = listener6.local_addr().port();
        let stream = connect("[::1]", port6, None).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener6.local_addr());
        let stream = connect("::1", port6, None).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener6.local_addr());
    }
}

#[test]
fn ipv6_listener_is_v6_only() {
    let Some(listener6) = bind_or_skip(V6) else { return };
    // The same port on IPv4 must still be free, since the v6 socket is v6-only.
    let unspecified6 = Listener::bind((Ipv6Addr::UNSPECIFIED, 0).into(), DEFAULT_BACKLOG).unwrap();
    let port = unspecified6.local_addr().port();
    let v4 = Listener::bind((Ipv4Addr::LOCALHOST, port).into(), DEFAULT_BACKLOG);
    assert!(v4.is_ok(), "v4 bind on a v6-only port failed: {v4:?}");
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
    let err = connect("127.0.0.1", addr.port(), Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(err.io_error().kind(), ErrorKind::ConnectionRefused);
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

#[test]
fn accept_failures_are_classified() {
    let local = V4;
    let class = |errno| NetError::Accept { local, source: io::Error::from_raw_os_error(errno) };
    assert_eq!(class(libc::EINTR).recovery(), Recovery::Retry);
    assert_eq!(class(libc::ECONNABORTED).recovery(), Recovery::Retry);
    assert_eq!(class(libc::EAGAIN).recovery(), Recovery::Drained);
    for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
        assert_eq!(class(errno).recovery(), Recovery::BackOff, "errno {errno}");
    }
    assert_eq!(class(libc::EBADF).recovery(), Recovery::Fatal);
    let bind = NetError::Bind { addr: local, source: io::Error::from_raw_os_error(libc::EINTR) };
    assert_eq!(bind.recovery(), Recovery::Fatal, "only accept failures are retried");
}

#[test]
fn adopts_an_inherited_listener() {
    let original = bind_or_skip(V4).unwrap();
    let addr = original.local_addr();
    let adopted = Listener::from_fd(OwnedFd::from(original)).unwrap();
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
