//! A node's kernel VXLAN device, wired as flannel wires `flannel.1`: no
//! learning and no multicast; for each remote node one FDB entry (its VTEP
//! MAC → its underlay address), one permanent neighbour (its node address
//! in its pod range → its VTEP MAC), and routes to its pod ranges via that
//! neighbour (see [`super::underlay`]).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use futures::TryStreamExt;
use rtnetlink::packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    AddressFamily,
};

use super::{context, is_exists, is_gone, links::LinkState};

/// The device as the node's part wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The node's underlay address and interface: the tunnel's source.
    pub local: Ipv4Addr,
    pub underlay_ifindex: u32,
    /// The VTEP MAC, also the mark that proves the device ours before its
    /// alias is set.
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// What one remote node needs on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteVtep {
    pub mac: [u8; 6],
    pub underlay: IpAddr,
    /// Its node addresses in its pod ranges: the next hops of the routes.
    pub gateways: Vec<IpAddr>,
}

/// Makes the device (learning off: every entry is written), down.
pub async fn create(handle: &rtnetlink::Handle, want: &Vxlan) -> Result<()> {
    let msg = rtnetlink::LinkVxlan::new(&want.name, want.vni)
        .dev(want.underlay_ifindex)
        .local(want.local)
        .port(want.port)
        .learning(false)
        .address(want.mac.to_vec())
        .mtu(want.mtu)
        .build();
    match handle.link().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(context(format!("creating VXLAN device {:?}", want.name))(e)),
    }
}

/// The device up with its MTU (changed live when the underlay's is).
pub async fn configure(handle: &rtnetlink::Handle, link: &LinkState, want: &Vxlan) -> Result<()> {
    super::links::ensure_up(handle, link, &want.mac, Some(want.mtu)).await
}

/// Exactly `remotes` on device `ifindex`: their FDB entries and
/// neighbours written (replaced), every other permanent one removed.
pub async fn sync_remotes(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    remotes: &[RemoteVtep],
) -> Result<()> {
    for r in remotes {
        handle
            .neighbours()
            .add_bridge(ifindex, &r.mac)
            .flags(NeighbourFlags::Own)
            .destination(r.underlay)
            .replace()
            .execute()
            .await
            .map_err(context(format!(
                "adding the FDB entry for VTEP {}",
                r.underlay
            )))?;
        for gw in &r.gateways {
            super::set_permanent_neighbour(handle, ifindex, *gw, &r.mac).await?;
        }
    }
    for (msg, key) in entries(handle, ifindex).await? {
        let wanted = remotes.iter().any(|r| match &key {
            Entry::Fdb(mac) => mac == &r.mac,
            Entry::Neighbour(ip) => r.gateways.contains(ip),
        });
        if !wanted {
            if let Err(e) = handle.neighbours().del(msg).execute().await {
                if !is_gone(&e) {
                    return Err(context(format!("removing {key:?} of a gone node"))(e));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
enum Entry {
    Fdb([u8; 6]),
    Neighbour(IpAddr),
}

/// The permanent FDB entries and neighbours of device `ifindex`.
async fn entries(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<Vec<(rtnetlink::packet_route::neighbour::NeighbourMessage, Entry)>> {
    let mut out = Vec::new();
    for family in [
        AddressFamily::Bridge,
        AddressFamily::Inet,
        AddressFamily::Inet6,
    ] {
        let mut stream = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(context("listing neighbours"))?
        {
            if msg.header.ifindex != ifindex || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let key = msg.attributes.iter().find_map(|a| match (family, a) {
                (AddressFamily::Bridge, NeighbourAttribute::LinkLayerAddress(mac)) => {
                    <[u8; 6]>::try_from(mac.as_slice()).ok().map(Entry::Fdb)
                }
                (AddressFamily::Bridge, _) => None,
                (_, NeighbourAttribute::Destination(NeighbourAddress::Inet(v4))) => {
                    Some(Entry::Neighbour(IpAddr::V4(*v4)))
                }
                (_, NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6))) => {
                    Some(Entry::Neighbour(IpAddr::V6(*v6)))
                }
                _ => None,
            });
            // The kernel's own all-zero entry of a device without remote.
            if let Some(key) = key.filter(|k| !matches!(k, Entry::Fdb([0, 0, 0, 0, 0, 0]))) {
                out.push((msg, key));
            }
        }
    }
    Ok(out)
}
