//! Crash loop: the agent is SIGKILLed 20 times at random moments (start-up
//! included: while it loads, swaps programs into the pinned links, writes
//! its state) and started again each time, while two pods stream TCP to the
//! internet host and a third pod is quarantined. Asserted over the whole
//! run:
//!
//! - nothing from the quarantined pod reaches the internet host (nft
//!   counters there: 0 packets), neither its established stream's
//!   retransmissions nor its new connects and datagrams (EPERM each time);
//! - the other pods' streams never break: every byte written arrives
//!   (`tg-traffic tcp-stream` vs `tcp-sink`, exact);
//! - their counters read with `tollgate top --once --format json` never go
//!   down and end exactly equal to nft in the pod's namespace;
//! - the TollgateQuarantined alert reaches the Alertmanager webhook once
//!   (one firing notification, no resolution), and every POST the agents
//!   made to a second, recording "Alertmanager" carries the same startsAt:
//!   no restarted agent re-raised it as a new alert.
//!
//! The seed is printed; `TOLLGATE_CRASH_SEED=<n>` replays a run's timings.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tg, top, top_until},
    alerting::{self, NODE},
    cmd::wait_until,
    http::Webhook,
    nft::{self, Count, Peer},
    privileged, servers,
    servers::Alertmanager,
    top::Top,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const KILLS: usize = 20;
/// Longest an agent lives before its SIGKILL (uniform from 0).
const MAX_UP_MS: u64 = 1500;
/// Longest the node stays without an agent between kill and restart.
const MAX_DOWN_MS: u64 = 300;
/// Streams last the drawn kill schedule plus this (start-up, the refused
/// attempts after each kill, the final checks).
const STREAM_MARGIN_SECS: u64 = 15;
const WAIT: Duration = Duration::from_secs(60);

/// xorshift64*: a seeded, dependency-free RNG for the kill timings.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("TOLLGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn counts(d: &tollgate_tests::top::Count) -> Count {
    Count {
        packets: d.packets,
        bytes: d.bytes,
    }
}

/// Egress and ingress totals of a cgroup in one `top` snapshot.
fn totals(t: &Top, id: u64) -> (u64, u64) {
    let r = t.row(id);
    (r.egress.total().bytes, r.ingress.total().bytes)
}

