//! A node's wiring towards the other nodes of its cluster: its underlay
//! addresses, the VXLAN device of mode `vxlan`, and a route per remote pod
//! range. Converged as a whole by one step of `up` ([`apply`]) and removed
//! by `down` ([`remove`]).
//!
//! What it makes is recorded in the network's state directory before it is
//! made (`cross-node.json`): routes also carry vethctl's route protocol,
//! the VXLAN device its alias and its VTEP MAC, and only recorded objects
//! are ever changed or removed. An underlay address that was there already
//! (the operator's, or the lab's) is used and never removed.

use std::{collections::BTreeSet, net::IpAddr};

pub use ebpf::PodRanges;
use ebpf::{
    finish_programs_path, guard, guard_kernel_path, prepare_programs_path, programs_path,
    remove_programs, switch_to,
};

mod ebpf;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

use crate::{
    model::node::{CrossNode, NodePart},
    netlink::{
        links::LinkState,
        routes::{RouteKind, PROTOCOL},
        underlay::{self, RemoteRoute},
        vxlan::{self, RemoteVtep, Vxlan},
        Host,
    },
    state::{link_mark, write_atomically, LedgerAddress, StateDir},
};

const RECORD_FILE: &str = "cross-node.json";

/// What the cross-node wiring made.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    #[serde(default)]
    pub vxlan: Option<RecordedVxlan>,
    /// Destinations of the routes to remote pod ranges.
    #[serde(default)]
    pub routes: BTreeSet<IpNet>,
    /// Underlay addresses added (not found).
    #[serde(default)]
    pub addresses: BTreeSet<LedgerAddress>,
    /// The collect-metadata VXLAN device of `ebpf-vxlan` (ours by its
    /// alias), recorded before it is made.
    #[serde(default)]
    pub tunnel: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedVxlan {
    pub name: String,
    /// Set once it exists: the proof it is ours, whatever it is called.
    pub ifindex: Option<u32>,
    pub mac: [u8; 6],
}

impl Record {
    pub fn load(state: &StateDir) -> Result<Option<Record>> {
        let path = state.path().join(RECORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!(
                    "{} is unreadable, and it is what proves which cross-node routes and devices \
                     are this network's; restore it, or remove them by hand and then the file",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, state: &StateDir) -> Result<()> {
        write_atomically(state.path(), RECORD_FILE, &serde_json::to_vec_pretty(self)?)
    }
}

/// Whether network `name` has cross-node wiring recorded.
pub fn recorded(name: &str) -> Result<bool> {
    Ok(Record::load(&StateDir::new(name))?.is_some())
}

/// How much of a change [`apply`] makes. A node alone makes all of it;
/// the lab changes a cluster's mode in three rounds over all its nodes, so
/// that no node sends what another cannot take yet: every node ready to
/// receive the new way (a VXLAN device made), then every node sending it
/// (routes replaced), then what is left of the old way removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Prepare,
    Route,
    Full,
}

/// Where the lab says which [`Stage`] a node's `up` is (unset: `Full`).
pub const STAGE_ENV: &str = "VETHCTL_CROSS_NODE_STAGE";

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Route => "route",
            Stage::Full => "full",
        }
    }

    fn current() -> Stage {
        match std::env::var(STAGE_ENV).as_deref() {
            Ok("prepare") => Stage::Prepare,
            Ok("route") => Stage::Route,
            _ => Stage::Full,
        }
    }
}

