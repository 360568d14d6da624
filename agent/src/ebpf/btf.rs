//! Just enough BTF (the kernel's own type information, /sys/kernel/btf/
//! vmlinux) to find struct member offsets: the storage programs read
//! kernel structs with bpf_probe_read_kernel at offsets taken from the
//! running kernel, never hard-coded ones. aya 0.14 parses BTF but keeps
//! struct members private, hence this small reader.
//!
//! Format: Documentation/bpf/btf.rst. A header, then the type section (a
//! sequence of `struct btf_type` records, each followed by kind-specific
//! data) and the string section. Type ids start at 1 in section order.

use std::{collections::HashMap, path::Path};

use tollgate_ebpf::KernelOffsets;

/// Where the running kernel exposes its BTF (CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF {path} unreadable: {source}. Storage accounting needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("kernel BTF: {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset; with `bitfield_size`, from the kind_flag encoding.
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// `type` of modifiers and typedefs.
    ty: u32,
    members: Vec<Member>,
}

/// Parsed types and strings.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id - 1.
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the only kind the BPF targets we build
    /// for produce).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let bad = |what: &str| BtfError::Malformed(what.to_owned());
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(bad("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4).ok_or_else(|| bad("short header"))? as usize;
        let field = |i: usize| u32_at(data, 8 + 4 * i).map(|v| v as usize);
        let (Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(0), field(1), field(2), field(3))
        else {
            return Err(bad("short header"));
        };
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?
            .to_vec();
        let mut types = Vec::new();
        let mut off = 0;
        while off < types_sec.len() {
            let rec =
                |i: usize| u32_at(types_sec, off + 4 * i).ok_or_else(|| bad("truncated type"));
            let (name, info, size_or_type) = (rec(0)?, rec(1)?, rec(2)?);
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = |j: usize| {
                            u32_at(types_sec, off + 12 * i + 4 * j)
                                .ok_or_else(|| bad("truncated member"))
                        };
                        let (mname, mty, moff) = (m(0)?, m(1)?, m(2)?);
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (moff & 0xff_ffff, moff >> 24)
                        } else {
                            (moff, 0)
                        };
                        members.push(Member {
                            name: mname,
                            ty: mty,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
                // FLOAT, TYPE_TAG: no extra data.
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                k => return Err(BtfError::Malformed(format!("unknown kind {k}"))),
            };
            off += extra;
            types.push(Type {
                name,
                kind,
                ty: size_or_type,
                members,
            });
        }
        if off != types_sec.len() {
            return Err(bad("type section overrun"));
        }
        let mut btf = Btf {
            strings,
            types,
            structs: HashMap::new(),
        };
        let mut structs = HashMap::new();
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                // The first definition wins (vmlinux has one per name).
                structs
                    .entry(btf.str(t.name).to_owned())
                    .or_insert(i as u32 + 1);
            }
        }
        btf.structs = structs;
        Ok(btf)
    }

    fn str(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Follows typedefs and modifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `name` in struct/union `id`, looking into anonymous
    /// struct and union members.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let t = self.ty(id)?;
        for m in &t.members {
            if m.name != 0 && self.str(m.name) == name {
                return Some((m.bit_offset, m.bitfield_size));
            }
        }
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name != 0 {
                continue;
            }
            let inner = self.resolve(m.ty);
            if self
                .ty(inner)
                .is_some_and(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)
                && let Some((off, bits)) = self.find_member(inner, name, depth + 1)
            {
                return Some((m.bit_offset + off, bits));
            }
        }
        None
    }

    /// Byte offset of `strukt.member` (members of anonymous structs and
    /// unions are found too).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let (bits, bitfield) = self
            .find_member(id, member, 0)
            .ok_or_else(|| BtfError::NoMember(strukt.to_owned(), member.to_owned()))?;
        if bitfield != 0 || bits % 8 != 0 {
            return Err(BtfError::Bitfield(strukt.to_owned(), member.to_owned()));
        }
        Ok(bits / 8)
    }

    /// The offsets the storage programs need (x86_64 pt_regs).
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let m = |s: &str, f: &str| self.member_offset(s, f);
        Ok(KernelOffsets {
            enabled: 1,
            task_files: m("task_struct", "files")?,
            files_fdt: m("files_struct", "fdt")?,
            fdt_max_fds: m("fdtable", "max_fds")?,
            fdt_fd: m("fdtable", "fd")?,
            file_inode: m("file", "f_inode")?,
            inode_sb: m("inode", "i_sb")?,
            inode_mode: m("inode", "i_mode")?,
            sb_dev: m("super_block", "s_dev")?,
            sb_magic: m("super_block", "s_magic")?,
            regs_arg: [
                m("pt_regs", "di")?,
                m("pt_regs", "si")?,
                m("pt_regs", "dx")?,
                m("pt_regs", "r10")?,
                m("pt_regs", "r8")?,
                m("pt_regs", "r9")?,
            ],
            regs_syscall: m("pt_regs", "orig_ax")?,
            files_fdtab: m("files_struct", "fdtab")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: `struct outer { int a; union { int pad; struct
    /// inner x; }; int b:3; }` and `struct inner { long y; int z; }`.
    fn sample() -> Vec<u8> {
        let mut strings = b"\0int\0outer\0a\0pad\0inner\0x\0y\0z\0b\0long\0".to_vec();
        let s = |name: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        // 1: int (4 bytes)
        t.extend([s("int", &strings), KIND_INT << 24, 4, 32]);
        // 2: long (8 bytes)
        t.extend([s("long", &strings), KIND_INT << 24, 8, 64]);
        // 3: struct inner { long y @0; int z @64 }
        t.extend([s("inner", &strings), KIND_STRUCT << 24 | 2, 16]);
        t.extend([s("y", &strings), 2, 0, s("z", &strings), 1, 64]);
        // 4: const struct inner (modifier)
        t.extend([0, KIND_CONST << 24, 3]);
        // 5: anonymous union { int pad; const struct inner x; }
        t.extend([0, KIND_UNION << 24 | 2, 16]);
        t.extend([s("pad", &strings), 1, 0, s("x", &strings), 4, 0]);
        // 6: struct outer (kind_flag: bitfield encoding)
        t.extend([s("outer", &strings), 1 << 31 | KIND_STRUCT << 24 | 3, 32]);
        t.extend([s("a", &strings), 1, 0]);
        t.extend([0, 5, 64]);
        t.extend([s("b", &strings), 1, 3 << 24 | 192]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        strings.push(0);
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        out.extend(24u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "pad").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 8);
        assert_eq!(btf.member_offset("inner", "z").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "b"),
            Err(BtfError::Bitfield(..))
        ));
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"hello").is_err());
        let mut b = sample();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    /// The running kernel's BTF, when there is one: every offset the
    /// programs need is found and plausible.
    #[test]
    fn running_kernel_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIP running_kernel_offsets: no {VMLINUX_BTF}");
            return;
        };
        let o = btf.kernel_offsets().unwrap();
        assert_eq!(o.enabled, 1);
        // x86_64 pt_regs: r15, r14, r13, r12, bp, bx, r11, r10, r9, r8,
        // ax, cx, dx @96, si @104, di @112, orig_ax @120 (arch/x86/
        // include/asm/ptrace.h; unchanged for decades).
        if cfg!(target_arch = "x86_64") {
            assert_eq!(o.regs_arg[0], 112);
            assert_eq!(o.regs_arg[1], 104);
            assert_eq!(o.regs_arg[2], 96);
            assert_eq!(o.regs_syscall, 120);
        }
        assert!(o.task_files > 0 && o.inode_sb > 0 && o.sb_dev > 0);
        assert!(o.files_fdtab > o.files_fdt, "fdtab follows the fdt pointer");
    }
}
