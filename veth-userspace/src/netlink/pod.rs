//! Inside a pod's namespace: loopback, `eth0`'s addresses and the gateway.
//!
//! Routed wiring (modes routed, tc, and the default of pair) is Calico's: the
//! pod's addresses are /32 and /128, the gateways are 169.254.1.1 and the
//! host side's link-local address, both permanent neighbour entries of the
//! host side's MAC, so a pod never needs ARP or NDP to leave. Bridged wiring
//! is flannel's: the pod's addresses carry the pod CIDR's prefix length and
//! the gateway is the bridge's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use rtnetlink::{
    packet_route::{
        neighbour::{NeighbourAttribute, NeighbourMessage},
        AddressFamily,
    },
    RouteMessageBuilder,
};

use super::{
    addresses, context, errno, ethtool, is_gone, links, netns, replace_route,
    set_permanent_neighbour, sysctl,
};
use crate::model::{gateway_ipv6, Pod, GATEWAY_IPV4};

/// How a pod's `eth0` is addressed.
#[derive(Clone, Debug)]
pub enum PodWiring {
    /// /32 and /128, gateways on the host side of the veth.
    Routed,
    /// The pod CIDR's prefix lengths, gateways on the bridge.
    Bridged {
        prefix4: u8,
        prefix6: u8,
        gateway4: Ipv4Addr,
        gateway6: Option<Ipv6Addr>,
    },
}

/// Converges the pod's namespace to `wiring`; safe to repeat, and moves a
/// pod between wirings without touching anything else in it.
pub async fn configure(pod: &Pod, wiring: &PodWiring) -> Result<()> {
    let pod = pod.clone();
    let wiring = wiring.clone();
    let label = pod.name.clone();
    netns::run_in(&pod.netns.clone(), move |handle| async move {
        let eth0 = bring_up_links(&handle, &pod).await?;
        let addressing = Addressing::of(&pod, &wiring);
        let mut wanted = vec![(IpAddr::V4(pod.ipv4), addressing.prefix4)];
        wanted.extend(pod.ipv6.map(|v6| (IpAddr::V6(v6), addressing.prefix6)));
        addresses::ensure_exactly(&handle, &eth0, &wanted).await?;
        set_gateway_neighbours(&handle, &pod, eth0.ifindex, &wiring).await?;
        set_default_routes(&handle, eth0.ifindex, &wiring, &addressing).await
    })
    .await
    .with_context(|| format!("pod {label:?}"))
}

/// Brings `lo` and `eth0` up with the pod's MAC and MTU; returns `eth0`.
async fn bring_up_links(handle: &rtnetlink::Handle, pod: &Pod) -> Result<links::LinkState> {
    if let Some(lo) = links::by_name(handle, "lo").await? {
        links::ensure_up(handle, &lo, &lo.mac, None).await?;
    }
    let eth0 = links::by_name(handle, &pod.ifname)
        .await?
        .with_context(|| {
            // A runtime's endpoint is made again by its own DEL and ADD;
            // `down` and `up` would cut every pod of its network off.
            let fix = if pod.netns_is_ours() {
                "run `vethctl down` and `vethctl up` to recreate the pod"
            } else {
                "it was removed while the endpoint was being wired; the runtime's retry \
                 (DEL, then ADD) makes it again"
            };
            format!(
                "{} is missing in namespace {:?}; {fix}",
                pod.ifname, pod.netns
            )
        })?;
    // No duplicate address detection on eth0: its addresses are ours by
    // construction, and DAD keeps the link-local address unusable for a
    // second after every (re)configuration.
    sysctl::disable_dad(&pod.ifname)?;
    // New addresses are added before stale ones go (see
    // `addresses::ensure_exactly`): a new address of the old one's
    // subnet is a secondary, which must outlive the old primary.
    sysctl::promote_secondaries(&pod.ifname)?;
    links::ensure_up(handle, &eth0, &pod.mac, Some(pod.mtu)).await?;
    Ok(eth0)
}

/// The prefix lengths of the pod's addresses and its default gateways.
struct Addressing {
    prefix4: u8,
    prefix6: u8,
    gateway4: Ipv4Addr,
    /// `None` for a single-stack pod.
    gateway6: Option<Ipv6Addr>,
}

