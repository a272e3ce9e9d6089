//! `Printable`: arbitrary bytes rendered safely for a log line.

use std::fmt;

/// Renders bytes for a log line: printable ASCII as is, everything else
/// escaped (`\n`, `\x00`, `\xff`), cut after [`Printable::LIMIT`] bytes with a
/// count of the rest. A log line never carries raw control characters from a
/// peer, and never grows without bound.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(pub &'a [u8]);

impl Printable<'_> {
    /// How many bytes are shown before the rendering is cut.
    pub const LIMIT: usize = 256;
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(Self::LIMIT)];
        write!(f, "\"{}\"", shown.escape_ascii())?;
        if self.0.len() > shown.len() {
            write!(f, " (+{} bytes)", self.0.len() - shown.len())?;
        }
        Ok(())
    }
}
