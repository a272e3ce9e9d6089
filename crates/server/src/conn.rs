//! The child's work: prepare the process, echo one connection, log how it
//! went, and pick an exit code.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use procmgr::Signal;
use tracing::{debug, info, warn};

/// Exit code of a child whose peer closed cleanly after everything was echoed.
pub(crate) const CLEAN: i32 = 0;
/// Exit code of a child whose connection failed (reset, broken pipe, …).
pub(crate) const IO_ERROR: i32 = 1;
/// Exit code of a child whose peer stayed silent, or stopped reading, for
/// longer than the idle timeout.
pub(crate) const IDLE: i32 = 2;
/// Exit code of a child that could not set itself up, or found nothing to
/// serve: a bug or a dying parent (`EX_SOFTWARE`).
pub(crate) const INTERNAL_ERROR: i32 = 70;

/// Serves one connection in a child process and returns the exit code.
///
/// Logs go out inside a `conn` span with the child's pid and the peer, so lines
/// from many children interleaved in one log can be told apart.
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    parent: u32,
    idle_timeout: Option<Duration>,
) -> i32 {
    let _span = tracing::info_span!("conn", pid = std::process::id(), %peer).entered();
    if let Err(err) = prepare(&stream, parent, idle_timeout) {
        warn!("cannot set up the child: {}", crate::chain(err.as_ref()));
        return INTERNAL_ERROR;
    }
    debug!("serving");
    match echo_proto::echo(&stream, &stream) {
        Ok(totals) => {
            info!(received = totals.received, sent = totals.sent, "peer closed the connection");
            CLEAN
        }
        Err(err) => {
            let totals = err.totals();
            let (received, sent) = (totals.received, totals.sent);
            // SO_RCVTIMEO and SO_SNDTIMEO expire as EAGAIN.
            if err.io_error().is_some_and(|e| e.kind() == ErrorKind::WouldBlock) {
                let secs = idle_timeout.unwrap_or_default().as_secs_f64();
                warn!(received, sent, "peer idle for {secs} s; closing the connection");
                return IDLE;
            }
            warn!(received, sent, "connection failed: {}", crate::chain(&err));
            IO_ERROR
        }
    }
    // Dropping the stream closes the connection.
}

/// Makes the child independent of the terminal and bound to its parent, and
/// sets up the socket.
fn prepare(
    stream: &TcpStream,
    parent: u32,
    idle_timeout: Option<Duration>,
) -> Result<(), Box<dyn std::error::Error>> {
    // A Ctrl-C reaches the terminal's whole process group; the parent handles
    // it (closing the listeners, letting children finish), so children ignore it.
    procmgr::ignore(&[Signal::INT, Signal::QUIT])?;
    // A child must not outlive a parent that was killed or failed.
    procmgr::die_with_parent(Signal::TERM, parent)?;
    stream.set_read_timeout(idle_timeout)?;
    stream.set_write_timeout(idle_timeout)?;
    // Echo is request/response: do not hold back small replies (Nagle).
    stream.set_nodelay(true)?;
    Ok(())
}
