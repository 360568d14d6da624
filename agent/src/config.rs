//! Configuration: `/etc/tollgate/config.toml` by default. Every key is
//! documented here and in the README; unknown keys are rejected; `validate`
//! runs before anything touches the kernel. Command-line flags override the
//! file (see main.rs).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::inventory::{
    InventoryConfig,
    classes::{ClassConfig, ClassError, Classifier},
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/tollgate/config.toml";
/// Default Prometheus port of the agent.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9771";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source} (pass --config PATH, or create the file; every key is optional)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key} = {}: {why}", crate::config_text::shown(value))]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Classes(#[from] ClassError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectConfigError),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub network: NetworkConfig,
    pub maps: MapConfig,
    pub metrics: MetricsConfig,
    pub storage: StorageConfig,
    pub inventory: InventoryConfig,
    pub classes: ClassConfig,
    pub detect: crate::detect::DetectConfig,
    pub alerts: crate::respond::alerts::AlertsConfig,
    /// `[tc]`: programs on pods' host-side interfaces.
    pub tc: crate::podtc::TcConfig,
    pub control: crate::control::ControlConfig,
    pub auto_quarantine: crate::respond::auto::AutoQuarantineConfig,
    /// `[kernel]`: program types switched off (see `crate::kernel`).
    pub kernel: crate::kernel::KernelConfig,
}

/// `[storage]`: per-pod bytes written to and read from shared file
/// systems (raw tracepoints sys_enter/sys_exit; needs kernel BTF).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Count storage reads and writes. When the kernel lacks BTF or raw
    /// tracepoints the agent logs it and runs without (network accounting
    /// is unaffected).
    pub enabled: bool,
    /// File system types watched in addition to ceph, fuse.ceph-fuse, nfs
    /// and nfs4 (always watched), as mountinfo names them: e.g.
    /// "fuse.bindfs", "glusterfs", "lustre".
    pub watch_fstypes: Vec<String>,
    /// Mounts at or below these absolute paths are watched whatever their
    /// type.
    pub watch_paths: Vec<PathBuf>,
    /// The mount table to follow: the host's (PID 1's; the DaemonSet runs
    /// with hostPID). Re-read every tick.
    pub mountinfo: PathBuf,
    /// (cgroup, device, direction) counter entries; when they are all
    /// taken, further calls are counted under one overflow entry (shown as
    /// "(overflow: map full)", device 0:0) and in `storage_stats_full`.
    pub stats_entries: u32,
    /// Kernel BTF to read struct offsets from. For kernels built without
    /// /sys/kernel/btf/vmlinux, point it at a BTF file for the running
    /// kernel; if it cannot be read, storage accounting is off (logged, and
    /// `tollgate check --btf` says why) and everything else runs.
    pub btf: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            watch_fstypes: Vec::new(),
            watch_paths: Vec::new(),
            mountinfo: PathBuf::from("/proc/1/mountinfo"),
            stats_entries: tollgate_ebpf::map::DEFAULT_STORAGE_STATS_ENTRIES,
            btf: PathBuf::from(crate::ebpf::btf::VMLINUX_BTF),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint's budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most per-pod series in one scrape (pods with the most egress first);
    /// the rest are counted in `tollgate_metrics_series_dropped`.
    pub max_series: usize,
    /// Turn on the kernel's BPF run-time statistics while the agent runs
    /// (BPF_ENABLE_STATS) and export each program's run time and run count.
    /// Costs two clock reads per program run (tens of ns per packet).
    /// Without it the program metrics appear only when the sysctl
    /// kernel.bpf_stats_enabled is 1.
    pub program_stats: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series: 50_000,
            program_stats: false,
        }
    }
}

/// `[agent]`: how the agent runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How often the kernel maps are drained (e.g. "1s", "500ms").
    /// Between 100ms and 60s.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Root of Tollgate's pins on bpffs; versioned subdirectories below it.
    pub pin_dir: PathBuf,
    /// State directory (baselines, queues, quarantine state).
    pub state_dir: PathBuf,
    /// Address of the Prometheus endpoint (and /healthz).
    pub metrics_addr: SocketAddr,
    /// Cgroup to attach the cgroup hooks to, relative to the cgroup v2
    /// mount; "" (the default) is the root, which covers every pod.
    pub attach_cgroup: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            pin_dir: PathBuf::from("/sys/fs/bpf/tollgate"),
            state_dir: PathBuf::from("/var/lib/tollgate"),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("valid default"),
            attach_cgroup: PathBuf::new(),
        }
    }
}

