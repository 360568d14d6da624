//! The traffic side of the bench: two namespaces joined by a veth, an iperf3
//! server in one and bounded iperf3 clients in the other. Only these
//! namespaces and addresses ever carry bench traffic.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

// DESIGN.md: 198.18.0.0/16, only inside namespaces the test made.
const NS_CLIENT: &str = "tgb-a";
const NS_SERVER: &str = "tgb-b";
const ADDR_CLIENT: &str = "198.18.200.1/24";
const ADDR_SERVER: &str = "198.18.200.2/24";
const SERVER_IP: &str = "198.18.200.2";
const PORT: &str = "5201";

/// Receiver-side TCP goodput of one iperf3 run, in bits per second.
pub fn tcp_bits_per_second(seconds: u32) -> Result<f64> {
    let v = iperf3_client(seconds, &[])?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 TCP JSON lacks end.sum_received.bits_per_second")
}

/// Packets per second that reached the receiver when the sender sends 64-byte
/// datagrams as fast as it can. Received = sent - lost (iperf3 3.12 reports
/// the sender's count in `packets` even in `sum_received`).
pub fn udp_packets_per_second(seconds: u32) -> Result<f64> {
    udp_run(seconds).map(|r| r.received_per_second)
}

/// One 64-byte UDP run.
pub struct UdpRun {
    /// Datagrams the sender sent.
    pub sent: f64,
    /// Datagrams that reached the receiver, per second.
    pub received_per_second: f64,
}

/// See [`udp_packets_per_second`].
pub fn udp_run(seconds: u32) -> Result<UdpRun> {
    let v = iperf3_client(seconds, &["-u", "-b", "0", "-l", "64"])?;
    let end = &v["end"];
    let sum = if end["sum_received"].is_object() {
        &end["sum_received"]
    } else {
        &end["sum"]
    };
    let field = |k: &str| {
        sum[k]
            .as_f64()
            .with_context(|| format!("iperf3 UDP JSON lacks end.sum.{k}"))
    };
    let (packets, lost, secs) = (field("packets")?, field("lost_packets")?, field("seconds")?);
    if secs <= 0.0 {
        bail!("iperf3 UDP run reported {secs} seconds");
    }
    Ok(UdpRun {
        sent: packets,
        received_per_second: (packets - lost) / secs,
    })
}

fn iperf3_client(seconds: u32, extra: &[&str]) -> Result<Value> {
    let mut c = Command::new("ip");
    c.args([
        "netns", "exec", NS_CLIENT, "iperf3", "-c", SERVER_IP, "-p", PORT, "-J", "-t",
    ])
    .arg(seconds.to_string())
    .args(extra);
    // iperf3 can hang on a lost control connection; a fixed margin over the
    // test length keeps every run, and so the whole bench, bounded.
    let limit = Duration::from_secs(u64::from(seconds) + 15);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting iperf3 client")?;
    // Drain stdout on a thread so a large JSON report cannot block the child
    // on a full pipe while we poll for its exit.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let status = wait_bounded(&mut child, limit)?;
    let out = reader
        .join()
        .expect("reader thread does not panic")
        .context("reading iperf3 output")?;
    let Some(status) = status else {
        bail!("iperf3 client did not finish within {limit:?}: {c:?}");
    };
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("iperf3 printed no JSON ({status})"))?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3 client failed: {err}");
    }
    if !status.success() {
        bail!("iperf3 client exited with {status}");
    }
    Ok(v)
}

/// Waits up to `limit` for `child`; on timeout kills it (by PID) and returns None.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait()?;
    Ok(None)
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::check(Command::new("ip").args(args))
}

/// The two namespaces and the veth between them; Drop deletes them (which
/// also deletes the veth).
pub struct Netns {
    created: Vec<&'static str>,
}

impl Netns {
    pub fn create() -> Result<Self> {
        let mut net = Netns {
            created: Vec::new(),
        };
        for ns in [NS_CLIENT, NS_SERVER] {
            if Path::new("/run/netns").join(ns).exists() {
                eprintln!("bench: removing namespace {ns} left by an earlier run");
                ip(&["netns", "del", ns])?;
            }
            ip(&["netns", "add", ns])?;
            net.created.push(ns);
        }
        ip(&[
            "link", "add", "tgb-va", "netns", NS_CLIENT, "type", "veth", "peer", "name", "tgb-vb",
            "netns", NS_SERVER,
        ])?;
        for (ns, dev, addr) in [
            (NS_CLIENT, "tgb-va", ADDR_CLIENT),
            (NS_SERVER, "tgb-vb", ADDR_SERVER),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("bench: cleanup: {e:#}");
            }
        }
    }
}

/// One long-lived iperf3 server in the server namespace. `ip netns exec`
/// execs iperf3 in place, so the child's PID is iperf3's own.
pub struct Server(Child);

impl Server {
    pub fn start() -> Result<Self> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NS_SERVER, "iperf3", "-s", "-p", PORT]);
        eprintln!("+ {c:?}");
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 server")?;
        let mut server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let filter = format!("sport = :{PORT}");
            let out = Command::new("ip")
                .args(["netns", "exec", NS_SERVER, "ss", "-ltnH", &filter])
                .output()
                .context("running ss")?;
            if !out.stdout.is_empty() {
                return Ok(server);
            }
            if let Some(st) = server.0.try_wait()? {
                bail!("iperf3 server exited with {st} before listening");
            }
            if Instant::now() > deadline {
                bail!("iperf3 server not listening on {SERVER_IP}:{PORT} after 5 s");
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
