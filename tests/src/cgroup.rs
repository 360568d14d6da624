//! Test cgroups under the cgroup v2 hierarchy.
//!
//! The agent attaches at the v2 root and reports per-cgroup counters keyed
//! by cgroup id, which is the inode number of the cgroup directory
//! (`bpf_skb_cgroup_id` returns the kernfs node id, equal to that inode).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, Error, Result};

/// Directory under the v2 mount that holds every test cgroup, so a leak is
/// easy to spot and to clean by hand.
pub const PARENT: &str = "tollgate-test";

/// The cgroup v2 mount point from /proc/self/mountinfo: `/sys/fs/cgroup` on
/// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones like these.
pub fn v2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    parse_v2_mount(&info).ok_or_else(|| {
        Error::Invalid(
            "cgroup v2 not mounted: mount it with `mount -t cgroup2 none /sys/fs/cgroup`".into(),
        )
    })
}

/// mountinfo: `id parent maj:min root mountpoint opts [optional...] - fstype src superopts`.
fn parse_v2_mount(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace()
            .nth(4)
            .map(|m| PathBuf::from(unescape(m)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8) + (c - b'0')),
                );
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RAII guard for `<mount>/tollgate-test/<name>-<pid>-<n>`.
#[derive(Debug)]
pub struct TestCgroup {
    mount: PathBuf,
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Result<TestCgroup> {
        let mount = v2_mount()?;
        let parent = mount.join(PARENT);
        // A concurrent test may create or remove the parent at the same
        // time; retry instead of failing on that race.
        let path = parent.join(format!("{name}-{}", crate::unique_suffix()));
        let mut last = None;
        for _ in 0..50 {
            match fs::create_dir_all(&parent).and_then(|()| fs::create_dir(&path)) {
                Ok(()) => return Ok(TestCgroup { mount, path }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(Error::io(format!("creating cgroup {}", path.display()), e)),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(Error::io(
            format!("creating cgroup {}", path.display()),
            last.unwrap_or_else(|| std::io::Error::other("raced with parent removal")),
        ))
    }

    /// Absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path relative to the v2 mount, with a leading `/` (as in
    /// /proc/<pid>/cgroup and the agent's `path` field).
    pub fn rel_path(&self) -> String {
        let rel = self.path.strip_prefix(&self.mount).unwrap_or(&self.path);
        format!("/{}", rel.display())
    }

    /// The cgroup id the kernel (and the agent) uses.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0)
    }

    /// Creates `rel` (nested directories allowed, e.g. a kubelet layout)
    /// below this cgroup; removed with it on drop.
    pub fn child(&self, rel: &str) -> Result<PathBuf> {
        let p = self.path.join(rel.trim_start_matches('/'));
        fs::create_dir_all(&p)
            .map_err(|e| Error::io(format!("creating cgroup {}", p.display()), e))?;
        Ok(p)
    }

    /// Moves a process (and, as cgroup v2 does, all its threads) here.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .map_err(|e| Error::io(format!("moving pid {pid} into {}", self.path.display()), e))
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process in the cgroup. `cgroup.kill` (Linux 5.14) is
    /// atomic against forks; older kernels get one SIGKILL per listed pid.
    pub fn kill_all(&self) {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
            return;
        }
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        if !pids.is_empty() {
            let _ = cmd::run(
                "kill",
                ["-9"].into_iter().chain(pids.iter().map(String::as_str)),
            );
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill_all();
        // cgroup.kill covers descendants; rmdir them deepest first.
        let mut below = Vec::new();
        let mut stack = vec![self.path.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                    below.push(e.path());
                }
            }
        }
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in below {
            let _ = cmd::wait_until("cgroup rmdir", Duration::from_secs(5), || {
                fs::remove_dir(&d).is_ok() || !d.exists()
            });
        }
        // rmdir fails with EBUSY until the killed tasks have exited.
        let removed =
            cmd::wait_until(
                "cgroup rmdir",
                Duration::from_secs(5),
                || match fs::remove_dir(&self.path) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                },
            );
        if removed.is_err() {
            eprintln!(
                "warning: could not remove cgroup {} (pids {:?})",
                self.path.display(),
                self.pids()
            );
        }
        // Only succeeds once the last concurrent test cgroup is gone.
        let _ = fs::remove_dir(self.mount.join(PARENT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        assert_eq!(
            parse_v2_mount(HYBRID),
            Some("/sys/fs/cgroup/unified".into())
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_v2_mount(unified), Some("/sys/fs/cgroup".into()));
        assert_eq!(parse_v2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain\x"), r"/plain\x");
    }
}
