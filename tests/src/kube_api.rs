//! A stand-in for the Kubernetes API server (none can run here): plain
//! HTTP on loopback, serving a pod list and a namespace list and keeping
//! pod watches open to push the events a test sends. It speaks just
//! enough of the API for kube-rs's watcher: list responses with a
//! resourceVersion, watch streams of newline-separated JSON events. Every
//! request's path and query is logged for assertions. Drop stops it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
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

struct Shared {
    pods: String,
    namespaces: String,
    events: Mutex<mpsc::Receiver<String>>,
    log: Mutex<Vec<String>>,
    stop: AtomicBool,
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
    // Headers are not needed; read to the blank line.
    let mut h = String::new();
    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    if let Ok(mut l) = s.log.lock() {
        l.push(target.clone());
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
