//! Which known cgroups still exist: the liveness check the collector's
//! every tick runs for every cgroup the kernel reports.
//!
//! A cgroup exists while the directory at its path has its id as inode
//! number. One stat per cgroup is a path walk through cgroupfs each (at
//! 10,000 cgroups a third of the agent's CPU, measured). Siblings are
//! instead checked with one listing of their parent: readdir returns each
//! child's inode number (cgroupfs: the cgroup id) without a lookup.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path};

/// Siblings from which one parent listing is cheaper than a stat each.
pub const READDIR_MIN: usize = 16;

/// The ids among `cgroups` (id, path below `mount`) whose directory is
/// gone or now belongs to another cgroup (a new one at the same path).
pub fn gone<'a>(mount: &Path, cgroups: impl IntoIterator<Item = (u64, &'a str)>) -> Vec<u64> {
    let mut by_parent: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    let mut out = Vec::new();
    for (id, path) in cgroups {
        let rel = path.trim_matches('/');
        match rel.rsplit_once('/') {
            Some((parent, name)) => by_parent.entry(parent).or_default().push((id, name)),
            // A child of the root cgroup: the root is listed like any parent.
            None if !rel.is_empty() => by_parent.entry("").or_default().push((id, rel)),
            // The root cgroup itself.
            None => {
                if !same_id(mount, id) {
                    out.push(id);
                }
            }
        }
    }
    let mut buf: Vec<u8> = Vec::new();
    for (parent, kids) in by_parent {
        let dir = mount.join(parent);
        if kids.len() < READDIR_MIN {
            out.extend(
                kids.iter()
                    .filter(|(id, name)| !same_id(&dir.join(name), *id))
                    .map(|(id, _)| *id),
            );
            continue;
        }
        // Several ids can claim one name (a removed cgroup and the one
        // re-created at its path): at most the directory's is alive.
        let mut want: HashMap<&[u8], Vec<u64>> = HashMap::new();
        for (id, name) in &kids {
            want.entry(name.as_bytes()).or_default().push(*id);
        }
        // An unreadable parent (removed with its children) leaves them all
        // in `want`: gone.
        let _ = list(&dir, &mut buf, |name, ino| {
            if let Some(ids) = want.get_mut(name) {
                ids.retain(|id| *id != ino);
            }
        });
        out.extend(want.into_values().flatten());
    }
    out
}

/// Hands `f` the name and inode number of every entry of `dir`, with
/// getdents64 into `buf` (no allocation per entry, unlike
/// std::fs::read_dir: a parent of 10,000 cgroups is listed every tick).
fn list(dir: &Path, buf: &mut Vec<u8>, mut f: impl FnMut(&[u8], u64)) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags, RawDir};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Room for hundreds of entries per getdents64 call; a name is at most
    // 255 bytes, so every entry fits.
    buf.clear();
    buf.reserve(64 * 1024);
    let mut entries = RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(e) = entries.next() {
        let e = e?;
        f(e.file_name().to_bytes(), e.ino());
    }
    Ok(())
}

fn same_id(path: &Path, id: u64) -> bool {
    std::fs::metadata(path).map(|m| m.ino()).ok() == Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).expect("stat").ino()
    }

    /// Both paths (listing and stat) on a real directory tree: what exists
    /// with the right inode is alive; missing, replaced or wrongly
    /// numbered directories are gone.
    #[test]
    fn listing_and_stat_agree() {
        let root = std::env::temp_dir().join(format!("tg-alive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let many = root.join("many");
        let few = root.join("few");
        for i in 0..READDIR_MIN + 4 {
            std::fs::create_dir_all(many.join(format!("c{i}"))).expect("mkdir");
        }
        std::fs::create_dir_all(few.join("a")).expect("mkdir");
        std::fs::create_dir_all(few.join("b")).expect("mkdir");
        let mut cgroups: Vec<(u64, String)> = (0..READDIR_MIN + 4)
            .map(|i| (ino(&many.join(format!("c{i}"))), format!("/many/c{i}")))
            .collect();
        cgroups.push((ino(&few.join("a")), "/few/a".into()));
        cgroups.push((ino(&few.join("b")), "/few/b".into()));
        cgroups.push((ino(&root), "/".into()));
        cgroups.push((ino(&many), "/many".into()));
        let alive = |c: &[(u64, String)]| {
            let mut g = gone(&root, c.iter().map(|(i, p)| (*i, p.as_str())));
            g.sort_unstable();
            g
        };
        assert_eq!(alive(&cgroups), Vec::<u64>::new());

        // Removed (both ways), re-created under the same name (new inode),
        // and an id that never matched.
        let removed_many = cgroups[3].0;
        std::fs::remove_dir(many.join("c3")).expect("rmdir");
        let removed_few = cgroups[READDIR_MIN + 4].0;
        std::fs::remove_dir(few.join("a")).expect("rmdir");
        let replaced = cgroups[5].0;
        std::fs::remove_dir(many.join("c5")).expect("rmdir");
        std::fs::create_dir(many.join("spacer")).expect("mkdir");
        std::fs::create_dir(many.join("c5")).expect("mkdir");
        let stranger = u64::MAX - 7;
        cgroups.push((stranger, "/many/c0".into()));
        let mut expect = vec![removed_many, removed_few, stranger];
        if ino(&many.join("c5")) != replaced {
            expect.push(replaced);
        }
        expect.sort_unstable();
        assert_eq!(alive(&cgroups), expect);

        // A removed parent takes every child listed under it.
        std::fs::remove_dir_all(&many).expect("rm many");
        let all_many = alive(&cgroups).len();
        assert_eq!(all_many, READDIR_MIN + 4 + 1 + 1 + 1);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
