//! A cluster whose nodes find each other through etcd (flannel's subnet
//! manager, Calico's node records): where its records live, what they say,
//! and which pod range a joining node gets. Pure: talking to etcd is
//! [`crate::etcd`].
//!
//! Keys, all under one prefix per cluster:
//! - `/vethctl/v1/<cluster>/settings`: the settings file's text, as
//!   `vethctl cluster init` stored it;
//! - `/vethctl/v1/<cluster>/nodes/<node>`: a [`NodeRecord`] (JSON), under
//!   the agent's short liveness lease: it goes when the agent does;
//! - `/vethctl/v1/<cluster>/ranges/v4/<cidr>` and `…/ranges/v6/<cidr>`: a
//!   [`RangeRecord`] (JSON) naming the node that holds the range, under a
//!   long lease (24 h) the agent renews, so a node that restarts or is
//!   away for a while keeps its range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{cluster::Cluster, invalid, ModelError};

/// Where every cluster's keys live (the version is the records' format).
pub const ROOT: &str = "/vethctl/v1/";
/// The settings of a cluster in etcd name no node: a stand-in lets the
/// cluster file's own validation check everything a node's part needs
/// (mode, MTU, ranges), with the same messages.
const PROBE_NODE: &str = "probe";
/// How long a range stays reserved after its node's agent stopped
/// renewing it (flannel's subnet lease).
pub const RANGE_LEASE_SECONDS: i64 = 24 * 3600;
/// The node record's lease: how soon the others learn that a node is gone.
pub const DEFAULT_LIVENESS_SECONDS: i64 = 10;

/// The keys of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// IPv4 or IPv6, for the range keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn dir(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("{ROOT}{cluster}/"),
        }
    }

    /// Every key of the cluster.
    pub fn all(&self) -> &str {
        &self.prefix
    }

    pub fn settings(&self) -> String {
        format!("{}settings", self.prefix)
    }

    /// The prefix of every node record.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// The prefix of every range record of `family`.
    pub fn ranges(&self, family: Family) -> String {
        format!("{}ranges/{}/", self.prefix, family.dir())
    }

    pub fn range(&self, net: IpNet) -> String {
        let family = match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        };
        format!("{}{net}", self.ranges(family))
    }

    /// The range a key of [`Keys::ranges`] stands for.
    pub fn range_of(&self, key: &str, family: Family) -> Option<IpNet> {
        key.strip_prefix(&self.ranges(family))?.parse().ok()
    }
}

/// The cluster whose settings key is `key`, if it is one.
pub fn cluster_of_settings_key(key: &str) -> Option<&str> {
    key.strip_prefix(ROOT)?.strip_suffix("/settings")
}

/// A cluster's settings: a cluster file without `[[nodes]]` (nodes join by
/// running their agent), validated by the cluster file's own rules.
#[derive(Clone, Debug)]
pub struct Settings {
    /// As written, comments and all: what etcd keeps.
    pub text: String,
    /// The file validated with one stand-in node (`parts[0]`).
    pub cluster: Cluster,
}

impl Settings {
    pub fn from_toml(text: &str) -> Result<Settings, ModelError> {
        if let Ok(table) = text.parse::<toml::Table>() {
            if table.contains_key("nodes") {
                return Err(invalid(
                    "nodes",
                    "the settings of a cluster kept in etcd list no nodes: each node joins by \
                     running `vethctl agent --cluster ENDPOINTS --node NAME`; remove [[nodes]]",
                ));
            }
        }
        let probe = format!("{text}\n[[nodes]]\nname = \"{PROBE_NODE}\"\n");
        let cluster = Cluster::from_toml(&probe).map_err(|e| {
            let suffix = format!(" (in node \"{PROBE_NODE}\")");
            let field = e
                .field
                .strip_suffix(&suffix)
                .unwrap_or(&e.field)
                .to_string();
            ModelError { field, ..e }
        })?;
        Ok(Settings {
            text: text.to_string(),
            cluster,
        })
    }

    pub fn name(&self) -> &str {
        &self.cluster.name
    }

