//! Logging under pressure: a stalled log reader never stalls the server, no
//! `RUST_LOG` value can hide the `listening on` line, and nothing a client
//! can cause fills a quiet log with warnings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use integration_tests::process::Running;
use integration_tests::{Stalled, TIMEOUT, procfs, wait_until};
use nix::sys::signal::Signal;

/// One short connection: send, read the echo back, close.
fn echo_once(addr: SocketAddr, i: usize) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let message = format!("connection {i:05}");
    stream.write_all(message.as_bytes()).map_err(|e| format!("write {i}: {e}"))?;
    let mut reply = vec![0; message.len()];
    stream.read_exact(&mut reply).map_err(|e| format!("no echo for connection {i}: {e}"))?;
    if reply == message.as_bytes() { Ok(()) } else { Err(format!("bad echo for {i}")) }
}

#[test]
fn a_log_reader_that_stalls_never_stalls_the_server() {
    let mut server = Stalled::start().unwrap();
    // With -v each connection logs several lines: 400 of them are far more
    // than the 64 KiB a pipe holds, and nobody reads it.
    for i in 0..400 {
        echo_once(server.addr(), i).unwrap();
    }
    // Reaping went on too: no child left, no zombie.
    wait_until(TIMEOUT, "every child reaped", || {
        procfs::children_of(server.pid()).is_empty().then_some(())
    })
    .unwrap();

    // Once the reader drains the pipe, the server says how many lines it lost,
    // before its next line. SIGUSR2 makes it log one; it is sent again until
    // a line gets through (the first may come before the pipe has room).
    server.drain();
    wait_until(TIMEOUT, "the server to log again", || {
        server.signal(Signal::SIGUSR2).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        (!server.lines_with("received SIGUSR2").is_empty()).then_some(())
    })
    .unwrap();
    let text = server.drained();
    let note = text.find(&format!("log line(s) dropped by process {}:", server.pid()));
    let usr2 = text.find("received SIGUSR2");
    assert!(note.is_some_and(|note| Some(note) < usr2), "no count before the next line:\n{text}");
    // A new child logs normally (its lines fit now).
    echo_once(server.addr(), 400).unwrap();

    // SIGUSR1's counters include the lines lost so far.
    server.signal(Signal::SIGUSR1).unwrap();
    let line = server.wait_for("log lines dropped: ", 1).unwrap().remove(0);
    let (_, count) = line.split_once("log lines dropped: ").unwrap();
    let total: u64 = count.trim().parse().unwrap();
    assert!(total > 0, "lines were dropped, the counter says {total}");
    // Every line the parent lost is reported once, by the parent: its notes
    // add up to its counter. (A note can also slip into the last bytes of a
    // full pipe, so there may be more than one.) A child forked later starts
    // its own count: it must not report the parent's losses again.
    let mut by_parent = 0;
    for note in server.lines_with("log line(s) dropped by process ") {
        let (count, rest) = note.split_once(" log line(s) dropped by process ").unwrap();
        let count: u64 = count.trim().parse().unwrap();
        let (pid, _) = rest.split_once(':').unwrap();
        if pid == server.pid().to_string() {
            by_parent += count;
        } else {
            // A child logs a handful of lines; never the parent's hundreds.
            assert!(count < 10, "a child reported {count} lost lines: {note}");
        }
    }
    assert_eq!(by_parent, total, "the parent's notes do not add up to its counter");

    // And it still shuts down on request.
    let status = server.terminate(TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
}

/// Starts `echo-server 0 --bind 127.0.0.1 ARGS` with `RUST_LOG` set to
/// `value`, and returns its log once it says where it listens.
fn log_with_rust_log(value: &str, args: &[&str]) -> Vec<String> {
    let mut command = Command::new(integration_tests::binary("echo-server").unwrap());
    command.args(["0", "--bind", "127.0.0.1"]).args(args).env("RUST_LOG", value);
    let server = Running::spawn(command).unwrap();
    let what = format!("'listening on' with RUST_LOG={value:?} {args:?}");
    server.wait_for_stderr(TIMEOUT, &what, |line| line.contains("listening on 127.0.0.1:")).unwrap()
}

#[test]
fn no_rust_log_value_hides_the_listening_line() {
    for value in ["warn", "error", "off", "", "echo_server=debug"] {
        for args in [&[][..], &["-q"][..]] {
            let log = log_with_rust_log(value, args);
            let warned = log.iter().any(|line| line.contains("ignoring RUST_LOG"));
            assert!(!warned, "RUST_LOG={value:?} is valid: {log:?}");
        }
    }
}

#[test]
fn an_invalid_rust_log_gets_a_warning_and_the_default_level() {
    let log = log_with_rust_log("info,forkserve=loud", &[]);
    let warning = log.iter().find(|line| line.contains("ignoring RUST_LOG")).cloned();
    let warning = warning.unwrap_or_else(|| panic!("no warning: {log:?}"));
    assert!(warning.contains("WARN") && warning.contains("info,forkserve=loud"), "{warning}");
}

/// A connection from 127.0.0.1 that is reset (RST, not FIN) after one echo.
fn reset_after_echo(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"x").unwrap();
    stream.read_exact(&mut [0; 1]).unwrap();
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
}

