//! Query-name statistics of sampled DNS names.

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Label entropy of a query name: the entropy of its labels below the
/// registered domain (all but the last two), concatenated; of all labels
/// for names with at most two. Tunnels put their payload there; ordinary
/// names have short, low-entropy labels.
pub fn label_entropy(name: &str) -> f64 {
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    let sub = if labels.len() > 2 {
        &labels[..labels.len() - 2]
    } else {
        &labels[..]
    };
    entropy(&sub.concat())
}
