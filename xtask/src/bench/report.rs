//! The bench's report: what is measured ([`Metric`]), the Markdown tables
//! of medians with ratios against the C reference, and the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::stats::median;

/// One figure of the table, measured once per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Metric {
    /// connrate: connections a second.
    ConnRate,
    /// connrate: median connection latency.
    ConnP50,
    /// connrate: 99th percentile connection latency.
    ConnP99,
    /// connrate: CPU time of the server's process tree per connection.
    ConnCpu,
    /// One client at a time: median connection latency.
    LatencyP50,
    /// One client at a time: 99th percentile.
    LatencyP99,
    /// ping-pong: round trips a second.
    PingRate,
    /// ping-pong: median round trip.
    PingP50,
    /// ping-pong: 99th percentile round trip.
    PingP99,
    /// Bulk echo over one connection, MiB/s.
    Bulk1,
    /// Bulk echo over four connections, MiB/s in all.
    Bulk4,
    /// Held connections: mean PSS of a child.
    ChildPss,
    /// Held connections: mean RSS of a child.
    ChildRss,
    /// Held connections: the parent's RSS.
    ParentRss,
}

/// How a figure reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// Events a second: higher is better.
    PerSecond,
    /// Microseconds: lower is better.
    Micros,
    /// MiB a second: higher is better.
    MibPerSecond,
    /// KiB of memory: lower is better.
    Kib,
}

impl Unit {
    /// Its symbol in the table.
    fn symbol(self) -> &'static str {
        match self {
            Self::PerSecond => "/s",
            Self::Micros => "µs",
            Self::MibPerSecond => "MiB/s",
            Self::Kib => "KiB",
        }
    }
}

impl Metric {
    /// Every metric, in table order.
    pub(super) const ALL: [Self; 14] = [
        Self::ConnRate,
        Self::ConnP50,
        Self::ConnP99,
        Self::ConnCpu,
        Self::LatencyP50,
        Self::LatencyP99,
        Self::PingRate,
        Self::PingP50,
        Self::PingP99,
        Self::Bulk1,
        Self::Bulk4,
        Self::ChildPss,
        Self::ChildRss,
        Self::ParentRss,
    ];

    /// Its row's label.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::ConnRate => "connrate (8 workers): connections",
            Self::ConnP50 => "connrate: connection latency p50",
            Self::ConnP99 => "connrate: connection latency p99",
            Self::ConnCpu => "connrate: server CPU (parent and children) per connection",
            Self::LatencyP50 => "latency (1 client at a time) p50",
            Self::LatencyP99 => "latency (1 client at a time) p99",
            Self::PingRate => "pingpong: round trips",
            Self::PingP50 => "pingpong: round trip p50",
            Self::PingP99 => "pingpong: round trip p99",
            Self::Bulk1 => "bulk, 1 connection",
            Self::Bulk4 => "bulk, 4 connections",
            Self::ChildPss => "hold: PSS per child",
            Self::ChildRss => "hold: RSS per child",
            Self::ParentRss => "hold: parent RSS",
        }
    }

    /// Its key in the JSON.
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::ConnRate => "connrate_per_s",
            Self::ConnP50 => "connrate_p50_us",
            Self::ConnP99 => "connrate_p99_us",
            Self::ConnCpu => "connrate_cpu_us_per_connection",
            Self::LatencyP50 => "latency_p50_us",
            Self::LatencyP99 => "latency_p99_us",
            Self::PingRate => "pingpong_per_s",
            Self::PingP50 => "pingpong_p50_us",
            Self::PingP99 => "pingpong_p99_us",
            Self::Bulk1 => "bulk1_mib_per_s",
            Self::Bulk4 => "bulk4_mib_per_s",
            Self::ChildPss => "hold_child_pss_kib",
            Self::ChildRss => "hold_child_rss_kib",
            Self::ParentRss => "hold_parent_rss_kib",
        }
    }

    /// Its unit.
    pub(super) fn unit(self) -> Unit {
        match self {
            Self::ConnRate | Self::PingRate => Unit::PerSecond,
            Self::ConnP50
            | Self::ConnP99
            | Self::ConnCpu
            | Self::LatencyP50
            | Self::LatencyP99
            | Self::PingP50
            | Self::PingP99 => Unit::Micros,
            Self::Bulk1 | Self::Bulk4 => Unit::MibPerSecond,
            Self::ChildPss | Self::ChildRss | Self::ParentRss => Unit::Kib,
        }
    }
}

/// Whether a server was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Status {
    /// It ran (each figure it has is a measurement).
    Measured,
    /// Its program is not on `PATH`.
    NotInstalled,
    /// It failed to start, or lost or corrupted bytes: why.
    Failed(String),
}

