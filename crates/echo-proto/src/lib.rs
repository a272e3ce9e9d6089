//! The echo protocol (RFC 862 over a stream): write back every byte that is
//! read, in order, until end of input.
//!
//! Works over any [`Read`] and [`Write`], so the same loop serves a
//! `TcpStream`, a `UnixStream` or an in-memory buffer in a test; it has no idea
//! whether they are sockets, and makes no assumption of text, lines or NUL
//! terminators. Interrupted calls are retried and short writes finished.
//!
//! - Server side: [`echo`] copies everything back until the peer's EOF, and
//!   reports the totals.
//! - Client side: [`round_trip`] sends one message and reads back exactly as
//!   many bytes, however the kernel splits them; [`relay`] streams one
//!   direction of a full-duplex copy.
//!
//! ```
//! let mut out = Vec::new();
//! let totals = echo_proto::echo(&b"ping"[..], &mut out)?;
//! assert_eq!((totals.received, totals.sent, out.as_slice()), (4, 4, &b"ping"[..]));
//! # Ok::<(), echo_proto::EchoError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod printable;

use std::io::{self, ErrorKind, Read, Write};

pub use printable::Printable;

/// Bytes moved per `read(2)` once an exchange has shown it is bulk (a read
/// filled the first, small buffer): large enough for bulk throughput.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// The stack buffer an exchange starts with, until a read fills it: a
/// process-per-connection child serving small requests stays light (a
/// 64 KiB buffer, zeroed, would be 16 pages of private memory per child).
/// 1 KiB rather than a page: the child's stack then usually stays within the
/// pages its fork already wrote (one private page less per held child, in
/// PERFORMANCE.md).
const SMALL_BUFFER_SIZE: usize = 1024;

/// The next buffer, on the heap, once a read fills the small one: a request
/// of a few KiB (a full TCP segment, say) costs the child one more page, not
/// the sixteen of [`BUFFER_SIZE`]; a read that fills this one moves to that.
const MEDIUM_BUFFER_SIZE: usize = 4 * 1024;

/// How many bytes an exchange read and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes read from the peer.
    pub received: u64,
    /// Bytes written back to the peer.
    pub sent: u64,
}

/// A failed exchange, with the totals reached before it failed.
///
/// Messages say what failed; the [`io::Error`] is the source, so a caller can
/// tell a reset (`ConnectionReset`) from a broken pipe or a timeout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EchoError {
    /// Reading from the peer failed.
    #[error("read failed after {} bytes in, {} out", totals.received, totals.sent)]
    Read {
        /// What had been exchanged before the failure.
        totals: Totals,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing to the peer failed.
    #[error("write failed after {} bytes in, {} out", totals.received, totals.sent)]
    Write {
        /// What had been exchanged before the failure.
        totals: Totals,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The peer closed before the whole echo of a message came back.
    #[error(
        "peer closed the connection after echoing {} of {expected} bytes",
        totals.received
    )]
    Closed {
        /// The length of the message, all of which was expected back.
        expected: usize,
        /// What was sent (possibly less than `expected`) and echoed before the close.
        totals: Totals,
    },
}

impl EchoError {
    /// The I/O error behind this failure, if there is one.
    #[must_use]
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Read { source, .. } | Self::Write { source, .. } => Some(source),
            Self::Closed { .. } => None,
        }
    }

    /// The totals reached before the failure.
    #[must_use]
    pub fn totals(&self) -> Totals {
        match *self {
            Self::Read { totals, .. }
            | Self::Write { totals, .. }
            | Self::Closed { totals, .. } => totals,
        }
    }
}

/// The server side: reads until EOF and writes every byte back, in order.
///
/// Returns when the peer has shut down its side and everything read has been
/// written back and flushed; closing is left to the caller (drop the stream).
/// Each chunk received is logged at debug level (`received`, with a printable
/// rendering of the bytes), in whatever span the caller has entered.
///
/// # Errors
/// [`EchoError::Read`] or [`EchoError::Write`], carrying the totals so far.
pub fn echo<R: Read, W: Write>(reader: R, writer: W) -> Result<Totals, EchoError> {
    copy(reader, writer, true)
}

