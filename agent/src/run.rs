//! `tollgate run`: load and attach the programs, then collect every tick
//! and serve the local API until SIGINT/SIGTERM. Links and maps stay pinned
//! on exit, so the kernel keeps counting (and, later, enforcing) while the
//! agent restarts; `tollgate detach` removes them.

use std::{path::PathBuf, sync::Arc};

use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    api,
    cgroupfs::{self, CgroupError},
    collect::Collector,
    config::Config,
    control::{
        self,
        service::{QuarantineService, SharedService},
    },
    ebpf::{Dataplane, DataplaneError, LoadOptions, PinDir, StorageStatus},
    inventory::{
        Inventory, Mode,
        classes::{ClassError, Classifier},
        kube::{self, ExpBackoff, KubeError},
    },
    metrics::{self, Capacity, Metrics},
    quarantine::Quarantine,
    respond::{auto::AutoQuarantine, kube::PodEvents},
    storage::{Mount, WatchRules},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("local API socket {0}: {1}")]
    Api(PathBuf, #[source] std::io::Error),
    #[error(
        "cannot listen on {0} for metrics: {1}; pick a free address with --metrics-addr or agent.metrics_addr"
    )]
    Metrics(std::net::SocketAddr, #[source] std::io::Error),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Classes(#[from] ClassError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Alerts(#[from] crate::respond::alerts::ClientError),
    #[error(transparent)]
    Caps(#[from] crate::caps::CapsError),
    #[error(transparent)]
    Enforce(#[from] crate::enforce::EnforceError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
}

/// Options of `tollgate run` beyond the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub socket: PathBuf,
}

pub async fn run(mut cfg: Config, opts: RunOptions) -> Result<(), RunError> {
    crate::caps::check()?;
    let mount = cgroupfs::cgroup2_mount()?;
    let pins = PinDir::new(&cfg.agent.pin_dir);
    cfg.kernel.log();
    if cfg.kernel.disabled(crate::kernel::ProgramType::SchedCls) {
        cfg.tc.enabled = false;
    }
    let mut dp = Dataplane::load_with(&LoadOptions::from_config(&cfg, pins.clone()), &cfg.kernel)?;
    let target = mount.join(&cfg.agent.attach_cgroup);
    dp.attach(&target)?;
    let mut inventory = Inventory::new(
        mount.clone(),
        cfg.inventory.grace,
        Classifier::new(&cfg.classes)?,
    );
    let mut health = crate::health::Health {
        node: node_name(),
        ..Default::default()
    };
    let mut cluster_state = None;
    let kubernetes = match start_kubernetes(&cfg).await {
        Ok(Some(cluster)) => {
            health.cluster = Some(cluster.clone());
            inventory.set_cluster(cluster.clone());
            cluster_state = Some(cluster);
            true
        }
        Ok(None) => false,
        Err(e) if cfg.inventory.mode == Mode::Kubernetes => return Err(e.into()),
        Err(e) => {
            tracing::info!(reason = %e, "no Kubernetes found; standalone mode (identities from cgroup paths)");
            false
        }
    };
    let quarantine = match Quarantine::open(&pins, mount.clone(), &cfg.agent.state_dir) {
        Ok(mut q) => {
            q.set_host_netns(cfg.tc.host());
            if let Err(e) = q.reconcile() {
                tracing::warn!(error = %e, "reconciling quarantines failed; kernel entries stay in force");
            }
            Some(q)
        }
        Err(e) => {
            tracing::warn!(error = %e, "quarantine state unavailable; pinned quarantines stay in force");
            None
        }
    };
    let mut enforcer = crate::enforce::Enforcer::new(&cfg, &pins, mount.clone())?;
    let (svc, mut auto) = start_control(&cfg, quarantine, mount.clone(), cluster_state).await?;
    let mut collector = Collector::open(&pins, inventory, cfg.storage.mountinfo.clone())?;
    collector.delete_forgotten(true);
    let rules = WatchRules::new(&cfg.storage.watch_fstypes, &cfg.storage.watch_paths);
    if dp.storage == StorageStatus::Active {
        // Fill the device filter before the hooks run.
        let _ = collector.tick();
        sync_storage(&mut dp, &rules, collector.mounts());
        if let Err(e) = dp.attach_storage() {
            tracing::warn!(error = %e, "storage accounting unavailable: attaching the raw tracepoints failed");
            dp.storage = StorageStatus::Unavailable(format!("attaching raw tracepoints: {e}"));
        }
    }
    dp.detach_stale_storage();
    collector.set_storage_status(dp.storage.to_string());
    tracing::info!(
        mode = if kubernetes { "kubernetes" } else { "standalone" },
        cgroup_root = %target.display(),
        pins = %pins.versioned().display(),
        tick = ?cfg.agent.tick,
        drain = ?collector.mode(),
        storage = %dp.storage,
        tc = ?enforcer.tc_mode(),
        socket = %opts.socket.display(),
        "tollgate running"
    );

    let (tx, rx) = watch::channel(None);
    let socket = opts.socket.clone();
    let metrics_addr = cfg.agent.metrics_addr;
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| RunError::Metrics(metrics_addr, e))?;
    let mut metrics = Metrics::new(
        rx.clone(),
        node_name(),
        cfg.metrics.max_series,
        Capacity {
            cgroup_stats: cfg.maps.cgroup_stats_entries,
            flows: cfg.maps.flow_entries,
        },
    );
    metrics
        .registry_mut()
        .register_collector(Box::new(health.clone()));
    // Held for the agent's lifetime: statistics stay on while it runs.
    let _program_stats = health.enable_program_stats(cfg.metrics.program_stats);
    let mut responders = crate::respond::Responders::start(&cfg, &mut metrics, &node_name())?;
    let metrics = Arc::new(metrics);
    tracing::info!(addr = %listener.local_addr().unwrap_or(metrics_addr), "serving /metrics");
    let mut metrics_server = tokio::spawn(metrics::serve(listener, metrics.clone()));
    let (mut detection, findings_rx) = if cfg.detect.enabled {
        let (live, frx) = crate::detect::live::Live::new(
            &cfg.detect,
            &cfg.agent.state_dir,
            mount.clone(),
            cfg.cidr_table(),
        );
        (Some(live), frx)
    } else {
        (None, tokio::sync::watch::channel(Arc::new(Vec::new())).1)
    };
    let mut server = tokio::spawn(api::serve_with_findings(socket.clone(), rx, findings_rx));

    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut trimmer = crate::memory::Trimmer::default();
    let mut tick = tokio::time::interval(cfg.agent.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let started = std::time::Instant::now();
                if let Some(s) = &svc {
                    s.expire();
                }
                let res = collector.tick();
                if dp.storage == StorageStatus::Active {
                    sync_storage(&mut dp, &rules, collector.mounts());
                }
                match res {
                    Ok(mut snap) => {
                        match &svc {
                            Some(s) => s.with(|q| enforcer.tick(&mut dp, &mut snap, Some(q))),
                            None => enforcer.tick(&mut dp, &mut snap, None),
                        }
                        metrics.observe_tick(started.elapsed(), snap.cgroups.len());
                        if health.stats_enabled() {
                            *health.programs.lock().expect("lock") = dp.program_stats();
                        }
                        let records = svc.as_ref().map(|s| s.list());
                        responders.tick(
                            records.as_deref(),
                            &snap,
                            std::time::SystemTime::now(),
                        );
                        tracing::debug!(
                            cgroups = snap.cgroups.len(),
                            events = snap.events.len(),
                            took_us = started.elapsed().as_micros() as u64,
                            "tick"
                        );
                        if let Some(d) = detection.as_mut() {
                            for f in d.tick(&snap) {
                                crate::respond::Responder::on_finding(&mut responders, &f);
                                if let Some(a) = auto.as_mut() {
                                    crate::respond::Responder::on_finding(a, &f);
                                }
                            }
                        }
                        let live = snap.cgroups.len();
                        tx.send_replace(Some(Arc::new(snap)));
                        if trimmer.observe(live) {
                            tracing::debug!(cgroups = live, "returned freed memory after pod churn");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "collection pass failed; retrying next tick"),
                }
            }
            res = &mut server => {
                let err = match res {
                    Ok(Ok(())) => std::io::Error::other("server stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => std::io::Error::other(e.to_string()),
                };
                return Err(RunError::Api(socket, err));
            }
            res = &mut metrics_server => {
                let err = match res {
                    Ok(Ok(())) => std::io::Error::other("server stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => std::io::Error::other(e.to_string()),
                };
                return Err(RunError::Metrics(metrics_addr, err));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; programs stay attached through their pinned links");
    if let Some(d) = detection.as_mut() {
        d.save();
    }
    let _ = std::fs::remove_file(&socket);
    drop(dp);
    Ok(())
}

/// This node's name: NODE_NAME (set from the downward API in the
/// DaemonSet), else the host name.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Keeps the kernel's device filter equal to the watched mounts' devices.
fn sync_storage(dp: &mut Dataplane, rules: &WatchRules, mounts: &[Mount]) {
    let watched = rules.watched(mounts);
    let devs = watched.iter().map(|(d, m)| (*d, m.id)).collect();
    match dp.set_storage_devs(&devs) {
        Ok((0, 0)) => {}
        Ok((added, removed)) => {
            for m in watched.values() {
                tracing::debug!(dev = %m.dev_string(), mount = %m.mount_point.display(), fstype = %m.fstype, "watched");
            }
            tracing::info!(
                added,
                removed,
                watched = watched.len(),
                "storage device filter updated"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "updating the storage device filter failed; retrying next tick")
        }
    }
}

/// Starts the pod and namespace watches unless the config or the
/// environment says standalone. Ok(None): standalone by choice.
async fn start_kubernetes(cfg: &Config) -> Result<Option<kube::SharedCluster>, KubeError> {
    if cfg.inventory.mode == Mode::Standalone {
        return Ok(None);
    }
    let node = if cfg.inventory.node_name.is_empty() {
        std::env::var("NODE_NAME").unwrap_or_default()
    } else {
        cfg.inventory.node_name.clone()
    };
    if node.is_empty() {
        return Err(KubeError::NoNodeName);
    }
    let client = kube::infer_client().await?;
    let cluster = kube::SharedCluster::default();
    kube::spawn_watches(client, node.clone(), cluster.clone(), ExpBackoff::default());
    tracing::info!(node = %node, "watching this node's pods");
    Ok(Some(cluster))
}

/// The quarantine service, its control API and the auto-quarantine
/// responder (fed with findings by the run loop once detection runs).
async fn start_control(
    cfg: &Config,
    quarantine: Option<Quarantine>,
    mount: PathBuf,
    cluster: Option<kube::SharedCluster>,
) -> Result<(Option<SharedService>, Option<AutoQuarantine>), RunError> {
    let Some(q) = quarantine else {
        tracing::warn!("control API and auto-quarantine off: the quarantine state is unavailable");
        return Ok((None, None));
    };
    // A second client for writes and reviews; the watches own theirs.
    let client = match &cluster {
        Some(_) => match kube::infer_client().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes client for pod labels, Events and token reviews");
                None
            }
        },
        None => None,
    };
    let node = if cfg.inventory.node_name.is_empty() {
        node_name()
    } else {
        cfg.inventory.node_name.clone()
    };
    let events = client.clone().map(|c| PodEvents::spawn(c, node));
    let svc = Arc::new(QuarantineService::new(q, mount, cluster, events));
    let auto = AutoQuarantine::spawn(cfg.auto_quarantine.clone(), svc.clone());
    if cfg.control.enabled {
        let review = client.filter(|_| cfg.control.kubernetes_auth);
        let kube_auth = review.is_some();
        let bound = control::start(&cfg.control, &cfg.agent.state_dir, svc.clone(), review).await?;
        tracing::info!(addr = %bound.addr, url = %bound.url, kubernetes_auth = kube_auth, "serving the control API");
        tokio::spawn(async move {
            if let Err(e) = control::serve(bound).await {
                tracing::error!(error = %e, "control API stopped");
            }
        });
    }
    Ok((Some(svc), Some(auto)))
}
