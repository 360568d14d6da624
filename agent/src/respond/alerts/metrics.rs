//! `tollgate_alert_*` metrics, read from the targets' counters at scrape
//! time.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{Target, deliver};
use crate::metrics::label;

/// `tollgate_alert_*` metrics.
#[derive(Debug)]
pub struct AlertsCollector {
    pub(super) targets: Vec<Arc<Target>>,
    pub(super) firing: Arc<AtomicU64>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).finish()
    }
}

impl Collector for AlertsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Get = fn(&deliver::TargetStats) -> u64;
        let counters: [(&str, &str, Get); 4] = [
            (
                "tollgate_alert_deliveries",
                "Alerts an Alertmanager acknowledged (2xx), by URL",
                |s| s.delivered.load(Ordering::Relaxed),
            ),
            (
                "tollgate_alert_delivery_failures",
                "Failed POSTs to an Alertmanager (unreachable, timeout, 5xx); the alerts stay queued and are retried",
                |s| s.failures.load(Ordering::Relaxed),
            ),
            (
                "tollgate_alert_rejected",
                "Alerts an Alertmanager refused with a 4xx (dropped, logged)",
                |s| s.rejected.load(Ordering::Relaxed),
            ),
            (
                "tollgate_alert_queue_dropped",
                "Alerts dropped because the on-disk queue of a URL was full or unwritable",
                |s| s.dropped.load(Ordering::Relaxed) + s.lost.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for t in &self.targets {
                ConstCounter::new(get(&t.stats))
                    .encode(fam.encode_family(&[("alertmanager", label(&t.url))])?)?;
            }
        }
        let mut fam = enc.encode_descriptor(
            "tollgate_alert_queue_length",
            "Alerts waiting in the on-disk queue of a URL",
            None,
            MetricType::Gauge,
        )?;
        for t in &self.targets {
            ConstGauge::new(t.stats.queued.load(Ordering::Relaxed) as i64)
                .encode(fam.encode_family(&[("alertmanager", label(&t.url))])?)?;
        }
        let fam = enc.encode_descriptor(
            "tollgate_alerts_firing",
            "Alerts the agent currently reports as firing",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.firing.load(Ordering::Relaxed) as i64).encode(fam)?;
        Ok(())
    }
}