/// One server's column: its figures, one value per round.
#[derive(Debug, Clone)]
pub(super) struct Column {
    /// The server's name.
    pub(super) name: String,
    /// The command it ran as (empty when not started).
    pub(super) command: String,
    /// Whether it was measured.
    pub(super) status: Status,
    /// The metrics of its workloads.
    pub(super) metrics: Vec<Metric>,
    /// Each metric's value in each round.
    pub(super) values: BTreeMap<Metric, Vec<f64>>,
}

impl Column {
    /// The median over the rounds of `metric`, if measured.
    pub(super) fn median(&self, metric: Metric) -> Option<f64> {
        median(self.values.get(&metric)?)
    }
}

/// A number as the table shows it: one decimal under 100, otherwise a
/// whole number with thousands separated by commas.
pub(super) fn number(value: f64) -> String {
    if value.abs() < 100.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0.0 { format!("-{grouped}") } else { grouped }
}

/// A table cell: the median, and its ratio to the reference's median.
fn cell(column: &Column, metric: Metric, reference: Option<f64>) -> String {
    if let Some(value) = column.median(metric) {
        return match reference {
            Some(base) if base > 0.0 => format!("{} ({:.2}×)", number(value), value / base),
            _ => number(value),
        };
    }
    match &column.status {
        Status::NotInstalled => "not installed".to_owned(),
        Status::Failed(_) => "failed".to_owned(),
        Status::Measured if column.metrics.contains(&metric) => "n/a".to_owned(),
        Status::Measured => "–".to_owned(),
    }
}

/// The header cell that explains the ratios.
pub(super) const RATIO_NOTE: &str =
    "median (× C reference; for µs and KiB, > 1× is worse; for /s and MiB/s, < 1× is worse)";

/// The main table: a row per metric, a column per server; each cell is the
/// median over the rounds with, beside it, its ratio to the median of the
/// column named `reference` (whose own cells have none). A server that
/// failed keeps the figures it had measured, under a name marked "(failed)".
pub(super) fn table(columns: &[Column], reference: &str) -> String {
    let base = columns.iter().find(|c| c.name == reference);
    let mut text = String::new();
    let names: Vec<String> = columns
        .iter()
        .map(|c| match c.status {
            Status::Failed(_) => format!("{} (failed)", c.name),
            Status::Measured | Status::NotInstalled => c.name.clone(),
        })
        .collect();
    let _ = writeln!(text, "| {RATIO_NOTE} | unit | {} |", names.join(" | "));
    let _ = writeln!(text, "|---|---|{}", "---:|".repeat(columns.len()));
    for metric in Metric::ALL {
        let reference_value = base.and_then(|b| b.median(metric));
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                let ratio_base = if c.name == reference { None } else { reference_value };
                cell(c, metric, ratio_base)
            })
            .collect();
        let _ = writeln!(
            text,
            "| {} | {} | {} |",
            metric.label(),
            metric.unit().symbol(),
            cells.join(" | ")
        );
    }
    text
}

/// A limit measured beside the servers.
#[derive(Debug, Clone)]
pub(super) struct Limit {
    /// What it is.
    pub(super) name: String,
    /// Its unit.
    pub(super) unit: Unit,
    /// Its value in each round.
    pub(super) values: Vec<f64>,
    /// Why it has no values ("iperf3 not installed"), if so.
    pub(super) missing: Option<String>,
    /// What to compare it with.
    pub(super) context: String,
}

/// The limits' table: median and context per limit.
pub(super) fn limits_table(limits: &[Limit]) -> String {
    let mut text = String::from("| limit | median | context |\n|---|---:|---|\n");
    for limit in limits {
        let value = match (median(&limit.values), &limit.missing) {
            (Some(v), _) => format!("{} {}", number(v), limit.unit.symbol()),
            (None, Some(why)) => why.clone(),
            (None, None) => "failed".to_owned(),
        };
        let _ = writeln!(text, "| {} | {value} | {} |", limit.name, limit.context);
    }
    text
}

/// The whole run, for the JSON.
#[derive(Debug)]
pub(super) struct Run<'a> {
    /// `full` or `quick`.
    pub(super) scale: &'a str,
    /// Rounds run.
    pub(super) rounds: usize,
    /// Seconds the bench took.
    pub(super) seconds: f64,
    /// The settings of the workloads, as key and value.
    pub(super) settings: Vec<(&'static str, Value)>,
    /// The servers.
    pub(super) columns: &'a [Column],
    /// The limits.
    pub(super) limits: &'a [Limit],
    /// Notes.
    pub(super) notes: &'a [String],
    /// Failures (the bench exits non-zero when there is any).
    pub(super) failures: &'a [String],
}

