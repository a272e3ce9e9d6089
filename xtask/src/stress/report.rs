//! The stress run's report: one Markdown table row per phase, then the
//! servers' footprints, notes and the verdict.

use std::fmt::Write as _;
use std::time::Duration;

use super::client::Tally;
use super::counters::Counters;
use super::monitor::Footprint;

/// One phase's figures.
#[derive(Debug, Default)]
pub(super) struct Row {
    /// The phase's name.
    pub(super) phase: String,
    /// What the clients saw.
    pub(super) tally: Tally,
    /// What the server counted over the phase, if its counters could be read.
    pub(super) server: Option<Counters>,
    /// Most zombies seen at once.
    pub(super) zombies: usize,
    /// Probe latency p50 and p99, where probes ran.
    pub(super) probe: Option<(Duration, Duration)>,
    /// How long the phase took.
    pub(super) duration: Duration,
}

/// A server's descriptors and memory before the load and after it.
#[derive(Debug)]
pub(super) struct Footprints {
    /// Which server.
    pub(super) server: String,
    /// Before the first connection.
    pub(super) before: Footprint,
    /// After every connection closed and every child was reaped.
    pub(super) after: Footprint,
}

/// The column headers; each row has as many cells.
const HEADER: [&str; 11] = [
    "phase",
    "connections",
    "served",
    "refused (by reason)",
    "expected resets",
    "errors",
    "bytes verified",
    "max zombies",
    "probe p50 / p99",
    "server: accepted / exit 0 / exit other / signal",
    "duration",
];

/// Renders the table.
pub(super) fn table(rows: &[Row]) -> String {
    let mut text = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
    text.push_str(&line(&header));
    let rule: Vec<String> = HEADER
        .iter()
        .enumerate()
        .map(
            |(i, h)| {
                if i == 0 { "-".repeat(h.len()) } else { format!("{}:", "-".repeat(h.len() - 1)) }
            },
        )
        .collect();
    text.push_str(&line(&rule));
    for row in rows {
        let tally = &row.tally;
        let cells = [
            row.phase.clone(),
            tally.connections.to_string(),
            tally.served.to_string(),
            row.server.as_ref().map_or_else(|| "n/a".to_owned(), Counters::refused_text),
            tally.resets.to_string(),
            tally.errors.to_string(),
            tally.bytes.to_string(),
            row.zombies.to_string(),
            row.probe
                .map_or_else(|| "–".to_owned(), |(p50, p99)| format!("{} / {}", ms(p50), ms(p99))),
            row.server.as_ref().map_or_else(|| "n/a".to_owned(), Counters::outcomes_text),
            format!("{:.1} s", row.duration.as_secs_f64()),
        ];
        text.push_str(&line(&cells));
    }
    text
}

/// The footprint lines: parent descriptors and RSS before and after.
pub(super) fn footprints(all: &[Footprints]) -> String {
    let mut text = String::new();
    for f in all {
        let _ = writeln!(
            text,
            "- {}: parent descriptors before {}, after {}; parent RSS before {}, after {}",
            f.server,
            f.before.fds,
            f.after.fds,
            mib(f.before.rss_kib),
            mib(f.after.rss_kib)
        );
    }
    text
}

/// A duration in milliseconds, with one decimal under 10 ms.
pub(super) fn ms(d: Duration) -> String {
    let millis = d.as_secs_f64() * 1000.0;
    if millis < 10.0 { format!("{millis:.1} ms") } else { format!("{millis:.0} ms") }
}

/// KiB as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_cell_per_column() {
        let row = Row { phase: "1. churn".to_owned(), ..Row::default() };
        let text = table(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for line in lines {
            assert_eq!(line.matches(" | ").count(), HEADER.len() - 1, "{line}");
        }
        assert_eq!(ms(Duration::from_micros(2500)), "2.5 ms");
        assert_eq!(ms(Duration::from_millis(1003)), "1003 ms");
    }
}
