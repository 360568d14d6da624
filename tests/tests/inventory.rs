//! Privileged inventory tests: real cgroup v2 directories in the kubelet
//! layouts (systemd and cgroupfs drivers; containerd, CRI-O and docker
//! names), a systemd-like unit and a standalone docker container, each
//! with a process that sends a few datagrams inside a test namespace. The
//! agent (standalone mode: no API server here) must name every one from its
//! path, keep a removed one with its last counts for the grace period and
//! then forget it.
#![forbid(unsafe_code)]

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin, top},
    cgroup::TestCgroup,
    cmd::{self, wait_until},
    netns::Netns,
    privileged,
    top::{CgroupRow, Top},
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const GRACE_S: u64 = 3;
const CONFIG: &str = r#"
[agent]
tick = "200ms"
[inventory]
mode = "standalone"
grace = "3s"
"#;
const DATAGRAMS: u64 = 5;

struct Case {
    rel: String,
    kind: &'static str,
    pod_uid: Option<&'static str>,
    container_id: Option<String>,
    runtime: Option<&'static str>,
    class: &'static str,
}

fn id(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn cases() -> Vec<Case> {
    let u = |s: &'static str| Some(s);
    let sd = |uid: &str| uid.replace('-', "_");
    let (u1, u2, u3) = (
        "11111111-2222-4333-8444-555555555501",
        "11111111-2222-4333-8444-555555555502",
        "11111111-2222-4333-8444-555555555503",
    );
    let (u4, u5) = (
        "11111111-2222-4333-8444-555555555504",
        "11111111-2222-4333-8444-555555555505",
    );
    let pod = |rel: String, uid: &'static str, cid: char, rt: &'static str| Case {
        rel,
        kind: "container",
        pod_uid: u(uid),
        container_id: Some(id(cid)),
        runtime: u(rt),
        class: "default",
    };
    vec![
        pod(
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                sd(u1),
                id('a')
            ),
            u1,
            'a',
            "containerd",
        ),
        pod(
            format!(
                "kubepods.slice/kubepods-pod{}.slice/crio-{}.scope",
                sd(u2),
                id('b')
            ),
            u2,
            'b',
            "crio",
        ),
        pod(
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-{}.scope",
                sd(u3),
                id('c')
            ),
            u3,
            'c',
            "docker",
        ),
        pod(
            format!("kubepods/burstable/pod{u4}/{}", id('d')),
            u4,
            'd',
            "unknown",
        ),
        pod(
            format!("kubepods/besteffort/pod{u5}/crio-{}", id('e')),
            u5,
            'e',
            "crio",
        ),
        Case {
            rel: "system.slice/tg-inventory.service".into(),
            kind: "unit",
            pod_uid: None,
            container_id: None,
            runtime: None,
            class: "service",
        },
        Case {
            rel: format!("docker/{}", id('f')),
            kind: "container",
            pod_uid: None,
            container_id: Some(id('f')),
            runtime: u("docker"),
            class: "container",
        },
    ]
}

/// Runs `tg-traffic udp-send` to the namespace's loopback from a process
/// that first joins `cgroup` (so its socket belongs there).
fn send_from(cgroup: &Path, ns: &Netns) {
    let script = r#"echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" "$3" udp-send --to 127.0.0.1:9 --count "$4" --size 10"#;
    let mut c = Command::new("sh");
    c.args(["-c", script, "sh"])
        .arg(cgroup)
        .arg(ns.name())
        .arg(TRAFFIC)
        .arg(DATAGRAMS.to_string());
    cmd::run_cmd(c, Duration::from_secs(30)).expect("udp-send in cgroup");
}

fn top_until(pins: &TestPinDir, done: impl Fn(&Top) -> bool) -> Top {
    let mut last = None;
    let _ = wait_until("agent snapshot", Duration::from_secs(30), || {
        match top(pins.path()) {
            Ok(t) => {
                let ok = done(&t);
                last = Some(t);
                ok
            }
            Err(_) => false,
        }
    });
    last.expect("tollgate top answered at least once")
}

fn ino(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p)
        .map(|m| m.ino())
        .expect("cgroup exists")
}

