//! Who each cgroup id is: cgroup id -> path -> pod/container or systemd
//! unit/container -> workload class.
//!
//! The cgroup tree is the source of truth for what exists (the collector
//! asks about the ids it finds in the kernel map every tick); Kubernetes
//! metadata, when there is an API, adds names and the class inputs. A
//! removed cgroup keeps its identity (and, in the collector, its last
//! counts) for a grace period, then is forgotten.

pub mod alive;
pub mod classes;
pub mod kube;
pub mod path;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::cgroupfs::CgroupIndex;
use classes::{Classifier, PodFacts};
use kube::{ClusterState, SharedCluster};
use path::PathIdentity;

/// Where identities come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kubernetes when a client configuration and a node name are found,
    /// standalone otherwise.
    #[default]
    Auto,
    /// Watch the API server; fail at start without one.
    Kubernetes,
    /// Cgroup paths only.
    Standalone,
}

/// `[inventory]`: naming cgroups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// "auto", "kubernetes" or "standalone".
    pub mode: Mode,
    /// Node whose pods are watched; empty = the NODE_NAME environment
    /// variable (set it from the downward API, spec.nodeName).
    pub node_name: String,
    /// How long a removed cgroup keeps its identity and last counts before
    /// it is forgotten (and its kernel counters deleted). 0s..1h.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            node_name: String::new(),
            grace: Duration::from_secs(60),
        }
    }
}

/// The name and class of one cgroup, as reported in snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// "pod", "container" (of a pod or standalone), "unit" or "cgroup".
    pub kind: String,
    /// Kubernetes namespace; the slice of a systemd unit; the docker or
    /// containerd group of a standalone container.
    pub namespace: Option<String>,
    /// Pod name; the systemd unit; the short id of a standalone container.
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    /// Container name (Kubernetes) or short id.
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub runtime: Option<String>,
    pub class: String,
}

/// One cgroup as the inventory knows it.
#[derive(Debug, Clone)]
struct Entry {
    path: Option<String>,
    parsed: PathIdentity,
    identity: Identity,
    gone_since: Option<Instant>,
}

/// What [`Inventory::get`] returns.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    pub path: Option<&'a str>,
    pub identity: &'a Identity,
    /// The cgroup was removed; its identity is kept for the grace period.
    pub gone: bool,
}

pub struct Inventory {
    mount: PathBuf,
    grace: Duration,
    classifier: Classifier,
    cluster: Option<SharedCluster>,
    entries: HashMap<u64, Entry>,
    /// Ids forgotten while the kernel still reports them (a reader that
    /// does not delete map entries): not rescanned for again.
    forgotten: HashSet<u64>,
    scans: u64,
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

impl Inventory {
    pub fn new(mount: PathBuf, grace: Duration, classifier: Classifier) -> Self {
        Self {
            mount,
            grace,
            classifier,
            cluster: None,
            entries: HashMap::new(),
            forgotten: HashSet::new(),
            scans: 0,
        }
    }

    /// Adds Kubernetes metadata from a pod watch.
    pub fn set_cluster(&mut self, cluster: SharedCluster) {
        self.cluster = Some(cluster);
    }

    /// Full scans of the cgroup tree so far.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    pub fn get(&self, id: u64) -> Option<Resolved<'_>> {
        self.entries.get(&id).map(|e| Resolved {
            path: e.path.as_deref(),
            identity: &e.identity,
            gone: e.gone_since.is_some(),
        })
    }

