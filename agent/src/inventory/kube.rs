//! Kubernetes mode: a watch of the pods on this node (field selector
//! `spec.nodeName`) and of namespaces, pruned on arrival to what Tollgate
//! needs. kube-runtime's watcher resumes a dropped watch from the last
//! resourceVersion and re-lists after 410 Gone; errors back off
//! exponentially. The last-known state stays in place while the API is
//! down: only a completed re-list replaces it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, utils::Backoff, watcher},
};

use super::path::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "Kubernetes client configuration: {0} (run in a pod with a service account, or set KUBECONFIG; or set inventory.mode = \"standalone\")"
    )]
    Config(String),
    #[error(
        "Kubernetes mode needs the node name: set NODE_NAME (downward API spec.nodeName) or inventory.node_name"
    )]
    NoNodeName,
}

/// An owner reference, pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub controller: bool,
}

/// A container of a pod: runtime id (from the status) and spec name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub runtime: Runtime,
    pub name: String,
}

/// Annotation of a static pod's mirror: the uid kubelet uses locally
/// (and in cgroup names), the hash of the manifest.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What Tollgate keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The uid in the pod's cgroup name: the API uid, or for a static pod
    /// the manifest hash from its mirror annotation.
    pub uid: String,
    /// The API object's uid.
    pub api_uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub owners: Vec<Owner>,
    pub host_network: bool,
    pub pod_ips: Vec<IpAddr>,
    pub containers: Vec<ContainerInfo>,
}

impl PodInfo {
    /// None for a pod without uid (the API always sets one).
    pub fn from_pod(p: &Pod) -> Option<Self> {
        let m = &p.metadata;
        let status = p.status.as_ref();
        let mut containers = Vec::new();
        if let Some(s) = status {
            let all = s
                .container_statuses
                .iter()
                .chain(s.init_container_statuses.iter())
                .chain(s.ephemeral_container_statuses.iter())
                .flatten();
            for c in all {
                // "containerd://<id>", "cri-o://<id>", "docker://<id>".
                if let Some((scheme, id)) =
                    c.container_id.as_deref().and_then(|i| i.split_once("://"))
                {
                    containers.push(ContainerInfo {
                        id: id.to_owned(),
                        runtime: Runtime::from_scheme(scheme),
                        name: c.name.clone(),
                    });
                }
            }
        }
        let api_uid = m.uid.clone()?;
        let mirror = m
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .filter(|h| !h.is_empty());
        Some(Self {
            uid: mirror.cloned().unwrap_or_else(|| api_uid.clone()),
            api_uid,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            owners: m
                .owner_references
                .iter()
                .flatten()
                .map(|o| Owner {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    controller: o.controller.unwrap_or(false),
                })
                .collect(),
            host_network: p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            pod_ips: status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.ip.parse().ok())
                .collect(),
            containers,
        })
    }

    pub fn container(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.id == id)
    }
}

/// What Tollgate keeps of a namespace: admins set both maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Last-known cluster state, shared by the watch tasks and the collector.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// By the uid in the pod's cgroup name ([`PodInfo::uid`]).
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub namespaces: HashMap<String, NamespaceInfo>,
    /// A complete pod list has been seen.
    pub pods_synced: bool,
    /// The last watch request succeeded.
    pub api_up: bool,
    /// Completed pod (re)lists: 1 after start, +1 per resync.
    pub pod_lists: u64,
    /// Watch errors seen (each one is retried with backoff).
    pub errors: u64,
    pub last_error: Option<String>,
}

pub type SharedCluster = Arc<RwLock<ClusterState>>;

/// Exponential backoff between failed watch requests, reset by success.
#[derive(Debug, Clone)]
pub struct ExpBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl ExpBackoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }
}

impl Default for ExpBackoff {
    /// kube-runtime's default range: 0.8 s doubling to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(800), Duration::from_secs(30))
    }
}

impl Iterator for ExpBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

impl Backoff for ExpBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A client from the environment: in-cluster service account or KUBECONFIG.
pub async fn infer_client() -> Result<Client, KubeError> {
    let cfg = kube::Config::infer()
        .await
        .map_err(|e| KubeError::Config(e.to_string()))?;
    Client::try_from(cfg).map_err(|e| KubeError::Config(e.to_string()))
}

fn lock(state: &SharedCluster) -> std::sync::RwLockWriteGuard<'_, ClusterState> {
    // A panic elsewhere cannot leave the maps half-updated in a way that
    // matters more than losing them; keep going.
    state.write().unwrap_or_else(|e| e.into_inner())
}

/// Starts both watches; they run until the runtime stops.
pub fn spawn_watches(client: Client, node: String, state: SharedCluster, backoff: ExpBackoff) {
    tokio::spawn(watch_pods(
        client.clone(),
        node,
        state.clone(),
        backoff.clone(),
    ));
    tokio::spawn(watch_namespaces(client, state, backoff));
}

/// Watches the pods of `node` into `state` (runs forever).
pub async fn watch_pods(client: Client, node: String, state: SharedCluster, backoff: ExpBackoff) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).backoff(backoff).boxed();
    // Pods of a re-list, swapped in at InitDone so a partial list never
    // drops pods.
    let mut relist: HashMap<String, Arc<PodInfo>> = HashMap::new();
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                let mut st = lock(&state);
                st.api_up = false;
                st.errors += 1;
                st.last_error = Some(e.to_string());
                tracing::warn!(error = %e, pods = st.pods.len(), "pod watch failed; keeping last-known pods, retrying with backoff");
                continue;
            }
        };
        let mut st = lock(&state);
        st.api_up = true;
        match ev {
            watcher::Event::Init => relist.clear(),
            watcher::Event::InitApply(p) => {
                if let Some(info) = PodInfo::from_pod(&p) {
                    relist.insert(info.uid.clone(), Arc::new(info));
                }
            }
            watcher::Event::InitDone => {
                let before = st.pods.len();
                st.pods = std::mem::take(&mut relist);
                st.pods_synced = true;
                st.pod_lists += 1;
                tracing::info!(node = %node, pods = st.pods.len(), before, lists = st.pod_lists, "pod list synced");
            }
            watcher::Event::Apply(p) => {
                if let Some(info) = PodInfo::from_pod(&p) {
                    st.pods.insert(info.uid.clone(), Arc::new(info));
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(info) = PodInfo::from_pod(&p) {
                    st.pods.remove(&info.uid);
                }
            }
        }
    }
}

/// Watches namespaces (labels and annotations) into `state`.
pub async fn watch_namespaces(client: Client, state: SharedCluster, backoff: ExpBackoff) {
    let api: Api<Namespace> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default())
        .backoff(backoff)
        .boxed();
    let mut relist = HashMap::new();
    let info = |n: &Namespace| {
        (
            n.metadata.name.clone().unwrap_or_default(),
            NamespaceInfo {
                labels: n.metadata.labels.clone().unwrap_or_default(),
                annotations: n.metadata.annotations.clone().unwrap_or_default(),
            },
        )
    };
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "namespace watch failed; keeping last-known namespaces");
                continue;
            }
        };
        let mut st = lock(&state);
        match ev {
            watcher::Event::Init => relist.clear(),
            watcher::Event::InitApply(n) => {
                let (k, v) = info(&n);
                relist.insert(k, v);
            }
            watcher::Event::InitDone => st.namespaces = std::mem::take(&mut relist),
            watcher::Event::Apply(n) => {
                let (k, v) = info(&n);
                st.namespaces.insert(k, v);
            }
            watcher::Event::Delete(n) => {
                st.namespaces.remove(&info(&n).0);
            }
        }
    }
}

#[cfg(test)]
mod tests;
