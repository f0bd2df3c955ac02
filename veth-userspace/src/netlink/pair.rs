//! Mode pair: a second veth pair (`eth1`) joining the two pods directly,
//! with /32 and /128 routes to each other over it. Nothing of it is on the
//! host; `eth0` stays wired as in the routed modes for the host and beyond.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVeth},
        route::RouteScope,
    },
    LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{
    context, is_exists, links, netns, replace_route, routes, set_permanent_neighbour, Host,
};
use crate::model::Pod;

/// Name of the direct link inside both pods.
pub const PAIR_IFNAME: &str = "eth1";

/// MAC of a pod's `eth1`: 0a:59 + its IPv4 address.
pub fn pair_mac(pod: &Pod) -> [u8; 6] {
    let [a, b, c, d] = pod.ipv4.octets();
    [0x0a, 0x59, a, b, c, d]
}

/// True if pod `a` has its end of the direct pair.
pub async fn exists(a: &Pod) -> Result<bool> {
    if !netns::exists(&a.netns) {
        return Ok(false);
    }
    netns::run_in(&a.netns, |handle| async move {
        Ok(links::by_name(&handle, PAIR_IFNAME)
            .await?
            .is_some_and(|l| l.is_veth()))
    })
    .await
}

/// Creates the direct pair if missing (one request, both ends straight into
/// their namespaces) and configures both ends.
pub async fn ensure(host: &Host, a: &Pod, b: &Pod) -> Result<()> {
    if !exists(a).await? {
        let ns_a = netns::open(&a.netns)?;
        let ns_b = netns::open(&b.netns)?;
        let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(PAIR_IFNAME.to_string())
            .address(pair_mac(b).to_vec())
            .mtu(b.mtu.min(a.mtu))
            .setns_by_fd(ns_b.as_raw_fd())
            .build();
        let msg = LinkVeth::new(PAIR_IFNAME, PAIR_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .address(pair_mac(a).to_vec())
            .mtu(b.mtu.min(a.mtu))
            .setns_by_fd(ns_a.as_raw_fd())
            .build();
        match host.handle().link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => {
                return Err(context(format!(
                    "creating the direct pair {PAIR_IFNAME} between pods {:?} and {:?}",
                    a.name, b.name
                ))(e))
            }
        }
    }
    // Both ends up before either pod routes over the pair: a frame sent
    // into a veth whose peer is down is dropped.
    bring_up_end(a, b).await?;
    bring_up_end(b, a).await?;
    await_operational(a).await?;
    await_operational(b).await?;
    configure_end(a, b).await?;
    configure_end(b, a).await
}

/// `me`'s end up with the pair's MTU and MAC.
async fn bring_up_end(me: &Pod, peer: &Pod) -> Result<()> {
    let me = me.clone();
    let label = me.name.clone();
    let mtu = me.mtu.min(peer.mtu);
    netns::run_in(&me.netns.clone(), move |handle| async move {
        let eth1 = links::by_name(&handle, PAIR_IFNAME)
            .await?
            .with_context(|| format!("{PAIR_IFNAME} is missing"))?;
        super::sysctl::disable_dad(PAIR_IFNAME)?;
        links::ensure_up(&handle, &eth1, &pair_mac(&me), Some(mtu)).await
    })
    .await
    .with_context(|| format!("pod {label:?}"))
}

/// Most time the kernel gets to make a new end operational before the
/// routes go on regardless (a machine that busy loses a few frames).
const OPERATIONAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until `pod`'s end is operationally up (see
/// [`links::is_operational`]), at most [`OPERATIONAL_WAIT`].
async fn await_operational(pod: &Pod) -> Result<()> {
    let label = pod.name.clone();
    netns::run_in(&pod.netns.clone(), |handle| async move {
        let deadline = std::time::Instant::now() + OPERATIONAL_WAIT;
        while !links::is_operational(&handle, PAIR_IFNAME).await?
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    })
    .await
    .with_context(|| format!("pod {label:?}"))
}

