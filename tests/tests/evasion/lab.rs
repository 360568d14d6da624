//! The evasion suite's lab: a topology, the real agent with 1 s windows
//! and a short learning period, one class for the test's pods, benign
//! traffic to teach it, and the two measurements every case reports:
//! agent counters against nftables' (exact) and the findings the agent
//! serves on `GET /v1/findings`.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tollgate::{
    api,
    detect::{Detector, Finding},
};
use tollgate_tests::{
    agent::{Agent, TestPinDir, top_until},
    cmd::wait_until,
    nft::{self, Count, Peer},
    pod::Pod,
    top::CgroupRow,
    topology::Topology,
    traffic::Sink,
};

pub const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
pub const SIGNAL: &str = env!("CARGO_BIN_EXE_tg-signal");
/// Bound of every wait (traffic, learning, findings).
pub const WAIT: Duration = Duration::from_secs(90);
pub const CLASS: &str = "evasion";
/// The benign trickle's port on the internet host.
pub const TRICKLE_PORT: u16 = 9002;

/// A state directory under the temp dir, removed on drop.
pub struct StateDir(pub PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a lab needs besides its pods.
#[derive(Default)]
pub struct Options<'a> {
    /// Extra `[detect]` keys (one per line).
    pub detect: &'a str,
    /// Extra top-level TOML after `[classes]` (e.g. an egress policy).
    pub extra: &'a str,
    /// Attach the tc programs to the pods' host-side veths (in the router).
    pub tc: bool,
    /// Cgroups (relative paths) in the class besides the topology's pods.
    pub more_cgroups: Vec<String>,
    /// Windows (of 1 s) the class learns for; 0 = 5.
    pub learning_windows: u32,
}

/// Field order is drop order: the agent (and its pins) first, then the
/// network, then the state directory.
pub struct Lab {
    pub agent: Agent,
    pub pins: TestPinDir,
    pub topo: Topology,
    pub _state: StateDir,
    pub socket: PathBuf,
}

impl Lab {
    /// Builds `pods` and starts the agent with every pod in [`CLASS`].
    pub fn start(pods: &[&str], opts: Options<'_>) -> Lab {
        let mut b = Topology::builder();
        for p in pods {
            b = b.pod(p);
        }
        let topo = b.build().expect("topology");
        let pins = TestPinDir::new().expect("pin dir");
        let state = StateDir(std::env::temp_dir().join(format!(
            "tollgate-evasion-{}",
            tollgate_tests::unique_suffix()
        )));
        let mut rules = String::new();
        for path in topo
            .pods
            .iter()
            .map(|p| p.cgroup.rel_path())
            .chain(opts.more_cgroups.iter().cloned())
        {
            rules.push_str(&format!(
                "[[classes.path_rules]]\nglob = \"{path}\"\nclass = \"{CLASS}\"\n"
            ));
        }
        let tc = if opts.tc {
            format!(
                "enabled = true\nnetns = \"/run/netns/{}\"",
                topo.router.name()
            )
        } else {
            "enabled = false".into()
        };
        let config = format!(
            r#"
[agent]
tick = "200ms"
metrics_addr = "127.0.0.1:0"
state_dir = "{state}"
[network]
internal_cidrs = ["198.18.0.0/16", "2001:db8:c::/48"]
[inventory]
mode = "standalone"
[tc]
{tc}
[classes]
names = ["{CLASS}"]
{rules}
{extra}
[detect]
window = "1s"
learning_windows = {learn}
learning_duration = "{learn}s"
save_interval = "1m"
resolve_after = 60
{detect}
"#,
            state = state.0.display(),
            extra = opts.extra,
            detect = opts.detect,
            learn = if opts.learning_windows == 0 {
                5
            } else {
                opts.learning_windows
            },
        );
        let agent = Agent::start(pins.path(), &config)
            .unwrap_or_else(|e| panic!("agent starts: {e}\nconfig:\n{config}"));
        let socket = api::default_socket(pins.path());
        Lab {
            agent,
            pins,
            topo,
            _state: state,
            socket,
        }
    }

    pub fn pod(&self, i: usize) -> &Pod {
        self.topo.pod(i)
    }

    /// The internet host's address of the family asked for.
    pub fn net(&self, v6: bool) -> IpAddr {
        let h = self.topo.internet();
        if v6 {
            IpAddr::V6(h.v6)
        } else {
            IpAddr::V4(h.v4)
        }
    }

    /// Benign traffic from `pod` (100-byte datagrams every 100 ms to the
    /// internet host's [`TRICKLE_PORT`]) until the class has learned; the
    /// trickle is stopped before returning, so the attack that follows is
    /// the pod's only traffic.
    pub fn learn(&self, pod: &Pod, v6: bool) {
        self.learn_from(pod.cgroup.id(), v6, |argv| pod.command(argv));
    }

