//! Routes from a node to the other nodes' pod ranges: over the underlay
//! interface via their underlay addresses (host-gw), or over the VXLAN
//! device via their node addresses (vxlan). Each carries vethctl's route
//! protocol, and is written with "replace", so moving a range from one
//! path to the other is one atomic change of the kernel's table.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{bail, Result};
use ipnet::IpNet;
use rtnetlink::{
    packet_route::route::{
        RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
    },
    RouteMessageBuilder,
};

use super::routes::PROTOCOL;

/// One route to a remote pod range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteRoute {
    pub dst: IpNet,
    /// The next hop: the remote node's underlay address or its node
    /// address; none for a route to a next hop itself.
    pub via: Option<IpAddr>,
    pub oif: u32,
    /// The next hop is not on a subnet of the interface (the VXLAN device
    /// has no address): the kernel takes it as directly reachable.
    pub onlink: bool,
}

impl std::fmt::Display for RemoteRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.via {
            Some(via) => write!(f, "{} via {via} (interface {})", self.dst, self.oif),
            None => write!(f, "{} (interface {})", self.dst, self.oif),
        }
    }
}

fn message(r: &RemoteRoute) -> Result<RouteMessage> {
    let mut msg = match (r.dst, r.via) {
        (IpNet::V4(d), Some(IpAddr::V4(v))) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(d.addr(), d.prefix_len())
            .gateway(v)
            .build(),
        (IpNet::V6(d), Some(IpAddr::V6(v))) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d.addr(), d.prefix_len())
            .gateway(v)
            .build(),
        (IpNet::V4(d), None) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(d.addr(), d.prefix_len())
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build(),
        (IpNet::V6(d), None) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d.addr(), d.prefix_len())
            .build(),
        // The kernel has no IPv6 route via an IPv4 next hop (RTA_VIA is
        // IPv4's only): the model asks for an IPv6 underlay instead.
        _ => bail!("routing {r}: the next hop is not of the range's family"),
    };
    msg.header.protocol = RouteProtocol::from(PROTOCOL);
    msg.attributes.push(RouteAttribute::Oif(r.oif));
    if r.onlink {
        msg.header.flags |= RouteFlags::Onlink;
    }
    Ok(msg)
}

/// vethctl's unicast routes of the main table, as [`replace`] writes
/// them: what need not be written again.
pub async fn present(handle: &rtnetlink::Handle) -> Result<BTreeSet<RemoteRoute>> {
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    Ok(super::routes::dump(handle)
        .await?
        .iter()
        .filter(|m| {
            super::route_table(m) == main
                && u8::from(m.header.protocol) == PROTOCOL
                && m.header.kind == RouteType::Unicast
        })
        .filter_map(remote_route)
        .collect())
}

fn remote_route(msg: &RouteMessage) -> Option<RemoteRoute> {
    let (mut dst, mut via, mut oif) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = super::routes::address(a),
            RouteAttribute::Gateway(a) => via = super::routes::address(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(RemoteRoute {
        dst: IpNet::new(dst?, msg.header.destination_prefix_length).ok()?,
        via,
        oif: oif?,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
    })
}

/// Adds or replaces the route to `r.dst` (the one of the same metric).
pub async fn replace(handle: &rtnetlink::Handle, r: &RemoteRoute) -> Result<()> {
    super::replace_route(handle, message(r)?, format!("routing {r}")).await
}