#[test]
fn kubelet_and_standalone_layouts_resolve_and_removed_ones_linger_for_grace() {
    privileged!();
    let base = TestCgroup::new("inventory").expect("test cgroup");
    let ns = Netns::new("tginv").expect("netns");
    let pins = TestPinDir::new().expect("pin dir");
    let agent = Agent::start(pins.path(), CONFIG).expect("agent starts");
    let cases = cases();
    let mut ids = Vec::new();
    for c in &cases {
        let dir = base.child(&c.rel).expect("layout");
        send_from(&dir, &ns);
        ids.push(ino(&dir));
    }
    let t = top_until(&pins, |t| {
        ids.iter().all(|id| {
            t.find_cgroup(*id)
                .is_some_and(|r| r.egress.internal.packets == DATAGRAMS && r.kind.is_some())
        })
    });
    for (c, id) in cases.iter().zip(&ids) {
        let r: CgroupRow = t.find_cgroup(*id).cloned().unwrap_or_default();
        let what = format!("{} -> {r:#?}\nagent log:\n{}", c.rel, agent.log());
        assert_eq!(r.egress.internal.packets, DATAGRAMS, "{what}");
        assert_eq!(r.kind.as_deref(), Some(c.kind), "{what}");
        assert_eq!(r.pod_uid.as_deref(), c.pod_uid, "{what}");
        assert_eq!(r.container_id, c.container_id, "{what}");
        assert_eq!(r.runtime.as_deref(), c.runtime, "{what}");
        assert_eq!(r.class.as_deref(), Some(c.class), "{what}");
        assert!(
            r.path.as_deref().is_some_and(|p| p.ends_with(&c.rel)),
            "{what}"
        );
        assert!(!r.gone, "{what}");
    }
    let unit = t.find_cgroup(ids[5]).cloned().unwrap_or_default();
    assert_eq!(unit.pod.as_deref(), Some("tg-inventory.service"));
    assert_eq!(unit.namespace.as_deref(), Some("system.slice"));

    // The human table names pods by uid/container and shows the class,
    // not the raw path.
    let out = Command::new(tollgate_bin())
        .args(["top", "--once", "--pin-dir"])
        .arg(pins.path())
        .output()
        .expect("tollgate top");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("pod 11111111/aaaaaaaaaaaa"), "{table}");
    assert!(table.contains("tg-inventory.service"), "{table}");
    assert!(table.contains("CLASS"), "{table}");

    // Remove the containerd container's cgroup: its last counts stay for
    // the grace period, marked gone, then the row (and map entry) goes.
    let gone_dir = base.path().join(&cases[0].rel);
    std::fs::remove_dir(&gone_dir).expect("rmdir container cgroup");
    let removed_at = Instant::now();
    let t = top_until(&pins, |t| t.find_cgroup(ids[0]).is_some_and(|r| r.gone));
    let r = t.find_cgroup(ids[0]).cloned().unwrap_or_default();
    assert!(r.gone, "{r:#?}");
    assert_eq!(r.egress.internal.packets, DATAGRAMS);
    assert_eq!(r.pod_uid.as_deref(), cases[0].pod_uid);
    let seen_gone = removed_at.elapsed();
    let t = top_until(&pins, |t| t.find_cgroup(ids[0]).is_none());
    let forgotten = removed_at.elapsed();
    assert!(t.find_cgroup(ids[0]).is_none(), "row not forgotten");
    eprintln!(
        "inventory: removed cgroup marked gone after {seen_gone:?}, forgotten after {forgotten:?} (grace {GRACE_S}s)"
    );
    assert!(forgotten >= Duration::from_secs(GRACE_S), "{forgotten:?}");
    assert!(
        forgotten < Duration::from_secs(GRACE_S + 3),
        "{forgotten:?}"
    );
    // The other cgroups are still there, with identity.
    assert!(t.find_cgroup(ids[1]).is_some_and(|r| r.kind.is_some()));
}

fn pod_json(
    ns: &str,
    name: &str,
    uid: &str,
    owner: &str,
    labels: serde_json::Value,
    container_id: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "resourceVersion": "50",
            "labels": labels,
            "ownerReferences": [{"apiVersion": "x/v1", "kind": owner, "name": "owner",
                "uid": "00000000-0000-4000-8000-000000000000", "controller": true}]
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "img"}]},
        "status": {
            "phase": "Running", "podIPs": [{"ip": "198.18.0.20"}],
            "containerStatuses": [{"name": "main", "containerID": container_id,
                "image": "img", "imageID": "img@sha256:00", "ready": true, "restartCount": 0}]
        }
    })
}

