//! Endpoints a container runtime attaches (CNI ADD), one at a time and
//! concurrently, beside the pods of a topology file.
//!
//! An endpoint lives in a **network** (a topology whose description comes
//! from the CNI configuration, see [`crate::cni`]): the network's objects
//! (programs, maps, node address, masquerade, unreachable routes, bridge)
//! are made by `up` holding the network's lock exclusively; an endpoint's
//! own objects (its veth pair, host routes, links to the programs, map
//! entries, address) are made and removed here with it shared, so many ADDs
//! proceed at once and none ever touches another endpoint.
//!
//! Each endpoint has its own record, `/run/vethctl/<network>/endpoints/
//! <ifname>@<container id>.json`, written atomically *before* anything of
//! it is made: it is the proof of ownership DEL and GC act on (a link must
//! also carry the network's mark), and the list `status`, `stats`, the
//! agent and `mode set` see. The runtime's namespace is never created or
//! deleted by vethctl.

pub mod wire;

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use veth_common::GATEWAY_MAC;

use crate::{
    model::{pod_mac, K8sPod, Pod, TcAttach, Topology, IFNAME_MAX},
    state::{write_atomically, StateDir},
};

const ENDPOINTS_DIR: &str = "endpoints";
/// Where the attachments' locks are (see [`Store::lock`]).
const LOCKS_DIR: &str = "endpoint-locks";
/// Host-side veth names of runtime endpoints start with this (Calico's are
/// `cali…`, Cilium's `lxc…`).
pub const HOST_VETH_PREFIX: &str = "vc";

/// Where an endpoint's addresses came from, so DEL gives them back there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum AddressSource {
    /// vethctl's own pool ([`crate::ipam::Pool`]), keyed by [`Record::key`].
    Builtin,
    /// A delegated IPAM plugin (`host-local`), called again for DEL and GC.
    Delegated { plugin: String },
}

/// One runtime endpoint, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    /// The runtime's namespace, by path (`/var/run/netns/cni-…`).
    pub netns: String,
    pub host_veth: String,
    /// Set once the veth exists.
    #[serde(default)]
    pub host_ifindex: Option<u32>,
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
    #[serde(default)]
    pub k8s: Option<K8sPod>,
    pub addresses: AddressSource,
    /// The runtime gave this pod hostPorts (`runtimeConfig.portMappings`,
    /// DNATed by chained `portmap`) or bandwidth limits (`runtimeConfig.
    /// bandwidth`, qdiscs of chained `bandwidth` on its host veth): its
    /// frames, both ways, take the host stack, where conntrack un-NATs
    /// replies and the qdiscs shape them (see `PodIdentity::host_path`).
    #[serde(default)]
    pub host_path: bool,
    /// How its TC programs are attached (records before `clsact` existed
    /// say nothing: TCX).
    #[serde(default)]
    pub tc_attach: TcAttach,
}

impl Record {
    /// The endpoint's identity in the network: what IPAM allocations and
    /// GC's valid attachments are keyed by.
    pub fn key(&self) -> String {
        key(&self.container_id, &self.ifname)
    }

    /// The endpoint as the rest of vethctl knows pods.
    pub fn pod(&self) -> Pod {
        Pod {
            name: pod_name(&self.container_id, &self.ifname),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            host_veth: self.host_veth.clone(),
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            mtu: self.mtu,
            mac: pod_mac(self.ipv4),
            gateway_mac: GATEWAY_MAC,
            k8s: self.k8s.clone(),
            host_path: self.host_path,
        }
    }
}

/// `<ifname>@<container id>`: unique per attachment (a container id never
/// holds `@`, so the last `@` splits it back).
pub fn key(container_id: &str, ifname: &str) -> String {
    format!("{ifname}@{container_id}")
}

