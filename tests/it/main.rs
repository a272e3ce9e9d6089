//! End-to-end tests: the real `echo-server` and `echo-client` binaries and the
//! forkserve examples, driven as processes over 127.0.0.1 and ::1 on ephemeral
//! ports, and the tidy checks of the architecture's rules. One module per topic.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod activation;
mod bad_input;
mod client;
mod deploy;
mod echo;
mod examples;
mod exec;
mod hygiene;
mod limits;
mod logging;
mod manual;
mod policy;
mod prefork;
mod privileges;
mod proxy;
mod readiness;
mod reaping;
mod scaling;
mod shutdown;
mod signals;
mod tidy;
mod udp;

use integration_tests::{Server, SharedCopy, TIMEOUT, current_test, skip};

/// The loopback addresses to test on: IPv4 always, IPv6 when the machine has
/// it (a missing IPv6 is recorded as a skip of the calling test).
fn loopbacks() -> Vec<&'static str> {
    let mut ips = vec!["127.0.0.1"];
    if integration_tests::ipv6_available() {
        ips.push("::1");
    } else {
        skip(&current_test(), "IPv6 loopback unavailable: tested on IPv4 only");
    }
    ips
}

/// Whether the IPv6 loopback can be used; if not, records that the calling
/// test is skipped.
fn ipv6_or_skip() -> bool {
    let available = integration_tests::ipv6_available();
    if !available {
        skip(&current_test(), "IPv6 loopback unavailable");
    }
    available
}

/// A connection to `server`, reads bounded by the harness's timeout.
fn connect(server: &Server) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(integration_tests::TIMEOUT)).unwrap();
    stream
}

/// Sends `message` and expects it back, byte for byte: the connection is
/// served.
fn echo(stream: &mut std::net::TcpStream, message: &[u8]) {
    use std::io::{Read, Write};
    stream.write_all(message).unwrap();
    let mut reply = vec![0; message.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, message);
}

/// One connection's whole exchange: `input` sent, the sending side shut
/// down, everything read until the server closes; the stream (for its local
/// address) and what came back.
fn exchange_on(addr: std::net::SocketAddr, input: &[u8]) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(integration_tests::TIMEOUT)).unwrap();
    stream.write_all(input).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    (stream, back)
}

/// What came back from one whole exchange (see [`exchange_on`]).
fn exchange(addr: std::net::SocketAddr, input: &[u8]) -> Vec<u8> {
    exchange_on(addr, input).1
}

/// A connection to `addr`, sent `input`, is closed unserved: an empty read,
/// or the kernel's reset (a socket closed with unread data answers so).
fn expect_unserved(addr: std::net::SocketAddr, input: &[u8]) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(integration_tests::TIMEOUT)).unwrap();
    let _ = stream.write_all(input);
    let mut back = Vec::new();
    match stream.read_to_end(&mut back) {
        Ok(_) => assert!(back.is_empty(), "an unserved client got {back:?}"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
}

/// Stops `server` with SIGSTOP and waits until it really is stopped (the
/// signal takes effect only when the process next runs kernel code), so that
/// clients that connect now wait in its backlog.
fn stop(server: &Server) {
    stop_pid(server.pid());
}

/// [`stop`] for any process of the test's: a server's child, say.
fn stop_pid(pid: i32) {
    let pid_t = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGSTOP).unwrap();
    integration_tests::wait_until(TIMEOUT, &format!("{pid} to stop"), || {
        integration_tests::procfs::stat(pid).is_some_and(|p| p.state == 'T').then_some(())
    })
    .unwrap();
}

