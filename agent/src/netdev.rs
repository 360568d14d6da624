//! Network interfaces across network namespaces, without unsafe code:
//! rtnetlink link dumps (RTM_GETLINK) over a rustix socket, and running a
//! closure inside another namespace on a short-lived thread (setns
//! CLONE_NEWNET changes only the calling thread's namespace, so the rest
//! of the agent is unaffected).
//!
//! Used to find a pod's host-side veth: inside the pod's namespace, eth0's
//! IFLA_LINK is the ifindex of its peer in the other namespace; in the host
//! namespace that peer's IFLA_LINK points back at eth0.

use std::{
    fs::File,
    io,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use rustix::{
    net::{
        AddressFamily, RecvFlags, SendFlags, SocketType, bind, netlink::SocketAddrNetlink, recv,
        send, socket,
    },
    thread::{LinkNameSpaceType, move_into_link_name_space},
};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One interface of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub link: u32,
    /// The peer lives in another namespace (IFLA_LINK_NETNSID present).
    pub peer_elsewhere: bool,
    /// IFLA_INFO_KIND ("veth", "bridge", ...); empty when not given.
    pub kind: String,
}

/// Every interface of the calling thread's namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    bind(&fd, &SocketAddrNetlink::new(0, 0))?;
    let seq = 1u32;
    let mut req = Vec::with_capacity(32);
    req.extend_from_slice(&32u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifinfomsg: family AF_UNSPEC, everything else zero.
    req.extend_from_slice(&[0u8; 16]);
    send(&fd, &req, SendFlags::empty())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: a dump ends with NLMSG_DONE; 100k messages is far beyond
    // any real interface count.
    for _ in 0..100_000 {
        let (_, n) = recv(&fd, &mut buf[..], RecvFlags::empty())?;
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off + 16 <= n {
            let len = u32_at(&buf, off) as usize;
            let ty = u16_at(&buf, off + 4);
            if len < 16 || off + len > n {
                return Err(io::Error::other("truncated netlink message"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno =
                        i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or([0; 4]));
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                RTM_NEWLINK => {
                    if let Some(l) = parse_link(&buf[off + 16..off + len]) {
                        out.push(l);
                    }
                }
                _ => {}
            }
            off += len.next_multiple_of(4);
        }
    }
    Ok(out)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Attributes (type, payload) of a netlink attribute stream.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16_at(b, 0) as usize;
        let ty = u16_at(b, 2) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((ty, payload))
    })
}

fn c_string(p: &[u8]) -> String {
    let end = p.iter().position(|c| *c == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

/// One RTM_NEWLINK payload: struct ifinfomsg (16 bytes) then attributes.
fn parse_link(p: &[u8]) -> Option<Link> {
    if p.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(p[4..8].try_into().ok()?) as u32;
    let mut l = Link {
        index,
        name: String::new(),
        link: 0,
        peer_elsewhere: false,
        kind: String::new(),
    };
    for (ty, v) in attrs(&p[16..]) {
        match ty {
            IFLA_IFNAME => l.name = c_string(v),
            IFLA_LINK if v.len() >= 4 => l.link = u32_at(v, 0),
            IFLA_LINK_NETNSID => l.peer_elsewhere = true,
            IFLA_LINKINFO => {
                for (t, k) in attrs(v) {
                    if t == IFLA_INFO_KIND {
                        l.kind = c_string(k);
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// Identity (nsfs inode) of a namespace file.
pub fn ns_inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// The namespace the agent itself runs in.
pub const SELF_NETNS: &str = "/proc/self/ns/net";

/// Where host-side interfaces live: the configured namespace file, or
/// the agent's own namespace.
#[derive(Debug, Clone)]
pub struct HostNetns {
    /// None: the agent's own namespace (no setns needed).
    pub path: Option<PathBuf>,
}

impl HostNetns {
    pub fn new(path: &Path) -> Self {
        Self {
            path: (!path.as_os_str().is_empty()).then(|| path.to_owned()),
        }
    }

    pub fn inode(&self) -> io::Result<u64> {
        ns_inode(self.path.as_deref().unwrap_or(Path::new(SELF_NETNS)))
    }

    /// Runs `f` in the host namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        match &self.path {
            None => Ok(f()),
            Some(p) => in_netns(p, f),
        }
    }
}

/// Runs `f` on a new thread that has joined the network namespace at
/// `ns` (a /proc/<pid>/ns/net or /run/netns/<name> file).
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file =
        File::open(ns).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", ns.display())))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(|e| io::Error::other(format!("setns {}: {e}", ns.display())))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_veth_link_message() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&7i32.to_ne_bytes());
        let mut attr = |ty: u16, v: &[u8]| {
            let len = 4 + v.len();
            p.extend_from_slice(&(len as u16).to_ne_bytes());
            p.extend_from_slice(&ty.to_ne_bytes());
            p.extend_from_slice(v);
            p.resize(p.len().next_multiple_of(4), 0);
        };
        attr(IFLA_IFNAME, b"veth1\0");
        attr(IFLA_LINK, &3u32.to_ne_bytes());
        attr(IFLA_LINK_NETNSID, &0i32.to_ne_bytes());
        let mut info = Vec::new();
        info.extend_from_slice(&9u16.to_ne_bytes());
        info.extend_from_slice(&IFLA_INFO_KIND.to_ne_bytes());
        info.extend_from_slice(b"veth\0");
        info.resize(12, 0);
        attr(IFLA_LINKINFO | 0x8000, &info);
        let l = parse_link(&p).expect("parsed");
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "veth1".into(),
                link: 3,
                peer_elsewhere: true,
                kind: "veth".into()
            }
        );
    }

    #[test]
    fn lists_own_namespace_with_loopback() {
        let links = links().expect("netlink dump");
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
    }
}