/// The pod name `status` shows for an endpoint without a Kubernetes
/// identity: the container id's first 12 characters, as `crictl` and
/// `docker ps` show it, and the interface when it is not `eth0`.
pub fn pod_name(container_id: &str, ifname: &str) -> String {
    let short: String = container_id.chars().take(12).collect();
    if ifname == crate::model::POD_IFNAME {
        short
    } else {
        format!("{short}/{ifname}")
    }
}

/// The host-side veth of an attachment: [`HOST_VETH_PREFIX`] and 13 hex
/// digits of a hash of network, container id and interface (15 characters,
/// the kernel's limit). Stable across versions (FNV-1a, not std's hasher),
/// so a DEL after an upgrade still finds it.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [network, container_id, ifname].join("/").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let name = format!("{HOST_VETH_PREFIX}{:013x}", hash >> 12);
    debug_assert!(name.len() <= IFNAME_MAX);
    name
}

/// A record file that could not be read, and why.
pub type Unreadable = (PathBuf, anyhow::Error);

/// The records of one network's endpoints.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(network: &str) -> Store {
        Store::at(StateDir::new(network).path())
    }

    /// The records under `state_dir` (tests).
    pub fn at(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join(ENDPOINTS_DIR),
        }
    }

    fn file(key: &str) -> String {
        format!("{key}.json")
    }

    /// Records `record` (atomically, replacing an older record of it).
    pub fn save(&self, record: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).context("encoding an endpoint record")?;
        write_atomically(&self.dir, &Store::file(&record.key()), &json)
    }

    /// Attachment `key`'s lock, held until dropped: the ADDs and DELs of
    /// one attachment run one after another (a second ADD then finds the
    /// first's record and answers from it), those of different ones at
    /// once. Without it, two ADDs of one container id raced: the loser's
    /// undo gave the winner's address back, and later pods got it too.
    pub fn lock(&self, key: &str) -> Result<AttachmentLock> {
        use std::os::unix::fs::MetadataExt;
        // Beside the records, not among them: their directory holds
        // records only.
        let locks = self.dir.with_file_name(LOCKS_DIR);
        crate::state::private_dir(&locks)?;
        let path = locks.join(key);
        loop {
            let file = crate::state::lock_file(&path, true)?
                .context("a blocking lock returned without the lock")?;
            // The last holder removes the file once the attachment is gone
            // (see `AttachmentLock`'s drop): a lock on a removed file
            // guards nothing, so take the one now at the path instead.
            if fs::metadata(&path).map(|m| m.ino()).ok() == Some(file.metadata()?.ino()) {
                return Ok(AttachmentLock {
                    file,
                    path,
                    record: self.dir.join(Store::file(key)),
                });
            }
        }
    }

    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        let path = self.dir.join(Store::file(&key(container_id, ifname)));
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a valid endpoint record", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn remove(&self, record: &Record) -> Result<()> {
        let path = self.dir.join(Store::file(&record.key()));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Every readable record, sorted by key; unreadable ones are reported
    /// apart (one bad file never hides the others).
    pub fn all(&self) -> Result<(Vec<Record>, Vec<Unreadable>)> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            // A record being written is `.<key>.json.tmp`. A record's own
            // name may start with a dot (`CNI_IFNAME=.x` is a valid link
            // name): hiding those hid live endpoints from GC and `down`.
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for path in paths {
            let read = fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<Record>(&b)?));
            match read {
                Ok(record) => records.push(record),
                Err(e) => unreadable.push((path, e)),
            }
        }
        Ok((records, unreadable))
    }

    /// The readable records (see [`Store::all`]).
    pub fn records(&self) -> Vec<Record> {
        self.all().map(|(records, _)| records).unwrap_or_default()
    }
}

/// One attachment's lock (see [`Store::lock`]). Dropped when the
/// attachment has no record (a DEL, a failed ADD), it removes its file
/// first, so no lock file outlives its endpoint.
pub struct AttachmentLock {
    file: fs::File,
    path: PathBuf,
    record: PathBuf,
}

