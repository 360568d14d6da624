//! The numbers a class baseline models, derived from one window. Counts
//! and bytes become per-second rates so a baseline survives a change of
//! `detect.window`; means and the CPU fraction are taken as they are.

use crate::collect::WindowSample;

/// Number of modelled features.
pub const N: usize = 12;

/// Index of each modelled feature in a [`Vector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Feature {
    EgressExternalBytes,
    EgressExternalPackets,
    EgressInternalBytes,
    IngressBytes,
    NewConnections,
    DistinctDestinations,
    StorageWriteBytes,
    StorageReadBytes,
    DnsQueries,
    DnsMeanNameLen,
    DnsLabelEntropy,
    CpuFraction,
}

impl Feature {
    pub const ALL: [Feature; N] = [
        Feature::EgressExternalBytes,
        Feature::EgressExternalPackets,
        Feature::EgressInternalBytes,
        Feature::IngressBytes,
        Feature::NewConnections,
        Feature::DistinctDestinations,
        Feature::StorageWriteBytes,
        Feature::StorageReadBytes,
        Feature::DnsQueries,
        Feature::DnsMeanNameLen,
        Feature::DnsLabelEntropy,
        Feature::CpuFraction,
    ];

    /// Name in evidence (the [`crate::collect::Features`] field it comes
    /// from; rates say so in their unit).
    pub fn name(self) -> &'static str {
        match self {
            Feature::EgressExternalBytes => "egress_external_bytes",
            Feature::EgressExternalPackets => "egress_external_packets",
            Feature::EgressInternalBytes => "egress_internal_bytes",
            Feature::IngressBytes => "ingress_bytes",
            Feature::NewConnections => "new_connections",
            Feature::DistinctDestinations => "distinct_destinations",
            Feature::StorageWriteBytes => "storage_write_bytes",
            Feature::StorageReadBytes => "storage_read_bytes",
            Feature::DnsQueries => "dns_queries",
            Feature::DnsMeanNameLen => "dns_mean_name_len",
            Feature::DnsLabelEntropy => "dns_label_entropy",
            Feature::CpuFraction => "cpu_fraction_of_limit",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Feature::EgressExternalBytes
            | Feature::EgressInternalBytes
            | Feature::IngressBytes
            | Feature::StorageWriteBytes
            | Feature::StorageReadBytes => "bytes/s",
            Feature::EgressExternalPackets => "packets/s",
            Feature::NewConnections | Feature::DnsQueries => "count/s",
            Feature::DistinctDestinations => "count",
            Feature::DnsMeanNameLen => "bytes",
            Feature::DnsLabelEntropy => "bits/char",
            Feature::CpuFraction => "fraction",
        }
    }

    /// Histograms hold integers: byte rates to the byte, the rest to a
    /// thousandth.
    pub fn scale(self) -> f64 {
        match self.unit() {
            "bytes/s" => 1.0,
            _ => 1000.0,
        }
    }
}

pub type Vector = [f64; N];

/// Window length in seconds (at least 1 ms, so a malformed recorded window
/// cannot divide by zero).
pub fn window_secs(s: &WindowSample) -> f64 {
    s.end
        .duration_since(s.start)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
        .max(0.001)
}

/// CPU used as a fraction of the pod's limit; pods without a limit are
/// measured against `unlimited_cores`.
pub fn cpu_fraction(s: &WindowSample, unlimited_cores: f64) -> f64 {
    let cores = s.features.cpu_seconds / window_secs(s);
    cores
        / s.features
            .cpu_limit_cores
            .unwrap_or(unlimited_cores)
            .max(0.001)
}

/// The modelled features of one window.
pub fn vector(s: &WindowSample, unlimited_cores: f64) -> Vector {
    let f = &s.features;
    let secs = window_secs(s);
    let rate = |v: u64| v as f64 / secs;
    [
        rate(f.egress_external_bytes),
        rate(f.egress_external_packets),
        rate(f.egress_internal_bytes),
        rate(f.ingress_bytes),
        rate(f.new_connections),
        f.distinct_destinations as f64,
        rate(f.storage_write_bytes),
        rate(f.storage_read_bytes),
        rate(f.dns_queries),
        f.dns_mean_name_len,
        f.dns_label_entropy,
        cpu_fraction(s, unlimited_cores),
    ]
}

/// The mixture works on log1p-scaled features: bytes span orders of
/// magnitude, and a Gaussian fits their logarithm far better.
pub fn log_scaled(v: &Vector) -> [f32; N] {
    let mut out = [0f32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = x.max(0.0).ln_1p() as f32;
    }
    out
}
