//! Latency distributions: a log-linear histogram with bounded relative error.

use serde::Serialize;

/// Sub-buckets per power of two: values are kept to within 1/64 (about 1.6 %).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are counted exactly.
const EXACT: u64 = 2 * SUB;

/// A histogram of microsecond values in the style of HdrHistogram: exact below
/// 128 µs, then 64 buckets per power of two, so every quantile it reports is
/// within 1/64 (≈ 1.6 %) of the true value, from 1 µs up to centuries.
/// Memory grows with the largest value seen: at most about 30 KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
    min: u64,
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // ≥ SUB_BITS + 1
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    (EXACT + u64::from(e - SUB_BITS - 1) * SUB + sub) as usize
}

/// The midpoint of the values bucket `i` holds.
fn value_at(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let e = (i - EXACT) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (i - EXACT) % SUB;
    let low = (SUB + sub) << (e - u64::from(SUB_BITS));
    let width = 1u64 << (e - u64::from(SUB_BITS));
    low + width / 2
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram::default()
    }

    /// Records a value in microseconds (negative values count as 0).
    #[inline]
    pub fn record(&mut self, micros: i64) {
        let v = micros.max(0) as u64;
        let i = index(v);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        if self.total == 0 || v < self.min {
            self.min = v;
        }
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        if self.total == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), within 1/64 of the true one; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_at(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// p50, p95, p99 and max, in microseconds.
    pub fn summary(&self) -> Quantiles {
        Quantiles {
            count: self.total,
            p50_us: self.quantile(0.50),
            p95_us: self.quantile(0.95),
            p99_us: self.quantile(0.99),
            max_us: self.max,
        }
    }
}

/// A latency distribution summarised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Quantiles {
    /// Values recorded.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 95th percentile, µs.
    pub p95_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Maximum, µs (exact).
    pub max_us: u64,
}

/// Formats microseconds for people: `840µs`, `12.3ms`, `4.20s`, `3m05s`.
pub fn format_micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us < 60_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us < 3_600_000_000 {
        format!("{}m{:02}s", us / 60_000_000, (us / 1_000_000) % 60)
    } else {
        format!("{}h{:02}m", us / 3_600_000_000, (us / 60_000_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_documented_error() {
        let mut h = Histogram::new();
        let mut values: Vec<i64> = (0..100_000).map(|i| (i * 7919) % 5_000_000).collect();
        for v in &values {
            h.record(*v);
        }
        values.sort_unstable();
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let exact = values[((q * values.len() as f64).ceil() as usize).max(1) - 1] as f64;
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() <= exact / 64.0 + 1.0,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.max(), *values.last().unwrap() as u64);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn small_values_are_exact_and_merge_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 0..100 {
            a.record(v);
        }
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert_eq!(a.quantile(0.5), 50);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }

    #[test]
    fn index_and_value_agree() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            123_456,
            u64::MAX / 2,
        ] {
            let mid = value_at(index(v)) as f64;
            assert!(
                (mid - v as f64).abs() <= v as f64 / 64.0 + 1.0,
                "{v} -> {mid}"
            );
        }
    }
}