    /// Every setting by its key in the file, defaults filled in: two
    /// files that say the same differ in nothing here.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let c = &self.cluster;
        let part = &c.parts[0];
        let none = || "none".to_string();
        vec![
            ("name", c.name.clone()),
            ("mode", part.mode.name().to_string()),
            ("cross_node", c.cross_node.to_string()),
            ("cluster_cidr", c.cluster_cidr.to_string()),
            (
                "cluster_cidr6",
                c.cluster_cidr6.map_or_else(none, |n| n.to_string()),
            ),
            ("node_prefix_len", c.node_prefix_len.to_string()),
            ("node_prefix_len6", c.node_prefix_len6.to_string()),
            ("underlay.interface", c.underlay.interface.clone()),
            ("underlay.vni", c.underlay.vni.to_string()),
            ("underlay.port", c.underlay.port.to_string()),
            ("underlay.mtu", c.underlay.mtu.to_string()),
            ("counters", part.counters.to_string()),
            ("rps", part.rps.to_string()),
            ("uplink.masquerade", part.uplink.masquerade.to_string()),
            (
                "uplink.interface",
                part.uplink.interface.clone().unwrap_or_else(none),
            ),
            ("bridge", part.bridge.clone()),
        ]
    }

    /// The first setting `other` (what etcd has) gives another value:
    /// `(key, ours, theirs)`.
    pub fn first_difference(&self, other: &Settings) -> Option<(&'static str, String, String)> {
        self.values()
            .into_iter()
            .zip(other.values())
            .find(|((_, a), (_, b))| a != b)
            .map(|((key, a), (_, b))| (key, a, b))
    }

    /// The pods' MTU on every node.
    pub fn pod_mtu(&self) -> u32 {
        self.cluster.pod_mtu()
    }
}

/// Which agent holds a node: enough to tell the operator which process
/// it is, and to tell a crashed agent of this very node from another one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentId {
    /// `/proc/sys/kernel/random/boot_id` of its machine.
    pub boot: String,
    /// Its network namespace's cookie (the node, on a lab's machine).
    pub netns: u64,
    pub pid: u32,
    /// When it started, RFC 3339 UTC.
    pub started: String,
}

impl std::fmt::Display for AgentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let boot: String = self.boot.chars().take(8).collect();
        write!(
            f,
            "agent PID {} on boot {boot} (netns cookie {}), started {}",
            self.pid, self.netns, self.started
        )
    }
}

impl AgentId {
    /// Whether `self`, found in etcd, is a previous agent of the node
    /// `me` runs on that is gone (`alive`: whether its PID still runs
    /// here): same machine and boot, same network namespace, process gone.
    pub fn is_gone_predecessor_of(&self, me: &AgentId, alive: bool) -> bool {
        self.boot == me.boot && self.netns == me.netns && self.pid != me.pid && !alive
    }
}

/// What a node says about itself: `/vethctl/v1/<cluster>/nodes/<node>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub agent: AgentId,
    /// Its underlay addresses: where the others send its pods' frames.
    pub address: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// The prefix lengths of those addresses on the underlay: the
    /// cluster file's `[underlay] cidr` and `cidr6`, which every node's
    /// address must be inside (host-gw's next hops are on that link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6_len: Option<u8>,
    /// Its VXLAN device's MAC (`0e:58:` + the IPv4 underlay address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// Its pod ranges, once leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
}

/// What a range key says: `/vethctl/v1/<cluster>/ranges/v4/<cidr>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RangeRecord {
    pub node: String,
}

/// A range as found in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub range: IpNet,
    pub node: String,
    /// The key's last change and lease: a claim of a range its node
    /// already holds compares the one and keeps the other alive.
    pub revision: i64,
    pub lease: i64,
}

/// One key of etcd: key, value, modification revision, lease.
pub type Entry = (String, Vec<u8>, i64, i64);

/// Everything a cluster's prefix held at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub settings: Option<String>,
    pub nodes: Vec<NodeRecord>,
    pub held4: Vec<Held>,
    pub held6: Vec<Held>,
    /// Keys whose value is not what this version writes (a newer one's?).
    pub unreadable: Vec<String>,
}

impl Snapshot {
    pub fn of(keys: &Keys, entries: impl IntoIterator<Item = Entry>) -> Snapshot {
        let mut s = Snapshot::default();
        for (key, value, revision, lease) in entries {
            if key == keys.settings() {
                s.settings = String::from_utf8(value).ok();
                continue;
            }
            let parsed = if key.starts_with(&keys.nodes()) {
                serde_json::from_slice(&value)
                    .map(|r| s.nodes.push(r))
                    .is_ok()
            } else if let Some((family, range)) = [Family::V4, Family::V6]
                .into_iter()
                .find_map(|f| Some((f, keys.range_of(&key, f)?)))
            {
                let held = serde_json::from_slice::<RangeRecord>(&value).map(|r| Held {
                    range,
                    node: r.node,
                    revision,
                    lease,
                });
                let list = if family == Family::V4 {
                    &mut s.held4
                } else {
                    &mut s.held6
                };
                held.map(|h| list.push(h)).is_ok()
            } else {
                false
            };
            if !parsed {
                s.unreadable.push(key);
            }
        }
        s
    }
}

