//! Privileged: the control API with TLS configured serves HTTPS with the
//! test's CA (our CLI and curl, an independent client), refuses clients
//! without the right CA, and gives plain HTTP no HTTP answer at all.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tollgate_tests::{
    agent::{Agent, TestPinDir},
    cgroup::TestCgroup,
    control::{StateDir, ok, tg},
    privileged,
    raw_http::request,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");

/// CA and a server certificate for 127.0.0.1 made with the openssl CLI.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt openssl)");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tollgate test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // Another CA, which did not sign the server's certificate.
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=other CA",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn tls_serves_https_with_the_test_ca_and_refuses_plain_http() {
    privileged!();
    let pins = TestPinDir::new().expect("pin dir");
    let state = StateDir::new();
    std::fs::create_dir_all(&state.0).unwrap();
    let (ca, cert, key) = make_certs(&state.0);
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[control]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        state.0.display(),
        cert.display(),
        key.display()
    );
    let mut agent = Agent::start(pins.path(), &config).expect("agent starts");
    let url = agent.control_url().expect("control API URL");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token = std::fs::read_to_string(state.0.join("control.token"))
        .unwrap()
        .trim()
        .to_owned();
    let ca_s = ca.display().to_string();

    // Plain HTTP to the TLS port: no HTTP answer at all.
    let r = request(&url, "GET", "/v1/quarantines", Some(&token), b"");
    assert_eq!(r.status, 0, "plain HTTP must not be served: {:?}", r.raw);
    assert!(!r.raw.contains("HTTP/1.1"), "{:?}", r.raw);

    // curl, an independent client, with the CA.
    let o = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &ca_s,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{url}/v1/quarantines"),
        ])
        .output()
        .expect("curl runs");
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let o = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca_s,
            &format!("{url}/v1/quarantines"),
        ])
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "401",
        "no token over TLS"
    );

    // Our CLI over HTTPS: a cgroup-only pod is quarantined and released.
    let cg = TestCgroup::new("ctltls").expect("cgroup");
    let send = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {TRAFFIC} udp-send --to 127.0.0.1:9 --count 1 --size 10",
                cg.path().display()
            ))
            .output()
            .expect("send runs")
    };
    assert!(send().status.success(), "sends before");
    let rel = cg.rel_path();
    let o = tg(
        &state.0,
        pins.path(),
        &["quarantine", &rel, "--reason", "tls test"],
    );
    assert!(!o.status.success(), "https without a CA fails");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--ca-cert"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let other = state.0.join("other.pem").display().to_string();
    let o = tg(
        &state.0,
        pins.path(),
        &[
            "quarantine",
            &rel,
            "--reason",
            "tls test",
            "--ca-cert",
            &other,
        ],
    );
    assert!(
        !o.status.success(),
        "a CA that did not sign the certificate is refused"
    );
    assert!(
        list_cli(&state.0, pins.path(), &ca_s).is_empty(),
        "nothing quarantined by the failed attempts"
    );
    ok(&tg(
        &state.0,
        pins.path(),
        &[
            "quarantine",
            &rel,
            "--reason",
            "tls test",
            "--ca-cert",
            &ca_s,
        ],
    ));
    let out = send();
    assert!(!out.status.success(), "sendmsg refused while quarantined");
    assert_eq!(list_cli(&state.0, pins.path(), &ca_s).len(), 1);
    ok(&tg(
        &state.0,
        pins.path(),
        &["release", &rel, "--ca-cert", &ca_s],
    ));
    assert!(send().status.success(), "sends after release");
    assert!(agent.is_running());
}

fn list_cli(state: &Path, pins: &Path, ca: &str) -> Vec<serde_json::Value> {
    let out = ok(&tg(state, pins, &["quarantine", "list", "--ca-cert", ca]));
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| panic!("list: {out}"))
}