    /// [`Lab::learn`] for cgroup `id` whose processes `command` starts
    /// (a pod, or a cgroup in another pod's namespace).
    pub fn learn_from(&self, id: u64, v6: bool, command: impl Fn(&[&str]) -> Command) {
        let to = SocketAddr::new(self.net(v6), TRICKLE_PORT).to_string();
        let mut sink = Sink::start(self.topo.internet().command(&[
            TRAFFIC,
            "udp-sink",
            "--listen",
            &to,
            "--count",
            "1000000",
            "--timeout-s",
            "120",
        ]))
        .expect("trickle sink");
        let mut trickle = command(&[
            TRAFFIC,
            "udp-send",
            "--to",
            &to,
            "--count",
            "900",
            "--size",
            "100",
            "--interval-ms",
            "100",
            "--timeout-s",
            "100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("benign sender");
        let learned = format!("class=\"{CLASS}\"");
        let waited = wait_until("the class to learn", WAIT, || {
            self.agent
                .log()
                .lines()
                .any(|l| l.contains("class baseline learned") && l.contains(&learned))
        });
        stop(&mut trickle);
        let _ = sink.finish(Duration::from_secs(1));
        waited.unwrap_or_else(|e| panic!("{e}; log:\n{}", self.agent.log()));
        let benign: Vec<Finding> = self
            .findings()
            .into_iter()
            .filter(|f| f.subject.cgroup_id == id)
            .collect();
        assert!(
            benign.is_empty(),
            "benign traffic raised findings: {benign:#?}"
        );
    }

    pub fn findings(&self) -> Vec<Finding> {
        api::fetch_findings(&self.socket).unwrap_or_default()
    }

    /// Waits for a finding of `detector` for cgroup `id`.
    pub fn wait_finding(&self, id: u64, detector: Detector) -> Finding {
        let mut found = None;
        let waited = wait_until(detector.as_str(), WAIT, || {
            found = self
                .findings()
                .into_iter()
                .find(|f| f.detector == detector && f.subject.cgroup_id == id);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {} finding for cgroup {id} ({waited:?}); findings {:#?}; log:\n{}",
                detector.as_str(),
                self.findings(),
                self.agent.log()
            )
        })
    }

    /// Waits for a finding of `detector` for cgroup `id` while `running`
    /// runs and for 5 s (5 windows) after it exits; `None` if none came.
    pub fn wait_finding_or_none(
        &self,
        id: u64,
        detector: Detector,
        running: &mut Child,
    ) -> Option<Finding> {
        let mut found = None;
        let mut ended: Option<Instant> = None;
        let _ = wait_until(detector.as_str(), WAIT, || {
            found = self
                .findings()
                .into_iter()
                .find(|f| f.detector == detector && f.subject.cgroup_id == id);
            if found.is_some() {
                return true;
            }
            if ended.is_none() && matches!(running.try_wait(), Ok(Some(_))) {
                ended = Some(Instant::now());
            }
            ended.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
        });
        found
    }

    /// Every detector that fired for cgroup `id`, sorted, deduplicated.
    pub fn detectors_for(&self, id: u64) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .findings()
            .iter()
            .filter(|f| f.subject.cgroup_id == id)
            .map(|f| f.detector.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The agent's row for cgroup `id` once `done` holds for it (or the
    /// last one seen after [`WAIT`]).
    pub fn row_when(&self, id: u64, done: impl Fn(&CgroupRow) -> bool) -> CgroupRow {
        top_until(self.pins.path(), WAIT, |t| done(&t.row(id))).row(id)
    }

    /// External egress and ingress of cgroup `id` against the sum of
    /// nftables counters for `peers` in `ns` (every external peer the
    /// cgroup talked to): waits until the agent's snapshot has caught up,
    /// then asserts equality. Returns (agent, nft) egress.
    pub fn exact_external(
        &self,
        what: &str,
        id: u64,
        ns: &tollgate_tests::netns::Netns,
        peers: &[Peer],
    ) -> (Count, Count) {
        let reference = nft::read(ns).expect("nft counters");
        let sum = |f: &dyn Fn(Peer) -> Count| {
            peers.iter().fold(Count::default(), |a, p| {
                let c = f(*p);
                Count {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                }
            })
        };
        let out = sum(&|p| reference.egress(p));
        let inn = sum(&|p| reference.ingress(p));
        let row = self.row_when(id, |r| {
            count(r.egress.external) == out && count(r.ingress.external) == inn
        });
        assert_eq!(
            count(row.egress.external),
            out,
            "{what}: external egress, agent vs nft"
        );
        assert_eq!(
            count(row.ingress.external),
            inn,
            "{what}: external ingress, agent vs nft"
        );
        (count(row.egress.external), out)
    }
}

pub fn count(c: tollgate_tests::top::Count) -> Count {
    Count {
        packets: c.packets,
        bytes: c.bytes,
    }
}

/// Kills a process we spawned (by its handle) and reaps it.
pub fn stop(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Prints each finding's one-line summary for cgroup `id` under its row.
impl Lab {
    /// The suite's table row for cgroup `id` (its detectors named) and
    /// its findings' summaries.
    pub fn report(&self, case: &str, tried: &str, agent: Count, nft: Count, id: u64) {
        row(case, tried, agent, nft, &self.detectors_for(id).join(","));
        summaries(self, id);
    }
}

pub fn summaries(lab: &Lab, id: u64) {
    for f in lab.findings().iter().filter(|f| f.subject.cgroup_id == id) {
        println!("    {} {}: {}", f.detector.as_str(), f.severity, f.summary);
    }
}

/// One row of the suite's table (the report's format): what was tried,
/// how much, agent vs nft, lost (nft - agent, must be 0), detectors.
pub fn row(case: &str, tried: &str, agent: Count, nft: Count, detected: &str) {
    let lost = nft.bytes.saturating_sub(agent.bytes);
    println!(
        "EVASION | {case} | {tried} | agent {} pkts / {} B | nft {} pkts / {} B | lost {lost} B | {detected}",
        agent.packets, agent.bytes, nft.packets, nft.bytes
    );
}