/// The run as JSON: every round's value and the median, per metric and server.
pub(super) fn json(run: &Run<'_>) -> Value {
    let figures = |values: &[f64]| json!({ "median": median(values), "rounds": values });
    let servers: Vec<Value> = run
        .columns
        .iter()
        .map(|c| {
            let metrics: serde_json::Map<String, Value> =
                c.values.iter().map(|(m, v)| (m.key().to_owned(), figures(v))).collect();
            let (status, reason) = match &c.status {
                Status::Measured => ("measured", None),
                Status::NotInstalled => ("not installed", None),
                Status::Failed(why) => ("failed", Some(why.clone())),
            };
            json!({
                "name": c.name,
                "command": c.command,
                "status": status,
                "reason": reason,
                "metrics": metrics,
            })
        })
        .collect();
    let limits: Vec<Value> = run
        .limits
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "unit": l.unit.symbol(),
                "median": median(&l.values),
                "rounds": l.values,
                "missing": l.missing,
                "context": l.context,
            })
        })
        .collect();
    let settings: serde_json::Map<String, Value> =
        run.settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    json!({
        "scale": run.scale,
        "rounds": run.rounds,
        "seconds": run.seconds,
        "settings": settings,
        "servers": servers,
        "limits": limits,
        "notes": run.notes,
        "failures": run.failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, status: Status, values: &[(Metric, &[f64])]) -> Column {
        Column {
            name: name.to_owned(),
            command: String::new(),
            status,
            metrics: values.iter().map(|(m, _)| *m).collect(),
            values: values.iter().map(|(m, v)| (*m, v.to_vec())).collect(),
        }
    }

    #[test]
    fn numbers_are_grouped_or_given_a_decimal() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(999.6), "1,000");
        assert_eq!(number(100.0), "100");
        assert_eq!(number(32.44), "32.4");
        assert_eq!(number(-4321.0), "-4,321");
    }

    #[test]
    fn cells_show_medians_and_ratios_against_the_reference() {
        let reference =
            column("C", Status::Measured, &[(Metric::ConnRate, &[900.0, 1000.0, 1100.0])]);
        let ours = column("ours", Status::Measured, &[(Metric::ConnRate, &[700.0, 800.0, 9.0])]);
        let absent = column("socat", Status::NotInstalled, &[]);
        let failed = column("x", Status::Failed("lost a byte".into()), &[]);
        let text = table(&[ours, reference, absent, failed], "C");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + Metric::ALL.len());
        assert!(
            lines[0].contains("> 1× is worse")
                && lines[0].ends_with("| ours | C | socat | x (failed) |")
        );
        assert_eq!(lines[1], "|---|---|---:|---:|---:|---:|");
        assert_eq!(
            lines[2],
            "| connrate (8 workers): connections | /s | 700 (0.70×) | 1,000 | not installed | failed |"
        );
        // A metric the servers do not run.
        assert!(lines[3].ends_with("| – | – | not installed | failed |"), "{}", lines[3]);
        for line in &lines {
            assert_eq!(line.matches('|').count(), 4 + 3, "{line}");
        }
    }

    #[test]
    fn a_missing_reference_leaves_plain_values() {
        let ours = column("ours", Status::Measured, &[(Metric::Bulk1, &[512.0])]);
        let text = table(&[ours], "C");
        assert!(text.contains("| bulk, 1 connection | MiB/s | 512 |"), "{text}");
    }

    #[test]
    fn limits_show_medians_or_why_not() {
        let limits = [
            Limit {
                name: "fork".into(),
                unit: Unit::PerSecond,
                values: vec![4000.0, 4200.0, 4100.0],
                missing: None,
                context: "0.9× the C reference's connrate".into(),
            },
            Limit {
                name: "iperf3".into(),
                unit: Unit::MibPerSecond,
                values: Vec::new(),
                missing: Some("not installed".into()),
                context: String::new(),
            },
        ];
        let text = limits_table(&limits);
        assert!(text.contains("| fork | 4,100 /s | 0.9× the C reference's connrate |"), "{text}");
        assert!(text.contains("| iperf3 | not installed |  |"), "{text}");
    }

    #[test]
    fn json_keeps_every_round_and_the_median() {
        let ours = column("ours", Status::Measured, &[(Metric::PingP50, &[30.0, 10.0, 20.0])]);
        let run = Run {
            scale: "quick",
            rounds: 3,
            seconds: 1.5,
            settings: vec![("hold", json!(200))],
            columns: &[ours],
            limits: &[],
            notes: &[],
            failures: &[],
        };
        let value = json(&run);
        let ping = &value["servers"][0]["metrics"]["pingpong_p50_us"];
        assert_eq!(ping["median"], json!(20.0));
        assert_eq!(ping["rounds"], json!([30.0, 10.0, 20.0]));
        assert_eq!(value["settings"]["hold"], json!(200));
        assert_eq!(value["servers"][0]["status"], json!("measured"));
    }
}