/// The server's counters line after SIGUSR1, once it shows `wanted`.
fn counters_with(server: &Server, wanted: &str) -> String {
    integration_tests::wait_until(TIMEOUT, &format!("counters with {wanted:?}"), || {
        server.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        server
            .log()
            .into_iter()
            .rev()
            .find(|line| line.contains("counters:") && line.contains(wanted))
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", server.log()))
}

/// How [`started_on_a_free_port`] tells that a program is listening.
#[derive(Debug, Clone, Copy)]
enum Ready<'a> {
    /// A line of its standard error starts with this.
    LogLine(&'a str),
    /// A connection to it succeeds (for programs that log nothing when they
    /// start, and whose first connection costs nothing).
    Connects,
}

/// A program that listens on a port it is told (a superserver, a balancer),
/// started by `command(addr)` for a free `addr` of 127.0.0.1, once it is
/// `ready`; retried on another port if the one picked was taken in between.
/// Returns it and its address.
fn started_on_a_free_port(
    name: &str,
    ready: Ready<'_>,
    command: impl Fn(std::net::SocketAddr) -> std::process::Command,
) -> (integration_tests::process::Running, std::net::SocketAddr) {
    use std::net::{TcpListener, TcpStream};
    for _ in 0..5 {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut running = integration_tests::process::Running::spawn(command(addr)).unwrap();
        let up = integration_tests::wait_until(TIMEOUT, &format!("{name} listening"), || {
            let listening = match ready {
                Ready::LogLine(start) => running.stderr().iter().any(|l| l.starts_with(start)),
                Ready::Connects => TcpStream::connect(addr).is_ok(),
            };
            if listening {
                return Some(true);
            }
            running.try_status().map(|_| false)
        });
        if up == Ok(true) {
            return (running, addr);
        }
    }
    panic!("{name} could not listen on a free port five times");
}

/// Two clients served by a server whose child limit is 2, once it has logged
/// reaching the limit.
fn filling_two_children(server: &Server) -> (std::net::TcpStream, std::net::TcpStream) {
    let (mut first, mut second) = (connect(server), connect(server));
    echo(&mut first, b"one");
    echo(&mut second, b"two");
    server.wait_for_log(&["child limit reached"], 1, TIMEOUT).unwrap();
    (first, second)
}

/// A third client of a server at its child limit: its handshake completes in
/// the kernel's backlog, but nothing serves it yet (no echo within 300 ms).
fn waiting_in_the_backlog(server: &Server) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut third = connect(server);
    third.write_all(b"three").unwrap();
    third.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    let err = third.read(&mut [0; 5]).unwrap_err();
    let waited =
        matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    assert!(waited, "{err:?}");
    third.set_read_timeout(Some(TIMEOUT)).unwrap();
    third
}

/// Starts a server on `ip` with `args`, panicking with the reason on failure.
fn server(ip: &str, args: &[&str]) -> Server {
    Server::start(ip, args).unwrap_or_else(|e| panic!("cannot start a server on {ip}: {e}"))
}

/// Whether this test process runs as root (the owner of /proc/self).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `program --version` runs; if not, records that the calling test
/// is skipped.
fn tool_or_skip(program: &str) -> bool {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !runs {
        skip(&current_test(), &format!("needs {program}, which does not run here"));
    }
    runs
}

/// Whether `program` is an executable on `PATH` (for tools with no
/// `--version`, such as tcpserver); if not, records that the calling test is
/// skipped.
fn installed_or_skip(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    if !found {
        skip(&current_test(), &format!("needs {program}, which is not installed"));
    }
    found
}

/// What a test needs to run `echo-server` as `nobody`.
struct Nobody {
    /// `setpriv … --`: runs the program that follows as nobody.
    wrapper: Vec<&'static str>,
    /// A copy of `echo-server` that nobody can reach and run, wherever the
    /// checkout lives (a home directory of mode 700, say).
    server: SharedCopy,
    /// Other nobody tests wait until this one is done.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Everything needed to run the server as `nobody`, checked by running
/// `echo-server --version` so; `None` (with a skip of the calling test
/// recorded) when that is impossible here.
fn as_nobody() -> Option<Nobody> {
    let test = &current_test();
    if !is_root() {
        skip(test, "needs root to switch to an unprivileged user");
        return None;
    }
    if !tool_or_skip("setpriv") {
        return None;
    }
    let one_at_a_time = one_nobody_test_at_a_time();
    let binary = integration_tests::binary("echo-server").unwrap();
    let server = SharedCopy::of(&binary).unwrap();
    let wrapper = vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
    let mut probe = Server::run_at(&wrapper, server.path(), &["--version"], TIMEOUT);
    // A file just written can be busy for a moment: a process forked by
    // another test meanwhile holds it open for writing until it execs.
    for _ in 0..10 {
        let busy =
            probe.as_ref().is_ok_and(|done| done.stderr.join("\n").contains("Text file busy"));
        if !busy {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        probe = Server::run_at(&wrapper, server.path(), &["--version"], TIMEOUT);
    }
    match probe {
        Ok(done) if done.status.success() => {
            Some(Nobody { wrapper, server, _one_at_a_time: one_at_a_time })
        }
        other => {
            let path = server.path().display();
            skip(test, &format!("cannot run {path} as nobody: {other:?}"));
            None
        }
    }
}

/// Tests that run processes as nobody, or count and limit nobody's processes,
/// must not overlap: the guard holds the others off.
fn one_nobody_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static NOBODY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    NOBODY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Deterministic pseudo-random bytes (xorshift64*): binary, with NULs and
/// every byte value, reproducible from `seed`.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}
