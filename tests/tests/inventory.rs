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
