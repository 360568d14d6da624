//! The one place that reads packet bytes, and the IPv4/IPv6 header walk.
//!
//! All reads go through [`load`] (bytes) or [`load_words`] (32-bit words,
//! for the headers every packet parses): directly from the linear data
//! after a bounds check, else bpf_skb_load_bytes, which checks the offset
//! against the packet length in the kernel. A truncated or garbage packet
//! yields `Err`, never an out-of-bounds read. For cgroup_skb programs
//! offset 0 is the start of the IP header.

use aya_ebpf::programs::SkBuffContext;
use tollgate_ebpf::{FAMILY_V4, FAMILY_V6};

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// How many IPv6 extension headers are walked before giving up (the
/// verifier needs a bound; real traffic rarely has more than two).
const MAX_EXT_HEADERS: usize = 8;

/// Reads a `T` at `offset` from the network header: directly from the
/// linear data when it is there (cgroup_skb may read packet data directly
/// with CAP_PERFMON), else through bpf_skb_load_bytes (`ctx.load`), which
/// also reaches paged data and fails cleanly past the end of the packet.
///
/// The direct read loads `T` with `T`'s alignment: byte loads for byte
/// arrays, word loads for word arrays. The data may sit at any byte
/// address (an IP header is often 2 bytes off a 4-byte boundary); the
/// verifier allows unaligned packet loads on architectures with efficient
/// unaligned access (x86-64, arm64), where Tollgate runs, and a word load
/// of a packet is what C programs do through `struct iphdr *`.
/// (`read_unaligned` would compile to byte loads: the BPF backend assumes
/// strict alignment.)
#[inline(always)]
fn load_as<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Result<T, ()> {
    let skb = ctx.skb.skb;
    // SAFETY: plain reads of the program's own context; the verifier turns
    // data/data_end into packet pointers.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: [start + offset, start + offset + size_of T) lies inside
        // the linear packet data, checked just above (and by the
        // verifier); alignment as explained above. T is only ever an
        // array of integers, valid for any bits.
        return Ok(unsafe { core::ptr::read((start + offset) as *const T) });
    }
    ctx.load::<T>(offset).map_err(|_| ())
}

/// Reads `N` bytes at `offset` from the network header ([`load_as`]).
#[inline(always)]
pub fn load<const N: usize>(ctx: &SkBuffContext, offset: usize) -> Result<[u8; N], ()> {
    load_as(ctx, offset)
}

/// Reads `N` 32-bit words at `offset` from the network header
/// ([`load_as`]): one load per word where [`load`] needs one per byte plus
/// the shifts that put them together (about 5 ns of the 50 an IPv4 packet
/// cost). Word `i` holds bytes `4i..4i+4` in memory order (`to_le_bytes`:
/// the BPF target is little-endian).
#[inline(always)]
pub fn load_words<const N: usize>(ctx: &SkBuffContext, offset: usize) -> Result<[u32; N], ()> {
    load_as(ctx, offset)
}

/// Byte `k` (0..4) of a word read by [`load_words`].
#[inline(always)]
const fn byte(w: u32, k: usize) -> u8 {
    w.to_le_bytes()[k]
}

/// Four words as the 16 bytes they were read from.
#[inline(always)]
const fn bytes16(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size; every bit
    // pattern is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// An IPv4 address word as its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`,
/// as `tollgate_ebpf::v4_mapped`), built from words.
#[inline(always)]
const fn v4_mapped_word(a: u32) -> [u8; 16] {
    bytes16([0, 0, u32::from_le_bytes([0, 0, 0xff, 0xff]), a])
}

/// One byte at `offset`, or 256 past the end of the packet. (A plain
/// integer: LLVM may leave the payload of a failed `Result` in a register
/// it never set, which the verifier rejects.)
#[inline(always)]
pub fn load_u8(ctx: &SkBuffContext, offset: usize) -> u32 {
    match load::<1>(ctx, offset) {
        Ok(b) => b[0] as u32,
        Err(()) => 256,
    }
}

/// Reads up to `N` bytes at `offset` (fewer when the packet ends sooner)
/// into `dst`, through bpf_skb_load_bytes; returns how many were read.
/// `Err` when nothing lies at `offset`. `dst` may be map or ring buffer
/// memory: a 256-byte stack buffer would not fit the BPF stack next to
/// the callers' frames.
#[inline(always)]
pub fn load_prefix<const N: usize>(
    ctx: &SkBuffContext,
    offset: usize,
    dst: *mut [u8; N],
) -> Result<usize, ()> {
    let len = ctx.len() as usize;
    if offset >= len {
        return Err(());
    }
    let mut n = len - offset;
    if n > N {
        n = N;
    }
    // The verifier wants the size proven in [1, N] by the arithmetic
    // itself (compilers fold a plain `n == 0` check away): n - 1 masked
    // to N - 1 (N is a power of two), plus one. n >= 1 here, so this is
    // the identity.
    const { assert!(N.is_power_of_two()) };
    let n = ((n - 1) & (N - 1)) + 1;
    // SAFETY: `dst` points to N writable bytes (caller), n <= N; the
    // helper checks offset + n against the packet and fails cleanly.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb as *const core::ffi::c_void,
            offset as u32,
            dst as *mut core::ffi::c_void,
            n as u32,
        )
    };
    if r < 0 { Err(()) } else { Ok(n) }
}

