//! Latency distributions as HDR histograms: constant relative error (three significant
//! digits) from a microsecond to a minute, cheap to record into and to merge.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies recorded in nanoseconds.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

/// Selected percentiles of a [`Latency`], in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Latency(
            Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
        )
    }

    /// Records one latency; anything beyond a minute counts as a minute.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.max(1_000));
    }

    /// Adds every sample of `other`.
    pub fn add(&mut self, other: &Latency) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds merge");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1e6
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile_ms(0.5),
            p90: self.quantile_ms(0.9),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
            max: self.0.max() as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us * 10));
        }
        let p = l.percentiles();
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.01, "{p:?}");
        assert!((p.max - 10.0).abs() < 0.01, "{p:?}");
        let mut sum = Latency::new();
        sum.add(&l);
        sum.add(&l);
        assert_eq!(sum.count(), 2000);
    }
}
