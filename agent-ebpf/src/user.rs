//! Userspace additions to the ABI types (feature `user`).

extern crate std;

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    AllowPorts, ByteCount, CgroupStats, CidrInfo, ConnEvent, DeniedStats, DnsEvent, DnsRate,
    FAMILY_V4, FlowCacheSlot, FlowStats, IfQuarantine, IfStats, IoCount, KernelOffsets, LpmAddr,
    PeerKey, PendingIo, PolicyAddr, PortRange, QuarantineEntry, ScopeCounts, Scratch, SignalConfig,
    StorageKey, StratumEvent,
};

macro_rules! pod {
    ($($t:ty),+) => {$(
        // SAFETY: #[repr(C)], only integer fields and byte arrays, explicit
        // padding fields, so every bit pattern is valid and there are no
        // uninitialised bytes.
        unsafe impl aya::Pod for $t {}
    )+};
}
pod!(
    QuarantineEntry,
    ByteCount,
    ScopeCounts,
    CgroupStats,
    PeerKey,
    FlowStats,
    FlowCacheSlot,
    LpmAddr,
    CidrInfo,
    ConnEvent,
    StorageKey,
    IoCount,
    PendingIo,
    KernelOffsets,
    DnsEvent,
    DnsRate,
    StratumEvent,
    SignalConfig,
    Scratch,
    IfStats,
    IfQuarantine,
    PolicyAddr,
    PortRange,
    AllowPorts,
    DeniedStats
);

impl core::ops::AddAssign for IfStats {
    fn add_assign(&mut self, o: Self) {
        self.pod_egress += o.pod_egress;
        self.pod_ingress += o.pod_ingress;
        self.dropped_egress += o.dropped_egress;
        self.dropped_ingress += o.dropped_ingress;
        self.other_frames = self.other_frames.wrapping_add(o.other_frames);
    }
}

impl core::ops::AddAssign for IoCount {
    fn add_assign(&mut self, o: Self) {
        self.bytes = self.bytes.wrapping_add(o.bytes);
        self.calls = self.calls.wrapping_add(o.calls);
    }
}

/// Kernel dev_t (`MINORBITS` = 20) from a device's major and minor, as
/// mountinfo prints them and `super_block.s_dev` holds them.
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// (major, minor) of a kernel dev_t.
pub const fn dev_parts(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// The address of a key or event, unmapping IPv4-mapped addresses.
pub fn addr_of(family: u8, addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    if family == FAMILY_V4 {
        IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
    } else {
        IpAddr::V6(v6)
    }
}

/// Storage form of an address: IPv4 as IPv4-mapped, with its family tag.
pub fn addr_to_key(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => (FAMILY_V4, crate::v4_mapped(v4.octets())),
        IpAddr::V6(v6) => (crate::FAMILY_V6, v6.octets()),
    }
}

impl PeerKey {
    pub fn ip(&self) -> IpAddr {
        addr_of(self.family, self.addr)
    }
}

impl ConnEvent {
    pub fn ip(&self) -> IpAddr {
        addr_of(self.family, self.addr)
    }
}

/// Protocol name for display.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        0 => "-",
        _ => "other",
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, proto_name(self.proto)),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, proto_name(self.proto)),
        }
    }
}

impl core::ops::AddAssign for ByteCount {
    fn add_assign(&mut self, o: Self) {
        self.bytes = self.bytes.wrapping_add(o.bytes);
        self.packets = self.packets.wrapping_add(o.packets);
    }
}

impl core::ops::AddAssign for ScopeCounts {
    fn add_assign(&mut self, o: Self) {
        self.internal += o.internal;
        self.external += o.external;
    }
}

impl ScopeCounts {
    pub fn total(&self) -> ByteCount {
        let mut t = self.internal;
        t += self.external;
        t
    }
}

impl core::ops::AddAssign for CgroupStats {
    fn add_assign(&mut self, o: Self) {
        self.egress += o.egress;
        self.ingress += o.ingress;
        self.connects = self.connects.wrapping_add(o.connects);
        self.new_peers = self.new_peers.wrapping_add(o.new_peers);
        self.malformed = self.malformed.wrapping_add(o.malformed);
        self.events_dropped = self.events_dropped.wrapping_add(o.events_dropped);
        self.quarantine_dropped += o.quarantine_dropped;
        self.connects_denied = self.connects_denied.wrapping_add(o.connects_denied);
        self.dns_queries = self.dns_queries.wrapping_add(o.dns_queries);
        self.dns_unsampled = self.dns_unsampled.wrapping_add(o.dns_unsampled);
        self.stratum_markers = self.stratum_markers.wrapping_add(o.stratum_markers);
        self.stratum_dropped = self.stratum_dropped.wrapping_add(o.stratum_dropped);
    }
}

impl StratumEvent {
    pub fn ip(&self) -> IpAddr {
        addr_of(self.family, self.addr)
    }
}

impl DnsEvent {
    /// The wire-format name (length-prefixed labels) as sent.
    pub fn wire_name(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(self.name.len())]
    }
}
