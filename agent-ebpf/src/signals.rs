//! ABI of the DNS and stratum signals (part of the one ABI definition,
//! re-exported at the crate root): tail-call slots, ring buffer records,
//! the per-cgroup sampling window and the load-time settings.

/// Slots of `TG_JUMP`. The DNS and stratum inspections run as separate
/// programs: each is verified once from a clean state, instead of once
/// per path through the accounting code (which exceeds the verifier's
/// budget).
pub const JUMP_DNS: u32 = 0;
pub const JUMP_STRATUM: u32 = 1;
pub const JUMP_SLOTS: u32 = 2;

/// Longest question name the kernel copies: a DNS name is at most 255
/// bytes on the wire (RFC 1035 3.1).
pub const DNS_NAME_MAX: usize = 255;
/// Most labels walked in a question name (255 bytes hold at most 127
/// one-byte labels and the root).
pub const DNS_MAX_LABELS: usize = 128;

/// Record of `TG_DNS_EVENTS`: one sampled DNS query.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC_COARSE nanoseconds.
    pub ts_ns: u64,
    /// Query type (1 A, 28 AAAA, 16 TXT, ...).
    pub qtype: u16,
    /// Bytes of `name` in use: the wire-format name including the final
    /// zero-length label (2..=[`DNS_NAME_MAX`]).
    pub name_len: u16,
    pub _pad: u32,
    /// The question name in wire format (length-prefixed labels), as
    /// sent; the kernel checked the label walk ends inside `name_len`.
    pub name: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 280);

impl Default for DnsEvent {
    fn default() -> Self {
        Self {
            cgroup_id: 0,
            ts_ns: 0,
            qtype: 0,
            name_len: 0,
            _pad: 0,
            name: [0; 256],
        }
    }
}

/// Value of `TG_DNS_RATE`: one cgroup's sampling window on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsRate {
    /// Start of the current one-second window (coarse ns).
    pub window_ns: u64,
    /// Samples taken in the window.
    pub taken: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DnsRate>() == 16);

/// Load-time settings of the signal programs, set by the agent as the
/// read-only global [`SIGNAL_CONFIG_SYMBOL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalConfig {
    /// DNS query names sampled per cgroup per CPU per second; 0 samples
    /// none (queries are still counted).
    pub dns_samples_per_sec: u32,
    /// Egress packets at the start of a TCP stream (since the SYN) whose
    /// payload prefix is checked for stratum markers.
    pub stratum_packets: u32,
}
const _: () = assert!(core::mem::size_of::<SignalConfig>() == 8);

/// Defaults of [`SignalConfig`], also the values in the object.
pub const DEFAULT_DNS_SAMPLES_PER_SEC: u32 = 50;
pub const DEFAULT_STRATUM_PACKETS: u32 = 8;

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            dns_samples_per_sec: DEFAULT_DNS_SAMPLES_PER_SEC,
            stratum_packets: DEFAULT_STRATUM_PACKETS,
        }
    }
}

/// Symbol of the [`SignalConfig`] global in the object.
pub const SIGNAL_CONFIG_SYMBOL: &str = "TG_SIGCFG";

/// Bytes of TCP payload searched for a stratum marker.
pub const STRATUM_PREFIX: usize = 256;

/// Stratum JSON-RPC methods matched, as [`StratumEvent::marker`].
pub const STRATUM_SUBSCRIBE: u8 = 1;
pub const STRATUM_AUTHORIZE: u8 = 2;
pub const STRATUM_SUBMIT: u8 = 3;
/// xmrig/Monero-style `"method": "login"`.
pub const STRATUM_LOGIN: u8 = 4;

/// Name of a stratum marker id.
pub const fn stratum_marker_name(marker: u8) -> &'static str {
    match marker {
        STRATUM_SUBSCRIBE => "mining.subscribe",
        STRATUM_AUTHORIZE => "mining.authorize",
        STRATUM_SUBMIT => "mining.submit",
        STRATUM_LOGIN => "login",
        _ => "unknown",
    }
}

/// Record of `TG_STRATUM_EV`: a stratum marker at the start of an
/// outbound TCP stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StratumEvent {
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC_COARSE nanoseconds.
    pub ts_ns: u64,
    /// The peer (pool), IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Peer port, host byte order.
    pub port: u16,
    pub family: u8,
    /// [`STRATUM_SUBSCRIBE`], ...
    pub marker: u8,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<StratumEvent>() == 40);

/// Value of `TG_SCRATCH`: the payload prefix under inspection, with room
/// past [`STRATUM_PREFIX`] so fixed-size compares near the end stay
/// inside the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    pub buf: [u8; STRATUM_PREFIX + 32],
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 288);