#[test]
fn twenty_sigkills_lose_nothing_and_leak_nothing() {
    privileged!("nft", "prometheus-alertmanager");
    let seed = seed();
    eprintln!("crash loop seed {seed} (replay with TOLLGATE_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    // (uptime before the kill, downtime before the restart), in ms.
    let schedule: Vec<(u64, u64)> = (0..KILLS)
        .map(|_| (rng.below(MAX_UP_MS + 1), rng.below(MAX_DOWN_MS + 1)))
        .collect();
    let stream_secs = schedule.iter().map(|(u, d)| u + d).sum::<u64>() / 1000 + STREAM_MARGIN_SECS;

    let topo = Topology::builder().pods(3).build().expect("topology");
    let (q, a, b) = (topo.pod(0), topo.pod(1), topo.pod(2));
    let net = IpAddr::V4(topo.internet().v4);
    let pins = TestPinDir::new().expect("pin dir");
    let state = alerting::state_dir();
    let hook = Webhook::start().expect("webhook");
    let am = Alertmanager::start(&hook.url()).expect("alertmanager");
    // A second "Alertmanager" that records every POST the agents make.
    let recorder = Webhook::start().expect("recorder");
    let recorder_url = recorder.url().trim_end_matches("/hook").to_owned();
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n[network]\ninternal_cidrs = [\"198.18.0.0/16\"]\n[alerts]\nurls = [\"{}\", \"{recorder_url}\"]\nresend_interval = \"1s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
        state.display(),
        am.url(),
    );
    let env = [("NODE_NAME", NODE)];
    let mut agents = vec![Agent::start_with_env(pins.path(), &config, &env).expect("agent starts")];

    // Reference counters in each streaming pod's namespace (what left it).
    for p in [a, b] {
        nft::install(&p.netns, &[Peer::addr(net)]).expect("nft in pod");
    }
    let ports = [9700u16, 9701, 9702];
    let to: Vec<String> = ports
        .iter()
        .map(|p| SocketAddr::new(net, *p).to_string())
        .collect();
    let timeout = (stream_secs + 30).to_string();
    let mut sinks: Vec<Sink> = to
        .iter()
        .map(|t| {
            Sink::start(topo.internet().command(&[
                TRAFFIC,
                "tcp-sink",
                "--listen",
                t,
                "--once",
                "--timeout-s",
                &timeout,
            ]))
            .expect("sink")
        })
        .collect();
    let secs = stream_secs.to_string();
    let mut streams: Vec<_> = [q, a, b]
        .iter()
        .zip(&to)
        .map(|(p, t)| {
            p.command(&[TRAFFIC, "tcp-stream", "--to", t, "--seconds", &secs])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("stream starts")
        })
        .collect();
    let started = Instant::now();
    wait_until("the pod to be quarantined streams", WAIT, || {
        top(pins.path()).is_ok_and(|t| totals(&t, q.cgroup.id()).0 > 0)
    })
    .expect("pod q streams before the quarantine");

    // Quarantine q (standalone CLI form), let what was in flight land, then
    // start counting at the internet host: from here on, nothing from q.
    tg(
        pins.path(),
        &state,
        &[
            "quarantine",
            "--cgroup",
            &q.cgroup.rel_path(),
            "--reason",
            "crash loop",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let from_q = [Peer::addr(q.v4), Peer::addr(q.v6)];
    nft::install(&topo.internet().netns, &from_q).expect("nft at the internet host");
    let pod_q = top(pins.path())
        .ok()
        .and_then(|t| {
            t.find_cgroup(q.cgroup.id())
                .and_then(|r| r.pod.clone().or(r.path.clone()))
        })
        .unwrap_or_else(|| q.cgroup.rel_path());
    let (_, firing) = alerting::wait_alert(&hook, &pod_q, "firing");
    let starts_at = firing["startsAt"].clone();
    eprintln!("alert firing for {pod_q}, startsAt {starts_at}");

    let ids = [q.cgroup.id(), a.cgroup.id(), b.cgroup.id()];
    let mut samples: Vec<[(u64, u64); 3]> = Vec::new();
    let mut sample = |pins: &TestPinDir| match top(pins.path()) {
        Ok(t) => {
            samples.push(ids.map(|id| totals(&t, id)));
            true
        }
        Err(_) => false,
    };
    let (mut up_total, mut refused, mut top_failures) = (0u64, 0usize, 0usize);
    for (i, &(up, down)) in schedule.iter().enumerate() {
        up_total += up;
        std::thread::sleep(Duration::from_millis(up));
        let agent = agents.last_mut().expect("an agent");
        let was_running = agent.is_running();
        agent.kill9();
        assert!(
            was_running,
            "agent {i} had exited on its own before its SIGKILL; log:\n{}",
            agent.log()
        );
        if !sample(&pins) {
            top_failures += 1;
        }
        // While no agent runs, q's new connects and datagrams are refused.
        let out = q
            .run(&[TRAFFIC, "connect", "--to", &to[0]], WAIT)
            .expect("connect runs");
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            said.contains("Operation not permitted") || said.contains("os error 1"),
            "kill {i}: q's connect is refused with EPERM: {said}"
        );
        let udp = q.run(
            &[
                TRAFFIC,
                "udp-send",
                "--to",
                &SocketAddr::new(net, 9703).to_string(),
                "--count",
                "1",
                "--size",
                "100",
            ],
            WAIT,
        );
        assert!(udp.is_err(), "kill {i}: q's datagram is refused: {udp:?}");
        refused += 2;
        std::thread::sleep(Duration::from_millis(down));
        agents.push(Agent::spawn(pins.path(), &config, &env).expect("agent respawns"));
        if !sample(&pins) {
            top_failures += 1;
        }
        eprintln!("kill {i}: after {up} ms up, {down} ms down");
    }
    let loop_time = started.elapsed();

    // The last agent must come up for real (its own metrics line, not the
    // pins an earlier one left).
    let last = agents.last_mut().expect("an agent");
    last.wait_ready().expect("the last agent is ready");
    servers::agent_metrics_addr(last).expect("the last agent serves /metrics");

    let mut sent = Vec::new();
    for (i, s) in streams.drain(..).enumerate() {
        let out = s.wait_with_output().expect("stream ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if i > 0 {
            assert!(
                out.status.success(),
                "stream {i} broke: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let n: u64 = stdout
                .trim()
                .strip_prefix("sent ")
                .and_then(|n| n.parse().ok())
                .expect("tcp-stream prints `sent N`");
            sent.push(n);
        }
    }
    let mut received = Vec::new();
    for (i, s) in sinks.iter_mut().enumerate().skip(1) {
        let out = s.finish(WAIT).expect("sink ends");
        received.push(
            out.last_number()
                .unwrap_or_else(|| panic!("sink {i}: {out:?}")),
        );
    }
    let _ = sinks[0].finish(Duration::from_secs(1));
    assert_eq!(received, sent, "every byte the streams wrote arrived");

    let leaked = nft::read(&topo.internet().netns).expect("nft");
    let leaked: Vec<Count> = from_q.iter().map(|p| leaked.ingress(*p)).collect();
    assert_eq!(
        leaked,
        vec![Count::default(); 2],
        "nothing from the quarantined pod reached the internet host"
    );

    // Exact totals at the end, against nft in each pod's namespace.
    for p in [a, b] {
        let reference = nft::read(&p.netns).expect("nft");
        let (out, inn) = (
            reference.egress(Peer::addr(net)),
            reference.ingress(Peer::addr(net)),
        );
        let t = top_until(pins.path(), WAIT, |t| {
            let r = t.row(p.cgroup.id());
            counts(&r.egress.external) == out && counts(&r.ingress.external) == inn
        });
        let r = t.row(p.cgroup.id());
        assert_eq!(
            (counts(&r.egress.external), counts(&r.ingress.external)),
            (out, inn),
            "pod {}: agent totals equal nft after {KILLS} kills",
            p.name
        );
        sample(&pins);
        eprintln!(
            "pod {}: {} bytes / {} packets out, {} bytes in, exact",
            p.name, out.bytes, out.packets, inn.bytes
        );
    }
    for w in samples.windows(2) {
        for (k, (x, y)) in w[0].iter().zip(&w[1]).enumerate() {
            assert!(
                y.0 >= x.0 && y.1 >= x.1,
                "pod {k}: counters went down between samples: {:?} -> {:?} (all: {samples:?})",
                x,
                y
            );
        }
    }
    assert!(
        samples.len() >= KILLS,
        "at least one top sample per kill: {} samples, {top_failures} failed reads",
        samples.len()
    );

    // One firing notification, never resolved; every POST the same alert.
    std::thread::sleep(Duration::from_secs(2));
    let notes = alerting::alerts_for(&hook, &pod_q);
    let firing_notes = notes
        .iter()
        .filter(|(_, a)| a["status"] == "firing")
        .count();
    let resolved_notes = notes.len() - firing_notes;
    assert_eq!(
        (firing_notes, resolved_notes),
        (1, 0),
        "Alertmanager notified once: {notes:#?}"
    );
    let posts: Vec<serde_json::Value> = recorder
        .received()
        .into_iter()
        .flat_map(|r| r.body.as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["pod"] == pod_q.as_str())
        .collect();
    assert!(posts.len() >= 2, "re-sent across restarts: {posts:#?}");
    for p in &posts {
        assert_eq!(p["startsAt"], posts[0]["startsAt"], "same alert: {p:#}");
        assert_eq!(p["labels"], posts[0]["labels"]);
        assert!(
            p["endsAt"].is_null() || p["endsAt"] == "0001-01-01T00:00:00Z",
            "never resolved: {p:#}"
        );
    }
    // Alertmanager prints whole seconds ("...:27Z"), the agent millis.
    let second = |v: &serde_json::Value| {
        let s = v.as_str().unwrap_or_default();
        s[..s.find(['.', 'Z']).unwrap_or(s.len())].to_owned()
    };
    assert_eq!(
        second(&starts_at),
        second(&posts[0]["startsAt"]),
        "the webhook's alert is the one first posted"
    );
    eprintln!(
        "crash loop: {KILLS} SIGKILLs in {:.1} s (mean uptime {} ms, streams {stream_secs} s), {} refused attempts from q, \
         0 packets from q at the internet host, streams {sent:?} bytes sent = received, \
         {} top samples monotonic ({top_failures} failed reads), 1 webhook notification, \
         {} POSTs of the same alert",
        loop_time.as_secs_f64(),
        up_total / KILLS as u64,
        refused,
        samples.len(),
        posts.len()
    );
    drop(agents);
    let _ = std::fs::remove_dir_all(&state);
}
