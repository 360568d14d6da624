//! Workload classes: which baseline a pod or cgroup is compared with.
//!
//! A workload must not pick its own class, because a permissive class is a
//! place to hide. So the class of a pod comes from what admins and
//! controllers set: the namespace (labels and annotations, admin-owned) and
//! the pod's owner kind (set by the controller that made the pod). Pod
//! labels, which whoever creates the pod writes, select a class only where
//! the namespace allows exactly that class (annotation
//! `tollgate.io/pod-classes`). The set of classes is fixed by the config and
//! bounded, so labels cannot mint new ones.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::path::PathIdentity;

/// Namespace label (admin-set): the class of every pod in the namespace.
pub const NAMESPACE_CLASS_LABEL: &str = "tollgate.io/class";
/// Pod label: the class the pod asks for; honoured only when the
/// namespace's [`POD_CLASSES_ANNOTATION`] lists it.
pub const POD_CLASS_LABEL: &str = "tollgate.io/class";
/// Namespace annotation (admin-set): classes that pod labels may select in
/// this namespace, comma-separated, or "*" for any configured class.
pub const POD_CLASSES_ANNOTATION: &str = "tollgate.io/pod-classes";
/// The class of everything no rule matches.
pub const DEFAULT_CLASS: &str = "default";
/// Upper bound of `classes.max_classes`: per-class baselines cost memory.
pub const MAX_CLASSES_LIMIT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClassError {
    #[error("invalid config: {key}: {why}")]
    Invalid { key: String, why: String },
}

/// `[classes]`: how pods and cgroups get their workload class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassConfig {
    /// Apply the built-in rules (Kubeflow training, notebooks, pipelines,
    /// Spark, batch, services; systemd services and containers) after the
    /// configured ones.
    pub builtin_rules: bool,
    /// At most this many distinct classes, "default" included (1..=64).
    pub max_classes: usize,
    /// Classes that no rule names but namespace or pod labels may select.
    pub names: Vec<String>,
    /// Rules for Kubernetes pods, tried in order; the first match wins.
    pub rules: Vec<PodRule>,
    /// Rules for cgroups that are not Kubernetes pods (standalone hosts,
    /// node services), tried in order on the cgroup path.
    pub path_rules: Vec<PathRule>,
    /// `[classes.egress.<class>]`: per-class egress policy (see
    /// `crate::egress`).
    pub egress: BTreeMap<String, crate::egress::EgressPolicy>,
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            builtin_rules: true,
            max_classes: 32,
            names: Vec::new(),
            rules: Vec::new(),
            path_rules: Vec::new(),
            egress: BTreeMap::new(),
        }
    }
}

/// `[[classes.rules]]`: every condition given must hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PodRule {
    /// The class this rule assigns.
    pub class: String,
    /// Kind of any owner reference of the pod (e.g. "PyTorchJob").
    #[serde(default)]
    pub owner_kinds: Vec<String>,
    /// Namespace labels that must all be present with these values
    /// ("*" = any value).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Pod labels that must all be present with these values ("*" = any
    /// value). A rule with pod labels applies only in namespaces whose
    /// `tollgate.io/pod-classes` annotation allows its class.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
}

/// `[[classes.path_rules]]`: a glob over the cgroup path relative to the
/// cgroup v2 mount ("*" stays within one directory, "**" spans several).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    pub glob: String,
    pub class: String,
}

/// What class resolution needs to know about a pod.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub namespace_annotations: &'a BTreeMap<String, String>,
    pub owner_kinds: &'a [String],
    pub pod_labels: &'a BTreeMap<String, String>,
}

/// Why a class was chosen (logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    PodLabel,
    NamespaceLabel,
    Rule(usize),
    Builtin,
    Default,
}

