//! The README's main job, `tollgate demo`, end to end: four pods, the
//! exfiltrator and the stratum miner are detected and quarantined, the
//! benign pods keep running, and nothing the demo made is left behind.
#![forbid(unsafe_code)]

use std::{path::Path, process::Command};

use tollgate_tests::{agent::tollgate_bin, privileged};

#[test]
fn demo_catches_both_attackers_and_cleans_up() {
    privileged!();
    let out = Command::new(tollgate_bin())
        .args(["demo", "--learn", "20s", "--watch", "90s", "--json"])
        .output()
        .expect("tollgate demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary; stderr:\n{stderr}"));
    let pods = summary["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 4, "{summary}");
    for p in pods {
        let attacker = p["attacker"].as_bool().unwrap();
        let findings = p["findings"].as_object().unwrap();
        if attacker {
            assert!(!findings.is_empty(), "attacker not detected: {p}");
            assert!(
                p["quarantined_after_s"].is_number(),
                "attacker not quarantined: {p}"
            );
        } else {
            assert!(
                p["quarantined_after_s"].is_null(),
                "benign pod quarantined: {p}"
            );
        }
    }
    let miner = pods
        .iter()
        .find(|p| p["pod"] == "ds-team/notebook-bob")
        .unwrap();
    assert!(
        miner["findings"].get("mining.stratum").is_some(),
        "the miner is caught by its stratum handshake: {miner}"
    );
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(
        out.status.success(),
        "exit status {:?}; stderr:\n{stderr}",
        out.status
    );

    // Nothing left behind.
    assert!(
        !Path::new("/sys/fs/bpf/tollgate-demo").exists(),
        "demo pins left"
    );
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("tgdemo-"),
        "demo namespaces left"
    );
    let mount = tollgate_tests::cgroup::v2_mount().unwrap();
    assert!(
        !mount.join("tollgate-demo.slice").exists(),
        "demo cgroups left"
    );
}
