//! Bytes per (pod, external prefix) over the drip horizon: a ring of
//! coarse buckets per pair, so a slow leak adds up over hours at a cost of
//! a few integers per pair.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use crate::{baseline::dests, collect::WindowSample};

/// Buckets per horizon.
const BUCKETS: u32 = 12;
/// Prefixes tracked per pod; beyond it new prefixes are counted in
/// [`Drip::dropped`].
pub const MAX_PREFIXES_PER_POD: usize = 256;

#[derive(Debug, Default)]
struct Pod {
    prefixes: HashMap<String, VecDeque<(SystemTime, u64)>>,
    last_seen: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Drip {
    horizon: Duration,
    span: Duration,
    pods: HashMap<u64, Pod>,
    pub dropped: u64,
}

impl Drip {
    pub fn new(horizon: Duration) -> Self {
        Self {
            horizon,
            span: (horizon / BUCKETS).max(Duration::from_secs(1)),
            pods: HashMap::new(),
            dropped: 0,
        }
    }

    /// Adds a window's external tx bytes per prefix.
    pub fn add(&mut self, s: &WindowSample) {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for p in s.peers.iter().filter(|p| p.external && p.tx_bytes > 0) {
            *by.entry(dests::prefix(p.addr)).or_default() += p.tx_bytes;
        }
        let pod = self.pods.entry(s.subject.cgroup_id).or_default();
        pod.last_seen = Some(s.end);
        for (prefix, bytes) in by {
            if !pod.prefixes.contains_key(&prefix) && pod.prefixes.len() >= MAX_PREFIXES_PER_POD {
                self.dropped += 1;
                continue;
            }
            let ring = pod.prefixes.entry(prefix).or_default();
            match ring.back_mut() {
                Some((start, b)) if s.end < *start + self.span && s.end >= *start => *b += bytes,
                _ => ring.push_back((s.end, bytes)),
            }
        }
    }

    /// The pod's bytes per prefix over the horizon ending at `at`.
    pub fn cumulative(&mut self, pod: u64, at: SystemTime) -> BTreeMap<String, u64> {
        let Some(p) = self.pods.get_mut(&pod) else {
            return BTreeMap::new();
        };
        let horizon = self.horizon;
        p.prefixes.retain(|_, ring| {
            while ring.front().is_some_and(|(t, _)| *t + horizon <= at) {
                ring.pop_front();
            }
            !ring.is_empty()
        });
        p.prefixes
            .iter()
            .map(|(k, ring)| (k.clone(), ring.iter().map(|(_, b)| b).sum()))
            .collect()
    }

    /// Forgets pods not seen for a horizon.
    pub fn sweep(&mut self, now: SystemTime) {
        let horizon = self.horizon;
        self.pods
            .retain(|_, p| p.last_seen.is_some_and(|t| t + horizon > now));
    }
}
