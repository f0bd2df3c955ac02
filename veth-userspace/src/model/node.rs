//! One node's part of a cluster: the `[node]` table of the description a
//! node is brought up with (`vethctl up -t CLUSTER --cluster-node NAME` derives it
//! from the cluster file, see [`super::cluster`]). It says where the node
//! sits on the underlay and where every other node's pods are, which is all
//! the cross-node wiring needs. Pure.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{invalid, overlaps4, overlaps6, ModelError};

/// How pods reach pods on other nodes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum CrossNode {
    /// A kernel route per remote node's pod range via its underlay address
    /// (flannel host-gw, Calico without encapsulation).
    #[default]
    HostGw,
    /// A kernel VXLAN device, one FDB and neighbour entry and one route per
    /// remote node (flannel's `flannel.1`).
    Vxlan,
    /// Native routing done by the programs (built on the `xnode-ebpf` side).
    Ebpf,
    /// The programs over a collect-metadata VXLAN device.
    EbpfVxlan,
}

impl CrossNode {
    pub const ALL: [CrossNode; 4] = [
        CrossNode::HostGw,
        CrossNode::Vxlan,
        CrossNode::Ebpf,
        CrossNode::EbpfVxlan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrossNode::HostGw => "host-gw",
            CrossNode::Vxlan => "vxlan",
            CrossNode::Ebpf => "ebpf",
            CrossNode::EbpfVxlan => "ebpf-vxlan",
        }
    }

    /// Whether frames between nodes are VXLAN-encapsulated.
    pub fn encapsulates(self) -> bool {
        matches!(self, CrossNode::Vxlan | CrossNode::EbpfVxlan)
    }
}

impl std::fmt::Display for CrossNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// VXLAN's overhead between IPv4 VTEPs (the only kind made here): outer
/// Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8, why flannel's pods get 1450 on
/// a 1500 network. (IPv6 VTEPs would cost 70.)
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN's port on Linux and in flannel (IANA's is 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// VNI of flannel's `flannel.1`.
pub const DEFAULT_VNI: u32 = 1;
/// Suffix of the VXLAN device (`<network>-vx`).
pub const VXLAN_SUFFIX: &str = "vx";

/// The `[node]` table as written.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub name: String,
    #[serde(default)]
    pub cross_node: CrossNode,
    pub cluster_cidr: Ipv4Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr6: Option<Ipv6Net>,
    /// The node's underlay interface (`eth0` of a lab node).
    pub interface: String,
    /// The node's underlay address, with the underlay's prefix length.
    pub address: Ipv4Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Net>,
    pub vni: u32,
    pub port: u16,
    /// MTU of the underlay; pods get it minus the encapsulation.
    pub underlay_mtu: u32,
    #[serde(default)]
    pub peers: Vec<PeerFile>,
}

/// Another node of the cluster, as this node needs to know it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    pub name: String,
    pub address: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    pub pod_cidr: Ipv4Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
}

/// A node's part, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePart {
    pub name: String,
    pub cross_node: CrossNode,
    pub cluster_cidr: Ipv4Net,
    pub cluster_cidr6: Option<Ipv6Net>,
    pub interface: String,
    pub address: Ipv4Net,
    pub address6: Option<Ipv6Net>,
    pub vni: u32,
    pub port: u16,
    pub underlay_mtu: u32,
    /// The VXLAN device's MAC, derived from the underlay address so that
    /// every node computes every other's.
    pub vtep_mac: [u8; 6],
    /// The VXLAN device (`<network>-vx`).
    pub vxlan_device: String,
    pub peers: Vec<Peer>,
}

/// Another node, validated, with what reaching it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: Ipv4Addr,
    pub address6: Option<Ipv6Addr>,
    pub pod_cidr: Ipv4Net,
    pub pod_cidr6: Option<Ipv6Net>,
    /// Its node address in its pod range (the first one, as on every
    /// node): the next hop over the VXLAN device, like flannel's
    /// `<range>.0` on `flannel.1`.
    pub gateway: Ipv4Addr,
    pub gateway6: Option<Ipv6Addr>,
    pub vtep_mac: [u8; 6],
}

/// MAC of a node's VXLAN device: locally administered, from its underlay
/// address.
pub fn vtep_mac(underlay: Ipv4Addr) -> [u8; 6] {
    // The eBPF tunnel path puts the same MAC on frames for the node.
    veth_common::vtep_mac(underlay.octets())
}

/// The node address of a pod range (its first address, the default
/// `host_address` of every topology).
pub fn gateway_of(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.hosts().next().unwrap_or(pod_cidr.network())
}

/// `::1` of an IPv6 pod range (the default `host_address6`).
pub fn gateway6_of(pod_cidr6: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(pod_cidr6.network()) + 1)
}

/// A range of a node: its name, IPv4 and IPv6 pod ranges.
type NodeRanges = (String, Ipv4Net, Option<Ipv6Net>);

/// `peer` (at `field`) has a name or a range of one of `ranges`: refused,
/// naming the first.
fn refuse_clash(field: &str, peer: &PeerFile, ranges: &[NodeRanges]) -> Result<(), ModelError> {
    for (other, v4, v6) in ranges {
        let clash6 = matches!((v6, peer.pod_cidr6), (Some(a), Some(b)) if overlaps6(*a, b));
        if overlaps4(*v4, peer.pod_cidr) || clash6 || *other == peer.name {
            return Err(invalid(
                field,
                format!(
                    "node {:?} has the name or a pod range of node {other:?}; every node \
                     needs its own name and ranges",
                    peer.name
                ),
            ));
        }
    }
    Ok(())
}

