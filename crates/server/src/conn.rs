//! The child's work: echo one connection, log how it went, and pick an exit
//! code. The library has already set the child up (descriptors, signals,
//! parent-death signal, idle timeout) and entered its `conn{pid, peer}` span.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use forkserve::Connection;
use tracing::{debug, info, warn};

/// Exit code of a child whose peer closed cleanly after everything was echoed.
pub(crate) const CLEAN: i32 = 0;
/// Exit code of a child whose connection failed (reset, broken pipe, …).
pub(crate) const IO_ERROR: i32 = 1;
/// Exit code of a child whose peer stayed silent, or stopped reading, for
/// longer than the idle timeout.
pub(crate) const IDLE: i32 = 2;
/// Exit code of a child that could not set itself up (`EX_SOFTWARE`), the
/// same as the library's own set-up failures.
pub(crate) const INTERNAL_ERROR: i32 = forkserve::SETUP_FAILED;

/// How each child echoes and reports its connection, fixed in the parent
/// before the first fork.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Echo {
    /// SO_RCVTIMEO and SO_SNDTIMEO (already set by the library), named in
    /// the log line of a connection that went idle.
    idle_timeout: Option<Duration>,
    /// Whether the log filter may take this module's `info` lines (always,
    /// if it filters by span). Asked once here, in the parent: a callsite that a child meets first is
    /// registered with the subscriber in that child, in every child again,
    /// which writes shared pages and runs code no connection needs when the
    /// line is filtered out anyway (`-q`). See PERFORMANCE.md.
    report: bool,
}

impl Echo {
    /// Reads the log filter; call it in the parent, before serving.
    pub(crate) fn new(idle_timeout: Option<Duration>) -> Self {
        let report = tracing::enabled!(tracing::Level::INFO) || crate::log::depends_on_spans();
        Self { idle_timeout, report }
    }

    /// Echoes one connection in a child process and returns the exit code.
    pub(crate) fn serve(self, conn: Connection) -> i32 {
        let stream = conn.stream;
        // Echo is request/response: do not hold back small replies (Nagle).
        if let Err(err) = stream.set_nodelay(true) {
            warn!("cannot set up the child: cannot set TCP_NODELAY: {err}");
            return INTERNAL_ERROR;
        }
        debug!("serving");
        let started = self.report.then(Instant::now);
        let result = echo_proto::echo(&stream, &stream);
        let took = started.map(|started| started.elapsed());
        // Close before logging: the client has its end of file without
        // waiting for the line to be formatted and written.
        drop(stream);
        let code = match &result {
            Ok(_) => CLEAN,
            Err(err) if went_idle(err) => IDLE,
            Err(_) => IO_ERROR,
        };
        if let Some(took) = took {
            self.report(&result, took);
        }
        code
    }

    /// Logs how the connection ended.
    fn report(self, result: &Result<echo_proto::Totals, echo_proto::EchoError>, took: Duration) {
        // Milliseconds, to the microsecond: a number in JSON logs.
        let duration_ms = took.as_micros() as f64 / 1000.0;
        match result {
            Ok(totals) => {
                let (received, sent) = (totals.received, totals.sent);
                info!(received, sent, duration_ms, "peer closed the connection");
            }
            Err(err) => {
                let totals = err.totals();
                let (received, sent) = (totals.received, totals.sent);
                if went_idle(err) {
                    let secs = self.idle_timeout.unwrap_or_default().as_secs_f64();
                    // A client can cause this at will: not a warning.
                    info!(
                        received,
                        sent, duration_ms, "peer idle for {secs} s; closing the connection"
                    );
                } else {
                    info!(received, sent, duration_ms, "connection failed: {}", crate::chain(err));
                }
            }
        }
    }
}

/// Whether the echo ended because the idle timeout expired: SO_RCVTIMEO and
/// SO_SNDTIMEO expire as `EAGAIN`.
fn went_idle(err: &echo_proto::EchoError) -> bool {
    err.io_error().is_some_and(|e| e.kind() == ErrorKind::WouldBlock)
}