/// The range node `me` gets out of `cluster` (`/len` each): the one it
/// holds already, else the first that overlaps none held. `key` and
/// `len_key` name the settings for the error.
pub fn choose_range(
    cluster: IpNet,
    len: u8,
    held: &[Held],
    me: &str,
    (key, len_key): (&str, &str),
) -> Result<IpNet, ModelError> {
    if let Some(mine) = held
        .iter()
        .find(|h| h.node == me && cluster.contains(&h.range))
    {
        return Ok(mine.range);
    }
    let meets = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    let all = 1u128.checked_shl(u32::from(len.saturating_sub(cluster.prefix_len())));
    // Held ranges are disjoint: as many as there are ranges leave none,
    // and the search below would walk every one of them.
    let exhausted = all.is_some_and(|all| held.len() as u128 >= all);
    let free = match exhausted {
        true => None,
        false => cluster
            .subnets(len)
            .ok()
            .and_then(|mut s| s.find(|r| held.iter().all(|h| !meets(r, &h.range)))),
    };
    free.ok_or_else(|| {
        let mut nodes: Vec<&str> = held.iter().map(|h| h.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        invalid(
            key,
            format!(
                "{cluster} has no free /{len} left for node {me:?}: all are leased ({} by {}); \
                 a node that is gone frees its range when its lease ends (24 h after its agent \
                 stopped), or make a cluster with a larger {key} or {len_key}",
                held.len(),
                nodes.join(", ")
            ),
        )
    })
}

/// The cluster file of the nodes alive now, as node `me` sees them: the
/// settings text, `[underlay] cidr` (and `cidr6`) the network of `me`'s
/// own underlay addresses, and one `[[nodes]]` per record that holds its
/// ranges and has its address on that network (the others cannot be
/// reached directly; they are left out, named in the second value).
/// `Cluster::node_part(me)` of it is what `me` brings up.
pub fn cluster_text(
    settings: &str,
    me: &NodeRecord,
    others: &[NodeRecord],
) -> Result<(String, Vec<String>), ModelError> {
    let mut doc: toml_edit::DocumentMut = settings
        .parse()
        .map_err(|e| invalid("settings", format!("{e}")))?;
    let (net4, net6) = underlay_of(me)?;
    let underlay = doc["underlay"].or_insert(toml_edit::table());
    underlay["cidr"] = toml_edit::value(net4.to_string());
    match net6 {
        Some(n6) => underlay["cidr6"] = toml_edit::value(n6.to_string()),
        None => drop(underlay.as_table_like_mut().map(|t| t.remove("cidr6"))),
    }
    let mut nodes = toml_edit::ArrayOfTables::new();
    let mut left_out = Vec::new();
    for r in std::iter::once(me).chain(others.iter().filter(|r| r.name != me.name)) {
        match node_entry(r, net4, net6) {
            Some(entry) => nodes.push(entry),
            None => left_out.push(r.name.clone()),
        }
    }
    doc["nodes"] = toml_edit::Item::ArrayOfTables(nodes);
    Ok((doc.to_string(), left_out))
}

/// The underlay networks of node `me`, from its record.
fn underlay_of(me: &NodeRecord) -> Result<(Ipv4Net, Option<Ipv6Net>), ModelError> {
    let missing = || {
        invalid(
            "--underlay",
            format!(
                "node {:?} has no underlay address with its prefix length in its record",
                me.name
            ),
        )
    };
    let (a4, l4) = me.address.zip(me.address_len).ok_or_else(missing)?;
    let net4 = Ipv4Net::new(a4, l4).map_err(|_| missing())?.trunc();
    let net6 = me
        .address6
        .zip(me.address6_len)
        .and_then(|(a, l)| Ipv6Net::new(a, l).ok())
        .map(|n| n.trunc());
    Ok((net4, net6))
}

/// Record `r` as a `[[nodes]]` entry, when it holds its range and its
/// addresses are on the underlay `net4` (and `net6`).
fn node_entry(r: &NodeRecord, net4: Ipv4Net, net6: Option<Ipv6Net>) -> Option<toml_edit::Table> {
    let address = r.address.filter(|a| net4.contains(a))?;
    let pod_cidr = r.pod_cidr?;
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(r.name.clone());
    t["pod_cidr"] = toml_edit::value(pod_cidr.to_string());
    if let Some(v6) = r.pod_cidr6 {
        t["pod_cidr6"] = toml_edit::value(v6.to_string());
    }
    t["address"] = toml_edit::value(address.to_string());
    if let Some(n6) = net6 {
        // Without it the file would give the node a made-up one.
        let a6 = r.address6.filter(|a| n6.contains(a))?;
        t["address6"] = toml_edit::value(a6.to_string());
    }
    Some(t)
}

/// Why a node record is not wired into this node's dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a record this version can read.
    Unreadable,
    /// A name that is not a node name, or not its key's.
    Name,
    /// Pod ranges that are not the cluster's, or not leased to it.
    Range,
    /// Underlay addresses that are not usable or are another node's.
    Address,
    /// Refused by the cluster file's rules when tried alone.
    Invalid,
    /// No range yet, or not on this node's underlay network: not a fault.
    Unwired,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Unreadable,
        Reason::Name,
        Reason::Range,
        Reason::Address,
        Reason::Invalid,
        Reason::Unwired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Unreadable => "unreadable",
            Reason::Name => "name",
            Reason::Range => "range",
            Reason::Address => "address",
            Reason::Invalid => "invalid",
            Reason::Unwired => "unwired",
        }
    }
}

