//! CPU time and limit of a cgroup (cgroup v2 cpu controller files).
//!
//! Reading a cgroup's cpu.stat makes the kernel flush its rstat tree
//! (`css_rstat_flush`). To do that it unlinks the cgroup from its parent's
//! list of updated children, a singly linked list it walks from the head,
//! with interrupts off, once per CPU. A parent with thousands of children
//! that ran since the last flush therefore makes every child's read walk
//! thousands of entries: reading all of them is quadratic. Measured here
//! (kernel 6.18, 10,000 sibling cgroups, a process hopping through them
//! meanwhile): 4.5 ms per read in random order, 45 s for one window close;
//! with [`UsageReader`] flushing their top-level ancestor first (and every
//! [`FLUSH_EVERY`] reads, as the hops keep re-adding children) 27-40 us.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Reads `usage_usec` from a cgroup's cpu.stat.
pub fn cpu_usage_usec(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the limit in cores from cpu.max ("max 100000" = unlimited).
pub fn cpu_limit_cores(dir: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

/// Reads between two flushes of the top-level ancestors: bounds how many
/// children can be re-added to a parent's updated list in between.
pub const FLUSH_EVERY: usize = 256;

/// Reads the CPU usage of many cgroups (all below one cgroup mount),
/// flushing their top-level ancestors' rstat trees first (see the module
/// docs). The top level itself is a child of the root, whose cpu.stat does
/// not flush, so one read per top-level cgroup empties every list below.
pub struct UsageReader {
    tops: Vec<PathBuf>,
    reads: usize,
}

impl UsageReader {
    /// `dirs`: the cgroup directories that will be read, below `mount`.
    pub fn new<'a>(mount: &Path, dirs: impl IntoIterator<Item = &'a Path>) -> Self {
        let tops: BTreeSet<PathBuf> = dirs
            .into_iter()
            .filter_map(|d| {
                let first = d.strip_prefix(mount).ok()?.components().next()?;
                // A top-level cgroup itself gains nothing from flushing.
                (d.strip_prefix(mount).ok()?.components().count() > 1).then(|| mount.join(first))
            })
            .collect();
        Self {
            tops: tops.into_iter().collect(),
            reads: 0,
        }
    }

    /// `usage_usec` of `dir` (None if unreadable, e.g. removed).
    pub fn usage_usec(&mut self, dir: &Path) -> Option<u64> {
        if self.reads.is_multiple_of(FLUSH_EVERY) {
            for t in &self.tops {
                // Only the side effect (the flush) matters here.
                let _ = cpu_usage_usec(t);
            }
        }
        self.reads += 1;
        cpu_usage_usec(dir)
    }

    /// Top-level cgroups flushed (for tests).
    pub fn tops(&self) -> &[PathBuf] {
        &self.tops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_each_top_level_ancestor_once() {
        let m = Path::new("/sys/fs/cgroup");
        let dirs = [
            "/sys/fs/cgroup/kubepods.slice/a/b",
            "/sys/fs/cgroup/kubepods.slice/c",
            "/sys/fs/cgroup/system.slice/x.service",
            // Top-level cgroups and paths outside the mount: nothing to flush.
            "/sys/fs/cgroup/init.scope",
            "/elsewhere/y/z",
        ]
        .map(PathBuf::from);
        let r = UsageReader::new(m, dirs.iter().map(PathBuf::as_path));
        assert_eq!(
            r.tops(),
            [
                PathBuf::from("/sys/fs/cgroup/kubepods.slice"),
                PathBuf::from("/sys/fs/cgroup/system.slice")
            ]
        );
    }
}
