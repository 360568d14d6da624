//! Synthetic recorded windows: hours of benign behaviour for four classes
//! (training, data prep = `pipeline`, notebook, service) with attacks
//! injected into one pod, deterministic from a seed. Tests and
//! `tollgate synth` use it so hours of behaviour replay in seconds.
//!
//! Addresses are documentation ranges only (203.0.113.0/24, 2001:db8::/32
//! for the internet, 198.18.0.0/16 for the cluster); nothing is sent.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::Subject;
use crate::collect::{Features, PeerWindow, WindowSample};

pub const CLASSES: [&str; 4] = ["training", "pipeline", "notebook", "service"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Bulk upload of the dataset to a known external prefix.
    Volume,
    /// Upload to a prefix the class never used.
    NewDestination,
    /// A few KB/s on top of normal traffic to a known prefix, for hours.
    SlowDrip,
    /// Copying the dataset to shared storage.
    StorageCopy,
    /// Reading the dataset and sending about as much out.
    ReadThenSend,
    /// iodine-style DNS tunnel.
    DnsTunnel,
    /// Stratum miner (kernel marker in its first window).
    Stratum,
    /// CPU miner behind TLS on 443: CPU at the limit, one quiet peer.
    CpuMiner,
    /// Miner on a well-known pool port (no stratum marker: TLS stratum).
    PoolPort,
}

impl AttackKind {
    /// The class whose first pod the attack runs in by default.
    pub fn default_class(self) -> &'static str {
        match self {
            AttackKind::DnsTunnel | AttackKind::StorageCopy => "notebook",
            AttackKind::CpuMiner | AttackKind::PoolPort | AttackKind::Stratum => "service",
            _ => "training",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attack {
    pub kind: AttackKind,
    pub class: String,
    /// Offset from the start of the recording.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub start: SystemTime,
    pub window: Duration,
    pub duration: Duration,
    pub pods_per_class: usize,
    pub seed: u64,
    pub attacks: Vec<Attack>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            // 2026-01-01T00:00:00Z: fixed, so output is reproducible.
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            window: Duration::from_secs(10),
            duration: Duration::from_secs(6 * 3600),
            pods_per_class: 3,
            seed: 1,
            attacks: Vec::new(),
        }
    }
}

/// The cgroup id of pod `i` of a class.
pub fn cgroup_id(class: &str, i: usize) -> u64 {
    let c = CLASSES.iter().position(|c| *c == class).unwrap_or(9) as u64;
    10_000 + c * 100 + i as u64
}

/// splitmix64: small, deterministic, good enough for jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

struct Win<'a> {
    secs: f64,
    start: SystemTime,
    rec_start: SystemTime,
    f: &'a mut Features,
    peers: &'a mut Vec<PeerWindow>,
}

impl Win<'_> {
    /// Adds traffic with one peer at these rates (bytes/s).
    fn peer(&mut self, addr: &str, port: u16, tx: f64, rx: f64, long_lived: bool) {
        let a = ip(addr);
        let external = !addr.starts_with("198.18.");
        let (tx, rx) = ((tx * self.secs) as u64, (rx * self.secs) as u64);
        if external {
            self.f.egress_external_bytes += tx;
            self.f.egress_external_packets += tx / 1400 + 1;
        } else {
            self.f.egress_internal_bytes += tx;
            self.f.egress_internal_packets += tx / 1400 + 1;
        }
        self.f.ingress_bytes += rx;
        self.peers.push(PeerWindow {
            addr: a,
            port,
            proto: if port == 53 { "udp" } else { "tcp" }.into(),
            external,
            tx_bytes: tx,
            rx_bytes: rx,
            tx_packets: tx / 1400 + 1,
            rx_packets: rx / 1400 + 1,
            first_seen: Some(if long_lived {
                self.rec_start
            } else {
                self.start
            }),
        });
    }

    fn dns(&mut self, qps: f64, len: f64, entropy: f64) {
        self.f.dns_queries += (qps * self.secs).round() as u64;
        self.f.dns_mean_name_len = len;
        self.f.dns_label_entropy = entropy;
    }
}

