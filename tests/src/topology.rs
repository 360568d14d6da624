//! The standard test network: a star of namespaces around a router.
//!
//! ```text
//!  pod n  eth0 198.18.n.2/24  2001:db8:c:n::2/64 ── pN   198.18.n.1  2001:db8:c:n::1 ┐
//!  service eth0 198.18.250.2  2001:db8:c:fa::2   ── svc0 198.18.250.1 2001:db8:c:fa::1 ├ router
//!  internet eth0 203.0.113.1  2001:db8:e::1      ── inet0 203.0.113.254 2001:db8:e::fe ┘ (forwarding)
//! ```
//!
//! Routed instead of bridged so every pod has its own L3 hop: the router's
//! neighbour/ARP traffic never crosses a pod's veth except its own, and
//! each pod's egress is one veth whose traffic is exactly that pod's.
//! 198.18.0.0/16 and 2001:db8:c::/48 are "cluster"; 203.0.113.0/24 and
//! 2001:db8:e::/48 are "internet" (configure the agent's CIDRs that way).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use crate::cmd::{Error, Result};
use crate::netns::{Netns, Side, Veth, VethEnd};
use crate::pod::Pod;

pub const CLUSTER_V4: &str = "198.18.0.0/16";
pub const CLUSTER_V6: &str = "2001:db8:c::/48";
pub const INTERNET_V4: &str = "203.0.113.0/24";
pub const INTERNET_V6: &str = "2001:db8:e::/48";

pub const INTERNET_HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INTERNET_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1);
pub const SERVICE_HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);
pub const SERVICE_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0xfa, 0, 0, 0, 2);

/// Pod subnets are 198.18.<n>.0/24; 250 belongs to the service subnet.
pub const MAX_PODS: usize = 249;

/// A plain peer host (not a pod: no test cgroup) in its own namespace.
#[derive(Debug)]
pub struct Host {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub netns: Netns,
}

impl Host {
    /// `ip netns exec <ns> argv...`, not yet spawned.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        self.netns.command(argv)
    }
}

/// Builder: `Topology::builder().pods(2).build()?` or `.pod("web").pod("db")`.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    pods: Vec<String>,
}

impl TopologyBuilder {
    /// Adds a pod named `name` (it gets the next subnet, starting at 1).
    pub fn pod(mut self, name: &str) -> Self {
        self.pods.push(name.to_string());
        self
    }

    /// Adds `n` pods named `pod1`, `pod2`, ... (continuing the numbering).
    pub fn pods(mut self, n: usize) -> Self {
        let start = self.pods.len();
        self.pods
            .extend((start + 1..=start + n).map(|i| format!("pod{i}")));
        self
    }

    pub fn build(self) -> Result<Topology> {
        if self.pods.len() > MAX_PODS {
            return Err(Error::Invalid(format!(
                "{} pods requested, the 198.18.<n>.0/24 plan allows {MAX_PODS}",
                self.pods.len()
            )));
        }
        let router = Netns::new("tgr")?;
        router.sysctls(&[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv6/conf/default/forwarding", "1"),
        ])?;
        // Built up in a partially filled struct so an error part-way through
        // still tears down whatever exists (Drop of the fields).
        let mut topo = Topology {
            pods: Vec::new(),
            internet: None,
            service: None,
            links: Vec::new(),
            router,
        };
        let internet = topo.add_host(
            "tgi",
            "inet0",
            (INTERNET_HOST_V4, 24, Ipv4Addr::new(203, 0, 113, 254)),
            (
                INTERNET_HOST_V6,
                64,
                Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 0xfe),
            ),
        )?;
        topo.internet = Some(internet);
        let service = topo.add_host(
            "tgs",
            "svc0",
            (SERVICE_HOST_V4, 24, Ipv4Addr::new(198, 18, 250, 1)),
            (
                SERVICE_HOST_V6,
                64,
                Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0xfa, 0, 0, 0, 1),
            ),
        )?;
        topo.service = Some(service);
        for (i, name) in self.pods.iter().enumerate() {
            let n = i as u8 + 1;
            let mut pod = Pod::new(name)?;
            let (gw4, gw6) = (pod_addr_v4(n, 1), pod_addr_v6(n, 1));
            pod.v4 = pod_addr_v4(n, 2);
            pod.v6 = pod_addr_v6(n, 2);
            let link = topo.wire(
                &pod.netns,
                &format!("p{n}"),
                (pod.v4, 24, gw4),
                (pod.v6, 64, gw6),
            );
            // Push first so the pod is cleaned up even if wiring failed.
            topo.pods.push(pod);
            topo.links.push(link?);
        }
        Ok(topo)
    }
}

