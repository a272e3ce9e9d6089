//! The bench's arithmetic, kept pure so it is tested alone: percentiles of
//! one run's latencies, medians of the rounds, means over held children.

use std::time::Duration;

/// One run's latencies, sorted once, to read percentiles from.
#[derive(Debug, Clone, Default)]
pub(super) struct Percentiles {
    sorted: Vec<Duration>,
}

impl Percentiles {
    /// Sorts `values`.
    pub(super) fn of(mut values: Vec<Duration>) -> Self {
        values.sort_unstable();
        Self { sorted: values }
    }

    /// The `pct`th percentile (nearest rank: the smallest value with at
    /// least `pct` % of the values at or below it), in microseconds; 0 when
    /// there are no values.
    pub(super) fn micros(&self, pct: usize) -> f64 {
        let rank = (self.sorted.len() * pct).div_ceil(100).max(1);
        self.sorted.get(rank - 1).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
}

/// The median of `values` (the mean of the two middle ones for an even
/// count); `None` when empty. NaN sorts last and is never produced here.
pub(super) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// The arithmetic mean of `values`; `None` when empty.
pub(super) fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Events per second: `count` over `elapsed` (0 for an empty interval).
pub(super) fn rate(count: f64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let us = Duration::from_micros;
        let p = Percentiles::of((1..=100).rev().map(us).collect());
        assert_eq!((p.micros(50), p.micros(99), p.micros(100)), (50.0, 99.0, 100.0));
        let one = Percentiles::of(vec![us(7)]);
        assert_eq!((one.micros(50), one.micros(99)), (7.0, 7.0));
        // 3 values: p50 is the 2nd, p99 the 3rd.
        let three = Percentiles::of(vec![us(30), us(10), us(20)]);
        assert_eq!((three.micros(50), three.micros(99)), (20.0, 30.0));
        assert_eq!(Percentiles::default().micros(50), 0.0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn means_and_rates() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(&[]), None);
        assert_eq!(rate(500.0, Duration::from_millis(250)), 2000.0);
        assert_eq!(rate(5.0, Duration::ZERO), 0.0);
    }
}
