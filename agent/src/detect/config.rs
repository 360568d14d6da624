//! `[detect]`: windows, baselines and the eight detectors' thresholds.
//! Every key is optional; the defaults are what the README documents.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Invalid `[detect]` value: the key, the value and what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: detect.{key} = {value}: {why}")]
pub struct DetectConfigError {
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

/// `[detect]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run baselines and detectors in `tollgate run`.
    pub enabled: bool,
    /// Length of one per-pod window of features (1s..10m).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// A class may alert (baseline detectors) only after this many trained
    /// windows ...
    pub learning_windows: u64,
    /// ... and this long since its first window.
    #[serde(with = "humantime_serde")]
    pub learning_duration: Duration,
    /// Sliding horizon of the per-feature quantiles.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// The horizon is a ring of this many histograms (2..=168); the oldest
    /// one is dropped as a whole.
    pub horizon_buckets: usize,
    /// The class quantile a window is compared with (0.5..1).
    pub quantile: f64,
    /// A firing finding resolves after this many quiet windows of its pod.
    pub resolve_after: u32,
    /// How often `tollgate run` writes the baselines to the state dir (also
    /// on shutdown).
    #[serde(with = "humantime_serde")]
    pub save_interval: Duration,
    /// Components of the per-class Gaussian mixture (1..=8).
    pub gmm_components: usize,
    /// Refit the mixture after this many new trained windows of the class.
    pub gmm_refit_windows: u64,
    /// Feature vectors kept per class to fit the mixture on (newest kept).
    pub gmm_reservoir: usize,
    /// A window is unlike its class when its log-likelihood is below this
    /// quantile of the training windows' log-likelihoods ...
    pub gmm_quantile: f64,
    /// ... minus this margin (nats).
    pub gmm_margin: f64,

    /// exfil.volume: external egress above `volume_factor` x the class
    /// quantile ...
    pub volume_factor: f64,
    /// ... and above this rate.
    pub volume_min_bytes_per_s: f64,
    /// exfil.new_destination: bytes a pod sent to one prefix (/24, /48) the
    /// class never used before it fires.
    pub new_destination_min_bytes: u64,
    /// After learning, a new prefix joins the class's set once this many
    /// distinct pods of the class used it without a finding.
    pub promote_pods: usize,
    /// Prefixes remembered per class; beyond it new prefixes are counted
    /// (`dests_dropped`) and treated as new.
    pub max_prefixes: usize,
    /// exfil.slow_drip: cumulative bytes per (pod, prefix) over this horizon ...
    #[serde(with = "humantime_serde")]
    pub drip_horizon: Duration,
    /// ... above `drip_factor` x the most the class ever sent there ...
    pub drip_factor: f64,
    /// ... and above this many bytes.
    pub drip_min_bytes: u64,
    /// exfil.storage: shared-storage writes above `storage_factor` x the
    /// class quantile ...
    pub storage_factor: f64,
    /// ... and above this rate.
    pub storage_min_bytes_per_s: f64,
    /// exfil.storage (read-then-send): at least this many bytes read from
    /// storage in the window beyond the class's median read rate ...
    pub read_send_min_bytes: u64,
    /// ... and external bytes sent / those extra bytes read within
    /// [read_send_min_ratio, read_send_max_ratio], with external egress
    /// above the class quantile.
    pub read_send_min_ratio: f64,
    pub read_send_max_ratio: f64,
    /// exfil.dns_tunnel: all three together: query rate above
    /// `dns_factor` x class quantile and above `dns_min_queries_per_s`,
    pub dns_factor: f64,
    pub dns_min_queries_per_s: f64,
    /// mean query-name length above the class quantile and this,
    pub dns_min_name_len: f64,
    /// and mean label entropy (bits per character) above this.
    pub dns_min_entropy: f64,
    /// mining.profile: CPU used / limit at or above this ...
    pub profile_cpu_fraction: f64,
    /// ... for this many consecutive windows ...
    pub profile_windows: u32,
    /// ... with at most this many external peers ...
    pub profile_max_peers: u64,
    /// ... sending at most this rate in total ...
    pub profile_max_bytes_per_s: f64,
    /// ... at least one of them open this long ...
    #[serde(with = "humantime_serde")]
    pub profile_min_conn_age: Duration,
    /// ... and the class does not normally run near its limit (its quantile
    /// of CPU / limit is below 0.75 x profile_cpu_fraction) or the window is
    /// unlike the class (mixture). Pods without a CPU limit are measured
    /// against this many cores.
    pub profile_unlimited_cores: f64,
    /// mining.pool_port: well-known mining pool ports (low severity alone).
    pub pool_ports: Vec<u16>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(10),
            learning_windows: 360,
            learning_duration: Duration::from_secs(3600),
            horizon: Duration::from_secs(24 * 3600),
            horizon_buckets: 24,
            quantile: 0.99,
            resolve_after: 6,
            save_interval: Duration::from_secs(300),
            gmm_components: 3,
            gmm_refit_windows: 360,
            gmm_reservoir: 1024,
            gmm_quantile: 0.001,
            gmm_margin: 5.0,
            volume_factor: 4.0,
            volume_min_bytes_per_s: 262_144.0,
            new_destination_min_bytes: 8 << 20,
            promote_pods: 3,
            max_prefixes: 4096,
            drip_horizon: Duration::from_secs(6 * 3600),
            drip_factor: 2.0,
            drip_min_bytes: 64 << 20,
            storage_factor: 4.0,
            storage_min_bytes_per_s: 1_048_576.0,
            read_send_min_bytes: 8 << 20,
            read_send_min_ratio: 0.7,
            read_send_max_ratio: 1.5,
            dns_factor: 4.0,
            dns_min_queries_per_s: 5.0,
            dns_min_name_len: 40.0,
            dns_min_entropy: 3.5,
            profile_cpu_fraction: 0.9,
            profile_windows: 6,
            profile_max_peers: 3,
            profile_max_bytes_per_s: 65_536.0,
            profile_min_conn_age: Duration::from_secs(60),
            profile_unlimited_cores: 1.0,
            pool_ports: vec![3333, 4444, 5555, 7777, 14444, 45700],
        }
    }
}

