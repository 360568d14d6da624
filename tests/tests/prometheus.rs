//! Dashboards and PrometheusRule against a real Prometheus (Debian's
//! `prometheus`, run here on loopback) scraping a real agent while test
//! pods make traffic, write to watched storage and one of them gets
//! quarantined: every PromQL expression of every dashboard panel and of
//! the PrometheusRule is evaluated through Prometheus's HTTP API and must
//! return data, with the dashboards' template variables replaced by real
//! values (which the variables' own queries must offer).
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin, top_until},
    cmd::{self, wait_until},
    http::{self, Webhook},
    privileged,
    servers::{self, Alertmanager, Prometheus},
    storage::{ScratchDir, Tmpfs},
    topology::Topology,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const STORAGE: &str = env!("CARGO_BIN_EXE_tg-storage");
const WAIT: Duration = Duration::from_secs(90);
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Joins cgroup $1, enters netns $2 ("-" for none) and execs the rest.
const ENTER: &str = r#"cg="$1"; ns="$2"; shift 2; echo $$ > "$cg/cgroup.procs" || exit 1; if [ "$ns" = - ]; then exec "$@"; else exec ip netns exec "$ns" "$@"; fi"#;

fn run_in(cgroup: &Path, netns: &str, argv: &[&str]) -> String {
    let mut c = Command::new("sh");
    c.args(["-c", ENTER, "sh"])
        .arg(cgroup)
        .arg(netns)
        .args(argv);
    cmd::run_cmd(c, Duration::from_secs(60)).unwrap_or_else(|e| format!("{e}"))
}

