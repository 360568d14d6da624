//! CPU time and limit of a cgroup (cgroup v2 cpu controller files).

/// Reads `usage_usec` from a cgroup's cpu.stat.
pub fn cpu_usage_usec(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the limit in cores from cpu.max ("max 100000" = unlimited).
pub fn cpu_limit_cores(dir: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}
