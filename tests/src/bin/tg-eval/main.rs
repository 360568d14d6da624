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
mod report;
mod scenarios;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use tollgate::api;
use tollgate_tests::{
    agent::{Agent, TestPinDir},
    pod::Pod,
    storage::{Bindfs, ScratchDir},
    topology::Topology,
    traffic::Sink,
};

#[derive(Parser, Debug)]
#[command(name = "tg-eval", about = "Tollgate's labelled-scenario evaluation")]
struct Cli {
    /// The short version (the test suite's): a smaller dataset (24 MiB).
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
    /// What the pod does (its benign behaviour, or the attack).
    scenario: &'static str,
    /// None: benign.
    attack: Option<Attack>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    Upload,
    StorageCopy,
    Drip,
    Stratum,
    TlsMiner,
    DnsTunnel,
}

const fn benign(pod: &'static str, class: &'static str, scenario: &'static str) -> Role {
    Role {
        pod,
        class,
        scenario,
        attack: None,
    }
}

const fn attack(pod: &'static str, class: &'static str, scenario: &'static str, a: Attack) -> Role {
    Role {
        pod,
        class,
        scenario,
        attack: Some(a),
    }
}

const ROLES: [Role; 11] = [
    benign("train1", "training", "training job: reads dataset, metrics"),
    benign("train2", "training", "training job: reads dataset, metrics"),
    benign("prep1", "pipeline", "data prep: reads and writes storage"),
    benign("nb1", "notebook", "notebook: package-install bursts"),
    benign("svc1", "service", "service answering requests"),
    attack(
        "upload",
        "training",
        "bulk HTTP upload of the dataset (curl)",
        Attack::Upload,
    ),
    attack(
        "storcopy",
        "training",
        "dataset copied to shared storage",
        Attack::StorageCopy,
    ),
    attack(
        "drip",
        "training",
        "slow drip, 20 KB/s to a known sink",
        Attack::Drip,
    ),
    attack(
        "stratum",
        "training",
        "stratum miner vs local pool stub",
        Attack::Stratum,
    ),
    attack(
        "tlsminer",
        "notebook",
        "CPU miner behind TLS on 443",
        Attack::TlsMiner,
    ),
    attack(
        "dnstun",
        "training",
        "DNS tunnel (iodine)",
        Attack::DnsTunnel,
    ),
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

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn live(cli: &Cli) -> Result<bool, String> {
    let traffic = sibling("tg-traffic");
    let signal = sibling("tg-signal");
    let iodine = scenarios::have_iodine();
    if !iodine {
        println!(
            "iodine/iodined not installed (`cargo xtask setup` installs Debian iodine): the DNS tunnel uses tg-signal's random base32 names instead"
        );
    }
    let roles: Vec<&Role> = ROLES.iter().collect();
    let mut b = Topology::builder();
    for r in &roles {
        b = b.pod(r.pod);
    }
    let topo = b.build().map_err(|e| format!("topology: {e}"))?;
    let pods: Vec<&Pod> = (0..roles.len()).map(|i| topo.pod(i)).collect();
    let state = std::env::temp_dir().join(format!("tollgate-eval-{}", std::process::id()));
    std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    // Shared storage: a FUSE (bindfs) mount the agent watches by path.
    let scratch = ScratchDir::new().map_err(|e| e.to_string())?;
    let backing = scratch.dir("backing").map_err(|e| e.to_string())?;
    let mnt = scratch.path().join("shared");
    let storage = Bindfs::mount(&backing, &mnt).map_err(|e| e.to_string())?;
    let files = scenarios::Files::create(&state, storage.path(), if cli.short { 24 } else { 40 })?;
    let mut rules = String::new();
    for (r, p) in roles.iter().zip(&pods) {
        rules.push_str(&format!(
            "[[classes.path_rules]]\nglob = \"{}\"\nclass = \"{}\"\n",
            p.cgroup.rel_path(),
            r.class
        ));
    }
    // Time-compressed: 1 s windows, an 8 s learning period, a 30 s drip
    // horizon (256 KiB floor) instead of hours, and a mining profile after
    // 6 busy windows on a connection 5 s old. Pods have no CPU limit here
    // (the cpu controller is not enabled on this hybrid host), so the
    // profile measures against a quarter core.
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[network]\ninternal_cidrs = [\"198.18.0.0/16\", \"2001:db8:c::/48\"]\n[inventory]\nmode = \"standalone\"\n[storage]\nwatch_paths = [\"{}\"]\n[classes]\nnames = [\"training\", \"pipeline\", \"notebook\", \"service\"]\n{rules}[detect]\nwindow = \"1s\"\nlearning_windows = 8\nlearning_duration = \"8s\"\ndrip_horizon = \"30s\"\ndrip_min_bytes = 262144\nprofile_min_conn_age = \"5s\"\nprofile_unlimited_cores = 0.25\n",
        state.join("agent").display(),
        scratch.path().display()
    );
    let pins = TestPinDir::new().map_err(|e| e.to_string())?;
    let agent = Agent::start(pins.path(), &config).map_err(|e| e.to_string())?;
    let socket = api::default_socket(pins.path());
    let net = topo.internet().v4.to_string();
    let svc = topo.service().v4;
    let sink = |host: &tollgate_tests::topology::Host, argv: &[String]| {
        Sink::start(host.command(argv)).map_err(|e| e.to_string())
    };
    let udp_sink = |addr: String| {
        strings(&[
            &traffic,
            "udp-sink",
            "--listen",
            &addr,
            "--count",
            "100000000",
            "--timeout-s",
            "600",
        ])
    };
    let _metrics = sink(topo.internet(), &udp_sink(format!("{net}:9002")))?;
    let _svc_sink = sink(topo.service(), &udp_sink(format!("{svc}:9003")))?;
    let _dns = if iodine {
        sink(topo.internet(), &scenarios::iodined_argv(&net))?
    } else {
        sink(topo.internet(), &udp_sink(format!("{net}:53")))?
    };
    let _web = sink(topo.internet(), &scenarios::servers_argv(&files, &net))?;
    let _pool = sink(
        topo.internet(),
        &strings(&[
            &signal,
            "stratum-pool",
            "--listen",
            &format!("{net}:3333"),
            "--timeout-s",
            "600",
        ]),
    )?;

    // Benign behaviour, in every pod for the whole run (attackers too,
    // until and while they attack): training pods read the dataset, push
    // small metrics and resolve a few names; data prep reads and writes
    // storage; notebooks download packages in bursts; the service answers
    // (small internal datagrams).
    let secs = (cli.learn_s + cli.detect_s + 60).min(590);
    let mut background = Vec::new();
    for (r, p) in roles.iter().zip(&pods) {
        let argvs = scenarios::background(
            r.class,
            r.pod,
            &files,
            &scenarios::Peers {
                traffic: &traffic,
                signal: &signal,
                net: &net,
                svc: &svc.to_string(),
            },
            secs,
        );
        for argv in argvs {
            let mut c = p.command(&argv);
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            background.push(Proc(c.spawn().map_err(|e| e.to_string())?));
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
        if ["training", "pipeline", "notebook", "service"]
            .iter()
            .all(|c| learned(c))
        {
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
        let Some(a) = r.attack else { continue };
        let argvs: Vec<Vec<String>> = match a {
            Attack::Upload => vec![scenarios::upload(&files, &net)],
            Attack::StorageCopy => vec![scenarios::storage_copy(&files)],
            Attack::Drip => vec![scenarios::drip(&traffic, &net)],
            Attack::TlsMiner => vec![scenarios::tls_miner(&files, &net)],
            Attack::Stratum => vec![strings(&[
                &signal,
                "stratum-client",
                "--to",
                &format!("{net}:3333"),
                "--shares",
                "20",
                "--interval-ms",
                "500",
                "--timeout-s",
                "60",
            ])],
            Attack::DnsTunnel if iodine => {
                vec![scenarios::iodine(&net), scenarios::through_tunnel(&traffic)]
            }
            Attack::DnsTunnel => vec![strings(&[
                &signal,
                "dns",
                "--to",
                &format!("{net}:53"),
                "--count",
                "3000",
                "--random-len",
                "52",
                "--suffix",
                scenarios::TUNNEL_DOMAIN,
                "--qtype",
                "16",
                "--interval-ms",
                "10",
            ])],
        };
        for argv in argvs {
            let mut c: Command = p.command(&argv);
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = c.spawn().map_err(|e| e.to_string())?;
            if a == Attack::Stratum
                && let Some(out) = child.stdout.take()
            {
                let tx = share_tx.clone();
                thread::spawn(move || {
                    for l in BufReader::new(out).lines().map_while(Result::ok) {
                        if let Some(ms) =
                            l.strip_prefix("first-share ").and_then(|v| v.parse().ok())
                        {
                            let _ = tx.send(ms);
                        }
                    }
                });
            }
            attacks.push(Proc(child));
        }
    }
    let mut seen = report::Seen::default();
    let end = t0 + Duration::from_secs(cli.detect_s);
    while Instant::now() < end {
        for f in api::fetch_findings(&socket).unwrap_or_default() {
            seen.note(&f, t0);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let phase_h = t0.elapsed().as_secs_f64() / 3600.0;
    let first_share = share_rx.try_recv().ok();
    drop(attacks);
    drop(background);

    let ok = report::table(
        &roles,
        &pods,
        &seen,
        report::Context {
            first_share,
            iodine,
            phase_h,
        },
    );
    drop(agent);
    drop(storage);
    let _ = std::fs::remove_dir_all(&state);
    Ok(ok)
}