#[test]
fn what_a_client_can_cause_is_no_warning() {
    // Resets and a flapping child limit: a remote client can cause both at
    // will, so a quiet log must not fill up with them.
    let server = crate::server("127.0.0.1", &["-q", "--max-children", "1"]);
    for _ in 0..5 {
        reset_after_echo(server.addr());
        server.wait_for_children(0, TIMEOUT).unwrap();
    }
    for _ in 0..5 {
        // Two at once: the second waits for the first, so the limit is
        // reached and cleared each time.
        let mut first = TcpStream::connect(server.addr()).unwrap();
        let mut second = TcpStream::connect(server.addr()).unwrap();
        for stream in [&mut first, &mut second] {
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        }
        first.write_all(b"1").unwrap();
        first.read_exact(&mut [0; 1]).unwrap();
        second.write_all(b"2").unwrap();
        drop(first);
        second.read_exact(&mut [0; 1]).unwrap();
        drop(second);
        server.wait_for_children(0, TIMEOUT).unwrap();
    }
    let log = server.log();
    let warnings: Vec<&String> = log.iter().filter(|line| line.contains("WARN")).collect();
    // At most the first "child limit reached" of its ten-second window.
    assert!(
        warnings.len() <= 1 && warnings.iter().all(|w| w.contains("child limit reached")),
        "{warnings:#?}"
    );
}

#[test]
fn json_lines_are_objects_with_time_level_message_and_fields() {
    let server = crate::server("127.0.0.1", &["--log-format", "json"]);
    let mut stream = crate::connect(&server);
    crate::echo(&mut stream, b"json?");
    drop(stream);
    server.wait_for_log(&["child exited with status 0"], 1, TIMEOUT).unwrap();
    let lines: Vec<serde_json::Value> = server
        .log()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        let time = line["timestamp"].as_str().unwrap_or_default();
        assert!(time.len() == 27 && time.ends_with('Z'), "timestamp: {line}");
        assert!(["INFO", "WARN", "ERROR", "DEBUG"].contains(&line["level"].as_str().unwrap()));
        assert!(line["message"].is_string() && line["target"].is_string(), "{line}");
    }
    let find = |message: &str| {
        let found = lines.iter().find(|line| line["message"].as_str() == Some(message));
        found.unwrap_or_else(|| panic!("no {message:?} in {lines:#?}")).clone()
    };
    let listening = find(&format!("listening on {}", server.addr()));
    assert_eq!(listening["pid"].as_i64(), Some(i64::from(server.pid())));
    // The parent's lines carry the child's pid as a number and the peer; the
    // child's own line carries them in its span.
    let accepted = find("accepted a connection");
    let child = accepted["pid"].as_i64().expect("pid is a number");
    let peer = accepted["peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{accepted}");
    let served = find("peer closed the connection");
    assert_eq!((served["received"].as_u64(), served["sent"].as_u64()), (Some(5), Some(5)));
    let duration = served["duration_ms"].as_f64().expect("duration_ms is a number");
    assert!((0.0..10_000.0).contains(&duration), "{served}");
    assert_eq!(served["span"]["pid"].as_i64(), Some(child), "{served}");
    assert_eq!(served["span"]["peer"].as_str(), Some(peer), "{served}");
    let reaped = find("child exited with status 0");
    assert_eq!((reaped["pid"].as_i64(), reaped["peer"].as_str()), (Some(child), Some(peer)));
}

#[test]
fn a_status_line_marks_each_tenth_of_the_child_limit_crossed() {
    let server = crate::server("127.0.0.1", &["--max-children", "20"]);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = crate::connect(&server);
        crate::echo(&mut stream, b"up");
        held.push(stream);
    }
    server.wait_for_children(5, TIMEOUT).unwrap();
    // One at a time on the way down, so each step is reaped on its own.
    while let Some(stream) = held.pop() {
        drop(stream);
        server.wait_for_children(held.len(), TIMEOUT).unwrap();
    }
    server.wait_for_log(&["child exited with status 0"], 5, TIMEOUT).unwrap();
    let status: Vec<String> = server
        .log()
        .iter()
        .filter_map(|line| line.split_once("status: ").map(|(_, rest)| rest.to_owned()))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    // Two children are a tenth of 20: up at 2 and 4, down at 3 and 1.
    assert_eq!(status, ["2/20", "4/20", "3/20", "1/20"], "{:#?}", server.log());
}

#[test]
fn a_filter_on_the_connection_span_still_gets_each_connections_end() {
    // Whether a child logs how its connection ended is decided once, in the
    // parent, outside any span: a filter that enables the line only inside
    // the child's `conn` span must still get it.
    let wrapper = ["env", "RUST_LOG=warn,[conn]=info"];
    let server = integration_tests::Server::start_wrapped(&wrapper, "127.0.0.1", &[]).unwrap();
    let mut stream = crate::connect(&server);
    crate::echo(&mut stream, b"span?");
    drop(stream);
    server.wait_for_log(&["peer closed the connection"], 1, TIMEOUT).unwrap();
    // Where the filter drops it, no child prepares it: nothing is logged.
    let quiet = crate::server("127.0.0.1", &["-q"]);
    let mut stream = crate::connect(&quiet);
    crate::echo(&mut stream, b"quiet");
    drop(stream);
    quiet.wait_for_children(0, TIMEOUT).unwrap();
    let log = quiet.log();
    assert!(!log.iter().any(|line| line.contains("peer closed")), "{log:?}");
}
