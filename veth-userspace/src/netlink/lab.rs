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

use anyhow::{bail, Context, Result};
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

/// Where the nodes' NICs are plugged in.
#[derive(Clone, Debug)]
pub enum Switch {
    /// The lab's own switch: the bridge [`SWITCH_BRIDGE`] in this namespace.
    Namespace(String),
    /// An existing bridge of the host's namespace, used as it is (never
    /// changed or removed); the ports made on it carry `mark` as alias,
    /// and only a port with it is ever removed.
    HostBridge { bridge: String, mark: String },
}

/// How a node is plugged in.
#[derive(Clone, Debug)]
pub struct NodeNic {
    pub switch: Switch,
    pub node_netns: String,
    /// The switch's port (named after the node).
    pub port: String,
    pub mtu: u32,
    pub mac: [u8; 6],
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
    let plugged = netns::run_in(&nic.node_netns, |handle| async move {
        Ok(links::by_name(&handle, NODE_NIC).await?.is_some())
    })
    .await?;
    if !plugged {
        // A port left from a node namespace the kernel has not finished
        // destroying (it does so in the background) leads nowhere.
        unplug_node(&nic.switch, &nic.port).await?;
    }
    let fd = node_ns.as_fd().as_raw_fd();
    match &nic.switch {
        Switch::Namespace(ns) => {
            let n = nic.clone();
            netns::run_in(ns, move |handle| async move {
                // The namespace stays open while this runs (awaited below).
                plug_port(&handle, &n, SWITCH_BRIDGE, fd, None).await
            })
            .await?
        }
        Switch::HostBridge { bridge, mark } => {
            let host = super::Host::connect()?;
            plug_port(host.handle(), nic, bridge, fd, Some(mark)).await?
        }
    }
    drop(node_ns);
    let n = nic.clone();
    netns::run_in(&nic.node_netns, move |handle| async move {
        lo_up(&handle).await?;
        let eth0 = links::by_name(&handle, NODE_NIC)
            .await?
            .context("the node has no eth0")?;
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
        links::ensure_up(&handle, &eth0, &n.mac, Some(n.mtu)).await?;
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

/// The port `n.port` on `bridge`, made with its peer as the node's `eth0`
/// in the namespace open as `node_fd` if missing, up with the NIC's MTU.
async fn plug_port(
    handle: &rtnetlink::Handle,
    n: &NodeNic,
    bridge: &str,
    node_fd: i32,
    mark: Option<&str>,
) -> Result<()> {
    let bridge = links::by_name(handle, bridge)
        .await?
        .filter(|b| b.kind.as_deref() == Some("bridge"))
        .with_context(|| format!("underlay.bridge: there is no bridge {bridge:?}; make it, or omit bridge to have the lab make its own switch"))?;
    match links::by_name(handle, &n.port).await? {
        Some(link)
            if mark.is_some()
                && links::alias_of(handle, link.ifindex).await?.as_deref() != mark =>
        {
            bail!(
                "a link {:?} exists and is not this lab's; it stands where node {:?}'s port goes: remove or rename it",
                n.port,
                n.node_netns
            )
        }
        Some(_) => {}
        None => {
            let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
                .name(NODE_NIC.to_string())
                .address(n.mac.to_vec())
                .mtu(n.mtu)
                .setns_by_fd(node_fd)
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
    }
    let port = links::by_name(handle, &n.port)
        .await?
        .context("the switch port vanished")?;
    if let Some(mark) = mark {
        links::set_alias(handle, port.ifindex, &port.name, mark).await?;
    }
    let mac = port.mac.clone();
    links::ensure_port(handle, &port, &mac, Some(n.mtu), Some(bridge.ifindex)).await
}

/// Removes the switch's port `port`: in the lab's switch namespace, or on
/// a host bridge only if it carries the lab's mark.
pub async fn unplug_node(switch: &Switch, port: &str) -> Result<()> {
    let port = port.to_string();
    match switch {
        Switch::Namespace(ns) if netns::exists(ns) => {
            netns::run_in(ns, move |handle| async move {
                match links::by_name(&handle, &port).await? {
                    Some(link) => links::delete(&handle, link.ifindex, &port).await,
                    None => Ok(()),
                }
            })
            .await
        }
        Switch::Namespace(_) => Ok(()),
        Switch::HostBridge { mark, .. } => {
            let host = super::Host::connect()?;
            let handle = host.handle();
            let Some(link) = links::by_name(handle, &port).await? else {
                return Ok(());
            };
            if links::alias_of(handle, link.ifindex).await?.as_deref() == Some(mark.as_str()) {
                links::delete(handle, link.ifindex, &port).await?;
            }
            Ok(())
        }
    }
}

async fn lo_up(handle: &rtnetlink::Handle) -> Result<()> {
    let lo = links::by_name(handle, "lo")
        .await?
        .context("the namespace has no lo")?;
    let mac = lo.mac.clone();
    links::ensure_up(handle, &lo, &mac, None).await
}