/// Converges network `name`'s cross-node wiring to `node`. New routes
/// replace old ones in place (a change of mode moves each range at once),
/// and what is no longer wanted goes last.
pub async fn apply(host: &Host, name: &str, node: &NodePart, ranges: PodRanges) -> Result<()> {
    let stage = Stage::current();
    let state = StateDir::new(name);
    let mut record = Record::load(&state)?.unwrap_or_default();
    let underlay = host.link(&node.interface).await?.ok_or_else(|| {
        anyhow!(
            "node.interface: this node has no interface {:?}; name the underlay interface in \
             [underlay] interface",
            node.interface
        )
    })?;
    let wanted_addresses = underlay_addresses(node);
    ensure_addresses(
        host,
        &state,
        &mut record,
        underlay.ifindex,
        &wanted_addresses,
    )
    .await?;
    // The programs' way, ready to receive (nothing sent differently yet);
    // or left before a kernel VXLAN device may take the UDP port.
    let programs = if programs_path(node) {
        // A kernel VXLAN device holds the UDP port the tunnel device needs:
        // it goes first, its routes with it, so this node sends the new way
        // at once (frames of that moment to or from nodes not changed yet
        // are lost).
        let took_port = node.cross_node == CrossNode::EbpfVxlan && record.vxlan.is_some();
        if took_port {
            remove_vxlan(host, &mut record).await?;
        }
        let path =
            prepare_programs_path(host, name, node, &underlay, ranges, &state, &mut record).await?;
        if took_port {
            switch_to(name, node, &underlay, ranges, path)?;
        }
        Some(path)
    } else {
        guard_kernel_path(host, name, node, &underlay, ranges, &mut record).await?;
        None
    };
    let vx = match node.cross_node {
        CrossNode::Vxlan => {
            Some(ensure_vxlan(host, name, &state, &mut record, node, &underlay).await?)
        }
        _ => None,
    };
    if programs.is_none() {
        // A VXLAN device made just now: its port checked from now on.
        guard(name, node, &underlay, ranges, &record)?;
    }
    if stage == Stage::Prepare {
        return record.save(&state);
    }
    let routes = wanted_routes(node, underlay.ifindex, vx);
    converge_routes(host, &state, &mut record, &routes).await?;
    if vx.is_none() && stage == Stage::Full {
        remove_vxlan(host, &mut record).await?;
    }
    if let Some(path) = programs {
        switch_to(name, node, &underlay, ranges, path)?;
        if stage == Stage::Full {
            finish_programs_path(host, name, node, &mut record).await?;
        }
    } else {
        // A VXLAN device removed just now: its port no longer checked.
        guard(name, node, &underlay, ranges, &record)?;
    }
    remove_addresses(host, &mut record, &wanted_addresses).await?;
    record.save(&state)
}

/// The routes to the remote ranges made `routes` (recorded before they
/// are made), and ours to other ranges removed.
async fn converge_routes(
    host: &Host,
    state: &StateDir,
    record: &mut Record,
    routes: &[RemoteRoute],
) -> Result<()> {
    refuse_foreign_routes(host, record, routes).await?;
    record.routes.extend(routes.iter().map(|r| r.dst));
    record.save(state)?;
    // Only what the kernel lacks: with 1,000 nodes, writing every route
    // again on each node that joins took 70 ms.
    let present = underlay::present(host.handle()).await?;
    for r in routes.iter().filter(|r| !present.contains(r)) {
        underlay::replace(host.handle(), r).await?;
    }
    let wanted: BTreeSet<IpNet> = routes.iter().map(|r| r.dst).collect();
    remove_routes(host, &record.routes - &wanted).await?;
    record.routes = wanted;
    Ok(())
}

