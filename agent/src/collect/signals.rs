//! Decoding of the kernel's DNS samples and stratum events into the
//! snapshot's [`DnsSample`] and [`StratumHit`] rows.

use std::fmt::Write as _;

use tollgate_ebpf::{DnsEvent, StratumEvent, stratum_marker_name};

use super::{DnsSample, StratumHit};

/// Most DNS samples and stratum events taken from the ring buffers per
/// pass; the rest stay queued for the next pass (the kernel counts what
/// does not fit in the buffer).
pub const MAX_EVENTS_PER_PASS: usize = 65_536;

/// A wire-format DNS name (length-prefixed labels ending with the root)
/// as dotted text: bytes outside printable ASCII, dots inside labels and
/// backslashes are escaped as `\DDD` (decimal, as zone files do), so
/// every name is one line and two different names never print the same.
/// The root alone is ".". None when the labels do not end exactly at the
/// end of `wire` (the kernel checked this already; a short or garbled
/// record is not guessed at).
pub fn decode_name(wire: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut pos = 0usize;
    loop {
        let len = *wire.get(pos)? as usize;
        if len == 0 {
            if pos + 1 != wire.len() {
                return None;
            }
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        let label = wire.get(pos + 1..pos + 1 + len)?;
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(b as char);
            } else {
                let _ = write!(out, "\\{b:03}");
            }
        }
        pos += 1 + len;
    }
    if out.is_empty() {
        out.push('.');
    }
    Some(out)
}

impl DnsSample {
    /// None (and the caller counts it) when the record's name is garbled.
    pub fn from_event(e: &DnsEvent) -> Option<Self> {
        Some(Self {
            cgroup_id: e.cgroup_id,
            name: decode_name(e.wire_name())?,
            qtype: e.qtype,
            ts_ns: e.ts_ns,
        })
    }
}

impl From<&StratumEvent> for StratumHit {
    fn from(e: &StratumEvent) -> Self {
        Self {
            cgroup_id: e.cgroup_id,
            addr: e.ip().to_string(),
            port: e.port,
            marker: stratum_marker_name(e.marker).to_owned(),
            ts_ns: e.ts_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(labels: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for l in labels {
            w.push(l.len() as u8);
            w.extend_from_slice(l);
        }
        w.push(0);
        w
    }

    #[test]
    fn names_decode_and_escape() {
        assert_eq!(
            decode_name(&wire(&[b"www", b"example", b"com"])).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(decode_name(&[0]).as_deref(), Some("."));
        assert_eq!(
            decode_name(&wire(&[b"a.b", b"c\\d", b"\x00\xff\n ", b"x"])).as_deref(),
            Some("a\\046b.c\\092d.\\000\\255\\010\\032.x")
        );
    }

    #[test]
    fn garbled_names_are_refused() {
        // Cut inside a label, missing root, trailing bytes, pointer.
        assert_eq!(decode_name(&[3, b'a', b'b']), None);
        assert_eq!(decode_name(&[1, b'a']), None);
        assert_eq!(decode_name(&[1, b'a', 0, 7]), None);
        assert_eq!(decode_name(&[0xc0, 12]), None);
        assert_eq!(decode_name(&[]), None);
    }

    #[test]
    fn events_convert() {
        let mut e = DnsEvent {
            cgroup_id: 7,
            ts_ns: 99,
            qtype: 16,
            ..DnsEvent::default()
        };
        let w = wire(&[b"t", b"io"]);
        e.name[..w.len()].copy_from_slice(&w);
        e.name_len = w.len() as u16;
        let s = DnsSample::from_event(&e).unwrap();
        assert_eq!(
            (s.cgroup_id, s.name.as_str(), s.qtype, s.ts_ns),
            (7, "t.io", 16, 99)
        );
        let st = StratumEvent {
            cgroup_id: 3,
            ts_ns: 5,
            addr: tollgate_ebpf::v4_mapped([203, 0, 113, 9]),
            port: 3333,
            family: tollgate_ebpf::FAMILY_V4,
            marker: tollgate_ebpf::STRATUM_LOGIN,
            _pad: 0,
        };
        let h = StratumHit::from(&st);
        assert_eq!(
            (h.addr.as_str(), h.port, h.marker.as_str()),
            ("203.0.113.9", 3333, "login")
        );
    }
}