/// A record left out of the node's part, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeftOut {
    /// The name in its key (`…/nodes/<node>`).
    pub node: String,
    pub reason: Reason,
    pub why: String,
}

/// The records of the others node `me` may wire, and those it may not:
/// each record is checked alone against the settings, the range keys
/// (`held`: who holds each range) and the records admitted before it (by
/// key name: of two records claiming one address the first keeps it), so
/// that one bad record, written by a broken or hostile writer, is left out
/// without keeping the others from being wired. `records` are by the name
/// in their key; `me`'s own key is skipped.
pub fn admit(
    settings: &Settings,
    me: &NodeRecord,
    records: &std::collections::BTreeMap<String, NodeRecord>,
    held: &std::collections::BTreeMap<IpNet, String>,
) -> Result<(Vec<NodeRecord>, Vec<LeftOut>), ModelError> {
    let (net4, net6) = underlay_of(me)?;
    let gateways = &settings.cluster.underlay;
    let mut taken = Taken::default();
    taken.add(me);
    taken.addresses.extend(gateways.gateway.map(IpAddr::V4));
    taken.addresses.extend(gateways.gateway6.map(IpAddr::V6));
    let (mut admitted, mut left_out) = (Vec::new(), Vec::new());
    for (key, r) in records.iter().filter(|(key, _)| **key != me.name) {
        let fault = name_fault(key, r)
            .or_else(|| range_fault(&settings.cluster, key, r, held, &taken))
            .or_else(|| address_fault(r, net4, net6, &taken));
        match fault {
            Some((reason, why)) => left_out.push(LeftOut {
                node: key.clone(),
                reason,
                why,
            }),
            None => {
                taken.add(r);
                admitted.push(r.clone());
            }
        }
    }
    Ok((admitted, left_out))
}

/// Ranges and addresses of the nodes admitted so far.
#[derive(Default)]
struct Taken {
    ranges: std::collections::HashSet<IpNet>,
    addresses: std::collections::HashSet<IpAddr>,
}

impl Taken {
    fn add(&mut self, r: &NodeRecord) {
        self.ranges.extend(r.pod_cidr.map(IpNet::V4));
        self.ranges.extend(r.pod_cidr6.map(IpNet::V6));
        self.addresses.extend(r.address.map(IpAddr::V4));
        self.addresses.extend(r.address6.map(IpAddr::V6));
    }
}

type Fault = Option<(Reason, String)>;

fn name_fault(key: &str, r: &NodeRecord) -> Fault {
    if let Err(e) = super::cluster::validate_node_name("name", key) {
        return Some((Reason::Name, e.message));
    }
    (r.name != key).then(|| {
        (
            Reason::Name,
            format!("the record names node {:?}, its key {key:?}", r.name),
        )
    })
}

