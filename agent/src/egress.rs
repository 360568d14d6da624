//! Per-class egress policy: `[classes.egress.<class>]` with
//! `network = "deny"` and an allowlist of CIDRs and ports. Pods of such a
//! class reach only the allowlist (plus loopback): other connect() and
//! sendmsg() calls fail with EPERM, other packets are dropped in the
//! cgroup_skb egress hook, and every denial is counted per (cgroup,
//! destination) in `TG_DENIED`.
//!
//! The allowlist trie returns the longest matching prefix only, so each
//! entry is compiled with the ports of every shorter prefix of the same
//! policy that covers it: what a wider rule allows stays allowed inside a
//! narrower one.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tollgate_ebpf::{AllowPorts, MAX_ALLOW_PORTS, PortRange};

use crate::inventory::classes::ClassError;

/// What a class may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No restriction (the default).
    #[default]
    Allow,
    /// Only the `allow` list (and loopback).
    Deny,
}

/// `[classes.egress.<class>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// "allow" (default) or "deny".
    #[serde(default)]
    pub network: NetworkMode,
    /// Destinations a "deny" class may still reach.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
}

/// One allowlist entry: `{ cidr = "10.96.0.10/32", ports = [53] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Destination network (IPv4 or IPv6).
    pub cidr: IpNet,
    /// Destination ports (TCP, UDP, SCTP) as numbers or "lo-hi" ranges; at
    /// most 8 after folding in covering entries. Empty: every port and
    /// protocol (ICMP included).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A port (`53`) or an inclusive range (`"8000-8080"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Port(u16),
    Range(String),
}

impl PortSpec {
    fn range(&self) -> Result<PortRange, String> {
        match self {
            PortSpec::Port(p) => Ok(PortRange { lo: *p, hi: *p }),
            PortSpec::Range(s) => {
                let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                let parse = |v: &str| {
                    v.trim()
                        .parse::<u16>()
                        .map_err(|_| format!("{s:?} is not a port or a \"lo-hi\" range"))
                };
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(format!("{s:?}: the range is empty (lo > hi)"));
                }
                Ok(PortRange { lo, hi })
            }
        }
    }
}

/// Always reachable under a deny policy: a pod's own loopback.
const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// The policies as the kernel holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    /// Class -> policy id (1, 2, ... in class name order).
    pub ids: BTreeMap<String, u32>,
    /// (policy id, network, allowed ports) trie entries.
    pub entries: Vec<(u32, IpNet, AllowPorts)>,
}

/// `None` = every port and protocol.
type Ports = Option<Vec<PortRange>>;

