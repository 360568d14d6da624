//! `tg-eval`: Tollgate's evaluation (`cargo xtask eval`). Labelled
//! scenarios run as real processes in netns+cgroup pods against the real
//! agent (attached at the cgroup v2 root, detection on, 1 s windows); the
//! runner reads the agent's findings (`GET /v1/findings`) and prints, per
//! scenario, whether and by which detector it was detected and how fast,
//! then precision, recall and false alerts per benign pod-hour.
//!
//! `--replay` runs the long-horizon part instead: `tollgate synth` records
//! hours of windows with one attack each, `tollgate replay` runs them
//! through the same engine in seconds.
#![forbid(unsafe_code)]

mod replay;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use tollgate::{api, detect::Finding};
use tollgate_tests::{
    agent::{Agent, TestPinDir},
    pod::Pod,
    topology::Topology,
    traffic::Sink,
};

#[derive(Parser, Debug)]
#[command(name = "tg-eval", about = "Tollgate's labelled-scenario evaluation")]
struct Cli {
    /// The short version (the test suite's): fewer attacks, shorter phases.
    #[arg(long)]
    short: bool,
    /// Long-horizon replay of synthetic recordings instead of live pods.
    #[arg(long)]
    replay: bool,
    /// Longest wait for the classes to learn, seconds.
    #[arg(long, default_value_t = 120)]
    learn_s: u64,
    /// Detection phase, seconds.
    #[arg(long, default_value_t = 40)]
    detect_s: u64,
}

/// A child process killed (by PID, via its handle) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> String {
    let exe = std::env::current_exe().expect("own path");
    exe.with_file_name(name).display().to_string()
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// One pod's role.
struct Role {
    pod: &'static str,
    class: &'static str,
    /// None: benign.
    attack: Option<&'static str>,
}

