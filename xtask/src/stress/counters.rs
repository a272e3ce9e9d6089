//! The server's own counters, read from the `counters: …` line it logs on
//! SIGUSR1: what it accepted, refused (by reason) and how its children ended.

use std::collections::BTreeMap;

/// One snapshot of the server's counters, or the difference of two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Counters {
    /// Each counter by name: `accepted`, `exited 0:`, `exited otherwise`, …
    values: BTreeMap<String, u64>,
    /// Refused connections by reason.
    refused: BTreeMap<String, u64>,
}

impl Counters {
    /// Parses a log line holding `counters: accepted 12, refused 3 (denied by
    /// the access rules 3), deferred 0, active 2, exited 0: 9, …`.
    pub(super) fn parse(line: &str) -> Option<Self> {
        // Only the loop's counters line: "log lines dropped" shares its target.
        let start = line.find("counters: accepted ")? + "counters: ".len();
        let mut rest = &line[start..];
        let mut refused = BTreeMap::new();
        let without_reasons;
        if let Some(open) = rest.find(" (") {
            let close = open + rest[open..].find(')')?;
            for reason in rest[open + 2..close].split(", ") {
                let (name, count) = reason.rsplit_once(' ')?;
                refused.insert(name.to_owned(), count.parse().ok()?);
            }
            without_reasons = format!("{}{}", &rest[..open], &rest[close + 1..]);
            rest = &without_reasons;
        }
        let mut values = BTreeMap::new();
        for item in rest.trim_end().split(", ") {
            let (name, count) = item.rsplit_once(' ')?;
            values.insert(name.to_owned(), count.parse().ok()?);
        }
        values.contains_key("accepted").then_some(Self { values, refused })
    }

    /// The counter `name`; 0 if the line did not have it.
    pub(super) fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// What was counted since `earlier` (gauges such as `active` are kept as
    /// they are now).
    pub(super) fn since(&self, earlier: &Self) -> Self {
        let minus = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(name, &count)| {
                    let before = then.get(name).copied().unwrap_or(0);
                    let delta = if name == "active" { count } else { count.saturating_sub(before) };
                    (name.clone(), delta)
                })
                .collect()
        };
        Self {
            values: minus(&self.values, &earlier.values),
            refused: minus(&self.refused, &earlier.refused),
        }
    }

    /// `0`, or `3 (denied by the access rules 3)`: the reasons that counted.
    pub(super) fn refused_text(&self) -> String {
        let total = self.get("refused");
        let reasons: Vec<String> = self
            .refused
            .iter()
            .filter(|&(_, &count)| count > 0)
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        if reasons.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", reasons.join(", "))
        }
    }

    /// `accepted / exit 0 / exit otherwise / signal`, for the table.
    pub(super) fn outcomes_text(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            self.get("accepted"),
            self.get("exited 0:"),
            self.get("exited otherwise"),
            self.get("killed by a signal")
        )
    }

    /// Counters that should stay at zero under any load here and did not:
    /// fork failures, accept errors, children that ended for an unknown reason.
    pub(super) fn troubles(&self) -> Vec<String> {
        ["fork failures", "accept errors", "ended unknown"]
            .into_iter()
            .filter(|name| self.get(name) > 0)
            .map(|name| format!("{name} {}", self.get(name)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "2026-01-01T00:00:00Z  INFO forkserve: counters: accepted 12, refused 3 \
        (denied by the access rules 2, per-address limit 1), deferred 0, active 2, exited 0: 9, \
        exited otherwise 1, killed by a signal 0, ended unknown 0, fork failures 0, accept errors 0";

    #[test]
    fn a_counters_line_is_parsed_with_its_reasons() {
        let counters = Counters::parse(LINE).unwrap();
        assert_eq!(counters.get("accepted"), 12);
        assert_eq!(counters.get("exited 0:"), 9);
        assert_eq!(counters.get("exited otherwise"), 1);
        assert_eq!(counters.get("accept errors"), 0);
        assert_eq!(
            counters.refused_text(),
            "3 (denied by the access rules 2, per-address limit 1)"
        );
        assert_eq!(counters.outcomes_text(), "12 / 9 / 1 / 0");
        assert!(counters.troubles().is_empty());
    }

    #[test]
    fn a_line_without_refusals_is_parsed_too() {
        let line = "counters: accepted 5, refused 0, deferred 0, active 0, exited 0: 5, \
            exited otherwise 0, killed by a signal 0, ended unknown 0, fork failures 1, \
            accept errors 0";
        let counters = Counters::parse(line).unwrap();
        assert_eq!((counters.get("accepted"), counters.refused_text()), (5, "0".to_owned()));
        assert_eq!(counters.troubles(), vec!["fork failures 1".to_owned()]);
        assert_eq!(Counters::parse("nothing to see"), None);
    }

    #[test]
    fn differences_keep_gauges() {
        let before = Counters::parse(LINE).unwrap();
        let line = LINE.replace("accepted 12", "accepted 20").replace("active 2", "active 0");
        let delta = Counters::parse(&line).unwrap().since(&before);
        assert_eq!((delta.get("accepted"), delta.get("active")), (8, 0));
        assert_eq!(delta.refused_text(), "0");
    }
}
