//! Storage fixtures: a scratch directory, a tmpfs mount (unwatched) and a
//! FUSE mount (bindfs, watched), each an RAII guard that unmounts and
//! removes what it made in Drop, and running a command inside a cgroup
//! "pod" without a network namespace.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cgroup::TestCgroup;
use crate::cmd::{self, Error, Output, Result};

/// `/tmp/tollgate-storage-<pid>-<n>`, removed (with everything below it)
/// on Drop. Declare it before the mounts inside it, so they are unmounted
/// first.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("tollgate-storage-{}", crate::unique_suffix()));
        fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir_all(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Never follow into something still mounted: unmount leftovers
        // lazily first (best effort), then remove.
        for m in mounts_below(&self.path) {
            let _ = cmd::run("umount", ["-l", &m.display().to_string()]);
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v
}

/// Whether something is mounted exactly at `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| Path::new(m) == dir)
}

/// `major:minor` of the file system holding `path`, as the agent and
/// mountinfo print it (glibc's gnu_dev_major/minor decoding of st_dev).
pub fn dev_of(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = fs::metadata(path)
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Ok(format!("{major}:{minor}"))
}

/// A tmpfs mounted at a directory; lazily unmounted on Drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        cmd::run(
            "mount",
            [
                "-t",
                "tmpfs",
                "-o",
                "size=64m",
                "tollgate-test",
                &dir.display().to_string(),
            ],
        )?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = cmd::run("umount", ["-l", &self.dir.display().to_string()]) {
            eprintln!("warning: {e}");
        }
    }
}

/// `bindfs -f BACKING MOUNT`: a FUSE file system (fs type `fuse.bindfs`)
/// served by a bindfs process we own. Drop unmounts (fusermount3 -u, then
/// umount -l if that fails) and reaps the daemon.
#[derive(Debug)]
pub struct Bindfs {
    dir: PathBuf,
    child: Child,
}

pub const BINDFS_FSTYPE: &str = "fuse.bindfs";

impl Bindfs {
    pub fn mount(backing: &Path, dir: &Path) -> Result<Self> {
        for d in [backing, dir] {
            fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        // subtype=bindfs makes mountinfo say `fuse.bindfs` (plain `fuse`
        // otherwise).
        let child = Command::new("bindfs")
            .args(["-f", "-o", "subtype=bindfs"])
            .arg(backing)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("starting bindfs", e))?;
        let mut me = Self {
            dir: dir.to_owned(),
            child,
        };
        let mut exited = None;
        let waited = cmd::wait_until("bindfs mounted", Duration::from_secs(20), || {
            if let Ok(Some(st)) = me.child.try_wait() {
                exited = Some(st);
                return true;
            }
            is_mounted(dir)
        });
        match (waited, exited) {
            (Ok(()), None) => Ok(me),
            (_, Some(st)) => Err(Error::Invalid(format!(
                "bindfs exited ({st}) before mounting {}",
                dir.display()
            ))),
            (Err(e), None) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts now (the Drop does the same, idempotently).
    pub fn unmount(&mut self) {
        if is_mounted(&self.dir)
            && cmd::run("fusermount3", ["-u", &self.dir.display().to_string()]).is_err()
        {
            let _ = cmd::run("umount", ["-l", &self.dir.display().to_string()]);
        }
        // bindfs exits once unmounted; make sure (our child, by pid).
        let _ = cmd::wait_until("bindfs exit", Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Joins the cgroup named by $1 and execs the rest (no network namespace:
/// storage is what is under test).
const ENTER_CGROUP: &str = r#"cg="$1"; shift; echo $$ > "$cg/cgroup.procs" && exec "$@""#;

/// Runs `argv` inside `cgroup` to completion within `timeout`.
pub fn run_in<S: AsRef<OsStr>>(
    cgroup: &TestCgroup,
    argv: &[S],
    timeout: Duration,
) -> Result<Output> {
    let mut c = Command::new("sh");
    c.args(["-c", ENTER_CGROUP, "sh"])
        .arg(cgroup.path())
        .args(argv);
    let what = cmd::describe(&c);
    cmd::check(&what, cmd::output(c, timeout)?)
}
