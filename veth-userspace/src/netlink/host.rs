//! The host side of a topology: host-side veths, the node address and the
//! host routes to pods, all in the host's namespace.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressMessage},
        link::{InfoData, InfoVeth},
        route::RouteScope,
    },
    LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{context, is_exists, is_gone, links, links::LinkState, netns};
use crate::model::{Pod, Topology};

/// Name of a pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";

/// An rtnetlink connection opened on the calling thread, which must be in
/// the host namespace (the tool never moves its runtime threads).
#[derive(Clone)]
pub struct Host {
    handle: rtnetlink::Handle,
}

impl Host {
    pub fn connect() -> Result<Host> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Host { handle })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Host-namespace links whose names start with `prefix`.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkState>> {
        let mut all = links::list(&self.handle).await?;
        all.retain(|l| l.name.starts_with(prefix));
        Ok(all)
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkState>> {
        links::by_name(&self.handle, name).await
    }

    pub async fn link_by_index(&self, ifindex: u32) -> Result<Option<LinkState>> {
        links::by_index(&self.handle, ifindex).await
    }

    /// Every link of the host namespace.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        links::list(&self.handle).await
    }

    pub async fn delete_link(&self, ifindex: u32, name: &str) -> Result<()> {
        links::delete(&self.handle, ifindex, name).await
    }

    /// Creates the pod's veth pair in one request: the host side here, the
    /// pod side directly inside the pod's namespace as `eth0`, both with
    /// their final MACs, so no pod side ever exists under a temporary name.
    pub async fn create_pod_veth(&self, pod: &Pod) -> Result<()> {
        let ns = netns::open(&pod.netns)?;
        let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(POD_IFNAME.to_string())
            .address(pod.mac.to_vec())
            .mtu(pod.mtu)
            .setns_by_fd(ns.as_raw_fd())
            // Not `.up()`: the kernel refuses IFF_UP for a peer created in
            // another namespace (ENOTCONN); `pod::configure` brings it up.
            .build();
        let msg = LinkVeth::new(&pod.host_veth, POD_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .address(pod.gateway_mac.to_vec())
            .mtu(pod.mtu)
            .build();
        let result = self.handle.link().add(msg).execute().await;
        drop(ns);
        result.map_err(context(format!(
            "pod {:?}: creating veth {:?} with peer {POD_IFNAME} in namespace {:?}",
            pod.name, pod.host_veth, pod.netns
        )))
    }

    /// Brings the host-side veth up with the gateway MAC and the pod's MTU,
    /// as a port of `bridge` or of nothing (a no-op when it is).
    pub async fn ensure_host_veth(
        &self,
        pod: &Pod,
        link: &LinkState,
        bridge: Option<u32>,
    ) -> Result<()> {
        super::sysctl::disable_dad(&link.name)?;
        links::ensure_port(&self.handle, link, &pod.gateway_mac, Some(pod.mtu), bridge).await
    }

    /// The topology's bridge, up, with its fixed MAC and the node addresses
    /// (the pods' gateways in mode bridge).
    pub async fn ensure_bridge(&self, topology: &Topology) -> Result<LinkState> {
        let name = &topology.bridge;
        if self.link(name).await?.is_none() {
            match self
                .handle
                .link()
                .add(rtnetlink::LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(context(format!("creating bridge {name:?}"))(e)),
            }
        }
        let bridge = self
            .link(name)
            .await?
            .with_context(|| format!("bridge {name:?} vanished right after creation"))?;
        links::ensure_up(&self.handle, &bridge, &topology.bridge_mac(), None).await?;
        let mut wanted = vec![(
            IpAddr::V4(topology.host_address),
            topology.pod_cidr.prefix_len(),
        )];
        if let (Some(v6), Some(cidr6)) = (topology.host_address6, topology.pod_cidr6) {
            wanted.push((IpAddr::V6(v6), cidr6.prefix_len()));
        }
        super::addresses::ensure_exactly(&self.handle, &bridge, &wanted).await?;
        Ok(bridge)
    }

    /// Removes the host routes to a pod (mode bridge reaches pods through
    /// the bridge's subnet route instead).
    pub async fn remove_pod_routes(&self, pod: &Pod, host_veth: u32) -> Result<()> {
        // Same scope as when added: the kernel matches it on delete.
        let mut routes = vec![RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod.ipv4, 32)
            .output_interface(host_veth)
            .scope(RouteScope::Link)
            .build()];
        if let Some(v6) = pod.ipv6 {
            routes.push(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(v6, 128)
                    .output_interface(host_veth)
                    .build(),
            );
        }
        for route in routes {
            match self.handle.route().del(route).execute().await {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => {
                    return Err(context(format!(
                        "pod {:?}: removing a host route",
                        pod.name
                    ))(e))
                }
            }
        }
        Ok(())
    }

    /// IPv4 addresses on the host's loopback that carry `label`.
    pub async fn labelled_addresses(&self, label: &str) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .labelled_address_messages(label)
            .await?
            .into_iter()
            .map(|(addr, _)| addr)
            .collect())
    }

    async fn labelled_address_messages(
        &self,
        label: &str,
    ) -> Result<Vec<(Ipv4Addr, AddressMessage)>> {
        let lo = self.loopback().await?;
        let mut found = Vec::new();
        for msg in super::addresses::list(&self.handle, lo, "lo").await? {
            let has_label = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Label(l) if l == label));
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4))
                | AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            if let (true, Some(addr)) = (has_label, addr) {
                found.push((addr, msg));
            }
        }
        Ok(found)
    }

    async fn loopback(&self) -> Result<u32> {
        Ok(self
            .link("lo")
            .await?
            .context("the host has no loopback interface")?
            .ifindex)
    }

    /// The node address pods reach the host on: `address`/32 on the host's
    /// loopback, labelled so `down` finds it. Using lo (not a device of our
    /// own) needs no extra link type and is where a node address lives.
    pub async fn ensure_host_address(&self, label: &str, address: Ipv4Addr) -> Result<()> {
        let mut present = false;
        for (addr, msg) in self.labelled_address_messages(label).await? {
            if addr == address {
                present = true;
            } else {
                self.delete_address(msg, addr).await?;
            }
        }
        if present {
            return Ok(());
        }
        let lo = self.loopback().await?;
        let mut request = self.handle.address().add(lo, address.into(), 32);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Label(label.to_string()));
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(context(format!("adding node address {address}/32 to lo"))(
                e,
            )),
        }
    }

    /// The IPv6 node address on the host's loopback (IPv6 addresses carry
    /// no label: `down` finds it through the recorded topology).
    pub async fn ensure_host_address6(&self, address: Ipv6Addr) -> Result<()> {
        if self.has_loopback_address6(address).await? {
            return Ok(());
        }
        let lo = self.loopback().await?;
        let mut request = self.handle.address().add(lo, address.into(), 128);
        // Without NODAD the address is tentative for a moment, and routes
        // naming it as source are refused until it is not.
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(context(format!("adding node address {address}/128 to lo"))(
                e,
            )),
        }
    }

    pub async fn has_loopback_address6(&self, address: Ipv6Addr) -> Result<bool> {
        Ok(self.loopback_address6(address).await?.is_some())
    }

    async fn loopback_address6(&self, address: Ipv6Addr) -> Result<Option<AddressMessage>> {
        let lo = self.loopback().await?;
        for msg in super::addresses::list(&self.handle, lo, "lo").await? {
            if super::addresses::address_of(&msg) == Some(IpAddr::V6(address)) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    pub async fn remove_host_address6(&self, address: Ipv6Addr) -> Result<()> {
        if let Some(msg) = self.loopback_address6(address).await? {
            self.delete_address(msg, address).await?;
        }
        Ok(())
    }

    /// Removes every loopback address labelled `label`.
    pub async fn remove_host_addresses(&self, label: &str) -> Result<()> {
        for (addr, msg) in self.labelled_address_messages(label).await? {
            self.delete_address(msg, addr).await?;
        }
        Ok(())
    }

    async fn delete_address(
        &self,
        msg: AddressMessage,
        addr: impl std::fmt::Display,
    ) -> Result<()> {
        super::addresses::delete(&self.handle, msg, &format!("node address {addr} from lo")).await
    }

    /// `<pod ip>/32 dev <host veth> scope link src <node address>` (and the
    /// /128 for IPv6): how the host stack reaches a pod.
    pub async fn ensure_pod_routes(
        &self,
        pod: &Pod,
        host_veth: u32,
        topology: &Topology,
    ) -> Result<()> {
        let route4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod.ipv4, 32)
            .output_interface(host_veth)
            .scope(RouteScope::Link)
            .pref_source(topology.host_address)
            .build();
        let what = format!("pod {:?}: adding host route to {}", pod.name, pod.ipv4);
        super::replace_route(&self.handle, route4, what).await?;
        if let Some(ipv6) = pod.ipv6 {
            let mut route6 = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(ipv6, 128)
                .output_interface(host_veth);
            if let Some(src) = topology.host_address6 {
                route6 = route6.pref_source(src);
            }
            let what = format!("pod {:?}: adding host route to {ipv6}", pod.name);
            super::replace_route(&self.handle, route6.build(), what).await?;
        }
        Ok(())
    }
}