/// A record's ranges must be `/node_prefix_len` (`…6`) of the cluster's,
/// leased to it in the range keys, and its IPv6 one there exactly when the
/// cluster has IPv6 (a file without it would carve one). A record without
/// a range yet is not a fault: it is not wired until it has one.
fn range_fault(
    c: &Cluster,
    key: &str,
    r: &NodeRecord,
    held: &std::collections::BTreeMap<IpNet, String>,
    taken: &Taken,
) -> Fault {
    let v4 = r.pod_cidr?;
    let v6 = match (c.cluster_cidr6, r.pod_cidr6) {
        (Some(_), None) => return Some((Reason::Range, "no IPv6 pod range".into())),
        (None, Some(n)) => {
            let why = format!("pod_cidr6 {n} in a cluster without cluster_cidr6");
            return Some((Reason::Range, why));
        }
        (Some(cluster), Some(n)) => Some((IpNet::V6(cluster), IpNet::V6(n), c.node_prefix_len6)),
        (None, None) => None,
    };
    let v4 = (IpNet::V4(c.cluster_cidr), IpNet::V4(v4), c.node_prefix_len);
    for (cluster, range, len) in std::iter::once(v4).chain(v6) {
        let why = if range.prefix_len() != len || !cluster.contains(&range) {
            format!("{range} is not a /{len} of {cluster}")
        } else if held.get(&range).map(String::as_str) != Some(key) {
            let holder = held.get(&range).map_or("nobody", String::as_str);
            format!("{range} is leased to {holder}, not to {key:?}")
        } else if taken.ranges.contains(&range) {
            format!("{range} is another node's")
        } else {
            continue;
        };
        return Some((Reason::Range, why));
    }
    None
}

/// Addresses on this node's underlay networks must be hosts of them that
/// no node admitted before (nor a gateway) has. One off those networks is
/// not a fault: such a node is left unwired.
fn address_fault(r: &NodeRecord, net4: Ipv4Net, net6: Option<Ipv6Net>, taken: &Taken) -> Fault {
    let on4 = r.address.filter(|a| net4.contains(a)).map(IpAddr::V4);
    let on6 = r
        .address6
        .filter(|a| net6.is_some_and(|n| n.contains(a)))
        .map(IpAddr::V6);
    let host = |a: IpAddr| match a {
        IpAddr::V4(a) => a != net4.network() && a != net4.broadcast(),
        IpAddr::V6(a) => net6.is_some_and(|n| a != n.network()),
    };
    for a in on4.into_iter().chain(on6) {
        if !host(a) {
            return Some((Reason::Address, format!("{a} is not a host address")));
        }
        if taken.addresses.contains(&a) {
            let why = format!("{a} is another node's (or a gateway's)");
            return Some((Reason::Address, why));
        }
    }
    None
}

/// What node `me` wires: its cluster file (see [`cluster_text`]) and the
/// records left out of it. With `alone`, every admitted record is also
/// tried as the only other node of the file, and those the file's rules
/// refuse are left out: for a file refused although every record passed
/// [`admit`], so that what [`admit`] does not foresee stops one record
/// and not all.
pub fn wiring(
    settings: &Settings,
    me: &NodeRecord,
    records: &std::collections::BTreeMap<String, NodeRecord>,
    held: &std::collections::BTreeMap<IpNet, String>,
    alone: bool,
) -> Result<(String, Vec<LeftOut>), ModelError> {
    let (mut admitted, mut left_out) = admit(settings, me, records, held)?;
    if alone {
        admitted.retain(|r| {
            let refused = cluster_text(&settings.text, me, std::slice::from_ref(r))
                .and_then(|(text, _)| Cluster::from_toml(&text).map(drop))
                .err();
            let Some(e) = refused else { return true };
            left_out.push(LeftOut {
                node: r.name.clone(),
                reason: Reason::Invalid,
                why: e.to_string(),
            });
            false
        });
    }
    let (text, unwired) = cluster_text(&settings.text, me, &admitted)?;
    left_out.extend(unwired.into_iter().map(|node| LeftOut {
        node,
        reason: Reason::Unwired,
        why: "no range yet, or not on this node's underlay network".into(),
    }));
    Ok((text, left_out))
}

