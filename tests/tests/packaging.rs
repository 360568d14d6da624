//! Packaging, checked offline: the Dockerfile linted with hadolint and
//! tied to the toolchain the tests build with (no container runtime or
//! registry is reachable here, so the image is not built), and the systemd
//! unit verified with `systemd-analyze verify` and its capabilities pinned
//! to the agent's (systemd is not PID 1 here, so the unit is not started).
#![forbid(unsafe_code)]

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use tollgate_tests::{
    agent::tollgate_bin,
    cmd::which,
    deploy::{repo, run, tool},
};

/// Where `cargo xtask setup` installs hadolint (xtask/src/setup.rs).
const HADOLINT_VENV_BIN: &str = "/opt/tollgate-tools/hadolint/bin/hadolint";

#[test]
fn dockerfile_lints_clean_and_matches_the_toolchain() {
    let Some(hadolint) = which("hadolint")
        .or_else(|| Some(PathBuf::from(HADOLINT_VENV_BIN)).filter(|p| p.is_file()))
        .or_else(|| tool("hadolint"))
    else {
        return;
    };
    let dockerfile = repo().join("deploy/Dockerfile");
    let mut c = Command::new(&hadolint);
    c.args(["--failure-threshold", "style"]).arg(&dockerfile);
    let out = run(c);
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build and final stage: {froms:?}");
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml parses");
    let msrv = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("workspace rust-version");
    assert!(
        froms[0].starts_with(&format!("FROM rust:{msrv}-")),
        "build stage on the workspace's rust-version {msrv}: {}",
        froms[0]
    );
    assert!(froms[1].contains("distroless/cc"), "{}", froms[1]);
    // The final stage copies the binary and nothing else.
    let copies: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != froms[1])
        .filter(|l| l.starts_with("COPY"))
        .collect();
    assert_eq!(
        copies,
        ["COPY --from=build /out/tollgate /usr/bin/tollgate"]
    );
    // The nightly the image builds the eBPF programs with is the one the
    // tests here ran with.
    let out = run({
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "rustc", "--version"]);
        c
    });
    let version = String::from_utf8_lossy(&out.stdout);
    let date = version
        .trim()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .expect("rustc version date")
        .to_string();
    assert!(
        text.contains(&format!("ARG NIGHTLY=nightly-{date}\n")),
        "deploy/Dockerfile pins nightly-{date} (rustc +nightly: {version})"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/"));
}

#[test]
fn systemd_unit_verifies_with_the_agents_capabilities() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/tollgate.service")).expect("unit file");
    let directive = |name: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .collect()
    };
    let required: BTreeSet<&str> = tollgate::caps::REQUIRED.iter().map(|(_, n)| *n).collect();
    for name in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let v = directive(name);
        assert_eq!(v.len(), 1, "{name} once");
        let got: BTreeSet<&str> = v[0].split_whitespace().collect();
        assert_eq!(got, required, "{name}");
    }
    assert_eq!(directive("NoNewPrivileges"), ["yes"]);
    assert_eq!(directive("ProtectSystem"), ["strict"]);
    assert_eq!(directive("StateDirectory"), ["tollgate"]);
    assert_eq!(directive("ReadWritePaths"), ["/sys/fs/bpf"]);
    let exec = directive("ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(exec[0].starts_with("/usr/local/bin/tollgate run "));

    // systemd-analyze verify checks that ExecStart exists: point it at the
    // binary under test in a copy.
    let dir =
        std::env::temp_dir().join(format!("tollgate-unit-{}", tollgate_tests::unique_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("tollgate.service");
    let bin = tollgate_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/tollgate", &bin.display().to_string()),
    )
    .expect("write unit");
    let mut c = Command::new(analyze);
    c.arg("verify").arg(&copy);
    let out = run(c);
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(!err.contains("tollgate.service"), "warnings: {err}");
}
