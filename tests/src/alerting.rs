//! Helpers for the alert tests (tests/tests/alerts*.rs): the agent's CLI,
//! an agent config with `[alerts]`, and waiting for what Alertmanager
//! delivered to a [`Webhook`].

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::{cgroup::TestCgroup, cmd::wait_until, http::Webhook};

/// How long the alert tests wait for anything.
pub const WAIT: Duration = Duration::from_secs(60);
/// NODE_NAME the alert tests give the agent.
pub const NODE: &str = "tg-alerts-node";

/// The CLI runner shared with the quarantine tests.
pub use crate::agent::tg;

/// Agent config: 200 ms ticks, standalone, alerts to `urls` (re-sent every
/// 3 s, backoff 100 ms..1 s), dashboard links to grafana.test.
pub fn config(state: &Path, urls: &[String]) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n[alerts]\nurls = [{}]\nresend_interval = \"3s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\ndashboard_base_url = \"http://grafana.test:3000\"\n",
        state.display(),
        urls.join(", ")
    )
}

/// One UDP datagram from inside the cgroup (so the agent sees it and
/// resolves its identity); Ok when it was sent.
pub fn send_from(cg: &TestCgroup, traffic: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {traffic} udp-send --to 127.0.0.1:9 --count 1 --size 10",
            cg.path().display()
        ))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Alerts (with their notification status) in the webhook's notifications
/// that are about `pod`.
pub fn alerts_for(hook: &Webhook, pod: &str) -> Vec<(Instant, serde_json::Value)> {
    let mut v = Vec::new();
    for r in hook.received() {
        for a in r.body["alerts"].as_array().into_iter().flatten() {
            if a["labels"]["pod"] == pod {
                v.push((r.at, a.clone()));
            }
        }
    }
    v
}

/// Waits for an alert about `pod` with `status` at the webhook; returns
/// when it arrived and the alert.
pub fn wait_alert(hook: &Webhook, pod: &str, status: &str) -> (Instant, serde_json::Value) {
    let mut found = None;
    let _ = wait_until(
        &format!("{status} alert for {pod} at the webhook"),
        WAIT,
        || {
            found = alerts_for(hook, pod)
                .into_iter()
                .find(|(_, a)| a["status"] == status);
            found.is_some()
        },
    );
    found.unwrap_or_else(|| {
        panic!(
            "no {status} alert for {pod}; webhook got {:#?}",
            hook.received()
        )
    })
}

pub fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tg-state-{}", crate::unique_suffix()))
}
