//! A real DNS tunnel with iodine (Debian package `iodine`): `iodined` in a
//! peer namespace as the authoritative server of a test domain, `iodine`
//! in a pod pointed at it. IP packets the pod sends into its `dns0`
//! device leave as DNS queries to port 53 (forced DNS mode: `-r` skips the
//! raw UDP shortcut; the fragment size is fixed so no probing is needed).
//!
//! The tunnel uses 198.18.253.0/27 (the cluster range, outside the pod and
//! service subnets): the server is .1, the pod's end .2. Both processes
//! are killed by pid on drop (the pod's cgroup would kill the client too).

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::cmd::{self, Error, Result};
use crate::pod::Pod;
use crate::topology::Host;

pub const IODINE: &str = "/usr/sbin/iodine";
pub const IODINED: &str = "/usr/sbin/iodined";
/// The tunnel's server end (in the peer namespace).
pub const SERVER_TUN: Ipv4Addr = Ipv4Addr::new(198, 18, 253, 1);
/// The pod's end of the tunnel.
pub const CLIENT_TUN: Ipv4Addr = Ipv4Addr::new(198, 18, 253, 2);
/// The delegated test domain.
pub const DOMAIN: &str = "t.tollgate.test";
const PASSWORD: &str = "tollgate-evasion";

/// Why the tunnel cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    [IODINE, IODINED]
        .iter()
        .find(|b| !Path::new(b).is_file())
        .map(|b| format!("{b} not found: run `cargo xtask setup` (Debian package iodine)"))
}

/// A running tunnel: server and client processes, their logs.
#[derive(Debug)]
pub struct Tunnel {
    client: Option<Child>,
    server: Option<Child>,
    logs: PathBuf,
}

impl Tunnel {
    /// Starts iodined in `server`'s namespace (listening on `server.v4`
    /// port 53) and iodine in `pod`; returns once the client logs that the
    /// tunnel is up (`timeout` at most). Both stop after `lifetime` even if
    /// nobody kills them (`timeout(1)`).
    pub fn start(
        server: &Host,
        pod: &Pod,
        timeout: Duration,
        lifetime: Duration,
    ) -> Result<Tunnel> {
        let logs = std::env::temp_dir().join(format!("tg-iodine-{}", crate::unique_suffix()));
        fs::create_dir_all(&logs)
            .map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
        let life = lifetime.as_secs().max(1).to_string();
        let mut t = Tunnel {
            client: None,
            server: None,
            logs,
        };
        let srv_log = t.log_file("iodined.log")?;
        t.server = Some(
            server
                .command(&[
                    "timeout",
                    &life,
                    IODINED,
                    "-f",
                    "-c",
                    "-P",
                    PASSWORD,
                    "-l",
                    &server.v4.to_string(),
                    &format!("{SERVER_TUN}/27"),
                    DOMAIN,
                ])
                .stdin(Stdio::null())
                .stdout(srv_log.try_clone().map_err(|e| Error::io("dup log", e))?)
                .stderr(srv_log)
                .spawn()
                .map_err(|e| Error::io("starting iodined", e))?,
        );
        cmd::wait_until("iodined listening", timeout, || {
            t.log("iodined.log").contains("Listening to dns")
        })
        .map_err(|e| Error::Invalid(format!("{e}; iodined log:\n{}", t.log("iodined.log"))))?;
        let cli_log = t.log_file("iodine.log")?;
        t.client = Some(
            pod.command(&[
                "timeout",
                &life,
                IODINE,
                "-f",
                "-r",
                "-m",
                "1000",
                "-P",
                PASSWORD,
                &server.v4.to_string(),
                DOMAIN,
            ])
            .stdin(Stdio::null())
            .stdout(cli_log.try_clone().map_err(|e| Error::io("dup log", e))?)
            .stderr(cli_log)
            .spawn()
            .map_err(|e| Error::io("starting iodine in the pod", e))?,
        );
        cmd::wait_until("the iodine tunnel", timeout, || {
            t.log("iodine.log").contains("Connection setup complete")
        })
        .map_err(|e| {
            Error::Invalid(format!(
                "{e}; iodine log:\n{}\niodined log:\n{}",
                t.log("iodine.log"),
                t.log("iodined.log")
            ))
        })?;
        Ok(t)
    }

    fn log_file(&self, name: &str) -> Result<File> {
        let p = self.logs.join(name);
        File::create(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
    }

    /// The text of `iodine.log` or `iodined.log`.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.logs.join(name)).unwrap_or_default()
    }

    /// Stops the server, then the client (by pid). In this order no DNS
    /// answer is left in flight to a closed client socket (iodine's lazy
    /// mode always has a query pending at the server), which the pod's
    /// namespace would answer with an ICMP port unreachable from its
    /// control socket, not the pod's cgroup; the client's last queries get
    /// ICMP errors from the server's namespace instead.
    pub fn stop(&mut self) {
        for c in [self.server.take(), self.client.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            // `timeout` forwards the SIGTERM it gets to iodine(d).
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = cmd::wait_until("iodine exit", Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "iodine log:\n{}\niodined log:\n{}",
                self.log("iodine.log"),
                self.log("iodined.log")
            );
        }
        let _ = fs::remove_dir_all(&self.logs);
    }
}
