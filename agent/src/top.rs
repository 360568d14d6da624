//! `tollgate top`: cgroups sorted by egress rate. Reads the running agent's
//! snapshot over its local socket; without an agent it reads the pinned
//! maps itself (rates from its own passes, no connection events, which
//! the agent consumes).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crossterm::{
    cursor, event, execute,
    terminal::{self, ClearType},
};

use crate::{
    api, cgroupfs,
    collect::{CgroupRow, Collector, Snapshot},
    ebpf::PinDir,
    inventory::{
        Inventory,
        classes::{ClassConfig, Classifier},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "no agent answers at {socket} ({agent}) and the pinned maps cannot be read ({pins}): start the agent with `tollgate run`"
    )]
    NoSource {
        socket: PathBuf,
        agent: String,
        pins: String,
    },
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// How long `top` waits for an agent that answers but has not finished its
/// first collection pass (a pass takes at most a tick).
const AGENT_START_WAIT: Duration = Duration::from_secs(10);

/// Where snapshots come from.
enum Source {
    Agent(PathBuf),
    Pins(Box<Collector>),
}

impl Source {
    fn open(
        socket: &Path,
        pins: &PinDir,
        classes: &ClassConfig,
        mountinfo: &Path,
    ) -> Result<Self, TopError> {
        // An agent that answers but has not finished its first collection
        // pass (503) is starting: wait for it rather than read the pins
        // behind its back (that view lacks the agent's identities and
        // storage status).
        let started = std::time::Instant::now();
        let agent_err = loop {
            match api::fetch_snapshot(socket) {
                Ok(_) => return Ok(Self::Agent(socket.to_owned())),
                Err(api::ClientError::Status(..)) if started.elapsed() < AGENT_START_WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => break e.to_string(),
            }
        };
        // Without the agent: identities from cgroup paths only (the agent
        // holds the Kubernetes watch).
        let inventory = cgroupfs::cgroup2_mount()
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let c = Classifier::new(classes).map_err(|e| e.to_string())?;
                Ok(Inventory::new(m, std::time::Duration::from_secs(60), c))
            });
        let pins_err = match inventory.and_then(|inv| {
            Collector::open(pins, inv, mountinfo.to_owned()).map_err(|e| e.to_string())
        }) {
            Ok(c) => return Ok(Self::Pins(Box::new(c))),
            Err(e) => e,
        };
        Err(TopError::NoSource {
            socket: socket.to_owned(),
            agent: agent_err,
            pins: pins_err,
        })
    }

    fn next(&mut self) -> Result<Snapshot, String> {
        match self {
            Self::Agent(s) => api::fetch_snapshot(s).map_err(|e| e.to_string()),
            Self::Pins(c) => c.tick().map_err(|e| e.to_string()),
        }
    }
}

pub struct TopOptions {
    pub socket: PathBuf,
    pub pins: PinDir,
    pub once: bool,
    pub json: bool,
    pub interval: Duration,
    /// Classes for the no-agent fallback.
    pub classes: ClassConfig,
    /// Mount table for naming storage devices without an agent.
    pub mountinfo: PathBuf,
}

pub fn run(opts: &TopOptions) -> Result<(), TopError> {
    let mut src = Source::open(&opts.socket, &opts.pins, &opts.classes, &opts.mountinfo)?;
    if opts.once {
        if let Source::Pins(c) = &mut src {
            // Two passes a moment apart give rates.
            let _ = c.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
        let snap = src.next().map_err(std::io::Error::other)?;
        if opts.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&snap).map_err(std::io::Error::other)?
            );
        } else {
            print!("{}", render(&snap, usize::MAX, 200));
        }
        return Ok(());
    }
    live(&mut src, opts.interval)
}

