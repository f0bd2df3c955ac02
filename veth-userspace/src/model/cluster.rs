//! Cluster files: one description for several nodes (`[[nodes]]`), each
//! with its pods in its own pod range, joined over an underlay by a
//! cross-node mode. A node's part is the one-node description
//! [`Cluster::node_text`] derives (the file's settings, the node's range
//! and pods, and a `[node]` table, see [`super::node`]): what `vethctl up
//! -t FILE --cluster-node NAME` brings up on that node. Pure.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::{
    disjoint4, disjoint6, invalid,
    node::{self, CrossNode, NodeFile, PeerFile},
    overlaps4, overlaps6, ModelError, PodFile, Topology,
};

/// Keys of a one-node file that a cluster file passes on to every node.
const SHARED_KEYS: [&str; 6] = ["name", "mode", "counters", "rps", "uplink", "bridge"];
/// Keys only a cluster file has.
const CLUSTER_KEYS: [&str; 7] = [
    "cross_node",
    "cluster_cidr",
    "cluster_cidr6",
    "node_prefix_len",
    "node_prefix_len6",
    "underlay",
    "nodes",
];
/// The default underlay: RFC 2544's benchmarking range, which no real
/// network routes, so a lab's switch never looks like one.
pub const DEFAULT_UNDERLAY_CIDR: &str = "198.18.0.0/24";
/// Longest node name: it names a switch port in the lab.
pub const NODE_NAME_MAX: usize = 12;

/// What a cluster file says beyond the settings it shares with one-node
/// files (those are checked in each node's part).
#[derive(Debug, Deserialize)]
struct ClusterFile {
    name: String,
    #[serde(default)]
    cross_node: CrossNode,
    cluster_cidr: Option<Ipv4Net>,
    cluster_cidr6: Option<Ipv6Net>,
    #[serde(default = "default_prefix_len")]
    node_prefix_len: u8,
    #[serde(default = "default_prefix_len6")]
    node_prefix_len6: u8,
    #[serde(default)]
    underlay: UnderlayFile,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
}

fn default_prefix_len() -> u8 {
    24
}

fn default_prefix_len6() -> u8 {
    64
}

/// `[underlay]`: the network the nodes share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnderlayFile {
    #[serde(default = "default_interface")]
    interface: String,
    #[serde(default = "default_underlay_cidr")]
    cidr: Ipv4Net,
    cidr6: Option<Ipv6Net>,
    gateway: Option<Ipv4Addr>,
    gateway6: Option<Ipv6Addr>,
    /// An existing bridge of the host to plug the lab's nodes into,
    /// instead of a switch of the lab's own.
    bridge: Option<String>,
    #[serde(default = "default_vni")]
    vni: u32,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_underlay_mtu")]
    mtu: u32,
}

impl Default for UnderlayFile {
    fn default() -> Self {
        UnderlayFile {
            interface: default_interface(),
            cidr: default_underlay_cidr(),
            cidr6: None,
            gateway: None,
            gateway6: None,
            bridge: None,
            vni: default_vni(),
            port: default_port(),
            mtu: default_underlay_mtu(),
        }
    }
}

fn default_interface() -> String {
    "eth0".into()
}

fn default_underlay_cidr() -> Ipv4Net {
    DEFAULT_UNDERLAY_CIDR.parse().expect("a valid prefix")
}

fn default_vni() -> u32 {
    node::DEFAULT_VNI
}

fn default_port() -> u16 {
    node::DEFAULT_VXLAN_PORT
}

fn default_underlay_mtu() -> u32 {
    super::DEFAULT_MTU
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    pod_cidr: Option<Ipv4Net>,
    pod_cidr6: Option<Ipv6Net>,
    /// Underlay address; default: the next free one of `[underlay] cidr`.
    address: Option<Ipv4Addr>,
    address6: Option<Ipv6Addr>,
    // Checked here for the file's line numbers; copied as written.
    #[serde(default)]
    #[allow(dead_code)]
    pods: Vec<PodFile>,
}

/// The underlay, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub interface: String,
    pub cidr: Ipv4Net,
    pub cidr6: Option<Ipv6Net>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub bridge: Option<String>,
    pub vni: u32,
    pub port: u16,
    pub mtu: u32,
}

/// One node, every address decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub pod_cidr6: Option<Ipv6Net>,
    pub address: Ipv4Addr,
    pub address6: Option<Ipv6Addr>,
}