    /// Brings the inventory up to date for the cgroup ids the kernel
    /// reports: rescans the tree when one is new, notices removed ones,
    /// refreshes Kubernetes metadata. Returns the ids forgotten now (gone
    /// for longer than the grace period).
    pub fn refresh(&mut self, ids: &[u64], now: Instant) -> Vec<u64> {
        if !self.forgotten.is_empty() {
            let reported: HashSet<u64> = ids.iter().copied().collect();
            self.forgotten.retain(|id| reported.contains(id));
        }
        if ids.iter().any(|id| self.is_unknown(*id)) {
            self.scan(now);
            for id in ids {
                if self.is_unknown(*id) {
                    // Created and removed between two ticks: no path to
                    // learn any more. Counted, then forgotten like any
                    // removed cgroup.
                    let identity = self.path_identity(None, &PathIdentity::Other);
                    self.entries.insert(
                        *id,
                        Entry {
                            path: None,
                            parsed: PathIdentity::Other,
                            identity,
                            gone_since: Some(now),
                        },
                    );
                }
            }
        } else {
            // Cheap liveness check: a stat per reported cgroup, or one
            // listing of the parent for many siblings (see `alive`).
            let live = ids.iter().filter_map(|id| {
                let e = self.entries.get(id)?;
                e.gone_since.is_none().then_some(())?;
                Some((*id, e.path.as_deref()?))
            });
            for id in alive::gone(&self.mount, live) {
                if let Some(e) = self.entries.get_mut(&id) {
                    e.gone_since = Some(now);
                }
            }
        }
        if let Some(cluster) = self.cluster.clone() {
            let st = cluster.read().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                self.apply_cluster(*id, &st);
            }
        }
        let expired: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.gone_since
                    .is_some_and(|t| now.duration_since(t) >= self.grace)
            })
            .map(|(id, _)| *id)
            .collect();
        if !expired.is_empty() {
            let reported: HashSet<u64> = ids.iter().copied().collect();
            for id in &expired {
                if let Some(e) = self.entries.remove(id) {
                    tracing::debug!(cgroup_id = id, path = ?e.path, pod = ?e.identity.pod, "forgetting removed cgroup");
                }
                if reported.contains(id) {
                    self.forgotten.insert(*id);
                }
            }
            // After churn, give the memory of the dead entries back.
            if self.entries.capacity() > 2 * self.entries.len() + 64 {
                self.entries.shrink_to_fit();
            }
        }
        expired
    }

    fn is_unknown(&self, id: u64) -> bool {
        id != tollgate_ebpf::CGROUP_OVERFLOW
            && !self.entries.contains_key(&id)
            && !self.forgotten.contains(&id)
    }

    /// Walks the tree: adds new cgroups, marks missing ones as gone.
    fn scan(&mut self, now: Instant) {
        let index = CgroupIndex::scan(&self.mount);
        self.scans += 1;
        for (id, e) in self.entries.iter_mut() {
            if e.gone_since.is_none() && index.path(*id).is_none() {
                e.gone_since = Some(now);
            }
        }
        for (id, p) in index.iter() {
            if self.entries.contains_key(&id) {
                continue;
            }
            let parsed = path::parse(p);
            let identity = self.path_identity(Some(p), &parsed);
            self.entries.insert(
                id,
                Entry {
                    path: Some(p.to_owned()),
                    parsed,
                    identity,
                    gone_since: None,
                },
            );
        }
        if let Some(cluster) = self.cluster.clone() {
            let st = cluster.read().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<u64> = self.entries.keys().copied().collect();
            for id in ids {
                self.apply_cluster(id, &st);
            }
        }
    }

    /// Identity from the path alone.
    fn path_identity(&self, p: Option<&str>, parsed: &PathIdentity) -> Identity {
        let (class, _) = self.classifier.path_class(p.unwrap_or(""), parsed);
        match parsed {
            PathIdentity::Pod { uid, container, .. } => Identity {
                kind: if container.is_some() {
                    "container"
                } else {
                    "pod"
                }
                .into(),
                pod_uid: Some(uid.clone()),
                container: container.as_ref().map(|c| short(&c.id)),
                container_id: container.as_ref().map(|c| c.id.clone()),
                runtime: container.as_ref().map(|c| c.runtime.name().into()),
                class,
                ..Identity::default()
            },
            PathIdentity::Container { group, container } => Identity {
                kind: "container".into(),
                namespace: Some(group.clone()),
                pod: Some(short(&container.id)),
                container_id: Some(container.id.clone()),
                runtime: Some(container.runtime.name().into()),
                class,
                ..Identity::default()
            },
            PathIdentity::Unit { slice, unit } => Identity {
                kind: "unit".into(),
                namespace: Some(slice.clone()),
                pod: Some(unit.clone()),
                class,
                ..Identity::default()
            },
            PathIdentity::Other => Identity {
                kind: "cgroup".into(),
                class,
                ..Identity::default()
            },
        }
    }

    /// Names and classes a pod cgroup from the watch. A pod the API no
    /// longer knows (deleted, or the API is down) keeps what was learnt.
    fn apply_cluster(&mut self, id: u64, st: &ClusterState) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let PathIdentity::Pod { uid, container, .. } = &e.parsed else {
            return;
        };
        let Some(pod) = st.pods.get(uid) else {
            return;
        };
        // Until the namespace watch has it, no annotation allows pod-label
        // classes: the safe side.
        let empty = kube::NamespaceInfo::default();
        let ns = st.namespaces.get(&pod.namespace).unwrap_or(&empty);
        let owners: Vec<String> = pod.owners.iter().map(|o| o.kind.clone()).collect();
        let (class, source) = self.classifier.pod_class(&PodFacts {
            namespace_labels: &ns.labels,
            namespace_annotations: &ns.annotations,
            owner_kinds: &owners,
            pod_labels: &pod.labels,
        });
        let id_ = &mut e.identity;
        if id_.class != class || id_.pod.as_deref() != Some(pod.name.as_str()) {
            tracing::debug!(cgroup_id = id, namespace = %pod.namespace, pod = %pod.name, class = %class, source = ?source, "pod identified");
        }
        id_.namespace = Some(pod.namespace.clone());
        id_.pod = Some(pod.name.clone());
        id_.class = class;
        if let Some(c) = container.as_ref().and_then(|c| pod.container(&c.id)) {
            id_.container = Some(c.name.clone());
            id_.runtime = Some(c.runtime.name().into());
        }
    }
}

#[cfg(test)]
mod tests;
