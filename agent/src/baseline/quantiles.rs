//! Robust per-feature quantiles over a sliding horizon: a ring of
//! hdrhistograms, one per horizon bucket, plus their running sum. Recording
//! goes to the newest bucket and the sum; when a bucket leaves the horizon
//! it is subtracted from the sum as a whole, so quantiles never scan the
//! ring.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::features::{Feature, N, Vector};

/// Two significant digits: quantiles are compared with multiples of
/// themselves, so 1% resolution is plenty and keeps histograms small.
const SIGFIG: u8 = 2;

fn new_hist() -> Histogram<u32> {
    Histogram::new(SIGFIG).expect("2 significant digits is a valid precision")
}

#[derive(Debug, Clone)]
struct Bucket {
    start: SystemTime,
    hists: Vec<Histogram<u32>>,
}

#[derive(Debug, Clone)]
pub struct RingHist {
    span: Duration,
    max_buckets: usize,
    buckets: VecDeque<Bucket>,
    merged: Vec<Histogram<u32>>,
}

/// Persisted form: recorded (value, count) pairs per feature per bucket,
/// independent of hdrhistogram's own encoding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RingHistState {
    pub span_secs: u64,
    pub max_buckets: usize,
    pub buckets: Vec<BucketState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BucketState {
    #[serde(with = "humantime_serde")]
    pub start: SystemTime,
    pub features: Vec<Vec<(u64, u64)>>,
}

impl RingHist {
    pub fn new(horizon: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(2);
        Self {
            span: (horizon / buckets as u32).max(Duration::from_secs(1)),
            max_buckets: buckets,
            buckets: VecDeque::new(),
            merged: (0..N).map(|_| new_hist()).collect(),
        }
    }

    /// Windows in the horizon.
    pub fn len(&self) -> u64 {
        self.merged[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops buckets that ended before `at - horizon`.
    fn expire(&mut self, at: SystemTime) {
        let horizon = self.span * self.max_buckets as u32;
        while let Some(front) = self.buckets.front() {
            if front.start + horizon > at {
                break;
            }
            let old = self.buckets.pop_front().expect("front exists");
            for (m, h) in self.merged.iter_mut().zip(&old.hists) {
                // The sum contains every bucket, so this cannot underflow.
                let _ = m.subtract(h);
            }
        }
    }

    pub fn record(&mut self, at: SystemTime, v: &Vector) {
        self.expire(at);
        let need_new = self
            .buckets
            .back()
            .is_none_or(|b| at >= b.start + self.span || at < b.start);
        if need_new {
            self.buckets.push_back(Bucket {
                start: at,
                hists: (0..N).map(|_| new_hist()).collect(),
            });
        }
        let bucket = self.buckets.back_mut().expect("just ensured");
        for (i, f) in Feature::ALL.iter().enumerate() {
            let x = (v[i].max(0.0) * f.scale()).round();
            let x = if x.is_finite() {
                x as u64
            } else {
                u64::MAX / 4
            };
            // Auto-resizing histograms accept every u64 we produce.
            let _ = bucket.hists[i].record(x);
            let _ = self.merged[i].record(x);
        }
    }

    /// The `q` quantile of a feature over the horizon; None when empty.
    pub fn quantile(&self, f: Feature, q: f64) -> Option<f64> {
        let h = &self.merged[f as usize];
        if h.is_empty() {
            return None;
        }
        Some(h.value_at_quantile(q) as f64 / f.scale())
    }

    pub fn state(&self) -> RingHistState {
        RingHistState {
            span_secs: self.span.as_secs(),
            max_buckets: self.max_buckets,
            buckets: self
                .buckets
                .iter()
                .map(|b| BucketState {
                    start: b.start,
                    features: b
                        .hists
                        .iter()
                        .map(|h| {
                            h.iter_recorded()
                                .map(|v| (v.value_iterated_to(), v.count_at_value() as u64))
                                .collect()
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Rebuilds from a persisted state; the current config's horizon wins
    /// (older buckets expire at the next record).
    pub fn from_state(
        s: &RingHistState,
        horizon: Duration,
        buckets: usize,
    ) -> Result<Self, String> {
        let mut r = Self::new(horizon, buckets);
        for b in &s.buckets {
            if b.features.len() != N {
                return Err(format!(
                    "a histogram bucket has {} features, this version models {N}",
                    b.features.len()
                ));
            }
            let mut hists = Vec::with_capacity(N);
            for (i, pairs) in b.features.iter().enumerate() {
                let mut h = new_hist();
                for (v, c) in pairs {
                    h.record_n(*v, *c as u32)
                        .map_err(|e| format!("histogram value {v}: {e:?}"))?;
                }
                let _ = r.merged[i].add(&h);
                hists.push(h);
            }
            r.buckets.push_back(Bucket {
                start: b.start,
                hists,
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: f64) -> Vector {
        [x; N]
    }

    #[test]
    fn quantiles_slide_with_the_horizon() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = RingHist::new(Duration::from_secs(100), 10);
        for i in 0..100u64 {
            r.record(t0 + Duration::from_secs(i), &v(1000.0));
        }
        assert_eq!(r.len(), 100);
        let q = r.quantile(Feature::EgressExternalBytes, 0.99).unwrap();
        assert!((q - 1000.0).abs() <= 10.0, "{q}");
        // 100 s later every old bucket has left the horizon.
        for i in 200..250u64 {
            r.record(t0 + Duration::from_secs(i), &v(10.0));
        }
        assert_eq!(r.len(), 50);
        let q = r.quantile(Feature::EgressExternalBytes, 0.99).unwrap();
        assert!((q - 10.0).abs() < 1.0, "{q}");
        let back = RingHist::from_state(&r.state(), Duration::from_secs(100), 10).unwrap();
        assert_eq!(back.len(), 50);
        assert_eq!(back.state(), r.state());
    }
}
