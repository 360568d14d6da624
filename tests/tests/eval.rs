//! The short evaluation (`cargo xtask eval --short`) in the test suite:
//! benign training and service pods and two attack pods (bulk upload,
//! stratum miner) against the real agent with detection on. Every attack
//! must be detected and no benign pod may alert; tg-eval exits 0 only
//! then, and its table is printed for the log.
#![forbid(unsafe_code)]

use std::process::Command;

use tollgate_tests::privileged;

#[test]
fn short_evaluation_detects_every_attack_without_false_alerts() {
    privileged!("ip");
    let out = Command::new(env!("CARGO_BIN_EXE_tg-eval"))
        .args(["--short", "--detect-s", "20"])
        .output()
        .expect("tg-eval runs");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tg-eval failed: {:?}", out.status);
    assert!(text.contains("recall 1.00"), "{text}");
    for (pod, detector) in [("upload", "exfil."), ("stratum", "mining.stratum")] {
        let line = text
            .lines()
            .find(|l| l.starts_with(pod))
            .unwrap_or_else(|| panic!("no row for {pod}: {text}"));
        assert!(line.contains(" yes ") && line.contains(detector), "{line}");
    }
}
