//! Agent and node health metrics beyond what metrics.rs exports from the
//! snapshot: per-program run time and run count when the kernel's BPF
//! statistics are on, and Kubernetes API errors.
//!
//! BPF run-time statistics cost two clock reads per program run, so the
//! kernel keeps them off unless `kernel.bpf_stats_enabled` is 1 or some
//! process holds a BPF_ENABLE_STATS descriptor (which the agent does when
//! `metrics.program_stats = true`). The program series exist only while
//! statistics are on; `tollgate_bpf_stats_enabled` says which.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{ebpf::ProgStat, inventory::kube::SharedCluster};

/// Where `kernel.bpf_stats_enabled` is read.
pub const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether the kernel's sysctl has BPF statistics on.
pub fn sysctl_stats_enabled() -> bool {
    std::fs::read_to_string(BPF_STATS_SYSCTL).is_ok_and(|s| s.trim() == "1")
}

/// Shared between the run loop (updates every tick) and the scrape.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub programs: Arc<Mutex<Vec<ProgStat>>>,
    /// The agent holds a BPF_ENABLE_STATS descriptor.
    pub stats_held: Arc<AtomicBool>,
    pub cluster: Option<SharedCluster>,
    /// This node's name, for `tollgate_agent_info`.
    pub node: String,
}

impl Health {
    /// Turns the kernel's BPF statistics on when `want` (they stay on while
    /// the returned descriptor lives); logs why not if that fails.
    pub fn enable_program_stats(&self, want: bool) -> Option<std::os::fd::OwnedFd> {
        if !want {
            return None;
        }
        match crate::ebpf::enable_program_stats() {
            Ok(fd) => {
                self.stats_held.store(true, Ordering::Relaxed);
                Some(fd)
            }
            Err(e) => {
                tracing::warn!(error = %e, "program run-time statistics unavailable");
                None
            }
        }
    }

    pub fn stats_enabled(&self) -> bool {
        self.stats_held.load(Ordering::Relaxed) || sysctl_stats_enabled()
    }
}

impl Collector for Health {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Agent-level series carry no node label; dashboards and rules
        // join them to a node through this one (on instance, job).
        let mut fam = enc.encode_descriptor(
            "tollgate_agent_info",
            "Always 1; labels name the node this agent runs on and its version",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(fam.encode_family(&[
            ("node", crate::metrics::label(&self.node).as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
        ])?)?;
        let on = self.stats_enabled();
        let fam = enc.encode_descriptor(
            "tollgate_bpf_stats_enabled",
            "1 when the kernel's BPF run-time statistics are on (kernel.bpf_stats_enabled or metrics.program_stats)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(on)).encode(fam)?;
        if on {
            let progs = self.programs.lock().expect("lock").clone();
            let mut fam = enc.encode_descriptor(
                "tollgate_program_run_seconds",
                "Time the kernel spent running each Tollgate program (while BPF statistics are on)",
                None,
                MetricType::Counter,
            )?;
            for p in &progs {
                ConstCounter::new(p.run_time.as_secs_f64())
                    .encode(fam.encode_family(&[("program", p.name.as_str())])?)?;
            }
            let mut fam = enc.encode_descriptor(
                "tollgate_program_runs",
                "Runs of each Tollgate program (while BPF statistics are on)",
                None,
                MetricType::Counter,
            )?;
            for p in &progs {
                ConstCounter::new(p.run_count)
                    .encode(fam.encode_family(&[("program", p.name.as_str())])?)?;
            }
        }
        let (errors, up) = match &self.cluster {
            Some(c) => {
                let c = c.read().expect("lock");
                (c.errors, Some(c.api_up))
            }
            // Standalone: no API, no errors (exported so rules and panels
            // read 0 rather than nothing).
            None => (0, None),
        };
        let mut fam = enc.encode_descriptor(
            "tollgate_api_errors",
            "Failed requests to the Kubernetes API (each is retried with backoff; 0 in standalone mode)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(errors).encode(fam.encode_family(&[("api", "kubernetes")])?)?;
        if let Some(up) = up {
            let fam = enc.encode_descriptor(
                "tollgate_kubernetes_api_up",
                "1 when the last Kubernetes watch request succeeded",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(up)).encode(fam)?;
        }
        Ok(())
    }
}
