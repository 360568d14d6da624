//! The control API's HTTP side: routes, error mapping, audit of refused
//! requests, and an accept loop that serves plain HTTP or only TLS.
//!
//! Order of checks per request: authentication (401), body (413 past
//! `control.max_body_bytes`, 400 for anything unreadable), target,
//! authorization (403), action. Nothing a client sends can stop the
//! server: bad requests get an error status, a panicking handler loses
//! only its own connection, accept errors are logged and retried.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{
    ControlConfig, URL_FILE,
    auth::{AuthError, Authenticator, Caller, TokenFileError, ensure_token_file},
    service::{ServiceError, SharedService, Target},
    tls::{TlsError, server_config},
};
use crate::quarantine::{QuarantineError, Request};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Token(#[from] TokenFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "cannot listen on {0} for the control API: {1}; pick a free address with control.listen or --control-addr, or set control.enabled = false"
    )]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// Per-connection limits: a TLS handshake, and a whole connection (keep-
/// alive included), may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct AppState {
    svc: SharedService,
    auth: Arc<Authenticator>,
}

/// A bound control API, ready to [`serve`].
pub struct Bound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// `http://addr` or `https://addr`.
    pub url: String,
    pub tls: Option<TlsAcceptor>,
    pub app: Router,
    pub max_connections: usize,
}

/// Prepares the token file and TLS, binds, writes `<state_dir>/control.url`
/// for the CLI. `kube`: also accept Kubernetes tokens.
pub async fn start(
    cfg: &ControlConfig,
    state_dir: &Path,
    svc: SharedService,
    kube: Option<kube::Client>,
) -> Result<Bound, ControlError> {
    let token = cfg.token_path(state_dir);
    ensure_token_file(&token)?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(TlsAcceptor::from(server_config(c, k)?)),
        _ => None,
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ControlError::Bind(cfg.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ControlError::Bind(cfg.listen, e))?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let url_file = state_dir.join(URL_FILE);
    if let Err(e) = write_url(&url_file, &url) {
        tracing::warn!(file = %url_file.display(), error = %e, "cannot write the control API URL for the CLI; pass --api to it");
    }
    let auth = Arc::new(Authenticator::new(Some(token), kube, cfg.auth_cache_ttl));
    let app = router(AppState { svc, auth }, cfg.max_body_bytes);
    Ok(Bound {
        listener,
        addr,
        url,
        tls,
        app,
        max_connections: cfg.max_connections,
    })
}

fn write_url(path: &Path, url: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("url.tmp");
    std::fs::write(&tmp, format!("{url}\n"))?;
    std::fs::rename(&tmp, path)
}

fn router(st: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/v1/quarantine", post(quarantine))
        .route("/v1/release", post(release))
        .route("/v1/quarantines", get(list))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: POST /v1/quarantine, POST /v1/release, GET /v1/quarantines",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

/// Accepts until the task is dropped.
pub async fn serve(b: Bound) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(b.max_connections));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, remote) = match b.listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait, never give up serving.
                tracing::warn!(error = %e, "control API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (app, tls) = (b.app.clone(), b.tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(req)
            });
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .to_owned();
            let res = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            tokio::time::timeout(
                                CONNECTION_TIMEOUT,
                                http.serve_connection(TokioIo::new(s), svc),
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            // Plain HTTP on the TLS port lands here.
                            tracing::info!(%remote, error = %e, "control API: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => {
                    tokio::time::timeout(
                        CONNECTION_TIMEOUT,
                        http.serve_connection(TokioIo::new(tcp), svc),
                    )
                    .await
                }
            };
            if let Ok(Err(e)) = res {
                tracing::debug!(%remote, error = %e, "control API connection ended with an error");
            }
        });
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": msg.to_string()}))).into_response()
}