const ROLES: [Role; 6] = [
    Role {
        pod: "train1",
        class: "training",
        attack: None,
    },
    Role {
        pod: "train2",
        class: "training",
        attack: None,
    },
    Role {
        pod: "svc1",
        class: "service",
        attack: None,
    },
    Role {
        pod: "upload",
        class: "training",
        attack: Some("bulk upload (40 MB over TCP)"),
    },
    Role {
        pod: "stratum",
        class: "training",
        attack: Some("stratum miner vs local pool stub"),
    },
    Role {
        pod: "dnstun",
        class: "training",
        attack: Some("DNS tunnel (random base32 names)"),
    },
];

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = if cli.replay {
        replay::run()
    } else {
        live(&cli)
    };
    match r {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("tg-eval: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn live(cli: &Cli) -> Result<bool, String> {
    let traffic = sibling("tg-traffic");
    let signal = sibling("tg-signal");
    let roles: Vec<&Role> = ROLES
        .iter()
        .filter(|r| !cli.short || r.attack.is_none() || r.pod != "dnstun")
        .collect();
    let mut b = Topology::builder();
    for r in &roles {
        b = b.pod(r.pod);
    }
    let topo = b.build().map_err(|e| format!("topology: {e}"))?;
    let pods: Vec<&Pod> = (0..roles.len()).map(|i| topo.pod(i)).collect();
    let state = std::env::temp_dir().join(format!("tollgate-eval-{}", std::process::id()));
    let mut rules = String::new();
    for (r, p) in roles.iter().zip(&pods) {
        rules.push_str(&format!(
            "[[classes.path_rules]]\nglob = \"{}\"\nclass = \"{}\"\n",
            p.cgroup.rel_path(),
            r.class
        ));
    }
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[network]\ninternal_cidrs = [\"198.18.0.0/16\", \"2001:db8:c::/48\"]\n[inventory]\nmode = \"standalone\"\n[classes]\nnames = [\"training\", \"service\"]\n{rules}[detect]\nwindow = \"1s\"\nlearning_windows = 8\nlearning_duration = \"8s\"\n",
        state.display()
    );
    let pins = TestPinDir::new().map_err(|e| e.to_string())?;
    let agent = Agent::start(pins.path(), &config).map_err(|e| e.to_string())?;
    let socket = api::default_socket(pins.path());
    let net = topo.internet().v4;
    let svc = topo.service().v4;
    let sink = |host: &tollgate_tests::topology::Host, argv: &[&str]| {
        Sink::start(host.command(argv)).map_err(|e| e.to_string())
    };
    let _metrics = sink(
        topo.internet(),
        &[
            &traffic,
            "udp-sink",
            "--listen",
            &format!("{net}:9002"),
            "--count",
            "100000000",
            "--timeout-s",
            "900",
        ],
    )?;
    let _svc_sink = sink(
        topo.service(),
        &[
            &traffic,
            "udp-sink",
            "--listen",
            &format!("{svc}:9003"),
            "--count",
            "100000000",
            "--timeout-s",
            "900",
        ],
    )?;
    let _dns = sink(
        topo.internet(),
        &[
            &traffic,
            "udp-sink",
            "--listen",
            &format!("{net}:53"),
            "--count",
            "100000000",
            "--timeout-s",
            "900",
        ],
    )?;
    let _upload_sink = sink(
        topo.internet(),
        &[
            &traffic,
            "tcp-sink",
            "--listen",
            &format!("{net}:9100"),
            "--timeout-s",
            "900",
        ],
    )?;
    let _pool = sink(
        topo.internet(),
        &[
            &signal,
            "stratum-pool",
            "--listen",
            &format!("{net}:3333"),
            "--timeout-s",
            "900",
        ],
    )?;

    // Benign behaviour, in every pod for the whole run: training pods push
    // small metrics and resolve a few names; the service answers (small
    // internal datagrams).
    let mut background = Vec::new();
    for (r, p) in roles.iter().zip(&pods) {
        let argv: Vec<String> = if r.class == "service" {
            vec![
                traffic.clone(),
                "udp-send".into(),
                "--to".into(),
                format!("{svc}:9003"),
                "--count".into(),
                "20000".into(),
                "--size".into(),
                "300".into(),
                "--interval-ms".into(),
                "50".into(),
                "--timeout-s".into(),
                "900".into(),
            ]
        } else {
            vec![
                traffic.clone(),
                "udp-send".into(),
                "--to".into(),
                format!("{net}:9002"),
                "--count".into(),
                "9000".into(),
                "--size".into(),
                "200".into(),
                "--interval-ms".into(),
                "100".into(),
                "--timeout-s".into(),
                "900".into(),
            ]
        };
        background.push(Proc(p.spawn(&argv).map_err(|e| e.to_string())?));
        if r.class == "training" {
            background.push(Proc(
                p.spawn(&[
                    &signal,
                    "dns",
                    "--to",
                    &format!("{net}:53"),
                    "--count",
                    "600",
                    "--prefix",
                    "storage",
                    "--suffix",
                    "corp.example",
                    "--interval-ms",
                    "500",
                ])
                .map_err(|e| e.to_string())?,
            ));
        }
    }
    let learn_start = Instant::now();
    let deadline = learn_start + Duration::from_secs(cli.learn_s);
    while Instant::now() < deadline {
        let log = agent.log();
        let learned = |c: &str| {
            log.lines().any(|l| {
                l.contains("class baseline learned") && l.contains(&format!("class=\"{c}\""))
            })
        };
        if learned("training") && learned("service") {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("learning took {:.1}s", learn_start.elapsed().as_secs_f64());

    // Attacks, all at once, each in its own pod.
    let t0 = Instant::now();
    let mut attacks = Vec::new();
    let (share_tx, share_rx) = mpsc::channel::<u128>();
    for (r, p) in roles.iter().zip(&pods) {
        let Some(_) = r.attack else { continue };
        let argv: Vec<String> = match r.pod {
            "upload" => vec![
                traffic.clone(),
                "tcp-send".into(),
                "--to".into(),
                format!("{net}:9100"),
                "--bytes".into(),
                "40000000".into(),
            ],
            "stratum" => vec![
                signal.clone(),
                "stratum-client".into(),
                "--to".into(),
                format!("{net}:3333"),
                "--shares".into(),
                "20".into(),
                "--interval-ms".into(),
                "500".into(),
                "--timeout-s".into(),
                "60".into(),
            ],
            _ => vec![
                signal.clone(),
                "dns".into(),
                "--to".into(),
                format!("{net}:53"),
                "--count".into(),
                "3000".into(),
                "--random-len".into(),
                "52".into(),
                "--suffix".into(),
                "t.tunnel.example".into(),
                "--qtype".into(),
                "16".into(),
                "--interval-ms".into(),
                "10".into(),
            ],
        };
        let mut c: Command = p.command(&argv);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().map_err(|e| e.to_string())?;
        if r.pod == "stratum"
            && let Some(out) = child.stdout.take()
        {
            let tx = share_tx.clone();
            thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(ms) = l.strip_prefix("first-share ").and_then(|v| v.parse().ok()) {
                        let _ = tx.send(ms);
                    }
                }
            });
        }
        attacks.push(Proc(child));
    }
    // First finding per pod: (detector, seconds since attack start, unix ms).
    let mut first: BTreeMap<u64, (String, f64, u128)> = BTreeMap::new();
    let mut keys: BTreeMap<(String, u64), ()> = BTreeMap::new();
    let end = t0 + Duration::from_secs(cli.detect_s);
    while Instant::now() < end {
        for f in api::fetch_findings(&socket).unwrap_or_default() {
            note(&f, t0, &mut first, &mut keys);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let phase_h = t0.elapsed().as_secs_f64() / 3600.0;
    let first_share = share_rx.try_recv().ok();
    drop(attacks);
    drop(background);

    println!(
        "\n{:<10} {:<9} {:<38} {:<10} {:<22} time to detect",
        "pod", "label", "scenario", "detected", "detector"
    );
    let (mut tp, mut attacks_n, mut detected_n, mut benign_alerts, mut benign_pods) =
        (0, 0, 0, 0, 0);
    for (r, p) in roles.iter().zip(&pods) {
        let id = p.cgroup.id();
        let n_keys = keys.keys().filter(|(_, c)| *c == id).count();
        let label = if r.attack.is_some() {
            "attack"
        } else {
            "benign"
        };
        let scenario = r.attack.unwrap_or(match r.class {
            "service" => "service answering requests",
            _ => "training job pushing metrics",
        });
        let (det, who, ttd) = match first.get(&id) {
            Some((d, s, ms)) => {
                let ttd = if r.pod == "stratum"
                    && let Some(fs) = first_share
                {
                    let d = (*ms as f64 - fs as f64) / 1000.0;
                    let rel = if d < 0.0 { "before" } else { "after" };
                    format!("{s:.1}s after start, {:.1}s {rel} the first share", d.abs())
                } else {
                    format!("{s:.1}s")
                };
                ("yes", d.clone(), ttd)
            }
            None => ("no", "-".into(), "-".into()),
        };
        if r.attack.is_some() {
            attacks_n += 1;
            tp += n_keys;
            detected_n += usize::from(first.contains_key(&id));
        } else {
            benign_pods += 1;
            benign_alerts += n_keys;
        }
        println!(
            "{:<10} {:<9} {:<38} {:<10} {:<22} {}",
            p.name, label, scenario, det, who, ttd
        );
    }
    let all = tp + benign_alerts;
    let precision = if all == 0 {
        1.0
    } else {
        tp as f64 / all as f64
    };
    println!(
        "\nprecision {precision:.2} ({tp} of {all} findings on attack pods), recall {:.2} ({detected_n} of {attacks_n} attacks), false alerts per benign pod-hour {:.1} ({benign_alerts} over {benign_pods} pods x {:.3} h)",
        detected_n as f64 / attacks_n.max(1) as f64,
        benign_alerts as f64 / (benign_pods as f64 * phase_h).max(1e-9),
        phase_h
    );
    let _ = std::fs::remove_dir_all(&state);
    Ok(detected_n == attacks_n && benign_alerts == 0)
}

/// Records a finding: its (detector, cgroup) key, and the pod's first.
fn note(
    f: &Finding,
    t0: Instant,
    first: &mut BTreeMap<u64, (String, f64, u128)>,
    keys: &mut BTreeMap<(String, u64), ()>,
) {
    let id = f.subject.cgroup_id;
    keys.insert((f.detector.as_str().to_owned(), id), ());
    first.entry(id).or_insert_with(|| {
        (
            f.detector.as_str().to_owned(),
            t0.elapsed().as_secs_f64(),
            unix_ms(),
        )
    });
}