/// `[network]`: what counts as cluster-internal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Destinations counted as internal (pod, service and node ranges).
    /// Everything else is external. Loopback and link-local are always
    /// internal.
    pub internal_cidrs: Vec<IpNet>,
    /// Carve-outs inside the internal ranges that count as external (a NAT
    /// gateway or egress proxy inside the cluster range, say). The longest
    /// prefix wins.
    pub external_cidrs: Vec<IpNet>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        let nets = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
        ];
        Self {
            internal_cidrs: nets
                .iter()
                .map(|n| n.parse().expect("valid default"))
                .collect(),
            external_cidrs: Vec::new(),
        }
    }
}

/// Ranges that are internal whatever the config says.
pub const ALWAYS_INTERNAL: [&str; 4] = ["127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10"];

/// `[maps]`: kernel map sizes. Larger maps cost kernel memory (see the
/// README's sizing table); full maps never lose counts (overflow buckets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// Cgroups with their own counters (pods x containers, plus system
    /// cgroups). Further cgroups are counted in one overflow entry.
    pub cgroup_stats_entries: u32,
    /// Flows (cgroup, peer address, peer port, protocol); least recently
    /// used flows are evicted and the evictions counted.
    pub flow_entries: u32,
    /// Remembered (cgroup, peer) pairs for connection events.
    pub conn_seen_entries: u32,
    /// Connection event ring buffer in bytes (power of two, >= 4096).
    pub conn_events_bytes: u32,
    /// Sampled DNS query name ring buffer in bytes (power of two, >=
    /// 4096; one sample takes 288 bytes).
    pub dns_events_bytes: u32,
    /// Cgroups whose DNS sampling window is remembered (per CPU); a
    /// forgotten cgroup starts a fresh window.
    pub dns_rate_entries: u32,
    /// DNS query names sampled per cgroup per CPU per second (0 to 100000;
    /// 0 samples none). Every query is counted either way; queries over
    /// the rate are counted as unsampled.
    pub dns_samples_per_sec: u32,
    /// Stratum event ring buffer in bytes (power of two, >= 4096).
    pub stratum_events_bytes: u32,
    /// Egress packets at the start of each TCP stream (since its SYN)
    /// whose payload is checked for stratum markers (1 to 64).
    pub stratum_packets: u32,
}

impl Default for MapConfig {
    fn default() -> Self {
        use tollgate_ebpf::map::*;
        Self {
            cgroup_stats_entries: DEFAULT_CGROUP_STATS_ENTRIES,
            flow_entries: DEFAULT_FLOW_ENTRIES,
            conn_seen_entries: DEFAULT_CONN_SEEN_ENTRIES,
            conn_events_bytes: DEFAULT_CONN_EVENTS_BYTES,
            dns_events_bytes: DEFAULT_DNS_EVENTS_BYTES,
            dns_rate_entries: DEFAULT_DNS_RATE_ENTRIES,
            dns_samples_per_sec: tollgate_ebpf::DEFAULT_DNS_SAMPLES_PER_SEC,
            stratum_events_bytes: DEFAULT_STRATUM_EVENTS_BYTES,
            stratum_packets: tollgate_ebpf::DEFAULT_STRATUM_PACKETS,
        }
    }
}

impl MapConfig {
    /// Checks the DNS and stratum keys.
    fn validate_signals(&self) -> Result<(), ConfigError> {
        for (key, rb) in [
            ("maps.dns_events_bytes", self.dns_events_bytes),
            ("maps.stratum_events_bytes", self.stratum_events_bytes),
        ] {
            if rb < 4096 || !rb.is_power_of_two() || rb > 1 << 30 {
                return Err(ConfigError::Invalid {
                    key,
                    value: rb.to_string(),
                    why: "must be a power of two between 4096 and 1073741824".into(),
                });
            }
        }
        for (key, v, min, max) in [
            ("maps.dns_rate_entries", self.dns_rate_entries, 64, 1 << 20),
            (
                "maps.dns_samples_per_sec",
                self.dns_samples_per_sec,
                0,
                100_000,
            ),
            ("maps.stratum_packets", self.stratum_packets, 1, 64),
        ] {
            if v < min || v > max {
                return Err(ConfigError::Invalid {
                    key,
                    value: v.to_string(),
                    why: format!("must be between {min} and {max}"),
                });
            }
        }
        Ok(())
    }