/// Addresses, protocol and ports of a packet.
pub struct Headers {
    pub family: u8,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order; 0 when there are no ports.
    pub sport: u16,
    pub dport: u16,
    /// Offset of the transport payload (UDP: after the 8-byte header;
    /// TCP: after the header including options); 0 when unknown (no
    /// transport header, cut short, other protocols).
    pub payload_off: usize,
    /// TCP flags byte (FIN 0x01, SYN 0x02, ... ACK 0x10); 0 otherwise.
    pub tcp_flags: u8,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
impl Headers {
    /// All zero: what an unparsable packet is checked and recorded as.
    pub const ZERO: Headers = Headers {
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        payload_off: 0,
        tcp_flags: 0,
    };
}

#[inline(always)]
fn carries_ports(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE
    )
}

#[inline(always)]
fn ports(ctx: &SkBuffContext, offset: usize, h: &mut Headers) -> Result<(), ()> {
    let [p] = load_words::<1>(ctx, offset)?;
    h.sport = u16::from_be_bytes([byte(p, 0), byte(p, 1)]);
    h.dport = u16::from_be_bytes([byte(p, 2), byte(p, 3)]);
    // Payload offset and TCP flags are extras for the DNS and stratum
    // checks: a header cut short after the ports is still a counted
    // packet with ports, just without payload inspection.
    if h.proto == IPPROTO_UDP {
        h.payload_off = offset + 8;
    } else if h.proto == IPPROTO_TCP
        && let Ok(t) = load_words::<4>(ctx, offset)
    {
        // Bytes 12 (data offset) and 13 (flags) of the TCP header.
        let doff = ((byte(t[3], 0) >> 4) as usize) * 4;
        if doff >= 20 {
            h.payload_off = offset + doff;
            h.tcp_flags = byte(t[3], 1);
        }
    }
    Ok(())
}

/// Parses the IP header (and the transport ports where present). `Err` means
/// the packet is not IPv4/IPv6 or its headers are cut short.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Result<Headers, ()> {
    // skb->protocol is set by the stack on both paths (ip_output and
    // ip6_output on egress, eth_type_trans on ingress); the version nibble
    // is checked again below.
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    if proto == ETH_P_IP {
        parse_v4(ctx)
    } else if proto == ETH_P_IPV6 {
        parse_v6(ctx)
    } else {
        Err(())
    }
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext) -> Result<Headers, ()> {
    let w = load_words::<5>(ctx, 0)?;
    let b0 = byte(w[0], 0);
    if b0 >> 4 != 4 {
        return Err(());
    }
    let ihl = ((b0 & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(());
    }
    let mut h = Headers {
        family: FAMILY_V4,
        proto: byte(w[2], 1),
        src: v4_mapped_word(w[3]),
        dst: v4_mapped_word(w[4]),
        sport: 0,
        dport: 0,
        payload_off: 0,
        tcp_flags: 0,
    };
    let frag_offset = u16::from_be_bytes([byte(w[1], 2), byte(w[1], 3)]) & 0x1fff;
    if frag_offset == 0 && carries_ports(h.proto) {
        ports(ctx, ihl, &mut h)?;
    }
    Ok(h)
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext) -> Result<Headers, ()> {
    let w = load_words::<10>(ctx, 0)?;
    if byte(w[0], 0) >> 4 != 6 {
        return Err(());
    }
    let mut h = Headers {
        family: FAMILY_V6,
        proto: byte(w[1], 2),
        src: bytes16([w[2], w[3], w[4], w[5]]),
        dst: bytes16([w[6], w[7], w[8], w[9]]),
        sport: 0,
        dport: 0,
        payload_off: 0,
        tcp_flags: 0,
    };
    let mut offset = 40usize;
    let mut has_ports = true;
    for _ in 0..MAX_EXT_HEADERS {
        match h.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let e = load::<2>(ctx, offset)?;
                h.proto = e[0];
                offset += (e[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let e = load::<2>(ctx, offset)?;
                h.proto = e[0];
                offset += (e[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = load::<4>(ctx, offset)?;
                h.proto = e[0];
                // A non-first fragment carries no transport header.
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    has_ports = false;
                }
                offset += 8;
            }
            _ => break,
        }
    }
    if has_ports && carries_ports(h.proto) {
        ports(ctx, offset, &mut h)?;
    }
    Ok(h)
}
