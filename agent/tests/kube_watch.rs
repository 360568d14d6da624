//! The Kubernetes pod watch against a local HTTP server that replays list
//! and watch responses (agent/tests/data/kube, written in the API server's
//! wire format; no API server runs here). The script covers a watch the
//! server drops (resumed from the last resourceVersion), a 410 Gone in the
//! stream (re-list), an API outage (last-known pods kept) and pods deleted
//! while the API was down (gone after the re-list). Gates let the test
//! look at each state before the server moves on.
#![forbid(unsafe_code)]

use std::{
    collections::VecDeque,
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::watch;
use tollgate::inventory::{
    Inventory,
    classes::{ClassConfig, Classifier},
    kube::{ExpBackoff, SharedCluster, spawn_watches},
};

fn data(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kube")
        .join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[derive(Clone)]
enum Reply {
    /// 200 with a JSON body.
    List(String),
    /// 200 with watch events, then the stream closes (a dropped watch).
    Events(String),
    /// An error status with a Status body.
    Error(u16, String),
}

struct Step {
    /// Held until the test has released this many gates.
    gate: u32,
    watch: bool,
    reply: Reply,
}

#[derive(Clone)]
struct Server {
    pods: Arc<Mutex<VecDeque<Step>>>,
    log: Arc<Mutex<Vec<String>>>,
    gates: watch::Receiver<u32>,
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::List(body) => ([("content-type", "application/json")], body).into_response(),
        Reply::Events(lines) => {
            let chunks: Vec<Result<String, std::io::Error>> =
                lines.lines().map(|l| Ok(format!("{l}\n"))).collect();
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .expect("response")
        }
        Reply::Error(code, body) => (
            StatusCode::from_u16(code).expect("status"),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
    }
}

/// A watch that stays open without events (the steady state).
fn idle_watch() -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::pending::<
            Result<String, std::io::Error>,
        >()))
        .expect("response")
}

async fn pods(State(s): State<Server>, RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    let is_watch = q.contains("watch=true");
    s.log.lock().unwrap().push(q.clone());
    let step = {
        let mut script = s.pods.lock().unwrap();
        match script.front() {
            Some(st) if st.watch == is_watch => script.pop_front(),
            Some(_) => {
                let why = format!("script expected the other request kind, got {q}");
                return respond(Reply::Error(599, why));
            }
            None => None,
        }
    };
    let Some(step) = step else {
        return if is_watch {
            idle_watch()
        } else {
            respond(Reply::Error(500, "script exhausted".into()))
        };
    };
    let mut gates = s.gates.clone();
    let _ = gates.wait_for(|g| *g >= step.gate).await;
    respond(step.reply)
}

async fn namespaces(RawQuery(q): RawQuery) -> Response {
    if q.unwrap_or_default().contains("watch=true") {
        idle_watch()
    } else {
        respond(Reply::List(data("namespaces-list.json")))
    }
}