/// Validates and compiles `[classes.egress]`; `classes` are the classes
/// the classifier can return.
pub fn compile(
    egress: &BTreeMap<String, EgressPolicy>,
    classes: &std::collections::BTreeSet<String>,
) -> Result<Compiled, ClassError> {
    let invalid = |key: String, why: String| ClassError::Invalid { key, why };
    let mut out = Compiled::default();
    for (class, pol) in egress {
        if !classes.contains(class) {
            return Err(invalid(
                format!("classes.egress.{class}"),
                format!(
                    "no such class (known: {}); add it to classes.names or a rule",
                    classes.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if pol.network == NetworkMode::Allow {
            if !pol.allow.is_empty() {
                return Err(invalid(
                    format!("classes.egress.{class}.allow"),
                    "an allowlist only applies with network = \"deny\"".into(),
                ));
            }
            continue;
        }
        let id = out.ids.len() as u32 + 1;
        out.ids.insert(class.clone(), id);
        let mut rules: Vec<(IpNet, Ports)> = LOOPBACK
            .iter()
            .map(|n| (n.parse().expect("valid"), None))
            .collect();
        for (i, r) in pol.allow.iter().enumerate() {
            let ports = if r.ports.is_empty() {
                None
            } else {
                Some(
                    r.ports
                        .iter()
                        .map(PortSpec::range)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            invalid(format!("classes.egress.{class}.allow[{i}].ports"), e)
                        })?,
                )
            };
            rules.push((r.cidr.trunc(), ports));
        }
        for (net, _) in &rules {
            let mut folded: Ports = Some(Vec::new());
            for (wider, ports) in &rules {
                if wider.prefix_len() <= net.prefix_len() && wider.contains(net) {
                    folded = match (folded, ports) {
                        (None, _) | (_, None) => None,
                        (Some(mut a), Some(b)) => {
                            a.extend(b.iter().copied());
                            Some(a)
                        }
                    };
                }
            }
            let mut ap = AllowPorts::default();
            if let Some(mut ranges) = folded {
                ranges.sort_by_key(|r| (r.lo, r.hi));
                ranges.dedup();
                if ranges.len() > MAX_ALLOW_PORTS {
                    return Err(invalid(
                        format!("classes.egress.{class}.allow"),
                        format!(
                            "{net} allows {} port ranges (its own and those of wider entries); at most {MAX_ALLOW_PORTS}: use ranges",
                            ranges.len()
                        ),
                    ));
                }
                ap.count = ranges.len() as u32;
                ap.ranges[..ranges.len()].copy_from_slice(&ranges);
            }
            if !out.entries.iter().any(|(i, n, _)| *i == id && n == net) {
                out.entries.push((id, *net, ap));
            }
        }
    }
    if out.entries.len() > tollgate_ebpf::map::DEFAULT_POLICY_ALLOW_ENTRIES as usize {
        return Err(invalid(
            "classes.egress".into(),
            format!(
                "{} allowlist entries in total; at most {}",
                out.entries.len(),
                tollgate_ebpf::map::DEFAULT_POLICY_ALLOW_ENTRIES
            ),
        ));
    }
    Ok(out)
}

/// Userspace model of the kernel check (tests, and `top`'s explanation).
pub fn allows(c: &Compiled, id: u32, ip: std::net::IpAddr, port: u16, proto: u8) -> bool {
    let Some((_, _, ap)) = c
        .entries
        .iter()
        .filter(|(i, n, _)| *i == id && n.contains(&ip))
        .max_by_key(|(_, n, _)| n.prefix_len())
    else {
        return false;
    };
    if ap.count == 0 {
        return true;
    }
    matches!(proto, 6 | 17 | 132 | 136)
        && ap.ranges[..ap.count as usize]
            .iter()
            .any(|r| port >= r.lo && port <= r.hi)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn classes() -> BTreeSet<String> {
        ["default", "sandbox"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn parse(toml_text: &str) -> BTreeMap<String, EgressPolicy> {
        #[derive(Deserialize)]
        struct W {
            egress: BTreeMap<String, EgressPolicy>,
        }
        toml::from_str::<W>(toml_text).expect("parses").egress
    }

    #[test]
    fn narrower_entries_inherit_wider_ports() {
        let e = parse(
            r#"
            [egress.sandbox]
            network = "deny"
            allow = [
              { cidr = "198.18.0.0/16", ports = [443] },
              { cidr = "198.18.250.2/32", ports = [53, "8000-8001"] },
              { cidr = "2001:db8:c::/48" },
            ]
            "#,
        );
        let c = compile(&e, &classes()).expect("compiles");
        let id = c.ids["sandbox"];
        let ip = |s: &str| s.parse().unwrap();
        assert!(allows(&c, id, ip("198.18.250.2"), 53, 17));
        assert!(allows(&c, id, ip("198.18.250.2"), 443, 6), "inherited");
        assert!(allows(&c, id, ip("198.18.250.2"), 8001, 6));
        assert!(!allows(&c, id, ip("198.18.250.2"), 8002, 6));
        assert!(!allows(&c, id, ip("198.18.1.1"), 53, 17));
        assert!(
            !allows(&c, id, ip("198.18.1.1"), 0, 1),
            "icmp needs an all-ports entry"
        );
        assert!(allows(&c, id, ip("2001:db8:c::9"), 0, 58));
        assert!(allows(&c, id, ip("127.0.0.1"), 9, 17), "loopback");
        assert!(!allows(&c, id, ip("203.0.113.1"), 443, 6));
    }

    #[test]
    fn bad_policies_are_refused_with_the_key() {
        let unknown = parse("[egress.nope]\nnetwork = \"deny\"\n");
        let e = compile(&unknown, &classes()).unwrap_err().to_string();
        assert!(e.contains("classes.egress.nope"), "{e}");
        let range = parse(
            "[egress.sandbox]\nnetwork = \"deny\"\nallow = [{ cidr = \"10.0.0.0/8\", ports = [\"9-1\"] }]\n",
        );
        let e = compile(&range, &classes()).unwrap_err().to_string();
        assert!(e.contains("allow[0].ports") && e.contains("empty"), "{e}");
        let many: Vec<String> = (1..=9).map(|p| p.to_string()).collect();
        let text = format!(
            "[egress.sandbox]\nnetwork = \"deny\"\nallow = [{{ cidr = \"10.0.0.0/8\", ports = [{}] }}]\n",
            many.join(",")
        );
        let e = compile(&parse(&text), &classes()).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
        let allow_list = parse("[egress.sandbox]\nallow = [{ cidr = \"10.0.0.0/8\" }]\n");
        assert!(compile(&allow_list, &classes()).is_err());
    }
}
