//! Missing pieces: the agent started without bpffs, without kernel BTF,
//! with cgroup v1 only, with program types switched off, and over stale
//! pins of an older ABI version. Each case runs the agent in a private
//! mount namespace (`unshare -m`, see `tollgate_tests::mountns`), so the
//! host's mounts are untouched; each asserts the message, what still works
//! (exact counts), and that traffic flows afterwards.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use tollgate_tests::{
    cgroup,
    mountns::{Confined, FRESH_BPFFS},
    privileged,
    topology::Topology,
    traffic::{self, Sink},
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);
/// Datagrams per check, and their payload.
const COUNT: u64 = 40;
const SIZE: u64 = 100;

fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/tollgate-test-{}",
        tollgate_tests::unique_suffix()
    ))
}

/// The test config plus `extra`, with a fresh state directory.
fn config(extra: &str) -> String {
    let state = std::env::temp_dir().join(format!("tg-state-{}", tollgate_tests::unique_suffix()));
    format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n[network]\ninternal_cidrs = [\"198.18.0.0/16\"]\n{extra}",
        state.display()
    )
}

/// Sends COUNT datagrams from the pod to the internet host, which must
/// receive all of them (traffic flows).
fn udp_flows(topo: &Topology, port: u16) {
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), port).to_string();
    let mut sink = Sink::start(topo.internet().command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &to,
        "--count",
        &COUNT.to_string(),
    ]))
    .expect("sink");
    traffic::udp_send(topo.pod(0), TRAFFIC, &to, COUNT, SIZE, WAIT).expect("datagrams sent");
    let out = sink.finish(WAIT).expect("sink ends");
    assert_eq!(
        out.last_number(),
        Some(COUNT),
        "traffic flows: every datagram arrived: {out:?}"
    );
}

/// The agent counted exactly `n` datagram rounds of the pod (IPv4 UDP:
/// payload + 28 bytes each).
fn assert_exact(agent: &Confined, topo: &Topology, rounds: u64) {
    let id = topo.pod(0).cgroup.id();
    let want = (rounds * COUNT, rounds * COUNT * (SIZE + 28));
    let t = agent
        .top_until(WAIT, |t| {
            let e = t.row(id).egress.external;
            (e.packets, e.bytes) == want
        })
        .expect("top");
    let e = t.row(id).egress.external;
    assert_eq!((e.packets, e.bytes), want, "exact egress counts");
}

#[test]
fn without_bpffs_the_agent_mounts_it_and_counts() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = pin_dir();
    // Nothing at /sys/fs/bpf in the agent's namespace.
    let setup = "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done";
    let mut agent = Confined::spawn(setup, &pins, &config("")).expect("spawn");
    agent.wait_running().expect("the agent runs");
    let log = agent.log();
    assert!(log.contains("bpffs not mounted; mounting it"), "{log}");
    assert!(agent.pins().join("v1/links/tg_skb_egress").exists());
    udp_flows(&topo, 9801);
    assert_exact(&agent, &topo, 1);
    drop(agent);
    udp_flows(&topo, 9802);
}

#[test]
fn without_btf_storage_is_off_and_network_counts_exactly() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = pin_dir();
    let empty =
        std::env::temp_dir().join(format!("tg-empty-btf-{}", tollgate_tests::unique_suffix()));
    std::fs::write(&empty, "").expect("empty file");
    let setup = format!(
        "{FRESH_BPFFS}\nmount --bind {} /sys/kernel/btf/vmlinux",
        empty.display()
    );
    let mut agent = Confined::spawn(&setup, &pins, &config("")).expect("spawn");
    agent.wait_running().expect("the agent runs without BTF");
    let log = agent.log();
    let warn = log
        .lines()
        .find(|l| l.contains("storage accounting unavailable"))
        .unwrap_or_else(|| panic!("a warning says storage is off: {log}"));
    assert!(
        warn.contains("BTF") || warn.contains("btf"),
        "names BTF: {warn}"
    );
    assert!(log.contains("storage=unavailable"), "{log}");
    let (_, check) = agent.tollgate(&["check"]).expect("check runs");
    let btf_line = check
        .lines()
        .find(|l| l.starts_with("BTF"))
        .unwrap_or_else(|| panic!("check has a BTF line: {check}"));
    assert!(
        btf_line.contains("MISSING") || check.contains("storage"),
        "{check}"
    );
    udp_flows(&topo, 9811);
    assert_exact(&agent, &topo, 1);
    drop(agent);
    udp_flows(&topo, 9812);
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn with_cgroup_v1_only_the_agent_exits_naming_the_fix_and_blocks_nothing() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let v2 = cgroup::v2_mount().expect("cgroup v2 on the host");
    let pins = pin_dir();
    // Remove every cgroup2 mount from the agent's view; v1 hierarchies
    // (this host is hybrid) stay, or one is mounted if there is none.
    let setup = format!(
        "{FRESH_BPFFS}\n\
         for m in $(awk '$9 == \"cgroup2\" {{print $5}}' /proc/self/mountinfo); do umount -l \"$m\"; done\n\
         grep -q ' - cgroup ' /proc/self/mountinfo || {{ mount -t tmpfs tmpfs /sys/fs/cgroup; mkdir /sys/fs/cgroup/tgv1; mount -t cgroup -o none,name=tgv1 tgv1 /sys/fs/cgroup/tgv1; }}\n\
         ! grep -q ' - cgroup2 ' /proc/self/mountinfo"
    );
    let mut agent = Confined::spawn(&setup, &pins, &config("")).expect("spawn");
    let status = agent.wait_exit(WAIT).expect("the agent exits");
    let log = agent.log();
    assert!(!status.success(), "exits non-zero: {status}; {log}");
    assert!(
        log.contains("cgroup v2 is not mounted") && log.contains("mount -t cgroup2"),
        "names the problem and the fix: {log}"
    );
    assert!(!log.contains("attached"), "nothing was attached: {log}");
    assert!(v2.exists(), "the host's cgroup v2 mount is untouched");
    udp_flows(&topo, 9821);
}

