//! Cross-node `ebpf` and `ebpf-vxlan` for a node: the programs at the
//! underlay interface (and at the collect-metadata VXLAN device), the
//! remote-route maps, and the switch of the path, through
//! [`crate::dataplane::cross_node`].
//!
//! The host-gw routes stay in both modes: they carry the node's own
//! traffic to other nodes' pods (and mode xdp's cross-node frames, which
//! XDP passes to the stack); the pods' frames bypass them. So host-gw <->
//! ebpf changes no route. In the lab's rounds ([`super::Stage`]): every
//! node ready to receive the programs' way (routes, programs, tunnel
//! device), then every node sending it (one map write), then the tunnel
//! device removed where no longer used.
//!
//! In `host-gw` and `vxlan` the kernel sends, and the same maps and
//! underlay program check what other nodes send ([`guard_kernel_path`]):
//! the program stays attached in all four modes, so a change of mode
//! switches one map entry and never leaves the underlay unchecked. Only
//! `down` ([`remove_programs`]) takes it away, after the path switched.

use anyhow::Result;
use ipnet::{Ipv4Net, Ipv6Net};

use super::Record;
use crate::{
    dataplane::cross_node::{self, LocalNode, NodeDevice, Path, RemoteNode},
    model::node::{CrossNode, NodePart},
    netlink::{links::LinkState, tunnel::TunnelDevice, Host},
    state::{link_mark, StateDir},
};

