//! `tollgate`: wiring only. Subsystems live in the library.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use tollgate::{api, check, config::Config, control, ebpf::PinDir, run, top};

/// Exit code for bad configuration (EX_CONFIG is 78; DESIGN.md asks for 64,
/// EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a wrong command line (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code when the kernel lacks a required feature (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Per-pod network accounting, baselines and quarantine for Kubernetes nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Flags shared by commands that read the config.
#[derive(clap::Args, Clone)]
struct Common {
    /// Config file (TOML). Missing is fine when it is the default path.
    #[arg(long, env = "TOLLGATE_CONFIG", default_value = tollgate::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Root of the pins on bpffs (overrides agent.pin_dir).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Local API socket (default /run/tollgate/<pin dir name>.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// State directory (overrides agent.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: load, attach, collect, serve.
    Run {
        #[command(flatten)]
        common: Common,
        /// Prometheus listen address (overrides agent.metrics_addr).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Collection interval, e.g. 1s (overrides agent.tick).
        #[arg(long, value_parser = humantime::parse_duration)]
        tick: Option<Duration>,
        /// Internal CIDR (repeatable; replaces network.internal_cidrs).
        #[arg(long = "internal-cidr")]
        internal_cidrs: Vec<ipnet::IpNet>,
        /// Watch storage of this fs type, as mountinfo names it, e.g.
        /// fuse.bindfs (repeatable; replaces storage.watch_fstypes; ceph,
        /// fuse.ceph-fuse, nfs and nfs4 are always watched).
        #[arg(long = "watch-fstype")]
        watch_fstypes: Vec<String>,
        /// Control API listen address (overrides control.listen).
        #[arg(long)]
        control_addr: Option<std::net::SocketAddr>,
    },
    /// Probe the kernel for what Tollgate needs and can use.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Kernel BTF file to probe (as `storage.btf`).
        #[arg(long, default_value = tollgate::ebpf::btf::VMLINUX_BTF)]
        btf: PathBuf,
        /// Also report what this config file switches off (`kernel.disable`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Live view of cgroups sorted by egress rate.
    Top {
        #[command(flatten)]
        common: Common,
        /// Print one snapshot and exit.
        #[arg(long)]
        once: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Refresh interval of the live view.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Four pods on this machine (a training job, a notebook, an
    /// exfiltrator and a stratum miner) watched by a real agent: live
    /// counts and findings, the attackers quarantined, a summary; every
    /// namespace, cgroup and pin it made is removed on exit or Ctrl-C.
    Demo {
        /// Benign behaviour before the attacks start (the classes learn).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        learn: Duration,
        /// How long to keep watching after the attacks start (the demo
        /// ends 10 s after both attackers are quarantined).
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        watch: Duration,
        /// Print the summary as JSON on stdout (the live view goes too).
        #[arg(long)]
        json: bool,
    },
    /// A demo workload or server (started by `tollgate demo`).
    #[command(hide = true)]
    DemoWorker {
        #[command(subcommand)]
        role: tollgate::demo::worker::Role,
    },
    /// Benchmark the egress program with BPF_PROG_TEST_RUN (for `cargo xtask bench`).
    #[command(hide = true)]
    BenchProg {
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value = "/sys/fs/bpf/tollgate-bench-prog")]
        pin_dir: String,
    },
    /// Hold the benchmark baseline program attached at the cgroup root
    /// until stdin closes (for `cargo xtask bench dataplane`).
    #[command(hide = true)]
    BenchFloor {
        #[arg(long, default_value = "/sys/fs/bpf/tollgate-bench-floor")]
        pin_dir: String,
    },
    /// Time draining a running agent's maps, batch vs per key (for `cargo xtask bench scale`).
    #[command(hide = true)]
    BenchDrain {
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// Time quarantine requests to the first stopped packet (for `cargo xtask bench quarantine`).
    #[command(hide = true)]
    BenchQuarantine {
        #[command(flatten)]
        common: Common,
        /// Cgroup of the sending pod, relative to the cgroup v2 mount.
        #[arg(long)]
        cgroup: String,
        /// The pod's host-side interface index (for --watch tc).
        #[arg(long, default_value_t = 0)]
        ifindex: u32,
        #[arg(long, value_enum)]
        watch: tollgate::qbench::Watch,
        #[arg(long, default_value_t = 100)]
        runs: usize,
    },
    /// Cut a pod off the network: `quarantine NAMESPACE/POD --reason ...`
    /// through the running agent's control API, or without an agent
    /// `--cgroup PATH` (relative to the cgroup v2 mount); `quarantine list`
    /// shows what is cut off.
    #[command(args_conflicts_with_subcommands = true)]
    Quarantine {
        #[command(subcommand)]
        list: Option<QuarantineCmd>,
        /// NAMESPACE/POD (or a cgroup path starting with /), through the agent.
        target: Option<String>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        api: ApiArgs,
        /// Cgroup path relative to the cgroup v2 mount (covers everything below it).
        #[arg(long)]
        cgroup: Option<String>,
        /// Why (goes to the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Release automatically after this long (e.g. 30m).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Lift a quarantine: `release NAMESPACE/POD` through the agent, or
    /// `release --cgroup PATH` without it.
    Release {
        /// NAMESPACE/POD (or a cgroup path starting with /), through the agent.
        #[arg(conflicts_with = "cgroup", required_unless_present = "cgroup")]
        target: Option<String>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        cgroup: Option<String>,
    },
    /// Remove Tollgate's pins: detaches the programs (counters are lost).
    Detach {
        #[command(flatten)]
        common: Common,
    },
    /// Move per-class baselines between nodes (`<state_dir>/baselines.json`).
    Baseline {
        #[command(subcommand)]
        cmd: BaselineCmd,
    },
    /// Run recorded windows (JSON lines) through baselines and detectors;
    /// prints findings as JSON lines, a summary on stderr.
    Replay {
        #[command(flatten)]
        common: Common,
        /// Recorded windows, one JSON WindowSample per line.
        #[arg(long)]
        windows: PathBuf,
        /// Start from the baselines in DIR/baselines.json (if present) and
        /// write the learned baselines back there at the end.
        #[arg(long)]
        baselines: Option<PathBuf>,
    },
    /// Write synthetic recorded windows (JSON lines) to stdout: benign
    /// training, pipeline, notebook and service pods, with attacks.
    Synth {
        /// Length of the recording.
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        window: Duration,
        #[arg(long, default_value_t = 3)]
        pods_per_class: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Inject an attack into the first pod of its default class (repeatable).
        #[arg(long, value_enum)]
        attack: Vec<tollgate::detect::synth::AttackKind>,
        /// When the attacks start, from the start of the recording.
        #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
        attack_at: Duration,
        /// How long they last.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        attack_for: Duration,
    },
    /// Configuration file commands (`config check`).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum BaselineCmd {
    /// Verify the node's baselines and copy them to FILE.
    Export {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
    },
    /// Verify FILE (format, version, checksum) and merge it into the
    /// node's baselines: classes in FILE replace the node's classes of the
    /// same name, other classes are kept. Stop the agent first.
    Import {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse and validate a config file without touching the kernel: exits
    /// 0 when valid, 64 naming the key and the fix otherwise. Used on the
    /// Kubernetes ConfigMap (deploy/config.toml) before it ships.
    Check {
        /// Config file (TOML); must exist, even at the default path.
        #[arg(long, env = "TOLLGATE_CONFIG", default_value = tollgate::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// List quarantined cgroups (through the agent when it runs, else
    /// from the state file).
    List {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How the CLI reaches the agent's control API.
#[derive(clap::Args, Clone, Default)]
struct ApiArgs {
    /// Control API URL, e.g. https://127.0.0.1:9772 (default: what the
    /// agent wrote to <state_dir>/control.url, else control.listen).
    #[arg(long)]
    api: Option<String>,
    /// Bearer token file (default control.token_file).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an HTTPS agent (default control.ca_cert).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

fn load_config(c: &Common) -> Result<Config, ExitCode> {
    let mut cfg =
        if c.config.exists() || c.config.as_os_str() != tollgate::config::DEFAULT_CONFIG_PATH {
            Config::load(&c.config).map_err(|e| {
                eprintln!("tollgate: {e}");
                ExitCode::from(EXIT_CONFIG)
            })?
        } else {
            Config::default()
        };
    if let Some(p) = &c.pin_dir {
        cfg.agent.pin_dir = p.clone();
    }
    if let Some(p) = &c.state_dir {
        cfg.agent.state_dir = p.clone();
    }
    Ok(cfg)
}

fn socket(c: &Common, cfg: &Config) -> PathBuf {
    c.socket
        .clone()
        .unwrap_or_else(|| api::default_socket(&cfg.agent.pin_dir))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colour codes only on a terminal: log files and journald get plain
    // key=value text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // One record per line: hostile names and reasons are escaped.
        .with_writer(move || tollgate::logfmt::EscapingWriter::new(std::io::stderr(), ansi))
        .with_ansi(ansi)
        .init();
    match cli.cmd {
        Cmd::Run {
            common,
            metrics_addr,
            tick,
            internal_cidrs,
            watch_fstypes,
            control_addr,
        } => {
            let mut cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(a) = metrics_addr {
                cfg.agent.metrics_addr = a;
            }
            if let Some(t) = tick {
                cfg.agent.tick = t;
            }
            if !internal_cidrs.is_empty() {
                cfg.network.internal_cidrs = internal_cidrs;
            }
            if !watch_fstypes.is_empty() {
                cfg.storage.watch_fstypes = watch_fstypes;
            }
            if let Some(a) = control_addr {
                cfg.control.listen = a;
            }
            if let Err(e) = cfg.validate() {
                eprintln!("tollgate: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let opts = run::RunOptions {
                socket: socket(&common, &cfg),
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tollgate: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run::run(cfg, opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo { learn, watch, json } => {
            let opts = tollgate::demo::DemoOptions { learn, watch, json };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tollgate: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(tollgate::demo::run(&opts)) {
                Ok(summary) => {
                    if opts.json {
                        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    } else {
                        tollgate::demo::print_summary(&summary);
                    }
                    if summary.ok || summary.interrupted {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("tollgate demo: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::DemoWorker { role } => match tollgate::demo::worker::run(role) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate demo-worker: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Check { json, btf, config } => {
            let mut probes = check::probe_all_with(&btf);
            if let Some(path) = config {
                match tollgate::config::Config::load(&path) {
                    Ok(cfg) => probes.extend(tollgate::kernel::check_rows(&cfg.kernel)),
                    Err(e) => {
                        eprintln!("tollgate: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            if check::print(&probes, json) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        }
        Cmd::Top {
            common,
            once,
            format,
            interval,
        } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = top::TopOptions {
                socket: socket(&common, &cfg),
                pins: PinDir::new(&cfg.agent.pin_dir),
                once,
                json: format == Format::Json,
                interval,
                mountinfo: cfg.storage.mountinfo.clone(),
                classes: cfg.classes.clone(),
            };
            match top::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchProg {
            repeat,
            rounds,
            pin_dir,
        } => print_json(tollgate::bench::prog_bench(&pin_dir, repeat, rounds)),
        Cmd::BenchFloor { pin_dir } => match tollgate::bench::floor(&pin_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        Cmd::BenchDrain { rounds, pin_dir } => {
            print_json(tollgate::bench::drain_bench(&PinDir::new(pin_dir), rounds))
        }
        Cmd::BenchQuarantine {
            common,
            cgroup,
            ifindex,
            watch,
            runs,
        } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            print_json(tollgate::qbench::run(&cfg, &cgroup, ifindex, watch, runs))
        }
        Cmd::Quarantine {
            list,
            target,
            common,
            api,
            cgroup,
            reason,
            ttl,
        } => {
            let (common, api) = match &list {
                Some(QuarantineCmd::List { common, api }) => (common.clone(), api.clone()),
                None => (common, api),
            };
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let explicit = api.api.is_some();
            let opts = control::client::options(&cfg, api.api, api.token_file, api.ca_cert);
            if let Some(t) = target {
                if cgroup.is_some() {
                    eprintln!("tollgate: give NAMESPACE/POD or --cgroup PATH, not both");
                    return ExitCode::from(EXIT_USAGE);
                }
                if reason.trim().is_empty() {
                    eprintln!("tollgate: --reason is required (it goes to the audit log)");
                    return ExitCode::from(EXIT_USAGE);
                }
                return print_json(control::client::quarantine(&opts, &t, &reason, ttl));
            }
            if list.is_some()
                && (explicit || control::client::url_from_state(&cfg.agent.state_dir).is_some())
            {
                match control::client::list(&opts) {
                    Ok(v) => return print_json::<_, std::io::Error>(Ok(v)),
                    Err(e @ control::client::ClientError::Connect { .. }) if !explicit => {
                        eprintln!("tollgate: {e}; reading the state file instead");
                    }
                    Err(e) => return print_json::<(), _>(Err(e)),
                }
            }
            let mut q = match open_quarantine(&cfg) {
                Ok(q) => q,
                Err(code) => return code,
            };
            if list.is_some() {
                println!(
                    "{}",
                    serde_json::to_string_pretty(q.records()).unwrap_or_default()
                );
                return ExitCode::SUCCESS;
            }
            let Some(cgroup) = cgroup else {
                eprintln!(
                    "tollgate: quarantine needs NAMESPACE/POD (through the agent) or --cgroup PATH (or `quarantine list`)"
                );
                return ExitCode::from(EXIT_USAGE);
            };
            print_json(q.quarantine(&cgroup, &reason, &tollgate::quarantine::cli_user(), ttl))
        }
        Cmd::Release {
            target,
            common,
            api,
            cgroup,
        } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(cgroup) = cgroup else {
                let opts = control::client::options(&cfg, api.api, api.token_file, api.ca_cert);
                let target = target.unwrap_or_default();
                return print_json(control::client::release(&opts, &target));
            };
            let mut q = match open_quarantine(&cfg) {
                Ok(q) => q,
                Err(code) => return code,
            };
            match q.release(&cgroup, &tollgate::quarantine::cli_user()) {
                Ok(r) => {
                    println!("released {} (cgroup id {})", r.path, r.cgroup_id);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        cmd @ (Cmd::Baseline { .. } | Cmd::Replay { .. } | Cmd::Synth { .. }) => detect_cmd(cmd),
        Cmd::Detach { common } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let pins = PinDir::new(&cfg.agent.pin_dir);
            match tollgate::podtc::detach_all(&cfg.tc) {
                Ok(n) => eprintln!("removed {n} clsact filters"),
                Err(e) => eprintln!("tollgate: removing clsact filters: {e}"),
            }
            match tollgate::ebpf::remove_pins(&pins) {
                Ok(()) => {
                    eprintln!("removed {}", pins.versioned().display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: removing {}: {e}", pins.versioned().display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tollgate: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// `baseline`, `replay` and `synth`.
fn detect_cmd(cmd: Cmd) -> ExitCode {
    use tollgate::{baseline::store, detect::replay};
    match cmd {
        Cmd::Baseline {
            cmd: BaselineCmd::Export { common, file },
        } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match store::export(&cfg.agent.state_dir, &file) {
                Ok(n) => {
                    eprintln!("exported {n} class baseline(s) to {}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Baseline {
            cmd: BaselineCmd::Import { common, file },
        } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            print_json(store::import(&cfg.agent.state_dir, &file))
        }
        Cmd::Replay {
            common,
            windows,
            baselines,
        } => {
            let cfg = match load_config(&common) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match replay::replay_file(&cfg.detect, &windows, baselines.as_deref()) {
                Ok(summary) => {
                    eprintln!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Synth {
            duration,
            window,
            pods_per_class,
            seed,
            attack,
            attack_at,
            attack_for,
        } => {
            use tollgate::detect::synth;
            let spec = synth::Spec {
                window,
                duration,
                pods_per_class,
                seed,
                attacks: attack
                    .into_iter()
                    .map(|kind| synth::Attack {
                        kind,
                        class: kind.default_class().into(),
                        at: attack_at,
                        duration: attack_for,
                    })
                    .collect(),
                ..synth::Spec::default()
            };
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            match replay::write_jsonl(out, &synth::generate(&spec)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate: writing windows: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => unreachable!("detect_cmd is only called for detection commands"),
    }
}

/// Opens the quarantine state of the configured pins and state dir.
fn open_quarantine(cfg: &Config) -> Result<tollgate::quarantine::Quarantine, ExitCode> {
    let mount = tollgate::cgroupfs::cgroup2_mount().map_err(|e| {
        eprintln!("tollgate: {e}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })?;
    let mut q = tollgate::quarantine::Quarantine::open(
        &PinDir::new(&cfg.agent.pin_dir),
        mount,
        &cfg.agent.state_dir,
    )
    .map_err(|e| {
        eprintln!("tollgate: {}", chain(&e));
        ExitCode::FAILURE
    })?;
    q.set_host_netns(cfg.tc.host());
    Ok(q)
}

/// Prints a command's result as JSON, or its error with causes.
fn print_json<T: serde::Serialize, E: std::error::Error>(r: Result<T, E>) -> ExitCode {
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
