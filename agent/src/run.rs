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
    ebpf::{Dataplane, DataplaneError, LoadOptions, PinDir},
    inventory::{
        Inventory, Mode,
        classes::{ClassError, Classifier},
        kube::{self, ExpBackoff, KubeError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("local API socket {0}: {1}")]
    Api(PathBuf, #[source] std::io::Error),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Classes(#[from] ClassError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// Options of `tollgate run` beyond the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub socket: PathBuf,
}

pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), RunError> {
    let mount = cgroupfs::cgroup2_mount()?;
    let pins = PinDir::new(&cfg.agent.pin_dir);
    let mut dp = Dataplane::load(&LoadOptions {
        pins: pins.clone(),
        maps: cfg.maps.clone(),
        cidrs: cfg.cidr_table(),
    })?;
    let target = mount.join(&cfg.agent.attach_cgroup);
    dp.attach(&target)?;
    let mut inventory = Inventory::new(
        mount.clone(),
        cfg.inventory.grace,
        Classifier::new(&cfg.classes)?,
    );
    let kubernetes = match start_kubernetes(&cfg).await {
        Ok(Some(cluster)) => {
            inventory.set_cluster(cluster);
            true
        }
        Ok(None) => false,
        Err(e) if cfg.inventory.mode == Mode::Kubernetes => return Err(e.into()),
        Err(e) => {
            tracing::info!(reason = %e, "no Kubernetes found; standalone mode (identities from cgroup paths)");
            false
        }
    };
    let mut collector = Collector::open(&pins, inventory)?;
    collector.delete_forgotten(true);
    tracing::info!(
        mode = if kubernetes { "kubernetes" } else { "standalone" },
        cgroup_root = %target.display(),
        pins = %pins.versioned().display(),
        tick = ?cfg.agent.tick,
        drain = ?collector.mode(),
        socket = %opts.socket.display(),
        "tollgate running"
    );

    let (tx, rx) = watch::channel(None);
    let socket = opts.socket.clone();
    let mut server = tokio::spawn(api::serve(socket.clone(), rx));

    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut tick = tokio::time::interval(cfg.agent.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let started = std::time::Instant::now();
                match collector.tick() {
                    Ok(snap) => {
                        tracing::debug!(
                            cgroups = snap.cgroups.len(),
                            events = snap.events.len(),
                            took_us = started.elapsed().as_micros() as u64,
                            "tick"
                        );
                        tx.send_replace(Some(Arc::new(snap)));
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
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; programs stay attached through their pinned links");
    let _ = std::fs::remove_file(&socket);
    drop(dp);
    Ok(())
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
