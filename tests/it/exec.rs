//! Exec mode (`echo-server … -- PROGRAM ARGS…`): each child runs PROGRAM on
//! its connection as tcpserver would, under the server's limits and logging.

use std::net::TcpStream;

use integration_tests::TIMEOUT;

/// One whole exchange with `server`: the stream and the reply as text.
fn exchange(server: &integration_tests::Server, input: &[u8]) -> (TcpStream, String) {
    let (stream, back) = crate::exchange_on(server.addr(), input);
    (stream, String::from_utf8(back).unwrap())
}

#[test]
fn cat_makes_an_echo_server() {
    let server = crate::server("127.0.0.1", &["--", "cat"]);
    let (_, output) = exchange(&server, b"through cat\n");
    assert_eq!(output, "through cat\n");
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
}

#[test]
fn the_program_gets_the_ucspi_variables_and_default_signals() {
    let script = "echo \"$PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT \
                  ${TCPREMOTEHOST-unset}\"; grep -E '^SigIgn' /proc/self/status";
    let server = crate::server("127.0.0.1", &["--", "sh", "-c", script]);
    let (stream, output) = exchange(&server, b"");
    let local = stream.local_addr().unwrap();
    let mut lines = output.lines();
    let expected =
        format!("TCP 127.0.0.1 {} 127.0.0.1 {} unset", local.port(), server.addr().port());
    assert_eq!(lines.next(), Some(expected.as_str()), "{output}");
    // SIGINT (bit 1) and SIGQUIT (bit 2) are no longer ignored, as the
    // child's set-up had them: a program must be able to use them.
    let ignored = lines.next().and_then(|line| line.split_whitespace().nth(1)).unwrap();
    let mask = u64::from_str_radix(ignored, 16).unwrap();
    assert_eq!(mask & 0b110, 0, "SigIgn {ignored}");
}

#[test]
fn the_program_s_exit_status_is_the_child_s() {
    let server = crate::server("127.0.0.1", &["--", "sh", "-c", "exit 3"]);
    exchange(&server, b"");
    server.wait_for_log(&["child exited with status 3"], 1, TIMEOUT).unwrap();
}

#[test]
fn a_program_that_cannot_run_stops_the_server_before_it_listens() {
    let args = ["0", "--bind", "127.0.0.1", "--", "/nonexistent/program"];
    let done = integration_tests::Server::run(&[], &args, TIMEOUT).unwrap();
    done.expect_error(1, &["cannot run /nonexistent/program: no such executable"]).unwrap();
    assert!(!done.stderr.iter().any(|line| line.contains("listening on")));
    let args = ["0", "--bind", "127.0.0.1", "--", "no-such-program-in-path"];
    let done = integration_tests::Server::run(&[], &args, TIMEOUT).unwrap();
    done.expect_error(1, &["cannot run no-such-program-in-path"]).unwrap();
}

#[test]
fn a_program_gone_since_start_is_a_warning_and_status_127() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("echo-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("vanishing");
    std::fs::write(&program, "#!/bin/sh\ncat\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = crate::server("127.0.0.1", &["--", program.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    crate::expect_unserved(server.addr(), b"anyone?");
    server.wait_for_log(&[&format!("cannot run {}", program.display())], 1, TIMEOUT).unwrap();
    server.wait_for_log(&["child exited with status 127"], 1, TIMEOUT).unwrap();
}

#[test]
fn the_limits_apply_in_exec_mode() {
    let server = crate::server("127.0.0.1", &["--max-per-ip", "1", "--", "cat"]);
    let mut first = crate::connect(&server);
    crate::echo(&mut first, b"one");
    // A second connection from the same address is closed unserved.
    crate::expect_unserved(server.addr(), b"two");
    server.wait_for_log(&["refused"], 1, TIMEOUT).unwrap();
}

#[test]
fn the_idle_timeout_does_not_reach_the_program() {
    // SO_RCVTIMEO survives execve: left set, cat's read would fail with EAGAIN
    // after 0.2 s and the connection would close unechoed.
    let server = crate::server("127.0.0.1", &["--idle-timeout", "0.2", "--", "cat"]);
    let mut stream = crate::connect(&server);
    std::thread::sleep(std::time::Duration::from_millis(600));
    crate::echo(&mut stream, b"late but welcome");
}

#[test]
fn signals_the_launcher_ignored_stay_ignored_in_the_program() {
    // A background job of a non-interactive shell starts with SIGINT and
    // SIGQUIT ignored; a program the server runs must inherit that, as any
    // program that shell started would.
    let script = "grep -E '^SigIgn' /proc/self/status";
    let wrapper = ["sh", "-c", "trap '' INT QUIT; exec \"$@\"", "sh"];
    let server = integration_tests::Server::start_wrapped(
        &wrapper,
        "127.0.0.1",
        &["--", "sh", "-c", script],
    )
    .unwrap();
    let (_, output) = exchange(&server, b"");
    let ignored = output.split_whitespace().nth(1).unwrap();
    let mask = u64::from_str_radix(ignored, 16).unwrap();
    assert_eq!(mask & 0b110, 0b110, "SigIgn {ignored}");
}
