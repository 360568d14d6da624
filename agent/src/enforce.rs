//! The agent's per-tick enforcement upkeep, next to collection: tc
//! programs on new pod interfaces, cgroup -> egress policy from the
//! classes, interface quarantines of quarantined pods; and the snapshot's
//! view of them (interfaces, denied destinations).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use tollgate_ebpf::proto_name;

use crate::{
    collect::{Counts, DeniedRow, Snapshot},
    config::Config,
    ebpf::{Dataplane, DataplaneError, PinDir, policy::PolicyMaps, tc::IfMaps},
    egress::{self, Compiled},
    inventory::classes::Classifier,
    podtc::PodTc,
    quarantine::Quarantine,
};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Classes(#[from] crate::inventory::classes::ClassError),
}

pub struct Enforcer {
    podtc: PodTc,
    ifmaps: IfMaps,
    policy: PolicyMaps,
    compiled: Compiled,
    /// Policy id -> class name.
    names: BTreeMap<u32, String>,
}

impl Enforcer {
    /// Opens the maps and writes the allowlists (before any cgroup is
    /// mapped to a policy, so a policy never applies without its list).
    pub fn new(cfg: &Config, pins: &PinDir, mount: PathBuf) -> Result<Self, EnforceError> {
        let classifier = Classifier::new(&cfg.classes)?;
        let compiled = egress::compile(&cfg.classes.egress, classifier.classes())?;
        let mut policy = PolicyMaps::open(pins)?;
        policy.set_allowlist(&compiled.entries)?;
        let names = compiled
            .ids
            .iter()
            .map(|(c, id)| (*id, c.clone()))
            .collect();
        Ok(Self {
            podtc: PodTc::new(&cfg.tc, mount),
            ifmaps: IfMaps::open(pins)?,
            policy,
            compiled,
            names,
        })
    }

    pub fn tc_mode(&self) -> crate::ebpf::tc::TcMode {
        self.podtc.mode()
    }

    /// One pass after a collection pass; fills the snapshot's enforcement
    /// fields.
    pub fn tick(
        &mut self,
        dp: &mut Dataplane,
        snap: &mut Snapshot,
        quarantine: Option<&mut Quarantine>,
    ) {
        self.podtc.sync(dp);
        if let Some(q) = quarantine {
            q.sync_ifaces();
        }
        let wanted: BTreeMap<u64, u32> = snap
            .cgroups
            .iter()
            .filter(|r| !r.gone)
            .filter_map(|r| {
                let class = r.class.as_ref()?;
                Some((r.cgroup_id, *self.compiled.ids.get(class)?))
            })
            .collect();
        match self.policy.set_cgroups(&wanted) {
            Ok((0, 0)) => {}
            Ok((added, removed)) => {
                tracing::info!(
                    added,
                    removed,
                    cgroups = wanted.len(),
                    "egress policies applied"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "applying egress policies failed; retrying next tick")
            }
        }
        let applied = self.policy.cgroups();
        let mut per_cgroup: HashMap<u64, (u64, Counts)> = HashMap::new();
        let mut denied: Vec<DeniedRow> = self
            .policy
            .denied()
            .into_iter()
            .map(|(k, d)| {
                let e = per_cgroup.entry(k.cgroup_id).or_default();
                e.0 += d.calls;
                e.1.bytes += d.dropped.bytes;
                e.1.packets += d.dropped.packets;
                DeniedRow {
                    cgroup_id: k.cgroup_id,
                    addr: k.ip().to_string(),
                    port: k.port,
                    proto: proto_name(k.proto).to_owned(),
                    calls: d.calls,
                    dropped: Counts::from(&d.dropped),
                }
            })
            .collect();
        denied.sort_by(|a, b| {
            (b.calls + b.dropped.packets)
                .cmp(&(a.calls + a.dropped.packets))
                .then(a.cgroup_id.cmp(&b.cgroup_id))
        });
        for r in &mut snap.cgroups {
            r.egress_policy = applied
                .get(&r.cgroup_id)
                .and_then(|id| self.names.get(id))
                .cloned();
            if let Some((calls, dropped)) = per_cgroup.get(&r.cgroup_id) {
                r.policy_denied_calls = *calls;
                r.policy_dropped = *dropped;
            }
        }
        snap.denied = denied;
        snap.interfaces = self.podtc.rows(&self.ifmaps);
    }
}
