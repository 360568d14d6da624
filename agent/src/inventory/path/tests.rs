use super::*;

const C1: &str = "8f1c2e0f4a1b49d3b7c2a51e9d0c6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e";
const C2: &str = "0a9b8c7d6e5f40312233445566778899aabbccddeeff00112233445566778899";
const P1: &str = "5b3e8a2c-1f4d-4e6a-9b7c-0d2e4f6a8b1c";
const P2: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const P3: &str = "77aa88bb-99cc-4dde-8eef-f00112233445";

/// One line per identity, for whole-tree comparisons.
fn summary(id: &PathIdentity) -> String {
    let c = |c: &Option<ContainerRef>| match c {
        Some(c) => format!("{} {}", c.runtime.name(), &c.id[..8]),
        None => "-".into(),
    };
    match id {
        PathIdentity::Pod {
            driver,
            qos,
            uid,
            container,
        } => format!("pod {driver:?} {qos:?} {} {}", &uid[..8], c(container)),
        PathIdentity::Container { group, container } => {
            format!("container {group} {}", c(&Some(container.clone())))
        }
        PathIdentity::Unit { slice, unit } => format!("unit {slice} {unit}"),
        PathIdentity::Other => "other".into(),
    }
}

/// Parses every path of a tree file and returns "path => summary" lines.
fn parse_tree(tree: &str) -> Vec<String> {
    tree.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|p| {
            let short = p.replace(C1, "C1").replace(C2, "C2");
            let short = short
                .replace(P1, "P1")
                .replace(&P1.replace('-', "_"), "P1")
                .replace(P2, "P2")
                .replace(&P2.replace('-', "_"), "P2")
                .replace(P3, "P3")
                .replace(&P3.replace('-', "_"), "P3");
            format!("{short} => {}", summary(&parse(p)))
        })
        .collect()
}

