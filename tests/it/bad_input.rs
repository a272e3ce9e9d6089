//! Bad input: usage errors exit 2 with clap's message; runtime failures exit 1
//! with one `error:` line naming the address and the cause; never a panic.

use std::io::Write;
use std::net::TcpListener;

use integration_tests::{Client, Server, TIMEOUT};

use crate::{as_nobody, server};

#[test]
fn server_usage_errors_exit_2() {
    for (args, needle) in [
        (&["abc"][..], "invalid value 'abc'"),
        (&["70000"], "70000 is not in 0..=65535"),
        (&["-1"], "unexpected argument '-1'"),
        (&["7000", "--bind", "not-an-ip"], "is not an IPv4 or IPv6 address"),
        (&["7000", "--bind", "127.0.0.1:80"], "is not an IPv4 or IPv6 address"),
        (&["7000", "--backlog", "0"], "invalid value '0'"),
        (&["7000", "--max-children", "0"], "invalid value '0'"),
        (&["7000", "--grace", "-3"], "unexpected argument"),
        (&["7000", "--grace", "NaN"], "is not a number of seconds"),
        (&["7000", "extra"], "unexpected argument 'extra'"),
        (&["0", "--bind", "::ffff:127.0.0.1"], "IPv4-mapped IPv6 address"),
        (&["0", "--bind", "::ffff:127.0.0.1"], "use --bind 127.0.0.1"),
        (&["0", "--bind", "fe80::1"], "is link-local: name its interface"),
        (&["0", "--bind", "fe80::1%no-such-if"], "no network interface named 'no-such-if'"),
        (&["0", "--idle-timeout", "0.0001"], "under a millisecond; 0 means never"),
        (&["0", "-4", "--bind", "127.0.0.1"], "'-4' cannot be used with '--bind <ADDR>'"),
        (&["0", "-6", "--bind", "::1"], "'-6' cannot be used with '--bind <ADDR>'"),
        (&["0", "-4", "-6"], "'-4' cannot be used with '-6'"),
        (&["0", "--inetd"], "'[PORT]' cannot be used with '--inetd'"),
        (&["--inetd", "--", "cat"], "cannot be used with"),
    ] {
        let done = Server::run(&[], args, TIMEOUT).unwrap();
        done.expect_error(2, &[needle]).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
}

#[test]
fn server_reports_an_address_in_use_in_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let done = Server::run(&[], &[&port, "--bind", "127.0.0.1"], TIMEOUT).unwrap();
    let expected = format!("error: cannot bind 127.0.0.1:{port}: Address already in use");
    done.expect_error(1, &[&expected]).unwrap();
}

#[test]
fn server_reports_the_same_address_bound_twice() {
    let done =
        Server::run(&[], &["0", "--bind", "127.0.0.1", "--bind", "127.0.0.1"], TIMEOUT).unwrap();
    done.expect_error(1, &["error: cannot bind 127.0.0.1:", "Address already in use"]).unwrap();
}

#[test]
fn server_reports_an_address_that_is_not_local() {
    // TEST-NET-1 is never assigned to a host: bind(2) fails locally.
    let done = Server::run(&[], &["0", "--bind", "192.0.2.1"], TIMEOUT).unwrap();
    done.expect_error(1, &["cannot bind 192.0.2.1:0", "Cannot assign requested address"]).unwrap();
}

#[test]
fn server_reports_permission_denied_for_a_privileged_port() {
    let Some(nobody) = as_nobody() else { return };
    // Port 7 is privileged; the kernel refuses an unprivileged bind(2) before
    // looking at whether the port is in use, so nothing is ever bound here.
    let args = ["7", "--bind", "127.0.0.1"];
    let done = Server::run_at(&nobody.wrapper, nobody.server.path(), &args, TIMEOUT).unwrap();
    done.expect_error(1, &["cannot bind 127.0.0.1:7", "Permission denied"]).unwrap();
}