/// 198.18.<n>.<host>
pub fn pod_addr_v4(n: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, n, host)
}

/// 2001:db8:c:<n>::<host>
pub fn pod_addr_v6(n: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xc, u16::from(n), 0, 0, 0, host)
}

/// The running network. Field order is drop order: pods (their cgroups
/// kill workloads, then namespaces go), peer hosts, links, router last.
#[derive(Debug)]
pub struct Topology {
    pub pods: Vec<Pod>,
    internet: Option<Host>,
    service: Option<Host>,
    links: Vec<Veth>,
    pub router: Netns,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// Pod by index in build order (0 = first pod, subnet 198.18.1.0/24).
    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    /// 203.0.113.1 / 2001:db8:e::1: "the internet".
    pub fn internet(&self) -> &Host {
        self.internet
            .as_ref()
            .expect("built by TopologyBuilder::build")
    }

    /// 198.18.250.2 / 2001:db8:c:fa::2: a cluster-internal service.
    pub fn service(&self) -> &Host {
        self.service
            .as_ref()
            .expect("built by TopologyBuilder::build")
    }

    /// Names of every namespace this topology owns (for leak checks).
    pub fn netns_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods
            .iter()
            .map(|p| p.netns.name().to_string())
            .collect();
        v.extend(
            self.internet
                .iter()
                .chain(&self.service)
                .map(|h| h.netns.name().to_string()),
        );
        v.push(self.router.name().to_string());
        v
    }

    fn add_host(
        &mut self,
        prefix: &str,
        router_if: &str,
        v4: (Ipv4Addr, u8, Ipv4Addr),
        v6: (Ipv6Addr, u8, Ipv6Addr),
    ) -> Result<Host> {
        let netns = Netns::new(prefix)?;
        let link = self.wire(&netns, router_if, v4, v6)?;
        self.links.push(link);
        Ok(Host {
            v4: v4.0,
            v6: v6.0,
            netns,
        })
    }

    /// Connects `ns` (as `eth0` with the given address) to the router (as
    /// `router_if` with the gateway address) and routes `ns` via the router.
    fn wire(
        &self,
        ns: &Netns,
        router_if: &str,
        (addr4, len4, gw4): (Ipv4Addr, u8, Ipv4Addr),
        (addr6, len6, gw6): (Ipv6Addr, u8, Ipv6Addr),
    ) -> Result<Veth> {
        let router_end = VethEnd::new(
            Side::Ns(&self.router),
            router_if,
            &[(IpAddr::V4(gw4), len4), (IpAddr::V6(gw6), len6)],
        );
        let inner_end = VethEnd::new(
            Side::Ns(ns),
            "eth0",
            &[(IpAddr::V4(addr4), len4), (IpAddr::V6(addr6), len6)],
        );
        let veth = Veth::create(&router_end, &inner_end)?;
        ns.ip(["-4", "route", "add", "default", "via", &gw4.to_string()])?;
        ns.ip(["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        Ok(veth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        assert_eq!(pod_addr_v4(1, 2).to_string(), "198.18.1.2");
        assert_eq!(pod_addr_v6(1, 2).to_string(), "2001:db8:c:1::2");
        assert_eq!(
            pod_addr_v6(250, 1),
            Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0xfa, 0, 0, 0, 1)
        );
        assert_eq!(INTERNET_HOST_V6.to_string(), "2001:db8:e::1");
        assert_eq!(SERVICE_HOST_V6.to_string(), "2001:db8:c:fa::2");
    }

    #[test]
    fn builder_names_pods_in_order() {
        let b = Topology::builder().pod("web").pods(2);
        assert_eq!(b.pods, vec!["web", "pod2", "pod3"]);
    }
}
