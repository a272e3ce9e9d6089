//! Logging set-up: the filter (with the `listening on` line always kept), and
//! a standard-error writer that never blocks.
//!
//! A log reader that stalls (a full pipe nobody drains, a terminal paused with
//! Ctrl-S) must never stop the server from accepting, reaping or shutting
//! down. So each log line is written in one non-blocking write; a line that
//! does not fit now is dropped and counted, and once lines fit again a line
//! says how many were lost. No thread does the writing: the process must stay
//! single-threaded to fork.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{self, FormatTime};

/// Lines every filter keeps: `listening on ADDR:PORT` (with port 0 nothing
/// else tells where the server listens), and the counters an operator asks
/// for with SIGUSR1 and the shutdown summary.
const ALWAYS: [&str; 2] = ["forkserve::listening=info", "forkserve::counters=info"];

/// The longest line written whole: `PIPE_BUF`, so a write to a pipe either
/// fits entirely or not at all, never half a line.
const MAX_LINE: usize = 4096;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One line of text per event, for people.
    Text,
    /// One JSON object per line, for machines: `timestamp`, `level`,
    /// `message`, `target`, the event's fields, and under `span` the
    /// connection's (`pid`, `peer`) for lines a child writes.
    Json,
}

/// Sets up logging to standard error (or nowhere, with `discard`) at
/// `level`, in `format`, unless
/// `RUST_LOG` names a valid filter; an invalid one gets a warning and
/// `level`. The `listening on` line and the counters are written whatever
/// the filter says.
pub(crate) fn init(level: &str, format: Format, discard: bool) {
    let (filter, invalid) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::builder().parse(&value) {
            Ok(filter) => {
                // `target[span{field=value}]=level`: a directive on spans.
                SPAN_DIRECTIVES.store(value.contains('['), Ordering::Relaxed);
                (filter, None)
            }
            Err(err) => (EnvFilter::new(level), Some((value, err))),
        },
        _ => (EnvFilter::new(level), None),
    };
    let filter = ALWAYS.iter().fold(filter, |filter, directive| match directive.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    });
    let writer =
        if discard { Stderr { sink: Sink::Discard, format } } else { Stderr::open(format) };
    match format {
        Format::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(io::stderr().is_terminal())
            .init(),
        Format::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
    }
    if let Some((value, err)) = invalid {
        tracing::warn!("ignoring RUST_LOG={value:?} ({err}); logging at the default level");
    }
}

/// Whether the filter has a directive on spans, which makes whether a line
/// is logged depend on the span it is written in.
static SPAN_DIRECTIVES: AtomicBool = AtomicBool::new(false);

/// Whether a line may be logged in some span even when
/// `tracing::enabled!` says no outside every span (`RUST_LOG` has a
/// directive such as `[conn]=info`).
pub(crate) fn depends_on_spans() -> bool {
    SPAN_DIRECTIVES.load(Ordering::Relaxed)
}

/// Lines dropped because standard error could not take them, not reported yet.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines dropped since the start, reported or not.
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// The process the two counters belong to: a child inherits the parent's
/// counts at fork, and must start its own from zero (or it would report the
/// parent's losses a second time).
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Resets the counters if this process is not the one that counted them.
fn claim_counters() {
    let me = std::process::id();
    if OWNER.swap(me, Ordering::Relaxed) != me {
        DROPPED.store(0, Ordering::Relaxed);
        DROPPED_TOTAL.store(0, Ordering::Relaxed);
    }
}

/// How many log lines this process has dropped since it started (a child
/// counts its own from the fork on).
pub(crate) fn dropped_total() -> u64 {
    claim_counters();
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

/// Counts one dropped line.
fn drop_line() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
    DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
}

/// Standard error, opened for writes that never block, and the format of the
/// note about lost lines.
#[derive(Debug)]
struct Stderr {
    sink: Sink,
    format: Format,
}

/// Where [`Stderr`] writes.
#[derive(Debug)]
enum Sink {
    /// A pipe or a terminal, reopened through `/proc/self/fd/2` as a new
    /// open file description of its own, non-blocking: the flag does not
    /// reach the shell or anyone else sharing the original.
    Reopened(File),
    /// A socket (journald's stream, say): each write is `send(MSG_DONTWAIT)`.
    Socket(OwnedFd),
    /// A regular file, or anything that cannot be reopened: written as is
    /// (writing to a file does not wait for a reader).
    Direct,
    /// Nowhere: standard error is the client's connection (inetd mode under
    /// inetd or xinetd, which put the socket on descriptors 0, 1 and 2).
    Discard,
}

impl Sink {
    fn open() -> Self {
        let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return Self::Direct };
        let kind = meta.file_type();
        if kind.is_fifo() || kind.is_char_device() {
            let reopened = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/proc/self/fd/2");
            if let Ok(file) = reopened {
                return Self::Reopened(file);
            }
        }
        if kind.is_socket() {
            if let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() {
                return Self::Socket(fd);
            }
        }
        Self::Direct
    }

    /// Writes `bytes` in one call if they fit now.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Reopened(file) => (&*file).write(bytes),
            Self::Socket(fd) => netcore::send_dontwait(fd.as_fd(), bytes),
            Self::Direct => io::stderr().write(bytes),
            Self::Discard => Ok(bytes.len()),
        }
    }
}

