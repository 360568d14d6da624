use super::*;

fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

struct Pod {
    ns_labels: BTreeMap<String, String>,
    ns_annotations: BTreeMap<String, String>,
    owners: Vec<String>,
    labels: BTreeMap<String, String>,
}

impl Pod {
    fn new(owners: &[&str], labels: &[(&str, &str)]) -> Self {
        Self {
            ns_labels: BTreeMap::new(),
            ns_annotations: BTreeMap::new(),
            owners: owners.iter().map(|s| (*s).to_owned()).collect(),
            labels: map(labels),
        }
    }
    fn ns(mut self, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Self {
        self.ns_labels = map(labels);
        self.ns_annotations = map(annotations);
        self
    }
    fn class(&self, c: &Classifier) -> (String, Source) {
        c.pod_class(&PodFacts {
            namespace_labels: &self.ns_labels,
            namespace_annotations: &self.ns_annotations,
            owner_kinds: &self.owners,
            pod_labels: &self.labels,
        })
    }
}

fn builtin() -> Classifier {
    Classifier::new(&ClassConfig::default()).unwrap()
}

#[test]
fn builtin_defaults_by_owner_kind() {
    let c = builtin();
    for (owner, class) in [
        ("PyTorchJob", "training"),
        ("TFJob", "training"),
        ("PaddleJob", "training"),
        ("MPIJob", "training"),
        ("Workflow", "pipeline"),
        ("SparkApplication", "spark"),
        ("Pod", "spark"),
        ("Job", "batch"),
        ("ReplicaSet", "service"),
        ("StatefulSet", "service"),
        ("DaemonSet", "service"),
        ("Notebook", "notebook"),
    ] {
        assert_eq!(Pod::new(&[owner], &[]).class(&c).0, class, "{owner}");
    }
    assert_eq!(
        Pod::new(&[], &[]).class(&c),
        ("default".into(), Source::Default)
    );
    assert_eq!(Pod::new(&["Unheard"], &[]).class(&c).0, "default");
}

#[test]
fn pod_label_cannot_pick_a_class_unless_namespace_allows_it() {
    let c = Classifier::new(&ClassConfig {
        names: vec!["serving".into()],
        ..ClassConfig::default()
    })
    .unwrap();
    // A training pod asking to be a notebook (a looser baseline) stays training.
    let sneaky = Pod::new(&["PyTorchJob"], &[("tollgate.io/class", "notebook")]);
    assert_eq!(sneaky.class(&c), ("training".into(), Source::Builtin));
    // Namespace allows other classes only: still ignored.
    let p = Pod::new(&["PyTorchJob"], &[("tollgate.io/class", "notebook")])
        .ns(&[], &[("tollgate.io/pod-classes", "serving, batch")]);
    assert_eq!(p.class(&c).0, "training");
    // Namespace allows notebook: honoured.
    let p = Pod::new(&["PyTorchJob"], &[("tollgate.io/class", "notebook")])
        .ns(&[], &[("tollgate.io/pod-classes", "serving,notebook")]);
    assert_eq!(p.class(&c), ("notebook".into(), Source::PodLabel));
    // "*" allows any configured class, never an unknown one.
    let p = Pod::new(&["Job"], &[("tollgate.io/class", "made-up")])
        .ns(&[], &[("tollgate.io/pod-classes", "*")]);
    assert_eq!(p.class(&c).0, "batch");
    // The allowance must be a namespace annotation: a pod annotation-like
    // label on the pod itself does nothing.
    let p = Pod::new(
        &["Job"],
        &[
            ("tollgate.io/class", "serving"),
            ("tollgate.io/pod-classes", "*"),
        ],
    );
    assert_eq!(p.class(&c).0, "batch");
}

#[test]
fn label_rules_only_apply_where_allowed() {
    let c = builtin();
    // A StatefulSet pod labelled like a Kubeflow notebook is a service ...
    let nb = Pod::new(&["StatefulSet"], &[("notebook-name", "x")]);
    assert_eq!(nb.class(&c).0, "service");
    // ... unless the namespace allows pods to be notebooks.
    let nb = Pod::new(&["StatefulSet"], &[("notebook-name", "x")])
        .ns(&[], &[("tollgate.io/pod-classes", "notebook")]);
    assert_eq!(nb.class(&c).0, "notebook");
    // spark-submit driver without owner.
    let d = Pod::new(&[], &[("spark-role", "driver")]);
    assert_eq!(d.class(&c).0, "default");
    let d = d.ns(&[], &[("tollgate.io/pod-classes", "spark")]);
    assert_eq!(d.class(&c).0, "spark");
}

#[test]
fn namespace_label_sets_the_class_and_beats_owner() {
    let c = builtin();
    let p = Pod::new(&["ReplicaSet"], &[]).ns(&[("tollgate.io/class", "notebook")], &[]);
    assert_eq!(p.class(&c), ("notebook".into(), Source::NamespaceLabel));
    // Unknown classes in namespace labels are ignored, not created.
    let p = Pod::new(&["ReplicaSet"], &[]).ns(&[("tollgate.io/class", "nope")], &[]);
    assert_eq!(p.class(&c).0, "service");
}

#[test]
fn configured_rules_come_first() {
    let cfg: ClassConfig = toml::from_str(
        r#"
        names = ["serving"]
        [[rules]]
        class = "serving"
        owner_kinds = ["ReplicaSet"]
        namespace_labels = { "team" = "ml" }
        "#,
    )
    .unwrap();
    let c = Classifier::new(&cfg).unwrap();
    let p = Pod::new(&["ReplicaSet"], &[]).ns(&[("team", "ml")], &[]);
    assert_eq!(p.class(&c), ("serving".into(), Source::Rule(0)));
    let p = Pod::new(&["ReplicaSet"], &[]).ns(&[("team", "web")], &[]);
    assert_eq!(p.class(&c), ("service".into(), Source::Builtin));
}

#[test]
fn class_count_is_bounded_and_names_checked() {
    let mut cfg = ClassConfig {
        max_classes: 8,
        ..ClassConfig::default()
    };
    let e = Classifier::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("classes.max_classes"), "{e}");
    cfg.max_classes = 65;
    assert!(Classifier::new(&cfg).is_err());
    cfg.max_classes = 32;
    cfg.names = vec!["Bad Name".into()];
    let e = Classifier::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("classes.names[0]"), "{e}");
    cfg.names = (0..40).map(|i| format!("c{i}")).collect();
    assert!(Classifier::new(&cfg).is_err());
    let builtin = builtin();
    assert!(builtin.classes().len() <= 32);
    assert!(builtin.classes().contains("default"));
}

