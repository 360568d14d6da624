//! `cargo xtask fuzz`: the cargo-fuzz target on the config parser
//! (fuzz/fuzz_targets/config.rs), seeded with the hostile corpus checked in
//! at fuzz/corpus/config, for a bounded number of runs. libFuzzer writes
//! the inputs it finds to a scratch directory, never to the checked-in
//! corpus; a crash (panic, abort, timeout, out of memory) fails the step
//! and leaves its input under fuzz/artifacts/config/.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// Runs of the default step (`cargo xtask test` runs it too).
pub const DEFAULT_RUNS: u64 = 200_000;
/// Wall-clock cap for one step, seconds, whatever the machine's speed.
const MAX_TOTAL_TIME_S: u64 = 240;

pub fn run(runs: u64) -> Result<()> {
    let root = cmd::root();
    let scratch = std::env::temp_dir().join(format!("tollgate-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    // `rustup run nightly`: cargo-fuzz needs nightly (sanitizers); the
    // CARGO of this xtask is the stable toolchain's binary.
    let mut c = Command::new("rustup");
    c.current_dir(root)
        .env("PATH", cmd::path_with_cargo_bin())
        .args(["run", "nightly", "cargo", "fuzz", "run", "config"])
        .arg(&scratch)
        .arg(root.join("fuzz/corpus/config"))
        .arg("--")
        .arg(format!("-runs={runs}"))
        .arg(format!("-max_total_time={MAX_TOTAL_TIME_S}"))
        // Corpus files reach 4 MiB (megabyte strings); inputs libFuzzer
        // makes stay small so the runs go to the parser, not to copying.
        .arg("-max_len=65536")
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=30");
    let st = cmd::status(&mut c)?;
    let _ = std::fs::remove_dir_all(&scratch);
    if !st.success() {
        bail!(
            "the config fuzz target failed ({st}): the crashing input is under fuzz/artifacts/config/; reproduce with `cargo +nightly fuzz run config <file>`"
        );
    }
    eprintln!("fuzz: config parser: {runs} runs (or {MAX_TOTAL_TIME_S} s), no crash");
    Ok(())
}
