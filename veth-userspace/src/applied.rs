//! What `up` last finished, kept next to the description in
//! `/run/vethctl/<topology>/applied.json`: the next `up` redoes only the
//! pods whose wiring changed, so adding one pod does not touch the others.
//!
//! The record is trusted only as far as it can be checked from the host in
//! one link dump: a pod is skipped when its recorded wiring matches and its
//! namespace, host-side veth (ifindex, up, MTU, MAC, bridge port) are the
//! ones it was wired on. Drift inside a pod's namespace is only seen by
//! `up --repair`, which ignores the record.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    hash::{Hash, Hasher},
    io,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    model::{Mode, Pod, Topology},
    state::StateDir,
};

const APPLIED_FILE: &str = "applied.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Digest of the programs loaded and pinned (object and settings).
    pub programs: Option<String>,
    /// [`masquerade_fingerprint`] of the nf_tables table written.
    pub masquerade: Option<String>,
    /// Pods wired completely, by name.
    pub pods: BTreeMap<String, AppliedPod>,
    /// Pods whose `eth0` may still carry mode xdp's offloads (GRO on, tx
    /// checksum off): added before they are set, removed once reset.
    pub xdp_offloads: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPod {
    /// [`pod_fingerprint`] of the wiring it got.
    pub fingerprint: String,
    /// The host-side veth and the namespace it was wired on: a recreated
    /// one (new ifindex or inode) is a new pod to wire.
    pub host_ifindex: u32,
    pub netns_inode: u64,
}

impl Applied {
    pub fn load(state: &StateDir) -> Result<Applied> {
        let path = state.path().join(APPLIED_FILE);
        match fs::read_to_string(&path) {
            // An unreadable record (older vethctl, torn write) only means
            // every pod is wired again.
            Ok(text) => Ok(serde_json::from_str(&text).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state: &StateDir) -> Result<()> {
        crate::state::write_atomically(state.path(), APPLIED_FILE, &serde_json::to_vec(self)?)
    }
}

/// What the masquerade table is made of.
pub fn masquerade_fingerprint(topology: &Topology) -> String {
    let cluster = topology
        .node
        .as_ref()
        .map(|n| format!("|{}|{:?}", n.cluster_cidr, n.cluster_cidr6))
        .unwrap_or_default();
    digest(&format!(
        "{:?}|{}|{:?}|{}{cluster}",
        topology.uplink,
        topology.pod_cidr,
        topology.pod_cidr6,
        topology.object_prefix()
    ))
}

/// A short hex digest of `value`: stable within one vethctl build, which
/// is all a record needs (another build redoes everything once).
pub fn digest(value: &impl Hash) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Everything `configure pod` derives a pod's wiring from: the pod itself
/// and the topology settings that shape its addresses, routes and port.
pub fn pod_fingerprint(topology: &Topology, pod: &Pod) -> String {
    digest(&format!(
        "{pod:?}|{}|{}|{}|{:?}|{}|{:?}|{}",
        topology.mode,
        topology.rps,
        topology.pod_cidr,
        topology.pod_cidr6,
        topology.host_address,
        topology.host_address6,
        if topology.mode == Mode::Bridge {
            topology.bridge.as_str()
        } else {
            ""
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(extra: &str) -> Topology {
        Topology::from_toml(&format!(
            "name = \"t\"\npod_cidr = \"10.1.0.0/24\"\n{extra}\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn fingerprint_follows_what_shapes_the_wiring() {
        let t = topology("");
        let a = pod_fingerprint(&t, &t.pods[0]);
        assert_eq!(a, pod_fingerprint(&t, &t.pods[0]), "stable");
        assert_ne!(a, pod_fingerprint(&t, &t.pods[1]), "per pod");
        let routed = topology("mode = \"routed\"");
        assert_ne!(a, pod_fingerprint(&routed, &routed.pods[0]), "mode");
        let mtu = topology("mtu = 1400");
        assert_ne!(a, pod_fingerprint(&mtu, &mtu.pods[0]), "mtu");
        let rps = topology("rps = true");
        assert_ne!(a, pod_fingerprint(&rps, &rps.pods[0]), "rps");
        let v6 = topology("pod_cidr6 = \"fd00:1::/64\"");
        assert_ne!(a, pod_fingerprint(&v6, &v6.pods[0]), "dual stack");
        // Settings that do not touch a pod's wiring do not redo it.
        let uncounted = topology("counters = false");
        assert_eq!(a, pod_fingerprint(&uncounted, &uncounted.pods[0]));
    }

    #[test]
    fn record_round_trips() {
        let dir = std::env::temp_dir().join(format!("vethctl-applied-{}", std::process::id()));
        let state = StateDir::at(&dir);
        assert_eq!(Applied::load(&state).unwrap(), Applied::default());
        let mut applied = Applied {
            programs: Some("p".into()),
            ..Applied::default()
        };
        applied.pods.insert(
            "a".into(),
            AppliedPod {
                fingerprint: "f".into(),
                host_ifindex: 7,
                netns_inode: 9,
            },
        );
        applied.xdp_offloads.insert("a".into());
        applied.save(&state).unwrap();
        assert_eq!(Applied::load(&state).unwrap(), applied);
        fs::write(dir.join(APPLIED_FILE), "not json").unwrap();
        assert_eq!(Applied::load(&state).unwrap(), Applied::default());
        fs::remove_dir_all(&dir).unwrap();
    }
}
