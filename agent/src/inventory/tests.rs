//! The inventory over a directory tree in the kubelet layout (a plain
//! temporary directory: ids are inode numbers either way; the privileged
//! tests do the same on the real cgroup v2 tree).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use std::os::unix::fs::MetadataExt as _;

use super::{
    kube::{ContainerInfo, NamespaceInfo, Owner, PodInfo},
    *,
};
use crate::inventory::classes::ClassConfig;

const UID: &str = "5b3e8a2c-1f4d-4e6a-9b7c-0d2e4f6a8b1c";
const CID: &str = "8f1c2e0f4a1b49d3b7c2a51e9d0c6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e";

struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tg-inv-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn mkdir(&self, rel: &str) -> u64 {
        let p = self.0.join(rel.trim_start_matches('/'));
        fs::create_dir_all(&p).unwrap();
        fs::metadata(&p).unwrap().ino()
    }
    fn rmdir(&self, rel: &str) {
        fs::remove_dir(self.0.join(rel.trim_start_matches('/'))).unwrap();
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn inventory(tree: &Tree, grace: Duration) -> Inventory {
    Inventory::new(
        tree.path().to_owned(),
        grace,
        Classifier::new(&ClassConfig::default()).unwrap(),
    )
}

fn pod_dir() -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID.replace('-', "_")
    )
}

fn pod_info() -> PodInfo {
    PodInfo {
        uid: UID.into(),
        api_uid: UID.into(),
        namespace: "ml".into(),
        name: "train-0".into(),
        labels: BTreeMap::from([("tollgate.io/class".into(), "notebook".into())]),
        owners: vec![Owner {
            kind: "PyTorchJob".into(),
            name: "train".into(),
            controller: true,
        }],
        host_network: false,
        pod_ips: vec!["198.18.0.5".parse().unwrap()],
        containers: vec![ContainerInfo {
            id: CID.into(),
            runtime: path::Runtime::Containerd,
            name: "pytorch".into(),
        }],
    }
}

#[test]
fn new_cgroup_is_named_in_the_same_refresh() {
    let tree = Tree::new("new");
    let mut inv = inventory(&tree, Duration::from_secs(60));
    let t0 = Instant::now();
    assert!(inv.refresh(&[], t0).is_empty());
    let svc = tree.mkdir("/system.slice/nginx.service");
    let ctr = tree.mkdir(&format!("{}/cri-containerd-{CID}.scope", pod_dir()));
    inv.refresh(&[svc, ctr], t0);
    let s = inv.get(svc).unwrap();
    assert_eq!(s.identity.pod.as_deref(), Some("nginx.service"));
    assert_eq!(s.identity.namespace.as_deref(), Some("system.slice"));
    assert_eq!(s.identity.class, "service");
    let c = inv.get(ctr).unwrap().identity;
    assert_eq!(c.kind, "container");
    assert_eq!(c.pod_uid.as_deref(), Some(UID));
    assert_eq!(c.container_id.as_deref(), Some(CID));
    assert_eq!(c.runtime.as_deref(), Some("containerd"));
    // Known ids do not rescan.
    let scans = inv.scans();
    inv.refresh(&[svc, ctr], t0);
    assert_eq!(inv.scans(), scans);
}

#[test]
fn removed_cgroup_kept_for_grace_then_forgotten() {
    let tree = Tree::new("grace");
    let mut inv = inventory(&tree, Duration::from_secs(30));
    let id = tree.mkdir("/system.slice/job.service");
    let t0 = Instant::now();
    inv.refresh(&[id], t0);
    tree.rmdir("/system.slice/job.service");
    assert!(inv.refresh(&[id], t0 + Duration::from_secs(1)).is_empty());
    let r = inv.get(id).unwrap();
    assert!(r.gone);
    assert_eq!(r.identity.pod.as_deref(), Some("job.service"));
    assert!(inv.refresh(&[id], t0 + Duration::from_secs(20)).is_empty());
    assert_eq!(inv.refresh(&[id], t0 + Duration::from_secs(32)), vec![id]);
    assert!(inv.get(id).is_none());
    // Still reported by a kernel map nobody deletes from: not rescanned.
    let scans = inv.scans();
    inv.refresh(&[id], t0 + Duration::from_secs(33));
    assert_eq!(inv.scans(), scans);
}

#[test]
fn id_without_a_directory_is_forgotten_after_grace() {
    let tree = Tree::new("ghost");
    let mut inv = inventory(&tree, Duration::from_secs(5));
    let t0 = Instant::now();
    inv.refresh(&[424242], t0);
    assert!(inv.get(424242).unwrap().gone);
    assert_eq!(
        inv.refresh(&[424242], t0 + Duration::from_secs(6)),
        vec![424242]
    );
}

#[test]
fn kubernetes_metadata_names_and_classes_and_survives_api_loss() {
    let tree = Tree::new("kube");
    let mut inv = inventory(&tree, Duration::from_secs(60));
    let cluster = kube::SharedCluster::default();
    inv.set_cluster(cluster.clone());
    let pod = tree.mkdir(&pod_dir());
    let ctr = tree.mkdir(&format!("{}/cri-containerd-{CID}.scope", pod_dir()));
    let t0 = Instant::now();
    // Before the watch has the pod: uid only, class from the path rules.
    inv.refresh(&[pod, ctr], t0);
    assert_eq!(inv.get(ctr).unwrap().identity.pod, None);
    assert_eq!(inv.get(ctr).unwrap().identity.class, "default");
    {
        let mut st = cluster.write().unwrap();
        st.pods.insert(UID.into(), Arc::new(pod_info()));
        st.namespaces.insert("ml".into(), NamespaceInfo::default());
    }
    inv.refresh(&[pod, ctr], t0);
    let c = inv.get(ctr).unwrap().identity.clone();
    assert_eq!(c.namespace.as_deref(), Some("ml"));
    assert_eq!(c.pod.as_deref(), Some("train-0"));
    assert_eq!(c.container.as_deref(), Some("pytorch"));
    // The pod label asks for "notebook"; the namespace does not allow it.
    assert_eq!(c.class, "training");
    assert_eq!(inv.get(pod).unwrap().identity.kind, "pod");
    // The admin allows notebooks in the namespace: now the label counts.
    cluster.write().unwrap().namespaces.insert(
        "ml".into(),
        NamespaceInfo {
            annotations: BTreeMap::from([("tollgate.io/pod-classes".into(), "notebook".into())]),
            ..NamespaceInfo::default()
        },
    );
    inv.refresh(&[pod, ctr], t0);
    assert_eq!(inv.get(ctr).unwrap().identity.class, "notebook");
    // API gone (state emptied by a re-list that lost the pod, or down):
    // the cgroup keeps its last-known identity.
    cluster.write().unwrap().pods.clear();
    inv.refresh(&[pod, ctr], t0);
    assert_eq!(
        inv.get(ctr).unwrap().identity.pod.as_deref(),
        Some("train-0")
    );
}
