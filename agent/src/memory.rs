//! Handing freed heap back to the kernel after pod churn.
//!
//! When a thousand short-lived pods come and go, the per-pod state the
//! agent kept for them (collector rows, windows, detector state, series) is
//! freed, but glibc's allocator keeps the pages: RSS stays at the churn's
//! peak. After a large drop in the number of live cgroups the agent asks
//! the allocator to return free pages (`malloc_trim`), so memory goes back
//! to its level before the churn. Cheap (a few ms) and rare: only after a
//! drop of at least [`MIN_DROP`] cgroups and a quarter of the peak.

/// Smallest drop in live cgroups (from the peak since the last trim)
/// worth a trim.
pub const MIN_DROP: usize = 256;

/// Tracks the live cgroup count and decides when to trim.
#[derive(Debug, Default)]
pub struct Trimmer {
    peak: usize,
    trims: u64,
}

impl Trimmer {
    /// Notes this tick's live cgroup count; trims the heap and returns
    /// true after a large drop.
    pub fn observe(&mut self, live: usize) -> bool {
        self.peak = self.peak.max(live);
        if !should_trim(self.peak, live) {
            return false;
        }
        self.peak = live;
        self.trims += 1;
        trim();
        true
    }

    /// Trims so far.
    pub fn trims(&self) -> u64 {
        self.trims
    }
}

fn should_trim(peak: usize, live: usize) -> bool {
    let drop = peak.saturating_sub(live);
    drop >= MIN_DROP && drop >= peak / 4
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // memory; it takes no pointers and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_large_drop_only() {
        let mut t = Trimmer::default();
        assert!(!t.observe(110));
        assert!(!t.observe(1110));
        // 1110 -> 900: 210 < MIN_DROP.
        assert!(!t.observe(900));
        assert!(t.observe(110));
        assert_eq!(t.trims(), 1);
        // The peak restarts from the level after the trim.
        assert!(!t.observe(110));
        assert!(!t.observe(0));
        // 10,000 -> 9,000: a tenth, not worth it; -> 7,000: a quarter+.
        assert!(!t.observe(10_000));
        assert!(!t.observe(9_000));
        assert!(t.observe(7_000));
        assert_eq!(t.trims(), 2);
    }
}
