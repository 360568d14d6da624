//! A raw HTTP/1.1 client for control API tests: requests the real client
//! would never send (no token, oversized or broken bodies, plain HTTP to
//! a TLS port) over a plain TCP socket. One request per connection.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

/// A response: status (0 when the server sent no HTTP response) and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// What came back, verbatim (lossy UTF-8).
    pub raw: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// `url` is http://HOST:PORT (a https URL is sent in plain text on
/// purpose: that is what the TLS refusal test wants).
pub fn request(url: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let hostport = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).expect("connect to the control API");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (413, 401) and close before reading it all.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let raw = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Chunked bodies: axum's JSON answers carry a Content-Length, so the
    // body is the rest as is.
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
        raw: raw.clone(),
    }
}
