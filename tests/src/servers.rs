//! Real Prometheus and Alertmanager (Debian's `prometheus` and
//! `prometheus-alertmanager` packages), run by the test on loopback with
//! their own config and storage in a temp directory. The packages' systemd
//! services are never used. Drop kills the process (by its pid) and removes
//! the directory.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    cmd::{self, Error, Result},
    http,
};

pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";
const READY: Duration = Duration::from_secs(60);

/// Why a test cannot run: the binary is missing (say how to get it).
pub fn missing(bin: &str) -> Option<String> {
    (!Path::new(bin).is_file()).then(|| {
        format!("{bin} not found: run `cargo xtask setup` (Debian packages prometheus, prometheus-alertmanager)")
    })
}

/// A temp directory removed on Drop.
#[derive(Debug)]
struct Dir(PathBuf);

impl Dir {
    fn new(what: &str) -> Result<Dir> {
        let p = std::env::temp_dir().join(format!("tg-{what}-{}", crate::unique_suffix()));
        fs::create_dir_all(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        Ok(Dir(p))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server process writing its output to `<dir>/log`.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut c: Command, log: PathBuf) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| Error::io("dup log", e))?;
        let what = cmd::describe(&c);
        let child = c
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("starting {what}"), e))?;
        Ok(Proc {
            child: Some(child),
            log,
        })
    }

    fn wait_ready(&mut self, addr: &str, path: &str) -> Result<()> {
        let mut exited = None;
        let r = cmd::wait_until(&format!("http://{addr}{path}"), READY, || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(s)) = c.try_wait()
            {
                exited = Some(s);
                return true;
            }
            http::get(addr, path).is_ok()
        });
        match (r, exited) {
            (Ok(()), None) => Ok(()),
            (_, Some(s)) => Err(Error::Invalid(format!(
                "server exited ({s}); log:\n{}",
                self.log_text()
            ))),
            (Err(e), None) => Err(Error::Invalid(format!("{e}; log:\n{}", self.log_text()))),
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (by pid), so the server saves its state; SIGKILL if it has
    /// not exited within 10 s.
    fn terminate(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = cmd::wait_until("server exit", Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
        }
        self.stop();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!(
                "server log {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A Prometheus scraping the given targets every `scrape`.
#[derive(Debug)]
pub struct Prometheus {
    proc: Proc,
    addr: String,
    _dir: Dir,
}

impl Prometheus {
    /// `targets`: host:port of /metrics endpoints (job "tollgate");
    /// `rule_file`: a Prometheus rule file (groups:) to load.
    pub fn start(targets: &[String], scrape: Duration, rule_file: Option<&str>) -> Result<Self> {
        let dir = Dir::new("prometheus")?;
        let port = http::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let secs = format!("{}ms", scrape.as_millis());
        let mut yml = format!(
            "global:\n  scrape_interval: {secs}\n  evaluation_interval: {secs}\n  external_labels: {{}}\n"
        );
        if let Some(rules) = rule_file {
            let p = dir.0.join("rules.yml");
            fs::write(&p, rules).map_err(|e| Error::io("writing rules", e))?;
            yml.push_str(&format!("rule_files:\n  - {}\n", p.display()));
        }
        yml.push_str(
            "scrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: [",
        );
        yml.push_str(
            &targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        yml.push_str("]\n");
        let cfg = dir.0.join("prometheus.yml");
        fs::write(&cfg, yml).map_err(|e| Error::io("writing prometheus.yml", e))?;
        let mut c = Command::new(PROMETHEUS_BIN);
        c.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut proc = Proc::spawn(c, dir.0.join("log"))?;
        proc.wait_ready(&addr, "/-/ready")?;
        Ok(Self {
            proc,
            addr,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// GET /api/v1/<path>; returns `data`.
    pub fn api(&self, path_and_query: &str) -> Result<serde_json::Value> {
        let body = http::get(&self.addr, &format!("/api/v1/{path_and_query}"))?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| Error::Invalid(format!("Prometheus answered non-JSON ({e}): {body}")))?;
        if v["status"] != "success" {
            return Err(Error::Invalid(format!("Prometheus: {body}")));
        }
        Ok(v["data"].clone())
    }

    /// Instant query; returns the result array (vector) or scalar.
    pub fn query(&self, expr: &str) -> Result<serde_json::Value> {
        let data = self.api(&format!("query?query={}", http::escape(expr)))?;
        Ok(data["result"].clone())
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// An Alertmanager routing everything to one webhook, quickly.
#[derive(Debug)]
pub struct Alertmanager {
    proc: Proc,
    addr: String,
    dir: Dir,
    /// Serves https with this web config (TLS, basic auth).
    tls: bool,
}

impl Alertmanager {
    /// Starts on a free port, notifications to `webhook_url`.
    pub fn start(webhook_url: &str) -> Result<Self> {
        Self::start_with_web_config(webhook_url, None)
    }

    /// [`Alertmanager::start`] with a `--web.config.file` (its text): TLS
    /// (`tls_server_config`) and `basic_auth_users`. Paths inside are
    /// absolute.
    pub fn start_with_web_config(webhook_url: &str, web: Option<&str>) -> Result<Self> {
        let dir = Dir::new("alertmanager")?;
        if let Some(w) = web {
            fs::write(dir.0.join("web.yml"), w).map_err(|e| Error::io("writing web.yml", e))?;
        }
        let addr = format!("127.0.0.1:{}", http::free_port()?);
        let yml = format!(
            "route:\n  receiver: test\n  group_by: ['alertname', 'pod']\n  group_wait: 100ms\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: '{webhook_url}'\n        send_resolved: true\n"
        );
        fs::write(dir.0.join("alertmanager.yml"), yml)
            .map_err(|e| Error::io("writing alertmanager.yml", e))?;
        let mut am = Self {
            proc: Proc {
                child: None,
                log: dir.0.join("log"),
            },
            addr,
            dir,
            tls: web.is_some_and(|w| w.contains("tls_server_config")),
        };
        am.restart()?;
        Ok(am)
    }

    /// Starts it again on the same port with the same storage (after
    /// [`Alertmanager::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop();
        let mut c = Command::new(ALERTMANAGER_BIN);
        c.arg(format!(
            "--config.file={}",
            self.dir.0.join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            self.dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address={}", self.addr))
        // No HA gossip: it would bind 0.0.0.0:9094.
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn");
        let web = self.dir.0.join("web.yml");
        if web.exists() {
            c.arg(format!("--web.config.file={}", web.display()));
        }
        self.proc = Proc::spawn(c, self.dir.0.join("log"))?;
        if self.tls {
            // No TLS client here: ready once it accepts connections.
            let addr = self.addr.clone();
            cmd::wait_until("alertmanager listening", READY, || {
                std::net::TcpStream::connect(&addr).is_ok()
            })
        } else {
            self.proc.wait_ready(&self.addr, "/-/ready")
        }
    }

    /// Stops it (SIGTERM, by pid: it saves its notification log, so a
    /// resolution after the restart is notified like before).
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// GET /api/v2/alerts.
    pub fn alerts(&self) -> Result<serde_json::Value> {
        let body = http::get(&self.addr, "/api/v2/alerts")?;
        serde_json::from_str(&body).map_err(|e| Error::Invalid(format!("{e}: {body}")))
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// The agent's address for /metrics, from its log line (tests bind port 0).
pub fn agent_metrics_addr(agent: &crate::agent::Agent) -> Result<String> {
    let mut addr = None;
    cmd::wait_until("metrics address in the agent log", READY, || {
        addr = agent
            .log()
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned());
        addr.is_some()
    })?;
    Ok(addr.expect("set when the wait succeeded"))
}

/// The value of the first sample of `/metrics` text whose line starts with
/// `prefix` (metric name plus the start of its labels).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