impl DetectConfig {
    /// Checks every value; the error names the key and the allowed range.
    pub fn validate(&self) -> Result<(), DetectConfigError> {
        let bad = |key: &'static str, value: String, why: &str| {
            Err(DetectConfigError {
                key,
                value,
                why: why.into(),
            })
        };
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(600) {
            return bad("window", dur(self.window), "must be between 1s and 10m");
        }
        if self.horizon < self.window * 2 {
            return bad("horizon", dur(self.horizon), "must be at least 2 windows");
        }
        if !(2..=168).contains(&self.horizon_buckets) {
            return bad(
                "horizon_buckets",
                self.horizon_buckets.to_string(),
                "must be between 2 and 168",
            );
        }
        if self.save_interval < Duration::from_secs(1) {
            return bad("save_interval", dur(self.save_interval), "must be >= 1s");
        }
        if self.drip_horizon < self.window {
            return bad(
                "drip_horizon",
                dur(self.drip_horizon),
                "must be at least one window",
            );
        }
        if self.resolve_after == 0 {
            return bad("resolve_after", "0".into(), "must be at least 1 window");
        }
        if self.profile_windows == 0 {
            return bad("profile_windows", "0".into(), "must be at least 1 window");
        }
        if !(1..=8).contains(&self.gmm_components) {
            return bad(
                "gmm_components",
                self.gmm_components.to_string(),
                "must be between 1 and 8",
            );
        }
        if self.gmm_reservoir < 16 * self.gmm_components || self.gmm_reservoir > 100_000 {
            return bad(
                "gmm_reservoir",
                self.gmm_reservoir.to_string(),
                "must be between 16 x gmm_components and 100000",
            );
        }
        if self.gmm_refit_windows == 0 {
            return bad("gmm_refit_windows", "0".into(), "must be at least 1");
        }
        if self.promote_pods == 0 || self.max_prefixes == 0 {
            return bad(
                "promote_pods",
                format!("{} (max_prefixes {})", self.promote_pods, self.max_prefixes),
                "promote_pods and max_prefixes must be at least 1",
            );
        }
        for (key, v, lo, hi) in [
            ("quantile", self.quantile, 0.5, 1.0),
            ("gmm_quantile", self.gmm_quantile, 0.0, 0.5),
            ("profile_cpu_fraction", self.profile_cpu_fraction, 0.05, 1.0),
        ] {
            if !(v > lo && v <= hi) {
                return bad(key, v.to_string(), &format!("must be in ({lo}, {hi}]"));
            }
        }
        for (key, v) in [
            ("gmm_margin", self.gmm_margin),
            ("volume_factor", self.volume_factor),
            ("volume_min_bytes_per_s", self.volume_min_bytes_per_s),
            ("drip_factor", self.drip_factor),
            ("storage_factor", self.storage_factor),
            ("storage_min_bytes_per_s", self.storage_min_bytes_per_s),
            ("read_send_min_ratio", self.read_send_min_ratio),
            ("dns_factor", self.dns_factor),
            ("dns_min_queries_per_s", self.dns_min_queries_per_s),
            ("dns_min_name_len", self.dns_min_name_len),
            ("dns_min_entropy", self.dns_min_entropy),
            ("profile_max_bytes_per_s", self.profile_max_bytes_per_s),
            ("profile_unlimited_cores", self.profile_unlimited_cores),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(key, v.to_string(), "must be a finite number >= 0");
            }
        }
        if self.volume_factor < 1.0 || self.drip_factor < 1.0 || self.storage_factor < 1.0 {
            return bad(
                "volume_factor",
                format!(
                    "{} (drip_factor {}, storage_factor {})",
                    self.volume_factor, self.drip_factor, self.storage_factor
                ),
                "factors must be >= 1 (a multiple of the class baseline)",
            );
        }
        if self.read_send_max_ratio < self.read_send_min_ratio {
            return bad(
                "read_send_max_ratio",
                self.read_send_max_ratio.to_string(),
                "must be >= read_send_min_ratio",
            );
        }
        if self.profile_unlimited_cores <= 0.0 {
            return bad(
                "profile_unlimited_cores",
                self.profile_unlimited_cores.to_string(),
                "must be > 0",
            );
        }
        if self.pool_ports.contains(&0) {
            return bad("pool_ports", "0".into(), "ports are 1..65535");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        DetectConfig::default().validate().unwrap();
        let c = DetectConfig {
            window: Duration::from_millis(10),
            ..DetectConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("detect.window"), "{e}");
        let c = DetectConfig {
            quantile: 1.5,
            ..DetectConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("detect.quantile")
        );
        let c = DetectConfig {
            pool_ports: vec![0],
            ..DetectConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("pool_ports"));
    }

    #[test]
    fn detect_section_in_the_config_file() {
        use crate::config::Config;
        let c =
            Config::parse("[detect]\nwindow = \"1s\"\nlearning_windows = 5\npool_ports = [3333]\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.detect.window, Duration::from_secs(1));
        assert_eq!(c.detect.pool_ports, [3333]);
        let e = Config::parse("[detect]\nwindw = \"1s\"\n").unwrap_err();
        assert!(e.contains("windw"), "{e}");
        let c = Config::parse("[detect]\nhorizon = \"1s\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("detect.horizon"), "{e}");
    }
}
