//! Minimal HTTP/1.0 over std for tests: GET/POST against loopback servers
//! (Prometheus, Alertmanager, the agent's /metrics) and a webhook receiver
//! that records what Alertmanager delivers. No client library: one request
//! per connection, `Connection: close`, bounded by timeouts.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::cmd::{Error, Result};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Percent-encodes a query value.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One request; returns (status, body).
pub fn request(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, String)> {
    let what = format!("{method} http://{addr}{path}");
    let io = |e| Error::io(what.clone(), e);
    let mut s = TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Invalid(format!("{what}: no HTTP header in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("{what}: bad status line {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// GET; an error unless 200.
pub fn get(addr: &str, path: &str) -> Result<String> {
    match request(addr, "GET", path, None)? {
        (200, b) => Ok(b),
        (s, b) => Err(Error::Invalid(format!("GET {addr}{path}: HTTP {s}: {b}"))),
    }
}

/// A free loopback port (bound, then released: the caller binds it next).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("binding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("local addr", e))?
        .port())
}

/// One request the webhook received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub body: serde_json::Value,
}

/// An HTTP server on 127.0.0.1 that answers 200 to every POST and keeps
/// the JSON bodies (Alertmanager's webhook notifications). Drop stops it.
#[derive(Debug)]
pub struct Webhook {
    addr: String,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Result<Webhook> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("binding webhook", e))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::io("webhook nonblocking", e))?;
        let addr = l
            .local_addr()
            .map_err(|e| Error::io("webhook addr", e))?
            .to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        if let Some(v) = serve_one(s) {
                            r.lock().expect("lock").push(Received {
                                at: Instant::now(),
                                body: v,
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Webhook {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (header + Content-Length body), answers 200.
fn serve_one(mut s: TcpStream) -> Option<serde_json::Value> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&buf[head_end..(head_end + len).min(buf.len())]).ok()
}
