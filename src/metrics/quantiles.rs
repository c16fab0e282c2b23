//! Latency quantiles for `/stats`: a histogram of fixed logarithmic buckets
//! (four per doubling, from 1 µs to about 70 s), shared by every thread,
//! counted since the start. Misses are timed every one; hits, whose timing
//! would cost a noticeable share of a hit, one in [`HIT_SAMPLE`] per thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: four per doubling over 26 doublings of a microsecond.
const BUCKETS: usize = 4 * 26;

/// One hit in this many is timed, per thread.
pub(crate) const HIT_SAMPLE: u32 = 64;

/// A latency histogram.
#[derive(Debug)]
pub(crate) struct Latencies {
    buckets: [AtomicU64; BUCKETS],
}

/// Hits' latencies (sampled), from the cache's lookup to its answer.
pub(crate) static HITS: Latencies = Latencies::new();
/// Misses' latencies: a fetch from Redis.
pub(crate) static MISSES: Latencies = Latencies::new();

thread_local! {
    static HIT_TICK: Cell<u32> = const { Cell::new(0) };
}

/// Whether this hit is one to time.
pub(crate) fn sample_hit() -> bool {
    HIT_TICK.with(|tick| {
        let n = tick.get().wrapping_add(1);
        tick.set(n);
        n % HIT_SAMPLE == 0
    })
}

impl Latencies {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    /// Counts one request that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        self.buckets[bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency below which `q` (0 to 1) of the requests counted fall
    /// (a bucket's upper bound), `None` before any.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }

    /// Requests counted.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// The bucket of `took`: the quarter-doubling of microseconds it falls in.
fn bucket(took: Duration) -> usize {
    let micros = took.as_secs_f64() * 1e6;
    if micros <= 1.0 {
        return 0;
    }
    ((micros.log2() * 4.0).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`: 2^(i/4) µs.
fn upper_bound(i: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf(i as f64 / 4.0) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_bucket_of_their_rank_within_a_fifth() {
        let latencies = Latencies::new();
        assert_eq!(latencies.quantile(0.5), None);
        for micros in 1..=1000u64 {
            latencies.record(Duration::from_micros(micros));
        }
        assert_eq!(latencies.count(), 1000);
        let p50 = latencies.quantile(0.5).unwrap().as_secs_f64() * 1e6;
        let p99 = latencies.quantile(0.99).unwrap().as_secs_f64() * 1e6;
        assert!((500.0..=500.0 * 1.19).contains(&p50), "{p50}");
        assert!((990.0..=990.0 * 1.19).contains(&p99), "{p99}");
        assert_eq!(bucket(Duration::from_secs(1000)), BUCKETS - 1);
    }
}
