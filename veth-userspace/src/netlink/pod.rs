//! Inside a pod's namespace: loopback, `eth0`'s addresses and the gateway.
//!
//! Routed wiring (modes routed, tc, xdp, pair) is Calico's: the pod's
//! addresses are /32 and /128, the gateways are 169.254.1.1 and the host
//! side's link-local address, both permanent neighbour entries of the host
//! side's MAC, so a pod never needs ARP or NDP to leave.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use rtnetlink::{packet_route::neighbour::NeighbourState, RouteMessageBuilder};

use super::{addresses, context, host::POD_IFNAME, links, netns};
use crate::model::{gateway_ipv6, Pod, GATEWAY_IPV4};

/// Converges the pod's namespace to routed wiring; safe to repeat.
pub async fn configure_routed(pod: &Pod) -> Result<()> {
    let pod = pod.clone();
    let label = pod.name.clone();
    netns::run_in(&pod.netns.clone(), move |handle| async move {
        if let Some(lo) = links::by_name(&handle, "lo").await? {
            links::ensure_up(&handle, &lo, &lo.mac, None).await?;
        }
        let eth0 = links::by_name(&handle, POD_IFNAME)
            .await?
            .with_context(|| {
                format!(
                "{POD_IFNAME} is missing in namespace {:?}; run `vethctl down` and `vethctl up` \
                 to recreate the pod",
                pod.netns
            )
            })?;
        links::ensure_up(&handle, &eth0, &pod.mac, Some(pod.mtu)).await?;
        let mut wanted = vec![(IpAddr::V4(pod.ipv4), 32)];
        wanted.extend(pod.ipv6.map(|v6| (IpAddr::V6(v6), 128)));
        addresses::ensure_exactly(&handle, &eth0, &wanted).await?;

        let mut gateways = vec![IpAddr::V4(GATEWAY_IPV4)];
        if pod.ipv6.is_some() {
            gateways.push(IpAddr::V6(gateway_ipv6()));
        }
        for gateway in gateways {
            handle
                .neighbours()
                .add(eth0.ifindex, gateway)
                .link_layer_address(&pod.gateway_mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(context(format!("adding the gateway neighbour {gateway}")))?;
        }

        let default4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(GATEWAY_IPV4)
            .output_interface(eth0.ifindex)
            .onlink()
            .build();
        handle
            .route()
            .add(default4)
            .replace()
            .execute()
            .await
            .map_err(context("adding the default route via 169.254.1.1"))?;
        if pod.ipv6.is_some() {
            let default6 = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gateway_ipv6())
                .output_interface(eth0.ifindex)
                .build();
            handle
                .route()
                .add(default6)
                .replace()
                .execute()
                .await
                .map_err(context(format!(
                    "adding the IPv6 default route via {}",
                    gateway_ipv6()
                )))?;
        }
        Ok(())
    })
    .await
    .with_context(|| format!("pod {label:?}"))
}
