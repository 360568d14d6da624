//! Pins of older ABI versions. Every build pins under `<pin dir>/v<ABI>`;
//! an upgrade leaves the previous `v<N>` behind, and its links would keep
//! old programs attached (counting twice, or enforcing stale entries). At
//! start the agent removes, in every `v<N>` other than its own, the pins
//! that are recognisably Tollgate's: maps named `TG_*`, links named `tg_*`
//! and tc links `<ifindex>_<direction>` under `links/tc`, then the
//! directories that end up empty. Anything else (a foreign directory or
//! pin in the pin dir, or inside a `v<N>`) is left where it is and logged.

use std::{fs, path::Path};

use tollgate_ebpf::ABI_VERSION;

/// Removes our pins from `<root>/v<N>` for every N != ABI_VERSION. Never
/// fails the start: what cannot be removed is logged.
pub fn remove_stale_versions(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let version = name.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        match version {
            Some(v) if v != ABI_VERSION && is_dir => {
                let (removed, kept) = clean_dir(&e.path(), Level::Version);
                tracing::info!(dir = %e.path().display(), version = v, removed, kept, "removed pins of an older Tollgate ABI version");
            }
            Some(_) => {}
            None => {
                tracing::info!(path = %e.path().display(), "not a Tollgate pin; left untouched");
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Version,
    Maps,
    Links,
    TcLinks,
}

/// Whether `name` at `level` is one of our pins.
fn ours(level: Level, name: &str) -> bool {
    match level {
        Level::Version => false,
        Level::Maps => name.starts_with("TG_"),
        Level::Links => name.starts_with("tg_"),
        Level::TcLinks => name.split_once('_').is_some_and(|(i, d)| {
            !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && !d.is_empty()
        }),
    }
}

/// Our subdirectories below `level`.
fn subdir(level: Level, name: &str) -> Option<Level> {
    match (level, name) {
        (Level::Version, "maps") => Some(Level::Maps),
        (Level::Version, "links") => Some(Level::Links),
        (Level::Links, "tc") => Some(Level::TcLinks),
        _ => None,
    }
}

/// Removes our pins under `dir`; returns (removed, kept) counts. `dir`
/// itself is removed when it ends up empty.
fn clean_dir(dir: &Path, level: Level) -> (usize, usize) {
    let (mut removed, mut kept) = (0, 0);
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && let Some(sub) = subdir(level, &name) {
                let (r, k) = clean_dir(&path, sub);
                removed += r;
                kept += k;
            } else if !is_dir && ours(level, &name) {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(err) => {
                        tracing::warn!(pin = %path.display(), error = %err, "could not remove an old pin; remove it by hand");
                        kept += 1;
                    }
                }
            } else {
                tracing::info!(path = %path.display(), "not a Tollgate pin; left untouched");
                kept += 1;
            }
        }
    }
    if kept == 0 {
        let _ = fs::remove_dir(dir);
    }
    (removed, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_our_names() {
        assert!(ours(Level::Maps, "TG_CG_STATS"));
        assert!(!ours(Level::Maps, "cilium_ct4"));
        assert!(ours(Level::Links, "tg_skb_egress"));
        assert!(!ours(Level::Links, "other"));
        assert!(ours(Level::TcLinks, "12_egress"));
        assert!(!ours(Level::TcLinks, "x_egress"));
        assert!(!ours(Level::TcLinks, "12_"));
        assert!(!ours(Level::Version, "TG_CG_STATS"));
        assert_eq!(subdir(Level::Version, "maps").map(|_| ()), Some(()));
        assert!(subdir(Level::Maps, "links").is_none());
    }

    #[test]
    fn cleans_a_plain_directory_tree_and_keeps_foreign_entries() {
        // On a plain filesystem (the names are what matters here; the
        // privileged test does it on bpffs with real pins).
        let root = std::env::temp_dir().join(format!("tg-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("v0/maps")).unwrap();
        fs::create_dir_all(root.join("v0/links/tc")).unwrap();
        fs::create_dir_all(root.join("v1/maps")).unwrap();
        fs::create_dir_all(root.join("foreign")).unwrap();
        for f in [
            "v0/maps/TG_CG_STATS",
            "v0/links/tg_skb_egress",
            "v0/links/tc/3_egress",
            "v1/maps/TG_CG_STATS",
            "foreign/TG_CG_STATS",
            "other_pin",
        ] {
            fs::write(root.join(f), "").unwrap();
        }
        fs::create_dir_all(root.join("v2/maps")).unwrap();
        fs::write(root.join("v2/maps/TG_FLOWS"), "").unwrap();
        fs::write(root.join("v2/not_ours"), "").unwrap();
        remove_stale_versions(&root);
        assert!(!root.join("v0").exists());
        assert!(
            root.join("v1/maps/TG_CG_STATS").exists(),
            "current version kept"
        );
        assert!(root.join("foreign/TG_CG_STATS").exists());
        assert!(root.join("other_pin").exists());
        assert!(!root.join("v2/maps").exists());
        assert!(
            root.join("v2/not_ours").exists(),
            "foreign entry inside v2 kept"
        );
        let _ = fs::remove_dir_all(&root);
    }
}
