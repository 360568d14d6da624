//! `tollgate bench-quarantine` (driven by `cargo xtask bench quarantine`):
//! time from a quarantine request to the first packet the kernel stops,
//! over many runs against a pod that sends all the time. The request is
//! the real one (`Quarantine::quarantine`: kernel maps, the pod's
//! interfaces, state file, audit log); the first stopped packet is seen
//! in the kernel's own counters, polled in a tight loop:
//! - `cgroup`: the pod's connects_denied + quarantine_dropped (sender in
//!   the pod's cgroup: sendmsg refused or packet dropped);
//! - `tc`: the interface's dropped_egress (sender outside the cgroup, in
//!   the pod's namespace: only the tc program on the veth can stop it).
//!
//! Baseline, same run: time from a random instant to the pod's next
//! packet without quarantine (the sender's gap), the floor any detection
//! of "the first stopped packet" has.

use std::{
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    config::Config,
    ebpf::{DataplaneError, PinDir, PinnedMaps, tc::IfMaps},
    quarantine::{Quarantine, QuarantineError},
};

#[derive(Debug, thiserror::Error)]
pub enum QBenchError {
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{0}")]
    Setup(String),
}

/// Which counter shows the first stopped packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Watch {
    Cgroup,
    Tc,
}

#[derive(Debug, Serialize)]
pub struct QBenchResult {
    pub watch: Watch,
    pub runs: usize,
    /// Request -> first stopped packet, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Time inside `quarantine()` alone (the request returning), p50.
    pub request_p50_ms: f64,
    /// Random instant -> next packet without quarantine.
    pub baseline_p50_ms: f64,
    pub baseline_p99_ms: f64,
    /// Runs where no stopped packet was seen within the poll limit.
    pub missed: usize,
}

/// Poll limit per run: far above the target.
const LIMIT: Duration = Duration::from_secs(1);

struct Counters<'a> {
    maps: &'a PinnedMaps,
    ifmaps: &'a IfMaps,
    cgroup_id: u64,
    ifindex: u32,
}

impl Counters<'_> {
    /// (stopped, passed) packets so far.
    fn read(&self, watch: Watch) -> (u64, u64) {
        match watch {
            Watch::Cgroup => {
                let s = self
                    .maps
                    .cgroup_stats
                    .get(&self.cgroup_id, 0)
                    .map(|v| {
                        let mut t = tollgate_ebpf::CgroupStats::default();
                        for c in v.iter() {
                            t += *c;
                        }
                        t
                    })
                    .unwrap_or_default();
                (
                    s.connects_denied + s.quarantine_dropped.packets,
                    s.egress.internal.packets + s.egress.external.packets,
                )
            }
            Watch::Tc => {
                let s = self
                    .ifmaps
                    .stats()
                    .into_iter()
                    .find(|(i, _)| *i == self.ifindex)
                    .map(|(_, s)| s)
                    .unwrap_or_default();
                (s.dropped_egress.packets, s.pod_egress.packets)
            }
        }
    }

    /// Time until `pick(counters)` grows past `from`, or None.
    fn until_grows(&self, watch: Watch, from: u64, pick: fn((u64, u64)) -> u64, t0: Instant) -> Option<Duration> {
        while t0.elapsed() < LIMIT {
            if pick(self.read(watch)) > from {
                return Some(t0.elapsed());
            }
        }
        None
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Runs `runs` quarantine/release cycles on cgroup `rel` (relative to
/// the cgroup v2 mount); `ifname` is the pod's host-side interface for
/// `Watch::Tc`.
pub fn run(
    cfg: &Config,
    rel: &str,
    ifindex: u32,
    watch: Watch,
    runs: usize,
) -> Result<QBenchResult, QBenchError> {
    let mount = crate::cgroupfs::cgroup2_mount().map_err(|e| QBenchError::Setup(e.to_string()))?;
    let pins = PinDir::new(&cfg.agent.pin_dir);
    let mut q = Quarantine::open(&pins, mount.clone(), &cfg.agent.state_dir)?;
    q.set_host_netns(cfg.tc.host());
    let cgroup_id = std::fs::metadata(mount.join(rel.trim_start_matches('/')))
        .map_err(|e| QBenchError::Setup(format!("cgroup {rel}: {e}")))?
        .ino();
    let maps = PinnedMaps::open(&pins)?;
    let ifmaps = IfMaps::open(&pins)?;
    let c = Counters {
        maps: &maps,
        ifmaps: &ifmaps,
        cgroup_id,
        ifindex,
    };
    let (mut lat, mut req, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let mut missed = 0;
    for i in 0..runs {
        // Baseline: the sender's next packet, from a fresh instant.
        let (_, passed) = c.read(watch);
        let t0 = Instant::now();
        match c.until_grows(watch, passed, |x| x.1, t0) {
            Some(d) => base.push(d.as_secs_f64() * 1e3),
            None => {
                return Err(QBenchError::Setup(format!(
                    "run {i}: the pod sent nothing for {LIMIT:?}; is the sender running?"
                )));
            }
        }
        let (stopped, _) = c.read(watch);
        let t0 = Instant::now();
        q.quarantine(rel, "bench", "bench", None)?;
        req.push(t0.elapsed().as_secs_f64() * 1e3);
        match c.until_grows(watch, stopped, |x| x.0, t0) {
            Some(d) => lat.push(d.as_secs_f64() * 1e3),
            None => missed += 1,
        }
        q.release(rel, "bench")?;
        // Let the sender recover (a refused send is retried at once).
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(QBenchResult {
        watch,
        runs,
        p50_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
        max_ms: pct(&mut lat, 1.0),
        request_p50_ms: pct(&mut req, 0.5),
        baseline_p50_ms: pct(&mut base, 0.5),
        baseline_p99_ms: pct(&mut base, 0.99),
        missed,
    })
}
