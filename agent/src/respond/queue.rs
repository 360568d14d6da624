//! A bounded first-in-first-out queue kept on disk, one JSON file per item
//! (`<seq>.json`, written to a temporary name and renamed, so a crash
//! leaves either the whole item or nothing). Alert deliveries wait here
//! until a receiver acknowledges them, so they survive an unreachable
//! Alertmanager and agent restarts.
//!
//! Bounded: when full, the oldest item is deleted to make room and counted
//! in [`DiskQueue::dropped`] (never silently). Items that cannot be read
//! back on open are renamed `*.corrupt`, logged and counted the same way.

use std::{
    collections::VecDeque,
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "alert queue {path}: {what}: {source} (the state directory must be writable by the agent: check agent.state_dir)"
    )]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QueueError {
    let path = path.to_owned();
    move |source| QueueError::Io { what, path, source }
}

/// The queue; `T` is one item's JSON form.
#[derive(Debug)]
pub struct DiskQueue<T> {
    dir: PathBuf,
    max: usize,
    items: VecDeque<(u64, T)>,
    next_seq: u64,
    dropped: u64,
}

impl<T: Serialize + DeserializeOwned> DiskQueue<T> {
    /// Opens (creating) the queue in `dir` and reads back what a previous
    /// run left, oldest first.
    pub fn open(dir: &Path, max: usize) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let e = e.map_err(io_err("listing", dir))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // An item whose write never completed was never enqueued.
                let _ = std::fs::remove_file(&path);
            } else if let Some(seq) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                found.push((seq, path));
            }
        }
        found.sort_unstable();
        let mut q = Self {
            dir: dir.to_owned(),
            max: max.max(1),
            items: VecDeque::with_capacity(found.len()),
            next_seq: found.last().map_or(0, |(s, _)| s + 1),
            dropped: 0,
        };
        for (seq, path) in found {
            let item = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<T>(&b).ok());
            match item {
                Some(item) => q.items.push_back((seq, item)),
                None => {
                    let aside = path.with_extension("corrupt");
                    tracing::warn!(file = %path.display(), moved_to = %aside.display(), "unreadable queued alert; moved aside and counted as dropped");
                    let _ = std::fs::rename(&path, &aside);
                    q.dropped += 1;
                }
            }
        }
        q.trim()?;
        Ok(q)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Deletes the oldest items beyond `max`.
    fn trim(&mut self) -> Result<usize, QueueError> {
        let mut n = 0;
        while self.items.len() > self.max {
            let (seq, _) = self.items.pop_front().expect("non-empty");
            let p = self.path(seq);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("deleting", &p)(e)),
            }
            self.dropped += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Appends an item (durably: written and synced before this returns).
    /// Returns how many old items were dropped to make room.
    pub fn push(&mut self, item: T) -> Result<usize, QueueError> {
        let seq = self.next_seq;
        let path = self.path(seq);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let body = serde_json::to_vec(&item).expect("queue items serialize");
        let mut f = std::fs::File::create(&tmp).map_err(io_err("writing", &tmp))?;
        f.write_all(&body).map_err(io_err("writing", &tmp))?;
        f.sync_data().map_err(io_err("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        self.next_seq += 1;
        self.items.push_back((seq, item));
        self.trim()
    }

    /// The oldest `n` items (not removed).
    pub fn peek(&self, n: usize) -> Vec<(u64, &T)> {
        self.items.iter().take(n).map(|(s, i)| (*s, i)).collect()
    }

    /// Removes the items with these sequence numbers (delivered or
    /// rejected). Items dropped meanwhile are ignored.
    pub fn remove(&mut self, seqs: &[u64]) -> Result<(), QueueError> {
        for &seq in seqs {
            if let Some(i) = self.items.iter().position(|(s, _)| *s == seq) {
                self.items.remove(i);
                let p = self.path(seq);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("deleting", &p)(e)),
                }
            }
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(_, i)| i)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items dropped because the queue was full (or unreadable on open),
    /// since this queue was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Exponential backoff between failed deliveries: `min`, `2*min`, ...
/// capped at `max`; a success resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// Records a failure; returns how long to wait before the next try.
    pub fn failure(&mut self) -> Duration {
        let d = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "tg-queue-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn files(d: &Path) -> usize {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count()
    }

    #[test]
    fn bounded_drops_oldest_and_counts() {
        let d = dir();
        let mut q = DiskQueue::<String>::open(&d, 3).unwrap();
        for i in 0..5 {
            let dropped = q.push(format!("a{i}")).unwrap();
            assert_eq!(dropped, usize::from(i >= 3));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(files(&d), 3, "dropped items are deleted from disk too");
        let v: Vec<&String> = q.iter().collect();
        assert_eq!(v, ["a2", "a3", "a4"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn survives_reopen_in_order_and_after_partial_delivery() {
        let d = dir();
        {
            let mut q = DiskQueue::<u32>::open(&d, 100).unwrap();
            for i in 0..10 {
                q.push(i).unwrap();
            }
            let first: Vec<u64> = q.peek(4).iter().map(|(s, _)| *s).collect();
            q.remove(&first).unwrap();
        }
        // A write that crashed half-way, and a corrupt item.
        std::fs::write(d.join("00000000000000000099.tmp"), b"{").unwrap();
        std::fs::write(d.join("00000000000000000050.json"), b"not json").unwrap();
        let mut q = DiskQueue::<u32>::open(&d, 100).unwrap();
        let v: Vec<u32> = q.iter().copied().collect();
        assert_eq!(v, [4, 5, 6, 7, 8, 9]);
        assert_eq!(q.dropped(), 1, "the corrupt item is counted");
        assert!(d.join("00000000000000000050.corrupt").exists());
        assert!(!d.join("00000000000000000099.tmp").exists());
        // New items go after the old ones, even past the corrupt seq.
        q.push(10).unwrap();
        assert_eq!(*q.iter().last().unwrap(), 10);
        assert_eq!(q.peek(1)[0].1, &4);
        drop(q);
        let q = DiskQueue::<u32>::open(&d, 100).unwrap();
        assert_eq!(q.len(), 7);
        assert_eq!(*q.iter().last().unwrap(), 10);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shrinking_the_bound_on_open_drops_oldest() {
        let d = dir();
        let mut q = DiskQueue::<u32>::open(&d, 10).unwrap();
        for i in 0..10 {
            q.push(i).unwrap();
        }
        drop(q);
        let q = DiskQueue::<u32>::open(&d, 4).unwrap();
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [6, 7, 8, 9]);
        assert_eq!(q.dropped(), 6);
        assert_eq!(files(&d), 4);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let got: Vec<u128> = (0..6).map(|_| b.failure().as_millis()).collect();
        assert_eq!(got, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.failure(), Duration::from_millis(250));
        // Many failures never overflow.
        for _ in 0..100 {
            b.failure();
        }
        assert_eq!(b.failure(), Duration::from_secs(2));
    }
}
