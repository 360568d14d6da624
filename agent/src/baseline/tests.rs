//! Learning period, persistence (round trip, corruption, wrong version),
//! export and import.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Baselines, Feature, StoreError, store};
use crate::detect::{
    DetectConfig,
    synth::{self, Spec},
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("tollgate-baseline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cfg() -> DetectConfig {
    DetectConfig {
        learning_windows: 100,
        learning_duration: Duration::from_secs(1800),
        ..DetectConfig::default()
    }
}

/// Baselines trained on `hours` of synthetic benign windows.
fn trained(hours: u64) -> Baselines {
    let mut b = Baselines::new(&cfg());
    let spec = Spec {
        duration: Duration::from_secs(hours * 3600),
        pods_per_class: 2,
        ..Spec::default()
    };
    for s in synth::generate(&spec) {
        b.train(&s, &BTreeMap::new());
    }
    b
}

#[test]
fn learning_needs_windows_and_duration() {
    let mut b = Baselines::new(&cfg());
    let spec = Spec {
        duration: Duration::from_secs(3600),
        pods_per_class: 1,
        ..Spec::default()
    };
    let samples: Vec<_> = synth::generate(&spec)
        .into_iter()
        .filter(|s| s.subject.class == "training")
        .collect();
    // 100 windows (1000 s) is enough windows but not 30 minutes.
    for s in &samples[..100] {
        b.train(s, &BTreeMap::new());
    }
    assert!(!b.learned("training"));
    // The duration counts from the end of the first window: 30 minutes
    // after it is the end of window 181.
    for s in &samples[100..180] {
        b.train(s, &BTreeMap::new());
    }
    assert!(!b.learned("training"));
    b.train(&samples[180], &BTreeMap::new());
    assert!(b.learned("training"));
    assert_eq!(b.class("training").unwrap().windows, 181);
    assert!(b.class("training").unwrap().gmm().is_some());
    assert!(!b.learned("service"));
}

#[test]
fn persistence_round_trip() {
    let dir = TempDir::new("roundtrip");
    let b = trained(1);
    b.save_dir(dir.path()).unwrap();
    let back = Baselines::load_dir(dir.path(), &cfg()).unwrap();
    assert_eq!(back.state(), b.state());
    for class in synth::CLASSES {
        assert!(back.learned(class));
        for f in Feature::ALL {
            assert_eq!(
                back.quantile(class, f),
                b.quantile(class, f),
                "{class} {f:?}"
            );
        }
        // The mixture is refitted on load from the persisted reservoir
        // (the file does not depend on linfa's internals).
        let g = back.class(class).unwrap().gmm().unwrap();
        assert_eq!(g.trained_on, b.state().classes[class].reservoir.len());
        assert!(g.threshold.is_finite());
    }
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [store::FILE_NAME]);
    // A missing file means fresh baselines.
    let empty = TempDir::new("empty");
    assert_eq!(
        Baselines::load_dir(empty.path(), &cfg())
            .unwrap()
            .classes()
            .count(),
        0
    );
}

#[test]
fn corrupted_and_wrong_version_files_are_rejected() {
    let dir = TempDir::new("corrupt");
    trained(1).save_dir(dir.path()).unwrap();
    let path = dir.path().join(store::FILE_NAME);
    let good = std::fs::read(&path).unwrap();

    // One flipped byte in the payload.
    let mut bad = good.clone();
    let i = bad.len() - 10;
    bad[i] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let e = Baselines::load_dir(dir.path(), &cfg()).unwrap_err();
    assert!(matches!(e, StoreError::Checksum { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("corrupt") && msg.contains(store::FILE_NAME),
        "{msg}"
    );

    // A truncated file.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(
        Baselines::load_dir(dir.path(), &cfg()),
        Err(StoreError::Checksum { .. })
    ));

    // Version 2 header.
    let text = String::from_utf8(good.clone()).unwrap();
    let v2 = text.replacen("\"version\":1", "\"version\":2", 1);
    std::fs::write(&path, v2).unwrap();
    let e = Baselines::load_dir(dir.path(), &cfg()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Version {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("version 2"), "{e}");

    // Not a baselines file at all.
    std::fs::write(&path, b"{\"hello\":1}\n{}").unwrap();
    assert!(matches!(
        Baselines::load_dir(dir.path(), &cfg()),
        Err(StoreError::Format { .. })
    ));
}

#[test]
fn export_then_import_merges_per_class() {
    let node_a = TempDir::new("node-a");
    let node_b = TempDir::new("node-b");
    let file = node_a.path().join("export.json");
    let a = trained(1);
    a.save_dir(node_a.path()).unwrap();
    assert_eq!(store::export(node_a.path(), &file).unwrap(), 4);

    // Node B knows one class of its own and an older "training".
    let mut b_state = super::BaselinesState::default();
    let a_state = a.state();
    b_state
        .classes
        .insert("batch".into(), a_state.classes["service"].clone());
    let mut old_training = a_state.classes["training"].clone();
    old_training.windows = 1;
    b_state.classes.insert("training".into(), old_training);
    store::save(&node_b.path().join(store::FILE_NAME), &b_state).unwrap();

    let report = store::import(node_b.path(), &file).unwrap();
    assert_eq!(report.added, ["notebook", "pipeline", "service"]);
    assert_eq!(report.replaced, ["training"]);
    assert_eq!(report.kept, ["batch"]);
    let merged = Baselines::load_dir(node_b.path(), &cfg()).unwrap();
    assert_eq!(merged.classes().count(), 5);
    assert_eq!(
        merged.class("training").unwrap().windows,
        a.class("training").unwrap().windows
    );

    // A corrupt export is refused and node B's file is untouched.
    let before = std::fs::read(node_b.path().join(store::FILE_NAME)).unwrap();
    let mut data = std::fs::read(&file).unwrap();
    let n = data.len();
    data[n - 3] ^= 0x20;
    std::fs::write(&file, data).unwrap();
    assert!(matches!(
        store::import(node_b.path(), &file),
        Err(StoreError::Checksum { .. })
    ));
    assert_eq!(
        std::fs::read(node_b.path().join(store::FILE_NAME)).unwrap(),
        before
    );
}
