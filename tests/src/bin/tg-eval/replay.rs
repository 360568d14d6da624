//! `tg-eval --replay`: long-horizon behaviour from recorded windows.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use tollgate::detect::Finding;
use tollgate_tests::agent::tollgate_bin;

/// Long-horizon replay: one 6-hour synthetic recording (4 classes x 3
/// pods, 10 s windows) per attack kind, plus one without attacks, through
/// `tollgate replay`. The attack goes to pod `<class>-0` of its class.
pub fn run() -> Result<bool, String> {
    const HOURS: f64 = 6.0;
    const PODS: f64 = 12.0;
    let bin = tollgate_bin();
    let dir = std::env::temp_dir().join(format!("tollgate-eval-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("config.toml");
    std::fs::write(&config, "[detect]\nwindow = \"10s\"\n").map_err(|e| e.to_string())?;
    // (synth attack, its class, the detector that should name it)
    let kinds = [
        ("none", "", ""),
        ("volume", "training", "exfil.volume"),
        ("new-destination", "training", "exfil.new_destination"),
        ("slow-drip", "training", "exfil.slow_drip"),
        ("storage-copy", "notebook", "exfil.storage"),
        ("read-then-send", "training", "exfil.storage"),
        ("dns-tunnel", "notebook", "exfil.dns_tunnel"),
        ("stratum", "service", "mining.stratum"),
        ("cpu-miner", "service", "mining.profile"),
        ("pool-port", "service", "mining.pool_port"),
    ];
    println!(
        "{:<16} {:<22} {:<9} {:<44} false alerts (other pods)",
        "recording", "expected detector", "detected", "findings on the attacked pod"
    );
    let (mut detected, mut attacks, mut false_alerts, mut true_alerts) = (0, 0, 0, 0);
    for (kind, class, want) in kinds {
        let file: PathBuf = dir.join(format!("{kind}.jsonl"));
        let mut synth = Command::new(&bin);
        synth.args(["synth", "--duration", "6h", "--window", "10s"]);
        if kind != "none" {
            synth.args(["--attack", kind]);
        }
        if kind == "slow-drip" {
            // A drip is hours long by nature: 8 KB/s from 70 min on, the
            // recording agent/src/detect/tests.rs pins (the default 10 min
            // attack adds only 4.8 MB, which no drip detector should flag).
            synth.args(["--attack-at", "70m", "--attack-for", "290m"]);
        }
        let out = synth.output().map_err(|e| format!("tollgate synth: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tollgate synth --attack {kind}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(&file, &out.stdout).map_err(|e| e.to_string())?;
        let out = Command::new(&bin)
            .arg("replay")
            .arg("--config")
            .arg(&config)
            .arg("--windows")
            .arg(&file)
            .output()
            .map_err(|e| format!("tollgate replay: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tollgate replay {kind}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Distinct (detector, pod) pairs that fired.
        let mut fired: BTreeMap<(String, String), ()> = BTreeMap::new();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(f) = serde_json::from_str::<Finding>(l) {
                let pod = f.subject.pod.clone().unwrap_or_default();
                fired.insert((f.detector.as_str().to_owned(), pod), ());
            }
        }
        let target = format!("{class}-0");
        let on_target: Vec<&str> = fired
            .keys()
            .filter(|(_, p)| *p == target)
            .map(|(d, _)| d.as_str())
            .collect();
        let others: Vec<String> = fired
            .keys()
            .filter(|(_, p)| *p != target)
            .map(|(d, p)| format!("{d}@{p}"))
            .collect();
        let hit = !want.is_empty() && on_target.contains(&want);
        if !want.is_empty() {
            attacks += 1;
            detected += usize::from(hit);
        }
        true_alerts += on_target.len();
        false_alerts += others.len();
        println!(
            "{kind:<16} {:<22} {:<9} {:<44} {}",
            if want.is_empty() { "-" } else { want },
            if want.is_empty() {
                "-"
            } else if hit {
                "yes"
            } else {
                "no"
            },
            if on_target.is_empty() {
                "-".into()
            } else {
                on_target.join(", ")
            },
            if others.is_empty() {
                "-".into()
            } else {
                others.join(", ")
            }
        );
    }
    let all = true_alerts + false_alerts;
    println!(
        "\nreplay: recall {:.2} ({detected} of {attacks}), precision {:.2} ({true_alerts} of {all} detector-pod pairs on attacked pods), false alerts per benign pod-hour {:.4} ({false_alerts} over {} recordings x {PODS} pods x {HOURS} h)",
        detected as f64 / attacks.max(1) as f64,
        if all == 0 {
            1.0
        } else {
            true_alerts as f64 / all as f64
        },
        false_alerts as f64 / (kinds.len() as f64 * PODS * HOURS),
        kinds.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(detected == attacks && false_alerts == 0)
}