fn rule(class: &str, owners: &[&str], labels: &[(&str, &str)]) -> PodRule {
    PodRule {
        class: class.into(),
        owner_kinds: owners.iter().map(|s| (*s).into()).collect(),
        namespace_labels: BTreeMap::new(),
        pod_labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

/// The built-in pod rules. Owner kinds decide; the label rules (notebooks
/// made by the Kubeflow notebook controller are owned by a StatefulSet like
/// any service; spark-submit drivers have no owner) only apply where the
/// namespace allows their class.
pub fn builtin_pod_rules() -> Vec<PodRule> {
    vec![
        rule(
            "training",
            &[
                "PyTorchJob",
                "TFJob",
                "PaddleJob",
                "MPIJob",
                "XGBoostJob",
                "JAXJob",
            ],
            &[],
        ),
        rule(
            "training",
            &[],
            &[("trainer.kubeflow.org/trainjob-ancestor-step", "*")],
        ),
        rule("notebook", &["Notebook"], &[]),
        rule("notebook", &["StatefulSet"], &[("notebook-name", "*")]),
        // Argo Workflows own their step pods; Kubeflow Pipelines runs on Argo
        // (Tekton backends own theirs by TaskRun).
        rule("pipeline", &["Workflow", "TaskRun"], &[]),
        // Spark executors are owned by their driver pod.
        rule(
            "spark",
            &["SparkApplication", "ScheduledSparkApplication", "Pod"],
            &[],
        ),
        rule("spark", &[], &[("spark-role", "*")]),
        rule("batch", &["Job", "CronJob"], &[]),
        rule(
            "service",
            &[
                "ReplicaSet",
                "Deployment",
                "StatefulSet",
                "DaemonSet",
                "ReplicationController",
            ],
            &[],
        ),
    ]
}

/// Built-in classes of cgroups that are not pods (standalone mode).
const BUILTIN_PATH_CLASSES: [&str; 3] = ["service", "container", "user"];

#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<PodRule>,
    builtin: Vec<PodRule>,
    path_rules: Vec<(glob::Pattern, String)>,
    classes: BTreeSet<String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Classifier {
    /// Compiles and validates the `[classes]` section.
    pub fn new(cfg: &ClassConfig) -> Result<Self, ClassError> {
        let invalid = |key: String, why: String| ClassError::Invalid { key, why };
        if cfg.max_classes == 0 || cfg.max_classes > MAX_CLASSES_LIMIT {
            return Err(invalid(
                "classes.max_classes".into(),
                format!(
                    "{} must be between 1 and {MAX_CLASSES_LIMIT}",
                    cfg.max_classes
                ),
            ));
        }
        let builtin = if cfg.builtin_rules {
            builtin_pod_rules()
        } else {
            Vec::new()
        };
        let mut classes = BTreeSet::from([DEFAULT_CLASS.to_owned()]);
        let mut named = |key: String, class: &str| {
            if !valid_name(class) {
                return Err(invalid(
                    key,
                    format!("class {class:?}: use 1-32 characters of a-z, 0-9 and '-'"),
                ));
            }
            classes.insert(class.to_owned());
            Ok(())
        };
        for (i, n) in cfg.names.iter().enumerate() {
            named(format!("classes.names[{i}]"), n)?;
        }
        for (i, r) in cfg.rules.iter().enumerate() {
            named(format!("classes.rules[{i}].class"), &r.class)?;
            if r.owner_kinds.is_empty() && r.namespace_labels.is_empty() && r.pod_labels.is_empty()
            {
                return Err(invalid(
                    format!("classes.rules[{i}]"),
                    "a rule needs owner_kinds, namespace_labels or pod_labels".into(),
                ));
            }
        }
        let mut path_rules = Vec::new();
        for (i, r) in cfg.path_rules.iter().enumerate() {
            named(format!("classes.path_rules[{i}].class"), &r.class)?;
            let pat = glob::Pattern::new(&r.glob).map_err(|e| {
                invalid(
                    format!("classes.path_rules[{i}].glob"),
                    format!("{:?}: {e}", r.glob),
                )
            })?;
            path_rules.push((pat, r.class.clone()));
        }
        if cfg.builtin_rules {
            for r in &builtin {
                classes.insert(r.class.clone());
            }
            classes.extend(BUILTIN_PATH_CLASSES.iter().map(|s| (*s).to_owned()));
        }
        if classes.len() > cfg.max_classes {
            return Err(invalid(
                "classes.max_classes".into(),
                format!(
                    "{} classes are configured ({}), more than {}: merge classes or raise the limit (at most {MAX_CLASSES_LIMIT})",
                    classes.len(),
                    classes.iter().cloned().collect::<Vec<_>>().join(", "),
                    cfg.max_classes
                ),
            ));
        }
        Ok(Self {
            rules: cfg.rules.clone(),
            builtin,
            path_rules,
            classes,
        })
    }

    /// Every class this classifier can return.
    pub fn classes(&self) -> &BTreeSet<String> {
        &self.classes
    }

    /// The class of a Kubernetes pod and why.
    pub fn pod_class(&self, pod: &PodFacts<'_>) -> (String, Source) {
        let allowed = |class: &str| -> bool {
            pod.namespace_annotations
                .get(POD_CLASSES_ANNOTATION)
                .is_some_and(|list| {
                    list.split(',')
                        .map(str::trim)
                        .any(|c| c == "*" || c == class)
                })
        };
        if let Some(c) = pod.pod_labels.get(POD_CLASS_LABEL)
            && self.classes.contains(c)
            && allowed(c)
        {
            return (c.clone(), Source::PodLabel);
        }
        if let Some(c) = pod.namespace_labels.get(NAMESPACE_CLASS_LABEL)
            && self.classes.contains(c)
        {
            return (c.clone(), Source::NamespaceLabel);
        }
        let matches = |r: &PodRule| {
            (r.owner_kinds.is_empty() || pod.owner_kinds.iter().any(|k| r.owner_kinds.contains(k)))
                && labels_match(&r.namespace_labels, pod.namespace_labels)
                && (r.pod_labels.is_empty()
                    || (allowed(&r.class) && labels_match(&r.pod_labels, pod.pod_labels)))
        };
        if let Some(i) = self.rules.iter().position(matches) {
            return (self.rules[i].class.clone(), Source::Rule(i));
        }
        if let Some(r) = self.builtin.iter().find(|r| matches(r)) {
            return (r.class.clone(), Source::Builtin);
        }
        (DEFAULT_CLASS.to_owned(), Source::Default)
    }

    /// The class of a cgroup that is not a Kubernetes pod with known
    /// metadata: configured path globs first, then by kind (built-in).
    pub fn path_class(&self, path: &str, id: &PathIdentity) -> (String, Source) {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        if let Some(i) = self
            .path_rules
            .iter()
            .position(|(p, _)| p.matches_with(path, opts))
        {
            return (self.path_rules[i].1.clone(), Source::Rule(i));
        }
        if self.builtin.is_empty() {
            return (DEFAULT_CLASS.to_owned(), Source::Default);
        }
        let class = match id {
            PathIdentity::Container { .. } => "container",
            _ if path == "/user.slice" || path.starts_with("/user.slice/") => "user",
            PathIdentity::Unit { unit, .. } if unit.ends_with(".service") => "service",
            _ => return (DEFAULT_CLASS.to_owned(), Source::Default),
        };
        (class.to_owned(), Source::Builtin)
    }
}

fn labels_match(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter()
        .all(|(k, v)| have.get(k).is_some_and(|h| v == "*" || h == v))
}

#[cfg(test)]
mod tests;
