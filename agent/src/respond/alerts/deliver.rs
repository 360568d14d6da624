//! Delivery to one Alertmanager: POST /api/v2/alerts from the target's
//! on-disk queue, oldest first, in batches; retry with exponential backoff
//! until it answers 2xx. A 4xx other than 408/429 means Alertmanager
//! refuses the payload itself: those alerts are dropped, logged with the
//! answer and counted as rejected (retrying would never succeed).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::sync::Notify;

use super::{AlertsConfig, Pending};
use crate::respond::queue::{Backoff, DiskQueue, QueueError};

/// Alerts per POST.
pub const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("alerts.ca_file {0}: {1} (give a PEM file with CA certificates)")]
    CaFile(std::path::PathBuf, String),
    #[error("alerts: reading {0}: {1}")]
    Secret(std::path::PathBuf, std::io::Error),
    #[error("alerts: TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Counters of one target, read by the metrics collector.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Alerts Alertmanager acknowledged.
    pub delivered: AtomicU64,
    /// Failed POSTs (unreachable, timeout, 5xx, 408, 429).
    pub failures: AtomicU64,
    /// Alerts Alertmanager refused (4xx), dropped.
    pub rejected: AtomicU64,
    /// Queue length now.
    pub queued: AtomicU64,
    /// Alerts dropped from the full queue (this run).
    pub dropped: AtomicU64,
    /// Alerts that could not be written to the queue at all (disk errors).
    pub lost: AtomicU64,
}

/// One Alertmanager URL: its queue, a wake-up for its sender, its counters.
pub struct Target {
    pub url: String,
    pub queue: Mutex<DiskQueue<Pending>>,
    pub notify: Notify,
    pub stats: TargetStats,
}

impl Target {
    /// Enqueues, except a firing alert whose latest queued state is firing
    /// already (a re-send while Alertmanager is away adds nothing: it only
    /// needs the latest state once it is back). Resolutions always queue.
    pub fn enqueue(&self, p: &Pending) {
        let mut q = self.queue.lock().expect("queue lock");
        if p.firing
            && q.iter()
                .filter(|x| x.key == p.key)
                .last()
                .is_some_and(|x| x.firing)
        {
            return;
        }
        match q.push(p.clone()) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                alertmanager = %self.url,
                dropped = n,
                queued = q.len(),
                "alert queue full: dropped the oldest alerts (raise alerts.queue_max, or make Alertmanager reachable)"
            ),
            Err(e) => {
                tracing::warn!(alertmanager = %self.url, error = %e, "could not queue an alert; it is lost (counted in tollgate_alert_queue_dropped_total)");
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sync_stats(&q);
        drop(q);
        self.notify.notify_one();
    }