impl Addressing {
    fn of(pod: &Pod, wiring: &PodWiring) -> Addressing {
        match wiring {
            PodWiring::Routed => Addressing {
                prefix4: 32,
                prefix6: 128,
                gateway4: GATEWAY_IPV4,
                gateway6: pod.ipv6.map(|_| gateway_ipv6()),
            },
            PodWiring::Bridged {
                prefix4,
                prefix6,
                gateway4,
                gateway6,
            } => Addressing {
                prefix4: *prefix4,
                prefix6: *prefix6,
                gateway4: *gateway4,
                gateway6: gateway6.filter(|_| pod.ipv6.is_some()),
            },
        }
    }
}

/// Routed: the link-local gateways are permanent neighbours at the host
/// side's MAC. Bridged: they are not, and neither is anything learnt at
/// that MAC.
async fn set_gateway_neighbours(
    handle: &rtnetlink::Handle,
    pod: &Pod,
    ifindex: u32,
    wiring: &PodWiring,
) -> Result<()> {
    let mut routed_gateways = vec![IpAddr::V4(GATEWAY_IPV4)];
    if pod.ipv6.is_some() {
        routed_gateways.push(IpAddr::V6(gateway_ipv6()));
    }
    for gateway in routed_gateways {
        match wiring {
            PodWiring::Routed => {
                set_permanent_neighbour(handle, ifindex, gateway, &pod.gateway_mac).await?
            }
            PodWiring::Bridged { .. } => delete_neighbour(handle, ifindex, gateway).await?,
        }
    }
    if matches!(wiring, PodWiring::Bridged { .. }) {
        // Entries learnt while routed point at the host side's MAC, which
        // on a bridge port would hand frames to the host, not the peer.
        forget_neighbours_at(handle, ifindex, &pod.gateway_mac).await?;
    }
    Ok(())
}

/// The default routes via the gateways (on-link when routed); a
/// single-stack pod keeps nothing of IPv6 wiring.
async fn set_default_routes(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    wiring: &PodWiring,
    addressing: &Addressing,
) -> Result<()> {
    let gateway4 = addressing.gateway4;
    let mut default4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway4)
        .output_interface(ifindex);
    if matches!(wiring, PodWiring::Routed) {
        default4 = default4.onlink();
    }
    replace_route(
        handle,
        default4.build(),
        format!("adding the default route via {gateway4}"),
    )
    .await?;
    if let Some(gateway6) = addressing.gateway6 {
        let default6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway6)
            .output_interface(ifindex)
            .build();
        return replace_route(
            handle,
            default6,
            format!("adding the IPv6 default route via {gateway6}"),
        )
        .await;
    }
    // Single stack (again): nothing of IPv6 wiring stays.
    delete_neighbour(handle, ifindex, IpAddr::V6(gateway_ipv6())).await?;
    let default6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .output_interface(ifindex)
        .build();
    match handle.route().del(default6).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(context("removing the IPv6 default route")(e)),
    }
}

/// `xdp_receiver`: the pod receives frames redirected by XDP (mode xdp),
/// which needs GRO on and tx checksum offload off on `eth0` (see
/// [`super::ethtool`]); otherwise the veth defaults (GRO off, offload on).
pub async fn set_offloads(pod: &Pod, xdp_receiver: bool) -> Result<()> {
    let ifname = pod.ifname.clone();
    netns::run_in(&pod.netns, move |_| async move {
        ethtool::set_offloads(&ifname, xdp_receiver, !xdp_receiver)
    })
    .await
    .with_context(|| format!("pod {:?}", pod.name))
}

/// Removes every neighbour entry of `ifindex` that resolves to `mac`.
async fn forget_neighbours_at(handle: &rtnetlink::Handle, ifindex: u32, mac: &[u8]) -> Result<()> {
    use futures::TryStreamExt;
    let mut stale = Vec::new();
    let mut stream = handle.neighbours().get().execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(context("listing neighbours"))?
    {
        let at_mac = msg
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(m) if m == mac));
        if msg.header.ifindex == ifindex && at_mac {
            stale.push(msg);
        }
    }
    for msg in stale {
        match handle.neighbours().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(context("removing a stale neighbour")(e)),
        }
    }
    Ok(())
}

/// Removes a neighbour entry; a missing one is fine.
async fn delete_neighbour(handle: &rtnetlink::Handle, ifindex: u32, ip: IpAddr) -> Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = ifindex;
    msg.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.attributes
        .push(NeighbourAttribute::Destination(ip.into()));
    match handle.neighbours().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) || errno(&e) == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(context(format!("removing the neighbour {ip}"))(e)),
    }
}
