//! Cross-node `ebpf` and `ebpf-vxlan`: the maps that say where other
//! nodes' pods are (remote-route tries, known nodes, this node's
//! configuration) and the programs at the node's underlay interface and
//! collect-metadata VXLAN device. In `host-gw` and `vxlan` the same maps
//! and underlay program only check what comes from other nodes.
//!
//! Inputs are plain values ([`LocalNode`], [`RemoteNode`]) so that the
//! cluster plan and a control plane can call the same functions. Writing
//! converges: the maps end up holding exactly what is asked, and entries
//! already right are not rewritten. Switching paths is one write of the
//! configuration entry (no program reload): onto a programs' path after
//! the routes are in, off it before they go.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray,
    },
    programs::{links::FdLink, tc::TcAttachType, SchedClassifier},
};
use ipnet::{Ipv4Net, Ipv6Net};
use veth_common::{
    cross_node_mode,
    names::{
        MAP_CROSS_NODE, MAP_NODES, MAP_REMOTE_ROUTES, MAP_REMOTE_ROUTES6, MAP_UNDERLAY_COUNTERS,
        PROG_FROM_TUNNEL, PROG_FROM_UNDERLAY,
    },
    node_key_v4, route_kind, CrossNodeConfig, KnownNode, PairCounters, RemoteRoute,
};

use super::{
    ignore_missing, open_map, remove_file_if_present, sum_per_cpu, tcx_runs, unpin_link, Pins,
};

/// This node, as the cross-node programs need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalNode {
    /// The node's underlay interface (its `eth0`).
    pub underlay_ifindex: u32,
    /// This node's pod ranges: their endpoints are local, the rest of
    /// them the host stack's.
    pub pod_cidr: Option<Ipv4Net>,
    pub pod_cidr6: Option<Ipv6Net>,
    /// The cluster's ranges: what in them no node has is dropped
    /// (`no_remote_route`), never left to the node's default route.
    pub cluster_cidr: Option<Ipv4Net>,
    pub cluster_cidr6: Option<Ipv6Net>,
    /// This network's VXLAN network identifier and UDP port (`vxlan`,
    /// `ebpf-vxlan`).
    pub vni: u32,
    pub port: u16,
}

/// Another node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub underlay_ipv4: Option<Ipv4Addr>,
    pub underlay_ipv6: Option<Ipv6Addr>,
    pub pod_cidr: Option<Ipv4Net>,
    pub pod_cidr6: Option<Ipv6Net>,
}

/// Who sends this node's pods' frames to other nodes, and what the
/// underlay's program does with frames from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The kernel, and nothing at the underlay checks (one node).
    Kernel,
    /// The kernel (`host-gw`); `from_underlay` passes a frame for a pod
    /// range on to it only from a known node.
    Guard,
    /// The kernel's VXLAN device (`vxlan`); `from_underlay` checks as with
    /// `Guard`, and passes a datagram to the VXLAN port only from a known
    /// node with our VNI.
    GuardVxlan,
    /// The programs, natively over the underlay (`ebpf`).
    Native,
    /// The programs, through the collect-metadata VXLAN device with this
    /// ifindex (`ebpf-vxlan`).
    Tunnel { tunnel_ifindex: u32 },
}

/// What the maps should hold: the tries by (prefix length, address), the
/// known nodes by key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<(u32, [u8; 4]), RemoteRoute>,
    pub routes6: BTreeMap<(u32, [u8; 16]), RemoteRoute>,
    pub nodes: BTreeMap<[u8; 16], KnownNode>,
}