impl AppState {
    fn deny(
        &self,
        e: &AuthError,
        remote: SocketAddr,
        endpoint: &str,
        who: Option<&Caller>,
        target: Option<&Target>,
    ) -> Response {
        let status = match e {
            AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(%remote, endpoint, status = status.as_u16(), why = %e, "control API request refused");
        self.svc.audit(json!({
            "action": "denied",
            "status": status.as_u16(),
            "endpoint": endpoint,
            "remote": remote.to_string(),
            "by": who.map(|c| format!("api:{}", c.name)),
            "target": target.map(ToString::to_string),
            "reason": e.to_string(),
        }));
        let mut r = error(status, e);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        r
    }

    async fn authenticate(
        &self,
        h: &HeaderMap,
        remote: SocketAddr,
        endpoint: &str,
    ) -> Result<Caller, Box<Response>> {
        let value = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.auth
            .authenticate(value)
            .await
            .map_err(|e| Box::new(self.deny(&e, remote, endpoint, None, None)))
    }

    async fn authorize(
        &self,
        c: &Caller,
        verb: &str,
        t: Option<&Target>,
        remote: SocketAddr,
        endpoint: &str,
    ) -> Result<(), Box<Response>> {
        self.auth
            .authorize(
                c,
                verb,
                t.and_then(Target::namespace),
                t.and_then(Target::pod_name),
            )
            .await
            .map_err(|e| Box::new(self.deny(&e, remote, endpoint, Some(c), t)))
    }
}

/// The body as `T`: 413 past the limit, 400 with serde's message otherwise.
fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    let bytes = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Box::new(error(
                r.status(),
                "request body too large (control.max_body_bytes)",
            )));
        }
        Err(r) => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {r}"),
            )));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        ))
    })
}

fn service_error(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::BadTarget(_) | ServiceError::Quarantine(QuarantineError::Root) => {
            StatusCode::BAD_REQUEST
        }
        ServiceError::NoPod(_)
        | ServiceError::Quarantine(
            QuarantineError::NoCgroup(_) | QuarantineError::NotQuarantined(_),
        ) => StatusCode::NOT_FOUND,
        ServiceError::Quarantine(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineBody {
    target: String,
    reason: String,
    /// humantime, e.g. "30m".
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    target: String,
}

async fn quarantine(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const EP: &str = "quarantine";
    let caller = match st.authenticate(&headers, remote, EP).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let b: QuarantineBody = match parse(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let target = match Target::parse(&b.target) {
        Ok(t) => t,
        Err(e) => return service_error(e),
    };
    if b.reason.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "reason is required (it goes to the audit log)",
        );
    }
    let ttl = match b.ttl.as_deref().map(humantime::parse_duration).transpose() {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("ttl {:?}: {e} (e.g. \"30m\")", b.ttl.unwrap_or_default()),
            );
        }
    };
    if let Err(r) = st
        .authorize(&caller, "create", Some(&target), remote, EP)
        .await
    {
        return *r;
    }
    let svc = st.svc.clone();
    let req = Request {
        reason: b.reason,
        by: format!("api:{}", caller.name),
        ttl,
        ..Request::default()
    };
    match tokio::task::spawn_blocking(move || svc.quarantine(&target, req)).await {
        Ok(Ok(rec)) => Json(rec).into_response(),
        Ok(Err(e)) => service_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn release(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const EP: &str = "release";
    let caller = match st.authenticate(&headers, remote, EP).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let b: ReleaseBody = match parse(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let target = match Target::parse(&b.target) {
        Ok(t) => t,
        Err(e) => return service_error(e),
    };
    if let Err(r) = st
        .authorize(&caller, "delete", Some(&target), remote, EP)
        .await
    {
        return *r;
    }
    let svc = st.svc.clone();
    let by = format!("api:{}", caller.name);
    match tokio::task::spawn_blocking(move || svc.release(&target, &by)).await {
        Ok(Ok(rec)) => Json(rec).into_response(),
        Ok(Err(e)) => service_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn list(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    const EP: &str = "list";
    let caller = match st.authenticate(&headers, remote, EP).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Err(r) = st.authorize(&caller, "list", None, remote, EP).await {
        return *r;
    }
    let svc = st.svc.clone();
    match tokio::task::spawn_blocking(move || svc.list()).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
