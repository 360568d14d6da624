use super::*;

fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

#[test]
fn pruned_pod_keeps_what_tollgate_needs() {
    let p = pod(serde_json::json!({
        "metadata": {
            "name": "train-0", "namespace": "ml", "uid": "aaaaaaaa-0000-4000-8000-000000000001",
            "labels": {"app": "t"},
            "annotations": {"big": "x".repeat(4096)},
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                "name": "train", "uid": "u", "controller": true}]
        },
        "spec": {"hostNetwork": true, "containers": [{"name": "main"}]},
        "status": {
            "podIPs": [{"ip": "198.18.0.11"}, {"ip": "2001:db8:c::11"}, {"ip": "bogus"}],
            "initContainerStatuses": [{"name": "init", "containerID": "cri-o://0a0a",
                "image": "i", "imageID": "i", "ready": false, "restartCount": 0}],
            "containerStatuses": [{"name": "main", "containerID": "containerd://a1a1",
                "image": "i", "imageID": "i", "ready": true, "restartCount": 0},
                {"name": "waiting", "image": "i", "imageID": "i", "ready": false, "restartCount": 0}]
        }
    }));
    let info = PodInfo::from_pod(&p).unwrap();
    assert_eq!(info.uid, "aaaaaaaa-0000-4000-8000-000000000001");
    assert_eq!(
        (info.namespace.as_str(), info.name.as_str()),
        ("ml", "train-0")
    );
    assert!(info.host_network);
    assert_eq!(info.pod_ips.len(), 2);
    assert_eq!(info.owners[0].kind, "PyTorchJob");
    assert!(info.owners[0].controller);
    assert_eq!(info.container("a1a1").unwrap().name, "main");
    assert_eq!(info.container("a1a1").unwrap().runtime, Runtime::Containerd);
    assert_eq!(info.container("0a0a").unwrap().runtime, Runtime::Crio);
    // A container that has not started has no id and no cgroup yet.
    assert_eq!(info.containers.len(), 2);
    assert!(PodInfo::from_pod(&Pod::default()).is_none());
}

#[test]
fn static_pod_is_keyed_by_its_manifest_hash() {
    let p = pod(serde_json::json!({
        "metadata": {
            "name": "kube-apiserver-node-1", "namespace": "kube-system",
            "uid": "bbbbbbbb-0000-4000-8000-000000000002",
            "annotations": {"kubernetes.io/config.mirror": "2b6a1d4bc3c3f8c1f1e2e5e1c1f2a3b4"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "n"}]
        }
    }));
    let info = PodInfo::from_pod(&p).unwrap();
    assert_eq!(info.uid, "2b6a1d4bc3c3f8c1f1e2e5e1c1f2a3b4");
    assert_eq!(info.api_uid, "bbbbbbbb-0000-4000-8000-000000000002");
}

#[test]
fn backoff_doubles_to_the_cap_and_resets() {
    let mut b = ExpBackoff::new(Duration::from_millis(100), Duration::from_millis(350));
    let v: Vec<u128> = (0..4).map(|_| b.next().unwrap().as_millis()).collect();
    assert_eq!(v, [100, 200, 350, 350]);
    b.reset();
    assert_eq!(b.next(), Some(Duration::from_millis(100)));
}