#[test]
fn disabled_program_types_are_reported_and_the_rest_counts_exactly() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = pin_dir();
    let cfg = config("[kernel]\ndisable = [\"cgroup_sock_addr\", \"sched_cls\"]\n");
    let mut agent = Confined::spawn(FRESH_BPFFS, &pins, &cfg).expect("spawn");
    agent.wait_running().expect("the agent runs");
    let log = agent.log();
    for t in ["cgroup_sock_addr", "sched_cls"] {
        assert!(
            log.lines()
                .any(|l| l.contains("program type disabled by kernel.disable")
                    && l.contains(&format!("program_type={t}"))),
            "the log says {t} is off: {log}"
        );
    }
    let links = agent.pins().join("v1/links");
    assert!(links.join("tg_skb_egress").exists());
    for p in ["tg_connect4", "tg_connect6", "tg_sendmsg4", "tg_sendmsg6"] {
        assert!(!links.join(p).exists(), "{p} not attached");
    }
    // `tollgate check --config` says what is off.
    let cfg_file =
        std::env::temp_dir().join(format!("tg-check-{}.toml", tollgate_tests::unique_suffix()));
    std::fs::write(&cfg_file, &cfg).expect("config file");
    let (_, check) = agent
        .tollgate(&["check", "--config", &cfg_file.display().to_string()])
        .expect("check runs");
    let _ = std::fs::remove_file(&cfg_file);
    for t in ["cgroup_sock_addr", "sched_cls"] {
        assert!(
            check
                .lines()
                .any(|l| l.contains(&format!("{t} programs (kernel.disable)"))
                    && l.contains("disabled by config")),
            "check reports {t}: {check}"
        );
    }
    // Network accounting exact; no connect events (their hook is off).
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9830).to_string();
    topo.pod(0)
        .run(&[TRAFFIC, "connect", "--to", &to], WAIT)
        .expect("connect runs");
    udp_flows(&topo, 9831);
    let id = topo.pod(0).cgroup.id();
    let t = agent
        .top_until(WAIT, |t| t.row(id).egress.external.packets >= COUNT)
        .expect("top");
    assert_eq!(
        t.row(id).connects,
        0,
        "connect hook off: no connects counted"
    );
    drop(agent);
    udp_flows(&topo, 9832);
}

#[test]
fn stale_pins_of_an_older_abi_are_removed_and_foreign_pins_kept() {
    privileged!("nft", "bpftool");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = pin_dir();
    let p = pins.display();
    let map = |path: &str, name: &str| {
        format!("bpftool map create {p}/{path} type hash key 8 value 8 entries 4 name {name}")
    };
    let setup = [
        FRESH_BPFFS.to_owned(),
        format!("mkdir -p {p}/v0/maps {p}/v0/links {p}/cilium"),
        map("v0/maps/TG_CG_STATS", "TG_CG_STATS"),
        map("v0/maps/TG_FLOWS", "TG_FLOWS"),
        map("v0/links/tg_skb_egress", "tg_old_link"),
        map("cilium/TG_CG_STATS", "TG_CG_STATS"),
        map("foreign_map", "foreign_map"),
        map("v0/maps/not_ours", "not_ours"),
    ]
    .join("\n");
    let mut agent = Confined::spawn(&setup, &pins, &config("")).expect("spawn");
    agent.wait_running().expect("the agent runs");
    let root = agent.pins();
    for gone in ["v0/maps/TG_CG_STATS", "v0/maps/TG_FLOWS", "v0/links"] {
        assert!(!root.join(gone).exists(), "{gone} removed");
    }
    for kept in ["cilium/TG_CG_STATS", "foreign_map", "v0/maps/not_ours"] {
        assert!(root.join(kept).exists(), "{kept} left untouched");
    }
    assert!(root.join("v1/maps/TG_CG_STATS").exists());
    let log = agent.log();
    assert!(
        log.contains("removed pins of an older Tollgate ABI version") && log.contains("removed=3"),
        "{log}"
    );
    udp_flows(&topo, 9841);
    assert_exact(&agent, &topo, 1);
    drop(agent);
    udp_flows(&topo, 9842);
}
