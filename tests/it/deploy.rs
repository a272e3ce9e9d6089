//! The deployment files in `docs/deploy/` run as their managers would run
//! them: each unit's or line's command, with the built binary in place of
//! `/usr/local/bin/echo-server`, under systemd-socket-activate (`Accept=no`
//! with `Type=notify`; `Accept=yes`, which is also how inetd and xinetd run a
//! `nowait` service). A flag renamed or dropped in the server breaks them.

use std::path::Path;

use integration_tests::TIMEOUT;

use crate::activation::activate;
use crate::exchange;
use crate::readiness::Manager;

/// A deployment file's text.
fn file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key` in a unit file, comments skipped.
fn values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// The one value of `key`.
fn value(unit: &str, key: &str) -> String {
    let found = values(unit, key);
    assert_eq!(found.len(), 1, "{key} in {unit}");
    found[0].clone()
}

/// The arguments after the program in a command line naming
/// `/usr/local/bin/echo-server` (a leading `-`, "failure is fine", dropped).
fn server_args(command: &str) -> Vec<String> {
    let mut words = command.trim_start_matches('-').split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/echo-server"), "{command}");
    words.map(str::to_owned).collect()
}

#[test]
fn the_systemd_units_start_notify_and_stop_as_written() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    let socket = file("echo-server.socket");
    let service = file("echo-server.service");
    assert_eq!(value(&socket, "Accept"), "no");
    assert_eq!(value(&service, "Type"), "notify");
    assert_eq!(value(&service, "KillMode"), "mixed", "the grace period must be the server's");
    let stop_after: u64 = value(&service, "TimeoutStopSec").parse().unwrap();
    let args = server_args(&value(&service, "ExecStart"));
    let grace: f64 = args.iter().skip_while(|a| *a != "--grace").nth(1).unwrap().parse().unwrap();
    // Grace, then SIGTERM, then SIGKILL 2 s later: all before systemd's own
    // SIGKILL to the cgroup.
    assert!(grace + 2.0 < stop_after as f64, "TimeoutStopSec={stop_after}, --grace {grace}");

    let manager = Manager::new();
    let notify = format!("NOTIFY_SOCKET={}", manager.path.display());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, addr) = activate(&["-E", &notify], None, &args);
    assert_eq!(exchange(addr, b"deployed"), b"deployed");
    manager.until("READY=1");
    server.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = server.wait(std::time::Duration::from_secs(stop_after)).unwrap();
    assert!(status.success(), "{status}: {:#?}", server.stderr());
    manager.until("STOPPING=1");
}

#[test]
fn the_accept_yes_units_inetd_and_xinetd_lines_serve_a_connection_each() {
    if !crate::tool_or_skip("systemd-socket-activate") {
        return;
    }
    assert_eq!(value(&file("echo-server-inetd.socket"), "Accept"), "yes");
    let unit = server_args(&value(&file("echo-server-inetd@.service"), "ExecStart"));

    let inetd = file("inetd.conf");
    let line = inetd.lines().find(|line| !line.starts_with('#') && !line.trim().is_empty());
    let fields: Vec<&str> = line.unwrap().split_whitespace().collect();
    assert_eq!(fields[1..4], ["stream", "tcp", "nowait"], "{fields:?}");
    assert_eq!(fields[5], "/usr/local/bin/echo-server");
    let inetd_args: Vec<String> = fields[7..].iter().map(|a| (*a).to_owned()).collect();

    let xinetd = file("xinetd.conf");
    let server_args_line = xinetd.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "server_args").then(|| value.trim().to_owned())
    });
    let xinetd_args: Vec<String> =
        server_args_line.unwrap().split_whitespace().map(str::to_owned).collect();
    assert!(xinetd.contains("wait\t\t= no"), "xinetd must run it nowait");

    for (name, args) in [("unit", unit), ("inetd.conf", inetd_args), ("xinetd", xinetd_args)] {
        assert!(args.iter().any(|a| a == "--inetd"), "{name}: {args:?}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (manager, addr) = activate(&["--inetd", "-a"], None, &args);
        assert_eq!(exchange(addr, name.as_bytes()), name.as_bytes(), "{name}");
        integration_tests::wait_until(TIMEOUT, "the instance's exit", || {
            manager.stderr().iter().any(|line| line.ends_with("died with code 0")).then_some(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}: {:#?}", manager.stderr()));
    }
}
