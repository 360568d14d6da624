//! The live evaluation's result table: per pod, detected or not, by which
//! detector and how fast; then precision, recall and false alerts per
//! benign pod-hour.

use std::{collections::BTreeMap, time::Instant};

use tollgate::detect::Finding;
use tollgate_tests::pod::Pod;

use crate::{Attack, Role, unix_ms};

/// Findings seen during the detection phase.
#[derive(Default)]
pub struct Seen {
    /// First finding per pod: (detector, seconds since attack start, unix ms).
    pub first: BTreeMap<u64, (String, f64, u128)>,
    /// Every (detector, cgroup) that fired.
    pub keys: BTreeMap<(String, u64), ()>,
}

impl Seen {
    /// Records a finding: its (detector, cgroup) key, and the pod's first.
    pub fn note(&mut self, f: &Finding, t0: Instant) {
        let id = f.subject.cgroup_id;
        self.keys.insert((f.detector.as_str().to_owned(), id), ());
        self.first.entry(id).or_insert_with(|| {
            (
                f.detector.as_str().to_owned(),
                t0.elapsed().as_secs_f64(),
                unix_ms(),
            )
        });
    }
}

pub struct Context {
    /// When the stratum client sent its first share (unix ms).
    pub first_share: Option<u128>,
    /// Whether the DNS tunnel was iodine (else tg-signal's names).
    pub iodine: bool,
    /// Length of the detection phase, hours.
    pub phase_h: f64,
}

/// Prints the table; true when every attack was detected and no benign
/// pod alerted.
pub fn table(roles: &[&Role], pods: &[&Pod], seen: &Seen, cx: Context) -> bool {
    println!(
        "\n{:<10} {:<9} {:<40} {:<10} {:<22} time to detect",
        "pod", "label", "scenario", "detected", "detector"
    );
    let (mut tp, mut attacks_n, mut detected_n, mut benign_alerts, mut benign_pods) =
        (0, 0, 0, 0, 0);
    for (r, p) in roles.iter().zip(pods) {
        let id = p.cgroup.id();
        let n_keys = seen.keys.keys().filter(|(_, c)| *c == id).count();
        let label = if r.attack.is_some() {
            "attack"
        } else {
            "benign"
        };
        let scenario = if r.attack == Some(Attack::DnsTunnel) && !cx.iodine {
            "DNS tunnel (random base32 names)"
        } else {
            r.scenario
        };
        let (det, who, ttd) = match seen.first.get(&id) {
            Some((d, s, ms)) => {
                let ttd = if r.attack == Some(Attack::Stratum)
                    && let Some(fs) = cx.first_share
                {
                    let d = (*ms as f64 - fs as f64) / 1000.0;
                    let rel = if d < 0.0 { "before" } else { "after" };
                    format!("{s:.1}s after start, {:.1}s {rel} the first share", d.abs())
                } else {
                    format!("{s:.1}s")
                };
                ("yes", d.clone(), ttd)
            }
            None => ("no", "-".into(), "-".into()),
        };
        // Every other detector that fired on the pod during the phase.
        let also: Vec<&str> = seen
            .keys
            .keys()
            .filter(|(d, c)| *c == id && *d != who)
            .map(|(d, _)| d.as_str())
            .collect();
        let ttd = if also.is_empty() {
            ttd
        } else {
            format!("{ttd} (later also {})", also.join(", "))
        };
        if r.attack.is_some() {
            attacks_n += 1;
            tp += n_keys;
            detected_n += usize::from(seen.first.contains_key(&id));
        } else {
            benign_pods += 1;
            benign_alerts += n_keys;
        }
        println!(
            "{:<10} {:<9} {:<40} {:<10} {:<22} {}",
            p.name, label, scenario, det, who, ttd
        );
    }
    let all = tp + benign_alerts;
    let precision = if all == 0 {
        1.0
    } else {
        tp as f64 / all as f64
    };
    println!(
        "\nprecision {precision:.2} ({tp} of {all} findings on attack pods), recall {:.2} ({detected_n} of {attacks_n} attacks), false alerts per benign pod-hour {:.1} ({benign_alerts} over {benign_pods} pods x {:.3} h)",
        detected_n as f64 / attacks_n.max(1) as f64,
        benign_alerts as f64 / (benign_pods as f64 * cx.phase_h).max(1e-9),
        cx.phase_h
    );
    detected_n == attacks_n && benign_alerts == 0
}
