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
pub(crate) fn file(name: &str) -> String {
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
        manager
            .wait_for_stderr(TIMEOUT, "the instance's exit", |line| {
                line.ends_with("died with code 0")
            })
            .unwrap_or_else(|e| panic!("{name}: {e}: {:#?}", manager.stderr()));
    }
}

/// The xinetd service of `docs/deploy/xinetd.conf` as xinetd reads it, with
/// the test's port, the loopback address, and `server` for the binary; the
/// rest (user, `wait = no`, the arguments, the limits) as written.
fn xinetd_service(written: &str, port: u16, server: &Path, log: &Path) -> String {
    let mut conf = format!("defaults\n{{\n\tlog_type = FILE {}\n}}\n", log.display());
    for line in written.lines().filter(|line| !line.trim_start().starts_with('#')) {
        let key = line.split('=').next().unwrap_or_default().trim();
        let line = match key {
            "port" => format!("\tport = {port}\n\tbind = 127.0.0.1"),
            "server" => format!("\tserver = {}", server.display()),
            // IPv6 would bind [::]: tests use the loopback only.
            "flags" => continue,
            _ => line.to_owned(),
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    conf
}

#[test]
fn xinetd_runs_the_service_as_written_one_child_per_connection_as_nobody() {
    use std::net::TcpStream;
    if !crate::installed_or_skip("xinetd") {
        return;
    }
    let Some(nobody) = crate::as_nobody() else { return };
    let written = file("xinetd.conf");
    assert!(written.contains("user\t\t= nobody"), "the service must not run as root");
    let dir = std::env::temp_dir().join(format!("forkecho-xinetd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (conf_path, log) = (dir.join("xinetd.conf"), dir.join("xinetd.log"));
    let (manager, addr) = crate::started_on_a_free_port("xinetd", crate::Ready::Connects, |addr| {
        let conf = xinetd_service(&written, addr.port(), nobody.server.path(), &log);
        std::fs::write(&conf_path, conf).unwrap();
        let mut command = std::process::Command::new("xinetd");
        command.arg("-dontfork").arg("-f").arg(&conf_path).arg("-pidfile").arg(dir.join("pid"));
        command
    });
    // The readiness probe above was a connection too: it was served and ended.
    assert_eq!(exchange(addr, b"through xinetd"), b"through xinetd");
    // A held connection: its echo-server, forked by xinetd, runs as nobody.
    let mut held = TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(TIMEOUT)).unwrap();
    crate::echo(&mut held, b"held");
    let child = integration_tests::wait_until(TIMEOUT, "xinetd's child", || {
        integration_tests::procfs::children_of(manager.pid()).into_iter().find(|c| !c.is_zombie())
    })
    .unwrap();
    let uid = crate::privileges::ids(child.pid, "Uid:");
    assert_eq!(uid.first(), Some(&crate::privileges::nobody().0), "not nobody: {uid:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.pid)).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("--inetd"), "{cmdline:?}");
    drop(held);
    drop(manager);
    let _ = std::fs::remove_dir_all(&dir);
}
