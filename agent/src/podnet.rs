//! Which host-side interfaces belong to a pod: the processes of the pod's
//! cgroup (cgroup.procs, the whole subtree) give its network namespaces
//! (/proc/<pid>/ns/net); inside each, a veth whose peer lives in another
//! namespace names the peer's ifindex (IFLA_LINK); in the host namespace
//! that interface must point back (its IFLA_LINK is the pod-side ifindex).
//! The host namespace's own interfaces are never a pod's (hostNetwork
//! pods share it: the cgroup hooks cover them).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use crate::netdev::{self, HostNetns, Link};

/// Processes read per cgroup subtree: one per namespace is enough, and a
/// pod has one or two namespaces.
const MAX_PIDS: usize = 4096;
/// Cgroup directories walked per subtree.
const MAX_DIRS: usize = 1024;

/// A pod's host-side interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodIface {
    pub ifindex: u32,
    /// Name in the host namespace (e.g. cali1234, veth12ab, vethXXXX).
    pub name: String,
    /// The pod-side name (eth0).
    pub pod_name: String,
}

/// Pids in the cgroup at `dir` and below (bounded).
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut dirs = 0;
    while let Some(d) = stack.pop() {
        dirs += 1;
        if dirs > MAX_DIRS || pids.len() >= MAX_PIDS {
            break;
        }
        if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    pids.truncate(MAX_PIDS);
    pids
}

/// The distinct network namespaces of `pids` other than `host_inode`:
/// inode -> a /proc/<pid>/ns/net path to enter it by.
pub fn netns_of(pids: &[u32], host_inode: u64) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    for pid in pids {
        let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(ino) = netdev::ns_inode(&p)
            && ino != host_inode
        {
            out.entry(ino).or_insert(p);
        }
    }
    out
}

/// The host-side interfaces of the pods whose processes are in the cgroup
/// at `dir`; `host_links` is a dump of the host namespace.
pub fn host_ifaces(dir: &Path, host: &HostNetns, host_links: &[Link]) -> io::Result<Vec<PodIface>> {
    let host_inode = host.inode()?;
    let mut out = Vec::new();
    for ns in netns_of(&cgroup_pids(dir), host_inode).values() {
        // The process may have exited since: skip its namespace.
        let Ok(Ok(pod_links)) = netdev::in_netns(ns, netdev::links) else {
            continue;
        };
        out.extend(match_peers(&pod_links, host_links));
    }
    out.sort_by_key(|i| i.ifindex);
    out.dedup_by_key(|i| i.ifindex);
    Ok(out)
}

/// Host interfaces that are the peers of the pod's cross-namespace links.
pub fn match_peers(pod_links: &[Link], host_links: &[Link]) -> Vec<PodIface> {
    pod_links
        .iter()
        .filter(|p| p.peer_elsewhere && p.link != 0)
        .filter_map(|p| {
            host_links
                .iter()
                .find(|h| h.index == p.link && h.link == p.index && h.peer_elsewhere)
                .map(|h| PodIface {
                    ifindex: h.index,
                    name: h.name.clone(),
                    pod_name: p.name.clone(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, link: u32, elsewhere: bool) -> Link {
        Link {
            index,
            name: name.into(),
            link,
            peer_elsewhere: elsewhere,
            kind: "veth".into(),
        }
    }

    #[test]
    fn peers_must_point_at_each_other() {
        let pod = [link(1, "lo", 0, false), link(2, "eth0", 41, true)];
        let host = [
            link(40, "p0", 2, true),
            // Index matches but points elsewhere: another pod's eth0 index 2.
            link(41, "p1", 2, true),
            link(42, "p2", 3, true),
        ];
        assert_eq!(
            match_peers(&pod, &host),
            vec![PodIface {
                ifindex: 41,
                name: "p1".into(),
                pod_name: "eth0".into()
            }]
        );
        let wrong_back = [link(41, "p1", 9, true)];
        assert!(match_peers(&pod, &wrong_back).is_empty());
        let same_ns = [link(41, "p1", 2, false)];
        assert!(match_peers(&pod, &same_ns).is_empty());
    }
}
