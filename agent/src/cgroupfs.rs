//! The cgroup v2 tree: where it is mounted and which directory each cgroup
//! id (the directory's inode number, what bpf_skb_cgroup_id returns) is.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error(
        "cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo): mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with systemd.unified_cgroup_hierarchy=1"
    )]
    NotMounted,
}

/// Finds the cgroup v2 mount point: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones, anything else where admins put it.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    cgroup2_mount_in(&text).ok_or(CgroupError::NotMounted)
}

/// Parses mountinfo text (see proc(5)): the mount point is field 5, the
/// filesystem type follows the " - " separator. Prefers a mount of the
/// cgroup root ("/") when there are several (e.g. bind mounts in a
/// container).
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    let mut best: Option<(bool, PathBuf)> = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = pre.split_whitespace().collect();
        let (Some(root), Some(mnt)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let is_root = *root == "/";
        let path = PathBuf::from(unescape_mountinfo(mnt));
        if best.as_ref().is_none_or(|(r, _)| !r && is_root) {
            best = Some((is_root, path));
        }
    }
    best.map(|(_, p)| p)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How deep the walk goes; kubelet's deepest layout is 4-5 levels.
const MAX_DEPTH: usize = 16;

/// cgroup id -> path relative to the mount ("/" for the root).
#[derive(Debug, Default, Clone)]
pub struct CgroupIndex {
    by_id: HashMap<u64, String>,
}

impl CgroupIndex {
    /// Walks the tree below `mount`. Directories that vanish mid-walk are
    /// skipped (pods come and go).
    pub fn scan(mount: &Path) -> Self {
        let mut by_id = HashMap::new();
        let mut stack = vec![(mount.to_path_buf(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(mount).unwrap_or(Path::new(""));
            by_id.insert(meta.ino(), format!("/{}", rel.display()));
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
        Self { by_id }
    }

    pub fn path(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// (cgroup id, path) pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.by_id.iter().map(|(id, p)| (*id, p.as_str()))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";
    const UNIFIED: &str = "\
30 23 0:26 /kubepods.slice /host/cg rw - cgroup2 cgroup2 rw
31 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        assert_eq!(
            cgroup2_mount_in(HYBRID).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        // A bind mount of a sub-tree loses to the root mount.
        assert_eq!(
            cgroup2_mount_in(UNIFIED).unwrap(),
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(
            cgroup2_mount_in("1 2 0:1 / /x rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/tail\\04"), "/tail\\04");
    }

    #[test]
    fn scans_a_directory_tree() {
        let dir = std::env::temp_dir().join(format!("tg-cgidx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let idx = CgroupIndex::scan(&dir);
        let ino = std::fs::metadata(dir.join("a/b")).unwrap().ino();
        assert_eq!(idx.path(ino), Some("/a/b"));
        let root = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(idx.path(root), Some("/"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
