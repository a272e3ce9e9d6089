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

/// Echoes one connection in a child process and returns the exit code.
pub(crate) fn serve(conn: Connection, idle_timeout: Option<Duration>) -> i32 {
    let stream = conn.stream;
    // Echo is request/response: do not hold back small replies (Nagle).
    if let Err(err) = stream.set_nodelay(true) {
        warn!("cannot set up the child: cannot set TCP_NODELAY: {err}");
        return INTERNAL_ERROR;
    }
    debug!("serving");
    let started = Instant::now();
    let result = echo_proto::echo(&stream, &stream);
    // Milliseconds, to the microsecond: a number in JSON logs.
    let duration_ms = started.elapsed().as_micros() as f64 / 1000.0;
    match result {
        Ok(totals) => {
            let (received, sent) = (totals.received, totals.sent);
            info!(received, sent, duration_ms, "peer closed the connection");
            CLEAN
        }
        Err(err) => {
            let totals = err.totals();
            let (received, sent) = (totals.received, totals.sent);
            // SO_RCVTIMEO and SO_SNDTIMEO expire as EAGAIN.
            if err.io_error().is_some_and(|e| e.kind() == ErrorKind::WouldBlock) {
                let secs = idle_timeout.unwrap_or_default().as_secs_f64();
                // A client can cause this at will: not a warning.
                info!(
                    received,
                    sent, duration_ms, "peer idle for {secs} s; closing the connection"
                );
                return IDLE;
            }
            info!(received, sent, duration_ms, "connection failed: {}", crate::chain(&err));
            IO_ERROR
        }
    }
    // Dropping the stream closes the connection.
}