#[test]
fn client_usage_errors_exit_2() {
    for (args, needle) in [
        (&[][..], "required arguments were not provided"),
        (&["127.0.0.1"], "required arguments were not provided"),
        (&["127.0.0.1", "abc"], "invalid value 'abc'"),
        (&["127.0.0.1", "0"], "0 is not in 1..=65535"),
        (&["127.0.0.1", "99999"], "99999 is not in 1..=65535"),
        (&["127.0.0.1", "7", "--mode", "chunks"], "invalid value 'chunks'"),
    ] {
        let done = Client::run(args, b"", TIMEOUT).unwrap();
        done.expect_error(2, &[needle]).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
}

#[test]
fn client_reports_a_refused_connection() {
    for ip in crate::loopbacks() {
        // A port that was free a moment ago: bind it, note it, close it.
        let addr = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap();
        let port = addr.port().to_string();
        let done = Client::run(&[ip, &port], b"hello\n", TIMEOUT).unwrap();
        let expected = format!("error: cannot connect to {addr}: Connection refused");
        done.expect_error(1, &[&expected]).unwrap();
    }
}

#[test]
fn client_reports_an_unknown_host() {
    let done = Client::run(&["no-such-host.invalid", "7000"], b"", TIMEOUT).unwrap();
    done.expect_error(1, &["error: cannot resolve no-such-host.invalid (port 7000)"]).unwrap();
}

#[test]
fn streaming_client_reports_a_server_that_closes_first() {
    let server = server("127.0.0.1", &[]);
    let mut client = Client::connect(server.addr(), &["--mode", "stream"]).unwrap();
    client.send(b"some input, and more to come").unwrap();
    client.wait_for_output(28, TIMEOUT).unwrap();
    server.signal_only_child(nix::sys::signal::Signal::SIGKILL).unwrap();
    // Input is still open: the client must notice the close on its own.
    let done = client.finish(TIMEOUT).unwrap();
    done.expect_error(1, &["closed the connection before all input was sent"]).unwrap();
}

#[test]
fn client_output_to_a_closed_pipe_ends_it_quietly_not_with_a_panic() {
    use std::process::{Command, Stdio};
    let server = server("127.0.0.1", &[]);
    let port = server.addr().port().to_string();
    // Standard output is a pipe whose reading end is already closed.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(integration_tests::binary("echo-client").unwrap())
        .args(["127.0.0.1", &port, "--mode", "stream"])
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The client stops at its first write to stdout, as filters do when
    // their reader goes away (`| head`): quietly, exit 0.
    let _ = stdin.write_all(&vec![b'x'; 1 << 20]);
    drop(stdin);
    let status =
        integration_tests::wait_until(TIMEOUT, "the client to exit", || child.try_wait().unwrap());
    if status.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert_eq!(status.unwrap().code(), Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_quiet_server_says_where_it_listens_and_nothing_else() {
    let mut server = server("127.0.0.1", &["-q"]);
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"x").unwrap();
    // Take the echo before closing: unread data would make close(2) send a
    // reset, which the child rightly reports as a warning.
    std::io::Read::read_exact(&mut stream, &mut [0]).unwrap();
    drop(stream);
    // A connection accepted, served and reaped: each step logs at the default
    // level, and none of it may show when quiet. Once the server has exited,
    // its whole log is in.
    server.wait_for_children(0, TIMEOUT).unwrap();
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
    let log = server.log();
    let listening = format!("listening on {}", server.addr());
    assert!(log.first().is_some_and(|line| line.contains(&listening)), "{log:?}");
    // Besides, only the counters an operator asks for (the shutdown summary),
    // which count the connection that logged nothing.
    let counters = "forkserve::counters";
    assert!(log[1..].iter().all(|line| line.contains(counters)), "{log:?}");
    assert!(log.iter().any(|line| line.contains("exiting: served 1;")), "{log:?}");
}

#[test]
fn a_link_local_address_with_its_zone_is_taken_as_given() {
    if !crate::ipv6_or_skip() {
        return;
    }
    // fe80::1 on the loopback interface (index 1): parsed, and handed to the
    // kernel with its zone; no such address exists there, so nothing binds
    // and no packet is ever sent.
    let done = Server::run(&[], &["0", "--bind", "fe80::1%lo"], TIMEOUT).unwrap();
    done.expect_error(1, &["error: cannot bind [fe80::1%1]:0: Cannot assign requested address"])
        .unwrap();
}
