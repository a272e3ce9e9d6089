//! Logging under pressure: a stalled log reader never stalls the server, no
//! `RUST_LOG` value can hide the `listening on` line, and nothing a client
//! can cause fills a quiet log with warnings.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use integration_tests::process::Running;
use integration_tests::{TIMEOUT, procfs, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A server whose standard error is a pipe this test reads only when it
/// chooses; killed with its children when dropped.
struct Unread {
    child: Child,
    addr: SocketAddr,
    /// The read end of the server's stderr, not read until [`Unread::drain`].
    stderr: Option<BufReader<ChildStderr>>,
}

impl Unread {
    /// Starts `echo-server 0 --bind 127.0.0.1 -v` and reads its stderr up to
    /// the `listening on` line, then stops reading.
    fn start() -> Self {
        let mut child = Command::new(integration_tests::binary("echo-server").unwrap())
            .args(["0", "--bind", "127.0.0.1", "-v"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        // Read on a thread, so the wait is bounded; the reader comes back
        // (still open: closing it would turn a full pipe into EPIPE).
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    let _ = sender.send((addr, stderr));
                    return;
                }
                line.clear();
            }
        });
        let (addr, stderr) = receiver.recv_timeout(TIMEOUT).expect("no 'listening on' line");
        Self { child, addr: addr.expect("no address in the line"), stderr: Some(stderr) }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Reads the server's stderr from now on, on a thread; returns what has
    /// been read so far, shared.
    fn drain(&mut self) -> Arc<Mutex<String>> {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let mut stderr = self.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap_or_else(PoisonError::into_inner).push_str(&chunk);
            }
        });
        text
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        for child in procfs::children_of(self.pid()) {
            let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let mut server = Unread::start();
    // With -v each connection logs several lines: 400 of them are far more
    // than the 64 KiB a pipe holds, and nobody reads it.
    for i in 0..400 {
        echo_once(server.addr, i).unwrap();
    }
    // Reaping went on too: no child left, no zombie.
    wait_until(TIMEOUT, "every child reaped", || {
        procfs::children_of(server.pid()).is_empty().then_some(())
    })
    .unwrap();

    // Once the reader drains the pipe, the server says how many lines it lost,
    // before its next line. SIGUSR2 makes it log one; it is sent again until
    // a line gets through (the first may come before the pipe has room).
    let log = server.drain();
    wait_until(TIMEOUT, "the server to log again", || {
        kill(Pid::from_raw(server.pid()), Signal::SIGUSR2).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.contains("received SIGUSR2").then_some(())
    })
    .unwrap();
    let text = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let note = text.find("log line(s) dropped: standard error was not being read");
    let usr2 = text.find("received SIGUSR2");
    assert!(note.is_some_and(|note| Some(note) < usr2), "no count before the next line:\n{text}");
    // A new child logs normally (its lines fit now).
    echo_once(server.addr, 400).unwrap();

    // SIGUSR1's counters include the lines lost so far.
    kill(Pid::from_raw(server.pid()), Signal::SIGUSR1).unwrap();
    let total = wait_until(TIMEOUT, "the dropped-lines counter", || {
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, rest) = log.split_once("log lines dropped: ")?;
        rest.split_whitespace().next()?.parse::<u64>().ok()
    })
    .unwrap();
    assert!(total > 0, "lines were dropped, the counter says {total}");
    // Said once, by the parent: a child forked later starts its own count
    // (it must not report the parent's losses again).
    let log = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let notes = log.matches("log line(s) dropped").count();
    assert_eq!(notes, 1, "the losses were reported {notes} times:\n{log}");

    // And it still shuts down on request.
    kill(Pid::from_raw(server.pid()), Signal::SIGTERM).unwrap();
    let status =
        wait_until(TIMEOUT, "the server to exit", || server.child.try_wait().ok()?).unwrap();
    assert!(status.success(), "{status}");
}

/// Starts `echo-server 0 --bind 127.0.0.1 ARGS` with `RUST_LOG` set to
/// `value`, and returns its log once it says where it listens.
fn log_with_rust_log(value: &str, args: &[&str]) -> Vec<String> {
    let mut command = Command::new(integration_tests::binary("echo-server").unwrap());
    command.args(["0", "--bind", "127.0.0.1"]).args(args).env("RUST_LOG", value);
    let server = Running::spawn(command).unwrap();
    wait_until(TIMEOUT, &format!("'listening on' with RUST_LOG={value:?} {args:?}"), || {
        let log = server.stderr();
        log.iter().any(|line| line.contains("listening on 127.0.0.1:")).then_some(log)
    })
    .unwrap()
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
