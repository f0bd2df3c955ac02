//! The only place that speaks rtnetlink and the only place that enters a
//! network namespace.
//!
//! Host-namespace work goes through [`Host`], a connection opened by the
//! calling (host-namespace) thread. Work inside a pod goes through
//! [`netns::run_in`], which opens its socket on a dedicated OS thread after
//! `setns`, because `setns` changes the namespace of one thread only.

pub mod addresses;
pub mod ethtool;
pub mod events;
pub mod filters;
pub mod host;
pub mod inspect;
pub mod lab;
pub mod links;
pub mod nat;
pub mod netns;
pub mod pair;
pub mod pod;
pub mod routes;
pub mod sysctl;
pub mod tunnel;
pub mod underlay;
pub mod vxlan;

use std::fmt::Display;

pub use host::Host;

/// Adds what the tool was doing to a netlink error, and for the errno-only
/// errors the kernel gives, the errno's meaning.
pub(crate) fn context(what: impl Display) -> impl FnOnce(rtnetlink::Error) -> anyhow::Error {
    move |e| anyhow::anyhow!("{what}: {}", describe(&e))
}

/// The errno of a netlink error, if the kernel sent one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn describe(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    }
}

/// Adds or replaces a route; `what` names it in the error.
pub(crate) async fn replace_route(
    handle: &rtnetlink::Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
    what: impl Display,
) -> anyhow::Result<()> {
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(context(what))
}

/// Makes `ip` a permanent neighbour at `mac` on `ifindex`, so nothing ever
/// has to resolve it.
pub(crate) async fn set_permanent_neighbour(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ip: std::net::IpAddr,
    mac: &[u8],
) -> anyhow::Result<()> {
    handle
        .neighbours()
        .add(ifindex, ip)
        .link_layer_address(mac)
        .state(rtnetlink::packet_route::neighbour::NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(context(format!("adding the permanent neighbour {ip}")))
}

/// The table a route is in: the 32-bit attribute when the kernel sent one
/// (tables above 255), else the header's byte.
pub(crate) fn route_table(msg: &rtnetlink::packet_route::route::RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            rtnetlink::packet_route::route::RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// True for "already exists", which idempotent steps treat as success.
pub(crate) fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(libc::EEXIST)
}

/// True for "no such object", which removal steps treat as success.
pub(crate) fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(
        errno(e),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
    )
}
