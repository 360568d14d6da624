//! The detection commands of the real binary, unprivileged: `synth`
//! writes hours of windows, `replay` learns from them and writes the
//! baselines, `baseline export`/`import` move them between state
//! directories, and bad input is refused with an error naming it.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tollgate::{
    baseline::Baselines,
    detect::{DetectConfig, Detector, Finding},
};
use tollgate_tests::{
    agent::tollgate_bin,
    cmd::{Output, wait_timeout},
};

const LIMIT: Duration = Duration::from_secs(300);

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tollgate(args: &[&str], stdout: Option<&Path>) -> Output {
    let mut c = Command::new(tollgate_bin());
    c.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    match stdout {
        Some(p) => c.stdout(std::fs::File::create(p).expect("output file")),
        None => c.stdout(Stdio::piped()),
    };
    let child = c.spawn().expect("tollgate runs");
    wait_timeout(child, LIMIT, &format!("tollgate {}", args.join(" "))).expect("tollgate exits")
}

#[test]
fn synth_replay_export_import() {
    let dir =
        Scratch(std::env::temp_dir().join(format!("tollgate-detect-cli-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let (a, b) = (dir.0.join("node-a"), dir.0.join("node-b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let s = |p: &Path| p.display().to_string();
    let windows = dir.0.join("windows.jsonl");
    let findings = dir.0.join("findings.jsonl");
    let config = dir.0.join("config.toml");
    std::fs::write(&config, "[detect]\nlearning_duration = \"30m\"\n").unwrap();

    // 3 hours, 12 pods, a bulk upload from training-0 after 2 hours.
    let out = tollgate(
        &[
            "synth",
            "--duration",
            "3h",
            "--attack",
            "volume",
            "--attack-at",
            "2h",
            "--attack-for",
            "2m",
        ],
        Some(&windows),
    );
    assert!(out.status.success(), "{out:?}");
    let lines = std::fs::read_to_string(&windows).unwrap().lines().count();
    assert_eq!(lines, 1080 * 12);

    let out = tollgate(
        &[
            "replay",
            "--config",
            &s(&config),
            "--windows",
            &s(&windows),
            "--baselines",
            &s(&a),
        ],
        Some(&findings),
    );
    assert!(out.status.success(), "{out:?}");
    let found: Vec<Finding> = std::fs::read_to_string(&findings)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("finding JSON"))
        .collect();
    assert!(!found.is_empty(), "{out:?}");
    assert!(
        found
            .iter()
            .all(|f| f.subject.pod.as_deref() == Some("training-0")),
        "{found:#?}"
    );
    assert!(found.iter().any(|f| f.detector == Detector::ExfilVolume));
    let summary: serde_json::Value =
        serde_json::from_str(out.stderr.lines().last().unwrap()).expect("summary JSON");
    assert_eq!(summary["windows"], 1080 * 12);

    // Export from node A, import into node B.
    let export = dir.0.join("export.json");
    let out = tollgate(
        &["baseline", "export", "--state-dir", &s(&a), &s(&export)],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("exported 4 class baseline(s)"),
        "{out:?}"
    );
    let out = tollgate(
        &["baseline", "import", "--state-dir", &s(&b), &s(&export)],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("report JSON");
    assert_eq!(report["added"].as_array().unwrap().len(), 4);
    let cfg = DetectConfig::default();
    let (ba, bb) = (
        Baselines::load_dir(&a, &cfg).unwrap(),
        Baselines::load_dir(&b, &cfg).unwrap(),
    );
    assert_eq!(ba.state(), bb.state());

    // A corrupted export is refused, naming the file.
    let mut data = std::fs::read(&export).unwrap();
    let n = data.len();
    data[n - 2] ^= 0x01;
    std::fs::write(&export, data).unwrap();
    let out = tollgate(
        &["baseline", "import", "--state-dir", &s(&b), &s(&export)],
        None,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("corrupt") && out.stderr.contains("export.json"),
        "{out:?}"
    );

    // A bad [detect] key: exit 64, the key named.
    std::fs::write(&config, "[detect]\nwindw = \"1s\"\n").unwrap();
    let out = tollgate(
        &["replay", "--config", &s(&config), "--windows", &s(&windows)],
        None,
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(out.stderr.contains("windw"), "{out:?}");
}
