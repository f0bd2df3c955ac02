//! Read-only looks at the host namespace: every address and every route,
//! with the names of their interfaces, for checks made before anything is
//! created (see `crate::preflight`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::{
    address::AddressAttribute,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    AddressFamily,
};

use super::{addresses::address_of, context, Host};

/// The kernel's `local` routing table (addresses of this host).
pub const TABLE_LOCAL: u32 = 255;
/// The kernel's `main` routing table.
pub const TABLE_MAIN: u32 = 254;

/// One interface address of the host namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    pub ifindex: u32,
    /// The interface's name (`?<ifindex>` if it vanished meanwhile).
    pub ifname: String,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// The IPv4 label (`lo:demo`), if any.
    pub label: Option<String>,
}

/// One route of the host namespace, from any table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoute {
    /// The destination; `0.0.0.0/0` or `::/0` for a default route.
    pub destination: IpNet,
    pub table: u32,
    pub kind: RouteType,
    /// Output interfaces (several for a multipath route; none for a
    /// blackhole or unreachable route), by name.
    pub devices: Vec<String>,
    /// The same interfaces by index.
    pub ifindexes: Vec<u32>,
}

impl HostRoute {
    /// The route as `ip route` would show it, near enough:
    /// `blackhole 10.0.0.0/8`, `10.0.0.0/8 dev eth0 table 7`.
    pub fn describe(&self) -> String {
        let mut out = match self.kind {
            RouteType::Unicast => String::new(),
            RouteType::BlackHole => "blackhole ".to_string(),
            RouteType::Unreachable => "unreachable ".to_string(),
            RouteType::Prohibit => "prohibit ".to_string(),
            RouteType::Local => "local ".to_string(),
            RouteType::Anycast => "anycast ".to_string(),
            RouteType::Throw => "throw ".to_string(),
            RouteType::Nat => "nat ".to_string(),
            _ => format!("{:?} ", self.kind).to_lowercase(),
        };
        out += &self.destination.to_string();
        for device in &self.devices {
            out += &format!(" dev {device}");
        }
        match self.table {
            TABLE_MAIN => {}
            TABLE_LOCAL => out += " table local",
            table => out += &format!(" table {table}"),
        }
        out
    }
}

/// Interface index -> name, for naming what addresses and routes refer to.
async fn link_names(host: &Host) -> Result<BTreeMap<u32, String>> {
    Ok(host
        .links()
        .await?
        .into_iter()
        .map(|l| (l.ifindex, l.name))
        .collect())
}

fn name_of(names: &BTreeMap<u32, String>, ifindex: u32) -> String {
    names
        .get(&ifindex)
        .cloned()
        .unwrap_or_else(|| format!("?{ifindex}"))
}

/// Every address of every interface in the host namespace, both families.
pub async fn addresses(host: &Host) -> Result<Vec<HostAddress>> {
    let names = link_names(host).await?;
    let mut found = Vec::new();
    let mut stream = host.handle().address().get().execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(context("listing the host's addresses"))?
    {
        let Some(address) = address_of(&msg) else {
            continue;
        };
        let label = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        });
        found.push(HostAddress {
            ifindex: msg.header.index,
            ifname: name_of(&names, msg.header.index),
            address,
            prefix_len: msg.header.prefix_len,
            label,
        });
    }
    Ok(found)
}

/// Every route of the host namespace, in every table, both families.
pub async fn routes(host: &Host) -> Result<Vec<HostRoute>> {
    let names = link_names(host).await?;
    let mut found = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        // No table, no destination: a dump of all tables.
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let mut stream = host.handle().route().get(request).execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(context("listing the host's routes"))?
        {
            if let Some(route) = host_route(&msg, &names) {
                found.push(route);
            }
        }
    }
    Ok(found)
}

/// A route message as a [`HostRoute`]; `None` for what is not IPv4 or IPv6.
fn host_route(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<HostRoute> {
    let len = msg.header.destination_prefix_length;
    let destination = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    let destination = match (destination, msg.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let destination = IpNet::new(destination, len).ok()?.trunc();
    let table = super::route_table(msg);
    let mut ifindexes = Vec::new();
    for attribute in &msg.attributes {
        match attribute {
            RouteAttribute::Oif(ifindex) => ifindexes.push(*ifindex),
            RouteAttribute::MultiPath(hops) => {
                ifindexes.extend(hops.iter().map(|h| h.interface_index).filter(|&i| i != 0))
            }
            _ => {}
        }
    }
    Some(HostRoute {
        destination,
        table,
        kind: msg.header.kind,
        devices: ifindexes.iter().map(|&i| name_of(names, i)).collect(),
        ifindexes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_like_ip_route() {
        let route = |dst: &str, table, kind, devices: &[&str]| HostRoute {
            destination: dst.parse().unwrap(),
            table,
            kind,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            ifindexes: vec![1; devices.len()],
        };
        assert_eq!(
            route("10.0.0.0/8", TABLE_MAIN, RouteType::Unicast, &["eth0"]).describe(),
            "10.0.0.0/8 dev eth0"
        );
        assert_eq!(
            route("fd00::/64", 7, RouteType::BlackHole, &[]).describe(),
            "blackhole fd00::/64 table 7"
        );
        assert_eq!(
            route("10.1.0.0/16", TABLE_LOCAL, RouteType::Local, &["lo"]).describe(),
            "local 10.1.0.0/16 dev lo table local"
        );
    }

    #[test]
    fn a_route_message_without_destination_is_a_default_route() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.table = 254;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Oif(4));
        let names = BTreeMap::from([(4, "eth0".to_string())]);
        let route = host_route(&msg, &names).unwrap();
        assert_eq!(route.destination, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(route.devices, ["eth0"]);
        assert_eq!(route.table, TABLE_MAIN);
    }
}
