//! Readiness for a service manager: with `NOTIFY_SOCKET` set, the server says
//! `READY=1` once it listens, `STATUS=` as its load changes and `STOPPING=1`
//! when shutdown starts, and a manager that stops reading never stalls it.
//! The "manager" is a datagram socket made by each test, under the temporary
//! directory or in the abstract namespace.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use integration_tests::{Server, TIMEOUT, wait_until};

/// A notification socket at a path of its own, removed when dropped.
pub(crate) struct Manager {
    socket: UnixDatagram,
    pub(crate) path: PathBuf,
}

impl Manager {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("echo-notify-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Self { socket, path }
    }

    /// The messages received until one contains `needle`, bounded by
    /// [`TIMEOUT`].
    pub(crate) fn until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        wait_until(TIMEOUT, &format!("a notification with {needle:?}"), || {
            let mut buf = [0; 4096];
            if let Ok(len) = self.socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            seen.last().is_some_and(|last| last.contains(needle)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}; got {seen:?}"));
        seen
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn ready_status_and_stopping_reach_the_manager() {
    let manager = Manager::new();
    let env = format!("NOTIFY_SOCKET={}", manager.path.display());
    let args = ["--max-children", "10"];
    let mut server = Server::start_wrapped(&["env", &env], "127.0.0.1", &args).unwrap();
    let ready = manager.until("READY=1");
    let expected = format!("READY=1\nSTATUS=listening on {}", server.addr());
    assert_eq!(ready.last().map(String::as_str), Some(expected.as_str()), "{ready:?}");

    // Each child is a tenth of the limit: each one in use is a status.
    let mut stream = crate::connect(&server);
    crate::echo(&mut stream, b"busy");
    manager.until("STATUS=1/10 children");
    drop(stream);
    manager.until("STATUS=0/10 children");

    // SIGTERM, and the exit: the message is queued on the socket by then.
    assert!(server.terminate(TIMEOUT).unwrap().success());
    manager.until("STOPPING=1");
}

#[test]
fn an_abstract_socket_name_works_too() {
    let name = format!("echo-notify-test-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let env = format!("NOTIFY_SOCKET=@{name}");
    let server = Server::start_wrapped(&["env", &env], "127.0.0.1", &[]).unwrap();
    let mut buf = [0; 4096];
    let len = socket.recv(&mut buf).unwrap();
    let message = String::from_utf8_lossy(&buf[..len]);
    assert!(message.starts_with("READY=1\n"), "{message}");
    drop(server);
}

#[test]
fn a_manager_that_stops_reading_never_stalls_the_server() {
    // Nobody reads: a datagram socket's queue holds a handful of messages
    // (net.unix.max_dgram_qlen, 10 by default), and every connection here
    // makes two (1/10, then 0/10).
    let manager = Manager::new();
    let env = format!("NOTIFY_SOCKET={}", manager.path.display());
    let args = ["--max-children", "10"];
    let server = Server::start_wrapped(&["env", &env], "127.0.0.1", &args).unwrap();
    for _ in 0..40 {
        let mut stream = crate::connect(&server);
        crate::echo(&mut stream, b"still serving");
        drop(stream);
        server.wait_for_children(0, TIMEOUT).unwrap();
    }
    let mut stream = crate::connect(&server);
    crate::echo(&mut stream, b"and more");
}