/// Kubernetes mode end to end: the agent watches a replay API server,
/// real cgroups in kubelet layouts hold the pods' processes, and `top`
/// reports namespace, pod, container and class, with the class decided by
/// namespace and owner, not by the pod's own label.
#[test]
fn kubernetes_mode_names_pods_and_keeps_a_deleted_pods_last_counts() {
    privileged!();
    let (u1, u2, u3) = (
        "22222222-2222-4333-8444-555555555501",
        "22222222-2222-4333-8444-555555555502",
        "22222222-2222-4333-8444-555555555503",
    );
    let (c1, c2, c3) = (id('1'), id('2'), id('3'));
    let train = pod_json(
        "ml",
        "train-0",
        u1,
        "PyTorchJob",
        // Asks to be a notebook; namespace "ml" does not allow it.
        serde_json::json!({"tollgate.io/class": "notebook"}),
        &format!("containerd://{c1}"),
    );
    let nb = pod_json(
        "lab",
        "nb-0",
        u2,
        "StatefulSet",
        serde_json::json!({"notebook-name": "nb"}),
        &format!("cri-o://{c2}"),
    );
    let web = pod_json(
        "web",
        "web-1",
        u3,
        "ReplicaSet",
        serde_json::json!({"app": "web"}),
        &format!("docker://{c3}"),
    );
    let pods = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "100"}, "items": [train, nb, web.clone()]});
    let nss = serde_json::json!({"apiVersion": "v1", "kind": "NamespaceList",
    "metadata": {"resourceVersion": "10"}, "items": [
        {"metadata": {"name": "ml", "labels": {}}},
        {"metadata": {"name": "lab", "annotations": {"tollgate.io/pod-classes": "notebook"}}},
        {"metadata": {"name": "web"}}
    ]});
    let api = tollgate_tests::kube_api::KubeApi::start(pods.to_string(), nss.to_string())
        .expect("replay API");
    let base = TestCgroup::new("inventory-k8s").expect("test cgroup");
    let ns = Netns::new("tginvk").expect("netns");
    let pins = TestPinDir::new().expect("pin dir");
    let config = r#"
[agent]
tick = "200ms"
[inventory]
mode = "kubernetes"
node_name = "node-1"
grace = "3s"
"#;
    let kubeconfig = api.kubeconfig().display().to_string();
    let agent = Agent::start_with_env(pins.path(), config, &[("KUBECONFIG", &kubeconfig)])
        .expect("agent starts");
    let sd = |u: &str| u.replace('-', "_");
    let layouts = [
        format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{c1}.scope",
            sd(u1)
        ),
        format!("kubepods/besteffort/pod{u2}/crio-{c2}"),
        format!(
            "kubepods.slice/kubepods-pod{}.slice/docker-{c3}.scope",
            sd(u3)
        ),
    ];
    let mut ids = Vec::new();
    for rel in &layouts {
        let dir = base.child(rel).expect("layout");
        send_from(&dir, &ns);
        ids.push(ino(&dir));
    }
    let t = top_until(&pins, |t| {
        ids.iter().all(|id| {
            t.find_cgroup(*id)
                .is_some_and(|r| r.pod.is_some() && r.egress.internal.packets == DATAGRAMS)
        })
    });
    let expect = [
        ("ml", "train-0", "containerd", "training"),
        ("lab", "nb-0", "crio", "notebook"),
        ("web", "web-1", "docker", "service"),
    ];
    for (id, (ns_, pod, rt, class)) in ids.iter().zip(expect) {
        let r = t.find_cgroup(*id).cloned().unwrap_or_default();
        let what = format!("{r:#?}\nagent log:\n{}", agent.log());
        assert_eq!(r.namespace.as_deref(), Some(ns_), "{what}");
        assert_eq!(r.pod.as_deref(), Some(pod), "{what}");
        assert_eq!(r.container.as_deref(), Some("main"), "{what}");
        assert_eq!(r.runtime.as_deref(), Some(rt), "{what}");
        assert_eq!(r.class.as_deref(), Some(class), "{what}");
    }
    let out = Command::new(tollgate_bin())
        .args(["top", "--once", "--pin-dir"])
        .arg(pins.path())
        .output()
        .expect("tollgate top");
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.contains("train-0/main"))
        .unwrap_or_else(|| panic!("no train-0 row:\n{table}"));
    assert!(
        line.starts_with("ml ") && line.contains("training"),
        "{table}"
    );

    // The web pod is deleted (watch event) and kubelet removes its cgroup:
    // its last counts stay, named, for the grace period.
    api.pod_event(&serde_json::json!({"type": "DELETED", "object": web}));
    std::fs::remove_dir(base.path().join(&layouts[2])).expect("rmdir");
    let t = top_until(&pins, |t| t.find_cgroup(ids[2]).is_some_and(|r| r.gone));
    let r = t.find_cgroup(ids[2]).cloned().unwrap_or_default();
    assert!(r.gone, "{r:#?}");
    assert_eq!(r.pod.as_deref(), Some("web-1"));
    assert_eq!(r.egress.internal.packets, DATAGRAMS);
    let t = top_until(&pins, |t| t.find_cgroup(ids[2]).is_none());
    assert!(t.find_cgroup(ids[2]).is_none(), "deleted pod not forgotten");

    let reqs = api.requests();
    let pod_reqs: Vec<&String> = reqs
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods"))
        .collect();
    assert!(!pod_reqs.is_empty(), "{reqs:#?}");
    for r in pod_reqs {
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{r}");
    }
}
