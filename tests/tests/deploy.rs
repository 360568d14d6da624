//! The deployment artifacts, checked offline: the kustomize base in deploy/
//! rendered with `kubectl kustomize` and every document parsed as its
//! Kubernetes type (k8s-openapi), the least-privilege settings of the
//! DaemonSet and the RBAC rules pinned, the ConfigMap's config validated by
//! the agent binary, the Dockerfile linted with hadolint and the systemd
//! unit verified with `systemd-analyze verify`. No API server can run here,
//! so nothing is applied to a cluster; the capabilities themselves are
//! proven by capabilities.rs.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tollgate_tests::{agent::tollgate_bin, cmd::which, privileged::skip};

const NAMESPACE: &str = "tollgate-system";
/// Where `cargo xtask setup` installs hadolint (xtask/src/setup.rs).
const HADOLINT_VENV_BIN: &str = "/opt/tollgate-tools/hadolint/bin/hadolint";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `tool` on PATH, or a skip (a failure under TOLLGATE_REQUIRE_PRIVILEGED=1).
fn tool(name: &str) -> Option<PathBuf> {
    which(name).or_else(|| {
        skip(&format!(
            "needs {name} (install it with `cargo xtask setup`)"
        ));
        None
    })
}

fn run(mut c: Command) -> std::process::Output {
    let what = format!("{c:?}");
    c.output().unwrap_or_else(|e| panic!("running {what}: {e}"))
}

/// The rendered base, one JSON value per document.
fn render(kubectl: &Path) -> Vec<Value> {
    let mut c = Command::new(kubectl);
    c.arg("kustomize").arg(repo().join("deploy"));
    let out = run(c);
    assert!(
        out.status.success(),
        "kubectl kustomize deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    serde_saphyr::from_multiple::<Value>(&text).expect("rendered YAML parses")
}

/// The one document of `kind`.
fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// Parses `v` as `T` and requires the typed object to serialize back to the
/// same document: a misspelled or misplaced field (which serde would skip)
/// fails here instead of being dropped by the API server.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", v["kind"]));
    let back = serde_json::to_value(&t).expect("serializes");
    if let Some(at) = first_difference(v, &back, "") {
        panic!(
            "{} {}: a field its Kubernetes type does not know (misspelled or misplaced?)",
            v["kind"], at
        );
    }
    t
}

/// JSON pointer of the first place where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &format!("{at}/{k}")),
                    _ => Some(format!("{at}/{k}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ => (a != b).then(|| at.to_string()),
    }
}

struct Rendered {
    docs: Vec<Value>,
    ds: DaemonSet,
}

impl Rendered {
    fn get() -> Option<Rendered> {
        let kubectl = tool("kubectl")?;
        let docs = render(&kubectl);
        let ds = typed(one(&docs, "DaemonSet"));
        Some(Rendered { docs, ds })
    }

    fn pod(&self) -> &PodSpec {
        let spec = self.ds.spec.as_ref().expect("spec");
        spec.template.spec.as_ref().expect("pod spec")
    }

    fn agent(&self) -> &Container {
        let c = &self.pod().containers;
        assert_eq!(c.len(), 1, "one container");
        &c[0]
    }

    /// hostPath volumes: name -> host path.
    fn host_paths(&self) -> BTreeMap<String, String> {
        self.pod()
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
            .collect()
    }

    /// Mount path -> (volume name, read-only).
    fn mounts(&self) -> BTreeMap<String, (String, bool)> {
        self.agent()
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.mount_path.clone(),
                    (m.name.clone(), m.read_only.unwrap_or(false)),
                )
            })
            .collect()
    }

    /// The host path mounted at the container path that holds `path`.
    fn host_path_of(&self, path: &Path) -> Option<String> {
        let hp = self.host_paths();
        self.mounts()
            .into_iter()
            .filter(|(mp, _)| path.starts_with(mp))
            .max_by_key(|(mp, _)| mp.len())
            .and_then(|(_, (vol, _))| hp.get(&vol).cloned())
    }

    fn config_toml(&self) -> String {
        let cm: ConfigMap = typed(one(&self.docs, "ConfigMap"));
        cm.data
            .and_then(|d| d.get("config.toml").cloned())
            .expect("ConfigMap has config.toml")
    }
}

