//! Dropping root after binding (`--user`, `--group`): the parent and every
//! child run as the user, and a drop that cannot be done stops the server
//! before it serves anyone.

use std::os::unix::fs::MetadataExt;

use integration_tests::{Server, TIMEOUT};

use integration_tests::{current_test, skip};

use crate::{as_nobody, is_root};

/// The `Uid:` or `Gid:` line of `/proc/PID/status` (real, effective, saved,
/// filesystem), or `Groups:`.
pub(crate) fn ids(pid: i32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(key)).unwrap();
    line[key.len()..].split_whitespace().map(|id| id.parse().unwrap()).collect()
}

/// nobody's uid and primary gid, from the password database.
pub(crate) fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd.lines().find(|line| line.starts_with("nobody:")).expect("a nobody user");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

#[test]
fn after_binding_the_server_and_its_children_run_as_the_user() {
    if !is_root() {
        skip(&current_test(), "needs root to drop privileges");
        return;
    }
    let (uid, gid) = nobody();
    let server = crate::server("127.0.0.1", &["--user", "nobody"]);
    let line = format!("running as user nobody (uid {uid})");
    server.wait_for_log(&[&line], 1, TIMEOUT).unwrap();
    let mut stream = crate::connect(&server);
    crate::echo(&mut stream, b"who am i");
    let child = server.wait_for_children(1, TIMEOUT).unwrap()[0].pid;
    for pid in [server.pid(), child] {
        assert_eq!(ids(pid, "Uid:"), [uid; 4], "pid {pid}");
        assert_eq!(ids(pid, "Gid:"), [gid; 4], "pid {pid}");
        // root's supplementary groups are gone: only nobody's own remain.
        assert!(ids(pid, "Groups:").iter().all(|&group| group != 0), "pid {pid}");
    }
    // Not even the binary's owner: the process really is nobody now.
    assert_ne!(std::fs::metadata(format!("/proc/{}", server.pid())).unwrap().uid(), 0);
}

#[test]
fn a_user_or_group_that_does_not_exist_stops_the_server_before_it_serves() {
    for (args, needle) in [
        (&["--user", "no-such-user-here"][..], "no user named \"no-such-user-here\""),
        (&["--user", "nobody", "--group", "no-such-group-here"], "no group named"),
    ] {
        let args: Vec<&str> = ["0", "--bind", "127.0.0.1"].iter().chain(args).copied().collect();
        let done = Server::run(&[], &args, TIMEOUT).unwrap();
        done.expect_error(1, &[needle]).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let listened = done.stderr.iter().any(|line| line.contains("listening on"));
        assert!(!listened, "{args:?}: it listened: {:#?}", done.stderr);
    }
    let done = Server::run(&[], &["0", "--group", "nogroup"], TIMEOUT).unwrap();
    done.expect_error(2, &["required arguments were not provided"]).unwrap();
    assert!(done.stderr.iter().any(|line| line.contains("--user <NAME>")), "{:#?}", done.stderr);
}

#[test]
fn without_root_the_drop_fails_and_nothing_is_served() {
    let Some(nobody) = as_nobody() else { return };
    let args = ["0", "--bind", "127.0.0.1", "--user", "root"];
    let done = Server::run_at(&nobody.wrapper, nobody.server.path(), &args, TIMEOUT).unwrap();
    done.expect_error(1, &["cannot drop privileges", "Operation not permitted"]).unwrap();
    assert!(!done.stderr.iter().any(|line| line.contains("listening on")), "{:#?}", done.stderr);
}
