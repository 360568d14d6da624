//! The DNS-sample and stratum ring buffers, opened from their pins.
//! Kept apart from [`super::PinnedMaps`] so readers that only want
//! counters (benchmarks, `tollgate top` without an agent) leave these
//! events to the agent.

use aya::maps::{Map, MapData, RingBuf};
use tollgate_ebpf::{DnsEvent, StratumEvent, map};

use super::{PinDir, Result, check_pins, map_err, open_pinned, sys};

pub struct SignalMaps {
    dns: RingBuf<MapData>,
    stratum: RingBuf<MapData>,
}

impl SignalMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        check_pins(pins)?;
        let open = |name: &'static str| -> Result<RingBuf<MapData>> {
            RingBuf::try_from(Map::RingBuf(open_pinned(pins, name)?)).map_err(map_err(name))
        };
        Ok(Self {
            dns: open(map::DNS_EVENTS)?,
            stratum: open(map::STRATUM_EVENTS)?,
        })
    }

    /// Drains up to `max` sampled DNS queries.
    pub fn drain_dns(&mut self, max: usize) -> Vec<DnsEvent> {
        drain(&mut self.dns, max)
    }

    /// Drains up to `max` stratum events.
    pub fn drain_stratum(&mut self, max: usize) -> Vec<StratumEvent> {
        drain(&mut self.stratum, max)
    }
}

fn drain<T: aya::Pod>(rb: &mut RingBuf<MapData>, max: usize) -> Vec<T> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some(item) = rb.next() else {
            break;
        };
        if let Some(e) = sys::read_pod::<T>(&item) {
            out.push(e);
        }
    }
    out
}