/// The rule file inside a PrometheusRule: its `spec:` block, de-indented.
fn rule_file(crd: &str) -> String {
    let spec = crd
        .split_once("\nspec:\n")
        .expect("PrometheusRule has a spec")
        .1;
    spec.lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `expr` without a trailing comparison with a number (`... > 0.9`): the
/// signal an alert rule thresholds.
fn signal(expr: &str) -> Option<&str> {
    for op in [" == ", " > ", " < ", " >= ", " <= ", " != "] {
        if let Some((lhs, rhs)) = expr.rsplit_once(op)
            && rhs.trim().parse::<f64>().is_ok()
        {
            return Some(lhs.trim());
        }
    }
    None
}

/// Grafana's variables and range macros as the test sets them.
fn substitute(expr: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut e = expr
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", "10m");
    for (k, v) in vars {
        e = e
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    e
}

fn regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

fn non_empty(v: &serde_json::Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

#[test]
fn every_dashboard_and_rule_query_returns_data() {
    privileged!("prometheus", "prometheus-alertmanager");
    let topo = Topology::builder().pods(2).build().expect("topology");
    // Each pod's workload runs in a systemd-style unit below the pod's
    // cgroup, so the standalone inventory gives it a namespace (the
    // slice), a pod name (the unit) and a class (service).
    let units: Vec<PathBuf> = (0..2)
        .map(|i| {
            topo.pod(i)
                .cgroup
                .child(&format!("tgprom{i}.slice/worker{i}.service"))
                .expect("unit cgroup")
        })
        .collect();
    let scratch = ScratchDir::new().unwrap();
    let data = Tmpfs::mount(&scratch.dir("data").unwrap()).expect("tmpfs");
    let hook = Webhook::start().unwrap();
    let am = Alertmanager::start(&hook.url()).expect("alertmanager");
    let dead = format!("http://127.0.0.1:{}", http::free_port().unwrap());
    let pins = TestPinDir::new().expect("pin dir");
    let state = std::env::temp_dir().join(format!("tg-state-{}", tollgate_tests::unique_suffix()));
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n[storage]\nwatch_paths = [\"{}\"]\n[metrics]\nprogram_stats = true\n[alerts]\nurls = [\"{}\", \"{dead}\"]\nresend_interval = \"3s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
        state.display(),
        data.path().display(),
        am.url()
    );
    let agent = Agent::start_with_env(pins.path(), &config, &[("NODE_NAME", "tg-prom-node")])
        .expect("agent starts");
    let addr = servers::agent_metrics_addr(&agent).unwrap();
    let dead_target = format!("127.0.0.1:{}", http::free_port().unwrap());
    let rules =
        rule_file(&std::fs::read_to_string(format!("{ROOT}/deploy/prometheus-rule.yaml")).unwrap());
    let prom = Prometheus::start(
        &[addr.clone(), dead_target],
        Duration::from_secs(1),
        Some(&rules),
    )
    .expect("prometheus");

    let net = IpAddr::V4(topo.internet().v4);
    let svc = IpAddr::V4(topo.service().v4);
    let traffic = |round: usize| {
        for (i, unit) in units.iter().enumerate() {
            let ns = topo.pod(i).netns.name();
            let ext = SocketAddr::new(net, 9000 + i as u16).to_string();
            let int = SocketAddr::new(svc, 9100 + i as u16).to_string();
            run_in(
                unit,
                ns,
                &[
                    TRAFFIC, "udp-send", "--to", &ext, "--count", "20", "--size", "1000",
                ],
            );
            run_in(
                unit,
                ns,
                &[
                    TRAFFIC, "udp-send", "--to", &int, "--count", "10", "--size", "200",
                ],
            );
            run_in(
                unit,
                ns,
                &[TRAFFIC, "connect", "--to", &ext, "--timeout-s", "1"],
            );
            let f = data.path().join(format!("f{i}-{round}"));
            let f = f.to_str().unwrap();
            run_in(
                unit,
                "-",
                &[
                    STORAGE, "io", "--family", "write", "--path", f, "--bytes", "65536",
                ],
            );
            run_in(
                unit,
                "-",
                &[
                    STORAGE, "io", "--family", "read", "--path", f, "--bytes", "65536",
                ],
            );
        }
    };
    traffic(0);
    let top = top_until(pins.path(), WAIT, |t| {
        units.iter().all(|u| {
            let rel = format!("/{}", u.strip_prefix(cgroup_mount()).unwrap().display());
            t.cgroups
                .iter()
                .any(|c| c.path.as_deref() == Some(&rel) && c.storage_written_bytes > 0)
        })
    });
    let rel0 = format!(
        "/{}",
        units[0].strip_prefix(cgroup_mount()).unwrap().display()
    );
    let row = top
        .cgroups
        .iter()
        .find(|c| c.path.as_deref() == Some(&rel0))
        .unwrap_or_else(|| panic!("the agent saw {rel0}"));
    let (namespace, pod, class) = (
        row.namespace.clone().expect("unit has a slice"),
        row.pod.clone().expect("unit name"),
        row.class.clone().expect("class"),
    );
    eprintln!("drill-down pod: namespace={namespace} pod={pod} class={class}");

    // Prometheus must have seen the findings counter at 0 before the
    // quarantine, or increase() has nothing to compare with.
    let t = Instant::now();
    wait_until("Prometheus scraping the agent", WAIT, || {
        prom.query("count_over_time(tollgate_findings_total{severity=\"high\", detector=\"response.quarantine\"}[1m]) >= 2")
            .is_ok_and(|v| non_empty(&v))
    })
    .unwrap_or_else(|e| panic!("{e}; prometheus log:\n{}", prom.log()));
    eprintln!("first scrapes took {:.1} s", t.elapsed().as_secs_f64());
    // Traffic for a while, so rates have several scrapes; then quarantine
    // pod 0's unit and let it knock on the door.
    let started = Instant::now();
    for round in 1..=6 {
        traffic(round);
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = Command::new(tollgate_bin())
        .args([
            "quarantine",
            "--cgroup",
            &rel0,
            "--reason",
            "prometheus test",
            "--pin-dir",
        ])
        .arg(pins.path())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for round in 7..=10 {
        traffic(round);
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_until(
        "quarantine and a delivered alert in Prometheus",
        WAIT,
        || {
            prom.query("tollgate_pod_quarantined")
                .is_ok_and(|v| non_empty(&v))
                && prom
                    .query("tollgate_alert_deliveries_total > 0")
                    .is_ok_and(|v| non_empty(&v))
                && prom
                    .query("increase(tollgate_pod_connections_denied_total[1m]) > 0")
                    .is_ok_and(|v| non_empty(&v))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; prometheus log:\n{}", prom.log()));
    eprintln!(
        "traffic and quarantine took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The PrometheusRule: loaded and healthy, every expression returns
    // data; those this scenario triggers return data in full, the others
    // at least their signal (the part before the threshold).
    let groups = prom.api("rules").unwrap();
    let mut failures = Vec::new();
    let mut full = Vec::new();
    let mut rules_seen = 0;
    for g in groups["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            rules_seen += 1;
            let name = r["name"].as_str().unwrap();
            let expr = r["query"].as_str().unwrap();
            assert_eq!(r["health"], "ok", "rule {name}: {r:#}");
            let res = prom.query(expr).unwrap();
            if non_empty(&res) {
                full.push(name.to_owned());
                continue;
            }
            match signal(expr) {
                Some(lhs) if non_empty(&prom.query(lhs).unwrap()) => {}
                _ => failures.push(format!("rule {name}: {expr}")),
            }
        }
    }
    assert_eq!(
        rules_seen, 12,
        "every rule of deploy/prometheus-rule.yaml loaded"
    );
    eprintln!("rules returning data in full (firing now): {full:?}");
    for must in [
        "TollgatePodQuarantined",
        "TollgateQuarantineBlocking",
        "TollgateFindings",
        "TollgateAgentDown",
        "TollgateAlertDeliveryFailing",
    ] {
        assert!(
            full.iter().any(|n| n == must),
            "{must} fires in this scenario: {full:?}; findings: {}; increase: {}; info: {}",
            prom.query("tollgate_findings_total{detector=\"response.quarantine\"}")
                .unwrap(),
            prom.query("increase(tollgate_findings_total{detector=\"response.quarantine\"}[10m])")
                .unwrap(),
            prom.query("tollgate_agent_info").unwrap(),
        );
    }

    // Dashboards: variables first (their queries must offer the values
    // used), then every panel target.
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    vars.insert("node", "tg-prom-node".into());
    vars.insert("namespace", regex_escape(&namespace));
    vars.insert("class", regex_escape(&class));
    vars.insert("pod", regex_escape(&pod));
    let mut exprs = 0;
    for file in ["node.json", "pod.json", "findings.json", "agent.json"] {
        let text = std::fs::read_to_string(format!("{ROOT}/dashboards/{file}")).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        for v in d["templating"]["list"].as_array().unwrap() {
            let Some(q) = v["query"]["query"].as_str() else {
                continue; // the datasource variable
            };
            let (sel, label) = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.rsplit_once(", "))
                .unwrap_or_else(|| panic!("{file}: variable query {q}"));
            let sel = substitute(sel, &vars);
            let values = prom
                .api(&format!(
                    "label/{label}/values?match[]={}",
                    http::escape(&sel)
                ))
                .unwrap();
            let name = v["name"].as_str().unwrap();
            let want = match name {
                "node" => "tg-prom-node",
                "namespace" => namespace.as_str(),
                "class" => class.as_str(),
                "pod" => pod.as_str(),
                other => panic!("{file}: unexpected variable {other}"),
            };
            if !values.as_array().unwrap().iter().any(|x| x == want) {
                failures.push(format!(
                    "{file}: variable {name} ({q}) does not offer {want:?}: {values}"
                ));
            }
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = substitute(t["expr"].as_str().unwrap(), &vars);
                exprs += 1;
                match prom.query(&expr) {
                    Ok(v) if non_empty(&v) => {}
                    Ok(v) => {
                        failures.push(format!("{file} / {}: no data: {expr} -> {v}", p["title"]))
                    }
                    Err(e) => failures.push(format!("{file} / {}: {e}", p["title"])),
                }
            }
        }
        assert_eq!(
            d["templating"]["list"][0]["type"], "datasource",
            "{file}: templated datasource"
        );
        assert!(d["uid"].as_str().unwrap().starts_with("tollgate-"));
    }
    eprintln!("{exprs} dashboard expressions and {rules_seen} rules evaluated");
    assert!(
        failures.is_empty(),
        "queries without data:\n{}",
        failures.join("\n")
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}

fn cgroup_mount() -> PathBuf {
    tollgate_tests::cgroup::v2_mount().expect("cgroup v2 mount")
}