fn wait_for(
    what: &str,
    cluster: &SharedCluster,
    cond: impl Fn(&tollgate::inventory::kube::ClusterState) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let st = cluster.read().unwrap();
            if cond(&st) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}: {st:#?}");
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn names(st: &tollgate::inventory::kube::ClusterState) -> Vec<String> {
    let mut v: Vec<String> = st.pods.values().map(|p| p.name.clone()).collect();
    v.sort();
    v
}

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

#[test]
fn pod_watch_survives_drops_gone_and_outages() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (gate_tx, gates) = watch::channel(0u32);
    let step = |gate, watch, reply| Step { gate, watch, reply };
    let script = VecDeque::from([
        step(0, false, Reply::List(data("pods-list-1.json"))),
        step(0, true, Reply::Events(data("pods-watch-1.jsonl"))),
        step(1, true, Reply::Events(data("pods-watch-2-gone.jsonl"))),
        step(0, false, Reply::List(data("pods-list-2.json"))),
        step(2, true, Reply::Error(500, data("status-500.json"))),
        // kube-client retries 503 itself; the 500 after it reaches the watcher.
        step(0, true, Reply::Error(503, data("status-500.json"))),
        step(0, true, Reply::Error(500, data("status-500.json"))),
        step(3, true, Reply::Events(data("pods-watch-3-gone.jsonl"))),
        step(0, false, Reply::List(data("pods-list-3.json"))),
    ]);
    let server = Server {
        pods: Arc::new(Mutex::new(script)),
        log: Arc::new(Mutex::new(Vec::new())),
        gates,
    };
    let log = server.log.clone();
    let remaining = server.pods.clone();
    let cluster = SharedCluster::default();
    rt.block_on(async {
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .route("/api/v1/namespaces", get(namespaces))
            .with_state(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(cfg).unwrap();
        spawn_watches(
            client,
            "node-1".into(),
            cluster.clone(),
            ExpBackoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        );
    });

    // Cgroups of pods A and B on a (temporary, non-cgroupfs) tree.
    let tree = std::env::temp_dir().join(format!("tg-kube-watch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tree);
    let cg = |uid: &str, cid: &str| {
        let p = tree.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
            uid.replace('-', "_"),
            cid.repeat(32)
        ));
        fs::create_dir_all(&p).unwrap();
        fs::metadata(&p).unwrap().ino()
    };
    // Container ids as in the recorded statuses.
    let (cg_a, cg_b) = (cg(A, "a1"), cg(B, "b2"));
    let mut inv = Inventory::new(
        tree.clone(),
        Duration::from_secs(60),
        Classifier::new(&ClassConfig::default()).unwrap(),
    );
    inv.set_cluster(cluster.clone());

    // 1. Initial list, then a watch that adds C, modifies A and is dropped.
    wait_for("list + first watch", &cluster, |st| {
        names(st) == ["etl-29100-q8v7n", "train-0", "web-7d4b9c-x2x9z"]
            && st.pods[A].labels.get("phase").map(String::as_str) == Some("two")
            && st.namespaces.len() == 2
    });
    inv.refresh(&[cg_a, cg_b], Instant::now());
    let a = inv.get(cg_a).unwrap().identity.clone();
    assert_eq!(
        (a.namespace.as_deref(), a.pod.as_deref()),
        (Some("ml"), Some("train-0"))
    );
    assert_eq!(a.container.as_deref(), Some("main"));
    assert_eq!(a.class, "training");
    let b = inv.get(cg_b).unwrap().identity.clone();
    // Namespace "web" is labelled tollgate.io/class=batch by its admin.
    assert_eq!(
        (b.pod.as_deref(), b.class.as_str()),
        (Some("web-7d4b9c-x2x9z"), "batch")
    );

    // 2. The dropped watch resumes from rv 102; C is deleted, then 410 Gone
    //    forces a re-list that brings D.
    gate_tx.send_replace(1);
    wait_for("re-list after 410", &cluster, |st| {
        names(st) == ["step-1-2519", "train-0", "web-7d4b9c-x2x9z"] && st.pod_lists == 2
    });
    // 3. The API fails (500, 503 retried by the client, 500): last-known
    //    pods stay.
    gate_tx.send_replace(2);
    wait_for("outage", &cluster, |st| !st.api_up && st.errors >= 3);
    assert_eq!(names(&cluster.read().unwrap()).len(), 3);
    // 4. Back with 410 Gone: re-list without B and D (deleted meanwhile).
    gate_tx.send_replace(3);
    wait_for("re-list after outage", &cluster, |st| {
        names(st) == ["train-0"] && st.pod_lists == 3 && st.api_up
    });
    // B's cgroup still exists (kubelet has not removed it yet): it keeps
    // its last-known identity rather than turning anonymous.
    inv.refresh(&[cg_a, cg_b], Instant::now());
    assert_eq!(
        inv.get(cg_b).unwrap().identity.pod.as_deref(),
        Some("web-7d4b9c-x2x9z")
    );

    let log = log.lock().unwrap().clone();
    assert!(
        remaining.lock().unwrap().is_empty(),
        "unused script steps; requests: {log:#?}"
    );
    for q in &log {
        assert!(q.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{q}");
    }
    let watches: Vec<&String> = log.iter().filter(|q| q.contains("watch=true")).collect();
    assert!(watches[0].contains("resourceVersion=100"), "{watches:#?}");
    assert!(
        watches[1].contains("resourceVersion=102"),
        "dropped watch must resume: {watches:#?}"
    );
    let lists = log.iter().filter(|q| !q.contains("watch=true")).count();
    assert_eq!(lists, 3, "{log:#?}");
    let _ = fs::remove_dir_all(&tree);
    rt.shutdown_timeout(Duration::from_secs(1));
}