#[test]
fn unknown_keys_are_rejected() {
    let e = toml::from_str::<ClassConfig>("[[rules]]\nclass = \"x\"\nowner_kind = [\"Job\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("owner_kind"), "{e}");
}

#[test]
fn path_rules_and_standalone_defaults() {
    use crate::inventory::path::parse;
    let cfg: ClassConfig = toml::from_str(
        r#"
        [[path_rules]]
        glob = "/system.slice/postgresql@*.service"
        class = "database"
        [[path_rules]]
        glob = "/batch/**"
        class = "batch"
        "#,
    )
    .unwrap();
    let c = Classifier::new(&cfg).unwrap();
    let class = |p: &str| c.path_class(p, &parse(p)).0;
    assert_eq!(
        class("/system.slice/postgresql@15-main.service"),
        "database"
    );
    assert_eq!(class("/batch/a/b/c"), "batch");
    assert_eq!(class("/system.slice/nginx.service"), "service");
    assert_eq!(
        class(
            "/system.slice/docker-0a9b8c7d6e5f40312233445566778899aabbccddeeff00112233445566778899.scope"
        ),
        "container"
    );
    assert_eq!(
        class("/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service"),
        "user"
    );
    assert_eq!(class("/init.scope"), "default");
    assert_eq!(class("/tollgate-test/x"), "default");
    // "*" does not cross directories.
    assert_eq!(class("/system.slice/postgresql@15/x.service"), "service");
    let e = Classifier::new(&ClassConfig {
        path_rules: vec![PathRule {
            glob: "/a/[".into(),
            class: "x".into(),
        }],
        ..ClassConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("classes.path_rules[0].glob"), "{e}");
}