impl Drop for AttachmentLock {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Held exclusively: a taker waiting on this file finds it unlinked
        // and takes a new one (see `Store::lock`).
        let same = fs::metadata(&self.path).map(|m| m.ino()).ok()
            == self.file.metadata().map(|m| m.ino()).ok();
        if same && !self.record.exists() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The topology with its network's runtime endpoints as pods after its
/// own: what `status`, `stats`, the agent and `trace` show and follow.
pub fn with_endpoints(mut topology: Topology) -> Topology {
    let records = Store::new(&topology.name).records();
    topology.pods.extend(
        records
            .iter()
            .filter(|r| r.host_ifindex.is_some())
            .map(Record::pod),
    );
    topology
}

/// Endpoint work fails with the library's typed error.
pub use crate::error::Error as EndpointError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("pods", &"a".repeat(64), "eth0");
        assert_eq!(a.len(), IFNAME_MAX);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, host_veth_name("pods", &"a".repeat(64), "eth0"));
        // Pinned: a DEL after an upgrade must find the veth of an ADD before.
        assert_eq!(host_veth_name("pods", "abc", "eth0"), "vc564f38704f0d9");
        let others = [
            host_veth_name("pods", &"a".repeat(64), "eth1"),
            host_veth_name("other", &"a".repeat(64), "eth0"),
            host_veth_name("pods", &"b".repeat(64), "eth0"),
        ];
        assert!(others.iter().all(|o| *o != a));
    }

    #[test]
    fn keys_and_names() {
        assert_eq!(key("abc", "eth0"), "eth0@abc");
        assert_ne!(key("a.b", "c"), key("a", "b.c"));
        assert_eq!(pod_name(&"f".repeat(64), "eth0"), "ffffffffffff");
        assert_eq!(pod_name("abc", "net1"), "abc/net1");
    }

    #[test]
    fn records_round_trip_and_bad_files_stay_apart() {
        let dir = std::env::temp_dir().join(format!("vethctl-endpoints-{}", std::process::id()));
        let store = Store::at(&dir);
        let record = Record {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/cni-1".into(),
            host_veth: host_veth_name("n", "c1", "eth0"),
            host_ifindex: Some(7),
            ipv4: Ipv4Addr::new(10, 1, 0, 2),
            ipv6: None,
            mtu: 1500,
            k8s: Some(K8sPod {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u".into(),
            }),
            addresses: AddressSource::Delegated {
                plugin: "host-local".into(),
            },
            host_path: false,
            tc_attach: TcAttach::Clsact,
        };
        store.save(&record).unwrap();
        assert_eq!(store.load("c1", "eth0").unwrap(), Some(record.clone()));
        fs::write(dir.join(ENDPOINTS_DIR).join("x@y.json"), "garbage").unwrap();
        // A record being written is not a record.
        fs::write(dir.join(ENDPOINTS_DIR).join(".eth0@c2.json.tmp"), "{").unwrap();
        let (records, unreadable) = store.all().unwrap();
        assert_eq!(records, std::slice::from_ref(&record));
        assert_eq!(unreadable.len(), 1);
        assert_eq!(record.pod().display_name(), "default/web");
        store.remove(&record).unwrap();
        store.remove(&record).unwrap();
        assert_eq!(store.load("c1", "eth0").unwrap(), None);
        // An interface name with a leading dot makes a record file with
        // one: still a record.
        let dotted = Record {
            ifname: ".x".into(),
            ..record.clone()
        };
        store.save(&dotted).unwrap();
        assert_eq!(store.records(), std::slice::from_ref(&dotted));
        // A record of a vethctl before `tc_attach` existed: its endpoint
        // was attached with TCX.
        let mut old = serde_json::to_value(&record).unwrap();
        old.as_object_mut().unwrap().remove("tc_attach");
        let old: Record = serde_json::from_value(old).unwrap();
        assert_eq!(old.tc_attach, TcAttach::Tcx);
        store.remove(&dotted).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
