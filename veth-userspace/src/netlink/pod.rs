//! Inside a pod's namespace: loopback, `eth0`'s address, and the Calico-style
//! gateway (169.254.1.1 as a permanent neighbour on `eth0`, default route
//! via it on-link), so a pod never needs ARP to leave.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use rtnetlink::{packet_route::neighbour::NeighbourState, RouteMessageBuilder};

use super::{context, host::ensure_only_ipv4, host::POD_IFNAME, links, netns};
use crate::model::{Pod, GATEWAY_IPV4};

/// What the pod side looks like after configuration.
#[derive(Clone, Debug)]
pub struct PodSide {
    pub eth0_ifindex: u32,
}

/// Converges the pod's namespace to `pod`; safe to repeat.
pub async fn configure(pod: &Pod) -> Result<PodSide> {
    let pod = pod.clone();
    let label = pod.name.clone();
    netns::run_in(&pod.netns.clone(), move |handle| async move {
        if let Some(lo) = links::by_name(&handle, "lo").await? {
            links::set_up_with_mac(&handle, &lo, &lo.mac).await?;
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
        links::set_up_with_mac(&handle, &eth0, &pod.mac).await?;
        ensure_only_ipv4(&handle, &eth0, pod.ipv4).await?;

        handle
            .neighbours()
            .add(eth0.ifindex, IpAddr::V4(GATEWAY_IPV4))
            .link_layer_address(&pod.gateway_mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(context("adding the gateway neighbour"))?;

        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(GATEWAY_IPV4)
            .output_interface(eth0.ifindex)
            .onlink()
            .build();
        handle
            .route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(context("adding the default route via 169.254.1.1"))?;
        Ok(PodSide {
            eth0_ifindex: eth0.ifindex,
        })
    })
    .await
    .with_context(|| format!("pod {label:?}"))
}