/// A validated cluster file.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub name: String,
    pub cross_node: CrossNode,
    pub cluster_cidr: Ipv4Net,
    pub cluster_cidr6: Option<Ipv6Net>,
    /// Length of a node's pod range (`node_prefix_len`, and `…6`).
    pub node_prefix_len: u8,
    pub node_prefix_len6: u8,
    pub underlay: Underlay,
    pub nodes: Vec<ClusterNode>,
    /// Each node's part, validated, in the order of `nodes`.
    pub parts: Vec<Topology>,
    text: String,
}

/// Whether `text` is a cluster file (it has `[[nodes]]`); one that does not
/// parse is left to the one-node parser, whose errors name the line.
pub fn is_cluster(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("nodes"))
}

/// MAC of a lab node's `eth0`, from its underlay address: a node plugged
/// in again keeps it, as a machine keeps its NIC's, so its peers' ARP
/// caches stay right.
pub fn nic_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = underlay.octets();
    [0x0e, 0x59, a, b, c, d]
}

/// The lab's namespace of node `node` of cluster `cluster`: a '.' never
/// appears in pod names, so it never meets a pod's namespace.
pub fn node_netns(cluster: &str, node: &str) -> String {
    format!("{cluster}.{node}")
}

/// A lab node's port on an existing bridge of the host (`underlay.bridge`).
pub fn host_port(cluster: &str, node: &str) -> String {
    format!("{cluster}_{node}")
}

/// The lab's switch namespace ('_' appears in no node or pod name).
pub fn switch_netns(cluster: &str) -> String {
    format!("{cluster}_underlay")
}

impl Cluster {
    /// The cluster file `text`, validated, with every node's part.
    pub fn from_toml(text: &str) -> Result<Cluster, ModelError> {
        let mut cluster = Cluster::without_parts(text)?;
        for i in 0..cluster.nodes.len() {
            let (part, _) = cluster.make_part(i)?;
            cluster.parts.push(part);
        }
        Ok(cluster)
    }

    /// Node `name`'s part of the cluster file `text` and its one-node
    /// description: the file validated as [`Cluster::from_toml`] does it,
    /// but only this node's part made. Each part lists every other node,
    /// so making them all costs the square of the nodes: an agent
    /// following a cluster of 1,000 nodes makes its own part on every
    /// change, not 1,000 (the others are their own agents' to make).
    pub fn node_part_of(text: &str, name: &str) -> Result<(Topology, String), ModelError> {
        let cluster = Cluster::without_parts(text)?;
        cluster.make_part(cluster.index_of(name)?)
    }

    /// Node number `i`'s part and its one-node description, validated.
    fn make_part(&self, i: usize) -> Result<(Topology, String), ModelError> {
        let text = self.node_text(i);
        let part = Topology::from_toml(&text).map_err(|e| in_node(i, &self.nodes[i].name, e))?;
        refuse_large_pod_mtu(i, &part, self.pod_mtu())?;
        Ok((part, text))
    }

    /// The cluster file `text`, validated but for the nodes' parts.
    fn without_parts(text: &str) -> Result<Cluster, ModelError> {
        if text.len() > super::MAX_TOPOLOGY_BYTES {
            return Err(super::too_large(text.len() as u64));
        }
        refuse_one_node_keys(text)?;
        let file: ClusterFile =
            toml::from_str(text).map_err(|e| super::toml_error(text, &e, "cluster file"))?;
        file.validate(text)
    }

    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Node `name`'s part: the one-node description, validated.
    pub fn node_part(&self, name: &str) -> Result<(Topology, String), ModelError> {
        let i = self.index_of(name)?;
        Ok((self.parts[i].clone(), self.node_text(i)))
    }