fn live(src: &mut Source, interval: Duration) -> Result<(), TopError> {
    let mut out = std::io::stdout();
    terminal::enable_raw_mode()?;
    execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
    let res = (|| -> Result<(), TopError> {
        loop {
            let (w, h) = terminal::size().unwrap_or((120, 40));
            let text = match src.next() {
                Ok(s) => render(&s, h.saturating_sub(4) as usize, w as usize),
                Err(e) => format!("error: {e}\n"),
            };
            execute!(out, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))?;
            for line in text.lines() {
                write!(out, "{line}\r\n")?;
            }
            write!(out, "\r\nq or Ctrl-C to quit")?;
            out.flush()?;
            if event::poll(interval)?
                && let event::Event::Key(k) = event::read()?
                && (k.code == event::KeyCode::Char('q')
                    || (k.code == event::KeyCode::Char('c')
                        && k.modifiers.contains(event::KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
        }
    })();
    execute!(out, cursor::Show, terminal::LeaveAlternateScreen)?;
    terminal::disable_raw_mode()?;
    res
}

/// Human-readable rate.
pub fn human(bytes_per_s: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes_per_s;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// (namespace, workload, class) columns: names when the inventory knows
/// them, the cgroup path otherwise.
pub fn names(r: &CgroupRow) -> (String, String, String) {
    let path = || {
        r.path
            .clone()
            .unwrap_or_else(|| format!("id {}", r.cgroup_id))
    };
    let ns = r.namespace.clone().unwrap_or_else(|| "-".into());
    let mut who = match (&r.pod, &r.pod_uid) {
        (Some(p), _) => p.clone(),
        // A pod the API has not named (yet, or no API): its uid, cut to
        // what fits next to the container (JSON has the whole uid).
        (None, Some(uid)) => format!("pod {}", &uid[..uid.len().min(8)]),
        (None, None) => path(),
    };
    if r.kind.as_deref() == Some("container")
        && r.pod_uid.is_some()
        && let Some(c) = &r.container
    {
        who = format!("{who}/{c}");
    }
    if r.gone {
        who = format!("{who} (gone)");
    }
    let class = r.class.clone().unwrap_or_else(|| "-".into());
    (ns, who, class)
}

fn row_line(r: &CgroupRow, width: usize) -> String {
    let (ns, who, class) = names(r);
    let dests: Vec<String> = r
        .destinations
        .iter()
        .take(3)
        .map(|d| format!("{}:{}/{}", d.addr, d.port, d.proto))
        .collect();
    let line = format!(
        "{:<16} {:<40} {:<10} {:>10} {:>10} {:>10} {:>7.1} {:>10} {:>10} {:>10} {:>8} {}",
        truncate(&ns, 16),
        truncate(&who, 40),
        truncate(&class, 10),
        human(r.rates.egress_internal_bytes),
        human(r.rates.egress_external_bytes),
        human(r.rates.ingress_bytes),
        r.rates.connects,
        human(r.egress.total_bytes() as f64),
        human(r.storage_written_bytes as f64),
        human(r.storage_read_bytes as f64),
        r.out_per_storage_read
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into()),
        dests.join(" ")
    );
    truncate(&line, width)
}

/// The storage section: one line per (cgroup, mount) with reads or
/// writes, then the watched mounts.
fn storage_lines(s: &Snapshot, rows: usize, width: usize) -> String {
    let mut out = format!("\nstorage: {}\n", s.storage.status);
    let mut n = 0;
    for r in &s.cgroups {
        for u in &r.storage {
            if n == rows {
                break;
            }
            n += 1;
            let path = r
                .path
                .clone()
                .unwrap_or_else(|| format!("(gone) id {}", r.cgroup_id));
            let line = format!(
                "  {:<38} {:<30} {:>10} written ({} calls) {:>10} read ({} calls)",
                truncate(&path, 38),
                truncate(
                    &format!(
                        "{} ({})",
                        u.mount_point.as_deref().unwrap_or(&u.dev),
                        u.fstype.as_deref().unwrap_or("?")
                    ),
                    30
                ),
                human(u.written.bytes as f64),
                u.written.calls,
                human(u.read.bytes as f64),
                u.read.calls,
            );
            out.push_str(&truncate(&line, width));
            out.push('\n');
        }
    }
    let mounts: Vec<String> = s
        .storage
        .mounts
        .iter()
        .map(|m| format!("{} ({}, {})", m.mount_point, m.fstype, m.dev))
        .collect();
    out.push_str(&truncate(
        &format!(
            "  watched: {}\n",
            if mounts.is_empty() {
                "none".into()
            } else {
                mounts.join(", ")
            }
        ),
        width,
    ));
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        // Keep the end of paths: the leaf names the pod or container.
        let tail: String = s
            .chars()
            .rev()
            .take(n.saturating_sub(1))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// The table: header, then up to `rows` cgroups.
pub fn render(s: &Snapshot, rows: usize, width: usize) -> String {
    let mut out = format!(
        "{:<16} {:<40} {:<10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>8} {}\n",
        "NAMESPACE",
        "POD / WORKLOAD",
        "CLASS",
        "OUT/s INT",
        "OUT/s EXT",
        "IN/s",
        "CONN/s",
        "OUT TOTAL",
        "ST WRITTEN",
        "ST READ",
        "OUT/READ",
        "TOP DESTINATIONS"
    );
    for r in s.cgroups.iter().take(rows) {
        out.push_str(&row_line(r, width));
        out.push('\n');
    }
    out.push_str(&storage_lines(s, rows, width));
    let drops = s.counters.get("ringbuf_drops").copied().unwrap_or(0);
    let full = s.counters.get("cgroup_stats_full").copied().unwrap_or(0);
    let evicted = s.counters.get("flow_evictions").copied().unwrap_or(0);
    out.push_str(&format!(
        "{} cgroups, drain {}, event drops {drops}, cgroup map overflows {full}, flow evictions {evicted}\n",
        s.cgroups.len(),
        s.drain_mode
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::collect::Snapshot;

    /// An agent that answers 503 (no collection pass yet) is waited for,
    /// not bypassed for the pins: `top` takes its first snapshot.
    #[test]
    fn waits_for_an_agent_that_is_starting() {
        let dir = std::env::temp_dir().join(format!("tollgate-top-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(None);
        rt.spawn(api::serve(socket.clone(), rx));
        // Serving, but without a snapshot for the first 300 ms.
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(Some(Arc::new(Snapshot::empty(SystemTime::now()))));
            // Keep the sender (and so the snapshot) alive.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        // Until the socket exists, `top` would rightly fall back.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            matches!(
                api::fetch_snapshot(&socket),
                Err(api::ClientError::Status(..))
            ),
            "the agent answers 503 at first"
        );
        let pins = PinDir::new(dir.join("no-pins"));
        let src = Source::open(
            &socket,
            &pins,
            &ClassConfig::default(),
            Path::new("/nonexistent"),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(src, Ok(Source::Agent(_))),
            "top reads the agent once it has a snapshot"
        );
    }
}
