//! The agent's HTTP control API: quarantine, release and list, for
//! operators (`tollgate quarantine <namespace>/<pod>`) and tools.
//!
//! - `POST /v1/quarantine` `{"target": "ns/pod" | "/cgroup/path", "reason": "...", "ttl": "30m"}`
//! - `POST /v1/release` `{"target": ...}`
//! - `GET /v1/quarantines`
//!
//! Every request carries `Authorization: Bearer <token>`: the agent's own
//! token file (created 0600 with a random token when missing; whoever can
//! read it is root on the node anyway), or, in Kubernetes mode, any token
//! the API server accepts (TokenReview) for a user allowed the verb on the
//! virtual resource `quarantines.tollgate.io` in the pod's namespace
//! (SubjectAccessReview). Localhost only by default; TLS when
//! `control.tls_cert`/`tls_key` are set (then plain HTTP is refused).

pub mod auth;
pub mod client;
mod server;
pub mod service;
pub mod tls;
pub mod token;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use server::{ControlError, serve, start};

/// Default port of the control API (next to the metrics port 9771).
pub const DEFAULT_CONTROL_ADDR: &str = "127.0.0.1:9772";
/// Name of the token file in the state directory.
pub const TOKEN_FILE: &str = "control.token";
/// Written by the agent with the URL it serves, for the CLI.
pub const URL_FILE: &str = "control.url";

/// `[control]`: the HTTP control API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control API.
    pub enabled: bool,
    /// Listen address. A non-loopback address needs TLS (bearer tokens
    /// must not cross a network in clear).
    pub listen: SocketAddr,
    /// Bearer token file; "" = `<agent.state_dir>/control.token`. Created
    /// with a random token, mode 0600, when missing; re-read when it
    /// changes (rotate by rewriting it).
    pub token_file: PathBuf,
    /// In Kubernetes mode, also accept Kubernetes tokens: TokenReview, then
    /// SubjectAccessReview for verb create (quarantine), delete (release)
    /// or list on resource `quarantines` in API group `tollgate.io`, in the
    /// pod's namespace.
    pub kubernetes_auth: bool,
    /// How long a TokenReview or SubjectAccessReview answer is reused.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// PEM certificate chain; with `tls_key`, the API speaks only HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that the CLI trusts when the agent speaks HTTPS (the
    /// issuer of `tls_cert`); `--ca-cert` overrides it.
    pub ca_cert: Option<PathBuf>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_CONTROL_ADDR.parse().expect("valid default"),
            token_file: PathBuf::new(),
            kubernetes_auth: true,
            auth_cache_ttl: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            ca_cert: None,
            max_body_bytes: 64 * 1024,
            max_connections: 64,
        }
    }
}

/// A bad `[control]` value: (key, value, why).
pub type Invalid = (&'static str, String, String);

impl ControlConfig {
    /// The token file for a state directory.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        if self.token_file.as_os_str().is_empty() {
            state_dir.join(TOKEN_FILE)
        } else {
            self.token_file.clone()
        }
    }

    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let bad = |k, v: String, why: &str| Err((k, v, why.to_owned()));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad(
                "control.tls_cert",
                format!("{:?} / tls_key {:?}", self.tls_cert, self.tls_key),
                "set both control.tls_cert and control.tls_key, or neither",
            );
        }
        if !self.listen.ip().is_loopback() && !self.tls() {
            return bad(
                "control.listen",
                self.listen.to_string(),
                "a non-loopback address needs control.tls_cert and control.tls_key (bearer tokens would cross the network in clear); or listen on 127.0.0.1",
            );
        }
        if !(1024..=16 << 20).contains(&self.max_body_bytes) {
            return bad(
                "control.max_body_bytes",
                self.max_body_bytes.to_string(),
                "must be between 1024 and 16777216",
            );
        }
        if !(1..=4096).contains(&self.max_connections) {
            return bad(
                "control.max_connections",
                self.max_connections.to_string(),
                "must be between 1 and 4096",
            );
        }
        if self.auth_cache_ttl > Duration::from_secs(600) {
            return bad(
                "control.auth_cache_ttl",
                humantime::format_duration(self.auth_cache_ttl).to_string(),
                "must be at most 10m (a revoked permission must not live long)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_valid() {
        let c = ControlConfig::default();
        assert!(c.listen.ip().is_loopback());
        c.validate().unwrap();
        assert_eq!(
            c.token_path(Path::new("/var/lib/tollgate")),
            Path::new("/var/lib/tollgate/control.token")
        );
    }

    #[test]
    fn open_listen_needs_tls() {
        let c = ControlConfig {
            listen: "0.0.0.0:9772".parse().unwrap(),
            ..ControlConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "control.listen");
        let c = ControlConfig {
            listen: "0.0.0.0:9772".parse().unwrap(),
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            ..ControlConfig::default()
        };
        c.validate().unwrap();
        let c = ControlConfig {
            tls_cert: Some("/c.pem".into()),
            ..ControlConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "control.tls_cert");
        let c = ControlConfig {
            max_body_bytes: 10,
            ..ControlConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "control.max_body_bytes");
    }
}
