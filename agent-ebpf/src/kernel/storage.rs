//! Raw tracepoints `sys_enter` / `sys_exit`: bytes written to and read from
//! watched storage (CephFS, NFS, FUSE, configured mounts), per cgroup and
//! device.
//!
//! sys_enter runs for every syscall on the host, so it leaves at once
//! unless the call is one of the read/write family. For those it resolves
//! the fd to its inode (task -> files -> fdtable -> file -> inode, at
//! offsets the agent read from the kernel's BTF); anything but a regular
//! file (sockets, pipes, ttys: the high-rate cases) stops there. For a
//! regular file it reads the super block and, only when the device or the
//! fs magic is watched, stashes the device for the thread and counts the
//! stash in `TG_ST_INFLIGHT`. sys_exit leaves at once while that count is
//! 0 (an array read); otherwise it reads the syscall number from pt_regs
//! and for the same family takes (lookup + delete) the thread's stash and
//! counts a positive result. A socket write thus costs six probe reads
//! at entry (seven when the process has more than 64 fds open) and one
//! array read at exit; nothing is written.
//!
//! Deleting the stash at exit also deduplicates: while an upgraded agent
//! swaps links, old and new programs briefly both run, and only the first
//! sys_exit program finds the stash.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tollgate_ebpf::{
    CGROUP_OVERFLOW, Counter, IoCount, KernelOffsets, PENDING_READ, PENDING_WRITE, PendingIo,
    STORAGE_READ, STORAGE_WRITE, StorageKey, syscall,
};

use super::{
    maps::{ST_DEVS, ST_INFLIGHT, ST_MAGICS, ST_PENDING, ST_STATS},
    stats::{add, bump},
};

/// Set by the agent before loading (`EbpfLoader::set_global`, read-only
/// .rodata); all zero (disabled) in the object.
#[unsafe(no_mangle)]
static TG_KOFFS: KernelOffsets = KernelOffsets {
    enabled: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_sb: 0,
    inode_mode: 0,
    sb_dev: 0,
    sb_magic: 0,
    regs_arg: [0; 6],
    regs_syscall: 0,
    files_fdtab: 0,
};

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a plain static; the volatile read keeps the compiler from
    // folding the object's zeroes in place of the value the agent set.
    unsafe { core::ptr::read_volatile(&raw const TG_KOFFS) }
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly
    // on a bad one; nothing is dereferenced directly.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u32(addr: u64) -> Option<u32> {
    // SAFETY: as in `read_u64`.
    unsafe { bpf_probe_read_kernel(addr as *const u32) }.ok()
}

/// The raw syscall argument `n` (0..3) from the user pt_regs at `regs`.
#[inline(always)]
fn arg(o: &KernelOffsets, regs: u64, n: u32) -> Option<u64> {
    let off = match n {
        0 => o.regs_arg[0],
        1 => o.regs_arg[1],
        _ => o.regs_arg[2],
    };
    read_u64(regs + off as u64)
}

/// Whether the fd's super block is watched, and its device.
enum Resolved {
    Watched(u32),
    Unwatched,
    Failed,
}

/// fd -> super block of the current task; `Watched(dev)` when the device
/// is in `TG_ST_DEVS` or the magic in `TG_ST_MAGICS`.
///
/// Each `bpf_probe_read_kernel` costs about 30 ns here, so fields that lie
/// close together are fetched by one read (see [`fd_table`], [`inode`],
/// [`super_block`]): with at most 64 fds open, a socket costs five reads
/// after the argument and a regular file six (one more each beyond 64
/// fds), where reading each field alone took six and nine.
#[inline(always)]
fn resolve(o: &KernelOffsets, fd: u64) -> Resolved {
    // fd arguments are `unsigned int` or `int`: the low 32 bits.
    let fd = fd & 0xffff_ffff;
    // SAFETY: helper without arguments; returns the current task pointer.
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = read_u64(task + o.task_files as u64) else {
        return Resolved::Failed;
    };
    let Some((max, fds)) = fd_table(o, files) else {
        return Resolved::Failed;
    };
    if fd >= max as u64 {
        // Not an open fd: the call fails with EBADF.
        return Resolved::Unwatched;
    }
    let Some(file) = read_u64(fds + fd * 8) else {
        return Resolved::Failed;
    };
    if file == 0 {
        return Resolved::Unwatched;
    }
    let Some(inode_ptr) = read_u64(file + o.file_inode as u64) else {
        return Resolved::Failed;
    };
    let Some((mode, sb)) = inode(o, inode_ptr) else {
        return Resolved::Failed;
    };
    if mode & S_IFMT != S_IFREG {
        // Sockets, pipes, devices: their bytes are not storage I/O even
        // when the inode lives on a watched mount.
        return Resolved::Unwatched;
    }
    let Some((dev, magic)) = super_block(o, sb) else {
        return Resolved::Failed;
    };
    if ST_DEVS.get_ptr(dev).is_some() || ST_MAGICS.get_ptr(magic).is_some() {
        Resolved::Watched(dev)
    } else {
        Resolved::Unwatched
    }
}

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// `N` words at `addr` in one read.
#[inline(always)]
fn read_words<const N: usize>(addr: u64) -> Option<[u64; N]> {
    // SAFETY: as in `read_u64`; `[u64; N]` has no invalid values.
    unsafe { bpf_probe_read_kernel(addr as *const [u64; N]) }.ok()
}

