//! The CLI's side of the control API: one request, HTTP/1.1 over TCP or
//! TLS, bearer token from the token file.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use super::tls;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "control API URL {0:?}: expected http://HOST:PORT or https://HOST:PORT (see --api, control.listen)"
    )]
    Url(String),
    #[error(
        "reading the control API token {path}: {source} (run as root on the node, or pass --token-file)"
    )]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{url} is HTTPS: pass --ca-cert (or control.ca_cert) with the CA that signed the agent's certificate"
    )]
    NoCa { url: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(
        "the agent is not reachable at {url}: {why} (pod targets need the running agent; `--cgroup PATH` works without it)"
    )]
    Connect { url: String, why: String },
    #[error("the agent at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
}

/// Where and how to reach the agent.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub url: String,
    pub token_file: PathBuf,
    pub ca_cert: Option<PathBuf>,
    pub timeout: Duration,
}

/// The URL the agent wrote into its state directory, if any.
pub fn url_from_state(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(super::URL_FILE))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// One request; returns the JSON answer of a 2xx, else the error message
/// the agent gave.
pub fn call(
    opts: &ClientOptions,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Connect {
            url: opts.url.clone(),
            why: format!("starting a runtime: {e}"),
        })?;
    rt.block_on(async {
        match tokio::time::timeout(opts.timeout, call_async(opts, method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Connect {
                url: opts.url.clone(),
                why: format!("no answer within {:?}", opts.timeout),
            }),
        }
    })
}

async fn call_async(
    opts: &ClientOptions,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let url = opts.url.trim_end_matches('/');
    let (tls, hostport) = if let Some(h) = url.strip_prefix("https://") {
        (true, h)
    } else if let Some(h) = url.strip_prefix("http://") {
        (false, h)
    } else {
        return Err(ClientError::Url(url.into()));
    };
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
            h.trim_start_matches('[').trim_end_matches(']')
        }
        _ => return Err(ClientError::Url(url.into())),
    };
    let token = std::fs::read_to_string(&opts.token_file).map_err(|source| ClientError::Token {
        path: opts.token_file.clone(),
        source,
    })?;
    let conn_err = |why: String| ClientError::Connect {
        url: url.into(),
        why,
    };
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| conn_err(e.to_string()))?;
    let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, hostport)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        )
        .body(body)
        .map_err(|e| conn_err(e.to_string()))?;
    let resp = if tls {
        let ca = opts
            .ca_cert
            .as_ref()
            .ok_or_else(|| ClientError::NoCa { url: url.into() })?;
        let connector = tokio_rustls::TlsConnector::from(tls::client_config(ca)?);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| conn_err(format!("server name {host:?}: {e}")))?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| conn_err(format!("TLS: {e}")))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
    .map_err(conn_err)?;
    let (status, bytes) = resp;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(ClientError::Status {
            url: url.into(),
            status,
            message: value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string()),
        })
    }
}

async fn send<T>(io: T, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    driver.abort();
    Ok((status, bytes))
}

/// `--api`, `--token-file`, `--ca-cert` over the config: the URL the
/// agent wrote (`<state_dir>/control.url`), else `control.listen`.
pub fn options(
    cfg: &crate::config::Config,
    api: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
) -> ClientOptions {
    let c = &cfg.control;
    let url = api
        .or_else(|| url_from_state(&cfg.agent.state_dir))
        .unwrap_or_else(|| {
            let mut addr = c.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{}://{addr}", if c.tls() { "https" } else { "http" })
        });
    ClientOptions {
        url,
        token_file: token_file.unwrap_or_else(|| c.token_path(&cfg.agent.state_dir)),
        ca_cert: ca_cert.or_else(|| c.ca_cert.clone()),
        timeout: Duration::from_secs(30),
    }
}

/// `tollgate quarantine <target>` through the agent.
pub fn quarantine(
    opts: &ClientOptions,
    target: &str,
    reason: &str,
    ttl: Option<Duration>,
) -> Result<serde_json::Value, ClientError> {
    let mut body = serde_json::json!({"target": target, "reason": reason});
    if let Some(t) = ttl {
        body["ttl"] = humantime::format_duration(t).to_string().into();
    }
    call(opts, "POST", "/v1/quarantine", Some(body))
}

/// `tollgate release <target>` through the agent.
pub fn release(opts: &ClientOptions, target: &str) -> Result<serde_json::Value, ClientError> {
    call(
        opts,
        "POST",
        "/v1/release",
        Some(serde_json::json!({"target": target})),
    )
}

/// `tollgate quarantine list` through the agent.
pub fn list(opts: &ClientOptions) -> Result<serde_json::Value, ClientError> {
    call(opts, "GET", "/v1/quarantines", None)
}
