//! Privileged control API tests, standalone mode (bearer token file):
//! refused requests (no token, wrong token, a rotated-away token, oversized
//! and malformed bodies) change nothing and leave the agent serving; the
//! token holder quarantines a streaming pod through `tollgate quarantine`
//! (the stream stops, measured at the receiving host; connects fail with
//! EPERM; another pod keeps streaming), lists and releases it; everything
//! lands in the audit log. With TLS configured, HTTPS works with the
//! test's CA (our CLI and curl) and plain HTTP gets no HTTP answer.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin},
    cgroup::TestCgroup,
    cmd::wait_until,
    http::request,
    nft::{self, Peer},
    privileged,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);

/// Removes the state directory even when the test fails.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("tg-ctl-{}", tollgate_tests::unique_suffix())))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tollgate <args> --state-dir S [--pin-dir P]`.
fn tg(state: &Path, pins: &Path, args: &[&str]) -> Output {
    Command::new(tollgate_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--pin-dir")
        .arg(pins)
        .output()
        .expect("tollgate runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "tollgate failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn received(topo: &Topology, from: IpAddr) -> u64 {
    nft::read(&topo.internet().netns)
        .expect("nft")
        .ingress(Peer::addr(from))
        .bytes
}

fn audit(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn list(url: &str, token: &str) -> Vec<serde_json::Value> {
    let r = request(url, "GET", "/v1/quarantines", Some(token), b"");
    assert_eq!(r.status, 200, "{}", r.raw);
    r.json().as_array().cloned().expect("a JSON array")
}

#[test]
fn token_auth_bad_requests_and_quarantine_through_the_api() {
    privileged!("nft");
    let topo = Topology::builder().pods(2).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let state = StateDir::new();
    let config = format!("[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n", state.0.display());
    let mut agent = Agent::start(pins.path(), &config).expect("agent starts");
    let url = agent.control_url().expect("control API URL");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let url_file = std::fs::read_to_string(state.0.join("control.url")).expect("control.url");
    assert_eq!(url_file.trim(), url);
    let token_file = state.0.join("control.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).expect("token file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token file is private");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();

    let (a, b) = (topo.pod(0), topo.pod(1));
    let (va, vb) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    nft::install(&topo.internet().netns, &[Peer::addr(va), Peer::addr(vb)]).expect("nft");
    let net = IpAddr::V4(topo.internet().v4);
    let (to_a, to_b) = (
        SocketAddr::new(net, 9600).to_string(),
        SocketAddr::new(net, 9601).to_string(),
    );
    let mut sinks = [&to_a, &to_b].map(|to| {
        Sink::start(
            topo.internet()
                .command(&[TRAFFIC, "tcp-sink", "--listen", to, "--once"]),
        )
        .unwrap()
    });
    let mut streams = [(a, &to_a), (b, &to_b)].map(|(p, to)| {
        p.command(&[TRAFFIC, "tcp-stream", "--to", to, "--seconds", "8"])
            .spawn()
            .unwrap()
    });
    let rel = a.cgroup.rel_path();
    let body = serde_json::json!({"target": rel, "reason": "api test"}).to_string();

    // Refused: no token, a wrong one, a rotated-away one.
    let mut refused = 0;
    for t in [None, Some("not-the-token-0123456789"), Some("")] {
        let r = request(&url, "POST", "/v1/quarantine", t, body.as_bytes());
        assert_eq!(r.status, 401, "{t:?}: {}", r.raw);
        assert!(r.head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{}", r.head);
        refused += 1;
    }
    std::fs::write(&token_file, "rotated-token-abcdefghijklmnop\n").unwrap();
    let r = request(&url, "POST", "/v1/quarantine", Some(&token), body.as_bytes());
    assert_eq!(r.status, 401, "the old token is refused after rotation: {}", r.raw);
    refused += 1;
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    // Bad bodies with the right token: 413, 400 with a message.
    let big = vec![b'x'; 100 * 1024];
    let r = request(&url, "POST", "/v1/quarantine", Some(&token), &big);
    assert_eq!(r.status, 413, "{}", r.head);
    for (bad, says) in [
        (&b"{\"target\": "[..], "invalid JSON"),
        (&b"[1,2]"[..], "invalid JSON"),
        (&b"{\"target\":\"x/y\",\"reason\":\"r\",\"extra\":1}"[..], "unknown field"),
        (&b"{\"target\":\"../etc\",\"reason\":\"r\"}"[..], "namespace/pod"),
        (&b"{\"target\":\"/x\",\"reason\":\" \"}"[..], "reason is required"),
        (&b"{\"target\":\"/x\",\"reason\":\"r\",\"ttl\":\"soon\"}"[..], "ttl"),
    ] {
        let r = request(&url, "POST", "/v1/quarantine", Some(&token), bad);
        assert_eq!(r.status, 400, "{}: {}", String::from_utf8_lossy(bad), r.raw);
        let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(says), "{msg}");
    }
    let r = request(&url, "POST", "/v1/quarantine", Some(&token), br#"{"target":"/no/such/cgroup","reason":"r"}"#);
    assert_eq!(r.status, 404, "{}", r.raw);
    let r = request(&url, "POST", "/v1/release", Some(&token), format!("{{\"target\":\"{rel}\"}}").as_bytes());
    assert_eq!(r.status, 404, "not quarantined yet: {}", r.raw);
    assert!(agent.is_running(), "agent survived the bad requests");
    assert!(list(&url, &token).is_empty(), "nothing was quarantined");
    let streaming = wait_until("pod A streams", WAIT, || received(&topo, va) > 0);
    assert!(streaming.is_ok(), "pod A streams before the quarantine");

    // The token holder quarantines pod A through the CLI.
    let t0 = Instant::now();
    let out = ok(&tg(&state.0, pins.path(), &["quarantine", &rel, "--reason", "api test", "--ttl", "1h"]));
    let cmd_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rec: serde_json::Value = serde_json::from_str(&out).expect("record JSON");
    assert_eq!(rec["path"], rel.as_str());
    assert!(rec["by"].as_str().unwrap().starts_with("api:token:"), "{rec}");
    assert!(rec["expires_unix"].as_u64().unwrap() >= rec["since_unix"].as_u64().unwrap() + 3600);
    let at_cut = received(&topo, va);
    std::thread::sleep(Duration::from_millis(300));
    let after_300ms = received(&topo, va);
    let b_before = received(&topo, vb);
    std::thread::sleep(Duration::from_millis(700));
    let after_1s = received(&topo, va);
    eprintln!(
        "quarantine through the API took {cmd_ms:.1} ms; bytes from A after: {} (first 300 ms), {} (next 700 ms)",
        after_300ms - at_cut,
        after_1s - after_300ms
    );
    assert_eq!(after_1s, after_300ms, "pod A's stream stopped");
    assert!(received(&topo, vb) > b_before, "pod B keeps streaming");
    let out = a.run(&[TRAFFIC, "connect", "--to", &to_a], WAIT).expect("connect");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("Operation not permitted") || text.contains("os error 1"), "EPERM: {text}");

    // list through the CLI (the API) and directly.
    let listed: serde_json::Value = serde_json::from_str(&ok(&tg(&state.0, pins.path(), &["quarantine", "list"]))).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["reason"], "api test");
    assert_eq!(list(&url, &token).len(), 1);

    // Release through the CLI; connects work again.
    ok(&tg(&state.0, pins.path(), &["release", &rel]));
    let out = a.run(&[TRAFFIC, "connect", "--to", &to_a], WAIT).expect("connect");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!text.contains("not permitted"), "released: {text}");
    assert!(list(&url, &token).is_empty());

    let lines = audit(&state.0);
    let denied: Vec<_> = lines.iter().filter(|l| l["action"] == "denied").collect();
    assert_eq!(denied.len(), refused, "{lines:#?}");
    assert!(denied.iter().all(|l| l["status"] == 401 && l["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:"))));
    let q: Vec<_> = lines.iter().filter(|l| l["action"] == "quarantine").collect();
    assert_eq!(q.len(), 1, "{lines:#?}");
    assert!(q[0]["by"].as_str().unwrap().starts_with("api:token:"));
    assert_eq!(q[0]["reason"], "api test");
    assert_eq!(lines.iter().filter(|l| l["action"] == "release").count(), 1);

    for s in &mut streams {
        let _ = s.kill();
        let _ = s.wait();
    }
    for s in &mut sinks {
        let _ = s.finish(Duration::from_secs(1));
    }
}

/// CA and a server certificate for 127.0.0.1 made with the openssl CLI.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs (apt openssl)");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tollgate test CA"]);
    run(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
    // Another CA, which did not sign the server's certificate.
    run(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=other CA"]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn tls_serves_https_with_the_test_ca_and_refuses_plain_http() {
    privileged!();
    let pins = TestPinDir::new().expect("pin dir");
    let state = StateDir::new();
    std::fs::create_dir_all(&state.0).unwrap();
    let (ca, cert, key) = make_certs(&state.0);
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[control]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        state.0.display(),
        cert.display(),
        key.display()
    );
    let mut agent = Agent::start(pins.path(), &config).expect("agent starts");
    let url = agent.control_url().expect("control API URL");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token = std::fs::read_to_string(state.0.join("control.token")).unwrap().trim().to_owned();
    let ca_s = ca.display().to_string();

    // Plain HTTP to the TLS port: no HTTP answer at all.
    let r = request(&url, "GET", "/v1/quarantines", Some(&token), b"");
    assert_eq!(r.status, 0, "plain HTTP must not be served: {:?}", r.raw);
    assert!(!r.raw.contains("HTTP/1.1"), "{:?}", r.raw);

    // curl, an independent client, with the CA.
    let o = Command::new("curl")
        .args(["-sS", "--cacert", &ca_s, "-H", &format!("Authorization: Bearer {token}"), &format!("{url}/v1/quarantines")])
        .output()
        .expect("curl runs");
    assert!(o.status.success(), "curl: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let o = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", &ca_s, &format!("{url}/v1/quarantines")])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "401", "no token over TLS");

    // Our CLI over HTTPS: a cgroup-only pod is quarantined and released.
    let cg = TestCgroup::new("ctltls").expect("cgroup");
    let send = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {TRAFFIC} udp-send --to 127.0.0.1:9 --count 1 --size 10",
                cg.path().display()
            ))
            .output()
            .expect("send runs")
    };
    assert!(send().status.success(), "sends before");
    let rel = cg.rel_path();
    let o = tg(&state.0, pins.path(), &["quarantine", &rel, "--reason", "tls test"]);
    assert!(!o.status.success(), "https without a CA fails");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ca-cert"), "{}", String::from_utf8_lossy(&o.stderr));
    let other = state.0.join("other.pem").display().to_string();
    let o = tg(&state.0, pins.path(), &["quarantine", &rel, "--reason", "tls test", "--ca-cert", &other]);
    assert!(!o.status.success(), "a CA that did not sign the certificate is refused");
    assert!(list_cli(&state.0, pins.path(), &ca_s).is_empty(), "nothing quarantined by the failed attempts");
    ok(&tg(&state.0, pins.path(), &["quarantine", &rel, "--reason", "tls test", "--ca-cert", &ca_s]));
    let out = send();
    assert!(!out.status.success(), "sendmsg refused while quarantined");
    assert_eq!(list_cli(&state.0, pins.path(), &ca_s).len(), 1);
    ok(&tg(&state.0, pins.path(), &["release", &rel, "--ca-cert", &ca_s]));
    assert!(send().status.success(), "sends after release");
    assert!(agent.is_running());
}

fn list_cli(state: &Path, pins: &Path, ca: &str) -> Vec<serde_json::Value> {
    let out = ok(&tg(state, pins, &["quarantine", "list", "--ca-cert", ca]));
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| panic!("list: {out}"))
}