/// `(max_fds, fd array)` of the task's `files_struct` at `files`.
///
/// While a process has at most 64 fds, `files->fdt` points to the table
/// embedded in `files_struct` right after the pointer, so one read of the
/// pointer and the next two words has both (every kernel since 2.6 lays
/// it out so; the agent's offsets say whether this one does). Otherwise
/// the pointed-to table is read: [`read_fdtable`].
#[inline(always)]
fn fd_table(o: &KernelOffsets, files: u64) -> Option<(u32, u64)> {
    if o.files_fdtab == o.files_fdt + 8 && o.fdt_max_fds == 0 && o.fdt_fd == 8 {
        let w = read_words::<3>(files + o.files_fdt as u64)?;
        if w[0] == files + o.files_fdtab as u64 {
            // max_fds: the low half of its (padded) word, little-endian.
            return Some((w[1] as u32, w[2]));
        }
        return read_fdtable(o, w[0]);
    }
    read_fdtable(o, read_u64(files + o.files_fdt as u64)?)
}

/// `fdtable.max_fds` and `fdtable.fd`: one read when `fd` follows
/// `max_fds` at the next 8-byte slot (the layout of every kernel since
/// 2.6), two otherwise.
#[inline(always)]
fn read_fdtable(o: &KernelOffsets, fdt: u64) -> Option<(u32, u64)> {
    if o.fdt_fd == o.fdt_max_fds + 8 {
        let pair = read_words::<2>(fdt + o.fdt_max_fds as u64)?;
        return Some((pair[0] as u32, pair[1]));
    }
    Some((
        read_u32(fdt + o.fdt_max_fds as u64)?,
        read_u64(fdt + o.fdt_fd as u64)?,
    ))
}

/// Words of an inode read at once: `i_mode` is its first field and `i_sb`
/// follows within 48 bytes (offset 40 with POSIX ACLs, 24 without).
const INODE_WORDS: usize = 6;

/// `(i_mode, i_sb)` of the inode at `inode`: one read when the layout
/// allows (see [`INODE_WORDS`]), else two.
#[inline(always)]
fn inode(o: &KernelOffsets, inode: u64) -> Option<(u16, u64)> {
    let i = (o.inode_sb / 8) as usize;
    if o.inode_mode == 0 && o.inode_sb % 8 == 0 && i < INODE_WORDS {
        let w = read_words::<INODE_WORDS>(inode)?;
        // i_mode: the low 16 bits of the first word, little-endian.
        return Some((w[0] as u16, *w.get(i)?));
    }
    // SAFETY: as in `read_u64`.
    let mode =
        unsafe { bpf_probe_read_kernel((inode + o.inode_mode as u64) as *const u16) }.ok()?;
    Some((mode, read_u64(inode + o.inode_sb as u64)?))
}

/// Words of a super block read at once, from `s_dev` to `s_magic` (80
/// bytes apart in 6.x kernels).
const SB_WORDS: usize = 12;

/// `(s_dev, s_magic)` of the super block at `sb`: one read when the layout
/// allows (see [`SB_WORDS`]), else two.
#[inline(always)]
fn super_block(o: &KernelOffsets, sb: u64) -> Option<(u32, u64)> {
    if o.sb_dev % 8 == 0 && o.sb_magic % 8 == 0 && o.sb_magic > o.sb_dev {
        let i = ((o.sb_magic - o.sb_dev) / 8) as usize;
        if i < SB_WORDS {
            let w = read_words::<SB_WORDS>(sb + o.sb_dev as u64)?;
            // s_dev: the low half of its word, little-endian.
            return Some((w[0] as u32, *w.get(i)?));
        }
    }
    Some((
        read_u32(sb + o.sb_dev as u64)?,
        read_u64(sb + o.sb_magic as u64)?,
    ))
}