/// Removes everything network `name`'s record holds, and the record.
pub async fn remove(host: &Host, name: &str) -> Result<()> {
    let state = StateDir::new(name);
    let Some(mut record) = Record::load(&state)? else {
        return Ok(());
    };
    remove_programs(host, name, &state, &mut record).await?;
    remove_routes(host, std::mem::take(&mut record.routes)).await?;
    remove_vxlan(host, &mut record).await?;
    remove_addresses(host, &mut record, &[]).await?;
    let path = state.path().join(RECORD_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn underlay_addresses(node: &NodePart) -> Vec<LedgerAddress> {
    let mut out = vec![LedgerAddress {
        device: node.interface.clone(),
        address: IpAddr::V4(node.address.addr()),
        prefix_len: node.address.prefix_len(),
    }];
    out.extend(node.address6.map(|a| LedgerAddress {
        device: node.interface.clone(),
        address: IpAddr::V6(a.addr()),
        prefix_len: a.prefix_len(),
    }));
    out
}

/// Adds the wanted underlay addresses that are missing (recorded first).
async fn ensure_addresses(
    host: &Host,
    state: &StateDir,
    record: &mut Record,
    ifindex: u32,
    wanted: &[LedgerAddress],
) -> Result<()> {
    let present = host.addresses().await?;
    for a in wanted {
        if present
            .iter()
            .any(|p| p.ifindex == ifindex && p.address == a.address)
        {
            continue;
        }
        if record.addresses.insert(a.clone()) {
            record.save(state)?;
        }
        host.add_address(ifindex, &a.device, a.address, a.prefix_len, None)
            .await?;
    }
    Ok(())
}

/// Removes the recorded addresses not in `wanted`.
async fn remove_addresses(
    host: &Host,
    record: &mut Record,
    wanted: &[LedgerAddress],
) -> Result<()> {
    let gone: Vec<LedgerAddress> = record
        .addresses
        .iter()
        .filter(|a| !wanted.contains(a))
        .cloned()
        .collect();
    for a in gone {
        if let Some(link) = host.link(&a.device).await? {
            host.remove_address(link.ifindex, &a.device, a.address, a.prefix_len)
                .await?;
        }
        record.addresses.remove(&a);
    }
    Ok(())
}

/// The VXLAN device made or found (ours only), up, with one FDB entry and
/// neighbour per remote node. Returns its ifindex.
async fn ensure_vxlan(
    host: &Host,
    name: &str,
    state: &StateDir,
    record: &mut Record,
    node: &NodePart,
    underlay: &LinkState,
) -> Result<u32> {
    let want = Vxlan {
        name: node.vxlan_device.clone(),
        vni: node.vni,
        port: node.port,
        local: node.address.addr(),
        underlay_ifindex: underlay.ifindex,
        mac: node.vtep_mac,
        mtu: node.pod_mtu(),
    };
    let mut link = own_vxlan(host, record).await?;
    let settings_changed = record.vxlan.as_ref().is_some_and(|r| r.mac != want.mac)
        || link.as_ref().is_some_and(|l| l.name != want.name);
    if settings_changed {
        remove_vxlan(host, record).await?;
        link = None;
    }
    let link = match link {
        Some(link) => link,
        None => {
            if let Some(other) = host.link(&want.name).await? {
                bail!(
                    "node: a link {:?} (ifindex {}) exists and is not this network's; it stands \
                     where the VXLAN device goes: remove or rename it",
                    other.name,
                    other.ifindex
                );
            }
            record.vxlan = Some(RecordedVxlan {
                name: want.name.clone(),
                ifindex: None,
                mac: want.mac,
            });
            record.save(state)?;
            vxlan::create(host.handle(), &want).await?;
            let link = host
                .link(&want.name)
                .await?
                .context("the VXLAN device vanished as it was made")?;
            host.set_alias(&link, &link_mark(name)).await?;
            record.vxlan = Some(RecordedVxlan {
                name: want.name.clone(),
                ifindex: Some(link.ifindex),
                mac: want.mac,
            });
            record.save(state)?;
            link
        }
    };
    vxlan::configure(host.handle(), &link, &want).await?;
    let remotes: Vec<RemoteVtep> = node
        .peers
        .iter()
        .map(|p| RemoteVtep {
            mac: p.vtep_mac,
            underlay: IpAddr::V4(p.address),
            gateways: std::iter::once(IpAddr::V4(p.gateway))
                .chain(p.gateway6.map(IpAddr::V6))
                .collect(),
        })
        .collect();
    vxlan::sync_remotes(host.handle(), link.ifindex, &remotes).await?;
    Ok(link.ifindex)
}

/// The recorded VXLAN device, if the kernel proves it ours: by ifindex,
/// or (recorded before a crash kept the ifindex) by name, kind and MAC.
async fn own_vxlan(host: &Host, record: &Record) -> Result<Option<LinkState>> {
    let Some(rec) = &record.vxlan else {
        return Ok(None);
    };
    let link = match rec.ifindex {
        Some(i) => host.link_by_index(i).await?,
        None => host
            .link(&rec.name)
            .await?
            .filter(|l| l.mac == rec.mac.to_vec()),
    };
    Ok(link.filter(|l| l.kind.as_deref() == Some("vxlan")))
}

async fn remove_vxlan(host: &Host, record: &mut Record) -> Result<()> {
    if let Some(link) = own_vxlan(host, record).await? {
        host.delete_link(link.ifindex, &link.name).await?;
    }
    record.vxlan = None;
    Ok(())
}

/// host-gw: each remote range via the node's underlay address (IPv6 via
/// its IPv6 underlay address);
/// vxlan: via its node address in that range, over the device.
fn wanted_routes(node: &NodePart, underlay: u32, vx: Option<u32>) -> Vec<RemoteRoute> {
    let mut out = Vec::new();
    for p in &node.peers {
        // (IPv4 next hop, IPv6 next hop, interface, on-link)
        let (via4, via6, oif, onlink) = match vx {
            // The model makes sure an IPv6 range has an IPv6 underlay
            // address (no IPv6 route can have an IPv4 next hop).
            None => (p.address, p.address6, underlay, false),
            Some(vx) => (p.gateway, p.gateway6, vx, true),
        };
        out.push(RemoteRoute {
            dst: IpNet::V4(p.pod_cidr),
            via: Some(IpAddr::V4(via4)),
            oif,
            onlink,
        });
        let (Some(v6), Some(via6)) = (p.pod_cidr6, via6) else {
            continue;
        };
        if onlink {
            // IPv6 takes an on-link next hop only where a lookup of it
            // leads to the same device: a host-gw route to the range being
            // replaced would not, so the next hop gets its own route first.
            out.push(RemoteRoute {
                dst: IpNet::V6(ipnet::Ipv6Net::new(via6, 128).expect("a /128")),
                via: None,
                oif,
                onlink: false,
            });
        }
        out.push(RemoteRoute {
            dst: IpNet::V6(v6),
            via: Some(IpAddr::V6(via6)),
            oif,
            onlink,
        });
    }
    out
}

/// A route to a remote range that is not ours would be replaced: refuse.
async fn refuse_foreign_routes(host: &Host, record: &Record, routes: &[RemoteRoute]) -> Result<()> {
    let present = host.routes().await?;
    let wanted: BTreeSet<IpNet> = routes.iter().map(|r| r.dst).collect();
    for p in present.iter().filter(|p| wanted.contains(&p.dst)) {
        if p.protocol != PROTOCOL || !record.routes.contains(&p.dst) {
            bail!(
                "node: the route {p} to another node's pod range is not this network's; \
                 remove it (or pick other pod ranges)"
            );
        }
    }
    Ok(())
}

/// Deletes our routes (vethctl's protocol) to `dsts`.
async fn remove_routes(host: &Host, dsts: BTreeSet<IpNet>) -> Result<()> {
    if dsts.is_empty() {
        return Ok(());
    }
    for r in host.routes().await? {
        if r.protocol == PROTOCOL && r.kind == RouteKind::Unicast && dsts.contains(&r.dst) {
            host.remove_route(&r).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::Cluster;

    fn node(cross_node: &str) -> NodePart {
        let text = format!(
            "name = \"lab\"\ncross_node = \"{cross_node}\"\ncluster_cidr = \"10.244.0.0/16\"\n\
             cluster_cidr6 = \"fd00:10:244::/56\"\n[underlay]\ncidr6 = \"fd00:198:18::/64\"\n\
             [[nodes]]\nname = \"n1\"\n[[nodes]]\nname = \"n2\"\n"
        );
        let cluster = Cluster::from_toml(&text).unwrap();
        cluster.node_part("n1").unwrap().0.node.unwrap()
    }

    fn shown(routes: &[RemoteRoute]) -> Vec<String> {
        routes
            .iter()
            .map(|r| format!("{r}{}", if r.onlink { " onlink" } else { "" }))
            .collect()
    }

    #[test]
    fn host_gw_routes_via_the_underlay_and_vxlan_over_the_device() {
        assert_eq!(
            shown(&wanted_routes(&node("host-gw"), 2, None)),
            [
                "10.244.1.0/24 via 198.18.0.2 (interface 2)",
                "fd00:10:244:1::/64 via fd00:198:18::2 (interface 2)",
            ]
        );
        assert_eq!(
            shown(&wanted_routes(&node("vxlan"), 2, Some(9))),
            [
                "10.244.1.0/24 via 10.244.1.1 (interface 9) onlink",
                "fd00:10:244:1::1/128 (interface 9)",
                "fd00:10:244:1::/64 via fd00:10:244:1::1 (interface 9) onlink",
            ]
        );
    }
}