/// `me`'s end (up already): exactly the peer's addresses reachable over it
/// (routes and neighbours of addresses the peer no longer has go, so a
/// renumbered pod leaves nothing behind).
async fn configure_end(me: &Pod, peer: &Pod) -> Result<()> {
    let (me, peer) = (me.clone(), peer.clone());
    let label = me.name.clone();
    netns::run_in(&me.netns.clone(), move |handle| async move {
        let eth1 = links::by_name(&handle, PAIR_IFNAME)
            .await?
            .with_context(|| format!("{PAIR_IFNAME} is missing"))?;
        let mut targets = vec![IpAddr::V4(peer.ipv4)];
        targets.extend(peer.ipv6.map(IpAddr::V6));
        for &target in &targets {
            set_permanent_neighbour(&handle, eth1.ifindex, target, &pair_mac(&peer)).await?;
            let route = match target {
                IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(v4, 32)
                    .output_interface(eth1.ifindex)
                    .scope(RouteScope::Link)
                    .protocol(routes::PROTOCOL.into())
                    .build(),
                IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(v6, 128)
                    .output_interface(eth1.ifindex)
                    .protocol(routes::PROTOCOL.into())
                    .build(),
            };
            replace_route(
                &handle,
                route,
                format!("adding route to {target} over {PAIR_IFNAME}"),
            )
            .await?;
        }
        let wanted: Vec<IpNet> = targets.iter().map(|&t| IpNet::from(t)).collect();
        remove_routes_except(&handle, eth1.ifindex, &wanted).await?;
        forget_neighbours_except(&handle, eth1.ifindex, &targets).await
    })
    .await
    .with_context(|| format!("pod {label:?}"))
}

/// Removes our routes over `ifindex` other than to `keep`.
async fn remove_routes_except(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    keep: &[IpNet],
) -> Result<()> {
    for route in routes::main_table(handle).await? {
        let ours = route.protocol == routes::PROTOCOL || route.protocol == routes::LEGACY_PROTOCOL;
        if route.oif == Some(ifindex) && ours && !keep.contains(&route.dst) {
            routes::delete(handle, &route).await?;
        }
    }
    Ok(())
}

/// Removes the permanent neighbour entries of `ifindex` other than `keep`.
async fn forget_neighbours_except(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    keep: &[IpAddr],
) -> Result<()> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourState,
    };
    let mut stale = Vec::new();
    let mut stream = handle.neighbours().get().execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(context("listing neighbours"))?
    {
        let ip = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        if msg.header.ifindex == ifindex
            && msg.header.state == NeighbourState::Permanent
            && ip.is_some_and(|ip| !keep.contains(&ip))
        {
            stale.push(msg);
        }
    }
    for msg in stale {
        match handle.neighbours().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if super::is_gone(&e) => {}
            Err(e) => return Err(context("removing a stale neighbour")(e)),
        }
    }
    Ok(())
}

/// Deletes the direct pair (both ends, and their routes with them). The
/// pods' routes over it go first, so traffic is back on `eth0` before the
/// link goes down: a frame routed into it while it is being deleted would
/// be dropped.
pub async fn remove(a: &Pod, b: Option<&Pod>) -> Result<()> {
    if !netns::exists(&a.netns) {
        return Ok(());
    }
    for pod in std::iter::once(a).chain(b) {
        if !netns::exists(&pod.netns) {
            continue;
        }
        netns::run_in(&pod.netns.clone(), |handle| async move {
            if let Some(eth1) = links::by_name(&handle, PAIR_IFNAME).await? {
                remove_routes_except(&handle, eth1.ifindex, &[]).await?;
            }
            Ok(())
        })
        .await
        .with_context(|| format!("pod {:?}", pod.name))?;
    }
    netns::run_in(&a.netns.clone(), |handle| async move {
        if let Some(eth1) = links::by_name(&handle, PAIR_IFNAME).await? {
            links::delete(&handle, eth1.ifindex, PAIR_IFNAME).await?;
        }
        Ok(())
    })
    .await
}