/// One node as `vethctl cluster status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Its agent runs (its liveness lease holds).
    pub alive: bool,
    pub pod_cidr: Option<IpNet>,
    pub pod_cidr6: Option<IpNet>,
    pub address: Option<Ipv4Addr>,
    pub address6: Option<Ipv6Addr>,
    pub vtep_mac: Option<String>,
    pub agent: Option<AgentId>,
}

/// Every node that is alive or holds a range, by name.
pub fn view(records: &[NodeRecord], held: &[Held]) -> Vec<NodeView> {
    let mut names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    names.extend(held.iter().map(|h| h.node.as_str()));
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let record = records.iter().find(|r| r.name == name);
            let range = |v6: bool| {
                held.iter()
                    .find(|h| h.node == name && matches!(h.range, IpNet::V6(_)) == v6)
                    .map(|h| h.range)
            };
            NodeView {
                name: name.to_string(),
                alive: record.is_some(),
                pod_cidr: range(false),
                pod_cidr6: range(true),
                address: record.and_then(|r| r.address),
                address6: record.and_then(|r| r.address6),
                vtep_mac: record.and_then(|r| r.vtep_mac.clone()),
                agent: record.map(|r| r.agent.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = r#"# the lab, kept in etcd
name = "lab"
mode = "tc"
cross_node = "vxlan"
cluster_cidr = "10.244.0.0/16"
cluster_cidr6 = "fd00:10:244::/56"
"#;

    fn held(range: &str, node: &str) -> Held {
        Held {
            range: range.parse().unwrap(),
            node: node.into(),
            revision: 1,
            lease: 0,
        }
    }

    #[test]
    fn keys_live_under_one_prefix_per_cluster() {
        let k = Keys::new("lab");
        assert_eq!(k.settings(), "/vethctl/v1/lab/settings");
        assert_eq!(k.node("n1"), "/vethctl/v1/lab/nodes/n1");
        let r = "10.244.1.0/24".parse().unwrap();
        assert_eq!(k.range(r), "/vethctl/v1/lab/ranges/v4/10.244.1.0/24");
        assert_eq!(k.range_of(&k.range(r), Family::V4), Some(r));
        let r6 = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(k.range(r6), "/vethctl/v1/lab/ranges/v6/fd00:10:244:1::/64");
        assert_eq!(cluster_of_settings_key(&k.settings()), Some("lab"));
        assert_eq!(cluster_of_settings_key(&k.node("n1")), None);
    }

    #[test]
    fn a_snapshot_sorts_the_keys_out() {
        let k = Keys::new("lab");
        let range: IpNet = "10.244.1.0/24".parse().unwrap();
        let entries: Vec<Entry> = vec![
            (k.settings(), SETTINGS.into(), 2, 0),
            (k.range(range), br#"{"node":"n2"}"#.to_vec(), 5, 77),
            (k.node("n2"), b"not json".to_vec(), 6, 0),
        ];
        let s = Snapshot::of(&k, entries);
        assert_eq!(s.settings.as_deref(), Some(SETTINGS));
        assert_eq!(s.held4.len(), 1);
        assert_eq!((s.held4[0].node.as_str(), s.held4[0].lease), ("n2", 77));
        assert_eq!(s.unreadable, [k.node("n2")]);
    }

    #[test]
    fn settings_are_a_cluster_file_without_nodes() {
        let s = Settings::from_toml(SETTINGS).unwrap();
        let values: std::collections::BTreeMap<_, _> = s.values().into_iter().collect();
        assert_eq!(values["mode"], "tc");
        assert_eq!(values["node_prefix_len"], "24");
        assert_eq!(values["underlay.port"], "8472");
        assert_eq!(s.pod_mtu(), 1450);
        let e = Settings::from_toml(&format!("{SETTINGS}[[nodes]]\nname = \"n1\"\n")).unwrap_err();
        assert_eq!(e.field, "nodes");
        let e = Settings::from_toml(&SETTINGS.replace("\"tc\"", "\"nope\"")).unwrap_err();
        assert!(e.message.contains("unknown variant"), "{e}");
        assert!(!e.field.contains("probe"), "{e}");
        let e =
            Settings::from_toml(&SETTINGS.replace("10.244.0.0/16", "10.244.0.1/16")).unwrap_err();
        assert_eq!(e.field, "cluster_cidr", "{e}");
    }

    #[test]
    fn the_same_settings_written_otherwise_do_not_differ() {
        let a = Settings::from_toml(SETTINGS).unwrap();
        let b = Settings::from_toml(&format!("node_prefix_len = 24\n{SETTINGS}# more\n")).unwrap();
        assert_eq!(a.first_difference(&b), None);
        let c = Settings::from_toml(&SETTINGS.replace("\"vxlan\"", "\"ebpf\"")).unwrap();
        let (key, ours, theirs) = a.first_difference(&c).unwrap();
        assert_eq!(
            (key, ours.as_str(), theirs.as_str()),
            ("cross_node", "vxlan", "ebpf")
        );
    }

    #[test]
    fn a_node_keeps_its_range_else_takes_the_first_free_one() {
        let cluster: IpNet = "10.244.0.0/22".parse().unwrap();
        let keys = ("cluster_cidr", "node_prefix_len");
        let taken = [held("10.244.0.0/24", "n1"), held("10.244.2.0/24", "n3")];
        let r = choose_range(cluster, 24, &taken, "n3", keys).unwrap();
        assert_eq!(r.to_string(), "10.244.2.0/24", "kept");
        let r = choose_range(cluster, 24, &taken, "n2", keys).unwrap();
        assert_eq!(r.to_string(), "10.244.1.0/24", "first free");
        let full = [
            held("10.244.0.0/24", "n1"),
            held("10.244.1.0/24", "n2"),
            held("10.244.2.0/24", "n3"),
            held("10.244.3.0/24", "n4"),
        ];
        let e = choose_range(cluster, 24, &full, "n5", keys).unwrap_err();
        assert_eq!(e.field, "cluster_cidr");
        assert!(
            e.message.contains("no free /24") && e.message.contains("n4"),
            "{e}"
        );
        let huge: IpNet = "fd00::/8".parse().unwrap();
        let r = choose_range(huge, 64, &[], "n1", ("cluster_cidr6", "node_prefix_len6"));
        assert_eq!(r.unwrap().to_string(), "fd00::/64");
    }

    #[test]
    fn a_gone_predecessor_is_this_node_s_own_dead_agent() {
        let me = AgentId {
            boot: "b".into(),
            netns: 7,
            pid: 20,
            started: "now".into(),
        };
        let old = AgentId {
            pid: 10,
            ..me.clone()
        };
        assert!(old.is_gone_predecessor_of(&me, false));
        assert!(!old.is_gone_predecessor_of(&me, true), "still running");
        let elsewhere = AgentId {
            netns: 8,
            ..old.clone()
        };
        assert!(
            !elsewhere.is_gone_predecessor_of(&me, false),
            "another node"
        );
    }

    fn record(name: &str, address: &str, pod_cidr: Option<&str>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            agent: AgentId {
                boot: "b".into(),
                netns: 1,
                pid: 1,
                started: "t".into(),
            },
            address: Some(address.parse().unwrap()),
            address6: None,
            address_len: Some(24),
            address6_len: None,
            vtep_mac: None,
            pod_cidr: pod_cidr.map(|c| c.parse().unwrap()),
            pod_cidr6: None,
        }
    }

    #[test]
    fn live_records_make_the_cluster_file_of_a_node() {
        let me = record("n1", "10.9.0.1", Some("10.244.0.0/24"));
        let others = [
            record("n2", "10.9.0.2", Some("10.244.1.0/24")),
            record("far", "10.8.0.2", Some("10.244.2.0/24")),
            record("new", "10.9.0.3", None),
        ];
        let settings = SETTINGS.replace("cluster_cidr6 = \"fd00:10:244::/56\"\n", "");
        let (text, left_out) = cluster_text(&settings, &me, &others).unwrap();
        assert_eq!(left_out, ["far", "new"]);
        let cluster = Cluster::from_toml(&text).unwrap();
        assert_eq!(cluster.underlay.cidr.to_string(), "10.9.0.0/24");
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(cluster.nodes[1].address.to_string(), "10.9.0.2");
        assert_eq!(cluster.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert!(cluster.node_part("n1").is_ok());
    }

    #[test]
    fn each_bad_record_is_left_out_alone() {
        let settings = SETTINGS.replace("cluster_cidr6 = \"fd00:10:244::/56\"\n", "");
        let settings = Settings::from_toml(&settings).unwrap();
        let me = record("n1", "10.9.0.1", Some("10.244.0.0/24"));
        let mut records = std::collections::BTreeMap::new();
        let mut held = std::collections::BTreeMap::new();
        let mut add = |key: &str, r: NodeRecord, holds: bool| {
            if let (true, Some(range)) = (holds, r.pod_cidr) {
                held.entry(IpNet::V4(range)).or_insert(key.to_string());
            }
            records.insert(key.to_string(), r);
        };
        add("n2", record("n2", "10.9.0.2", Some("10.244.1.0/24")), true);
        add("n5", record("n5", "10.9.0.6", Some("10.244.5.0/24")), true);
        add("n1", record("n1", "10.9.0.1", Some("10.244.0.0/24")), true);
        // n2's range, not leased to it; the whole cluster range; no lease.
        add(
            "thief",
            record("thief", "10.9.0.7", Some("10.244.1.0/24")),
            true,
        );
        add(
            "wide",
            record("wide", "10.9.0.8", Some("10.244.0.0/16")),
            true,
        );
        add(
            "unleased",
            record("unleased", "10.9.0.9", Some("10.244.9.0/24")),
            false,
        );
        // Names: not a node name; not its key's.
        add(
            "Bad_Name",
            record("Bad_Name", "10.9.0.10", Some("10.244.10.0/24")),
            true,
        );
        add(
            "n3",
            record("n4", "10.9.0.11", Some("10.244.11.0/24")),
            true,
        );
        // Addresses: n2's, mine, the network's, the gateway's.
        add(
            "twin",
            record("twin", "10.9.0.2", Some("10.244.12.0/24")),
            true,
        );
        add(
            "mirror",
            record("mirror", "10.9.0.1", Some("10.244.13.0/24")),
            true,
        );
        add(
            "zero",
            record("zero", "10.9.0.0", Some("10.244.14.0/24")),
            true,
        );
        add("waiting", record("waiting", "10.9.0.20", None), true);
        let (text, left_out) = wiring(&settings, &me, &records, &held, false).unwrap();
        let reasons: std::collections::BTreeMap<&str, Reason> = left_out
            .iter()
            .map(|l| (l.node.as_str(), l.reason))
            .collect();
        let expected = [
            ("Bad_Name", Reason::Name),
            ("mirror", Reason::Address),
            ("n3", Reason::Name),
            ("thief", Reason::Range),
            ("twin", Reason::Address),
            ("unleased", Reason::Range),
            ("waiting", Reason::Unwired),
            ("wide", Reason::Range),
            ("zero", Reason::Address),
        ];
        assert_eq!(reasons, expected.into_iter().collect(), "{left_out:#?}");
        let cluster = Cluster::from_toml(&text).unwrap();
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n5"]);
        let thief = left_out.iter().find(|l| l.node == "thief").unwrap();
        assert!(thief.why.contains("leased to n2"), "{thief:?}");
        // Tried alone too, the good ones pass.
        let (alone, _) = wiring(&settings, &me, &records, &held, true).unwrap();
        assert_eq!(alone, text);
    }

    #[test]
    fn ipv6_ranges_go_with_the_cluster_s() {
        let settings = Settings::from_toml(SETTINGS).unwrap();
        let me = record("n1", "10.9.0.1", Some("10.244.0.0/24"));
        let mut n2 = record("n2", "10.9.0.2", Some("10.244.1.0/24"));
        let held: std::collections::BTreeMap<IpNet, String> =
            [("10.244.1.0/24", "n2"), ("fd00:10:244:1::/64", "n2")]
                .map(|(r, n)| (r.parse().unwrap(), n.to_string()))
                .into();
        let records = |r: &NodeRecord| [("n2".to_string(), r.clone())].into();
        let (_, left_out) = admit(&settings, &me, &records(&n2), &held).unwrap();
        assert_eq!(left_out[0].reason, Reason::Range, "no IPv6 range");
        n2.pod_cidr6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let (admitted, left_out) = admit(&settings, &me, &records(&n2), &held).unwrap();
        assert!(left_out.is_empty() && admitted.len() == 1, "{left_out:?}");
    }

    #[test]
    fn the_view_shows_live_nodes_and_reserved_ranges() {
        let record = record("n1", "198.18.0.1", None);
        let held = [held("10.244.0.0/24", "n1"), held("10.244.1.0/24", "n2")];
        let v = view(&[record], &held);
        assert_eq!(v.len(), 2);
        assert!(v[0].alive && !v[1].alive);
        assert_eq!(v[1].pod_cidr.unwrap().to_string(), "10.244.1.0/24");
    }
}
