//! Pod churn: 1,000 short-lived "pods" (cgroups that live for one burst of
//! traffic) come and go while the agent runs. Each is counted exactly
//! while it lives; after the inventory's grace period nothing of it
//! remains: no row, no per-pod series in /metrics, no kernel counter,
//! flow or storage entry. (Memory before and after churn is measured by
//! `cargo xtask bench scale --churn`, not asserted here.)
#![forbid(unsafe_code)]

use std::{
    collections::HashSet, os::unix::fs::MetadataExt, path::PathBuf, process::Command,
    time::Duration,
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, top, top_until},
    cgroup::TestCgroup,
    privileged,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(60);
const PODS: usize = 1000;
/// One datagram per pod to the loopback discard port: 32 payload bytes +
/// 8 UDP + 20 IPv4 = 60 bytes at L3.
const PAYLOAD: u64 = 32;
const L3: u64 = PAYLOAD + 28;

#[test]
fn churned_pods_leave_no_rows_series_or_kernel_entries() {
    privileged!();
    let parent = TestCgroup::new("churn").expect("parent cgroup");
    let dirs: Vec<PathBuf> = (0..PODS)
        .map(|i| parent.child(&format!("pod-{i:04}")).expect("pod cgroup"))
        .collect();
    let ids: Vec<u64> = dirs
        .iter()
        .map(|d| std::fs::metadata(d).expect("cgroup dir").ino())
        .collect();
    let list = std::env::temp_dir().join(format!(
        "tollgate-churn-{}.txt",
        tollgate_tests::unique_suffix()
    ));
    let text: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
    std::fs::write(&list, text).expect("cgroup list");

    let pins = TestPinDir::new().expect("pin dir");
    let mut agent = Agent::start(
        pins.path(),
        "[agent]\ntick = \"200ms\"\n[inventory]\ngrace = \"1s\"\n[metrics]\nmax_series = 100000\n",
    )
    .expect("agent starts");

    // Every pod lives for one datagram.
    let out = Command::new(TRAFFIC)
        .args(["hop", "--to", "127.0.0.1:9", "--size", &PAYLOAD.to_string()])
        .arg("--cgroups")
        .arg(&list)
        .output()
        .expect("tg-traffic hop runs");
    let _ = std::fs::remove_file(&list);
    assert!(
        out.status.success(),
        "hop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        PODS.to_string()
    );

    let counted = |t: &tollgate_tests::top::Top, id: u64| {
        let r = t.row(id);
        (
            r.egress.internal.bytes + r.egress.external.bytes,
            r.egress.internal.packets + r.egress.external.packets,
        )
    };
    let t = top_until(pins.path(), WAIT, |t| {
        ids.iter().all(|id| counted(t, *id) == (L3, 1))
    });
    let wrong: Vec<_> = ids
        .iter()
        .filter(|id| counted(&t, **id) != (L3, 1))
        .map(|id| (id, counted(&t, *id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {PODS} pods not counted as exactly one {L3}-byte packet: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    // Their series are exported (the label is the pod name the inventory
    // gives a plain cgroup, or its path).
    let labels: Vec<String> = ids
        .iter()
        .map(|id| {
            let r = t.row(*id);
            r.pod.or(r.path).expect("pod row is named")
        })
        .collect();
    let body = agent.http_get("/metrics").expect("GET /metrics");
    let exported = labels
        .iter()
        .filter(|l| body.contains(&format!("pod=\"{l}\"")))
        .count();
    assert_eq!(exported, PODS, "every live pod has series");

    // The pods end: their cgroups are removed.
    for d in &dirs {
        std::fs::remove_dir(d).unwrap_or_else(|e| panic!("rmdir {}: {e}", d.display()));
    }
    let gone: HashSet<u64> = ids.iter().copied().collect();
    let t = top_until(pins.path(), WAIT, |t| {
        !t.cgroups.iter().any(|r| gone.contains(&r.cgroup_id))
    });
    let left = t
        .cgroups
        .iter()
        .filter(|r| gone.contains(&r.cgroup_id))
        .count();
    assert_eq!(left, 0, "rows of removed pods after the grace period");
    let body = agent.http_get("/metrics").expect("GET /metrics");
    let stale: Vec<&String> = labels
        .iter()
        .filter(|l| body.contains(&format!("pod=\"{l}\"")))
        .collect();
    assert!(
        stale.is_empty(),
        "{} stale pods in /metrics, e.g. {:?}",
        stale.len(),
        stale.first()
    );
    // The deletions show in the next pass's counters.
    let deleted_flows =
        |t: &tollgate_tests::top::Top| t.counters.other["flows_deleted_by_agent"].as_u64();
    let t = top_until(pins.path(), WAIT, |t| {
        deleted_flows(t).is_some_and(|n| n >= PODS as u64)
    });
    let deleted = deleted_flows(&t).unwrap_or(0);
    assert!(
        deleted >= PODS as u64,
        "each removed pod's flow is deleted from the kernel: {deleted} deleted"
    );

    // Without the agent, `top` reads the pinned maps themselves: the
    // kernel holds no counter or flow of a removed pod.
    agent.kill9();
    let t = top(pins.path()).expect("top from pins");
    let in_kernel = t
        .cgroups
        .iter()
        .filter(|r| gone.contains(&r.cgroup_id))
        .count();
    assert_eq!(in_kernel, 0, "kernel entries of removed pods");
    drop(agent);
}
