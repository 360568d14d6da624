//! The short evaluation (`cargo xtask eval --short`) in the test suite:
//! every live scenario (benign training jobs reading storage, data prep,
//! a notebook with package-install bursts, a service; attacks: curl
//! upload, storage copy, slow drip, stratum miner, CPU miner behind TLS,
//! DNS tunnel with iodine) against the real agent with detection on.
//! Every attack must be detected by the detector meant for it and no
//! benign pod may alert; tg-eval exits 0 only then, and its table is
//! printed for the log. The replay evaluation (`--replay`) runs here too.
#![forbid(unsafe_code)]

use std::process::Command;

use tollgate_tests::privileged;

#[test]
fn short_evaluation_detects_every_attack_without_false_alerts() {
    privileged!("ip");
    let out = Command::new(env!("CARGO_BIN_EXE_tg-eval"))
        .args(["--short", "--detect-s", "30"])
        .output()
        .expect("tg-eval runs");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tg-eval failed: {:?}", out.status);
    assert!(text.contains("recall 1.00 (6 of 6 attacks)"), "{text}");
    assert!(
        text.contains("false alerts per benign pod-hour 0.0 (0 over 5 pods"),
        "{text}"
    );
    let row = |pod: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{pod} ")))
            .unwrap_or_else(|| panic!("no row for {pod}: {text}"))
            .to_owned()
    };
    for (pod, detector) in [
        ("upload", "exfil."),
        ("storcopy", "exfil.storage"),
        ("drip", "exfil.slow_drip"),
        ("stratum", "mining.stratum"),
        ("tlsminer", "mining.profile"),
        ("dnstun", "exfil.dns_tunnel"),
    ] {
        let line = row(pod);
        assert!(line.contains(" yes ") && line.contains(detector), "{line}");
    }
    for pod in ["train1", "train2", "prep1", "nb1", "svc1"] {
        let line = row(pod);
        assert!(line.contains(" benign ") && line.contains(" no "), "{line}");
    }
    // Stratum within 1 s of the first share (before it, usually: the
    // subscribe is matched in the kernel).
    let line = row("stratum");
    let Some(rest) = line.split("after start, ").nth(1) else {
        panic!("no first-share timing: {line}")
    };
    let secs: f64 = rest
        .split('s')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad timing: {line}"));
    assert!(
        rest.contains("before the first share") || secs <= 1.0,
        "{line}"
    );
}

/// The replay evaluation: six hours of synthetic windows per attack kind
/// (and one without), each attack named by its detector on the attacked
/// pod and nothing on any other pod. Needs no privileges.
#[test]
fn replay_evaluation_names_all_nine_attacks_without_false_alerts() {
    let out = Command::new(env!("CARGO_BIN_EXE_tg-eval"))
        .arg("--replay")
        .output()
        .expect("tg-eval runs");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "tg-eval --replay failed: {:?}",
        out.status
    );
    assert!(text.contains("recall 1.00 (9 of 9)"), "{text}");
    assert!(
        text.contains("false alerts per benign pod-hour 0.0000 (0 over"),
        "{text}"
    );
    let drip = text
        .lines()
        .find(|l| l.starts_with("slow-drip "))
        .unwrap_or_else(|| panic!("no slow-drip row: {text}"));
    // Caught by the drip detector alone (replay once said mining.profile).
    let cols: Vec<&str> = drip.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "slow-drip",
            "exfil.slow_drip",
            "yes",
            "exfil.slow_drip",
            "-"
        ]
    );
}