impl NodeFile {
    /// Whether this node and its peers have names and pod ranges of their
    /// own.
    fn names_and_ranges_distinct(&self, pod_cidr: Ipv4Net, pod_cidr6: Option<Ipv6Net>) -> bool {
        let mut names = std::collections::HashSet::new();
        let names_distinct = std::iter::once(&self.name)
            .chain(self.peers.iter().map(|p| &p.name))
            .all(|n| names.insert(n.as_str()));
        let v4 = std::iter::once(pod_cidr).chain(self.peers.iter().map(|p| p.pod_cidr));
        let v6 = pod_cidr6
            .into_iter()
            .chain(self.peers.iter().filter_map(|p| p.pod_cidr6));
        names_distinct && super::disjoint4(v4) && super::disjoint6(v6)
    }

    /// Validates the table of a network whose own pod ranges are
    /// `pod_cidr` and `pod_cidr6` and whose object prefix is `prefix`.
    pub fn validate(
        self,
        prefix: &str,
        pod_cidr: Ipv4Net,
        pod_cidr6: Option<Ipv6Net>,
    ) -> Result<NodePart, ModelError> {
        super::validate_ifname("node.interface", &self.interface)?;
        if self.interface.starts_with(prefix) {
            return Err(invalid(
                "node.interface",
                format!(
                    "{:?} is one of this network's own interfaces; name the node's underlay \
                     interface (e.g. \"eth0\")",
                    self.interface
                ),
            ));
        }
        inside4("pod_cidr", pod_cidr, self.cluster_cidr)?;
        inside6("pod_cidr6", pod_cidr6, self.cluster_cidr6)?;
        let mut ranges = vec![(self.name.clone(), pod_cidr, pod_cidr6)];
        // The pairwise check below names a clash; only run when there is one.
        let clash = !self.names_and_ranges_distinct(pod_cidr, pod_cidr6);
        let mut peers = Vec::new();
        for (i, peer) in self.peers.into_iter().enumerate() {
            let field = format!("node.peers[{i}]");
            inside4(
                &format!("{field}.pod_cidr"),
                peer.pod_cidr,
                self.cluster_cidr,
            )?;
            inside6(
                &format!("{field}.pod_cidr6"),
                peer.pod_cidr6,
                self.cluster_cidr6,
            )?;
            if clash {
                refuse_clash(&field, &peer, &ranges)?;
            }
            if peer.address == self.address.addr() {
                return Err(invalid(
                    format!("{field}.address"),
                    format!("{} is this node's own underlay address", peer.address),
                ));
            }
            ranges.push((peer.name.clone(), peer.pod_cidr, peer.pod_cidr6));
            peers.push(Peer {
                gateway: gateway_of(peer.pod_cidr),
                gateway6: peer.pod_cidr6.map(gateway6_of),
                vtep_mac: vtep_mac(peer.address),
                name: peer.name,
                address: peer.address,
                address6: peer.address6,
                pod_cidr: peer.pod_cidr,
                pod_cidr6: peer.pod_cidr6,
            });
        }
        Ok(NodePart {
            vtep_mac: vtep_mac(self.address.addr()),
            vxlan_device: format!("{prefix}{VXLAN_SUFFIX}"),
            name: self.name,
            cross_node: self.cross_node,
            cluster_cidr: self.cluster_cidr,
            cluster_cidr6: self.cluster_cidr6,
            interface: self.interface,
            address: self.address,
            address6: self.address6,
            vni: self.vni,
            port: self.port,
            underlay_mtu: self.underlay_mtu,
            peers,
        })
    }
}

impl NodePart {
    /// The largest pod MTU the cross-node mode carries over the underlay.
    pub fn pod_mtu(&self) -> u32 {
        pod_mtu(self.cross_node, self.underlay_mtu)
    }
}

/// The pods' MTU for `cross_node` on an underlay of `underlay_mtu`: the
/// VTEPs speak IPv4, so VXLAN costs 50 bytes.
pub fn pod_mtu(cross_node: CrossNode, underlay_mtu: u32) -> u32 {
    match cross_node.encapsulates() {
        false => underlay_mtu,
        true => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
    }
}

fn inside4(field: &str, net: Ipv4Net, cluster: Ipv4Net) -> Result<(), ModelError> {
    if cluster.contains(&net) {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("{net} is outside cluster_cidr {cluster}; pick a range inside it (or omit it to have one carved)"),
    ))
}

fn inside6(field: &str, net: Option<Ipv6Net>, cluster: Option<Ipv6Net>) -> Result<(), ModelError> {
    match (net, cluster) {
        (None, _) => Ok(()),
        (Some(net), Some(cluster)) if cluster.contains(&net) => Ok(()),
        (Some(net), Some(cluster)) => Err(invalid(
            field,
            format!("{net} is outside cluster_cidr6 {cluster}; pick a range inside it (or omit it to have one carved)"),
        )),
        (Some(net), None) => Err(invalid(
            field,
            format!("{net} needs cluster_cidr6; add cluster_cidr6 or remove it"),
        )),
    }
}