/// The map contents for `local` and `remotes` (pure). Errors name the node
/// and what to fix: a node without an underlay address, or a pod range
/// that overlaps this node's or another node's.
pub fn desired(local: &LocalNode, remotes: &[RemoteNode]) -> Result<Desired> {
    let mut d = Desired::default();
    let entry = |kind| RemoteRoute {
        kind,
        ..RemoteRoute::default()
    };
    if let Some(net) = local.cluster_cidr {
        d.routes.insert(key4(net), entry(route_kind::UNROUTABLE));
    }
    if let Some(net) = local.cluster_cidr6 {
        d.routes6.insert(key6(net), entry(route_kind::UNROUTABLE));
    }
    let mut owners4: Vec<(Ipv4Net, &str)> = local
        .pod_cidr
        .map(|n| (n, "this node"))
        .into_iter()
        .collect();
    let mut owners6: Vec<(Ipv6Net, &str)> = local
        .pod_cidr6
        .map(|n| (n, "this node"))
        .into_iter()
        .collect();
    for (net, _) in &owners4 {
        d.routes.insert(key4(*net), entry(route_kind::LOCAL));
    }
    for (net, _) in &owners6 {
        d.routes6.insert(key6(*net), entry(route_kind::LOCAL));
    }
    for node in remotes {
        if node.underlay_ipv4.is_none() && node.underlay_ipv6.is_none() {
            bail!(
                "node {:?}: no underlay address (give it an IPv4 or IPv6 underlay address)",
                node.name
            );
        }
        let route = RemoteRoute {
            kind: route_kind::REMOTE,
            node_ipv4: node.underlay_ipv4.map_or([0; 4], |a| a.octets()),
            node_ipv6: node.underlay_ipv6.map_or([0; 16], |a| a.octets()),
        };
        if let Some(net) = node.pod_cidr {
            claim(&mut owners4, net, &node.name, |a, b| {
                a.contains(b) || b.contains(a)
            })?;
            d.routes.insert(key4(net), route);
        }
        if let Some(net) = node.pod_cidr6 {
            claim(&mut owners6, net, &node.name, |a, b| {
                a.contains(b) || b.contains(a)
            })?;
            d.routes6.insert(key6(net), route);
        }
        let known = KnownNode {
            ipv4: route.node_ipv4,
            ipv6: route.node_ipv6,
        };
        if let Some(a) = node.underlay_ipv4 {
            d.nodes.insert(node_key_v4(a.octets()), known);
        }
        if let Some(a) = node.underlay_ipv6 {
            d.nodes.insert(a.octets(), known);
        }
    }
    Ok(d)
}

/// Records `net` as `name`'s, unless it overlaps a range another has.
fn claim<'a, N: Copy + std::fmt::Display>(
    owners: &mut Vec<(N, &'a str)>,
    net: N,
    name: &'a str,
    overlap: impl Fn(&N, &N) -> bool,
) -> Result<()> {
    if let Some((other, owner)) = owners.iter().find(|(o, _)| overlap(o, &net)) {
        bail!(
            "node {name:?}: pod range {net} overlaps {other} of {}; give each node its own range",
            if *owner == "this node" {
                owner.to_string()
            } else {
                format!("node {owner:?}")
            }
        );
    }
    owners.push((net, name));
    Ok(())
}

