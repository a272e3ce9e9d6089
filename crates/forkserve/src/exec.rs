//! A child's work that runs a program on the connection, as tcpserver does:
//! the connection on its standard input and output, the UCSPI variables in
//! its environment, the server's standard error kept.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use procmgr::Signal;
use tracing::warn;

use crate::Connection;

/// Exit code of a child whose program could not be found (as a shell says).
pub const EXEC_NOT_FOUND: i32 = 127;
/// Exit code of a child whose program was found but could not be run.
pub const EXEC_FAILED: i32 = 126;

/// Replaces the child with a program serving the connection.
///
/// ```no_run
/// // tcpserver's `cat` echo, with forkserve's limits and shutdown.
/// let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7000));
/// let cat = forkserve::Exec::new("cat", Vec::<String>::new());
/// forkserve::Server::bind(&[addr], forkserve::DEFAULT_BACKLOG)?.serve(|conn| cat.run(conn))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Exec {
    program: OsString,
    args: Vec<OsString>,
    /// SIGINT and SIGQUIT, unless the server's launcher ignored them (then
    /// the program inherits that, as any program it started would).
    restore: Vec<Signal>,
}

impl Exec {
    /// `program` (looked up in `PATH` unless it has a slash) with `args`.
    /// Make it in the parent, before serving: it notes which of SIGINT and
    /// SIGQUIT the launcher ignored, so the program inherits exactly that.
    pub fn new(
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        // Made in the parent, before any child ignores SIGINT and SIGQUIT:
        // what is ignored now, the launcher ignored.
        let ignored = procmgr::ignored_signals();
        let restore =
            [Signal::INT, Signal::QUIT].into_iter().filter(|s| !ignored.contains(s)).collect();
        Self { program: program.into(), args: args.into_iter().map(Into::into).collect(), restore }
    }

    /// The work for [`Server::serve`](crate::Server::serve): undoes what of
    /// the child's set-up would survive `execve(2)` (the ignored SIGINT and
    /// SIGQUIT, unless the launcher had ignored them too; the idle timeout, under which the program's reads would fail
    /// with `EAGAIN`), then execs the program with the connection on
    /// descriptors 0 and 1 and `PROTO=TCP`, `TCPREMOTEIP`, `TCPREMOTEPORT`,
    /// `TCPLOCALIP` and `TCPLOCALPORT` set (`TCPREMOTEHOST`, `TCPREMOTEINFO`
    /// and `TCPLOCALHOST` removed: no DNS or ident lookups are made; nor
    /// does it get the service manager's `NOTIFY_SOCKET` or `LISTEN_*`). Std
    /// resets the signal mask and SIGPIPE before the exec. The child's exit
    /// status is then the program's.
    ///
    /// Returns only if the program cannot be run: [`EXEC_NOT_FOUND`] or
    /// [`EXEC_FAILED`], with a warning.
    #[must_use]
    pub fn run(&self, conn: Connection) -> i32 {
        let err = self.exec(conn);
        let program = self.program.to_string_lossy();
        warn!("cannot run {program}: {err}");
        if err.kind() == io::ErrorKind::NotFound { EXEC_NOT_FOUND } else { EXEC_FAILED }
    }

    /// Everything up to `execve`; returns only its failure.
    fn exec(&self, conn: Connection) -> io::Error {
        if let Err(err) = procmgr::restore_default(&self.restore) {
            return io::Error::other(err);
        }
        let Connection { stream, peer, local, .. } = conn;
        let timeouts = stream.set_read_timeout(None).and_then(|()| stream.set_write_timeout(None));
        if let Err(err) = timeouts {
            return err;
        }
        let input = match stream.try_clone() {
            Ok(input) => OwnedFd::from(input),
            Err(err) => return err,
        };
        Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(OwnedFd::from(stream)))
            .env("PROTO", "TCP")
            .env("TCPREMOTEIP", peer.ip().to_string())
            .env("TCPREMOTEPORT", peer.port().to_string())
            .env("TCPLOCALIP", local.ip().to_string())
            .env("TCPLOCALPORT", local.port().to_string())
            .env_remove("TCPREMOTEHOST")
            .env_remove("TCPREMOTEINFO")
            .env_remove("TCPLOCALHOST")
            // The service manager's messages to the server are not the
            // program's to send or read.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .exec()
    }
}
