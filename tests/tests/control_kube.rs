//! Privileged control API test in Kubernetes mode, against the replay API
//! server (tests/src/kube_api.rs: a local HTTP server answering with
//! recorded API shapes, not a real API server). Kubernetes tokens go
//! through TokenReview and SubjectAccessReview on quarantines.tollgate.io
//! in the pod's namespace: unknown and expired tokens get 401, a user
//! without the permission 403, and nothing is quarantined; an allowed
//! user quarantines `ml/train-0` by name (its real cgroup, in the kubelet
//! layout, stops sending), which labels the pod
//! tollgate.io/quarantined=true by JSON merge patch and posts a
//! TollgateQuarantined Event; release removes the label and posts
//! TollgateReleased. Answers are cached: one review per token.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin},
    cgroup::TestCgroup,
    cmd::wait_until,
    kube_api::{Call, KubeApi},
    netns::Netns,
    privileged,
    raw_http::request,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const UID: &str = "33333333-2222-4333-8444-555555555501";
const SYS_UID: &str = "33333333-2222-4333-8444-555555555502";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod_json(ns: &str, name: &str, uid: &str, cid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "50",
            "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "img"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "198.18.0.30"}],
            "containerStatuses": [{"name": "main", "containerID": format!("containerd://{cid}"),
                "image": "img", "imageID": "img@sha256:00", "ready": true, "restartCount": 0}]}
    })
}

/// Sends one datagram from `cgroup` inside `ns`; true when it went out.
fn send_from(cgroup: &Path, ns: &Netns) -> bool {
    let script = r#"echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" "$3" udp-send --to 127.0.0.1:9 --count 1 --size 10"#;
    Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(cgroup)
        .arg(ns.name())
        .arg(TRAFFIC)
        .output()
        .expect("udp-send runs")
        .status
        .success()
}

