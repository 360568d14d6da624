//! Small helpers for running commands: every command is echoed before it runs
//! so a CI log shows exactly what happened.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// The workspace root, fixed at compile time (xtask lives one level below it).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin"))
}

/// PATH with `$CARGO_HOME/bin` appended, so rustc finds a freshly installed
/// bpf-linker even when the caller's shell never sourced ~/.cargo/env.
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(bin) = cargo_bin_dir().filter(|b| !dirs.contains(b)) {
        dirs.push(bin);
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// A cargo command (the same cargo that runs xtask) in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root()).env("PATH", path_with_cargo_bin());
    c
}

fn show(c: &Command) -> String {
    let mut s: Vec<String> = c
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .collect();
    s.push(c.get_program().to_string_lossy().into_owned());
    s.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
    s.join(" ")
}

/// Runs `c` with inherited stdio and returns its exit status.
pub fn status(c: &mut Command) -> Result<ExitStatus> {
    eprintln!("+ {}", show(c));
    c.status()
        .with_context(|| format!("failed to start `{}`", show(c)))
}

/// Runs `c` with inherited stdio and fails unless it exits 0.
pub fn check(c: &mut Command) -> Result<()> {
    let st = status(c)?;
    if !st.success() {
        bail!("`{}` failed: {st}", show(c));
    }
    Ok(())
}

/// Runs `c` quietly (a probe, not echoed) and returns its output; a missing
/// program is `Ok(None)` so callers can treat it as "not installed".
pub fn probe(c: &mut Command) -> Result<Option<Output>> {
    match c.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to run `{}`", show(c))),
    }
}

/// Builds the agent in release mode and returns the absolute path of the
/// `tollgate` binary, as reported by cargo (honours CARGO_TARGET_DIR etc.).
pub fn build_agent() -> Result<PathBuf> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "tollgate",
        "--bin",
        "tollgate",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("+ {}", show(&c));
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("failed to start cargo build")?;
    if !out.status.success() {
        bail!(
            "building the agent failed ({}), see the errors above",
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tollgate")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report a `tollgate` executable")
}
