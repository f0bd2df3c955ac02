//! The host side of a topology: host-side veths, the node address and the
//! host routes to pods, all in the host's namespace.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{InfoData, InfoVeth},
        route::RouteScope,
    },
    LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{context, errno, is_exists, is_gone, links, links::LinkState, netns};
use crate::model::Pod;

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
            .setns_by_fd(ns.as_raw_fd())
            // Not `.up()`: the kernel refuses IFF_UP for a peer created in
            // another namespace (ENOTCONN); `pod::configure` brings it up.
            .build();
        let msg = LinkVeth::new(&pod.host_veth, POD_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .address(pod.gateway_mac.to_vec())
            .up()
            .build();
        let result = self.handle.link().add(msg).execute().await;
        drop(ns);
        result.map_err(context(format!(
            "pod {:?}: creating veth {:?} with peer {POD_IFNAME} in namespace {:?}",
            pod.name, pod.host_veth, pod.netns
        )))
    }

    /// Brings the host-side veth up with the gateway MAC (a no-op when it is).
    pub async fn ensure_host_veth(&self, pod: &Pod, link: &LinkState) -> Result<()> {
        links::set_up_with_mac(&self.handle, link, &pod.gateway_mac).await
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
        use futures::TryStreamExt;
        let lo = self.loopback().await?;
        let mut found = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(lo)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(context("listing addresses of lo"))?
        {
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

    /// Removes every loopback address labelled `label`.
    pub async fn remove_host_addresses(&self, label: &str) -> Result<()> {
        for (addr, msg) in self.labelled_address_messages(label).await? {
            self.delete_address(msg, addr).await?;
        }
        Ok(())
    }

    async fn delete_address(&self, msg: AddressMessage, addr: Ipv4Addr) -> Result<()> {
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) || errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(context(format!("removing node address {addr} from lo"))(e)),
        }
    }

    /// `<pod ip>/32 dev <host veth> scope link src <node address>`: how the
    /// host stack reaches a pod (the reply path of pod-to-host traffic).
    pub async fn ensure_pod_route(&self, pod: &Pod, host_veth: u32, src: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod.ipv4, 32)
            .output_interface(host_veth)
            .scope(RouteScope::Link)
            .pref_source(src)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(context(format!(
                "pod {:?}: adding host route to {}",
                pod.name, pod.ipv4
            )))
    }
}

/// Makes `address`/32 the only IPv4 address of `link`, in whichever
/// namespace `handle` lives.
pub(crate) async fn ensure_only_ipv4(
    handle: &rtnetlink::Handle,
    link: &LinkState,
    address: Ipv4Addr,
) -> Result<()> {
    use futures::TryStreamExt;
    let mut present = false;
    let mut stale = Vec::new();
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(link.ifindex)
        .execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(context(format!("listing addresses of {:?}", link.name)))?
    {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(std::net::IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        match addr {
            Some(a) if a == address && msg.header.prefix_len == 32 => present = true,
            Some(_) => stale.push(msg),
            None => {}
        }
    }
    for msg in stale {
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(context(format!(
                "removing a stale address of {:?}",
                link.name
            )))?;
    }
    if !present {
        match handle
            .address()
            .add(link.ifindex, address.into(), 32)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => {
                return Err(context(format!("adding {address}/32 to {:?}", link.name))(
                    e,
                ));
            }
        }
    }
    Ok(())
}
