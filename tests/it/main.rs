//! End-to-end tests: the real `echo-server` and `echo-client` binaries and the
//! forkserve examples, driven as processes over 127.0.0.1 and ::1 on ephemeral
//! ports, and the tidy checks of the architecture's rules. One module per topic.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod bad_input;
mod echo;
mod examples;
mod hygiene;
mod limits;
mod logging;
mod policy;
mod reaping;
mod shutdown;
mod signals;
mod tidy;

use integration_tests::Server;

/// The loopback addresses to test on: IPv4 always, IPv6 when the machine has it.
fn loopbacks() -> Vec<&'static str> {
    let mut ips = vec!["127.0.0.1"];
    if integration_tests::ipv6_available() {
        ips.push("::1");
    } else {
        eprintln!("IPv6 loopback unavailable: testing IPv4 only");
    }
    ips
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

/// `setpriv` arguments that run the next program as `nobody`, if possible.
fn as_nobody() -> Option<Vec<&'static str>> {
    let wrapper = vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
    if !is_root() {
        eprintln!("skipping: needs root to switch to an unprivileged user");
        return None;
    }
    let _one_at_a_time = one_nobody_test_at_a_time();
    match integration_tests::Server::run(&wrapper, &["--version"], integration_tests::TIMEOUT) {
        Ok(done) if done.status.success() => Some(wrapper),
        other => {
            eprintln!("skipping: cannot run the server as nobody: {other:?}");
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
