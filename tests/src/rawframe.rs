//! An AF_PACKET sender: whole Ethernet frames written to a pod's `eth0`
//! below the socket layer, which is how a workload with CAP_NET_RAW gets
//! past every cgroup hook (cgroup_skb never sees these frames; nftables'
//! output hook in the pod does not either). Only something on the wire
//! side (tc on the host-side veth, a router) sees them.
//!
//! The sender is a short Python script (`python3`, part of Debian's
//! python3-venv that `cargo xtask setup` installs): Rust's std has no
//! packet sockets and the test crate forbids `unsafe`.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::cmd::{Error, Result};
use crate::netns::Netns;
use crate::pod::Pod;
use crate::topology::Topology;

/// Sends COUNT IPv4/UDP frames (payload SIZE bytes, valid IP checksum, no
/// UDP checksum) from SRC to DST:DPORT out of IFACE, link-layer addresses
/// SMAC -> DMAC; prints `sent COUNT`.
const SENDER: &str = r#"
import socket, struct, sys
iface, smac, dmac, src, dst, dport, size, count = sys.argv[1:9]
dport, size, count = int(dport), int(size), int(count)
def mac(m): return bytes(int(x, 16) for x in m.split(":"))
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
payload = bytes((i % 251) + 1 for i in range(size))
udp = struct.pack("!HHHH", 40000, dport, 8 + size, 0) + payload
def ip(ident):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
eth = mac(dmac) + mac(smac) + b"\x08\x00"
for i in range(count):
    frame = eth + ip(i & 0xffff) + udp
    if s.send(frame) != len(frame): sys.exit("short send")
print("sent %d" % count)
"#;

/// The MAC address of `ifname` in `ns`.
pub fn mac(ns: &Netns, ifname: &str) -> Result<String> {
    let out = ns.exec(&["ip", "-j", "link", "show", ifname])?;
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| Error::Invalid(format!("ip -j link show {ifname}: {e}: {out}")))?;
    v[0]["address"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Invalid(format!("no MAC for {ifname}: {out}")))
}

/// The argv that sends `count` raw frames of `size` UDP payload bytes from
/// `pod`'s eth0 (its address as source) to `dst`:`dport` through the
/// router's `router_if` (the pod's gateway).
pub fn sender_argv(
    topo: &Topology,
    pod: &Pod,
    router_if: &str,
    dst: Ipv4Addr,
    dport: u16,
    size: u32,
    count: u32,
) -> Result<Vec<String>> {
    Ok(vec![
        "python3".into(),
        "-c".into(),
        SENDER.into(),
        "eth0".into(),
        mac(&pod.netns, "eth0")?,
        mac(&topo.router, router_if)?,
        pod.v4.to_string(),
        dst.to_string(),
        dport.to_string(),
        size.to_string(),
        count.to_string(),
    ])
}

/// IPv4 only and permanent neighbours on both ends of the pod's veth: no
/// IPv6 housekeeping and no ARP, so every frame on that veth is the
/// test's and per-interface counts can be compared exactly.
pub fn quiet_pod_link(topo: &Topology, pod: &Pod, router_if: &str) -> Result<()> {
    pod.netns.sysctls(&[
        ("net/ipv6/conf/all/disable_ipv6", "1"),
        ("net/ipv6/conf/eth0/disable_ipv6", "1"),
    ])?;
    let gw = format!("198.18.{}.1", pod.v4.octets()[2]);
    pod.netns.ip([
        "neigh",
        "replace",
        &gw,
        "lladdr",
        &mac(&topo.router, router_if)?,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    topo.router.ip([
        "neigh",
        "replace",
        &pod.v4.to_string(),
        "lladdr",
        &mac(&pod.netns, "eth0")?,
        "dev",
        router_if,
        "nud",
        "permanent",
    ])?;
    Ok(())
}