#[test]
fn manifests_render_and_parse_as_kubernetes_objects() {
    let Some(r) = Rendered::get() else { return };
    let kinds: BTreeSet<&str> = r.docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]),
    );
    assert_eq!(r.docs.len(), kinds.len(), "one document per kind");
    let ns: Namespace = typed(one(&r.docs, "Namespace"));
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    let sa: ServiceAccount = typed(one(&r.docs, "ServiceAccount"));
    let svc: Service = typed(one(&r.docs, "Service"));
    let _: ClusterRole = typed(one(&r.docs, "ClusterRole"));
    let crb: ClusterRoleBinding = typed(one(&r.docs, "ClusterRoleBinding"));
    let cm: ConfigMap = typed(one(&r.docs, "ConfigMap"));
    for (kind, meta) in [
        ("ServiceAccount", &sa.metadata),
        ("Service", &svc.metadata),
        ("ConfigMap", &cm.metadata),
        ("DaemonSet", &r.ds.metadata),
    ] {
        assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE), "{kind}");
    }

    // The pieces refer to each other.
    let pod = r.pod();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let subjects = crb.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), Some(subjects[0].name.as_str())),
        ("ServiceAccount", sa.metadata.name.as_deref())
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(crb.role_ref.name, "tollgate");
    let config_vol = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .expect("config volume");
    assert_eq!(
        Some(&config_vol.name),
        cm.metadata.name.as_ref(),
        "the DaemonSet mounts the generated ConfigMap (hash suffix)"
    );
    let pod_labels =
        r.ds.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("pod labels");
    let svc_spec = svc.spec.expect("service spec");
    for (k, v) in svc_spec.selector.iter().flatten() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selects the agent pods");
    }
    let port = &svc_spec.ports.expect("ports")[0];
    assert_eq!(port.port, 9771);
    assert_eq!(port.name.as_deref(), Some("metrics"));

    // The ServiceMonitor (a Prometheus Operator CRD: no k8s-openapi type).
    let sm = one(&r.docs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["namespace"], NAMESPACE);
    let svc_labels = svc.metadata.labels.expect("service labels");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(svc_labels.get(k).map(String::as_str), v.as_str());
    }
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(
        ep["honorLabels"], true,
        "the agent's namespace/pod labels name the watched pod"
    );
}

#[test]
fn daemonset_runs_with_least_privilege() {
    let Some(r) = Rendered::get() else { return };
    let pod = r.pod();
    assert_ne!(pod.host_pid, Some(true), "no hostPID");
    assert_ne!(pod.host_network, Some(true), "no hostNetwork");
    assert_ne!(pod.host_ipc, Some(true), "no hostIPC");
    let c = r.agent();
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    let required: BTreeSet<&str> = tollgate::caps::REQUIRED
        .iter()
        .map(|(_, n)| n.strip_prefix("CAP_").expect("CAP_ name"))
        .collect();
    assert_eq!(added, required, "exactly the agent's capabilities");
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );

    // Host paths: exactly these, and only bpffs (pins) and the state
    // directory writable.
    let hp = r.host_paths();
    let paths: BTreeSet<&str> = hp.values().map(String::as_str).collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/proc",
            "/sys/fs/bpf",
            "/sys/fs/cgroup",
            "/sys/kernel/btf",
            "/var/lib/tollgate"
        ])
    );
    let writable: BTreeSet<&str> = r
        .mounts()
        .values()
        .filter(|(vol, ro)| !ro && hp.contains_key(vol))
        .map(|(vol, _)| hp[vol].as_str())
        .collect();
    assert_eq!(
        writable,
        BTreeSet::from(["/sys/fs/bpf", "/var/lib/tollgate"])
    );
    for m in c.volume_mounts.iter().flatten() {
        assert_ne!(
            m.mount_propagation.as_deref(),
            Some("Bidirectional"),
            "Bidirectional propagation needs privileged: true"
        );
    }

    // NODE_NAME from the downward API.
    let node = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // Resources and probes.
    let res = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(res.requests.as_ref().is_some_and(|m| m.contains_key(key)));
        assert!(res.limits.as_ref().is_some_and(|m| m.contains_key(key)));
    }
    let metrics_port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port")
        .container_port;
    assert_eq!(metrics_port, 9771);
    for (what, probe) in [
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe is an HTTP GET"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{what}");
        assert_eq!(get.port, IntOrString::String("metrics".into()), "{what}");
    }
}

