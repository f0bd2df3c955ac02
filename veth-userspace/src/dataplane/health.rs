//! The endpoints as the pinned maps hold them, and the two changes that
//! keep them true to the veths behind them: a pod whose veth is down is
//! not ready (frames for it go to the host stack), and a pod whose veth is
//! gone is forgotten (so its ifindex, reused by another interface, is
//! never a redirect target).

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{Array, DevMapHash, HashMap, Map, MapData};
use veth_common::{
    names::{MAP_DEVMAP, MAP_ENDPOINTS, MAP_ENDPOINTS6, MAP_PODS, MAP_SLOTS},
    Endpoint, PodIdentity,
};

use super::{ignore_missing, Pins};

/// A pod with a slot: what the programs check its frames against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedPod {
    pub host_ifindex: u32,
    pub slot: u32,
    pub identity: PodIdentity,
}

impl MappedPod {
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.identity.ipv4)
    }

    /// The slot still names this veth (it was not cleared or reassigned).
    pub fn current(&self) -> bool {
        self.identity.host_ifindex == self.host_ifindex
    }
}

/// The pinned maps of one topology, opened for endpoint upkeep.
pub struct EndpointMaps {
    pins: Pins,
    slots: HashMap<MapData, u32, u32>,
    pods: Array<MapData, PodIdentity>,
}

impl EndpointMaps {
    /// `None` if the topology has no pinned maps (not up, or going down).
    pub fn open(topology: &str) -> Result<Option<EndpointMaps>> {
        let pins = Pins::new(topology);
        if !pins.map(MAP_SLOTS).exists() {
            return Ok(None);
        }
        let slots = HashMap::try_from(Map::HashMap(open(&pins, MAP_SLOTS)?))?;
        let pods = Array::try_from(Map::Array(open(&pins, MAP_PODS)?))?;
        Ok(Some(EndpointMaps { pins, slots, pods }))
    }

    /// Every pod with a slot.
    pub fn pods(&self) -> Result<Vec<MappedPod>> {
        let mut pods = Vec::new();
        for entry in self.slots.iter() {
            let (host_ifindex, slot) = entry.context("reading pod slots")?;
            pods.push(MappedPod {
                host_ifindex,
                slot,
                identity: self.pods.get(&slot, 0).context("reading a pod identity")?,
            });
        }
        Ok(pods)
    }

    /// The pod behind `host_ifindex`, if it has a slot.
    pub fn pod(&self, host_ifindex: u32) -> Result<Option<MappedPod>> {
        let slot = match self.slots.get(&host_ifindex, 0) {
            Ok(slot) => slot,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).context("reading a pod slot"),
        };
        Ok(Some(MappedPod {
            host_ifindex,
            slot,
            identity: self.pods.get(&slot, 0).context("reading a pod identity")?,
        }))
    }

    /// Marks `pod` ready (or not) for redirected frames, unless its slot has
    /// moved on since it was read. True if this changed anything.
    pub fn set_ready(&mut self, pod: &MappedPod, ready: bool) -> Result<bool> {
        let now = self.pods.get(&pod.slot, 0)?;
        if now.host_ifindex != pod.host_ifindex || (now.ready != 0) == ready {
            return Ok(false);
        }
        let identity = PodIdentity {
            ready: u8::from(ready),
            ..now
        };
        self.pods
            .set(pod.slot, identity, 0)
            .context("writing a pod's readiness")?;
        Ok(true)
    }

    /// Forgets the pod behind `pod.host_ifindex`: its identity first (which
    /// makes every endpoint of it inert at once), then its endpoints, its
    /// DEVMAP entry and its slot. Its counters stay until the slot is given
    /// to another pod.
    pub fn forget(&mut self, pod: &MappedPod) -> Result<()> {
        // Only the identity as it was read: one rewritten since is not ours
        // to clear.
        if self.pods.get(&pod.slot, 0)? == pod.identity {
            self.pods
                .set(pod.slot, PodIdentity::default(), 0)
                .context("clearing a pod identity")?;
        }
        remove_endpoints::<u32>(&self.pins, MAP_ENDPOINTS, pod.host_ifindex)?;
        remove_endpoints::<[u8; 16]>(&self.pins, MAP_ENDPOINTS6, pod.host_ifindex)?;
        let mut devmap = DevMapHash::try_from(Map::DevMapHash(open(&self.pins, MAP_DEVMAP)?))?;
        ignore_missing(devmap.remove(pod.host_ifindex)).context("removing a DEVMAP entry")?;
        ignore_missing(self.slots.remove(&pod.host_ifindex)).context("removing a pod slot")?;
        Ok(())
    }
}

/// IPv4 endpoints by address, as the programs look them up.
pub fn ipv4_endpoints(topology: &str) -> Result<BTreeMap<Ipv4Addr, Endpoint>> {
    let pins = Pins::new(topology);
    let map = HashMap::<_, u32, Endpoint>::try_from(Map::HashMap(open(&pins, MAP_ENDPOINTS)?))?;
    let mut endpoints = BTreeMap::new();
    for entry in map.iter() {
        let (key, endpoint) = entry.context("reading endpoints")?;
        endpoints.insert(Ipv4Addr::from(key.to_ne_bytes()), endpoint);
    }
    Ok(endpoints)
}

/// The host-side ifindexes in the DEVMAP: the kernel removes a device's
/// entry when the device goes, so an endpoint whose ifindex is missing here
/// is never a redirect target.
pub fn devmap_ifindexes(topology: &str) -> Result<std::collections::BTreeSet<u32>> {
    let pins = Pins::new(topology);
    let devmap = DevMapHash::try_from(Map::DevMapHash(open(&pins, MAP_DEVMAP)?))?;
    Ok(devmap.keys().filter_map(|k| k.ok()).collect())
}

fn remove_endpoints<K: aya::Pod + Ord>(pins: &Pins, name: &str, host_ifindex: u32) -> Result<()> {
    let mut map = HashMap::<_, K, Endpoint>::try_from(Map::HashMap(open(pins, name)?))?;
    let stale: Vec<K> = map
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, endpoint)| endpoint.host_ifindex == host_ifindex)
        .map(|(key, _)| key)
        .collect();
    for key in stale {
        ignore_missing(map.remove(&key)).with_context(|| format!("removing an entry of {name}"))?;
    }
    Ok(())
}

fn open(pins: &Pins, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}
