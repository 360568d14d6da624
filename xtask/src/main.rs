//! Orchestration for Tollgate: install prerequisites, build, test, lint, run
//! and benchmark. Everything here shells out to cargo, apt-get, ip and iperf3;
//! the product logic lives in `agent/`.
#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod eval;
mod fuzz;
mod live;
mod setup;

use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tollgate build and test orchestration (cargo xtask ...)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (apt packages, nightly rust-src, bpf-linker); idempotent.
    Setup,
    /// Setup, build the agent, then run the whole workspace's tests in release mode.
    ///
    /// Arguments before `--` go to `cargo test`, arguments after it to the
    /// test harness: `cargo xtask test -p tollgate-tests -- --test-threads 1`.
    Test {
        /// Extra `cargo test` arguments, e.g. `-p tollgate-tests` or a test name filter.
        #[arg(allow_hyphen_values = true)]
        cargo_args: Vec<String>,
        /// Arguments for the test harness, after `--`.
        #[arg(last = true)]
        harness_args: Vec<String>,
    },
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Setup, build the agent and exec `target/release/tollgate <ARGS>`.
    Run {
        /// Arguments for `tollgate`, after `--`: `cargo xtask run -- run --help`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job: build, run the agent at the cgroup v2 root and show the
    /// live per-cgroup view (`tollgate top`) until q; then stop and detach.
    Live {
        /// Without a terminal: how long to print snapshots.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Keep the programs attached and the pins after exiting.
        #[arg(long)]
        keep: bool,
    },
    /// The demo (README's main job): setup, build and exec `tollgate demo`:
    /// four pods, two of them attackers, detected and quarantined live.
    Demo {
        /// Arguments for `tollgate demo`, after `--` (e.g. `-- --learn 20s`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Setup, then run the cargo-fuzz target on the config parser for RUNS
    /// runs (at most 4 minutes), seeded with fuzz/corpus/config.
    Fuzz {
        #[arg(long, default_value_t = fuzz::DEFAULT_RUNS)]
        runs: u64,
    },
    /// Labelled benign and attack scenarios against the real agent (root):
    /// detected or not, by which detector, time to detect; precision,
    /// recall, false alerts per benign pod-hour.
    Eval {
        /// The short version (the one the test suite runs).
        #[arg(long)]
        short: bool,
        /// Long-horizon replay of recorded windows instead of live pods.
        #[arg(long)]
        replay: bool,
        /// Length of the detection phase, seconds.
        #[arg(long, default_value_t = 40)]
        detect_s: u64,
    },
}

fn main() -> Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Cmd::Test {
            cargo_args,
            harness_args,
        } => {
            let (cargo_args, harness_args) = split_test_args(cargo_args, harness_args);
            test(&cargo_args, &harness_args)
        }
        Cmd::Lint => lint().map(|()| ExitCode::SUCCESS),
        Cmd::Run { args } => run(&args),
        Cmd::Live { seconds, keep } => live::run(seconds, keep).map(|()| ExitCode::SUCCESS),
        Cmd::Demo { args } => {
            let mut all = vec!["demo".to_owned()];
            all.extend(args);
            run(&all)
        }
        Cmd::Bench(b) => bench::run(b).map(|()| ExitCode::SUCCESS),
        Cmd::Fuzz { runs } => {
            setup::run()?;
            setup::cargo_fuzz()?;
            fuzz::run(runs).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Eval {
            short,
            replay,
            detect_s,
        } => eval::run(short, replay, detect_s),
    }
}

/// Once a hyphen value like `-p` has started `cargo_args`, clap keeps a later
/// `--` in it instead of starting `harness_args`; split there ourselves.
fn split_test_args(mut cargo: Vec<String>, harness: Vec<String>) -> (Vec<String>, Vec<String>) {
    match cargo.iter().position(|a| a == "--") {
        Some(i) => {
            let rest = cargo.split_off(i);
            (cargo, rest.into_iter().skip(1).chain(harness).collect())
        }
        None => (cargo, harness),
    }
}

fn test(cargo_args: &[String], harness_args: &[String]) -> Result<ExitCode> {
    setup::run()?;
    let bin = cmd::build_agent()?;
    let mut c = cmd::cargo();
    // --no-fail-fast: a CI log should list every failing test binary, not
    // just the first; the exit code is non-zero either way.
    c.args(["test", "--release", "--no-fail-fast"]);
    // cargo ignores `-p` next to `--workspace`, so only default to the whole
    // workspace when the caller did not pick packages.
    if !cargo_args
        .iter()
        .any(|a| a.starts_with("-p") || a.starts_with("--package"))
    {
        c.arg("--workspace");
    }
    c.args(cargo_args);
    if !harness_args.is_empty() {
        c.arg("--").args(harness_args);
    }
    // TOLLGATE_REQUIRE_PRIVILEGED is inherited from our environment as is.
    c.env("TOLLGATE_BIN", &bin);
    // Test failures are an expected outcome, not an xtask error: pass the
    // exit code through instead of adding an error chain to cargo's summary.
    let status = cmd::status(&mut c)?;
    // The cargo-fuzz step is `cargo xtask fuzz`, not part of the suite: its
    // first build (nightly, sanitizers, every dependency) took ~50 minutes
    // on this 2-core machine, more than half of CI's budget. The suite runs
    // the hostile corpus through the same parser (agent/tests/config_corpus.rs).
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn lint() -> Result<()> {
    // clippy compiles agent/build.rs, which needs nightly rust-src and bpf-linker.
    setup::run()?;
    let fmt = cmd::status(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Run clippy even when formatting failed: one pass shows every problem.
    let clippy = cmd::status(cmd::cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let failed: Vec<&str> = [("cargo fmt --check", fmt), ("cargo clippy", clippy)]
        .into_iter()
        .filter(|(_, st)| !st.success())
        .map(|(name, _)| name)
        .collect();
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

fn run(args: &[String]) -> Result<ExitCode> {
    setup::run()?;
    let bin = cmd::build_agent()?;
    eprintln!("+ {} {}", bin.display(), args.join(" "));
    // exec so signals (Ctrl-C, SIGTERM from a supervisor) reach the agent directly.
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// (cargo args, harness args) of `xtask test <args>`, space-joined.
    fn parse_test(args: &[&str]) -> (String, String) {
        let argv = ["xtask", "test"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .cmd
        {
            Cmd::Test {
                cargo_args,
                harness_args,
            } => {
                let (c, h) = split_test_args(cargo_args, harness_args);
                (c.join(" "), h.join(" "))
            }
            _ => panic!("not the test command"),
        }
    }

    #[test]
    fn test_splits_cargo_and_harness_args() {
        let split = |c: &str, h: &str| (c.to_owned(), h.to_owned());
        assert_eq!(
            parse_test(&["-p", "x", "f", "--", "--test-threads", "1"]),
            split("-p x f", "--test-threads 1")
        );
        assert_eq!(
            parse_test(&["f", "--", "--ignored"]),
            split("f", "--ignored")
        );
        assert_eq!(
            parse_test(&["--", "--test-threads", "1"]),
            split("", "--test-threads 1")
        );
        assert_eq!(parse_test(&["--release"]), split("--release", ""));
        assert_eq!(parse_test(&[]), split("", ""));
    }

    #[test]
    fn run_passes_everything_after_the_separator() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "run", "--pin-dir", "/x"]);
        match cli.unwrap_or_else(|e| panic!("{e}")).cmd {
            Cmd::Run { args } => assert_eq!(args, ["run", "--pin-dir", "/x"]),
            _ => panic!("not the run command"),
        }
    }
}
