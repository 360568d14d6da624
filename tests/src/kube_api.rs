//! A stand-in for the Kubernetes API server (none can run here): plain
//! HTTP on loopback, serving a pod list and a namespace list and keeping
//! pod watches open to push the events a test sends. It speaks just
//! enough of the API for kube-rs's watcher: list responses with a
//! resourceVersion, watch streams of newline-separated JSON events. Every
//! request's path and query is logged for assertions. Drop stops it.
//!
//! For the control API it also answers TokenReview (tokens the test
//! registers, with their users; "expired" tokens; anything else is not
//! authenticated), SubjectAccessReview (allowed only for the rules the
//! test adds), pod PATCH (merge patch of labels, echoed on the listed pod)
//! and Event creation, and records method, path, content type and body of
//! every call. It is a replay of the API's shapes, not an API server: no
//! RBAC engine, no admission, no persistence beyond what it echoes.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use crate::cmd::{Error, Result};

/// (user name, groups) of a registered token.
type UserGroups = (String, Vec<String>);

struct Shared {
    pods: String,
    namespaces: String,
    events: Mutex<mpsc::Receiver<String>>,
    log: Mutex<Vec<String>>,
    calls: Mutex<Vec<Call>>,
    /// token -> Some((user, groups)), or None for an expired token.
    tokens: Mutex<HashMap<String, Option<UserGroups>>>,
    /// (user, verb, namespace or None for any) allowed on
    /// quarantines.tollgate.io.
    allowed: Mutex<Vec<(String, String, Option<String>)>>,
    stop: AtomicBool,
}

/// One request as the replay server saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// "path?query".
    pub target: String,
    pub content_type: String,
    pub body: String,
}

impl Call {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::Sender<String>,
    kubeconfig: PathBuf,
    accept: Option<thread::JoinHandle<()>>,
}

