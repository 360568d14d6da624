//! Prometheus endpoint: `/metrics` (OpenMetrics text) and `/healthz` on
//! `agent.metrics_addr`. Per-pod series are encoded at scrape time from the
//! latest snapshot (the kernel's counters are already cumulative, so they
//! are exported as-is, never re-accumulated); agent health metrics live in
//! the registry.
//!
//! Cardinality: no peer addresses as labels, at most `metrics.max_series`
//! per-pod series (largest egress first; the rest are counted in
//! `tollgate_metrics_series_dropped`), and a cgroup's series disappear with
//! its row (removed cgroups linger for the collector's grace period).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::watch;

use crate::collect::{CgroupRow, Snapshot};

/// Longest label value exported; longer ones (hostile pod labels, deep
/// cgroup paths) are cut and marked, so one pod cannot bloat a scrape.
pub const MAX_LABEL_LEN: usize = 256;

type Shared = watch::Receiver<Option<Arc<Snapshot>>>;

/// Cuts a label value to [`MAX_LABEL_LEN`] bytes on a char boundary.
pub fn label(v: &str) -> String {
    if v.len() <= MAX_LABEL_LEN {
        return v.to_owned();
    }
    let mut end = MAX_LABEL_LEN - 3;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &v[..end])
}

/// Identity labels of a row: namespace, pod (the cgroup path when the
/// inventory has no name), container, class, node.
fn pod_labels(r: &CgroupRow, node: &str) -> Vec<(&'static str, String)> {
    let pod = r
        .pod
        .clone()
        .or_else(|| r.path.clone())
        .unwrap_or_else(|| format!("cgroup:{}", r.cgroup_id));
    vec![
        ("namespace", label(r.namespace.as_deref().unwrap_or(""))),
        ("pod", label(&pod)),
        ("container", label(r.container.as_deref().unwrap_or(""))),
        ("class", label(r.class.as_deref().unwrap_or("default"))),
        ("node", label(node)),
    ]
}