/// One direction of a full-duplex copy: reads until EOF and writes everything
/// to `writer`, then flushes it. A client streams its input to the server
/// with one `relay` and the echo to its output with another, concurrently.
///
/// # Errors
/// [`EchoError::Read`] or [`EchoError::Write`], carrying the totals so far.
pub fn relay<R: Read, W: Write>(reader: R, writer: W) -> Result<Totals, EchoError> {
    copy(reader, writer, false)
}

fn copy<R: Read, W: Write>(mut reader: R, mut writer: W, log: bool) -> Result<Totals, EchoError> {
    // A small buffer on the stack first: a request/response exchange rarely
    // needs more, and a process-per-connection child stays a few pages. A
    // read that fills it moves the copy to a one-page buffer, and a read that
    // fills that one to a full-size buffer.
    let mut small = [0; SMALL_BUFFER_SIZE];
    let mut large = Vec::new();
    let mut totals = Totals::default();
    loop {
        let buf: &mut [u8] = if large.is_empty() { &mut small } else { &mut large };
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(source) => return Err(EchoError::Read { totals, source }),
        };
        totals.received += n as u64;
        if log {
            tracing::debug!(bytes = n, data = %Printable(&buf[..n]), "received");
        }
        let full = n == buf.len();
        write_counted(&mut writer, &buf[..n], &mut totals)?;
        if full && large.len() < BUFFER_SIZE {
            let next = if large.is_empty() { MEDIUM_BUFFER_SIZE } else { BUFFER_SIZE };
            large = vec![0; next];
        }
    }
    writer.flush().map_err(|source| EchoError::Write { totals, source })?;
    Ok(totals)
}

/// `write_all`, but counting every byte that went out, so an error reports
/// exactly how far the exchange got.
fn write_counted<W: Write>(
    writer: &mut W,
    mut data: &[u8],
    totals: &mut Totals,
) -> Result<(), EchoError> {
    while !data.is_empty() {
        match writer.write(data) {
            Ok(0) => {
                let source = io::Error::new(ErrorKind::WriteZero, "peer accepts no more bytes");
                return Err(EchoError::Write { totals: *totals, source });
            }
            Ok(n) => {
                totals.sent += n as u64;
                data = &data[n..];
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(source) => return Err(EchoError::Write { totals: *totals, source }),
        }
    }
    Ok(())
}

/// The client side: sends `message` and reads back exactly `message.len()`
/// bytes into `reply` (replacing its contents), however the kernel splits them.
///
/// The message goes out in pieces of at most [`BUFFER_SIZE`] bytes, each read
/// back before the next is sent, so a message of any size cannot deadlock
/// against a server that echoes as it reads (with both sides blocked writing
/// into full socket buffers).
///
/// # Errors
/// [`EchoError::Closed`] if the peer closes before the whole echo is back;
/// [`EchoError::Read`] or [`EchoError::Write`] on an I/O error.
pub fn round_trip<S: Read + Write>(
    mut stream: S,
    message: &[u8],
    reply: &mut Vec<u8>,
) -> Result<(), EchoError> {
    reply.clear();
    reply.resize(message.len(), 0);
    let mut totals = Totals::default();
    for (sent, piece) in message.chunks(BUFFER_SIZE).enumerate() {
        write_counted(&mut stream, piece, &mut totals)?;
        stream.flush().map_err(|source| EchoError::Write { totals, source })?;
        let start = sent * BUFFER_SIZE;
        let mut filled = start;
        while filled < start + piece.len() {
            match stream.read(&mut reply[filled..start + piece.len()]) {
                Ok(0) => {
                    reply.truncate(filled);
                    return Err(EchoError::Closed { expected: message.len(), totals });
                }
                Ok(n) => {
                    filled += n;
                    totals.received += n as u64;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    reply.truncate(filled);
                    return Err(EchoError::Read { totals, source });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
