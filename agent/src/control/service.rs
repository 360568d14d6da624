//! The one quarantine path of the running agent: the control API, the
//! auto-quarantine responder and TTL expiry all go through
//! [`QuarantineService`], which resolves a target to a cgroup, updates the
//! kernel map, state file and audit log ([`Quarantine`]), and tells
//! Kubernetes (pod label and Event) without waiting for it.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::{
    cgroupfs::CgroupIndex,
    inventory::{
        kube::SharedCluster,
        path::{self, PathIdentity},
    },
    quarantine::{Quarantine, QuarantineError, Record, Request},
    respond::kube::{PodEvents, PodRef},
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "target {0:?}: give namespace/pod (e.g. ml/train-0) or a cgroup path relative to the cgroup v2 mount, starting with /"
    )]
    BadTarget(String),
    #[error(
        "pod {0} is not on this node (no such pod in the inventory, or its cgroup is gone): check the name, or run the command on the pod's node"
    )]
    NoPod(String),
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
}

/// What to quarantine: a pod by name or a cgroup by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Relative to the cgroup v2 mount, with a leading '/'.
    Cgroup(String),
    Pod {
        namespace: String,
        name: String,
    },
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, ServiceError> {
        let s = s.trim();
        if s.starts_with('/') {
            if s.split('/').any(|c| c == "..") {
                return Err(ServiceError::BadTarget(s.into()));
            }
            return Ok(Target::Cgroup(s.into()));
        }
        // Kubernetes names: DNS labels/subdomains (systemd slices and units
        // add '@' and '\' escapes on plain hosts).
        let ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.len() <= 253
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._@:\\".contains(c))
        };
        match s.split_once('/') {
            Some((ns, name)) if ok(ns) && ok(name) => Ok(Target::Pod {
                namespace: ns.into(),
                name: name.into(),
            }),
            _ => Err(ServiceError::BadTarget(s.into())),
        }
    }

    /// The namespace an authorization check is scoped to.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Target::Pod { namespace, .. } => Some(namespace),
            Target::Cgroup(_) => None,
        }
    }

    pub fn pod_name(&self) -> Option<&str> {
        match self {
            Target::Pod { name, .. } => Some(name),
            Target::Cgroup(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cgroup(p) => f.write_str(p),
            Target::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
        }
    }
}

pub struct QuarantineService {
    q: Mutex<Quarantine>,
    mount: PathBuf,
    cluster: Option<SharedCluster>,
    events: Option<PodEvents>,
}

pub type SharedService = Arc<QuarantineService>;

