//! Reference counters from nftables, independent of Tollgate.
//!
//! A TCP transfer's segmentation (GSO/TSO sizes, ACK coalescing) cannot be
//! predicted, so tests compare the agent with nftables instead of with a
//! formula. Both see the same thing: the output/input hooks run once per
//! skb with `skb->len` starting at the L3 header, exactly like cgroup_skb
//! egress/ingress. UDP needs no reference (one datagram = one packet of
//! payload + 28 bytes on IPv4, + 48 on IPv6), which is how the harness test
//! validates this module.
//!
//! Layout: table `inet tgtest`, chains `output` and `input` (filter hooks,
//! priority 0, policy accept). Every rule is `counter` only, so the counters
//! never change what the kernel does with a packet. Each rule carries its key
//! as its comment, which is how it is found again in `nft -j` output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

use crate::cmd::{self, Error, Result};
use crate::netns::Netns;

pub const TABLE: &str = "tgtest";

/// Transport protocol for a per-port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        })
    }
}

/// What one rule counts, in both directions: packets to `addr` (output,
/// daddr) and from `addr` (input, saddr), optionally only `l4` with the
/// peer's port (dport out, sport in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub addr: IpAddr,
    pub l4: Option<(L4, u16)>,
}

impl Peer {
    /// Everything to/from `addr`.
    pub fn addr(addr: impl Into<IpAddr>) -> Peer {
        Peer {
            addr: addr.into(),
            l4: None,
        }
    }

    /// Only `l4` traffic to/from `addr` port `port`.
    pub fn port(addr: impl Into<IpAddr>, l4: L4, port: u16) -> Peer {
        Peer {
            addr: addr.into(),
            l4: Some((l4, port)),
        }
    }

    /// The rule comment that identifies this peer in `chain`.
    fn key(&self, chain: &str) -> String {
        match self.l4 {
            None => format!("{chain} {}", self.addr),
            Some((l4, port)) => format!("{chain} {} {l4} {port}", self.addr),
        }
    }

    fn rule(&self, chain: &str) -> String {
        let family = if self.addr.is_ipv4() { "ip" } else { "ip6" };
        let (addr_field, port_field) = if chain == "output" {
            ("daddr", "dport")
        } else {
            ("saddr", "sport")
        };
        let l4 = match self.l4 {
            None => String::new(),
            Some((l4, port)) => format!(" {l4} {port_field} {port}"),
        };
        format!(
            "{family} {addr_field} {}{l4} counter comment \"{}\"",
            self.addr,
            self.key(chain)
        )
    }
}

/// Packets and L3 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The ruleset text `install` loads; replaces any earlier `tgtest` table
/// (the empty `table` line makes `delete` safe on first use).
pub fn ruleset(peers: &[Peer]) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for (chain, hook) in [("output", "output"), ("input", "input")] {
        s.push_str(&format!(
            "  chain {chain} {{\n    type filter hook {hook} priority 0; policy accept;\n"
        ));
        for p in peers {
            s.push_str(&format!("    {}\n", p.rule(chain)));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// Installs (or replaces) the counters for `peers` inside `ns`.
pub fn install(ns: &Netns, peers: &[Peer]) -> Result<()> {
    cmd::run_with_stdin(
        "ip",
        ["netns", "exec", ns.name(), "nft", "-f", "-"],
        &ruleset(peers),
    )
    .map(drop)
}

/// Current counter values inside `ns`.
pub fn read(ns: &Netns) -> Result<Counters> {
    let out = ns.exec(&["nft", "-j", "list", "table", "inet", TABLE])?;
    parse(&out)
}

/// Counter values keyed by rule comment (`"<chain> <addr>[ <l4> <port>]"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    by_key: BTreeMap<String, Count>,
}

impl Counters {
    /// Sent to `peer` (output hook). Zero if no such rule was installed.
    pub fn egress(&self, peer: Peer) -> Count {
        self.get(&peer.key("output"))
    }

    /// Received from `peer` (input hook).
    pub fn ingress(&self, peer: Peer) -> Count {
        self.get(&peer.key("input"))
    }

    fn get(&self, key: &str) -> Count {
        self.by_key.get(key).copied().unwrap_or_default()
    }
}

/// Parses `nft -j list table`: `{"nftables":[..., {"rule":{"chain":..,
/// "comment":..,"expr":[..., {"counter":{"packets":N,"bytes":N}}]}}]}`.
pub fn parse(json: &str) -> Result<Counters> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error::Invalid(format!("nft -j output is not JSON ({e}): {json}")))?;
    let items = v["nftables"]
        .as_array()
        .ok_or_else(|| Error::Invalid(format!("nft -j output lacks \"nftables\": {json}")))?;
    let mut by_key = BTreeMap::new();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let Some(key) = rule["comment"].as_str() else {
            continue;
        };
        let counter = rule["expr"]
            .as_array()
            .and_then(|e| e.iter().find_map(|x| x.get("counter")));
        if let Some(c) = counter {
            let count = Count {
                packets: c["packets"].as_u64().unwrap_or(0),
                bytes: c["bytes"].as_u64().unwrap_or(0),
            };
            by_key.insert(key.to_string(), count);
        }
    }
    Ok(Counters { by_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ruleset_has_one_rule_per_peer_and_chain() {
        let peers = [
            Peer::addr(Ipv4Addr::new(203, 0, 113, 1)),
            Peer::port(
                Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1),
                L4::Udp,
                9000,
            ),
        ];
        let r = ruleset(&peers);
        assert!(r.contains("ip daddr 203.0.113.1 counter comment \"output 203.0.113.1\""));
        assert!(r.contains("ip saddr 203.0.113.1 counter comment \"input 203.0.113.1\""));
        assert!(r.contains(
            "ip6 daddr 2001:db8:e::1 udp dport 9000 counter comment \"output 2001:db8:e::1 udp 9000\""
        ));
        assert!(r.contains("ip6 saddr 2001:db8:e::1 udp sport 9000 counter"));
    }

    #[test]
    fn parses_counters_by_comment() {
        let json = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
          {"table": {"family": "inet", "name": "tgtest", "handle": 2}},
          {"rule": {"family": "inet", "table": "tgtest", "chain": "output", "handle": 3,
            "comment": "output 203.0.113.1",
            "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
              "right": "203.0.113.1"}}, {"counter": {"packets": 10, "bytes": 1280}}]}},
          {"rule": {"family": "inet", "table": "tgtest", "chain": "input", "handle": 4,
            "expr": [{"counter": {"packets": 1, "bytes": 1}}]}}]}"#;
        let c = parse(json).unwrap();
        let peer = Peer::addr(Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(
            c.egress(peer),
            Count {
                packets: 10,
                bytes: 1280
            }
        );
        assert_eq!(c.ingress(peer), Count::default());
        assert!(parse("{}").is_err());
    }
}