/// Stashes still waiting for their sys_exit (see `TG_ST_INFLIGHT`).
#[inline(always)]
fn inflight_add(delta: u64) {
    if let Some(p) = ST_INFLIGHT.get_ptr_mut(0) {
        add(p, delta);
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn tg_sys_enter(ctx: RawTracePointContext) -> i32 {
    try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) {
    // TP_PROTO(struct pt_regs *regs, long id)
    let nr: u64 = ctx.arg(1);
    let args = syscall::fd_args(nr);
    if args == 0 {
        return;
    }
    let o = offsets();
    if o.enabled == 0 {
        return;
    }
    let regs: u64 = ctx.arg(0);
    let write_dev = side(&o, regs, args & 0xff);
    let read_dev = side(&o, regs, (args >> 8) & 0xff);
    let mut flags = 0;
    if write_dev != 0 {
        flags |= PENDING_WRITE;
    }
    if read_dev != 0 {
        flags |= PENDING_READ;
    }
    if flags != 0 {
        let p = PendingIo {
            write_dev,
            read_dev,
            syscall: nr as u32,
            flags,
        };
        let tid = bpf_get_current_pid_tgid();
        if ST_PENDING.insert(tid, p, BPF_NOEXIST as u64).is_ok() {
            inflight_add(1);
        } else if ST_PENDING.insert(tid, p, BPF_EXIST as u64).is_err() {
            // Neither new (map full) nor a stale stash of this thread to
            // replace (which keeps its count).
            bump(Counter::StoragePendingFull);
        }
    }
}

/// The watched device behind syscall argument `arg_plus_one - 1`, or 0
/// (none, unwatched, or unresolvable; dev 0:0 is never a mounted fs).
#[inline(always)]
fn side(o: &KernelOffsets, regs: u64, arg_plus_one: u32) -> u32 {
    if arg_plus_one == 0 {
        return 0;
    }
    let Some(fd) = arg(o, regs, arg_plus_one - 1) else {
        bump(Counter::StorageResolveFailed);
        return 0;
    };
    match resolve(o, fd) {
        Resolved::Watched(dev) => dev,
        Resolved::Unwatched => 0,
        Resolved::Failed => {
            bump(Counter::StorageResolveFailed);
            0
        }
    }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tg_sys_exit(ctx: RawTracePointContext) -> i32 {
    try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) {
    let o = offsets();
    if o.enabled == 0 {
        return;
    }
    // Nobody is inside a watched read/write: nothing to take.
    if !matches!(ST_INFLIGHT.get(0), Some(n) if *n != 0) {
        return;
    }
    // TP_PROTO(struct pt_regs *regs, long ret)
    let regs: u64 = ctx.arg(0);
    let Some(nr) = read_u64(regs + o.regs_syscall as u64) else {
        return;
    };
    if syscall::fd_args(nr) == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid();
    let Some(p) = ST_PENDING.get_ptr(tid) else {
        return;
    };
    // SAFETY: `p` points to a live value of this thread's entry; copied
    // out before the delete below frees it.
    let p = unsafe { *p };
    // Only the program that deletes the stash counts (see module docs).
    if ST_PENDING.remove(tid).is_err() {
        return;
    }
    inflight_add(u64::MAX); // -1
    let ret: i64 = ctx.arg(1);
    if ret <= 0 || p.syscall as u64 != nr {
        return;
    }
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if p.flags & PENDING_WRITE != 0 {
        count(cgroup_id, p.write_dev, STORAGE_WRITE, ret as u64);
    }
    if p.flags & PENDING_READ != 0 {
        count(cgroup_id, p.read_dev, STORAGE_READ, ret as u64);
    }
}

#[inline(always)]
fn count(cgroup_id: u64, dev: u32, dir: u32, bytes: u64) {
    let key = StorageKey {
        cgroup_id,
        dev,
        dir,
    };
    let slot = match ST_STATS.get_ptr_mut(key) {
        Some(s) => Some(s),
        None => {
            // EEXIST (another CPU won the race) is fine: look up again.
            let _ = ST_STATS.insert(key, IoCount::default(), BPF_NOEXIST as u64);
            ST_STATS.get_ptr_mut(key)
        }
    };
    let slot = slot.or_else(|| {
        // Map full: count under the cgroup-less overflow entry the loader
        // seeded, so the bytes are kept (attributed to nobody).
        bump(Counter::StorageStatsFull);
        ST_STATS.get_ptr_mut(StorageKey {
            cgroup_id: CGROUP_OVERFLOW,
            dev: 0,
            dir,
        })
    });
    let Some(s) = slot else {
        return;
    };
    // SAFETY: `s` points to a live map value; only field addresses are taken.
    unsafe {
        add(&raw mut (*s).bytes, bytes);
        add(&raw mut (*s).calls, 1);
    }
}