impl Stderr {
    fn open(format: Format) -> Self {
        Self { sink: Sink::open(), format }
    }

    /// Writes one whole line, or drops and counts it; first says how many
    /// lines were dropped before, if any and if that fits.
    fn emit(&self, line: &[u8]) {
        claim_counters();
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = loss_note(self.format, dropped, std::process::id());
            if !self.write_whole(note.as_bytes()) {
                drop_line();
                return;
            }
            DROPPED.fetch_sub(dropped, Ordering::Relaxed);
        }
        if !self.write_whole(line) {
            drop_line();
        }
    }

    /// One write of the whole of `bytes`; false if it did not all go out.
    fn write_whole(&self, bytes: &[u8]) -> bool {
        loop {
            match self.sink.try_write(bytes) {
                Ok(written) => return written == bytes.len(),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { sink: self, bytes: Vec::with_capacity(256) }
    }
}

/// The line that says `dropped` lines were lost by process `pid` (parent and
/// children share standard error: the pid says whose), in `format`.
fn loss_note(format: Format, dropped: u64, pid: u32) -> String {
    let message = format!(
        "{dropped} log line(s) dropped by process {pid}: standard error was not being read \
         fast enough"
    );
    match format {
        Format::Text => format!("{message}\n"),
        // The message holds no character JSON must escape.
        Format::Json => format!(
            "{{\"timestamp\":\"{}\",\"level\":\"WARN\",\"message\":\"{message}\",\
             \"dropped\":{dropped},\"pid\":{pid},\"target\":\"echo_server::log\"}}\n",
            timestamp()
        ),
    }
}

/// A line that fits in one write of at most [`MAX_LINE`] bytes: text is cut
/// at a character boundary and marked with `…`; a JSON line cannot be cut
/// and stay JSON, so it is replaced by one saying how long it was.
fn fit(mut line: Vec<u8>, format: Format) -> Vec<u8> {
    if line.len() <= MAX_LINE {
        return line;
    }
    match format {
        Format::Text => {
            let mut cut = MAX_LINE - "…\n".len();
            // Not inside a UTF-8 sequence: back up over continuation bytes.
            while cut > 0 && line[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            line.truncate(cut);
            line.extend_from_slice("…\n".as_bytes());
            line
        }
        Format::Json => format!(
            "{{\"timestamp\":\"{}\",\"level\":\"WARN\",\"message\":\"a log line of {} \
             bytes was too long to write whole; left out\",\"target\":\"echo_server::log\"}}\n",
            timestamp(),
            line.len()
        )
        .into_bytes(),
    }
}

/// Now, as the JSON formatter writes its timestamps (its own timer, so the
/// two can never differ): RFC 3339, UTC, microseconds.
fn timestamp() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = FormatTime::format_time(&time::SystemTime, &mut Writer::new(&mut text));
    text
}

/// One log line being formatted; written (or dropped) as a whole on drop.
#[derive(Debug)]
pub(crate) struct Line<'a> {
    sink: &'a Stderr,
    bytes: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.bytes);
        self.sink.emit(&fit(bytes, self.sink.format));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_did_not_count_the_losses_starts_from_zero() {
        // What a child sees right after fork: the parent's counts, owned by
        // another pid (one that cannot be ours).
        OWNER.store(0, Ordering::Relaxed);
        DROPPED.store(576, Ordering::Relaxed);
        DROPPED_TOTAL.store(600, Ordering::Relaxed);
        assert_eq!(dropped_total(), 0);
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0, "the parent's pending note");
        // Its own losses are then its own.
        drop_line();
        assert_eq!(dropped_total(), 1);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let now = timestamp();
        let b = now.as_bytes();
        assert_eq!(now.len(), 27, "{now}");
        assert!(b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[26] == b'Z', "{now}");
    }

    #[test]
    fn the_loss_note_is_one_line_of_text_or_one_json_object() {
        let text = loss_note(Format::Text, 7, 42);
        assert_eq!(
            text,
            "7 log line(s) dropped by process 42: standard error was not being read fast enough\n"
        );
        let json = loss_note(Format::Json, 7, 42);
        assert!(json.ends_with("}\n") && json.lines().count() == 1, "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["timestamp"].as_str().map(str::len), Some(27), "{value}");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["message"], text.trim_end());
        assert_eq!((value["dropped"].as_u64(), value["pid"].as_u64()), (Some(7), Some(42)));
    }

    #[test]
    fn a_long_line_is_cut_whole_characters_or_replaced_in_json() {
        let short = b"short\n".to_vec();
        assert_eq!(fit(short.clone(), Format::Text), short);
        // "é" is two bytes: wherever the cut falls, no half character.
        for pad in 0..3 {
            let mut long = vec![b'x'; pad];
            long.extend("é".repeat(MAX_LINE).as_bytes());
            let cut = fit(long, Format::Text);
            assert!(cut.len() <= MAX_LINE, "{}", cut.len());
            let text = String::from_utf8(cut).expect("whole characters");
            assert!(text.ends_with("…\n"));
        }
        let json = fit(vec![b'{'; MAX_LINE + 1], Format::Json);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["level"], "WARN");
        assert!(value["message"].as_str().unwrap().contains("4097 bytes"), "{value}");
    }
}