impl KubeApi {
    /// Serves `pods_list` (a PodList) and `namespaces_list` (a
    /// NamespaceList) and writes a kubeconfig that points at the server.
    pub fn start(pods_list: String, namespaces_list: String) -> Result<KubeApi> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("binding replay API", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("replay API address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("replay API nonblocking", e))?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            pods: pods_list,
            namespaces: namespaces_list,
            events: Mutex::new(rx),
            log: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            allowed: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let kubeconfig = std::env::temp_dir().join(format!(
            "tollgate-test-kubeconfig-{}.yaml",
            crate::unique_suffix()
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: replay\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: replay\n  context:\n    cluster: replay\n    user: replay\ncurrent-context: replay\nusers:\n- name: replay\n  user: {{}}\n"
        );
        std::fs::write(&kubeconfig, text)
            .map_err(|e| Error::io(format!("writing {}", kubeconfig.display()), e))?;
        let s = shared.clone();
        let accept = thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        thread::spawn(move || serve(conn, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(KubeApi {
            addr,
            shared,
            events: tx,
            kubeconfig,
            accept: Some(accept),
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a watch event (`{"type":"DELETED","object":{...}}`) on the
    /// open pod watch.
    pub fn pod_event(&self, event: &serde_json::Value) {
        let _ = self.events.send(event.to_string());
    }

    /// TokenReview authenticates `token` as `user` in `groups`.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        if let Ok(mut t) = self.shared.tokens.lock() {
            t.insert(
                token.into(),
                Some((user.into(), groups.iter().map(|g| g.to_string()).collect())),
            );
        }
    }

    /// TokenReview answers that `token` has expired.
    pub fn add_expired_token(&self, token: &str) {
        if let Ok(mut t) = self.shared.tokens.lock() {
            t.insert(token.into(), None);
        }
    }

    /// SubjectAccessReview allows `user` to `verb` quarantines.tollgate.io
    /// in `namespace` (None: in any namespace and cluster-wide).
    pub fn allow(&self, user: &str, verb: &str, namespace: Option<&str>) {
        if let Ok(mut a) = self.shared.allowed.lock() {
            a.push((user.into(), verb.into(), namespace.map(str::to_owned)));
        }
    }

    /// Every request so far, with method and body.
    pub fn calls(&self) -> Vec<Call> {
        self.shared
            .calls
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// "path?query" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn serve(mut conn: TcpStream, s: &Shared) {
    let _ = conn.set_nonblocking(false);
    let Ok(read) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let (mut length, mut chunked, mut content_type) = (0usize, false, String::new());
    let mut h = String::new();
    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "content-type" => content_type = v.to_owned(),
                _ => {}
            }
        }
        h.clear();
    }
    let body = read_body(&mut reader, length, chunked);
    let method = line.split_whitespace().next().unwrap_or("").to_owned();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    if let Ok(mut l) = s.log.lock() {
        l.push(target.clone());
    }
    if let Ok(mut c) = s.calls.lock() {
        c.push(Call {
            method: method.clone(),
            target: target.clone(),
            content_type,
            body: body.clone(),
        });
    }
    if method != "GET" {
        let (status, answer) = answer_write(s, &method, &target, &body);
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        );
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let list = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match (path, watch) {
        ("/api/v1/pods", false) => {
            let _ = conn.write_all(list(&s.pods).as_bytes());
        }
        ("/api/v1/namespaces", false) => {
            let _ = conn.write_all(list(&s.namespaces).as_bytes());
        }
        ("/api/v1/pods" | "/api/v1/namespaces", true) => {
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            while !s.stop.load(Ordering::Relaxed) {
                let ev = if path == "/api/v1/pods" {
                    s.events
                        .lock()
                        .ok()
                        .and_then(|rx| rx.recv_timeout(Duration::from_millis(50)).ok())
                } else {
                    thread::sleep(Duration::from_millis(50));
                    None
                };
                if let Some(ev) = ev
                    && conn.write_all(format!("{ev}\n").as_bytes()).is_err()
                {
                    return;
                }
            }
        }
        _ => {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}

fn read_body(r: &mut impl BufRead, length: usize, chunked: bool) -> String {
    let mut out = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).is_err() {
                break;
            }
            let n =
                usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                let _ = r.read_line(&mut end);
                break;
            }
            let mut chunk = vec![0; n + 2];
            if std::io::Read::read_exact(r, &mut chunk).is_err() {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    } else if length > 0 {
        out.resize(length.min(1 << 20), 0);
        if std::io::Read::read_exact(r, &mut out).is_err() {
            out.clear();
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a POST or PATCH: (status line, JSON body).
fn answer_write(s: &Shared, method: &str, target: &str, body: &str) -> (&'static str, String) {
    let path = target.split('?').next().unwrap_or("");
    let req: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            let token = req["spec"]["token"].as_str().unwrap_or("");
            let known = s.tokens.lock().ok().and_then(|t| t.get(token).cloned());
            let status = match known {
                Some(Some((user, groups))) => serde_json::json!({
                    "authenticated": true,
                    "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups}
                }),
                Some(None) => serde_json::json!({"authenticated": false,
                    "error": "[invalid bearer token, service account token has expired]"}),
                None => {
                    serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                }
            };
            let mut out = req.clone();
            out["status"] = status;
            ("201 Created", out.to_string())
        }
        ("POST", ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]) => {
            let spec = &req["spec"];
            let ra = &spec["resourceAttributes"];
            let user = spec["user"].as_str().unwrap_or("");
            let verb = ra["verb"].as_str().unwrap_or("");
            let ns = ra["namespace"].as_str();
            let ok = ra["group"] == "tollgate.io"
                && ra["resource"] == "quarantines"
                && s.allowed.lock().is_ok_and(|a| {
                    a.iter().any(|(u, v, n)| {
                        u == user && v == verb && (n.is_none() || n.as_deref() == ns)
                    })
                });
            let mut out = req.clone();
            out["status"] = if ok {
                serde_json::json!({"allowed": true, "reason": "replay rule"})
            } else {
                serde_json::json!({"allowed": false, "reason": "no replay rule allows it"})
            };
            ("201 Created", out.to_string())
        }
        ("PATCH", ["api", "v1", "namespaces", ns, "pods", name]) => {
            let list: serde_json::Value = serde_json::from_str(&s.pods).unwrap_or_default();
            let pod = list["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name)
                    .cloned()
            });
            match pod {
                Some(mut p) => {
                    if let Some(labels) = req["metadata"]["labels"].as_object() {
                        for (k, v) in labels {
                            if let Some(m) = p["metadata"]["labels"].as_object_mut() {
                                if v.is_null() {
                                    m.remove(k);
                                } else {
                                    m.insert(k.clone(), v.clone());
                                }
                            } else if !v.is_null() {
                                p["metadata"]["labels"] = serde_json::json!({k: v});
                            }
                        }
                    }
                    ("200 OK", p.to_string())
                }
                None => (
                    "404 Not Found",
                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("pods \"{name}\" not found")})
                    .to_string(),
                ),
            }
        }
        ("POST", ["api", "v1", "namespaces", _, "events"]) => ("201 Created", body.to_owned()),
        _ => (
            "404 Not Found",
            serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "NotFound", "code": 404, "message": "not replayed"})
            .to_string(),
        ),
    }
}
