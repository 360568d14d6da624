//! Privileged control API tests, standalone mode (bearer token file):
//! refused requests (no token, wrong token, a rotated-away token, oversized
//! and malformed bodies) change nothing and leave the agent serving; the
//! token holder quarantines a streaming pod through `tollgate quarantine`
//! (the stream stops, measured at the receiving host; connects fail with
//! EPERM; another pod keeps streaming), lists and releases it; everything
//! lands in the audit log. TLS: control_tls.rs.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir},
    cmd::wait_until,
    control::{StateDir, audit, ok, tg},
    nft::{self, Peer},
    privileged,
    raw_http::request,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);

fn received(topo: &Topology, from: IpAddr) -> u64 {
    nft::read(&topo.internet().netns)
        .expect("nft")
        .ingress(Peer::addr(from))
        .bytes
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
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n",
        state.0.display()
    );
    let mut agent = Agent::start(pins.path(), &config).expect("agent starts");
    let url = agent.control_url().expect("control API URL");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let url_file = std::fs::read_to_string(state.0.join("control.url")).expect("control.url");
    assert_eq!(url_file.trim(), url);
    let token_file = state.0.join("control.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token file is private");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();

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
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{}",
            r.head
        );
        refused += 1;
    }
    std::fs::write(&token_file, "rotated-token-abcdefghijklmnop\n").unwrap();
    let r = request(
        &url,
        "POST",
        "/v1/quarantine",
        Some(&token),
        body.as_bytes(),
    );
    assert_eq!(
        r.status, 401,
        "the old token is refused after rotation: {}",
        r.raw
    );
    refused += 1;
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    // Bad bodies with the right token: 413, 400 with a message.
    let big = vec![b'x'; 100 * 1024];
    let r = request(&url, "POST", "/v1/quarantine", Some(&token), &big);
    assert_eq!(r.status, 413, "{}", r.head);
    for (bad, says) in [
        (&b"{\"target\": "[..], "invalid JSON"),
        (&b"[1,2]"[..], "invalid JSON"),
        (
            &b"{\"target\":\"x/y\",\"reason\":\"r\",\"extra\":1}"[..],
            "unknown field",
        ),
        (
            &b"{\"target\":\"../etc\",\"reason\":\"r\"}"[..],
            "namespace/pod",
        ),
        (
            &b"{\"target\":\"/x\",\"reason\":\" \"}"[..],
            "reason is required",
        ),
        (
            &b"{\"target\":\"/x\",\"reason\":\"r\",\"ttl\":\"soon\"}"[..],
            "ttl",
        ),
    ] {
        let r = request(&url, "POST", "/v1/quarantine", Some(&token), bad);
        assert_eq!(r.status, 400, "{}: {}", String::from_utf8_lossy(bad), r.raw);
        let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(says), "{msg}");
    }
    let r = request(
        &url,
        "POST",
        "/v1/quarantine",
        Some(&token),
        br#"{"target":"/no/such/cgroup","reason":"r"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.raw);
    let r = request(
        &url,
        "POST",
        "/v1/release",
        Some(&token),
        format!("{{\"target\":\"{rel}\"}}").as_bytes(),
    );
    assert_eq!(r.status, 404, "not quarantined yet: {}", r.raw);
    assert!(agent.is_running(), "agent survived the bad requests");
    assert!(list(&url, &token).is_empty(), "nothing was quarantined");
    let streaming = wait_until("pod A streams", WAIT, || received(&topo, va) > 0);
    assert!(streaming.is_ok(), "pod A streams before the quarantine");

    // The token holder quarantines pod A through the CLI.
    let t0 = Instant::now();
    let out = ok(&tg(
        &state.0,
        pins.path(),
        &["quarantine", &rel, "--reason", "api test", "--ttl", "1h"],
    ));
    let cmd_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rec: serde_json::Value = serde_json::from_str(&out).expect("record JSON");
    assert_eq!(rec["path"], rel.as_str());
    assert!(
        rec["by"].as_str().unwrap().starts_with("api:token:"),
        "{rec}"
    );
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
    let out = a
        .run(&[TRAFFIC, "connect", "--to", &to_a], WAIT)
        .expect("connect");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("Operation not permitted") || text.contains("os error 1"),
        "EPERM: {text}"
    );

    // list through the CLI (the API) and directly.
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&tg(&state.0, pins.path(), &["quarantine", "list"]))).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["reason"], "api test");
    assert_eq!(list(&url, &token).len(), 1);

    // Release through the CLI; connects work again.
    ok(&tg(&state.0, pins.path(), &["release", &rel]));
    let out = a
        .run(&[TRAFFIC, "connect", "--to", &to_a], WAIT)
        .expect("connect");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!text.contains("not permitted"), "released: {text}");
    assert!(list(&url, &token).is_empty());

    let lines = audit(&state.0);
    let denied: Vec<_> = lines.iter().filter(|l| l["action"] == "denied").collect();
    assert_eq!(denied.len(), refused, "{lines:#?}");
    assert!(denied.iter().all(|l| {
        l["status"] == 401
            && l["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with("127.0.0.1:"))
    }));
    let q: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "quarantine")
        .collect();
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