fn tg(state: &Path, args: &[&str]) -> Output {
    Command::new(tollgate_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("tollgate runs")
}

fn calls_to(api: &KubeApi, method: &str, path: &str) -> Vec<Call> {
    api.calls()
        .into_iter()
        .filter(|c| c.method == method && c.target.split('?').next() == Some(path))
        .collect()
}

/// Waits (bounded) for `n` calls of `method path`; returns them.
fn wait_calls(api: &KubeApi, method: &str, path: &str, n: usize) -> Vec<Call> {
    let _ = wait_until(&format!("{method} {path}"), Duration::from_secs(30), || {
        calls_to(api, method, path).len() >= n
    });
    calls_to(api, method, path)
}

#[test]
fn kubernetes_tokens_reviewed_pod_labelled_and_evented() {
    privileged!();
    let cid = "c".repeat(64);
    let pods = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "100"},
        "items": [pod_json("ml", "train-0", UID, &cid), pod_json("kube-system", "dns-0", SYS_UID, &"d".repeat(64))]});
    let nss = serde_json::json!({"apiVersion": "v1", "kind": "NamespaceList",
        "metadata": {"resourceVersion": "10"}, "items": [{"metadata": {"name": "ml"}}, {"metadata": {"name": "kube-system"}}]});
    let api = KubeApi::start(pods.to_string(), nss.to_string()).expect("replay API");
    api.add_token("alice-token-0123456789", "alice", &["ml-admins"]);
    api.add_token("bob-token-0123456789", "bob", &["ml-users"]);
    api.add_expired_token("old-token-0123456789");
    api.allow("alice", "create", Some("ml"));
    api.allow("alice", "delete", Some("ml"));
    api.allow("alice", "list", None);

    let base = TestCgroup::new("ctlkube").expect("cgroup");
    let pod_rel = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID.replace('-', "_")
    );
    let container = base
        .child(&format!("{pod_rel}/cri-containerd-{cid}.scope"))
        .expect("pod cgroup");
    let ns = Netns::new("tgctlk").expect("netns");
    let pins = TestPinDir::new().expect("pin dir");
    let state =
        Dir(std::env::temp_dir().join(format!("tg-ctlk-{}", tollgate_tests::unique_suffix())));
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"kubernetes\"\nnode_name = \"node-1\"\n[control]\nauth_cache_ttl = \"10m\"\n",
        state.0.display()
    );
    let kubeconfig = api.kubeconfig().display().to_string();
    let mut agent = Agent::start_with_env(pins.path(), &config, &[("KUBECONFIG", &kubeconfig)])
        .expect("agent starts");
    let url = agent.control_url().expect("control URL");
    assert!(send_from(&container, &ns), "the pod sends before");
    // The pod list must have arrived before a name resolves.
    let body = br#"{"target":"ml/train-0","reason":"exfil to 203.0.113.9"}"#;
    let synced = wait_until("pod list synced", Duration::from_secs(30), || {
        agent.log().contains("pod list synced")
    });
    assert!(synced.is_ok(), "{}", agent.log());

    // Refused: unknown, expired, and bob (authenticated, not allowed).
    for (tok, status) in [
        ("nobody-token-0123456789", 401),
        ("old-token-0123456789", 401),
        ("bob-token-0123456789", 403),
        ("bob-token-0123456789", 403),
    ] {
        let r = request(&url, "POST", "/v1/quarantine", Some(tok), body);
        assert_eq!(r.status, status, "{tok}: {}", r.raw);
        if tok.starts_with("old") {
            assert!(r.body.contains("expired"), "{}", r.body);
        }
    }
    let r = request(
        &url,
        "GET",
        "/v1/quarantines",
        Some("bob-token-0123456789"),
        b"",
    );
    assert_eq!(r.status, 403, "bob may not list: {}", r.raw);
    let r = request(
        &url,
        "POST",
        "/v1/quarantine",
        Some("alice-token-0123456789"),
        br#"{"target":"kube-system/dns-0","reason":"x"}"#,
    );
    assert_eq!(r.status, 403, "alice may not touch kube-system: {}", r.raw);
    let r = request(
        &url,
        "GET",
        "/v1/quarantines",
        Some("alice-token-0123456789"),
        b"",
    );
    assert_eq!(
        r.json(),
        serde_json::json!([]),
        "nothing quarantined: {}",
        r.raw
    );
    assert!(send_from(&container, &ns), "the pod still sends");
    assert!(calls_to(&api, "PATCH", "/api/v1/namespaces/ml/pods/train-0").is_empty());

    // alice through the CLI, by pod name, with a token file.
    let tok = state.0.join("alice.token");
    std::fs::write(&tok, "alice-token-0123456789\n").unwrap();
    let tok_s = tok.display().to_string();
    let o = tg(
        &state.0,
        &[
            "quarantine",
            "ml/train-0",
            "--reason",
            "exfil to 203.0.113.9",
            "--token-file",
            &tok_s,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).expect("record");
    assert_eq!(rec["pod"], "ml/train-0");
    assert_eq!(rec["by"], "api:alice");
    assert_eq!(
        rec["path"],
        format!("{}/{pod_rel}", base.rel_path()).as_str()
    );
    assert!(
        !send_from(&container, &ns),
        "the pod's container is cut off (EPERM)"
    );
    assert!(agent.is_running());

    let patches = wait_calls(&api, "PATCH", "/api/v1/namespaces/ml/pods/train-0", 1);
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    assert_eq!(
        patches[0].json(),
        serde_json::json!({"metadata": {"labels": {"tollgate.io/quarantined": "true"}}})
    );
    let events = wait_calls(&api, "POST", "/api/v1/namespaces/ml/events", 1);
    assert_eq!(events.len(), 1);
    let ev = events[0].json();
    assert_eq!(ev["reason"], "TollgateQuarantined");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(
        ev["involvedObject"],
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": "train-0", "uid": UID})
    );
    assert!(ev["message"].as_str().unwrap().contains("alice"), "{ev}");
    assert_eq!(ev["source"]["host"], "node-1");

    // Release by name: label removed (null in a merge patch), Event.
    let o = tg(&state.0, &["release", "ml/train-0", "--token-file", &tok_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(send_from(&container, &ns), "the pod sends after release");
    let patches = wait_calls(&api, "PATCH", "/api/v1/namespaces/ml/pods/train-0", 2);
    assert_eq!(
        patches[1].json(),
        serde_json::json!({"metadata": {"labels": {"tollgate.io/quarantined": null}}})
    );
    let events = wait_calls(&api, "POST", "/api/v1/namespaces/ml/events", 2);
    assert_eq!(events[1].json()["reason"], "TollgateReleased");

    // Reviews: one TokenReview per token (cached), SubjectAccessReview with
    // the virtual resource and the pod's namespace.
    let reviews = calls_to(&api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews");
    let count = |t: &str| {
        reviews
            .iter()
            .filter(|c| c.json()["spec"]["token"] == t)
            .count()
    };
    assert_eq!(count("alice-token-0123456789"), 1, "{reviews:#?}");
    assert_eq!(count("bob-token-0123456789"), 1);
    assert_eq!(count("old-token-0123456789"), 1);
    assert_eq!(count("nobody-token-0123456789"), 1);
    let sars: Vec<serde_json::Value> = calls_to(
        &api,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
    )
    .iter()
    .map(Call::json)
    .collect();
    let create = sars
        .iter()
        .find(|s| {
            s["spec"]["user"] == "alice"
                && s["spec"]["resourceAttributes"]["verb"] == "create"
                && s["spec"]["resourceAttributes"]["namespace"] == "ml"
        })
        .unwrap_or_else(|| panic!("{sars:#?}"));
    assert_eq!(create["spec"]["resourceAttributes"]["group"], "tollgate.io");
    assert_eq!(
        create["spec"]["resourceAttributes"]["resource"],
        "quarantines"
    );
    assert_eq!(create["spec"]["resourceAttributes"]["name"], "train-0");
    assert_eq!(create["spec"]["groups"], serde_json::json!(["ml-admins"]));
    let bob_creates = sars
        .iter()
        .filter(|s| {
            s["spec"]["user"] == "bob" && s["spec"]["resourceAttributes"]["verb"] == "create"
        })
        .count();
    assert_eq!(bob_creates, 1, "bob's denial is cached too");

    let audit: Vec<serde_json::Value> = std::fs::read_to_string(state.0.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied = |status: u64, by: Option<&str>| {
        audit
            .iter()
            .filter(|l| {
                l["action"] == "denied" && l["status"] == status && by.is_none_or(|b| l["by"] == b)
            })
            .count()
    };
    assert_eq!(denied(401, None), 2, "{audit:#?}");
    assert_eq!(denied(403, Some("api:bob")), 3, "{audit:#?}");
    assert_eq!(denied(403, Some("api:alice")), 1);
    let q = audit
        .iter()
        .find(|l| l["action"] == "quarantine")
        .expect("quarantine audited");
    assert_eq!(q["by"], "api:alice");
    assert_eq!(q["pod"], "ml/train-0");
    assert!(
        audit
            .iter()
            .any(|l| l["action"] == "release" && l["by"] == "api:alice")
    );
}
