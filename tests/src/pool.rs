//! A stratum pool stub behind TLS, for miners that hide their protocol on
//! port 443 (the evasion tests and `cargo xtask eval`).
//!
//! The pool is `tg-signal stratum-pool --tls-cert --tls-key` started in a
//! peer namespace; its certificate comes from a private CA made with the
//! openssl CLI (Debian `openssl`) and names the pool's IP address, which
//! the client (`tg-signal stratum-client --tls-ca`) verifies.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, Error, Result};
use crate::topology::Host;
use crate::traffic::Sink;

/// A private CA and a server certificate for one IP, in a temp directory
/// removed on drop.
#[derive(Debug)]
pub struct PoolCerts {
    dir: PathBuf,
}

impl PoolCerts {
    /// Makes `ca.pem` and `srv.pem`/`srv.key` (P-256) for `ip`.
    pub fn new(ip: IpAddr) -> Result<PoolCerts> {
        let dir = std::env::temp_dir().join(format!("tg-pool-{}", crate::unique_suffix()));
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let certs = PoolCerts { dir };
        let sh = "set -e; cd \"$1\"; \
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=tollgate-test-pool-ca 2>/dev/null; \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr -subj \"/CN=$2\" 2>/dev/null; \
             printf 'subjectAltName=IP:%s\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' \"$2\" > ext; \
             openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null";
        let mut c = Command::new("sh");
        c.args(["-c", sh, "sh"]).arg(&certs.dir).arg(ip.to_string());
        cmd::run_cmd(c, std::time::Duration::from_secs(30)).map_err(|e| {
            Error::Invalid(format!(
                "making the pool's certificates with openssl ({e}): install openssl (`cargo xtask setup`)"
            ))
        })?;
        Ok(certs)
    }

    /// The CA the miner trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("srv.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("srv.key")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PoolCerts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts the TLS pool (`signal_bin` is tg-signal's path) in `host`'s
/// namespace on `listen`; it stops after `timeout_s` and prints
/// `requests N`. Returns once it listens.
pub fn start_tls_pool(
    host: &Host,
    signal_bin: &str,
    listen: SocketAddr,
    certs: &PoolCerts,
    timeout_s: u64,
) -> Result<Sink> {
    let mut c = host.command(&[
        signal_bin,
        "stratum-pool",
        "--listen",
        &listen.to_string(),
        "--timeout-s",
        &timeout_s.to_string(),
    ]);
    c.arg("--tls-cert")
        .arg(certs.cert())
        .arg("--tls-key")
        .arg(certs.key());
    Sink::start(c)
}
