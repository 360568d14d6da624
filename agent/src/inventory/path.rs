//! What a cgroup path says about its owner, without asking anybody: the
//! kubelet layouts (systemd and cgroupfs drivers, any container runtime),
//! systemd units and standalone containers. Pure string parsing, so it is
//! tested over recorded trees (testdata/).

use serde::{Deserialize, Serialize};

/// Container runtime, as far as the cgroup name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
    /// A bare id directory (cgroupfs driver): every runtime names it so.
    Unknown,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        }
    }

    /// From the scheme of a Kubernetes containerID ("containerd://<id>").
    pub fn from_scheme(s: &str) -> Self {
        match s {
            "containerd" => Self::Containerd,
            "cri-o" | "crio" => Self::Crio,
            "docker" => Self::Docker,
            _ => Self::Unknown,
        }
    }
}

/// Kubelet's QoS tier (the parent slice of the pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Kubelet cgroup driver that produced the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub runtime: Runtime,
    pub id: String,
}

/// The owner of a cgroup as read from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathIdentity {
    /// A Kubernetes pod's cgroup, or one of its containers (or a cgroup
    /// below a container, which belongs to the container). `container` is
    /// None for the pod's own cgroup and for CRI-O's conmon scope, which is
    /// the runtime's monitor, not a workload.
    Pod {
        driver: Driver,
        qos: Qos,
        uid: String,
        container: Option<ContainerRef>,
    },
    /// A container outside Kubernetes (docker, podman, nerdctl, ctr).
    /// `group` is the docker/containerd grouping ("docker", a containerd
    /// namespace, the systemd slice).
    Container {
        group: String,
        container: ContainerRef,
    },
    /// A systemd unit (the deepest .service or .scope) in its slice.
    Unit { slice: String, unit: String },
    /// Any other cgroup directory.
    Other,
}

/// Parses a path relative to the cgroup v2 mount ("/kubepods.slice/...").
/// The kubelet layout is found anywhere in the path, so kubelets with a
/// --cgroup-root (kind, nested setups) and test trees parse the same.
pub fn parse(path: &str) -> PathIdentity {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segs.iter().enumerate() {
        if let Some((driver, qos, uid)) = pod_segment(seg, segs[..i].last().copied()) {
            let container = segs.get(i + 1).and_then(|c| container_segment(c));
            return PathIdentity::Pod {
                driver,
                qos,
                uid,
                container: container.flatten(),
            };
        }
    }
    if let Some(id) = standalone_container(&segs) {
        return id;
    }
    unit(&segs).unwrap_or(PathIdentity::Other)
}

/// `kubepods[-<qos>]-pod<uid>.slice` (systemd driver, '-' in the uid
/// escaped as '_') or `pod<uid>` below `kubepods`, `besteffort` or
/// `burstable` (cgroupfs driver).
fn pod_segment(seg: &str, parent: Option<&str>) -> Option<(Driver, Qos, String)> {
    if let Some(stem) = seg.strip_suffix(".slice") {
        let (left, uid) = stem.rsplit_once("-pod")?;
        let qos = if left.ends_with("kubepods-besteffort") {
            Qos::BestEffort
        } else if left.ends_with("kubepods-burstable") {
            Qos::Burstable
        } else if left.ends_with("kubepods") {
            Qos::Guaranteed
        } else {
            return None;
        };
        let uid = uid.replace('_', "-");
        return is_uid(&uid).then_some((Driver::Systemd, qos, uid));
    }
    let uid = seg.strip_prefix("pod")?;
    let qos = match parent? {
        "kubepods" => Qos::Guaranteed,
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        _ => return None,
    };
    is_uid(uid).then(|| (Driver::Cgroupfs, qos, uid.to_owned()))
}

/// A pod uid as kubelet names cgroups: the API uid (36 characters, RFC
/// 4122 text form) or, for static pods, the 32-hex-digit hash of the
/// manifest (the mirror pod carries it in `kubernetes.io/config.mirror`).
fn is_uid(s: &str) -> bool {
    let uuid = s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    uuid || (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A container id: lowercase hex; runtimes use 64 characters, and the
/// prefixed forms are unambiguous enough to accept 12 and more.
fn is_container_id(s: &str, min: usize) -> bool {
    s.len() >= min && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The segment below a pod. Some(None): a runtime cgroup that is not a
/// container (conmon). None: not recognised (treated as pod-level).
fn container_segment(seg: &str) -> Option<Option<ContainerRef>> {
    let stem = seg.strip_suffix(".scope").unwrap_or(seg);
    if stem.starts_with("crio-conmon-") {
        return Some(None);
    }
    let prefixed = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in prefixed {
        if let Some(id) = stem.strip_prefix(prefix)
            && is_container_id(id, 12)
        {
            return Some(Some(ContainerRef {
                runtime,
                id: id.to_owned(),
            }));
        }
    }
    is_container_id(seg, 64).then(|| {
        Some(ContainerRef {
            runtime: Runtime::Unknown,
            id: seg.to_owned(),
        })
    })
}

/// docker-<id>.scope, libpod-<id>.scope, nerdctl-<id>.scope (systemd);
/// /docker/<id> and /<containerd namespace>/<id> (cgroupfs). The first
/// match from the top wins: cgroups inside a container belong to it.
fn standalone_container(segs: &[&str]) -> Option<PathIdentity> {
    for (i, seg) in segs.iter().enumerate() {
        if let Some(stem) = seg.strip_suffix(".scope") {
            for (prefix, runtime) in [
                ("docker-", Runtime::Docker),
                ("libpod-", Runtime::Podman),
                ("nerdctl-", Runtime::Containerd),
                ("cri-containerd-", Runtime::Containerd),
            ] {
                if let Some(id) = stem.strip_prefix(prefix)
                    && is_container_id(id, 12)
                {
                    let group = if i == 0 { "/" } else { segs[i - 1] };
                    return Some(PathIdentity::Container {
                        group: group.to_owned(),
                        container: ContainerRef {
                            runtime,
                            id: id.to_owned(),
                        },
                    });
                }
            }
        }
        if i > 0 && is_container_id(seg, 64) && !segs[i - 1].ends_with(".slice") {
            let group = segs[i - 1];
            let runtime = if group == "docker" {
                Runtime::Docker
            } else {
                Runtime::Containerd
            };
            return Some(PathIdentity::Container {
                group: group.to_owned(),
                container: ContainerRef {
                    runtime,
                    id: (*seg).to_owned(),
                },
            });
        }
    }
    None
}

/// The deepest systemd .service/.scope and the nearest slice above it:
/// user@1000.service/app.slice/dbus.service is dbus.service in app.slice.
fn unit(segs: &[&str]) -> Option<PathIdentity> {
    let i = segs
        .iter()
        .rposition(|s| s.ends_with(".service") || s.ends_with(".scope"))?;
    let slice = segs[..i]
        .iter()
        .rev()
        .find(|s| s.ends_with(".slice"))
        .copied()
        .unwrap_or("-.slice");
    Some(PathIdentity::Unit {
        slice: slice.to_owned(),
        unit: segs[i].to_owned(),
    })
}

#[cfg(test)]
mod tests;