#[test]
fn rbac_is_exactly_what_the_agent_uses() {
    let Some(r) = Rendered::get() else { return };
    let role: ClusterRole = typed(one(&r.docs, "ClusterRole"));
    let mut got = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(got.insert((g.clone(), res.clone(), v.clone())));
                }
            }
        }
    }
    let want: BTreeSet<(String, String, String)> = [
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "patch"),
        ("", "namespaces", "get"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "events", "create"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.into(), r.into(), v.into()))
    .collect();
    assert_eq!(got, want);
}

/// `tollgate config check --config <file>`: (exit code, stderr).
fn config_check(file: &Path) -> (Option<i32>, String) {
    let mut c = Command::new(tollgate_bin());
    c.args(["config", "check", "--config"]).arg(file);
    let out = run(c);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Dotted keys of every value that is not a table.
fn keys(t: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in t {
        let key = format!("{prefix}{k}");
        match v {
            toml::Value::Table(sub) => keys(sub, &format!("{key}."), out),
            _ => {
                out.insert(key);
            }
        }
    }
}

#[test]
fn configmap_config_is_complete_and_validates_with_the_agent() {
    let Some(r) = Rendered::get() else { return };
    let text = r.config_toml();
    let file = std::fs::read_to_string(repo().join("deploy/config.toml")).expect("config.toml");
    assert_eq!(text, file, "the ConfigMap is deploy/config.toml");

    let dir = std::env::temp_dir().join(format!(
        "tollgate-deploy-{}",
        tollgate_tests::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).expect("write config");
    let (code, err) = config_check(&path);
    assert_eq!(code, Some(0), "the agent accepts the ConfigMap: {err}");
    // The same check rejects a broken copy, naming the key.
    std::fs::write(&path, format!("{text}\n[agent2]\n")).expect("write");
    let (code, err) = config_check(&path);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("agent2"), "{err}");
    std::fs::write(&path, text.replace("tick = \"1s\"", "tick = \"10ms\"")).expect("write");
    let (code, err) = config_check(&path);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("agent.tick"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // Every key the agent knows is written out (and so documented there).
    let cfg = tollgate::config::Config::parse(&text).expect("parses");
    let mut documented = BTreeSet::new();
    keys(&text.parse().expect("TOML"), "", &mut documented);
    let mut known = BTreeSet::new();
    let defaults = toml::to_string(&tollgate::config::Config::default()).expect("serializes");
    keys(&defaults.parse().expect("TOML"), "", &mut known);
    let missing: Vec<&String> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing in deploy/config.toml: {missing:?}"
    );

    // The paths it names are the ones the DaemonSet mounts.
    let c = r.agent();
    let args = c.args.clone().unwrap_or_default();
    let at = args.iter().position(|a| a == "--config").expect("--config");
    let cfg_path = Path::new(&args[at + 1]);
    assert!(
        r.mounts().contains_key(
            cfg_path
                .parent()
                .and_then(Path::to_str)
                .expect("config dir")
        )
    );
    assert_eq!(cfg.agent.metrics_addr.port(), 9771);
    assert_eq!(cfg.inventory.mode, tollgate::inventory::Mode::Kubernetes);
    for (what, path, host) in [
        ("agent.pin_dir", &cfg.agent.pin_dir, "/sys/fs/bpf"),
        ("agent.state_dir", &cfg.agent.state_dir, "/var/lib/tollgate"),
        ("storage.mountinfo", &cfg.storage.mountinfo, "/proc"),
        ("storage.btf", &cfg.storage.btf, "/sys/kernel/btf"),
    ] {
        assert_eq!(
            r.host_path_of(path).as_deref(),
            Some(host),
            "{what} = {} lies on the hostPath {host}",
            path.display()
        );
    }
}

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
