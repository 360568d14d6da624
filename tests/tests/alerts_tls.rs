//! Alerts to an Alertmanager behind TLS (a private CA made with openssl)
//! and HTTP basic auth (Debian's prometheus-alertmanager with a
//! `--web.config.file`, on loopback).
#![forbid(unsafe_code)]

use std::{path::Path, process::Command};

use tollgate_tests::{
    agent::{Agent, TestPinDir},
    alerting::{NODE, WAIT, config, state_dir, tg, wait_alert},
    cgroup::TestCgroup,
    cmd::wait_until,
    http::{self, Webhook},
    privileged,
    servers::{self, Alertmanager},
};

/// A CA, and a server certificate for 127.0.0.1 signed by it (openssl).
fn make_certs(dir: &Path) {
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=tollgate-test-ca 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext; \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null",
        d = dir.display()
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Alertmanager behind TLS (a private CA) and basic auth: the agent trusts
/// the CA from `alerts.ca_file` and authenticates; with a wrong password
/// the 401 is counted as rejected and logged, not retried forever.
#[test]
fn alerts_over_tls_with_basic_auth() {
    privileged!("prometheus-alertmanager", "openssl");
    let dir = state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let hook = Webhook::start().unwrap();
    // bcrypt of "test" (the example in Prometheus's web configuration docs).
    let web = format!(
        "tls_server_config:\n  cert_file: {d}/srv.pem\n  key_file: {d}/srv.key\nbasic_auth_users:\n  tollgate: $2b$12$hNf2lSsxfm0.i4a.1kVpSOVyBCfIB51VRjgBUyv6kdnyTlgWj81Ay\n",
        d = dir.display()
    );
    let am = Alertmanager::start_with_web_config(&hook.url(), Some(&web)).expect("alertmanager");
    assert!(am.url().starts_with("https://"));
    std::fs::write(dir.join("good"), "test\n").unwrap();
    std::fs::write(dir.join("bad"), "nope\n").unwrap();
    let pins = TestPinDir::new().expect("pin dir");
    let state = dir.join("state");
    let auth = |pw: &str| {
        format!(
            "{}ca_file = \"{d}/ca.pem\"\nbasic_auth_username = \"tollgate\"\nbasic_auth_password_file = \"{d}/{pw}\"\n",
            config(&state, &[am.url()]),
            d = dir.display()
        )
    };
    let mut agent = Agent::start_with_env(pins.path(), &auth("bad"), &[("NODE_NAME", NODE)])
        .expect("agent starts");
    let addr = servers::agent_metrics_addr(&agent).unwrap();
    let cg = TestCgroup::new("tls").expect("cgroup");
    let rel = cg.rel_path();
    tg(
        pins.path(),
        &state,
        &["quarantine", "--cgroup", &rel, "--reason", "tls test"],
    );
    let metric = |name: &str| {
        let m = http::get(&addr, "/metrics").unwrap_or_default();
        servers::sample(&m, &format!("{name}{{alertmanager=\"{}\"}}", am.url()))
    };
    wait_until("the 401 counted as rejected", WAIT, || {
        metric("tollgate_alert_rejected_total").is_some_and(|v| v >= 1.0)
    })
    .expect("rejected");
    assert_eq!(metric("tollgate_alert_deliveries_total"), Some(0.0));
    assert!(
        agent.log().contains("status=401"),
        "the rejection is logged with the status"
    );
    // The right password: the next re-send (3 s) gets through.
    agent.kill9();
    let _agent2 = Agent::start_with_env(pins.path(), &auth("good"), &[("NODE_NAME", NODE)])
        .expect("agent restarts");
    let (_, a) = wait_alert(&hook, &rel, "firing");
    assert_eq!(a["labels"]["alertname"], "TollgateQuarantined");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