    fn sync_stats(&self, q: &DiskQueue<Pending>) {
        self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
        self.stats.dropped.store(q.dropped(), Ordering::Relaxed);
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// HTTP(S) client plus the Authorization header, shared by all targets.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Https, Full<Bytes>>,
    auth: Option<String>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(cfg: &AlertsConfig) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        // System roots; unreadable ones are skipped (the CA file may be all
        // that is needed).
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        if let Some(f) = &cfg.ca_file {
            use rustls::pki_types::{CertificateDer, pem::PemObject as _};
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(f)
                .map_err(|e| ClientError::CaFile(f.clone(), e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::CaFile(f.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientError::CaFile(
                    f.clone(),
                    "no certificates in it".into(),
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ClientError::CaFile(f.clone(), e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let read = |p: &std::path::PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .map_err(|e| ClientError::Secret(p.clone(), e))
        };
        let auth = if let Some(p) = &cfg.bearer_token_file {
            Some(format!("Bearer {}", read(p)?))
        } else if let Some(p) = &cfg.basic_auth_password_file {
            use base64::Engine as _;
            let pw = read(p)?;
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{pw}", cfg.basic_auth_username))
            ))
        } else {
            None
        };
        Ok(Self {
            client,
            auth,
            timeout: cfg.timeout,
        })
    }

    /// POSTs `body` to `<base>/api/v2/alerts`. Ok(status, answer).
    pub async fn post(&self, base: &str, body: Vec<u8>) -> Result<(u16, String), String> {
        let uri = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        let mut req = hyper::Request::post(&uri)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("tollgate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // The chain carries the useful part (connection refused,
                // certificate unknown, ...).
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(c) = src {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    src = c.source();
                }
                s
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            Ok((status, text))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("no answer within {:?} (alerts.timeout)", self.timeout))?
    }
}

/// Delivers `t`'s queue forever (until the task is dropped).
pub async fn run_target(t: Arc<Target>, http: HttpClient, cfg: AlertsConfig) {
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut last_warn: Option<Instant> = None;
    let mut outage_started: Option<Instant> = None;
    loop {
        let (seqs, body) = {
            let q = t.queue.lock().expect("queue lock");
            t.sync_stats(&q);
            let batch = q.peek(BATCH);
            let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
            let alerts: Vec<&super::PostableAlert> = batch.iter().map(|(_, p)| &p.alert).collect();
            (seqs, serde_json::to_vec(&alerts).expect("alerts serialize"))
        };
        if seqs.is_empty() {
            // Woken by enqueue; the timeout is only a safety net.
            let _ = tokio::time::timeout(Duration::from_secs(5), t.notify.notified()).await;
            continue;
        }
        let res = http.post(&t.url, body).await;
        let delivered = match res {
            Ok((s, _)) if (200..300).contains(&s) => {
                t.stats
                    .delivered
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                if let Some(since) = outage_started.take() {
                    tracing::info!(alertmanager = %t.url, alerts = seqs.len(), outage_s = since.elapsed().as_secs_f64(), failures = backoff.failures(), "Alertmanager reachable again; queued alerts delivered");
                }
                backoff.reset();
                true
            }
            Ok((s, answer)) if (400..500).contains(&s) && s != 408 && s != 429 => {
                t.stats
                    .rejected
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                tracing::error!(alertmanager = %t.url, status = s, answer = %answer.trim(), alerts = seqs.len(), "Alertmanager rejected alerts; dropped (a 4xx will not succeed on retry: check alerts.urls and the auth settings)");
                true
            }
            Ok((s, answer)) => {
                fail(
                    &t,
                    &cfg,
                    &mut last_warn,
                    &format!("HTTP {s}: {}", answer.trim()),
                );
                false
            }
            Err(e) => {
                fail(&t, &cfg, &mut last_warn, &e);
                false
            }
        };
        if delivered {
            let mut q = t.queue.lock().expect("queue lock");
            if let Err(e) = q.remove(&seqs) {
                tracing::warn!(alertmanager = %t.url, error = %e, "could not remove delivered alerts from the queue; they may be sent twice");
            }
            t.sync_stats(&q);
        } else {
            outage_started.get_or_insert_with(Instant::now);
            tokio::time::sleep(backoff.failure()).await;
        }
    }
}

/// Counts a failed POST; logs it at most once per resend interval, naming
/// the URL and the fix.
fn fail(t: &Target, cfg: &AlertsConfig, last_warn: &mut Option<Instant>, error: &str) {
    t.stats.failures.fetch_add(1, Ordering::Relaxed);
    if last_warn.is_none_or(|w| w.elapsed() >= cfg.resend_interval) {
        *last_warn = Some(Instant::now());
        let queued = t.queue.lock().map(|q| q.len()).unwrap_or(0);
        tracing::warn!(
            alertmanager = %t.url,
            error,
            queued,
            "cannot deliver alerts to Alertmanager; they stay queued on disk and are retried with backoff (check that Alertmanager runs at this URL, alerts.urls, and the TLS/auth settings)"
        );
    }
}
