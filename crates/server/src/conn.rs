//! The child's work: echo one connection, log how it went, pick an exit code.

use std::net::{SocketAddr, TcpStream};

use tracing::{debug, info, warn};

/// Exit code of a child whose peer closed cleanly after everything was echoed.
pub(crate) const CLEAN: i32 = 0;
/// Exit code of a child whose connection failed (reset, broken pipe, …).
pub(crate) const IO_ERROR: i32 = 1;
/// Exit code of a child that found nothing to serve: a bug (`EX_SOFTWARE`).
pub(crate) const INTERNAL_ERROR: i32 = 70;

/// Serves one connection in a child process and returns the exit code.
///
/// Logs go out inside a `conn` span with the child's pid and the peer, so lines
/// from many children interleaved in one log can be told apart.
pub(crate) fn serve(stream: TcpStream, peer: SocketAddr) -> i32 {
    let _span = tracing::info_span!("conn", pid = std::process::id(), %peer).entered();
    debug!("serving");
    // Echo is request/response: do not hold back small replies (Nagle).
    if let Err(err) = stream.set_nodelay(true) {
        debug!(error = %err, "cannot set TCP_NODELAY");
    }
    match echo_proto::echo(&stream, &stream) {
        Ok(totals) => {
            info!(received = totals.received, sent = totals.sent, "peer closed the connection");
            CLEAN
        }
        Err(err) => {
            let totals = err.totals();
            warn!(
                received = totals.received,
                sent = totals.sent,
                "connection failed: {}",
                crate::chain(&err)
            );
            IO_ERROR
        }
    }
    // Dropping the stream closes the connection.
}
