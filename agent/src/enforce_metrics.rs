//! Prometheus series of the enforcement points, encoded at scrape time
//! from the latest snapshot: per pod interface (tc) bytes, packets and
//! quarantine drops; per cgroup egress-policy denials. Destination
//! addresses are never labels (cardinality): they are in the snapshot's
//! `denied` list (`tollgate top --format json`, /v1/snapshot).

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tokio::sync::watch;

use crate::{collect::Snapshot, metrics::label};

#[derive(Debug)]
pub struct EnforceCollector {
    pub rx: watch::Receiver<Option<Arc<Snapshot>>>,
    pub node: String,
}

impl Collector for EnforceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snap) = self.rx.borrow().clone() else {
            return Ok(());
        };
        for (name, help, bytes) in [
            (
                "tollgate_interface_bytes",
                "L3 bytes on a pod's host-side interface (tc), from the pod's view",
                true,
            ),
            (
                "tollgate_interface_packets",
                "Packets on a pod's host-side interface (tc), from the pod's view",
                false,
            ),
            (
                "tollgate_interface_dropped_bytes",
                "L3 bytes dropped on a quarantined pod interface (tc)",
                true,
            ),
            (
                "tollgate_interface_dropped_packets",
                "Frames dropped on a quarantined pod interface (tc)",
                false,
            ),
        ] {
            let dropped = name.contains("dropped");
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for i in &snap.interfaces {
                let (eg, ing) = if dropped {
                    (&i.dropped_egress, &i.dropped_ingress)
                } else {
                    (&i.pod_egress, &i.pod_ingress)
                };
                for (dir, c) in [("egress", eg), ("ingress", ing)] {
                    let l = [
                        ("interface", label(&i.name)),
                        ("cgroup", label(i.cgroup.as_deref().unwrap_or(""))),
                        ("node", label(&self.node)),
                        ("direction", dir.to_owned()),
                    ];
                    let v = if bytes { c.bytes } else { c.packets };
                    ConstCounter::new(v).encode(fam.encode_family(&l)?)?;
                }
            }
        }
        let mut fam = enc.encode_descriptor(
            "tollgate_interface_quarantined",
            "1 while a pod interface is quarantined (tc drop)",
            None,
            MetricType::Gauge,
        )?;
        for i in &snap.interfaces {
            let l = [
                ("interface", label(&i.name)),
                ("cgroup", label(i.cgroup.as_deref().unwrap_or(""))),
                ("node", label(&self.node)),
            ];
            ConstGauge::new(i64::from(i.quarantined)).encode(fam.encode_family(&l)?)?;
        }
        for (name, help, calls) in [
            (
                "tollgate_policy_denied_calls",
                "connect()/sendmsg() calls refused by the class's egress policy",
                true,
            ),
            (
                "tollgate_policy_dropped_packets",
                "Packets dropped by the class's egress policy",
                false,
            ),
        ] {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in snap.cgroups.iter().filter(|r| r.egress_policy.is_some()) {
                let l = [
                    (
                        "pod",
                        label(r.pod.as_deref().or(r.path.as_deref()).unwrap_or("")),
                    ),
                    ("namespace", label(r.namespace.as_deref().unwrap_or(""))),
                    ("container", label(r.container.as_deref().unwrap_or(""))),
                    ("class", label(r.egress_policy.as_deref().unwrap_or(""))),
                    ("node", label(&self.node)),
                ];
                let v = if calls {
                    r.policy_denied_calls
                } else {
                    r.policy_dropped.packets
                };
                ConstCounter::new(v).encode(fam.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}
