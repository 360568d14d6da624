//! Alert building, re-sending, resolution and the queue, without a
//! network: no delivery task is started, so what would be sent stays in
//! the on-disk queues where the tests read it.

use std::time::{Duration, SystemTime};

use super::*;
use crate::detect::{Detector, Evidence, Severity, Subject};

fn state_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "tg-alerts-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg() -> AlertsConfig {
    AlertsConfig {
        urls: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2/".into()],
        dashboard_base_url: "http://grafana:3000/".into(),
        resend_interval: Duration::from_secs(1),
        ..AlertsConfig::default()
    }
}

fn finding(pod: &str, state: FindingState) -> Finding {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    Finding {
        detector: Detector::ExfilVolume,
        severity: Severity::High,
        score: 12.5,
        subject: Subject {
            cgroup_id: 42,
            cgroup_path: Some("/kubepods/x".into()),
            namespace: Some("ml".into()),
            pod: Some(pod.into()),
            container: None,
            class: "training".into(),
        },
        summary: "sent 1.2 GB out".into(),
        evidence: vec![Evidence {
            name: "egress_external_bytes".into(),
            observed: 1.2e9,
            baseline: Some(3.0e7),
            unit: "bytes".into(),
        }],
        destinations: vec!["203.0.113.9:443/tcp".into()],
        window_start: t,
        window_end: t,
        state,
        started_at: t,
        ended_at: (state == FindingState::Resolved).then_some(t + Duration::from_secs(60)),
    }
}

fn queued(a: &Alerter, i: usize) -> Vec<Pending> {
    a.targets()[i]
        .queue
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .collect()
}