impl QuarantineService {
    pub fn new(
        q: Quarantine,
        mount: PathBuf,
        cluster: Option<SharedCluster>,
        events: Option<PodEvents>,
    ) -> Self {
        Self {
            q: Mutex::new(q),
            mount,
            cluster,
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Quarantine> {
        // Quarantine keeps no invariant a panic could break halfway that
        // the state file and kernel map would not show: keep serving.
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod's cgroup: from the Kubernetes inventory (name -> uid ->
    /// the kubelet's pod cgroup), else a standalone identity (slice/unit,
    /// or group/container id as `tollgate top` shows them).
    fn resolve_pod(&self, namespace: &str, name: &str) -> Result<(String, PodRef), ServiceError> {
        let want = format!("{namespace}/{name}");
        let pod = self.cluster.as_ref().and_then(|c| {
            let st = c.read().unwrap_or_else(|e| e.into_inner());
            st.pods
                .values()
                .find(|p| p.namespace == namespace && p.name == name)
                .cloned()
        });
        let index = CgroupIndex::scan(&self.mount);
        let mut best: Option<&str> = None;
        for (_, p) in index.iter() {
            let hit = match (path::parse(p), &pod) {
                (
                    PathIdentity::Pod {
                        uid,
                        container: None,
                        ..
                    },
                    Some(info),
                ) => uid == info.uid,
                (PathIdentity::Unit { slice, unit }, None) => slice == namespace && unit == name,
                (PathIdentity::Container { group, container }, None) => {
                    group == namespace && container.id.starts_with(name) && name.len() >= 12
                }
                _ => false,
            };
            // The shallowest match covers everything below it.
            if hit && best.is_none_or(|b| p.len() < b.len()) {
                best = Some(p);
            }
        }
        let path = best.ok_or_else(|| ServiceError::NoPod(want))?;
        Ok((
            path.to_owned(),
            PodRef {
                namespace: namespace.into(),
                name: name.into(),
                uid: pod.map(|p| p.api_uid.clone()),
            },
        ))
    }

    pub fn quarantine(&self, target: &Target, mut req: Request) -> Result<Record, ServiceError> {
        let (path, pod) = match target {
            Target::Cgroup(p) => (p.clone(), None),
            Target::Pod { namespace, name } => {
                let (p, r) = self.resolve_pod(namespace, name)?;
                (p, Some(r))
            }
        };
        req.pod = pod.as_ref().map(PodRef::key);
        let rec = self.lock().quarantine_with(&path, &req)?;
        if let (Some(ev), Some(pod)) = (&self.events, pod) {
            ev.quarantined(pod, &req.reason, &req.by);
        }
        Ok(rec)
    }

    pub fn release(&self, target: &Target, by: &str) -> Result<Record, ServiceError> {
        let path = match target {
            Target::Cgroup(p) => p.clone(),
            Target::Pod { namespace, name } => {
                // By the record first: the pod may be gone already.
                match self.lock().find_pod(&target.to_string()) {
                    Some(r) => r.path,
                    None => self.resolve_pod(namespace, name)?.0,
                }
            }
        };
        let rec = self.lock().release(&path, by)?;
        self.released(&rec, "released", by);
        Ok(rec)
    }

    fn released(&self, rec: &Record, how: &str, by: &str) {
        let (Some(ev), Some(key)) = (&self.events, &rec.pod) else {
            return;
        };
        if let Some((namespace, name)) = key.split_once('/') {
            let uid = self.cluster.as_ref().and_then(|c| {
                let st = c.read().unwrap_or_else(|e| e.into_inner());
                st.pods
                    .values()
                    .find(|p| p.namespace == namespace && p.name == name)
                    .map(|p| p.api_uid.clone())
            });
            ev.released(
                PodRef {
                    namespace: namespace.into(),
                    name: name.into(),
                    uid,
                },
                how,
                by,
            );
        }
    }

    /// Runs `f` on the quarantine state under its lock (the enforcer
    /// keeps pod interfaces in step with it every tick).
    pub fn with<R>(&self, f: impl FnOnce(&mut Quarantine) -> R) -> R {
        f(&mut self.lock())
    }

    pub fn list(&self) -> Vec<Record> {
        let mut q = self.lock();
        q.reload();
        q.records().to_vec()
    }

    /// TTL expiry (every tick); expired pods lose their label too.
    pub fn expire(&self) {
        let due = self.lock().expire();
        for r in &due {
            self.released(r, "TTL expired", "agent");
        }
    }

    /// Appends an event (a refused request) to the audit log.
    pub fn audit(&self, event: serde_json::Value) {
        self.lock().audit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("ml/train-0").unwrap(),
            Target::Pod {
                namespace: "ml".into(),
                name: "train-0".into()
            }
        );
        assert_eq!(
            Target::parse("/kubepods.slice/x").unwrap(),
            Target::Cgroup("/kubepods.slice/x".into())
        );
        assert_eq!(
            Target::parse("system.slice/nginx.service").unwrap(),
            Target::Pod {
                namespace: "system.slice".into(),
                name: "nginx.service".into()
            }
        );
        for bad in [
            "",
            "ml",
            "ml/",
            "/a/../b",
            "../etc",
            "./x",
            "a/b/c",
            "ml/tr ain",
            "ml/x?y",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(ServiceError::BadTarget(_))),
                "{bad}"
            );
        }
        let t = Target::parse("ml/train-0").unwrap();
        assert_eq!(t.namespace(), Some("ml"));
        assert_eq!(t.to_string(), "ml/train-0");
    }
}