/// Benign behaviour of pod `i` of `class` in the window starting `t`
/// seconds into the recording.
fn benign(class: &str, i: usize, t: u64, rng: &mut Rng, win: &mut Win<'_>) {
    let j = |rng: &mut Rng| rng.range(0.8, 1.2);
    let w = win.secs.max(1.0) as u64;
    // Slow swing so quantiles see variation.
    let swing = 1.0 + 0.3 * ((t as f64 / 3600.0) * 0.7 + i as f64).sin();
    let cores = win.f.cpu_limit_cores.unwrap_or(1.0);
    match class {
        "training" => {
            win.f.cpu_seconds = cores * win.secs * rng.range(0.85, 0.99);
            win.f.storage_read_bytes = (20e6 * j(rng) * swing * win.secs) as u64;
            // A checkpoint every 10 minutes.
            if (t + i as u64 * 70) % 600 < w {
                win.f.storage_write_bytes = (40e6 * j(rng) * win.secs) as u64;
            }
            win.peer("203.0.113.10", 443, 2000.0 * j(rng), 500.0, true);
            win.peer(
                &format!("198.18.1.{}", 10 + (i + 1) % 3),
                29500,
                1e6 * j(rng),
                1e6,
                true,
            );
            win.dns(0.2 * j(rng), 18.0, 2.3);
        }
        "pipeline" => {
            win.f.cpu_seconds = cores * win.secs * rng.range(0.4, 0.8);
            win.f.storage_read_bytes = (30e6 * j(rng) * swing * win.secs) as u64;
            win.f.storage_write_bytes = (25e6 * j(rng) * swing * win.secs) as u64;
            win.peer("198.18.0.20", 9000, 5e3 * j(rng), 1e3, true);
            win.dns(0.1 * j(rng), 20.0, 2.4);
        }
        "notebook" => {
            // A package-install burst of 2 minutes every 30 minutes.
            if (t + i as u64 * 500) % 1800 < 120 {
                win.f.cpu_seconds = cores * win.secs * rng.range(0.3, 1.0);
                let mirror = format!("203.0.113.{}", 50 + rng.next() % 10);
                win.peer(&mirror, 443, 20e3 * j(rng), 5e6 * j(rng), false);
                win.peer("2001:db8:1::443", 443, 10e3 * j(rng), 2e6 * j(rng), false);
                win.f.new_connections += (2.0 * win.secs * j(rng)) as u64;
                win.dns(2.0 * j(rng), 22.0 * j(rng), 2.8);
                win.f.storage_write_bytes = (3e6 * j(rng) * win.secs) as u64;
            } else {
                win.f.cpu_seconds = cores * win.secs * rng.range(0.01, 0.2);
                win.peer("198.18.0.30", 8888, 1e3 * j(rng), 3e3, true);
                win.dns(0.05 * j(rng), 20.0, 2.5);
            }
        }
        _ => {
            win.f.cpu_seconds = cores * win.secs * rng.range(0.2, 0.6) * swing;
            win.f.storage_read_bytes = (400e3 * j(rng) * swing * win.secs) as u64;
            for k in 0..(3 + rng.next() % 5) {
                let client = format!("203.0.113.{}", 100 + (rng.next() % 100));
                let port = 40000 + k as u16;
                win.peer(&client, port, 100e3 * j(rng) * swing, 20e3 * j(rng), false);
            }
            win.f.new_connections += (1.0 * win.secs * j(rng)) as u64;
            win.dns(0.5 * j(rng), 19.0, 2.4);
        }
    }
}

fn inject(a: &Attack, win: &mut Win<'_>, rng: &mut Rng, first: bool) {
    let cores = win.f.cpu_limit_cores.unwrap_or(1.0);
    match a.kind {
        AttackKind::Volume => win.peer("203.0.113.200", 443, 20e6, 50e3, false),
        AttackKind::NewDestination => win.peer("2001:db8:bad::7", 443, 2e6, 20e3, false),
        AttackKind::SlowDrip => win.peer("203.0.113.11", 443, 8e3, 200.0, true),
        AttackKind::StorageCopy => {
            win.f.storage_write_bytes += (400e6 * win.secs) as u64;
            win.f.storage_read_bytes += (400e6 * win.secs) as u64;
        }
        AttackKind::ReadThenSend => {
            win.f.storage_read_bytes += (10e6 * win.secs) as u64;
            win.peer("203.0.113.201", 443, 10.5e6, 30e3, false);
        }
        AttackKind::DnsTunnel => {
            win.peer("198.18.0.10", 53, 30.0 * 150.0, 30.0 * 200.0, true);
            win.dns(30.0 * rng.range(0.9, 1.1), 150.0, 4.6);
        }
        AttackKind::Stratum | AttackKind::CpuMiner | AttackKind::PoolPort => {
            win.f.cpu_seconds = cores * win.secs * rng.range(0.97, 1.0);
            // The miner is the pod's only traffic besides its own service.
            win.peers.retain(|p| !p.external);
            win.f.egress_external_bytes = 0;
            win.f.egress_external_packets = 0;
            let (addr, port) = match a.kind {
                AttackKind::CpuMiner => ("203.0.113.90", 443),
                _ => ("203.0.113.77", 3333),
            };
            win.peer(addr, port, 300.0, 200.0, true);
            if a.kind == AttackKind::Stratum && first {
                win.f.stratum_markers = 2;
            }
            if let Some(p) = win.peers.last_mut() {
                p.first_seen = Some(win.rec_start);
            }
        }
    }
}

/// Every pod's windows, ordered by time then cgroup id.
pub fn generate(spec: &Spec) -> Vec<WindowSample> {
    let mut rng = Rng(spec.seed);
    let n = (spec.duration.as_secs_f64() / spec.window.as_secs_f64()) as u64;
    let mut out = Vec::with_capacity((n as usize) * CLASSES.len() * spec.pods_per_class);
    for w in 0..n {
        let start = spec.start + spec.window * w as u32;
        let end = start + spec.window;
        for class in CLASSES {
            for i in 0..spec.pods_per_class {
                let mut f = Features {
                    cpu_limit_cores: Some(match class {
                        "training" => 4.0,
                        "pipeline" => 2.0,
                        _ => 1.0,
                    }),
                    ..Features::default()
                };
                let mut peers = Vec::new();
                let mut win = Win {
                    secs: spec.window.as_secs_f64(),
                    start,
                    rec_start: spec.start,
                    f: &mut f,
                    peers: &mut peers,
                };
                let t = (spec.window * w as u32).as_secs();
                benign(class, i, t, &mut rng, &mut win);
                for a in &spec.attacks {
                    let from = spec.start + a.at;
                    if i == 0 && a.class == class && start >= from && start < from + a.duration {
                        inject(a, &mut win, &mut rng, start < from + spec.window);
                    }
                }
                f.distinct_destinations = peers.len() as u64;
                peers.sort_by_key(|p| std::cmp::Reverse(p.tx_bytes));
                out.push(WindowSample {
                    subject: Subject {
                        cgroup_id: cgroup_id(class, i),
                        cgroup_path: Some(format!("/kubepods/synth/{class}-{i}")),
                        namespace: Some("synth".into()),
                        pod: Some(format!("{class}-{i}")),
                        container: Some("main".into()),
                        class: class.into(),
                    },
                    start,
                    end,
                    features: f,
                    peers,
                });
            }
        }
    }
    out
}
