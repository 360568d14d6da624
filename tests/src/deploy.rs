//! Helpers for the deployment tests: the repository root, tools that may
//! be missing (a skip, or a failure under TOLLGATE_REQUIRE_PRIVILEGED=1),
//! and the kustomize base in deploy/ rendered with `kubectl kustomize` and
//! parsed into k8s-openapi types that must serialize back unchanged.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, PodSpec},
};
use serde_json::Value;

use crate::{cmd::which, privileged::skip};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `tool` on PATH, or a skip (a failure under TOLLGATE_REQUIRE_PRIVILEGED=1).
pub fn tool(name: &str) -> Option<PathBuf> {
    which(name).or_else(|| {
        skip(&format!(
            "needs {name} (install it with `cargo xtask setup`)"
        ));
        None
    })
}

pub fn run(mut c: Command) -> std::process::Output {
    let what = format!("{c:?}");
    c.output().unwrap_or_else(|e| panic!("running {what}: {e}"))
}

/// The rendered base, one JSON value per document.
pub fn render(kubectl: &Path) -> Vec<Value> {
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
pub fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// Parses `v` as `T` and requires the typed object to serialize back to the
/// same document: a misspelled or misplaced field (which serde would skip)
/// fails here instead of being dropped by the API server.
pub fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> T {
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

/// The rendered base and its DaemonSet.
pub struct Rendered {
    pub docs: Vec<Value>,
    pub ds: DaemonSet,
}

impl Rendered {
    pub fn get() -> Option<Rendered> {
        let kubectl = tool("kubectl")?;
        let docs = render(&kubectl);
        let ds = typed(one(&docs, "DaemonSet"));
        Some(Rendered { docs, ds })
    }

    pub fn pod(&self) -> &PodSpec {
        let spec = self.ds.spec.as_ref().expect("spec");
        spec.template.spec.as_ref().expect("pod spec")
    }

    pub fn agent(&self) -> &Container {
        let c = &self.pod().containers;
        assert_eq!(c.len(), 1, "one container");
        &c[0]
    }

    /// hostPath volumes: name -> host path.
    pub fn host_paths(&self) -> BTreeMap<String, String> {
        self.pod()
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
            .collect()
    }

    /// Mount path -> (volume name, read-only).
    pub fn mounts(&self) -> BTreeMap<String, (String, bool)> {
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
    pub fn host_path_of(&self, path: &Path) -> Option<String> {
        let hp = self.host_paths();
        self.mounts()
            .into_iter()
            .filter(|(mp, _)| path.starts_with(mp))
            .max_by_key(|(mp, _)| mp.len())
            .and_then(|(_, (vol, _))| hp.get(&vol).cloned())
    }

    pub fn config_toml(&self) -> String {
        let cm: ConfigMap = typed(one(&self.docs, "ConfigMap"));
        cm.data
            .and_then(|d| d.get("config.toml").cloned())
            .expect("ConfigMap has config.toml")
    }
}