/// Rows folded by label set: two cgroups that resolve to the same labels
/// (cut label values, a container restarted under a new cgroup within the
/// grace period) must not produce duplicate series; their counters add up.
fn aggregate(rows: &[CgroupRow], node: &str) -> Vec<(Vec<(&'static str, String)>, CgroupRow)> {
    let mut out: Vec<(Vec<(&'static str, String)>, CgroupRow)> = Vec::new();
    let mut index: std::collections::HashMap<Vec<(&'static str, String)>, usize> =
        std::collections::HashMap::new();
    for r in rows {
        let l = pod_labels(r, node);
        match index.get(&l) {
            None => {
                index.insert(l.clone(), out.len());
                out.push((l, r.clone()));
            }
            Some(&i) => {
                let t = &mut out[i].1;
                for (a, b) in [(&mut t.egress, &r.egress), (&mut t.ingress, &r.ingress)] {
                    a.internal.bytes += b.internal.bytes;
                    a.internal.packets += b.internal.packets;
                    a.external.bytes += b.external.bytes;
                    a.external.packets += b.external.packets;
                }
                t.connects += r.connects;
                t.new_peers += r.new_peers;
                t.malformed += r.malformed;
                t.events_dropped += r.events_dropped;
                t.connects_denied += r.connects_denied;
                t.quarantine_dropped.packets += r.quarantine_dropped.packets;
                t.quarantine_dropped.bytes += r.quarantine_dropped.bytes;
                for u in &r.storage {
                    match t.storage.iter_mut().find(|x| x.dev == u.dev) {
                        Some(x) => {
                            x.written.bytes += u.written.bytes;
                            x.written.calls += u.written.calls;
                            x.read.bytes += u.read.bytes;
                            x.read.calls += u.read.calls;
                        }
                        None => t.storage.push(u.clone()),
                    }
                }
            }
        }
    }
    out
}

/// Map capacities, for fill ratios.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub cgroup_stats: u32,
    pub flows: u32,
}

#[derive(Debug)]
struct PodCollector {
    rx: Shared,
    node: String,
    max_series: usize,
    capacity: Capacity,
    exported: Arc<AtomicU64>,
}

/// Series per pod row: 2 directions x 2 scopes x (bytes, packets) + 6.
const SERIES_PER_POD: usize = 14;

impl Collector for PodCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snap) = self.rx.borrow().clone() else {
            return Ok(());
        };
        let all = aggregate(&snap.cgroups, &self.node);
        let groups = all.len();
        let pods = (self.max_series / SERIES_PER_POD).min(groups);
        let (labels, rows): (Vec<_>, Vec<_>) = all.into_iter().take(pods).unzip();

        for (name, help, packets) in [
            (
                "tollgate_pod_network_bytes",
                "L3 bytes by direction and scope (cluster-internal or external)",
                false,
            ),
            (
                "tollgate_pod_network_packets",
                "Packets by direction and scope",
                true,
            ),
        ] {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (r, l) in rows.iter().zip(&labels) {
                for (dir, d) in [("egress", &r.egress), ("ingress", &r.ingress)] {
                    for (scope, c) in [("internal", &d.internal), ("external", &d.external)] {
                        let mut l = l.clone();
                        l.push(("direction", dir.into()));
                        l.push(("scope", scope.into()));
                        let v = if packets { c.packets } else { c.bytes };
                        ConstCounter::new(v).encode(fam.encode_family(&l)?)?;
                    }
                }
            }
        }
        for (name, help, get) in [
            (
                "tollgate_pod_connections",
                "connect() calls on inet sockets",
                (|r: &CgroupRow| r.connects) as fn(&CgroupRow) -> u64,
            ),
            (
                "tollgate_pod_new_peers",
                "First contacts with a (peer address, port, protocol)",
                |r| r.new_peers,
            ),
            (
                "tollgate_pod_malformed_packets",
                "Packets whose headers could not be parsed (still counted)",
                |r| r.malformed,
            ),
            (
                "tollgate_pod_connections_denied",
                "connect()/sendmsg() calls refused because the pod is quarantined or its class's egress policy denies the destination",
                |r| r.connects_denied,
            ),
            (
                "tollgate_pod_quarantine_dropped_packets",
                "Packets dropped because the pod is quarantined",
                |r| r.quarantine_dropped.packets,
            ),
            (
                "tollgate_pod_connection_events_dropped",
                "Connection events lost to a full ring buffer",
                |r| r.events_dropped,
            ),
        ] {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (r, l) in rows.iter().zip(&labels) {
                ConstCounter::new(get(r)).encode(fam.encode_family(l)?)?;
            }
        }

        // Storage: one series per (pod, mount, direction); mounts are few and
        // admin-defined, so the mount point is a bounded label.
        for (name, help, bytes) in [
            (
                "tollgate_pod_storage_bytes",
                "Bytes written to / read from watched shared storage",
                true,
            ),
            (
                "tollgate_pod_storage_calls",
                "Successful write/read system calls on watched shared storage",
                false,
            ),
        ] {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (r, l) in rows.iter().zip(&labels) {
                for u in &r.storage {
                    for (dir, c) in [("write", &u.written), ("read", &u.read)] {
                        let mut l = l.clone();
                        l.push(("mount", label(u.mount_point.as_deref().unwrap_or(&u.dev))));
                        l.push(("fstype", label(u.fstype.as_deref().unwrap_or("unknown"))));
                        l.push(("direction", dir.into()));
                        let v = if bytes { c.bytes } else { c.calls };
                        ConstCounter::new(v).encode(fam.encode_family(&l)?)?;
                    }
                }
            }
        }
        let mut fam = enc.encode_descriptor(
            "tollgate_kernel_events",
            "Kernel-side health counters (ring buffer drops, flow table and map overflow)",
            None,
            MetricType::Counter,
        )?;
        for (k, v) in &snap.counters {
            if k == "flows_live" {
                continue;
            }
            ConstCounter::new(*v).encode(fam.encode_family(&[("counter", k.as_str())])?)?;
        }
        let flows = snap.counters.get("flows_live").copied().unwrap_or(0);
        let mut fam = enc.encode_descriptor(
            "tollgate_map_fill_ratio",
            "Entries in a kernel map over its capacity",
            None,
            MetricType::Gauge,
        )?;
        for (map, n, cap) in [
            (
                "cgroup_stats",
                snap.cgroups.len() as u64,
                self.capacity.cgroup_stats,
            ),
            ("flows", flows, self.capacity.flows),
        ] {
            ConstGauge::new(n as f64 / f64::from(cap.max(1)))
                .encode(fam.encode_family(&[("map", map)])?)?;
        }

        let series =
            pods * SERIES_PER_POD + rows.iter().map(|r| r.storage.len() * 4).sum::<usize>();
        let dropped = groups.saturating_sub(pods) * SERIES_PER_POD;
        self.exported.store(series as u64, Ordering::Relaxed);
        let fam = enc.encode_descriptor(
            "tollgate_metrics_series",
            "Per-pod series in this scrape (capped by metrics.max_series)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(series as i64).encode(fam)?;
        let fam = enc.encode_descriptor(
            "tollgate_metrics_series_dropped",
            "Per-pod series left out of this scrape by the cap",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(dropped as i64).encode(fam)?;
        Ok(())
    }
}

/// The agent's metrics: registry plus handles the run loop updates.
pub struct Metrics {
    registry: Registry,
    pub tick_seconds: Histogram,
    pub cgroups: Gauge,
    pub exported_series: Arc<AtomicU64>,
}

impl Metrics {
    pub fn new(rx: Shared, node: String, max_series: usize, capacity: Capacity) -> Self {
        let mut registry = Registry::default();
        let tick_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "tollgate_agent_tick_duration_seconds",
            "Time to drain the kernel maps and build a snapshot",
            tick_seconds.clone(),
        );
        let cgroups = Gauge::default();
        registry.register(
            "tollgate_agent_cgroups",
            "Cgroups with counters in the kernel map",
            cgroups.clone(),
        );
        let exported_series = Arc::new(AtomicU64::new(0));
        registry.register_collector(Box::new(crate::enforce_metrics::EnforceCollector {
            rx: rx.clone(),
            node: node.clone(),
        }));
        registry.register_collector(Box::new(PodCollector {
            rx,
            node,
            max_series,
            capacity,
            exported: exported_series.clone(),
        }));
        Self {
            registry,
            tick_seconds,
            cgroups,
            exported_series,
        }
    }

    pub fn observe_tick(&self, took: Duration, cgroups: usize) {
        self.tick_seconds.observe(took.as_secs_f64());
        self.cgroups.set(cgroups as i64);
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Metrics {
    /// Registers another subsystem's metrics (before the server starts):
    /// each subsystem owns its metrics (alerts, findings, quarantine, health).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Serves /metrics and /healthz until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(m);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::collect::{Counts, DirCounts};

    fn snap(paths: &[&str]) -> Snapshot {
        Snapshot {
            cgroups: paths
                .iter()
                .enumerate()
                .map(|(i, p)| CgroupRow {
                    cgroup_id: i as u64 + 10,
                    path: Some((*p).into()),
                    egress: DirCounts {
                        internal: Counts {
                            bytes: 100,
                            packets: 2,
                        },
                        external: Counts {
                            bytes: 7,
                            packets: 1,
                        },
                    },
                    connects: 3,
                    ..CgroupRow::default()
                })
                .collect(),
            events: vec![],
            counters: BTreeMap::from([
                ("ringbuf_drops".to_string(), 5),
                ("flows_live".to_string(), 50),
            ]),
            ..Snapshot::empty(SystemTime::now())
        }
    }

    fn render(s: Snapshot, max_series: usize) -> String {
        let (_tx, rx) = watch::channel(Some(Arc::new(s)));
        let m = Metrics::new(
            rx,
            "node-1".into(),
            max_series,
            Capacity {
                cgroup_stats: 100,
                flows: 1000,
            },
        );
        m.encode().unwrap()
    }

    #[test]
    fn exports_cumulative_kernel_counters() {
        let text = render(snap(&["/kubepods/a"]), 1000);
        assert!(text.contains(
            "tollgate_pod_network_bytes_total{namespace=\"\",pod=\"/kubepods/a\",container=\"\",class=\"default\",node=\"node-1\",direction=\"egress\",scope=\"internal\"} 100"
        ), "{text}");
        assert!(text.contains("tollgate_pod_connections_total{namespace=\"\",pod=\"/kubepods/a\",container=\"\",class=\"default\",node=\"node-1\"} 3"));
        assert!(text.contains("tollgate_kernel_events_total{counter=\"ringbuf_drops\"} 5"));
        assert!(
            text.contains("tollgate_map_fill_ratio{map=\"flows\"} 0.05"),
            "{text}"
        );
        assert!(text.contains("tollgate_metrics_series 14"));
    }

    #[test]
    fn hostile_label_values_are_escaped_and_cut() {
        let long = "x".repeat(1 << 20);
        let text = render(snap(&["/a\"b\\c\nd", &long]), 1000);
        assert!(
            text.contains(r#"pod="/a\"b\\c\nd""#),
            "{}",
            &text[..2000.min(text.len())]
        );
        assert!(
            text.len() < 64 * 1024,
            "a megabyte label must not reach the scrape"
        );
        // Every sample line stays one line.
        for line in text.lines().filter(|l| l.starts_with("tollgate_pod")) {
            assert!(line.ends_with(|c: char| c.is_ascii_digit()), "{line}");
        }
    }

    #[test]
    fn series_are_capped() {
        let text = render(snap(&["/a", "/b", "/c"]), 28);
        assert!(text.contains("tollgate_metrics_series 28"));
        assert!(text.contains("tollgate_metrics_series_dropped 14"));
        assert!(!text.contains("pod=\"/c\""));
    }
}
