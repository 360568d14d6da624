//! Raw bpf(2) and mount calls that aya 0.14 does not wrap: batch map
//! lookups (BPF_MAP_LOOKUP_BATCH, Linux 5.6), link updates
//! (BPF_LINK_UPDATE, Linux 5.7) and the bpffs mount.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// statfs f_type of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `union bpf_attr` as used by the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` as used by BPF_LINK_UPDATE.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of union
    // bpf_attr for `cmd`; the kernel reads and writes at most size_of::<T>()
    // bytes of it, and any pointers inside it point to buffers the caller
    // keeps alive for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Per-entry value layout of a map read in bulk.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    /// One value per entry.
    Single,
    /// One value per possible CPU, each padded to 8 bytes (per-CPU maps).
    PerCpu(usize),
}

/// Reads every entry of a hash-type map with BPF_MAP_LOOKUP_BATCH, `batch`
/// entries per syscall (grown automatically when a hash bucket holds more).
/// Values of per-CPU maps come back as one `V` per CPU.
pub fn lookup_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    values: Values,
    batch: u32,
) -> io::Result<Vec<(K, Vec<V>)>> {
    let mut out = Vec::new();
    lookup_batch_each(fd, values, batch, |k, vs: EntryValues<'_, V>| {
        out.push((k, vs.iter().collect()))
    })?;
    Ok(out)
}

/// The value bytes of one entry as the kernel laid them out: one `V`, or
/// one per possible CPU, each padded to 8 bytes. Read straight from the
/// batch buffer: nothing is copied until a value is asked for.
#[derive(Clone, Copy)]
pub struct EntryValues<'a, V> {
    bytes: &'a [u8],
    stride: usize,
    _v: std::marker::PhantomData<V>,
}

impl<V: Pod> EntryValues<'_, V> {
    /// The value (CPU 0's for per-CPU maps).
    pub fn first(&self) -> V {
        read::<V>(self.bytes)
    }

    /// One value per CPU (one in all for plain maps).
    pub fn iter(&self) -> impl Iterator<Item = V> + '_ {
        self.bytes.chunks_exact(self.stride).map(read::<V>)
    }

    /// The values of all CPUs added up.
    pub fn sum(&self) -> V
    where
        V: Default + std::ops::AddAssign,
    {
        let mut t = V::default();
        for c in self.bytes.chunks_exact(self.stride) {
            t += read::<V>(c);
        }
        t
    }
}

/// Like [`lookup_batch`], handing each entry to `f` (key, then its values
/// in place in the batch buffer) instead of collecting: no allocation or
/// copy per entry, which is what makes draining ten thousand cgroups
/// cheap. `batch` is where the batch size starts: it grows (doubling) when
/// one hash bucket holds more entries than fit.
pub fn lookup_batch_each<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    values: Values,
    batch: u32,
    mut f: impl FnMut(K, EntryValues<'_, V>),
) -> io::Result<()> {
    let ncpu = match values {
        Values::Single => 1,
        Values::PerCpu(n) => n,
    };
    let stride = match values {
        Values::Single => size_of::<V>(),
        Values::PerCpu(_) => size_of::<V>().next_multiple_of(8),
    };
    let ks = size_of::<K>();
    let vs = stride * ncpu;
    lookup_batch_raw(fd, ks, vs, batch, |keys, vals| {
        for (k, v) in keys.chunks_exact(ks).zip(vals.chunks_exact(vs)) {
            f(
                read::<K>(k),
                EntryValues {
                    bytes: v,
                    stride,
                    _v: std::marker::PhantomData,
                },
            );
        }
    })
}

