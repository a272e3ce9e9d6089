//! Child hygiene, seen from outside: whatever descriptors the launcher of
//! `echo-server` leaked and whatever signals it ignored, a child holds only
//! its standard streams and its connection, starts with a fresh program's
//! signal state, and dies with its parent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;

use integration_tests::process::KillOnDrop;
use integration_tests::procfs::{self, SignalState};
use integration_tests::{Server, TIMEOUT, wait_until};
use nix::sys::signal::Signal;

/// A launcher that leaves descriptors 3 to 9 open on /dev/null, without
/// close-on-exec, then execs the server (`$0`, the argument after the script)
/// with its arguments.
pub(crate) const LEAKING_LAUNCHER: [&str; 3] = [
    "sh",
    "-c",
    "exec 3</dev/null 4</dev/null 5</dev/null 6</dev/null 7</dev/null 8</dev/null 9</dev/null \
     \"$0\" \"$@\"",
];

/// A launcher that ignores SIGTERM, SIGHUP and SIGUSR1 (ignored signals
/// survive `execve(2)`), then execs the server.
const IGNORING_LAUNCHER: [&str; 3] = ["sh", "-c", "trap '' TERM HUP USR1; exec \"$0\" \"$@\""];

/// Starts `echo-server` on 127.0.0.1 through `launcher`.
fn server_through(launcher: &[&str]) -> Server {
    Server::start_wrapped(launcher, "127.0.0.1", &[])
        .unwrap_or_else(|e| panic!("cannot start the server through {launcher:?}: {e}"))
}

/// A connection that has been echoed once: its child is past its set-up and
/// serving.
fn served(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut reply = [0; 4];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ping");
    stream
}

#[test]
fn a_child_holds_only_its_standard_streams_and_its_connection() {
    let server = server_through(&LEAKING_LAUNCHER);
    // The leak is real: the server itself holds 3 to 9 (its own descriptors,
    // all close-on-exec, come after them).
    let parent = procfs::fds(server.pid()).unwrap();
    for fd in 3..=9 {
        let leaked = (fd, "/dev/null".to_owned());
        assert!(parent.contains(&leaked), "the launcher did not leak {fd}: {parent:?}");
    }

    let _stream = served(server.addr());
    let child = server.wait_for_children(1, TIMEOUT).unwrap()[0].pid;
    // Beyond the standard streams: the connection, and the log writer's own
    // non-blocking copy of standard error (the same pipe as descriptor 2).
    let (sockets, others) = extra_descriptors(child);
    assert!(
        sockets == 1 && others.is_empty(),
        "the child must hold its standard streams and its connection only: {:?}",
        procfs::fds(child)
    );
}

#[test]
fn a_child_keeps_the_launchers_ignores_except_sigterm_and_dies_with_its_parent() {
    let mut server = server_through(&IGNORING_LAUNCHER);
    // The launcher's ignores are real: the server inherited them.
    let parent = procfs::signal_state(server.pid()).unwrap();
    for signal in [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGTERM] {
        assert!(parent.ignored.contains(&(signal as i32)), "{signal} not ignored: {parent:?}");
    }

    let mut stream = served(server.addr());
    let child = KillOnDrop::new(server.wait_for_children(1, TIMEOUT).unwrap()[0].pid);
    let mut state = procfs::signal_state(child.pid()).unwrap();
    // glibc keeps the signals below SIGRTMIN (32 and 33) for itself: its
    // posix_spawn, which started the server, leaves them ignored, and its
    // sigaction refuses to touch them; it installs its own handlers over
    // SIG_IGN when it needs them. An ignore the parent has there is inherited.
    let glibc_own = 32..nix::libc::SIGRTMIN();
    state.ignored.retain(|s| !(glibc_own.contains(s) && parent.ignored.contains(s)));
    // Nothing blocked or caught; ignored: what the launcher ignored, as in any
    // program it starts (nohup's SIGHUP keeps its meaning), but SIGTERM, which
    // shutdown and the parent-death signal need; and SIGINT, SIGQUIT (the
    // parent's to handle) and SIGPIPE (EPIPE instead).
    let ignored =
        [Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGPIPE];
    let fresh = SignalState {
        blocked: vec![],
        ignored: ignored.map(|s| s as i32).to_vec(),
        caught: vec![],
    };
    assert_eq!(state, fresh, "the child's signal state (the parent's: {parent:?})");

    // SIGTERM on the parent's death reaches the child, though the launcher
    // ignored SIGTERM: the child gave it back its default action.
    // (The child is awaited first: until it ends it holds the server's stderr.)
    server.signal(Signal::SIGKILL).unwrap();
    wait_until(TIMEOUT, "the orphaned child to end", || {
        procfs::stat(child.pid()).is_none_or(|p| p.is_zombie()).then_some(())
    })
    .unwrap();
    let status = server.wait(TIMEOUT).unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "the server: {status}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the connection closed with the child: {rest:?}");
}

/// A child's descriptors beyond the standard streams and the log writer's
/// copy of standard error: how many sockets, and anything else.
pub(crate) fn extra_descriptors(pid: i32) -> (usize, Vec<(i32, String)>) {
    let fds = procfs::fds(pid).unwrap();
    let numbers: Vec<i32> = fds.iter().map(|&(fd, _)| fd).collect();
    assert_eq!(numbers[..3], [0, 1, 2], "{fds:?}");
    let stderr = fds[2].1.clone();
    let sockets = fds.iter().filter(|(fd, to)| *fd > 2 && to.starts_with("socket:[")).count();
    let others =
        fds.into_iter().filter(|(fd, to)| *fd > 2 && !to.starts_with("socket:[") && *to != stderr);
    (sockets, others.collect())
}