    /// The load-time settings of the DNS and stratum programs.
    pub fn signal_config(&self) -> tollgate_ebpf::SignalConfig {
        tollgate_ebpf::SignalConfig {
            dns_samples_per_sec: self.dns_samples_per_sec,
            stratum_packets: self.stratum_packets,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses and validates the bytes of the config file `path` (named in
    /// errors): what `load` does after reading, and the fuzz target.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            ),
        })?;
        let cfg = Self::parse(text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no validation); the error names line, column and
    /// key, with the input escaped and cut.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| crate::config_text::describe_toml_error(text, &e))
    }

    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tick = self.agent.tick;
        if tick < Duration::from_millis(100) || tick > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                key: "agent.tick",
                value: humantime::format_duration(tick).to_string(),
                why: "must be between 100ms and 60s".into(),
            });
        }
        if !self.agent.pin_dir.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "agent.pin_dir",
                value: self.agent.pin_dir.display().to_string(),
                why: "must be an absolute path on a bpf filesystem, e.g. /sys/fs/bpf/tollgate"
                    .into(),
            });
        }
        if self.agent.attach_cgroup.is_absolute()
            || self
                .agent
                .attach_cgroup
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ConfigError::Invalid {
                key: "agent.attach_cgroup",
                value: self.agent.attach_cgroup.display().to_string(),
                why: "must be relative to the cgroup v2 mount, without '..' (\"\" for the root)"
                    .into(),
            });
        }
        let m = &self.maps;
        for (key, v, min, max) in [
            (
                "maps.cgroup_stats_entries",
                m.cgroup_stats_entries,
                16,
                1 << 20,
            ),
            ("maps.flow_entries", m.flow_entries, 64, 1 << 24),
            ("maps.conn_seen_entries", m.conn_seen_entries, 64, 1 << 24),
        ] {
            if v < min || v > max {
                return Err(ConfigError::Invalid {
                    key,
                    value: v.to_string(),
                    why: format!("must be between {min} and {max}"),
                });
            }
        }
        if self.metrics.max_series < 14 {
            return Err(ConfigError::Invalid {
                key: "metrics.max_series",
                value: self.metrics.max_series.to_string(),
                why: "must be at least 14 (one pod's series)".into(),
            });
        }
        let st = &self.storage;
        if st.stats_entries < 64 || st.stats_entries > 1 << 24 {
            return Err(ConfigError::Invalid {
                key: "storage.stats_entries",
                value: st.stats_entries.to_string(),
                why: "must be between 64 and 16777216".into(),
            });
        }
        if let Some(p) = st.watch_paths.iter().find(|p| !p.is_absolute()) {
            return Err(ConfigError::Invalid {
                key: "storage.watch_paths",
                value: p.display().to_string(),
                why: "must be absolute paths (mount points or directories above them)".into(),
            });
        }
        if let Some(t) = st
            .watch_fstypes
            .iter()
            .find(|t| t.is_empty() || t.chars().any(char::is_whitespace))
        {
            return Err(ConfigError::Invalid {
                key: "storage.watch_fstypes",
                value: format!("{t:?}"),
                why: "fs types as mountinfo names them, e.g. \"fuse.bindfs\"".into(),
            });
        }
        let rb = m.conn_events_bytes;
        if rb < 4096 || !rb.is_power_of_two() || rb > 1 << 30 {
            return Err(ConfigError::Invalid {
                key: "maps.conn_events_bytes",
                value: rb.to_string(),
                why: "must be a power of two between 4096 and 1073741824".into(),
            });
        }
        self.maps.validate_signals()?;
        let cidrs = self.network.internal_cidrs.len()
            + self.network.external_cidrs.len()
            + ALWAYS_INTERNAL.len();
        if cidrs > tollgate_ebpf::map::DEFAULT_CIDR_ENTRIES as usize {
            return Err(ConfigError::Invalid {
                key: "network.internal_cidrs",
                value: format!("{cidrs} entries"),
                why: format!(
                    "at most {} CIDRs in total: aggregate ranges",
                    tollgate_ebpf::map::DEFAULT_CIDR_ENTRIES as usize - ALWAYS_INTERNAL.len()
                ),
            });
        }
        if let Err((key, value, why)) = self.tc.validate() {
            return Err(ConfigError::Invalid { key, value, why });
        }
        let classifier = Classifier::new(&self.classes)?;
        crate::egress::compile(&self.classes.egress, classifier.classes())?;
        if self.inventory.grace > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid {
                key: "inventory.grace",
                value: humantime::format_duration(self.inventory.grace).to_string(),
                why: "must be at most 1h (removed cgroups keep kernel map entries until then)"
                    .into(),
            });
        }
        Classifier::new(&self.classes)?;
        self.detect.validate()?;
        self.alerts.validate()?;
        if let Err((key, value, why)) = self.control.validate() {
            return Err(ConfigError::Invalid { key, value, why });
        }
        self.auto_quarantine.validate(&self.classes)?;
        if let Err((key, value, why)) = self.kernel.validate() {
            return Err(ConfigError::Invalid { key, value, why });
        }
        Ok(())
    }

    /// Internal and external CIDRs as the kernel trie gets them:
    /// (network, internal?).
    pub fn cidr_table(&self) -> Vec<(IpNet, bool)> {
        let mut v: Vec<(IpNet, bool)> = ALWAYS_INTERNAL
            .iter()
            .map(|n| (n.parse().expect("valid constant"), true))
            .collect();
        v.extend(
            self.network
                .internal_cidrs
                .iter()
                .map(|n| (n.trunc(), true)),
        );
        v.extend(
            self.network
                .external_cidrs
                .iter()
                .map(|n| (n.trunc(), false)),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_roundtrip() {
        let c = Config::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[agent]\ntick = \"1s\"\ntikc = 3\n").unwrap_err();
        assert!(e.contains("tikc"), "{e}");
        let e = Config::parse("[netwrok]\n").unwrap_err();
        assert!(e.contains("netwrok"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = Config::parse("[agent]\ntick = \"10ms\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("agent.tick"), "{e}");
        let c = Config::parse("[maps]\nconn_events_bytes = 5000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("maps.conn_events_bytes"), "{e}");
        let e = Config::parse("[network]\ninternal_cidrs = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.contains("internal_cidrs") || e.contains("invalid"), "{e}");
        let c = Config::parse("[agent]\nattach_cgroup = \"../x\"\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("attach_cgroup")
        );
    }

    #[test]
    fn storage_section() {
        let c = Config::parse(
            "[storage]\nwatch_fstypes = [\"fuse.bindfs\"]\nwatch_paths = [\"/mnt/data\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.storage.enabled);
        assert_eq!(c.storage.watch_fstypes, ["fuse.bindfs"]);
        let e = Config::parse("[storage]\nwatch_fstype = []\n").unwrap_err();
        assert!(e.contains("watch_fstype"), "{e}");
        let c = Config::parse("[storage]\nwatch_paths = [\"rel\"]\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.watch_paths"), "{e}");
        let c = Config::parse("[storage]\nwatch_fstypes = [\"\"]\n").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn inventory_and_classes_sections() {
        let c = Config::parse(
            "[inventory]\nmode = \"standalone\"\ngrace = \"5s\"\n[classes]\nnames = [\"serving\"]\n[[classes.path_rules]]\nglob = \"/system.slice/*.service\"\nclass = \"serving\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.inventory.mode, crate::inventory::Mode::Standalone);
        let e = Config::parse("[inventory]\nmod = \"x\"\n").unwrap_err();
        assert!(e.contains("mod"), "{e}");
        let c = Config::parse("[inventory]\ngrace = \"2h\"\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("inventory.grace")
        );
        let c = Config::parse("[classes]\nnames = [\"Not OK\"]\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("classes.names[0]"), "{e}");
    }

    #[test]
    fn cidr_table_truncates_host_bits() {
        let c = Config::parse("[network]\ninternal_cidrs = [\"198.18.3.4/16\"]\nexternal_cidrs = [\"198.18.9.0/24\"]\n").unwrap();
        let t = c.cidr_table();
        assert!(t.contains(&("198.18.0.0/16".parse().unwrap(), true)));
        assert!(t.contains(&("198.18.9.0/24".parse().unwrap(), false)));
    }

    #[test]
    fn signal_keys_are_validated_and_reach_the_kernel_config() {
        for (text, key) in [
            ("dns_events_bytes = 5000", "maps.dns_events_bytes"),
            ("stratum_events_bytes = 1024", "maps.stratum_events_bytes"),
            ("stratum_packets = 0", "maps.stratum_packets"),
            ("dns_samples_per_sec = 200000", "maps.dns_samples_per_sec"),
            ("dns_rate_entries = 1", "maps.dns_rate_entries"),
        ] {
            let c = Config::parse(&format!("[maps]\n{text}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = Config::parse("[maps]\ndns_samples_per_sec = 0\nstratum_packets = 3\n").unwrap();
        c.validate().unwrap();
        let k = c.maps.signal_config();
        assert_eq!((k.dns_samples_per_sec, k.stratum_packets), (0, 3));
        assert!(
            Config::parse("[maps]\nstratum_packet = 3\n").is_err(),
            "unknown key"
        );
    }
}
