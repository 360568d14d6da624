//! The pinned egress-policy maps: cgroup -> policy id, the allowlist trie
//! and the per-destination denial counters.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use ipnet::IpNet;
use tollgate_ebpf::{AllowPorts, DeniedStats, POLICY_ID_BITS, PeerKey, PolicyAddr, map};

use super::{PinDir, Result, check_pins, map_err, open_pinned};

/// LPM key of `net` under policy `id`.
pub fn allow_key(id: u32, net: &IpNet) -> Key<PolicyAddr> {
    let k = super::lpm_key(net);
    Key::new(
        POLICY_ID_BITS + k.prefix_len(),
        PolicyAddr {
            policy: id.to_be_bytes(),
            addr: k.data().addr,
        },
    )
}

pub struct PolicyMaps {
    cgroups: HashMap<MapData, u64, u32>,
    gate: Array<MapData, u32>,
    allow: LpmTrie<MapData, PolicyAddr, AllowPorts>,
    denied: HashMap<MapData, PeerKey, DeniedStats>,
}

impl PolicyMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        use aya::maps::Map;
        let open = |name: &'static str| open_pinned(pins, name);
        check_pins(pins)?;
        Ok(Self {
            cgroups: HashMap::try_from(Map::HashMap(open(map::POLICY_CGROUPS)?))
                .map_err(map_err(map::POLICY_CGROUPS))?,
            gate: Array::try_from(Map::Array(open(map::POLICY_GATE)?))
                .map_err(map_err(map::POLICY_GATE))?,
            allow: LpmTrie::try_from(Map::LpmTrie(open(map::POLICY_ALLOW)?))
                .map_err(map_err(map::POLICY_ALLOW))?,
            denied: HashMap::try_from(Map::LruHashMap(open(map::DENIED)?))
                .map_err(map_err(map::DENIED))?,
        })
    }

    /// Makes the allowlist trie exactly `wanted`. Entries are written
    /// before stale ones are removed, so a destination allowed before and
    /// after is never refused in between.
    pub fn set_allowlist(&mut self, wanted: &[(u32, IpNet, AllowPorts)]) -> Result<()> {
        let keys: Vec<(Key<PolicyAddr>, AllowPorts)> = wanted
            .iter()
            .map(|(id, net, ports)| (allow_key(*id, net), *ports))
            .collect();
        let current: Vec<Key<PolicyAddr>> = self.allow.keys().filter_map(|k| k.ok()).collect();
        for (k, v) in &keys {
            self.allow
                .insert(k, *v, 0)
                .map_err(map_err(map::POLICY_ALLOW))?;
        }
        for k in current {
            let keep = keys.iter().any(|(w, _)| {
                w.prefix_len() == k.prefix_len()
                    && w.data().policy == k.data().policy
                    && w.data().addr == k.data().addr
            });
            if !keep {
                self.allow.remove(&k).map_err(map_err(map::POLICY_ALLOW))?;
            }
        }
        Ok(())
    }

    /// Makes cgroup -> policy exactly `wanted`; the gate follows (raised
    /// after the entries exist, lowered after they are gone). Returns
    /// (added or changed, removed).
    pub fn set_cgroups(&mut self, wanted: &BTreeMap<u64, u32>) -> Result<(usize, usize)> {
        let current: BTreeMap<u64, u32> = self.cgroups.iter().filter_map(|r| r.ok()).collect();
        let mut added = 0;
        for (id, p) in wanted {
            if current.get(id) != Some(p) {
                self.cgroups
                    .insert(id, p, 0)
                    .map_err(map_err(map::POLICY_CGROUPS))?;
                added += 1;
            }
        }
        let mut removed = 0;
        for id in current.keys().filter(|id| !wanted.contains_key(id)) {
            match self.cgroups.remove(id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => removed += 1,
                Err(e) => return Err(map_err(map::POLICY_CGROUPS)(e)),
            }
        }
        self.gate
            .set(0, wanted.len() as u32, 0)
            .map_err(map_err(map::POLICY_GATE))?;
        Ok((added, removed))
    }

    /// Cgroup -> policy id as the kernel has it.
    pub fn cgroups(&self) -> BTreeMap<u64, u32> {
        self.cgroups.iter().filter_map(|r| r.ok()).collect()
    }

    /// Every denial record.
    pub fn denied(&self) -> Vec<(PeerKey, DeniedStats)> {
        self.denied.iter().filter_map(|r| r.ok()).collect()
    }
}
