//! Watched storage: which mounts' reads and writes are counted. The agent
//! reads the host's mountinfo every tick, picks the mounts whose fs type
//! or mount point is watched, and keeps the kernel's device filter
//! (`TG_ST_DEVS`) equal to their devices. The collector uses the same
//! table to name devices (mount point, fs type) in snapshots.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tollgate_ebpf::{dev_parts, kernel_dev};

use crate::cgroupfs::unescape_mountinfo;

/// Fs types always watched: the shared file systems training data lives on.
pub const DEFAULT_FSTYPES: [&str; 4] = ["ceph", "fuse.ceph-fuse", "nfs", "nfs4"];

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// mountinfo's mount id.
    pub id: u32,
    /// Kernel dev_t of the super block (`major << 20 | minor`).
    pub dev: u32,
    pub mount_point: PathBuf,
    /// `fuse.<subtype>` for FUSE mounts with a subtype, as mountinfo says.
    pub fstype: String,
    pub source: String,
}

impl Mount {
    /// `major:minor`, as mountinfo and `stat` print it.
    pub fn dev_string(&self) -> String {
        dev_string(self.dev)
    }
}

/// `major:minor` of a kernel dev_t.
pub fn dev_string(dev: u32) -> String {
    let (ma, mi) = dev_parts(dev);
    format!("{ma}:{mi}")
}

/// Parses mountinfo (proc(5)): `id parent major:minor root mount_point
/// options [optional fields...] - fstype source super_options`. Lines that
/// do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut pre = pre.split_whitespace();
            let id = pre.next()?.parse().ok()?;
            let _parent = pre.next()?;
            let (ma, mi) = pre.next()?.split_once(':')?;
            let dev = kernel_dev(ma.parse().ok()?, mi.parse().ok()?);
            let _root = pre.next()?;
            let mount_point = PathBuf::from(unescape_mountinfo(pre.next()?));
            let mut post = post.split_whitespace();
            let fstype = post.next()?.to_owned();
            let source = unescape_mountinfo(post.next().unwrap_or("none"));
            Some(Mount {
                id,
                dev,
                mount_point,
                fstype,
                source,
            })
        })
        .collect()
}

/// Reads and parses a mountinfo file.
pub fn read_mountinfo(path: &Path) -> std::io::Result<Vec<Mount>> {
    std::fs::read_to_string(path).map(|t| parse_mountinfo(&t))
}

/// What is watched: the default fs types plus configured ones, and mounts
/// at or below configured paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRules {
    pub fstypes: Vec<String>,
    pub paths: Vec<PathBuf>,
}

impl WatchRules {
    pub fn new(extra_fstypes: &[String], paths: &[PathBuf]) -> Self {
        let mut fstypes: Vec<String> = DEFAULT_FSTYPES.iter().map(|s| s.to_string()).collect();
        for t in extra_fstypes {
            if !fstypes.contains(t) {
                fstypes.push(t.clone());
            }
        }
        Self {
            fstypes,
            paths: paths.to_vec(),
        }
    }

    pub fn matches(&self, m: &Mount) -> bool {
        self.fstypes.contains(&m.fstype) || self.paths.iter().any(|p| m.mount_point.starts_with(p))
    }

    /// Watched devices, each with the mount that names it (the one with
    /// the shortest mount point when a file system is mounted several
    /// times, e.g. bind mounts into containers).
    pub fn watched(&self, mounts: &[Mount]) -> BTreeMap<u32, Mount> {
        let mut out: BTreeMap<u32, Mount> = BTreeMap::new();
        for m in mounts.iter().filter(|m| self.matches(m)) {
            match out.get(&m.dev) {
                Some(cur)
                    if cur.mount_point.as_os_str().len() <= m.mount_point.as_os_str().len() => {}
                _ => {
                    out.insert(m.dev, m.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
120 22 0:54 / /mnt/ceph rw,relatime shared:60 - ceph 10.0.0.1:6789:/ rw,name=admin
121 22 0:55 / /mnt/data\\040set rw - fuse.bindfs /srv/data rw,user_id=0
122 22 0:56 / /mnt/tmp rw - tmpfs tmpfs rw
123 22 0:54 /sub /var/lib/kubelet/pods/x/volumes/cephfs rw - ceph 10.0.0.1:6789:/ rw
124 22 0:57 / /var/lib/kubelet/pods/y/volumes/nfs rw - nfs4 srv:/export rw
garbage line
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[1].id, 120);
        assert_eq!(m[1].dev, kernel_dev(0, 54));
        assert_eq!(m[1].dev_string(), "0:54");
        assert_eq!(m[1].fstype, "ceph");
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/data set"));
        assert_eq!(m[2].fstype, "fuse.bindfs");
        assert_eq!(m[2].source, "/srv/data");
    }

    #[test]
    fn watches_defaults_configured_types_and_paths() {
        let m = parse_mountinfo(INFO);
        let w = WatchRules::new(&[], &[]).watched(&m);
        let devs: Vec<String> = w.values().map(Mount::dev_string).collect();
        assert_eq!(devs, ["0:54", "0:57"]);
        // The same ceph fs twice: named by the shorter mount point.
        assert_eq!(w[&kernel_dev(0, 54)].mount_point, Path::new("/mnt/ceph"));
        let w = WatchRules::new(&["fuse.bindfs".into()], &[PathBuf::from("/mnt/tmp")]).watched(&m);
        let devs: Vec<String> = w.values().map(Mount::dev_string).collect();
        assert_eq!(devs, ["0:54", "0:55", "0:56", "0:57"]);
        // A path rule covers mounts below it, not siblings with a prefix.
        let w = WatchRules::new(&[], &[PathBuf::from("/mnt/t")]).watched(&m);
        assert!(!w.contains_key(&kernel_dev(0, 56)));
    }
}
