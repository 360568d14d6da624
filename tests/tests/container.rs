//! The DaemonSet's container, simulated without a container runtime: the
//! agent runs in its own cgroup, cgroup namespace, mount namespace and PID
//! namespace (no hostPID), with the mounts deploy/daemonset.yaml gives it:
//! a runtime-style namespaced cgroup2 mount with the host's cgroup tree
//! bind-mounted read-only over it, the host's /proc read-only at a second
//! path (storage.mountinfo points there), its own /proc, and only CAP_BPF,
//! CAP_NET_ADMIN and CAP_PERFMON. It must attach at the host's cgroup root,
//! name a pod by its host cgroup path and count its traffic exactly.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin, top_until},
    caps,
    cgroup::{TestCgroup, v2_mount},
    nft::{self, Count, Peer},
    privileged,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);

/// Runs inside the new namespaces (mount propagation private, so nothing
/// reaches the host's mount table), in the order a runtime and the kubelet
/// build the container: host views first, then the namespaced cgroup mount,
/// then the hostPath bind over it, then the container's own /proc. The
/// host's cgroup2 mount is detached from this namespace first because the
/// kernel refuses to mount a file system over its own mount point (the
/// runtime mounts on the container's /sys/fs/cgroup, which is not one).
const INNER: &str = r#"set -eu
mkdir -p "$TG_T/hostproc" "$TG_T/hostcg"
mount --bind /proc "$TG_T/hostproc"
mount -o remount,bind,ro "$TG_T/hostproc"
mount --bind "$TG_CG" "$TG_T/hostcg"
umount -l "$TG_CG"
mount -t cgroup2 none "$TG_CG"
mount --bind "$TG_T/hostcg" "$TG_CG"
mount -o remount,bind,ro "$TG_CG"
mount -t proc proc /proc
exec capsh --drop="$TG_DROP" --no-new-privs --shell="$TG_BIN" -- "$@"
"#;

/// Moves itself into the container's cgroup, then unshares: the cgroup
/// namespace's root is that cgroup, as for a container. `--kill-child`: a
/// SIGKILL of the harness's child (unshare) takes the namespace down.
const OUTER: &str = r#"echo $$ > "$TG_AGENT_CG/cgroup.procs" && exec unshare --mount --propagation private --cgroup --pid --fork --kill-child sh "$TG_T/inner.sh" "$@""#;

#[test]
fn agent_in_a_daemonset_like_container_counts_host_pods() {
    privileged!("nft", "capsh", "unshare", "mount");
    const K: u64 = 20;
    const S: u64 = 400;
    let topo = Topology::builder().pods(1).build().expect("topology");
    let container = TestCgroup::new("agent-container").expect("container cgroup");
    let pins = TestPinDir::new().expect("pin dir");
    let t = std::env::temp_dir().join(format!("tg-ctr-{}", tollgate_tests::unique_suffix()));
    std::fs::create_dir_all(t.join("state")).expect("temp dir");
    std::fs::write(t.join("inner.sh"), INNER).expect("inner.sh");
    let cg = v2_mount().expect("cgroup v2 mount");
    let keep = caps::agent_caps();
    // capsh_wrapper gives ["capsh", "--drop=..", ...]; the
    // drop list is what the inner script needs.
    let w = caps::capsh_wrapper(&keep, &tollgate_bin()).expect("capsh");
    let drop_list = w[1].strip_prefix("--drop=").expect("drop list").to_string();
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n[storage]\nmountinfo = \"{}\"\n",
        t.join("state").display(),
        t.join("hostproc/1/mountinfo").display()
    );
    let bin = tollgate_bin();
    let env = [
        ("TG_T", t.to_str().expect("UTF-8 temp path")),
        ("TG_CG", cg.to_str().expect("UTF-8 cgroup mount")),
        ("TG_DROP", drop_list.as_str()),
        ("TG_BIN", bin.to_str().expect("UTF-8 binary path")),
        (
            "TG_AGENT_CG",
            container.path().to_str().expect("UTF-8 cgroup path"),
        ),
    ];
    let wrapper: Vec<String> = ["sh", "-c", OUTER, "sh"].map(String::from).into();
    let agent = Agent::start_wrapped(pins.path(), &config, &env, &wrapper)
        .expect("agent starts in the container layout");
    let procs = std::fs::read_to_string(container.path().join("cgroup.procs")).expect("procs");
    assert!(
        !procs.trim().is_empty(),
        "the agent runs inside its container cgroup"
    );

    // A pod elsewhere in the host's tree: named by its host path, counted
    // exactly.
    let pod = topo.pod(0);
    let net = IpAddr::V4(topo.internet().v4);
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft");
    let to = SocketAddr::new(net, 9400).to_string();
    let mut s = Sink::start(topo.internet().command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &to,
        "--count",
        &K.to_string(),
        "--timeout-s",
        "20",
    ]))
    .expect("sink");
    pod.run(
        &[
            TRAFFIC,
            "udp-send",
            "--to",
            &to,
            "--count",
            &K.to_string(),
            "--size",
            &S.to_string(),
        ],
        WAIT,
    )
    .expect("udp-send");
    assert_eq!(s.finish(WAIT).expect("sink").last_number(), Some(K));
    let reference = nft::read(&pod.netns).expect("nft").egress(Peer::addr(net));
    assert_eq!(
        reference,
        Count {
            packets: K,
            bytes: K * (S + 28)
        }
    );
    let id = pod.cgroup.id();
    let top = top_until(pins.path(), WAIT, |t| {
        let r = t.row(id);
        r.egress.external.packets == K && r.path.is_some()
    });
    let r = top.row(id);
    assert_eq!(
        (r.egress.external.packets, r.egress.external.bytes),
        (reference.packets, reference.bytes),
        "exact, = nft"
    );
    assert_eq!(
        r.path.as_deref(),
        Some(pod.cgroup.rel_path().as_str()),
        "the pod is named by its path in the host's tree"
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("cgroup_root={}/", cg.display())),
        "attached at the cgroup mount path (the host's tree on top): {log}"
    );
    assert_eq!(
        top.storage.status, "active",
        "storage accounting runs with the host's mount table from the read-only /proc bind"
    );
    drop(agent);
    drop(container);
    let _ = std::fs::remove_dir_all(&t);
}