fn check(tree: &str, expected: &[&str]) {
    let got = parse_tree(tree);
    for e in expected {
        assert!(
            got.iter().any(|g| g == e),
            "missing {e:?} in\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn systemd_driver_containerd() {
    check(
        include_str!("../testdata/systemd-containerd.txt"),
        &[
            "/ => other",
            "/init.scope => unit -.slice init.scope",
            "/system.slice/kubelet.service => unit system.slice kubelet.service",
            "/user.slice/user-1000.slice/session-3.scope => unit user-1000.slice session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service => unit app.slice dbus.service",
            "/kubepods.slice => other",
            "/kubepods.slice/kubepods-besteffort.slice => other",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podP1.slice => pod Systemd BestEffort 5b3e8a2c -",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podP1.slice/cri-containerd-C1.scope => pod Systemd BestEffort 5b3e8a2c containerd 8f1c2e0f",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podP1.slice/cri-containerd-C2.scope => pod Systemd BestEffort 5b3e8a2c containerd 0a9b8c7d",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podP2.slice/cri-containerd-C1.scope => pod Systemd Burstable c0ffee00 containerd 8f1c2e0f",
            "/kubepods.slice/kubepods-podP3.slice => pod Systemd Guaranteed 77aa88bb -",
            "/kubepods.slice/kubepods-podP3.slice/cri-containerd-C2.scope => pod Systemd Guaranteed 77aa88bb containerd 0a9b8c7d",
        ],
    );
}

#[test]
fn systemd_driver_crio_ignores_conmon() {
    check(
        include_str!("../testdata/systemd-crio.txt"),
        &[
            "/system.slice/crio.service => unit system.slice crio.service",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podP2.slice/crio-C1.scope => pod Systemd Burstable c0ffee00 crio 8f1c2e0f",
            // CRI-O's nested cgroup namespace directory belongs to the container.
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podP2.slice/crio-C1.scope/container => pod Systemd Burstable c0ffee00 crio 8f1c2e0f",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podP2.slice/crio-conmon-C1.scope => pod Systemd Burstable c0ffee00 -",
            "/kubepods.slice/kubepods-podP3.slice/crio-C2.scope => pod Systemd Guaranteed 77aa88bb crio 0a9b8c7d",
        ],
    );
}

#[test]
fn systemd_driver_docker() {
    check(
        include_str!("../testdata/systemd-docker.txt"),
        &[
            "/system.slice/docker-C2.scope => container system.slice docker 0a9b8c7d",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podP1.slice/docker-C1.scope => pod Systemd BestEffort 5b3e8a2c docker 8f1c2e0f",
        ],
    );
}

#[test]
fn cgroupfs_driver_all_runtimes() {
    check(
        include_str!("../testdata/cgroupfs-docker.txt"),
        &[
            "/docker => other",
            "/docker/C2 => container docker docker 0a9b8c7d",
            "/kubepods => other",
            "/kubepods/besteffort => other",
            "/kubepods/besteffort/podP1 => pod Cgroupfs BestEffort 5b3e8a2c -",
            "/kubepods/besteffort/podP1/C1 => pod Cgroupfs BestEffort 5b3e8a2c unknown 8f1c2e0f",
            "/kubepods/burstable/podP2/C2 => pod Cgroupfs Burstable c0ffee00 unknown 0a9b8c7d",
            "/kubepods/podP3 => pod Cgroupfs Guaranteed 77aa88bb -",
            "/kubepods/podP3/C1 => pod Cgroupfs Guaranteed 77aa88bb unknown 8f1c2e0f",
        ],
    );
    check(
        include_str!("../testdata/cgroupfs-containerd.txt"),
        &[
            "/default/C2 => container default containerd 0a9b8c7d",
            "/kubepods/burstable/podP2/C1 => pod Cgroupfs Burstable c0ffee00 unknown 8f1c2e0f",
        ],
    );
    check(
        include_str!("../testdata/cgroupfs-crio.txt"),
        &[
            "/kubepods/besteffort/podP1/crio-C1 => pod Cgroupfs BestEffort 5b3e8a2c crio 8f1c2e0f",
            "/kubepods/besteffort/podP1/crio-conmon-C1 => pod Cgroupfs BestEffort 5b3e8a2c -",
        ],
    );
}

#[test]
fn kubelet_below_a_cgroup_root() {
    check(
        include_str!("../testdata/kind-nested.txt"),
        &[
            "/kubelet.slice/kubelet-kubepods.slice => other",
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podP1.slice/cri-containerd-C1.scope => pod Systemd BestEffort 5b3e8a2c containerd 8f1c2e0f",
        ],
    );
}

#[test]
fn standalone_host() {
    check(
        include_str!("../testdata/standalone-host.txt"),
        &[
            "/system.slice/nginx.service => unit system.slice nginx.service",
            "/system.slice/postgresql@15-main.service => unit system.slice postgresql@15-main.service",
            "/system.slice/docker-C1.scope => container system.slice docker 8f1c2e0f",
            "/system.slice/nerdctl-C2.scope => container system.slice containerd 0a9b8c7d",
            "/machine.slice/libpod-C2.scope => container machine.slice podman 0a9b8c7d",
            "/machine.slice/libpod-C2.scope/container => container machine.slice podman 0a9b8c7d",
            "/tollgate-test => other",
        ],
    );
}

#[test]
fn static_pod_hash_uid() {
    // Static pods (kube-apiserver, etcd) are named by their manifest hash.
    let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2b6a1d4bc3c3f8c1f1e2e5e1c1f2a3b4.slice";
    assert_eq!(summary(&parse(p)), "pod Systemd Burstable 2b6a1d4b -");
    let p = "/kubepods/burstable/pod2b6a1d4bc3c3f8c1f1e2e5e1c1f2a3b4";
    assert_eq!(summary(&parse(p)), "pod Cgroupfs Burstable 2b6a1d4b -");
}

#[test]
fn rejects_lookalikes() {
    // Not a uid, not hex, wrong parent: none of these is a pod or container.
    for p in [
        "/kubepods.slice/kubepods-podnotauid.slice",
        "/kubepods/burstable/podxyz",
        "/other/pod5b3e8a2c-1f4d-4e6a-9b7c-0d2e4f6a8b1c",
        "/system.slice/docker-nothex.scope",
        "/data/0a9b8c7d6e5f",
    ] {
        let got = parse(p);
        assert!(
            !matches!(
                got,
                PathIdentity::Pod { .. } | PathIdentity::Container { .. }
            ),
            "{p}: {got:?}"
        );
    }
}
