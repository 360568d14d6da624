//! The agent's local API on a unix socket (mode 0600, so only root and the
//! agent's own user reach it): `GET /v1/snapshot` returns the latest
//! collection pass as JSON. `tollgate top` reads it; the authenticated TCP
//! control API comes with quarantine.

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::sync::watch;

use crate::{collect::Snapshot, detect::live::FindingsRx};

/// Default socket for a pin directory: one agent per pin directory, so
/// tests and benchmarks with their own pins get their own socket.
pub fn default_socket(pin_dir: &Path) -> PathBuf {
    let name = pin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tollgate".into());
    PathBuf::from("/run/tollgate").join(format!("{name}.sock"))
}

type Shared = watch::Receiver<Option<Arc<Snapshot>>>;

async fn snapshot(State(rx): State<Shared>) -> impl IntoResponse {
    let snap = rx.borrow().clone();
    match snap {
        Some(s) => (StatusCode::OK, axum::Json(s)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no collection pass yet\n").into_response(),
    }
}

/// Serves the local API until the task is dropped (without findings:
/// `/v1/findings` answers an empty list).
pub async fn serve(socket: PathBuf, rx: Shared) -> std::io::Result<()> {
    let (_tx, findings) = watch::channel(Arc::new(Vec::new()));
    serve_with_findings(socket, rx, findings).await
}

async fn findings(State(rx): State<FindingsRx>) -> impl IntoResponse {
    let list = rx.borrow().clone();
    (StatusCode::OK, axum::Json(list)).into_response()
}

/// Serves the local API, `GET /v1/findings` included (firing findings,
/// then recently resolved ones), until the task is dropped.
pub async fn serve_with_findings(
    socket: PathBuf,
    rx: Shared,
    findings_rx: FindingsRx,
) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let app = Router::new()
        .route("/v1/snapshot", get(snapshot))
        .with_state(rx)
        .merge(
            Router::new()
                .route("/v1/findings", get(findings))
                .with_state(findings_rx),
        );
    axum::serve(listener, app).await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the agent at {0}: {1}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("agent at {0} answered: {1}")]
    Status(PathBuf, String),
    #[error("agent at {0} sent an unreadable snapshot: {1}")]
    Decode(PathBuf, String),
}

/// Fetches the agent's latest snapshot (a one-shot HTTP/1.0 GET).
pub fn fetch_snapshot(socket: &Path) -> Result<Snapshot, ClientError> {
    fetch_json(socket, "/v1/snapshot")
}

/// Fetches the agent's findings.
pub fn fetch_findings(socket: &Path) -> Result<Vec<crate::detect::Finding>, ClientError> {
    fetch_json(socket, "/v1/findings")
}

/// GET `path` from the agent and decode its JSON body.
fn fetch_json<T: serde::de::DeserializeOwned>(socket: &Path, path: &str) -> Result<T, ClientError> {
    let io = |e| ClientError::Connect(socket.to_owned(), e);
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: tollgate\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Status(socket.to_owned(), "truncated response".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(ClientError::Status(
            socket.to_owned(),
            format!("{status}: {}", body.trim()),
        ));
    }
    serde_json::from_str(body).map_err(|e| ClientError::Decode(socket.to_owned(), e.to_string()))
}
