//! What the load tools (bench and stress) do on every connection alike.

use std::io::Read;
use std::net::{Shutdown, TcpStream};

/// Ends a connection as a well-behaved client does: shuts down its sending
/// side and expects the server to close in turn, with nothing more to read.
///
/// # Errors
/// When the server sends more, resets, or does not close within the
/// stream's read timeout.
pub(crate) fn close_cleanly(stream: &mut TcpStream) -> Result<(), String> {
    stream.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err("the server sent bytes nobody sent it".to_owned()),
        Err(e) => Err(format!("waiting for the server to close: {e}")),
    }
}
