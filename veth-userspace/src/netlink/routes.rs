//! Routes of a namespace's main table as vethctl needs to see them: the
//! unreachable routes of the pod ranges and what is routed over the
//! topology's links. Every route vethctl adds carries [`PROTOCOL`], its
//! mark; one it did not add is never replaced or removed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType},
        AddressFamily,
    },
    RouteMessageBuilder,
};

use super::{context, is_exists, is_gone};

/// `rtm_protocol` of every route vethctl adds (`ip route` shows `proto
/// 118`): the mark by which a route is known to be vethctl's.
pub const PROTOCOL: u8 = 118;
/// `rtm_protocol` the routes of older vethctl builds carry (the netlink
/// library's default); a route over one of our own links with it is ours.
pub const LEGACY_PROTOCOL: u8 = 4;
/// `rtm_protocol` of the routes the kernel makes for addresses.
pub const KERNEL_PROTOCOL: u8 = 2;
/// Metric of the pod ranges' unreachable routes: the last resort, so every
/// other route into the range (a pod's /32, the bridge's subnet, an
/// operator's route) wins over it.
pub const UNREACHABLE_METRIC: u32 = u32::MAX;

/// What a route does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Unicast,
    Unreachable,
    Other,
}

/// One route of the main table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub kind: RouteKind,
    /// Output interface (none for unreachable routes).
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub protocol: u8,
    pub metric: Option<u32>,
    /// `rtm_scope`, which the kernel matches when deleting.
    pub scope: u8,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            RouteKind::Unreachable => write!(f, "unreachable {}", self.dst),
            _ => write!(f, "{}", self.dst),
        }?;
        if let Some(oif) = self.oif {
            write!(f, " (interface {oif})")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

impl Route {
    fn from_message(msg: &RouteMessage) -> Option<Route> {
        let table = super::route_table(msg);
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let mut dst = None;
        let mut route = Route {
            dst: IpNet::default(),
            kind: match msg.header.kind {
                RouteType::Unicast => RouteKind::Unicast,
                RouteType::Unreachable => RouteKind::Unreachable,
                _ => RouteKind::Other,
            },
            oif: None,
            prefsrc: None,
            protocol: msg.header.protocol.into(),
            metric: None,
            scope: msg.header.scope.into(),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = address(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::PrefSource(a) => route.prefsrc = address(a),
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                _ => {}
            }
        }
        let len = msg.header.destination_prefix_length;
        route.dst = match (msg.header.address_family, dst) {
            (_, Some(ip)) => IpNet::new(ip, len).ok()?,
            (AddressFamily::Inet, None) => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok()?,
            (AddressFamily::Inet6, None) => IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).ok()?,
            _ => return None,
        };
        Some(route)
    }

    /// A request matching exactly this route (for deleting it).
    fn message(&self) -> RouteMessage {
        let mut msg = match self.dst {
            IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.addr(), n.prefix_len())
                .build(),
            IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.addr(), n.prefix_len())
                .build(),
        };
        msg.header.protocol = self.protocol.into();
        msg.header.scope = RouteScope::from(self.scope);
        msg.header.kind = match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Other => RouteType::Unspec,
        };
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(metric) = self.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        msg
    }
}

pub(super) fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Every IPv4 and IPv6 route of the main table, in one dump per family.
pub async fn main_table(handle: &rtnetlink::Handle) -> Result<Vec<Route>> {
    Ok(dump(handle)
        .await?
        .iter()
        .filter_map(Route::from_message)
        .collect())
}

/// Every IPv4 and IPv6 route, as the kernel says them, in one dump per
/// family.
pub(super) async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<RouteMessage>> {
    let mut messages = Vec::new();
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for request in requests {
        let mut stream = handle.route().get(request).execute();
        while let Some(msg) = stream.try_next().await.map_err(context("listing routes"))? {
            messages.push(msg);
        }
    }
    Ok(messages)
}

/// The unreachable route of a pod range; one that exists already (of
/// anyone) is an error: it is never taken over.
pub async fn add_unreachable(handle: &rtnetlink::Handle, net: IpNet) -> Result<()> {
    match handle
        .route()
        .add(unreachable(net).message())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => anyhow::bail!(
            "a route to {net} with metric {UNREACHABLE_METRIC} exists and was not made by \
             vethctl; remove it (`ip route del {net} metric {UNREACHABLE_METRIC}`) or pick \
             another pod range"
        ),
        Err(e) => Err(context(format!("adding the unreachable route of {net}"))(e)),
    }
}

/// The unreachable route of a pod range as vethctl adds it.
pub fn unreachable(net: IpNet) -> Route {
    Route {
        dst: net,
        kind: RouteKind::Unreachable,
        oif: None,
        prefsrc: None,
        protocol: PROTOCOL,
        metric: Some(UNREACHABLE_METRIC),
        scope: u8::from(RouteScope::Universe),
    }
}

/// Deletes exactly `route` (dst, kind, protocol, interface, metric); one
/// that is already gone is fine.
pub async fn delete(handle: &rtnetlink::Handle, route: &Route) -> Result<()> {
    match handle.route().del(route.message()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(context(format!("removing route {route}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_matches_what_was_dumped() {
        let route = Route {
            dst: "10.1.0.5/32".parse().unwrap(),
            kind: RouteKind::Unicast,
            oif: Some(7),
            prefsrc: Some("10.1.0.1".parse().unwrap()),
            protocol: PROTOCOL,
            metric: None,
            scope: u8::from(RouteScope::Link),
        };
        let mut dumped = route.message();
        dumped
            .attributes
            .push(RouteAttribute::Table(u32::from(RouteHeader::RT_TABLE_MAIN)));
        assert_eq!(Route::from_message(&dumped).unwrap().oif, Some(7));
        let back = Route::from_message(&dumped).unwrap();
        assert_eq!(
            (back.dst, back.kind, back.protocol),
            (route.dst, route.kind, PROTOCOL)
        );
        let local = {
            let mut m = route.message();
            m.header.table = 255;
            m
        };
        assert_eq!(Route::from_message(&local), None, "main table only");
        let u = unreachable("fd00:1::/64".parse().unwrap());
        let msg = u.message();
        assert_eq!(msg.header.kind, RouteType::Unreachable);
        assert!(msg
            .attributes
            .contains(&RouteAttribute::Priority(UNREACHABLE_METRIC)));
    }
}