/// The loop under [`lookup_batch_each`]: hands `f` each batch the kernel
/// filled, as (keys, values) byte slices holding the same number of
/// entries (`key_size` and `value_size` bytes each; for per-CPU maps
/// `value_size` covers every CPU).
pub fn lookup_batch_raw(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    batch: u32,
    mut f: impl FnMut(&[u8], &[u8]),
) -> io::Result<()> {
    let mut batch = batch.max(1);
    // The batch cursor is opaque; for hash maps it is a bucket index, but
    // the kernel documents it as key-sized, so give it room for both.
    let tok_len = key_size.max(8);
    let mut in_tok = vec![0u8; tok_len];
    let mut out_tok = vec![0u8; tok_len];
    let mut first = true;
    // Buffers reused across calls (every tick drains three maps): fresh
    // ones cost a zero-fill and, past glibc's mmap threshold, page faults
    // on every call. Only grown, never shrunk or refilled: the kernel
    // writes before anything is read.
    let (mut keys, mut vals) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let mut drain = || -> io::Result<()> {
        loop {
            let (kl, vl) = (key_size * batch as usize, value_size * batch as usize);
            if keys.len() < kl {
                keys.resize(kl, 0u8);
            }
            if vals.len() < vl {
                vals.resize(vl, 0u8);
            }
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { in_tok.as_mut_ptr() as u64 },
                out_batch: out_tok.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: vals.as_mut_ptr() as u64,
                count: batch,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let done = match res {
                Ok(_) => false,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                    // A bucket holds more entries than `batch`: retry larger.
                    batch = batch.saturating_mul(2);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let n = (attr.count as usize).min(batch as usize);
            f(&keys[..n * key_size], &vals[..n * value_size]);
            if done {
                return Ok(());
            }
            std::mem::swap(&mut in_tok, &mut out_tok);
            first = false;
        }
    };
    let res = drain();
    SCRATCH.with(|s| *s.borrow_mut() = (keys, vals));
    res
}

thread_local! {
    /// Key and value buffers of [`lookup_batch_raw`], kept between calls.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Copies a `T` out of the front of `bytes`, if it is long enough.
pub fn read_pod<T: Pod>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| read::<T>(bytes))
}

/// Copies a `T` out of the front of `bytes`.
fn read<T: Pod>(bytes: &[u8]) -> T {
    assert!(
        bytes.len() >= size_of::<T>(),
        "short buffer for {}",
        std::any::type_name::<T>()
    );
    // SAFETY: the slice holds at least size_of::<T>() bytes (checked above)
    // and T: Pod accepts any bit pattern; read_unaligned has no alignment
    // requirement.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// Atomically replaces the program behind a bpf_link (BPF_LINK_UPDATE):
/// no window without the program and none with both attached.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = cstring(path)?;
    // SAFETY: statfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem at `path`.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = cstring(path)?;
    let src = CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are NUL-terminated strings that outlive the call;
    // no mount data is passed.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

const BPF_OBJ_GET: libc::c_long = 7;

/// `union bpf_attr` as used by BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned bpf object (map, program or link) by path.
pub fn obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let c = cstring(path)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor that
    // nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_HASH: u32 = 1;

/// `union bpf_attr` prefix as used by BPF_MAP_CREATE.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Whether BPF_MAP_LOOKUP_BATCH works on hash maps (Linux 5.6): creates a
/// tiny hash map and reads it in bulk.
pub fn probe_batch() -> bool {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        ..Default::default()
    };
    let Ok(fd) = bpf(BPF_MAP_CREATE, &mut attr) else {
        return false;
    };
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else
    // owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    lookup_batch::<u32, u32>(fd.as_fd(), Values::Single, 1).is_ok()
}

/// Nanoseconds per jiffy: the resolution of CLOCK_MONOTONIC_COARSE, which
/// the kernel reports as its tick (TICK_NSEC). Falls back to HZ = 250.
pub fn jiffy_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    let r = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    if r == 0 && ns > 0 {
        ns
    } else {
        tollgate_ebpf::DEFAULT_JIFFY_NS
    }
}

/// CPU time of the calling thread so far, (user, system) in seconds
/// (getrusage RUSAGE_THREAD: the total is exact, the split between the two
/// is sampled at the tick).
pub fn thread_cpu() -> io::Result<(f64, f64)> {
    // SAFETY: all-zero is a valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((s(ru.ru_utime), s(ru.ru_stime)))
}
