//! Per-class destination sets, aggregated by prefix (/24 IPv4, /48 IPv6:
//! the granularity at which cloud endpoints and CDNs keep their addresses
//! stable), with the most any pod of the class sent there.
//!
//! Maxima must not chase an attacker: a pod that slowly raises its own
//! volume would otherwise raise the bar with it. So each maximum keeps the
//! value frozen at the end of learning plus the largest later values per
//! pod, and a pod is judged against the frozen value and the other pods'
//! values, never its own later ones.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

/// Pods remembered per maximum after learning.
const POD_SLOTS: usize = 4;

/// The prefix an address is aggregated into.
pub fn prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{net}/48")
        }
    }
}

/// A maximum that a single pod cannot raise for itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodMax {
    /// Largest value seen while the class was learning.
    pub learned: u64,
    /// Largest values after learning, per pod (cgroup id), largest first.
    pub pods: Vec<(u64, u64)>,
}

impl PodMax {
    pub fn observe(&mut self, pod: u64, v: u64, learning: bool) {
        if learning {
            self.learned = self.learned.max(v);
            return;
        }
        match self.pods.iter_mut().find(|(p, _)| *p == pod) {
            Some(e) => e.1 = e.1.max(v),
            None => self.pods.push((pod, v)),
        }
        self.pods.sort_by_key(|p| std::cmp::Reverse(p.1));
        self.pods.truncate(POD_SLOTS);
    }

    /// What the class sent, as `pod` is judged: the learned value and other
    /// pods' later values.
    pub fn for_pod(&self, pod: u64) -> u64 {
        self.pods
            .iter()
            .filter(|(p, _)| *p != pod)
            .map(|(_, v)| *v)
            .fold(self.learned, u64::max)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrefixStats {
    /// In the class's set (used while learning, or promoted later).
    pub known: bool,
    /// Pods that used a not-yet-known prefix (bounded by promote_pods).
    #[serde(default)]
    pub candidate_pods: Vec<u64>,
    /// Most bytes one pod sent there in one window.
    pub window_bytes: PodMax,
    /// Most bytes one pod sent there over the drip horizon.
    pub horizon_bytes: PodMax,
    #[serde(with = "humantime_serde")]
    pub first_seen: SystemTime,
    #[serde(with = "humantime_serde")]
    pub last_seen: SystemTime,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DestSet {
    pub prefixes: BTreeMap<String, PrefixStats>,
    /// New prefixes not remembered because the set was full.
    pub dropped: u64,
}

impl DestSet {
    pub fn is_known(&self, prefix: &str) -> bool {
        self.prefixes.get(prefix).is_some_and(|p| p.known)
    }

    pub fn get(&self, prefix: &str) -> Option<&PrefixStats> {
        self.prefixes.get(prefix)
    }

    /// Trains on one pod's traffic to one prefix: bytes in the window and
    /// over the drip horizon.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        prefix: &str,
        pod: u64,
        window_bytes: u64,
        horizon_bytes: u64,
        at: SystemTime,
        learning: bool,
        promote_pods: usize,
        max_prefixes: usize,
    ) {
        if !self.prefixes.contains_key(prefix) {
            if self.prefixes.len() >= max_prefixes && !self.evict_candidate() {
                self.dropped += 1;
                return;
            }
            self.prefixes.insert(
                prefix.to_owned(),
                PrefixStats {
                    known: false,
                    candidate_pods: Vec::new(),
                    window_bytes: PodMax::default(),
                    horizon_bytes: PodMax::default(),
                    first_seen: at,
                    last_seen: at,
                },
            );
        }
        let p = self.prefixes.get_mut(prefix).expect("inserted above");
        p.last_seen = p.last_seen.max(at);
        if !p.known {
            if learning {
                p.known = true;
                p.candidate_pods.clear();
            } else {
                if !p.candidate_pods.contains(&pod) {
                    p.candidate_pods.push(pod);
                }
                if p.candidate_pods.len() >= promote_pods {
                    p.known = true;
                    p.candidate_pods.clear();
                }
            }
        }
        p.window_bytes.observe(pod, window_bytes, learning);
        p.horizon_bytes.observe(pod, horizon_bytes, learning);
    }

    /// Makes room by forgetting the least recently used candidate prefix.
    fn evict_candidate(&mut self) -> bool {
        let victim = self
            .prefixes
            .iter()
            .filter(|(_, p)| !p.known)
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => {
                self.prefixes.remove(&k);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(prefix("203.0.113.77".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            prefix("2001:db8:5:6::1".parse().unwrap()),
            "2001:db8:5::/48"
        );
    }

    #[test]
    fn a_pod_cannot_raise_its_own_bar() {
        let mut m = PodMax::default();
        m.observe(1, 100, true);
        m.observe(1, 5000, false);
        assert_eq!(m.for_pod(1), 100);
        assert_eq!(m.for_pod(2), 5000);
    }

    #[test]
    fn promotion_needs_distinct_pods() {
        let t = SystemTime::UNIX_EPOCH;
        let mut d = DestSet::default();
        d.observe("203.0.113.0/24", 1, 10, 10, t, false, 2, 10);
        d.observe("203.0.113.0/24", 1, 10, 10, t, false, 2, 10);
        assert!(!d.is_known("203.0.113.0/24"));
        d.observe("203.0.113.0/24", 2, 10, 10, t, false, 2, 10);
        assert!(d.is_known("203.0.113.0/24"));
        d.observe("198.51.100.0/24", 3, 10, 10, t, true, 2, 10);
        assert!(d.is_known("198.51.100.0/24"));
    }
}