    /// Where node `name` is in [`Cluster::nodes`].
    fn index_of(&self, name: &str) -> Result<usize, ModelError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                invalid(
                    "--cluster-node",
                    format!(
                        "cluster {:?} has no node {name:?}; its nodes are {}",
                        self.name,
                        names.join(", ")
                    ),
                )
            })
    }

    /// The one-node description of node number `i`: the file's shared
    /// settings (comments kept), the node's pod range, pods and MTU, and
    /// its `[node]` table.
    fn node_text(&self, i: usize) -> String {
        let mut doc: toml_edit::DocumentMut = self.text.parse().expect("parsed before");
        let pods = doc["nodes"]
            .as_array_of_tables()
            .and_then(|a| a.get(i))
            .and_then(|t| t.get("pods"))
            .cloned();
        for key in CLUSTER_KEYS {
            doc.remove(key);
        }
        let me = &self.nodes[i];
        doc["pod_cidr"] = toml_edit::value(me.pod_cidr.to_string());
        if let Some(v6) = me.pod_cidr6 {
            doc["pod_cidr6"] = toml_edit::value(v6.to_string());
        }
        doc["mtu"] = toml_edit::value(i64::from(self.pod_mtu()));
        if let Some(pods) = pods {
            doc["pods"] = pods;
        }
        let node = toml::to_string(&NodeTable {
            node: self.node_file(me),
        })
        .expect("a node table serializes");
        let node: toml_edit::DocumentMut = node.parse().expect("serialized TOML parses");
        doc["node"] = node["node"].clone();
        doc.to_string()
    }

    fn node_file(&self, me: &ClusterNode) -> NodeFile {
        let u = &self.underlay;
        NodeFile {
            name: me.name.clone(),
            cross_node: self.cross_node,
            cluster_cidr: self.cluster_cidr,
            cluster_cidr6: self.cluster_cidr6,
            interface: u.interface.clone(),
            address: Ipv4Net::new(me.address, u.cidr.prefix_len()).expect("a valid length"),
            address6: me
                .address6
                .zip(u.cidr6)
                .map(|(a, c)| Ipv6Net::new(a, c.prefix_len()).expect("a valid length")),
            vni: u.vni,
            port: u.port,
            underlay_mtu: u.mtu,
            peers: self
                .nodes
                .iter()
                .filter(|n| n.name != me.name)
                .map(|n| PeerFile {
                    name: n.name.clone(),
                    address: n.address,
                    address6: n.address6,
                    pod_cidr: n.pod_cidr,
                    pod_cidr6: n.pod_cidr6,
                })
                .collect(),
        }
    }

    /// The pods' MTU: the underlay's, minus VXLAN's overhead when the mode
    /// encapsulates.
    pub fn pod_mtu(&self) -> u32 {
        node::pod_mtu(self.cross_node, self.underlay.mtu)
    }
}

#[derive(serde::Serialize)]
struct NodeTable {
    node: NodeFile,
}

/// A one-node key in a cluster file is a mistake with a known fix; an
/// unknown key, a typo.
fn refuse_one_node_keys(text: &str) -> Result<(), ModelError> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(()); // The parser below names the line.
    };
    for key in table.keys() {
        let fix = match key.as_str() {
            k if SHARED_KEYS.contains(&k) || CLUSTER_KEYS.contains(&k) => continue,
            "pod_cidr" | "pod_cidr6" => "a cluster file gives each node its range: set cluster_cidr (and cluster_cidr6), and pod_cidr per [[nodes]] if you want to choose",
            "host_address" | "host_address6" => "each node's address is the first of its pod range; remove it",
            "pods" => "pods belong to a node: move them under [[nodes.pods]]",
            "mtu" => "pods get the underlay's MTU (minus VXLAN's overhead): set [underlay] mtu",
            _ => "remove it or check its spelling",
        };
        return Err(invalid(
            key.clone(),
            format!("not a key of a cluster file; {fix}"),
        ));
    }
    Ok(())
}

impl ClusterFile {
    fn validate(self, text: &str) -> Result<Cluster, ModelError> {
        super::validate_topology_name(&self.name)?;
        let cluster_cidr = self.cluster_cidr.ok_or_else(|| {
            invalid(
                "cluster_cidr",
                "a cluster file needs cluster_cidr, the range every node's pod range is carved \
                 from; add e.g. cluster_cidr = \"10.244.0.0/16\"",
            )
        })?;
        let cluster_cidr = exact4("cluster_cidr", cluster_cidr)?;
        let cluster_cidr6 = self
            .cluster_cidr6
            .map(|c| exact6("cluster_cidr6", c))
            .transpose()?;
        validate_node_names(&self.nodes)?;
        self.validate_bridge_ports()?;
        let pod_cidrs = carve(cluster_cidr, self.node_prefix_len, &self.nodes)?;
        let pod_cidrs6 = self.carve6(cluster_cidr6)?;
        let underlay = self.underlay.validate(cluster_cidr, cluster_cidr6)?;
        refuse_host_gw_without_ipv6(self.cross_node, cluster_cidr6, &underlay)?;
        let (addresses, addresses6) = underlay.addresses(&self.nodes)?;
        let nodes: Vec<ClusterNode> = self
            .nodes
            .iter()
            .zip(pod_cidrs)
            .zip(pod_cidrs6)
            .zip(addresses.into_iter().zip(addresses6))
            .map(|(((n, v4), v6), (a4, a6))| ClusterNode {
                name: n.name.clone(),
                pod_cidr: v4,
                pod_cidr6: v6,
                address: a4,
                address6: a6,
            })
            .collect();
        Ok(Cluster {
            name: self.name,
            cross_node: self.cross_node,
            cluster_cidr,
            cluster_cidr6,
            node_prefix_len: self.node_prefix_len,
            node_prefix_len6: self.node_prefix_len6,
            underlay,
            nodes,
            parts: Vec::new(),
            text: text.to_string(),
        })
    }
}

