//! `cargo xtask eval`: builds the agent and the scenario runner
//! (`tg-eval` in the tests crate) and runs it as root: labelled benign and
//! attack scenarios in netns+cgroup pods against the real agent, or with
//! `--replay` the long-horizon replay of recorded windows.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::{cmd, setup};

pub fn run(short: bool, replay: bool, detect_s: u64) -> Result<ExitCode> {
    setup::run()?;
    let bin = cmd::build_agent()?;
    let st =
        cmd::status(cmd::cargo().args(["build", "--release", "-p", "tollgate-tests", "--bins"]))?;
    if !st.success() {
        bail!("building tg-eval failed ({st}), see the errors above");
    }
    let eval = bin.with_file_name("tg-eval");
    let mut c = std::process::Command::new(&eval);
    c.env("TOLLGATE_BIN", &bin)
        .args(["--detect-s", &detect_s.to_string()]);
    if short {
        c.arg("--short");
    }
    if replay {
        c.arg("--replay");
    }
    let st = cmd::status(&mut c)?;
    // 1: a scenario was missed or a benign pod alerted (the table says
    // which); anything else is a failure to run.
    Ok(match st.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
