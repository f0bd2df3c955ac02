//! The machines of a one-machine cluster: a switch (a Linux bridge in a
//! namespace of its own, so nothing lands in the host's namespace) and one
//! namespace per node, plugged into it by a veth whose node end is the
//! node's `eth0`, addressed and routed as a machine's NIC would be. What
//! runs on a node afterwards is the node's own business (see
//! [`crate::lab`]).

use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use rtnetlink::{
    packet_route::link::{InfoData, InfoVeth},
    LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{context, is_exists, links, netns};

/// The switch's bridge, inside the switch namespace.
pub const SWITCH_BRIDGE: &str = "underlay";
/// A node's NIC, inside its namespace.
pub const NODE_NIC: &str = "eth0";

/// How a node is plugged in.
#[derive(Clone, Debug)]
pub struct NodeNic {
    pub switch_netns: String,
    pub node_netns: String,
    /// The switch's port (named after the node, in the switch namespace).
    pub port: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    /// Default routes' next hops (the underlay's gateways).
    pub gateways: Vec<IpAddr>,
}

/// The switch namespace's bridge, made if missing, up.
pub async fn make_switch(switch_netns: &str, mtu: u32) -> Result<()> {
    netns::create(switch_netns)?;
    netns::run_in(switch_netns, move |handle| async move {
        lo_up(&handle).await?;
        if links::by_name(&handle, SWITCH_BRIDGE).await?.is_none() {
            let msg = rtnetlink::LinkBridge::new(SWITCH_BRIDGE).mtu(mtu).build();
            match handle.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(context("creating the switch's bridge")(e)),
            }
        }
        let bridge = links::by_name(&handle, SWITCH_BRIDGE)
            .await?
            .context("the switch's bridge vanished")?;
        let mac = bridge.mac.clone();
        links::ensure_up(&handle, &bridge, &mac, None).await
    })
    .await
}

/// The node's namespace with its `eth0` on the switch, addressed, and its
/// default routes via the gateways.
pub async fn plug_node(nic: &NodeNic) -> Result<()> {
    netns::create(&nic.node_netns)?;
    let node_ns = netns::open(&nic.node_netns)?;
    let n = nic.clone();
    netns::run_in(&nic.switch_netns, move |handle| async move {
        if links::by_name(&handle, &n.port).await?.is_none() {
            let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
                .name(NODE_NIC.to_string())
                .mtu(n.mtu)
                .setns_by_fd(node_ns.as_fd().as_raw_fd())
                .build();
            let msg = LinkVeth::new(&n.port, NODE_NIC)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .mtu(n.mtu)
                .build();
            handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(context(format!(
                    "plugging node {:?} into the switch",
                    n.port
                )))?;
        }
        let bridge = links::by_name(&handle, SWITCH_BRIDGE)
            .await?
            .context("the switch has no bridge")?;
        let port = links::by_name(&handle, &n.port)
            .await?
            .context("the switch port vanished")?;
        let mac = port.mac.clone();
        links::ensure_port(&handle, &port, &mac, Some(n.mtu), Some(bridge.ifindex)).await
    })
    .await?;
    let n = nic.clone();
    netns::run_in(&nic.node_netns, move |handle| async move {
        lo_up(&handle).await?;
        let eth0 = links::by_name(&handle, NODE_NIC)
            .await?
            .context("the node has no eth0")?;
        let mac = eth0.mac.clone();
        links::ensure_up(&handle, &eth0, &mac, Some(n.mtu)).await?;
        for a in &n.addresses {
            let mut request = handle.address().add(eth0.ifindex, a.addr(), a.prefix_len());
            if a.addr().is_ipv6() {
                request.message_mut().attributes.push(
                    rtnetlink::packet_route::address::AddressAttribute::Flags(
                        rtnetlink::packet_route::address::AddressFlags::Nodad,
                    ),
                );
            }
            match request.execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(context(format!("adding {a} to the node's eth0"))(e)),
            }
        }
        for gw in &n.gateways {
            let msg = match gw {
                IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .gateway(*v4)
                    .output_interface(eth0.ifindex)
                    .build(),
                IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .gateway(*v6)
                    .output_interface(eth0.ifindex)
                    .build(),
            };
            super::replace_route(&handle, msg, format!("default route via {gw}")).await?;
        }
        Ok(())
    })
    .await
}

async fn lo_up(handle: &rtnetlink::Handle) -> Result<()> {
    let lo = links::by_name(handle, "lo")
        .await?
        .context("the namespace has no lo")?;
    let mac = lo.mac.clone();
    links::ensure_up(handle, &lo, &mac, None).await
}
