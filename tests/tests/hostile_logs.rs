//! Hostile names in the agent's logs: a cgroup ("pod") whose name holds a
//! quote, a newline, a carriage return and terminal escapes, quarantined
//! with a 100 KB reason full of the same. The agent's log must stay one
//! record per line (every line starts with a timestamp and a level) with
//! no raw control character, and the audit log one JSON object per line
//! that gives the reason back byte for byte. (Metrics and alerts escape
//! the same names: tests/tests/prometheus.rs and alerts.rs.)
#![forbid(unsafe_code)]

use std::{process::Command, time::Duration};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tg, top_until},
    alerting,
    cgroup::TestCgroup,
    cmd::wait_until,
    privileged,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);
/// The kernel refuses newlines in cgroup names (EINVAL); everything else
/// here it takes.
const HOSTILE: &str = "evil\"quote\rINFO forged\u{1b}[2J\u{1b}[31mred\u{7}";
/// The reason adds newlines (a forged log record) and its size.
const FORGED: &str = "\n2026-01-01T00:00:00Z  INFO tollgate: forged record\n";

/// One datagram from inside `cg`; the path goes as an argument, so the
/// newline in it is never seen by the shell's parser.
fn send_from(cg: &TestCgroup) -> bool {
    Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && exec "$2" udp-send --to 127.0.0.1:9 --count 1 --size 10"#,
            "sh",
        ])
        .arg(cg.path())
        .arg(TRAFFIC)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_record(line: &str) -> bool {
    let ts = line
        .get(..4)
        .is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit()))
        && line.get(4..5) == Some("-");
    ts && [" TRACE ", " DEBUG ", " INFO ", " WARN ", " ERROR "]
        .iter()
        .any(|l| line.contains(l))
}

#[test]
fn hostile_names_and_reasons_stay_one_escaped_record_per_line() {
    privileged!();
    let pins = TestPinDir::new().expect("pin dir");
    let state = alerting::state_dir();
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n",
        state.display()
    );
    let agent = Agent::start(pins.path(), &config).expect("agent starts");
    let cg = TestCgroup::new(HOSTILE).expect("a cgroup with a hostile name");
    assert!(send_from(&cg), "sends before the quarantine");
    top_until(pins.path(), WAIT, |t| t.find_cgroup(cg.id()).is_some());
    let reason = format!("{HOSTILE}{FORGED}{}", "x\n\u{1b}[1m".repeat(10_000));
    let rel = cg.rel_path();
    // The CLI logs the audit event itself: its stderr follows the same rules.
    let cli = Command::new(tollgate_tests::agent::tollgate_bin())
        .args([
            "quarantine",
            "--cgroup",
            &rel,
            "--reason",
            &reason,
            "--pin-dir",
        ])
        .arg(pins.path())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("tollgate quarantine runs");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli_log = String::from_utf8_lossy(&cli.stderr).into_owned();
    assert!(!send_from(&cg), "quarantined");
    let seen = |what: &str| {
        wait_until(&format!("the agent logged {what}"), WAIT, || {
            agent
                .log()
                .lines()
                .any(|l| l.contains(what) && l.contains("evil"))
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    };
    seen("state=Firing");
    tg(pins.path(), &state, &["release", "--cgroup", &rel]);
    assert!(send_from(&cg), "released");
    seen("state=Resolved");

    for (who, text) in [("agent", agent.log()), ("cli", cli_log)] {
        let bad: Vec<&str> = text.lines().filter(|l| !is_record(l)).collect();
        assert!(
            bad.is_empty(),
            "{who}: lines that are not records: {bad:#?}"
        );
        let controls: Vec<&str> = text
            .lines()
            .filter(|l| l.chars().any(|c| c.is_control()))
            .collect();
        assert!(
            controls.is_empty(),
            "{who}: raw control characters: {controls:#?}"
        );
    }
    let log = agent.log();
    let firing = log
        .lines()
        .find(|l| l.contains("state=Firing"))
        .expect("firing line");
    assert!(
        firing.contains("evil") && !firing.contains('\u{1b}'),
        "the hostile name is there, escaped: {firing}"
    );

    let audit = std::fs::read_to_string(state.join("audit.log")).expect("audit log");
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON per line ({e}): {l}"))
        })
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(actions, ["quarantine", "release"], "{audit}");
    assert_eq!(
        records[0]["reason"],
        reason.as_str(),
        "the reason round-trips"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}
