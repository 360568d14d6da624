//! `[alerts]`: where and how findings go to Alertmanager.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{config::ConfigError, detect::Severity};

/// `[alerts]` section. Alerts are off while `urls` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alertmanager base URLs, e.g. `["http://alertmanager-0:9093",
    /// "http://alertmanager-1:9093"]`. Every URL gets every alert (that is
    /// what an Alertmanager HA cluster expects); each has its own queue.
    /// Empty: no alerts are sent.
    pub urls: Vec<String>,
    /// Findings below this severity are not sent.
    pub min_severity: Severity,
    /// How often a firing alert is sent again, so Alertmanager keeps it
    /// active (Alertmanager resolves alerts it has not heard of for its
    /// `resolve_timeout`, 5m by default: keep this well below).
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
    /// Timeout of one POST.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First wait after a failed delivery; doubles per failure.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest wait between retries.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Most alerts waiting per URL in `<state_dir>/alerts/`; when full the
    /// oldest is dropped and counted in `tollgate_alert_queue_dropped_total`.
    pub queue_max: usize,
    /// `runbook_url` annotation: this base plus `/<alertname>`; "" = none.
    pub runbook_base_url: String,
    /// `dashboard_url` annotation: Grafana's base URL; the link opens the
    /// pod drill-down dashboard for the pod; "" = none.
    pub dashboard_base_url: String,
    /// PEM file with CA certificates trusted for https URLs, in addition to
    /// the system's.
    pub ca_file: Option<PathBuf>,
    /// HTTP basic auth user; the password is read from
    /// `basic_auth_password_file` (not kept in the config).
    pub basic_auth_username: String,
    pub basic_auth_password_file: Option<PathBuf>,
    /// File holding a bearer token (sent as `Authorization: Bearer ...`).
    pub bearer_token_file: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            min_severity: Severity::Info,
            resend_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            queue_max: 10_000,
            runbook_base_url: "https://tollgate.io/runbooks".into(),
            dashboard_base_url: String::new(),
            ca_file: None,
            basic_auth_username: String::new(),
            basic_auth_password_file: None,
            bearer_token_file: None,
        }
    }
}

fn invalid(key: &'static str, value: impl ToString, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Whether `u` is an absolute http(s) URL with a host.
fn http_url(u: &str) -> bool {
    u.parse::<hyper::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    })
}

impl AlertsConfig {
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = self.urls.iter().find(|u| !http_url(u)) {
            return Err(invalid(
                "alerts.urls",
                format!("{u:?}"),
                "must be Alertmanager base URLs like \"http://alertmanager:9093\"",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(u) = self
            .urls
            .iter()
            .find(|u| !seen.insert(u.trim_end_matches('/')))
        {
            return Err(invalid(
                "alerts.urls",
                format!("{u:?}"),
                "listed twice: each URL gets every alert once",
            ));
        }
        for (key, u) in [
            ("alerts.runbook_base_url", &self.runbook_base_url),
            ("alerts.dashboard_base_url", &self.dashboard_base_url),
        ] {
            if !u.is_empty() && !http_url(u) {
                return Err(invalid(
                    key,
                    format!("{u:?}"),
                    "must be an http(s) URL, or \"\" for none",
                ));
            }
        }
        let d = |v: Duration| humantime::format_duration(v).to_string();
        if self.resend_interval < Duration::from_secs(1)
            || self.resend_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "alerts.resend_interval",
                d(self.resend_interval),
                "must be between 1s and 1h (and below Alertmanager's resolve_timeout)",
            ));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(300) {
            return Err(invalid(
                "alerts.timeout",
                d(self.timeout),
                "must be between 100ms and 5m",
            ));
        }
        if self.backoff_min < Duration::from_millis(10) || self.backoff_min > self.backoff_max {
            return Err(invalid(
                "alerts.backoff_min",
                d(self.backoff_min),
                "must be at least 10ms and at most alerts.backoff_max",
            ));
        }
        if self.backoff_max > Duration::from_secs(3600) {
            return Err(invalid(
                "alerts.backoff_max",
                d(self.backoff_max),
                "must be at most 1h",
            ));
        }
        if self.queue_max == 0 || self.queue_max > 1_000_000 {
            return Err(invalid(
                "alerts.queue_max",
                self.queue_max,
                "must be between 1 and 1000000",
            ));
        }
        let basic = !self.basic_auth_username.is_empty() || self.basic_auth_password_file.is_some();
        if basic && self.bearer_token_file.is_some() {
            return Err(invalid(
                "alerts.bearer_token_file",
                "set",
                "choose basic auth or a bearer token, not both",
            ));
        }
        if basic && (self.basic_auth_username.is_empty() || self.basic_auth_password_file.is_none())
        {
            return Err(invalid(
                "alerts.basic_auth_username",
                format!("{:?}", self.basic_auth_username),
                "basic auth needs both basic_auth_username and basic_auth_password_file",
            ));
        }
        for (key, f) in [
            ("alerts.ca_file", &self.ca_file),
            (
                "alerts.basic_auth_password_file",
                &self.basic_auth_password_file,
            ),
            ("alerts.bearer_token_file", &self.bearer_token_file),
        ] {
            if let Some(f) = f
                && let Err(e) = std::fs::metadata(f)
            {
                return Err(invalid(
                    key,
                    f.display(),
                    format!("cannot read it ({e}): give a readable file"),
                ));
            }
        }
        if self.enabled() {
            // Parses the CA file and reads the secrets now, so a bad file
            // stops the agent at start (exit 64), not at the first alert.
            use super::ClientError as E;
            super::HttpClient::new(self).map_err(|e| match &e {
                E::CaFile(p, why) => invalid("alerts.ca_file", p.display(), why.clone()),
                E::Secret(p, err) => invalid(
                    "alerts.bearer_token_file/basic_auth_password_file",
                    p.display(),
                    format!("cannot read it ({err})"),
                ),
                other => invalid("alerts", "TLS", other.to_string()),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AlertsConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused_at_start() {
        let f = std::env::temp_dir().join(format!("tg-not-a-ca-{}", std::process::id()));
        std::fs::write(&f, "hello").unwrap();
        let c = AlertsConfig {
            urls: vec!["https://am:9093".into()],
            ca_file: Some(f.clone()),
            ..AlertsConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("alerts.ca_file") && e.contains("no certificates"),
            "{e}"
        );
        std::fs::remove_file(f).unwrap();
    }

    #[test]
    fn defaults_are_valid_and_off() {
        let c = AlertsConfig::default();
        c.validate().unwrap();
        assert!(!c.enabled());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("urls = [\"alertmanager:9093\"]", "alerts.urls"),
            ("urls = [\"http://a:1\", \"http://a:1/\"]", "alerts.urls"),
            ("resend_interval = \"100ms\"", "alerts.resend_interval"),
            ("queue_max = 0", "alerts.queue_max"),
            (
                "backoff_min = \"2m\"\nbackoff_max = \"1m\"",
                "alerts.backoff_min",
            ),
            (
                "dashboard_base_url = \"grafana\"",
                "alerts.dashboard_base_url",
            ),
            ("ca_file = \"/nonexistent/ca.pem\"", "alerts.ca_file"),
            (
                "basic_auth_username = \"u\"\nbearer_token_file = \"/etc/hostname\"\nbasic_auth_password_file = \"/etc/hostname\"",
                "alerts.bearer_token_file",
            ),
            ("basic_auth_username = \"u\"", "alerts.basic_auth_username"),
        ] {
            let e = parse(text).validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = toml::from_str::<AlertsConfig>("url = []").unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
    }
}