#[test]
fn labels_and_annotations() {
    let d = state_dir();
    let a = Alerter::open(&cfg(), &d, "node-1").unwrap();
    let al = a.alert(&finding("trainer-0", FindingState::Firing));
    let l: Vec<(&str, &str)> = al
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        l,
        [
            ("alertname", "TollgateExfiltration"),
            ("class", "training"),
            ("detector", "exfil.volume"),
            ("namespace", "ml"),
            ("node", "node-1"),
            ("pod", "trainer-0"),
            ("severity", "high"),
        ]
    );
    assert_eq!(
        al.annotations["evidence"],
        "egress_external_bytes=1200000000 bytes (baseline 30000000)"
    );
    assert_eq!(
        al.annotations["runbook_url"],
        "https://tollgate.io/runbooks/TollgateExfiltration"
    );
    assert_eq!(
        al.annotations["dashboard_url"],
        "http://grafana:3000/d/tollgate-pod/tollgate-pod?var-node=node-1&var-namespace=ml&var-pod=trainer-0&from=1799996400000&to=now"
    );
    assert_eq!(al.annotations["destinations"], "203.0.113.9:443/tcp");
    assert_eq!(al.starts_at, "2027-01-15T08:00:00.000Z");
    assert_eq!(al.ends_at, None);
    let json = serde_json::to_value(&al).unwrap();
    assert!(json.get("startsAt").is_some() && json.get("generatorURL").is_some());
    assert!(
        json.get("endsAt").is_none(),
        "firing alerts carry no endsAt"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn hostile_pod_names_stay_one_label_each() {
    let d = state_dir();
    let a = Alerter::open(&cfg(), &d, "node-1").unwrap();
    let hostile = format!("a\"b\\c\nd}}{{&x=1 {}", "é".repeat(400));
    let al = a.alert(&finding(&hostile, FindingState::Firing));
    let pod = &al.labels["pod"];
    assert!(
        pod.len() <= crate::metrics::MAX_LABEL_LEN,
        "cut: {}",
        pod.len()
    );
    assert!(pod.starts_with("a\"b\\c\nd}{&x=1 é"));
    // JSON round trip keeps it exactly; the URL escapes it.
    let back: PostableAlert = serde_json::from_str(&serde_json::to_string(&al).unwrap()).unwrap();
    assert_eq!(&back.labels["pod"], pod);
    let url = &al.annotations["dashboard_url"];
    assert!(
        url.contains("var-pod=a%22b%5Cc%0Ad%7D%7B%26x%3D1%20%C3%A9"),
        "{url}"
    );
    assert!(!url.contains(' ') && !url.contains('\n'));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn fire_update_resend_resolve_to_every_url() {
    let d = state_dir();
    let mut a = Alerter::open(&cfg(), &d, "node-1").unwrap();
    a.on_finding(&finding("p", FindingState::Firing));
    // Updates with new numbers do not send at once.
    let mut upd = finding("p", FindingState::Firing);
    upd.summary = "sent 2 GB out".into();
    a.on_finding(&upd);
    for i in 0..2 {
        let q = queued(&a, i);
        assert_eq!(q.len(), 1, "URL {i}");
        assert!(q[0].firing);
        assert_eq!(q[0].alert.annotations["summary"], "sent 1.2 GB out");
    }
    // The re-send carries the update; while the first is still queued
    // (Alertmanager away) it adds nothing.
    std::thread::sleep(Duration::from_millis(1100));
    a.tick();
    assert_eq!(queued(&a, 0).len(), 1, "a re-send does not pile up");
    {
        let t = &a.targets()[0];
        let mut q = t.queue.lock().unwrap();
        let seqs: Vec<u64> = q.peek(10).iter().map(|(s, _)| *s).collect();
        q.remove(&seqs).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1100));
    a.tick();
    let q = queued(&a, 0);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].alert.annotations["summary"], "sent 2 GB out");
    // Resolution: endsAt, same labels.
    a.on_finding(&finding("p", FindingState::Resolved));
    let q = queued(&a, 0);
    assert_eq!(q.len(), 2);
    assert!(!q[1].firing);
    assert_eq!(
        q[1].alert.ends_at.as_deref(),
        Some("2027-01-15T08:01:00.000Z")
    );
    assert_eq!(q[1].alert.labels, q[0].alert.labels);
    assert_eq!(
        queued(&a, 1).len(),
        2,
        "URL 1 (nothing delivered): fire, resolve"
    );
    assert_eq!(a.firing().count(), 0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn severity_change_resolves_the_old_label_set() {
    let d = state_dir();
    let mut a = Alerter::open(&cfg(), &d, "n").unwrap();
    a.on_finding(&finding("p", FindingState::Firing));
    let mut worse = finding("p", FindingState::Firing);
    worse.severity = Severity::Critical;
    a.on_finding(&worse);
    let q = queued(&a, 0);
    let states: Vec<(bool, &str)> = q
        .iter()
        .map(|p| (p.firing, p.alert.labels["severity"].as_str()))
        .collect();
    assert_eq!(
        states,
        [(true, "high"), (false, "high"), (true, "critical")]
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn firing_set_and_queue_survive_a_restart() {
    let d = state_dir();
    {
        let mut a = Alerter::open(&cfg(), &d, "n").unwrap();
        a.on_finding(&finding("p", FindingState::Firing));
        let mut low = finding("q", FindingState::Firing);
        low.subject.cgroup_id = 43;
        a.on_finding(&low);
    }
    let mut a = Alerter::open(&cfg(), &d, "n").unwrap();
    assert_eq!(a.firing().count(), 2);
    assert_eq!(
        queued(&a, 0).len(),
        2,
        "undelivered alerts are still queued"
    );
    // A restarted agent resolves what it remembers as firing.
    a.on_finding(&finding("p", FindingState::Resolved));
    assert_eq!(a.firing().count(), 1);
    let q = queued(&a, 1);
    assert_eq!(q.len(), 3);
    assert!(!q[2].firing);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn below_min_severity_is_not_sent() {
    let d = state_dir();
    let mut c = cfg();
    c.min_severity = Severity::Critical;
    let mut a = Alerter::open(&c, &d, "n").unwrap();
    a.on_finding(&finding("p", FindingState::Firing));
    a.on_finding(&finding("p", FindingState::Resolved));
    assert!(queued(&a, 0).is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn full_queue_drops_oldest_and_counts_in_metrics() {
    let d = state_dir();
    let mut c = cfg();
    c.queue_max = 2;
    let mut a = Alerter::open(&c, &d, "n").unwrap();
    for id in 0..5 {
        let mut f = finding("p", FindingState::Firing);
        f.subject.cgroup_id = id;
        f.subject.pod = Some(format!("p{id}"));
        a.on_finding(&f);
    }
    let pods: Vec<String> = queued(&a, 0)
        .iter()
        .map(|p| p.alert.labels["pod"].clone())
        .collect();
    assert_eq!(pods, ["p3", "p4"]);
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(a.collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("tollgate_alert_queue_dropped_total{alertmanager=\"http://127.0.0.1:1\"} 3"),
        "{text}"
    );
    assert!(text.contains("tollgate_alert_queue_length{alertmanager=\"http://127.0.0.1:1\"} 2"));
    assert!(text.contains("tollgate_alerts_firing 5"));
    std::fs::remove_dir_all(&d).unwrap();
}