impl ClusterFile {
    /// Each node's port on `underlay.bridge` (if set) is a name Linux takes.
    fn validate_bridge_ports(&self) -> Result<(), ModelError> {
        let Some(bridge) = &self.underlay.bridge else {
            return Ok(());
        };
        super::validate_ifname("underlay.bridge", bridge)?;
        for (i, n) in self.nodes.iter().enumerate() {
            let port = host_port(&self.name, &n.name);
            if port.len() > super::IFNAME_MAX {
                return Err(invalid(
                    format!("nodes[{i}].name"),
                    format!(
                        "its port on underlay.bridge, {port:?}, would be longer than the {} \
                         characters Linux allows; shorten the node or cluster name",
                        super::IFNAME_MAX
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Each node's IPv6 pod range, all `None` without `cluster_cidr6`.
    fn carve6(&self, cluster_cidr6: Option<Ipv6Net>) -> Result<Vec<Option<Ipv6Net>>, ModelError> {
        if let Some(c6) = cluster_cidr6 {
            let ranges = carve(c6, self.node_prefix_len6, &self.nodes)?;
            return Ok(ranges.into_iter().map(Some).collect());
        }
        if let Some(i) = self.nodes.iter().position(|n| n.pod_cidr6.is_some()) {
            return Err(invalid(
                format!("nodes[{i}].pod_cidr6"),
                "an IPv6 pod range needs cluster_cidr6; add cluster_cidr6 or remove it",
            ));
        }
        Ok(vec![None; self.nodes.len()])
    }
}

/// host-gw routes IPv6 ranges via IPv6 underlay addresses: the kernel has
/// no IPv6 route via an IPv4 next hop.
fn refuse_host_gw_without_ipv6(
    cross_node: CrossNode,
    cluster_cidr6: Option<Ipv6Net>,
    underlay: &Underlay,
) -> Result<(), ModelError> {
    if cross_node == CrossNode::HostGw && cluster_cidr6.is_some() && underlay.cidr6.is_none() {
        return Err(invalid(
            "underlay.cidr6",
            "cross_node = \"host-gw\" routes the IPv6 pod ranges via the nodes' IPv6 underlay \
             addresses (the kernel has no IPv6 route via an IPv4 next hop); set [underlay] \
             cidr6 (e.g. \"fd00:198:18::/64\") or remove cluster_cidr6",
        ));
    }
    Ok(())
}

/// An error in node `i`'s part, named where the cluster file says it.
fn in_node(i: usize, name: &str, e: ModelError) -> ModelError {
    let field = match e.field.as_str() {
        f if f.starts_with("pods") || f.starts_with("pod_cidr") => format!("nodes[{i}].{f}"),
        f if f.starts_with("node.") => format!("nodes[{i}] ({})", &f["node.".len()..]),
        f => format!("{f} (in node {name:?})"),
    };
    ModelError { field, ..e }
}

fn refuse_large_pod_mtu(i: usize, part: &Topology, mtu: u32) -> Result<(), ModelError> {
    match part.pods.iter().position(|p| p.mtu > mtu) {
        Some(j) => Err(invalid(
            format!("nodes[{i}].pods[{j}].mtu"),
            format!(
                "MTU {} is more than the {mtu} the underlay carries in this cross_node mode; \
                 lower it or omit it",
                part.pods[j].mtu
            ),
        )),
        None => Ok(()),
    }
}

fn exact4(field: &str, net: Ipv4Net) -> Result<Ipv4Net, ModelError> {
    match net.trunc() {
        t if t == net => Ok(t),
        t => Err(invalid(
            field,
            format!("{net} has host bits set; write the network address: {t}"),
        )),
    }
}

fn exact6(field: &str, net: Ipv6Net) -> Result<Ipv6Net, ModelError> {
    match net.trunc() {
        t if t == net => Ok(t),
        t => Err(invalid(
            field,
            format!("{net} has host bits set; write the network address: {t}"),
        )),
    }
}

fn validate_node_names(nodes: &[NodeEntry]) -> Result<(), ModelError> {
    if nodes.is_empty() {
        return Err(invalid(
            "nodes",
            "a cluster needs at least one [[nodes]] entry",
        ));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        validate_node_name(&format!("nodes[{i}].name"), &n.name)?;
        if let Some(first) = seen.insert(&n.name, i) {
            return Err(invalid(
                format!("nodes[{i}].name"),
                format!(
                    "node name {:?} is already used by nodes[{first}]; node names must be unique",
                    n.name
                ),
            ));
        }
    }
    Ok(())
}

/// A node's name: it names the lab's switch port and namespace, and a
/// node's records in etcd.
pub fn validate_node_name(field: &str, name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= NODE_NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    Err(invalid(
        field,
        format!(
            "node name {name:?} is not allowed; use 1 to {NODE_NAME_MAX} lowercase letters, \
             digits and '-', starting with a letter"
        ),
    ))
}

/// What carving node ranges needs of a prefix type (IPv4 or IPv6).
trait Prefix: Copy + PartialEq + std::fmt::Display + 'static {
    /// A node's key, the cluster's key and the length's key.
    const KEYS: (&'static str, &'static str, &'static str);
    const MAX_LEN: u8;
    fn len(self) -> u8;
    fn holds(self, other: Self) -> bool;
    fn meets(self, other: Self) -> bool;
    /// Whether no two of `nets` meet.
    fn disjoint(nets: impl Iterator<Item = Self>) -> bool;
    fn split(self, len: u8) -> Box<dyn Iterator<Item = Self>>;
    fn of(node: &NodeEntry) -> Option<Self>;
}

impl Prefix for Ipv4Net {
    const KEYS: (&'static str, &'static str, &'static str) =
        ("pod_cidr", "cluster_cidr", "node_prefix_len");
    const MAX_LEN: u8 = 30;
    fn len(self) -> u8 {
        self.prefix_len()
    }
    fn holds(self, other: Self) -> bool {
        self.contains(&other)
    }
    fn meets(self, other: Self) -> bool {
        overlaps4(self, other)
    }
    fn disjoint(nets: impl Iterator<Item = Self>) -> bool {
        disjoint4(nets)
    }
    fn split(self, len: u8) -> Box<dyn Iterator<Item = Self>> {
        Box::new(self.subnets(len).expect("checked length"))
    }
    fn of(node: &NodeEntry) -> Option<Self> {
        node.pod_cidr
    }
}

impl Prefix for Ipv6Net {
    const KEYS: (&'static str, &'static str, &'static str) =
        ("pod_cidr6", "cluster_cidr6", "node_prefix_len6");
    const MAX_LEN: u8 = 120;
    fn len(self) -> u8 {
        self.prefix_len()
    }
    fn holds(self, other: Self) -> bool {
        self.contains(&other)
    }
    fn meets(self, other: Self) -> bool {
        overlaps6(self, other)
    }
    fn disjoint(nets: impl Iterator<Item = Self>) -> bool {
        disjoint6(nets)
    }
    fn split(self, len: u8) -> Box<dyn Iterator<Item = Self>> {
        Box::new(self.subnets(len).expect("checked length"))
    }
    fn of(node: &NodeEntry) -> Option<Self> {
        node.pod_cidr6
    }
}

/// Each node's pod range: given, or the next `/len` of the cluster range
/// that no node was given.
fn carve<P: Prefix>(cluster: P, len: u8, nodes: &[NodeEntry]) -> Result<Vec<P>, ModelError> {
    let (key, cluster_key, len_key) = P::KEYS;
    if len < cluster.len() || len > P::MAX_LEN {
        return Err(invalid(
            len_key,
            format!(
                "/{len} node ranges cannot be carved from {cluster_key} {cluster}; use {} to {}",
                cluster.len(),
                P::MAX_LEN
            ),
        ));
    }
    let given: Vec<(usize, P)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((i, P::of(n)?)))
        .collect();
    // The pairwise check names a clash; only run when there is one.
    if !P::disjoint(given.iter().map(|(_, g)| *g)) {
        check_given(&given, |a, b| a.meets(*b), key)?;
    }
    if let Some((i, g)) = given.iter().find(|(_, g)| !cluster.holds(*g)) {
        return Err(outside(
            &format!("nodes[{i}].{key}"),
            g,
            cluster_key,
            cluster,
        ));
    }
    let mut free = cluster
        .split(len)
        .filter(|s| given.iter().all(|(_, g)| !s.meets(*g)));
    nodes
        .iter()
        .map(|n| match P::of(n) {
            Some(given) => Ok(given),
            None => free
                .next()
                .ok_or_else(|| too_many(cluster_key, cluster, len, nodes.len())),
        })
        .collect()
}

fn outside(
    field: &str,
    net: impl std::fmt::Display,
    key: &str,
    cluster: impl std::fmt::Display,
) -> ModelError {
    invalid(
        field,
        format!("{net} is outside {key} {cluster}; pick a range inside it (or omit it to have one carved)"),
    )
}

fn check_given<N: std::fmt::Display>(
    given: &[(usize, N)],
    overlaps: impl Fn(&N, &N) -> bool,
    key: &str,
) -> Result<(), ModelError> {
    for (k, (i, a)) in given.iter().enumerate() {
        if let Some((j, b)) = given[..k].iter().find(|(_, b)| overlaps(a, b)) {
            return Err(invalid(
                format!("nodes[{i}].{key}"),
                format!(
                    "{a} overlaps {b} of nodes[{j}]; every node needs a range of its own (or \
                     omit {key} to have one carved)"
                ),
            ));
        }
    }
    Ok(())
}

fn too_many(field: &str, cluster: impl std::fmt::Display, len: u8, nodes: usize) -> ModelError {
    invalid(
        field,
        format!(
            "{cluster} has no free /{len} left for every one of the {nodes} nodes; use a larger \
             {field} or a longer node prefix length"
        ),
    )
}

impl UnderlayFile {
    fn validate(self, cluster: Ipv4Net, cluster6: Option<Ipv6Net>) -> Result<Underlay, ModelError> {
        super::validate_ifname("underlay.interface", &self.interface)?;
        let cidr = exact4("underlay.cidr", self.cidr)?;
        if overlaps4(cidr, cluster) {
            return Err(invalid(
                "underlay.cidr",
                format!(
                    "{cidr} overlaps cluster_cidr {cluster}; the underlay needs a range of its own"
                ),
            ));
        }
        if cidr.prefix_len() > 29 {
            return Err(invalid(
                "underlay.cidr",
                format!("{cidr} is too small for nodes and a gateway; use a /29 or larger"),
            ));
        }
        let cidr6 = self
            .cidr6
            .map(|c| exact6("underlay.cidr6", c))
            .transpose()?;
        if let (Some(c6), Some(k6)) = (cidr6, cluster6) {
            if overlaps6(c6, k6) {
                return Err(invalid(
                    "underlay.cidr6",
                    format!(
                        "{c6} overlaps cluster_cidr6 {k6}; the underlay needs a range of its own"
                    ),
                ));
            }
        }
        if let Some(g) = self.gateway.filter(|g| !usable4(cidr, *g)) {
            return Err(invalid(
                "underlay.gateway",
                format!("{g} is not a usable address of underlay.cidr {cidr}; pick one inside it"),
            ));
        }
        match (self.gateway6, cidr6) {
            (Some(g), Some(c6)) if !c6.contains(&g) || g == c6.network() => {
                return Err(invalid(
                    "underlay.gateway6",
                    format!(
                        "{g} is not a usable address of underlay.cidr6 {c6}; pick one inside it"
                    ),
                ))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "underlay.gateway6",
                    "gateway6 needs underlay.cidr6; add it or remove gateway6",
                ))
            }
            _ => {}
        }
        super::validate_mtu("underlay.mtu", self.mtu)?;
        if self.vni == 0 || self.vni >= 1 << 24 {
            return Err(invalid(
                "underlay.vni",
                format!("VNI {} is out of range; use 1 to 16777215", self.vni),
            ));
        }
        if self.port == 0 {
            return Err(invalid(
                "underlay.port",
                "port 0 is not a UDP port; use 8472 (Linux and flannel) or 4789 (IANA)",
            ));
        }
        Ok(Underlay {
            interface: self.interface,
            cidr,
            cidr6,
            gateway: self.gateway,
            gateway6: self.gateway6,
            bridge: self.bridge,
            vni: self.vni,
            port: self.port,
            mtu: self.mtu,
        })
    }
}

fn usable4(cidr: Ipv4Net, a: Ipv4Addr) -> bool {
    cidr.contains(&a) && a != cidr.network() && a != cidr.broadcast()
}

impl Underlay {
    /// Each node's underlay addresses: given, or the next free ones.
    fn addresses(
        &self,
        nodes: &[NodeEntry],
    ) -> Result<(Vec<Ipv4Addr>, Vec<Option<Ipv6Addr>>), ModelError> {
        let mut taken: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        taken.extend(self.gateway.map(|g| (g, "underlay.gateway".to_string())));
        for (i, n) in nodes.iter().enumerate() {
            let Some(a) = n.address else { continue };
            let field = format!("nodes[{i}].address");
            if !usable4(self.cidr, a) {
                return Err(invalid(
                    field,
                    format!("{a} is not a usable address of underlay.cidr {}; pick one inside it or omit it", self.cidr),
                ));
            }
            if let Some(other) = taken.insert(a, field.clone()) {
                return Err(invalid(
                    field,
                    format!("{a} is already {other}; pick another"),
                ));
            }
        }
        let mut free = self.cidr.hosts().filter(|a| !taken.contains_key(a));
        let v4 = nodes
            .iter()
            .map(|n| match n.address {
                Some(a) => Ok(a),
                None => free.next().ok_or_else(|| {
                    invalid(
                        "underlay.cidr",
                        format!(
                            "{} has no address left for every node; use a larger one",
                            self.cidr
                        ),
                    )
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(cidr6) = self.cidr6 else {
            if let Some(i) = nodes.iter().position(|n| n.address6.is_some()) {
                return Err(invalid(
                    format!("nodes[{i}].address6"),
                    "an IPv6 underlay address needs underlay.cidr6; add it or remove address6",
                ));
            }
            return Ok((v4, vec![None; nodes.len()]));
        };
        // IPv6 addresses follow the IPv4 ones' host numbers when not given,
        // so `198.18.0.2` is `…::2`.
        let v6 = nodes
            .iter()
            .zip(&v4)
            .enumerate()
            .map(|(i, (n, a4))| {
                let a = n.address6.unwrap_or_else(|| {
                    let host = u32::from(*a4) - u32::from(self.cidr.network());
                    Ipv6Addr::from(u128::from(cidr6.network()) + u128::from(host))
                });
                if !cidr6.contains(&a) || a == cidr6.network() {
                    return Err(invalid(
                        format!("nodes[{i}].address6"),
                        format!("{a} is not a usable address of underlay.cidr6 {cidr6}"),
                    ));
                }
                Ok(Some(a))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((v4, v6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"# a lab
name = "lab"
mode = "bridge"
cross_node = "vxlan"
cluster_cidr = "10.244.0.0/16"
cluster_cidr6 = "fd00:10:244::/56"
[underlay]
cidr6 = "fd00:198:18::/64"
gateway = "198.18.0.254"
[[nodes]]
name = "n1"
[[nodes.pods]]
name = "a"
[[nodes.pods]]
name = "b"
[[nodes]]
name = "n2"
pod_cidr = "10.244.0.0/24"
[[nodes.pods]]
name = "a"
[[nodes]]
name = "n3"
"#;

    fn err(text: &str) -> ModelError {
        Cluster::from_toml(text).unwrap_err()
    }

    #[test]
    fn ranges_are_carved_in_order_around_given_ones() {
        let c = Cluster::from_toml(THREE).unwrap();
        let ranges: Vec<String> = c.nodes.iter().map(|n| n.pod_cidr.to_string()).collect();
        assert_eq!(ranges, ["10.244.1.0/24", "10.244.0.0/24", "10.244.2.0/24"]);
        let v6: Vec<String> = c
            .nodes
            .iter()
            .map(|n| n.pod_cidr6.unwrap().to_string())
            .collect();
        assert_eq!(
            v6,
            [
                "fd00:10:244::/64",
                "fd00:10:244:1::/64",
                "fd00:10:244:2::/64"
            ]
        );
        let addrs: Vec<String> = c.nodes.iter().map(|n| n.address.to_string()).collect();
        assert_eq!(addrs, ["198.18.0.1", "198.18.0.2", "198.18.0.3"]);
    }

    #[test]
    fn a_node_part_is_a_one_node_network_that_knows_the_others() {
        let c = Cluster::from_toml(THREE).unwrap();
        let (t, text) = c.node_part("n2").unwrap();
        assert_eq!(Topology::from_toml(&text).unwrap(), t);
        assert_eq!(t.name, "lab");
        assert_eq!(t.pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(t.pods.len(), 1);
        assert_eq!(t.pods[0].mtu, 1450, "VXLAN over an IPv4 underlay");
        let node = t.node.unwrap();
        assert_eq!(node.address.to_string(), "198.18.0.2/24");
        assert_eq!(node.vxlan_device, "lab-vx");
        let peers: Vec<(&str, String, String)> = node
            .peers
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.pod_cidr.to_string(),
                    p.gateway.to_string(),
                )
            })
            .collect();
        assert_eq!(
            peers,
            [
                ("n1", "10.244.1.0/24".into(), "10.244.1.1".into()),
                ("n3", "10.244.2.0/24".into(), "10.244.2.1".into())
            ]
        );
        assert_eq!(node.peers[0].vtep_mac, [0x0e, 0x58, 198, 18, 0, 1]);
        assert!(text.starts_with("# a lab"), "comments kept: {text}");
        let e = c.node_part("n9").unwrap_err();
        assert!(e.message.contains("n1, n2, n3"), "{e}");
    }

    #[test]
    fn host_gw_keeps_the_underlay_mtu_and_routes_ipv6_over_an_ipv6_underlay() {
        let host_gw = THREE.replace("\"vxlan\"", "\"host-gw\"");
        let e = err(&host_gw.replace("cidr6 = \"fd00:198:18::/64\"\n", ""));
        assert_eq!(e.field, "underlay.cidr6", "{e}");
        let jumbo = |t: &str| t.replace("[underlay]\n", "[underlay]\nmtu = 9000\n");
        let c = Cluster::from_toml(&jumbo(&host_gw)).unwrap();
        assert_eq!(c.parts[0].pods[0].mtu, 9000);
        let c = Cluster::from_toml(&jumbo(THREE)).unwrap();
        assert_eq!(c.parts[0].pods[0].mtu, 8950);
        assert_eq!(c.nodes[2].address6.unwrap().to_string(), "fd00:198:18::3");
    }

    #[test]
    fn every_cross_node_mode_parses() {
        for mode in CrossNode::ALL {
            let text = THREE.replace("\"vxlan\"", &format!("\"{mode}\""));
            assert_eq!(Cluster::from_toml(&text).unwrap().cross_node, mode);
        }
        let e = err(&THREE.replace("\"vxlan\"", "\"ipip\""));
        assert!(e.field.starts_with("line 4"), "{e}");
    }

    #[test]
    fn mistakes_name_the_field_and_the_fix() {
        let cases: [(String, &str, &str); 10] = [
            (
                THREE.replace("pod_cidr = \"10.244.0.0/24\"", "pod_cidr = \"10.9.0.0/24\""),
                "nodes[1].pod_cidr",
                "outside cluster_cidr",
            ),
            (
                THREE.replace(
                    "name = \"n3\"",
                    "name = \"n3\"\npod_cidr = \"10.244.0.128/25\"",
                ),
                "nodes[2].pod_cidr",
                "overlaps 10.244.0.0/24 of nodes[1]",
            ),
            (
                THREE.replace("\"n3\"", "\"n1\""),
                "nodes[2].name",
                "already used",
            ),
            (
                THREE.replace("10.244.0.0/16", "10.244.0.0/23"),
                "cluster_cidr",
                "no free /24",
            ),
            (
                THREE.replace("[underlay]\n", "[underlay]\ncidr = \"10.244.9.0/24\"\n"),
                "underlay.cidr",
                "overlaps cluster_cidr",
            ),
            (
                format!("pod_cidr = \"10.1.0.0/24\"\n{THREE}"),
                "pod_cidr",
                "cluster_cidr",
            ),
            (format!("mtu = 9000\n{THREE}"), "mtu", "[underlay] mtu"),
            (
                THREE.replace("name = \"b\"", "name = \"b\"\nmtu = 1500"),
                "nodes[0].pods[1].mtu",
                "1450",
            ),
            (
                THREE.replace("name = \"b\"", "name = \"B\""),
                "nodes[0].pods[1].name",
                "not allowed",
            ),
            (
                THREE.replace("cluster_cidr = \"10.244.0.0/16\"\n", ""),
                "cluster_cidr",
                "needs cluster_cidr",
            ),
        ];
        for (text, field, says) in cases {
            let e = err(&text);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn one_node_files_are_not_cluster_files() {
        assert!(is_cluster(THREE));
        assert!(!is_cluster(crate::model::DEFAULT_TOPOLOGY));
        let e = Topology::from_toml(THREE).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }
}
