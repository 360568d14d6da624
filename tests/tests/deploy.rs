//! The Kubernetes manifests, checked offline: the kustomize base in deploy/
//! rendered with `kubectl kustomize` and every document parsed as its
//! Kubernetes type (k8s-openapi), the least-privilege settings of the
//! DaemonSet and the RBAC rules pinned, and the ConfigMap's config validated
//! by the agent binary. No API server can run here, so nothing is applied
//! to a cluster; packaging.rs checks the image and the systemd unit, and
//! capabilities.rs and container.rs prove the privileges suffice.
#![forbid(unsafe_code)]

use std::{collections::BTreeSet, path::Path, process::Command};

use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tollgate_tests::{
    agent::tollgate_bin,
    deploy::{Rendered, one, repo, run, typed},
};

const NAMESPACE: &str = "tollgate-system";

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