fn key4(net: Ipv4Net) -> (u32, [u8; 4]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

fn key6(net: Ipv6Net) -> (u32, [u8; 16]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// Makes the topology's cross-node maps hold what `local` and `remotes`
/// describe, and the programs take `path`, in the order that loses
/// nothing: onto a path whose programs send or check, the routes go in
/// first; onto the unchecked kernel's, the path switches first. For callers whose receiving programs
/// are attached already (see [`sync_routes`] and [`set_path`] otherwise).
pub fn sync(topology: &str, local: &LocalNode, path: Path, remotes: &[RemoteNode]) -> Result<()> {
    if path == Path::Kernel {
        set_path(topology, local, path)?;
        sync_routes(topology, local, remotes)
    } else {
        sync_routes(topology, local, remotes)?;
        set_path(topology, local, path)
    }
}

/// Makes the remote-route tries and the known nodes hold what `local` and
/// `remotes` describe (the path the programs take stays). The receiving
/// programs check sources against them: fill them before attaching those,
/// empty them only after detaching.
pub fn sync_routes(topology: &str, local: &LocalNode, remotes: &[RemoteNode]) -> Result<()> {
    let wanted = desired(local, remotes)?;
    let pins = Pins::new(topology);
    converge_trie(&pins, MAP_REMOTE_ROUTES, &wanted.routes)?;
    converge_trie(&pins, MAP_REMOTE_ROUTES6, &wanted.routes6)?;
    converge_nodes(&pins, &wanted.nodes)
}

/// Switches the path the pods' frames to other nodes take: one map write.
pub fn set_path(topology: &str, local: &LocalNode, path: Path) -> Result<()> {
    write_config(&Pins::new(topology), config_for(local, path))
}

fn config_for(local: &LocalNode, path: Path) -> CrossNodeConfig {
    let (mode, tunnel_ifindex) = match path {
        Path::Kernel => (cross_node_mode::KERNEL, 0),
        Path::Guard => (cross_node_mode::GUARD, 0),
        Path::GuardVxlan => (cross_node_mode::GUARD_VXLAN, 0),
        Path::Native => (cross_node_mode::NATIVE, 0),
        Path::Tunnel { tunnel_ifindex } => (cross_node_mode::TUNNEL, tunnel_ifindex),
    };
    CrossNodeConfig {
        mode,
        underlay_ifindex: local.underlay_ifindex,
        tunnel_ifindex,
        vni: local.vni,
        port: u32::from(local.port),
    }
}

/// The configuration entry the programs read.
pub fn read_config(topology: &str) -> Result<CrossNodeConfig> {
    let map = Array::<_, CrossNodeConfig>::try_from(Map::Array(open_map(
        &Pins::new(topology),
        MAP_CROSS_NODE,
    )?))?;
    map.get(&0, 0)
        .context("reading the cross-node configuration")
}

fn write_config(pins: &Pins, config: CrossNodeConfig) -> Result<()> {
    let mut map =
        Array::<_, CrossNodeConfig>::try_from(Map::Array(open_map(pins, MAP_CROSS_NODE)?))?;
    if map.get(&0, 0).ok() == Some(config) {
        return Ok(());
    }
    map.set(0, config, 0)
        .context("writing the cross-node configuration")
}

/// Makes one remote-route trie hold exactly `wanted`.
fn converge_trie<const N: usize>(
    pins: &Pins,
    name: &str,
    wanted: &BTreeMap<(u32, [u8; N]), RemoteRoute>,
) -> Result<()> {
    let mut trie =
        LpmTrie::<MapData, [u8; N], RemoteRoute>::try_from(Map::LpmTrie(open_map(pins, name)?))?;
    let present: Vec<(u32, [u8; N])> = trie
        .keys()
        .filter_map(|k| k.ok())
        .map(|k| (k.prefix_len(), k.data()))
        .collect();
    for (len, addr) in present.iter().filter(|k| !wanted.contains_key(k)) {
        ignore_missing(trie.remove(&Key::new(*len, *addr)))
            .with_context(|| format!("removing a stale entry of {name}"))?;
    }
    for (&(len, addr), route) in wanted {
        let key = Key::new(len, addr);
        // An exact-prefix lookup: `get` of the trie matches the longest
        // prefix, which for a key that is there is that key.
        let current = present
            .contains(&(len, addr))
            .then(|| trie.get(&key, 0).ok())
            .flatten();
        if current.as_ref() == Some(route) {
            continue;
        }
        trie.insert(&key, *route, 0)
            .with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

fn converge_nodes(pins: &Pins, wanted: &BTreeMap<[u8; 16], KnownNode>) -> Result<()> {
    let mut nodes =
        HashMap::<_, [u8; 16], KnownNode>::try_from(Map::HashMap(open_map(pins, MAP_NODES)?))?;
    let stale: Vec<[u8; 16]> = nodes
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for key in stale {
        ignore_missing(nodes.remove(&key)).context("removing a node that left")?;
    }
    for (key, node) in wanted {
        if nodes.get(key, 0).ok().as_ref() == Some(node) {
            continue;
        }
        nodes
            .insert(*key, *node, 0)
            .context("writing a known node")?;
    }
    Ok(())
}

/// Which program runs at ingress of which of the node's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeDevice {
    /// The underlay interface: `from_underlay`.
    Underlay,
    /// The collect-metadata VXLAN device: `from_tunnel`.
    Tunnel,
}

impl NodeDevice {
    fn program(self) -> &'static str {
        match self {
            NodeDevice::Underlay => PROG_FROM_UNDERLAY,
            NodeDevice::Tunnel => PROG_FROM_TUNNEL,
        }
    }
}

/// Attaches the device's program at TCX ingress of `ifname`, pinned
/// (`node-links/<ifname>/ingress`): it keeps running when vethctl exits.
/// A link already running the pinned program stays; one running an older
/// program is replaced after the new one is in.
pub fn attach(topology: &str, device: NodeDevice, ifname: &str) -> Result<()> {
    let pins = Pins::new(topology);
    let name = device.program();
    let mut prog = SchedClassifier::from_pin(pins.program(name))
        .with_context(|| format!("opening program {name} (is topology {topology:?} up?)"))?;
    let path = pins.node_link(ifname);
    let id = prog.info()?.id();
    if path.exists() && tcx_runs(ifname, TcAttachType::Ingress, id) {
        return Ok(());
    }
    let context = || format!("attaching {name} to {ifname} ingress");
    let link_id = prog
        .attach(ifname, TcAttachType::Ingress)
        .with_context(context)?;
    let link: FdLink = prog
        .take_link(link_id)?
        .try_into()
        .map_err(|e| anyhow!("{ifname} ingress: not a TCX link: {e}"))?;
    let replaced = aya::programs::links::PinnedLink::from_pin(&path)
        .ok()
        .map(FdLink::from);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_file_if_present(&path)?;
    link.pin(&path)
        .with_context(|| format!("pinning link at {}", path.display()))?;
    drop(replaced);
    Ok(())
}

/// Detaches what [`attach`] pinned on `ifname` (nothing there is fine).
pub fn detach(topology: &str, ifname: &str) -> Result<()> {
    let path = Pins::new(topology).node_link(ifname);
    unpin_link(&path)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Frames from the underlay or the tunnel device that belonged to no pod
/// (dropped for a pod range without a pod), summed over CPUs.
pub fn read_underlay_counters(topology: &str) -> Result<PairCounters> {
    let map = PerCpuArray::<_, PairCounters>::try_from(Map::PerCpuArray(open_map(
        &Pins::new(topology),
        MAP_UNDERLAY_COUNTERS,
    )?))?;
    let values = map.get(&0, 0).context("reading the underlay counters")?;
    Ok(sum_per_cpu(values.iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, last: u8, cidr: &str) -> RemoteNode {
        RemoteNode {
            name: name.into(),
            underlay_ipv4: Some(Ipv4Addr::new(192, 0, 2, last)),
            underlay_ipv6: None,
            pod_cidr: Some(cidr.parse().unwrap()),
            pod_cidr6: None,
        }
    }

    fn local() -> LocalNode {
        LocalNode {
            underlay_ifindex: 2,
            pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
            pod_cidr6: Some("fd00:10:244::/64".parse().unwrap()),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            cluster_cidr6: None,
            vni: 1,
            port: 8472,
        }
    }

    #[test]
    fn remote_ranges_local_range_and_cluster_range_each_get_their_kind() {
        let d = desired(&local(), &[node("n2", 2, "10.244.1.0/24")]).unwrap();
        assert_eq!(
            d.routes[&(16, [10, 244, 0, 0])].kind,
            route_kind::UNROUTABLE
        );
        assert_eq!(d.routes[&(24, [10, 244, 0, 0])].kind, route_kind::LOCAL);
        let remote = d.routes[&(24, [10, 244, 1, 0])];
        assert_eq!(remote.kind, route_kind::REMOTE);
        assert_eq!(remote.node_ipv4, [192, 0, 2, 2]);
        assert_eq!(d.routes6.len(), 1, "the local IPv6 range only");
        assert_eq!(
            d.nodes.keys().collect::<Vec<_>>(),
            [&node_key_v4([192, 0, 2, 2])]
        );
    }

    #[test]
    fn overlapping_ranges_and_nodes_without_address_are_refused_by_name() {
        let e = desired(&local(), &[node("n2", 2, "10.244.0.128/25")]).unwrap_err();
        assert!(
            e.to_string().contains("node \"n2\"") && e.to_string().contains("this node"),
            "{e}"
        );
        let e = desired(
            &local(),
            &[
                node("n2", 2, "10.244.1.0/24"),
                node("n3", 3, "10.244.1.0/24"),
            ],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("node \"n3\"") && e.to_string().contains("\"n2\""),
            "{e}"
        );
        let mut bare = node("n4", 4, "10.244.4.0/24");
        bare.underlay_ipv4 = None;
        let e = desired(&local(), &[bare]).unwrap_err();
        assert!(e.to_string().contains("no underlay address"), "{e}");
    }

    #[test]
    fn the_path_names_the_mode_and_the_tunnel_device() {
        let c = config_for(&local(), Path::Tunnel { tunnel_ifindex: 9 });
        assert_eq!(
            (c.mode, c.tunnel_ifindex, c.vni, c.underlay_ifindex),
            (cross_node_mode::TUNNEL, 9, 1, 2)
        );
        assert_eq!(
            config_for(&local(), Path::Kernel).mode,
            cross_node_mode::KERNEL
        );
        let c = config_for(&local(), Path::GuardVxlan);
        assert_eq!(
            (c.mode, c.port, c.vni),
            (cross_node_mode::GUARD_VXLAN, 8472, 1)
        );
        assert_eq!(
            config_for(&local(), Path::Guard).mode,
            cross_node_mode::GUARD
        );
    }
}