/// This node's own pod ranges (the network's).
#[derive(Clone, Copy, Debug)]
pub struct PodRanges {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

/// The programs, not the kernel, send the pods' frames to other nodes.
pub fn programs_path(node: &NodePart) -> bool {
    matches!(node.cross_node, CrossNode::Ebpf | CrossNode::EbpfVxlan)
}

/// The collect-metadata VXLAN device of network `name`.
fn tunnel_device(name: &str, node: &NodePart) -> TunnelDevice {
    TunnelDevice {
        name: format!("{name}-md"),
        port: node.port,
        mtu: node.pod_mtu(),
        alias: link_mark(name),
    }
}

/// Ready to receive the programs' way: the remote routes (which the
/// receiving programs check sources against) first, then the underlay's
/// program, and for `ebpf-vxlan` the tunnel device with its program.
/// Nothing is sent differently yet. Returns the path to switch to.
pub async fn prepare_programs_path(
    host: &Host,
    name: &str,
    node: &NodePart,
    underlay: &LinkState,
    ranges: PodRanges,
    state: &StateDir,
    record: &mut Record,
) -> Result<Path> {
    let local = local_node(node, underlay, ranges);
    cross_node::sync_routes(name, &local, &remotes(node))?;
    cross_node::attach(name, NodeDevice::Underlay, &underlay.name)?;
    if node.cross_node != CrossNode::EbpfVxlan {
        return Ok(Path::Native);
    }
    let device = tunnel_device(name, node);
    record.tunnel = Some(device.name.clone());
    record.save(state)?;
    let tunnel_ifindex = host.ensure_tunnel(&device).await?;
    cross_node::attach(name, NodeDevice::Tunnel, &device.name)?;
    Ok(Path::Tunnel { tunnel_ifindex })
}

/// Sends the programs' way from now on (one map write).
pub fn switch_to(
    name: &str,
    node: &NodePart,
    underlay: &LinkState,
    ranges: PodRanges,
    path: Path,
) -> Result<()> {
    cross_node::set_path(name, &local_node(node, underlay, ranges), path)
}

/// What the programs' way no longer needs once every node sends the new
/// way: the tunnel device of `ebpf-vxlan` after a change to `ebpf`.
pub async fn finish_programs_path(
    host: &Host,
    name: &str,
    node: &NodePart,
    record: &mut Record,
) -> Result<()> {
    if node.cross_node == CrossNode::Ebpf {
        remove_tunnel(host, name, node, record).await?;
    }
    Ok(())
}

/// The kernel sends (`host-gw`, `vxlan`), the underlay's program checks:
/// the known nodes in first, then the path (the pods' frames leave the
/// programs' way, and a known node's frames go on to the host stack), the
/// program attached if it was not, and what only the programs' way used
/// (another device's program, the tunnel device) removed.
pub async fn guard_kernel_path(
    host: &Host,
    name: &str,
    node: &NodePart,
    underlay: &LinkState,
    ranges: PodRanges,
    record: &mut Record,
) -> Result<()> {
    let local = local_node(node, underlay, ranges);
    cross_node::sync_routes(name, &local, &remotes(node))?;
    guard(name, node, underlay, ranges, record)?;
    cross_node::attach(name, NodeDevice::Underlay, &underlay.name)?;
    let pins = crate::dataplane::Pins::new(name);
    for device in pins.node_link_devices()? {
        if device != underlay.name {
            cross_node::detach(name, &device)?;
        }
    }
    remove_tunnel(host, name, node, record).await
}

/// The kernel's check at the underlay for what this node has now: with a
/// kernel VXLAN device (recorded), its port too.
pub fn guard(
    name: &str,
    node: &NodePart,
    underlay: &LinkState,
    ranges: PodRanges,
    record: &Record,
) -> Result<()> {
    let path = match record.vxlan {
        Some(_) => Path::GuardVxlan,
        None => Path::Guard,
    };
    cross_node::set_path(name, &local_node(node, underlay, ranges), path)
}

/// For `down`: the path switches to the unchecked kernel's first, then the
/// programs and the tunnel device go. Nothing recorded, nothing to do.
pub async fn remove_programs(
    host: &Host,
    name: &str,
    state: &StateDir,
    record: &mut Record,
) -> Result<()> {
    let pins = crate::dataplane::Pins::new(name);
    let on_programs = cross_node::read_config(name).is_ok_and(|c| c != Default::default());
    let local = LocalNode::default();
    if pins.exist() && on_programs {
        cross_node::set_path(name, &local, Path::Kernel)?;
    }
    for device in pins.node_link_devices()? {
        cross_node::detach(name, &device)?;
    }
    // Only now: a receiving program still attached would drop what comes
    // from nodes it no longer knows.
    if pins.exist() && on_programs {
        cross_node::sync_routes(name, &local, &[])?;
    }
    if let Some(tunnel) = record.tunnel.take() {
        let device = TunnelDevice {
            name: tunnel,
            port: 0,
            mtu: 0,
            alias: link_mark(name),
        };
        host.remove_tunnel(&device).await?;
        record.save(state)?;
    }
    Ok(())
}

async fn remove_tunnel(
    host: &Host,
    name: &str,
    node: &NodePart,
    record: &mut Record,
) -> Result<()> {
    if record.tunnel.take().is_some() {
        cross_node::detach(name, &tunnel_device(name, node).name)?;
        host.remove_tunnel(&tunnel_device(name, node)).await?;
    }
    Ok(())
}

fn local_node(node: &NodePart, underlay: &LinkState, ranges: PodRanges) -> LocalNode {
    LocalNode {
        underlay_ifindex: underlay.ifindex,
        pod_cidr: Some(ranges.v4),
        pod_cidr6: ranges.v6,
        cluster_cidr: Some(node.cluster_cidr),
        cluster_cidr6: node.cluster_cidr6,
        vni: node.vni,
        port: node.port,
    }
}

/// The other nodes; an IPv6 underlay address only where this node has one
/// too (else IPv6 pods go by the IPv4 one).
fn remotes(node: &NodePart) -> Vec<RemoteNode> {
    node.peers
        .iter()
        .map(|p| RemoteNode {
            name: p.name.clone(),
            underlay_ipv4: Some(p.address),
            underlay_ipv6: p.address6.filter(|_| node.address6.is_some()),
            pod_cidr: Some(p.pod_cidr),
            pod_cidr6: p.pod_cidr6,
        })
        .collect()
}
