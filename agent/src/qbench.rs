//! `tollgate bench-quarantine` (driven by `cargo xtask bench quarantine`):
//! time from a quarantine request to the first packet the kernel stops,
//! over many runs against a pod that sends all the time. The request is
//! the real one (`Quarantine::quarantine`: kernel maps, the pod's
//! interfaces, state file, audit log); the first stopped packet is seen
//! in the kernel's own counters, polled every 20 us by a second thread
//! while the request runs:
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
                // Passed packets mostly sit in the flow cache: merged.
                let s = self.maps.cgroup_totals(self.cgroup_id).unwrap_or_default();
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

    /// Time until `pick(counters)` grows past `from`, or None. Polls
    /// every 20 us: on a two-core machine a pure spin would starve the
    /// sender and the request it is timing.
    fn until_grows(
        &self,
        watch: Watch,
        from: u64,
        pick: fn((u64, u64)) -> u64,
        t0: Instant,
    ) -> Option<Duration> {
        while t0.elapsed() < LIMIT {
            if pick(self.read(watch)) > from {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(20));
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

/// What the poller thread is asked to time.
enum Job {
    /// Until the passed (`false`) or stopped (`true`) count grows past
    /// `from`, timed from `t0`.
    Until {
        t0: Instant,
        from: u64,
        stopped: bool,
    },
}

/// The poller: its own map handles on its own thread, so the first
/// stopped packet is seen while the request is still running (the
/// kernel enforces as soon as the map entries exist; the state file and
/// audit log come after).
fn poller(
    pins: PinDir,
    cgroup_id: u64,
    ifindex: u32,
    watch: Watch,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: std::sync::mpsc::Sender<Result<Option<Duration>, String>>,
) {
    let maps = match (PinnedMaps::open(&pins), IfMaps::open(&pins)) {
        (Ok(m), Ok(i)) => (m, i),
        (Err(e), _) | (_, Err(e)) => {
            let _ = done.send(Err(e.to_string()));
            return;
        }
    };
    let c = Counters {
        maps: &maps.0,
        ifmaps: &maps.1,
        cgroup_id,
        ifindex,
    };
    let _ = done.send(Ok(None));
    for job in jobs {
        let Job::Until { t0, from, stopped } = job;
        let pick = if stopped {
            |x: (u64, u64)| x.0
        } else {
            |x: (u64, u64)| x.1
        };
        let _ = done.send(Ok(c.until_grows(watch, from, pick, t0)));
    }
}

/// Runs `runs` quarantine/release cycles on cgroup `rel` (relative to
/// the cgroup v2 mount); `ifindex` is the pod's host-side interface for
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
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let poll_pins = pins.clone();
    let handle =
        std::thread::spawn(move || poller(poll_pins, cgroup_id, ifindex, watch, job_rx, done_tx));
    let setup_err = |e: String| QBenchError::Setup(format!("poller: {e}"));
    done_rx
        .recv()
        .map_err(|e| setup_err(e.to_string()))?
        .map_err(setup_err)?;
    let ask = |t0: Instant, from: u64, stopped: bool| -> Result<(), QBenchError> {
        job_tx
            .send(Job::Until { t0, from, stopped })
            .map_err(|e| setup_err(e.to_string()))
    };
    let (mut lat, mut req, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let mut missed = 0;
    for i in 0..runs {
        // Baseline: the sender's next packet, from a fresh instant.
        let (stopped, passed) = c.read(watch);
        ask(Instant::now(), passed, false)?;
        match done_rx
            .recv()
            .map_err(|e| setup_err(e.to_string()))?
            .map_err(setup_err)?
        {
            Some(d) => base.push(d.as_secs_f64() * 1e3),
            None => {
                return Err(QBenchError::Setup(format!(
                    "run {i}: the pod sent nothing for {LIMIT:?}; is the sender running?"
                )));
            }
        }
        let t0 = Instant::now();
        ask(t0, stopped, true)?;
        q.quarantine(rel, "bench", "bench", None)?;
        req.push(t0.elapsed().as_secs_f64() * 1e3);
        match done_rx
            .recv()
            .map_err(|e| setup_err(e.to_string()))?
            .map_err(setup_err)?
        {
            Some(d) => lat.push(d.as_secs_f64() * 1e3),
            None => missed += 1,
        }
        q.release(rel, "bench")?;
        // Let the sender recover (a refused send is retried at once).
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(job_tx);
    let _ = handle.join();
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
