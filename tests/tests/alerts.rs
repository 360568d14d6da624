//! Alerts end to end with real Alertmanagers (Debian's
//! prometheus-alertmanager, run here on loopback): quarantining a test pod
//! makes the agent post a TollgateQuarantined alert to every configured
//! Alertmanager, which delivers it to a webhook run by the test; the
//! release resolves it. An Alertmanager outage (and an agent restart in the
//! middle of it) loses nothing: the on-disk queue and the retries deliver
//! once it is back.
#![forbid(unsafe_code)]

use std::time::Instant;

use tollgate_tests::{
    agent::{Agent, TestPinDir, top_until},
    alerting::{NODE, WAIT, config, send_from as send, state_dir, tg, wait_alert},
    cgroup::TestCgroup,
    cmd::wait_until,
    http::{self, Webhook},
    privileged,
    servers::{self, Alertmanager},
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");

fn send_from(cg: &TestCgroup) -> bool {
    send(cg, TRAFFIC)
}

#[test]
fn quarantine_alert_reaches_every_alertmanager_and_resolves() {
    privileged!("prometheus-alertmanager");
    let hooks = [Webhook::start().unwrap(), Webhook::start().unwrap()];
    let ams = [
        Alertmanager::start(&hooks[0].url()).expect("alertmanager 1"),
        Alertmanager::start(&hooks[1].url()).expect("alertmanager 2"),
    ];
    let pins = TestPinDir::new().expect("pin dir");
    let state = state_dir();
    let urls: Vec<String> = ams.iter().map(Alertmanager::url).collect();
    let agent = Agent::start_with_env(pins.path(), &config(&state, &urls), &[("NODE_NAME", NODE)])
        .expect("agent starts");
    let cg = TestCgroup::new("alerted").expect("cgroup");
    let rel = cg.rel_path();
    assert!(send_from(&cg));
    let top = top_until(pins.path(), WAIT, |t| {
        t.cgroups.iter().any(|c| c.cgroup_id == cg.id())
    });
    let row = top
        .cgroups
        .iter()
        .find(|c| c.cgroup_id == cg.id())
        .expect("the agent saw the cgroup");
    let pod = row.pod.clone().or(row.path.clone()).expect("a name");
    let class = row.class.clone().unwrap_or_else(|| "default".into());

    let t0 = Instant::now();
    tg(
        pins.path(),
        &state,
        &["quarantine", "--cgroup", &rel, "--reason", "alert test"],
    );
    assert!(!send_from(&cg), "quarantined: sendmsg refused");
    for (i, hook) in hooks.iter().enumerate() {
        let (at, a) = wait_alert(hook, &pod, "firing");
        eprintln!(
            "alertmanager {i}: firing alert at the webhook {:.0} ms after the quarantine command",
            at.duration_since(t0).as_secs_f64() * 1e3
        );
        let l = &a["labels"];
        assert_eq!(l["alertname"], "TollgateQuarantined", "{a:#}");
        assert_eq!(l["severity"], "high");
        assert_eq!(l["detector"], "response.quarantine");
        assert_eq!(l["node"], NODE);
        assert_eq!(l["class"], class.as_str());
        assert_eq!(l["pod"], pod.as_str());
        if let Some(ns) = &row.namespace {
            assert_eq!(l["namespace"], ns.as_str());
        }
        let ann = &a["annotations"];
        let summary = ann["summary"].as_str().unwrap();
        assert!(
            summary.contains("quarantined by cli:") && summary.contains("alert test"),
            "{summary}"
        );
        assert!(
            ann["evidence"]
                .as_str()
                .unwrap()
                .contains("connects_denied="),
            "{ann}"
        );
        assert_eq!(
            ann["runbook_url"],
            "https://tollgate.io/runbooks/TollgateQuarantined"
        );
        let dash = ann["dashboard_url"].as_str().unwrap();
        assert!(
            dash.starts_with("http://grafana.test:3000/d/tollgate-pod/")
                && dash.contains(&format!("var-pod={}", http::escape(&pod))),
            "{dash}"
        );
    }
    // Both Alertmanagers hold it as active.
    for am in &ams {
        let active = am.alerts().unwrap();
        assert!(
            active
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["labels"]["pod"] == pod.as_str() && a["status"]["state"] == "active"),
            "{active:#}"
        );
    }
    let addr = servers::agent_metrics_addr(&agent).unwrap();
    let m = http::get(&addr, "/metrics").unwrap();
    assert_eq!(
        servers::sample(&m, "tollgate_pod_quarantined{"),
        Some(1.0),
        "quarantine state per pod"
    );
    assert_eq!(
        servers::sample(
            &m,
            "tollgate_findings_total{detector=\"response.quarantine\",severity=\"high\"}"
        ),
        Some(1.0)
    );
    assert_eq!(servers::sample(&m, "tollgate_alerts_firing "), Some(1.0));
    for u in &urls {
        let d = servers::sample(
            &m,
            &format!("tollgate_alert_deliveries_total{{alertmanager=\"{u}\"}}"),
        );
        assert!(d.is_some_and(|d| d >= 1.0), "deliveries to {u}: {d:?}");
    }

    let t1 = Instant::now();
    tg(pins.path(), &state, &["release", "--cgroup", &rel]);
    for (i, hook) in hooks.iter().enumerate() {
        let (at, a) = wait_alert(hook, &pod, "resolved");
        eprintln!(
            "alertmanager {i}: resolved at the webhook {:.0} ms after the release command",
            at.duration_since(t1).as_secs_f64() * 1e3
        );
        assert_eq!(a["labels"]["alertname"], "TollgateQuarantined");
        assert_ne!(a["endsAt"], "0001-01-01T00:00:00Z");
    }
    let m = http::get(&addr, "/metrics").unwrap();
    assert_eq!(servers::sample(&m, "tollgate_pod_quarantined{"), None);
    assert_eq!(servers::sample(&m, "tollgate_alerts_firing "), Some(0.0));
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn alert_survives_alertmanager_outage_and_agent_restart() {
    privileged!("prometheus-alertmanager");
    let hook = Webhook::start().unwrap();
    let mut am = Alertmanager::start(&hook.url()).expect("alertmanager");
    am.stop();
    let pins = TestPinDir::new().expect("pin dir");
    let state = state_dir();
    let cfg = config(&state, &[am.url()]);
    let mut agent =
        Agent::start_with_env(pins.path(), &cfg, &[("NODE_NAME", NODE)]).expect("agent starts");
    let addr = servers::agent_metrics_addr(&agent).unwrap();
    let cg = TestCgroup::new("outage").expect("cgroup");
    let rel = cg.rel_path();
    let quarantined_at = Instant::now();
    tg(
        pins.path(),
        &state,
        &["quarantine", "--cgroup", &rel, "--reason", "outage test"],
    );

    // Alertmanager is down: deliveries fail, are counted, the alert waits
    // on disk, and the agent says so with the URL and the fix.
    let am_url = am.url();
    let metric = |name: &str| {
        let m = http::get(&addr, "/metrics").unwrap_or_default();
        servers::sample(&m, &format!("{name}{{alertmanager=\"{am_url}\"}}"))
    };
    wait_until("3 failed deliveries", WAIT, || {
        metric("tollgate_alert_delivery_failures_total").is_some_and(|f| f >= 3.0)
    })
    .expect("failures counted");
    assert_eq!(metric("tollgate_alert_queue_length"), Some(1.0));
    assert_eq!(metric("tollgate_alert_deliveries_total"), Some(0.0));
    let log = agent.log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot deliver alerts to Alertmanager"))
        .collect();
    // At most one warning per resend interval (3 s), however many retries.
    let failures = metric("tollgate_alert_delivery_failures_total").unwrap();
    let allowed = 1 + quarantined_at.elapsed().as_secs() as usize / 3;
    assert!(
        !warns.is_empty()
            && warns.len() <= allowed
            && (warns.len() as f64) < failures
            && warns[0].contains(&am.url())
            && warns[0].contains("check that Alertmanager runs"),
        "one warning per resend interval ({allowed} allowed, {failures} failures), with URL and fix: {warns:#?}"
    );
    let queue_files = || -> usize {
        std::fs::read_dir(state.join("alerts"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|d| d.file_name().to_string_lossy().starts_with("queue-"))
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
            .count()
    };
    assert_eq!(queue_files(), 1, "the alert waits on disk");

    let t = Instant::now();
    am.restart().expect("alertmanager back");
    let back = t.elapsed();
    let (at, a) = wait_alert(&hook, &rel, "firing");
    let failures = metric("tollgate_alert_delivery_failures_total").unwrap();
    eprintln!(
        "outage: {failures} failed POSTs; Alertmanager ready after {:.0} ms; firing alert at the webhook {:.0} ms after it was ready",
        back.as_secs_f64() * 1e3,
        at.duration_since(t + back).as_secs_f64() * 1e3
    );
    assert_eq!(a["labels"]["alertname"], "TollgateQuarantined");
    wait_until("queue drained", WAIT, || {
        metric("tollgate_alert_queue_length") == Some(0.0)
    })
    .expect("delivered alerts leave the queue");
    assert_eq!(queue_files(), 0);

    // Second outage, and the agent is killed while the resolution waits.
    am.stop();
    tg(pins.path(), &state, &["release", "--cgroup", &rel]);
    wait_until("resolution queued on disk", WAIT, || queue_files() == 1)
        .expect("the resolution is queued");
    agent.kill9();
    let agent2 =
        Agent::start_with_env(pins.path(), &cfg, &[("NODE_NAME", NODE)]).expect("agent restarts");
    assert!(
        agent2.log().contains("alerts queued by a previous run") || {
            let _ = wait_until("queue recovery logged", WAIT, || {
                agent2.log().contains("alerts queued by a previous run")
            });
            agent2.log().contains("alerts queued by a previous run")
        }
    );
    let t = Instant::now();
    am.restart().expect("alertmanager back again");
    let back = t.elapsed();
    let (at, a) = wait_alert(&hook, &rel, "resolved");
    eprintln!(
        "agent restarted during the outage: resolved alert at the webhook {:.0} ms after Alertmanager was ready",
        at.duration_since(t + back).as_secs_f64() * 1e3
    );
    assert_eq!(a["labels"]["alertname"], "TollgateQuarantined");
    wait_until("queue drained after restart", WAIT, || queue_files() == 0)
        .expect("delivered after the restart");
    drop(agent2);
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}
