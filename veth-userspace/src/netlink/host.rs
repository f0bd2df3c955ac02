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
        link::{InfoData, InfoVeth, LinkMessage},
        route::RouteScope,
    },
    LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{context, is_exists, links, links::LinkState, netns, routes::PROTOCOL};
use crate::model::{Pod, Topology};

/// An address of a host-namespace link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    pub ifindex: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// IPv4 only: `lo:<topology>` marks a node address of ours.
    pub label: Option<String>,
    /// IPv4 only: not the first address of its subnet on the link.
    pub secondary: bool,
}

pub use crate::model::POD_IFNAME;

/// The request that makes `pod`'s veth pair, its pod side in the namespace
/// open as `netns_fd`.
fn pod_veth_request(pod: &Pod, netns_fd: std::os::fd::RawFd) -> LinkMessage {
    let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.ifname.clone())
        .address(pod.mac.to_vec())
        .mtu(pod.mtu)
        .setns_by_fd(netns_fd)
        // Not `.up()`: the kernel refuses IFF_UP for a peer created in
        // another namespace (ENOTCONN); `pod::configure` brings it up.
        .build();
    LinkVeth::new(&pod.host_veth, &pod.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .address(pod.gateway_mac.to_vec())
        .mtu(pod.mtu)
        .build()
}

fn creating(pod: &Pod) -> String {
    format!(
        "pod {:?}: creating veth {:?} with peer {} in namespace {:?}",
        pod.name, pod.host_veth, pod.ifname, pod.netns
    )
}

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
        let msg = pod_veth_request(pod, ns.as_raw_fd());
        let result = self.handle.link().add(msg).execute().await;
        drop(ns);
        result.map_err(context(creating(pod)))
    }

    /// Creates the pod's veth pair as [`Host::create_pod_veth`] does, its
    /// host side carrying `alias` (our mark) from its first moment: the
    /// creating request asks for an unused ifindex, and the request that
    /// marks that ifindex goes in the same `sendmsg` (see
    /// [`links::create_and_change`]). Returns the host side's ifindex.
    pub async fn create_marked_pod_veth(&self, pod: &Pod, alias: &str) -> Result<u32> {
        let ifindex = self.unused_ifindex().await?;
        let ns = netns::open(&pod.netns)?;
        let mut create = pod_veth_request(pod, ns.as_raw_fd());
        create.header.index = ifindex;
        let mark = LinkUnspec::new_with_index(ifindex).alias(alias).build();
        let [created, marked] =
            tokio::task::spawn_blocking(move || links::create_and_change(create, mark))
                .await
                .context("netlink task panicked")?
                .with_context(|| creating(pod))?;
        drop(ns);
        created.with_context(|| creating(pod))?;
        if let Err(e) = marked {
            // Not expected (the index was just made); marked the usual way,
            // and never left unmarked.
            eprintln!(
                "{}: marking it in the same request failed: {e}",
                creating(pod)
            );
            if let Err(e) = links::set_alias(&self.handle, ifindex, &pod.host_veth, alias).await {
                links::delete(&self.handle, ifindex, &pod.host_veth).await?;
                return Err(e);
            }
        }
        Ok(ifindex)
    }

    /// An ifindex no link of the host namespace has, far above those the
    /// kernel hands out (it counts up from 1; at most 2^31 - 1).
    pub(super) async fn unused_ifindex(&self) -> Result<u32> {
        use std::hash::{BuildHasher, Hasher};
        loop {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            let ifindex = (1 << 28) | (h.finish() as u32 & 0x0fff_ffff);
            if links::by_index(&self.handle, ifindex).await?.is_none() {
                return Ok(ifindex);
            }
        }
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

    /// Creates a bridge with `mac` (set on creation, so a bridge of ours
    /// carries it from its first moment); one that exists is left as is.
    pub async fn create_bridge(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let msg = rtnetlink::LinkBridge::new(name)
            .address(mac.to_vec())
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(context(format!("creating bridge {name:?}"))(e)),
        }
    }

    /// Our bridge up, with its fixed MAC and our mark.
    pub async fn ensure_own_bridge(
        &self,
        bridge: &LinkState,
        mac: [u8; 6],
        alias: &str,
    ) -> Result<()> {
        links::ensure_up(&self.handle, bridge, &mac, None).await?;
        self.ensure_alias(bridge, alias).await
    }

    /// Every link of the host namespace with its alias.
    pub async fn marked_links(&self) -> Result<Vec<links::MarkedLink>> {
        links::list_marked(&self.handle).await
    }

    /// The alias of link `ifindex` (our mark on links we made).
    pub async fn alias(&self, ifindex: u32) -> Result<Option<String>> {
        links::alias_of(&self.handle, ifindex).await
    }

    /// Marks a link of ours with `alias` (a no-op when it has it).
    pub async fn ensure_alias(&self, link: &LinkState, alias: &str) -> Result<()> {
        let current = links::alias_of(&self.handle, link.ifindex).await?;
        if current.as_deref() == Some(alias) {
            return Ok(());
        }
        links::set_alias(&self.handle, link.ifindex, &link.name, alias).await
    }

    /// Sets the alias of a link just made (no lookup of the current one).
    pub async fn set_alias(&self, link: &LinkState, alias: &str) -> Result<()> {
        links::set_alias(&self.handle, link.ifindex, &link.name, alias).await
    }

    /// Gives link `ifindex` its name `to` back.
    pub async fn rename_link(&self, ifindex: u32, from: &str, to: &str) -> Result<()> {
        links::rename(&self.handle, ifindex, from, to).await
    }

    /// Whether veth `link` is the peer of `ifname` in namespace `netns`:
    /// the proof that a link made in the same request as that interface is
    /// the pod's (used for a link whose mark a crash kept from being set).
    pub async fn is_pod_peer(&self, link: &LinkState, netns: &str, ifname: &str) -> Result<bool> {
        if !link.is_veth() || !netns::exists(netns) {
            return Ok(false);
        }
        let (host_ifindex, peer) = (link.ifindex, link.peer_ifindex);
        let ifname = ifname.to_string();
        netns::run_in(netns, move |handle| async move {
            Ok(links::by_name(&handle, &ifname).await?.is_some_and(|eth0| {
                eth0.is_veth()
                    && eth0.peer_ifindex == Some(host_ifindex)
                    && peer == Some(eth0.ifindex)
            }))
        })
        .await
    }

    /// Every address of the host namespace: (ifindex, address, prefix
    /// length, IPv4 label).
    pub async fn addresses(&self) -> Result<Vec<HostAddress>> {
        use futures::TryStreamExt;
        let mut all = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(context("listing addresses"))?
        {
            let Some(address) = super::addresses::address_of(&msg) else {
                continue;
            };
            let label = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Label(l) => Some(l.clone()),
                _ => None,
            });
            all.push(HostAddress {
                ifindex: msg.header.index,
                address,
                prefix_len: msg.header.prefix_len,
                label,
                secondary: msg
                    .header
                    .flags
                    .contains(rtnetlink::packet_route::address::AddressHeaderFlags::Secondary),
            });
        }
        Ok(all)
    }

    /// Adds `address/prefix_len` to link `ifindex` (called `dev`), with
    /// `label` for IPv4 and without duplicate address detection for IPv6.
    /// False if the kernel already had it (then it is not ours).
    pub async fn add_address(
        &self,
        ifindex: u32,
        dev: &str,
        address: IpAddr,
        prefix_len: u8,
        label: Option<&str>,
    ) -> Result<bool> {
        let mut request = self.handle.address().add(ifindex, address, prefix_len);
        match (address, label) {
            (IpAddr::V4(_), Some(label)) => request
                .message_mut()
                .attributes
                .push(AddressAttribute::Label(label.to_string())),
            // Without NODAD the address is tentative for a moment, and
            // routes naming it as source are refused until it is not.
            (IpAddr::V6(_), _) => request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad)),
            _ => {}
        }
        match request.execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) => Err(context(format!("adding {address}/{prefix_len} to {dev}"))(
                e,
            )),
        }
    }

    /// Removes exactly `address/prefix_len` from link `ifindex`; one that is
    /// gone (or whose link is) is fine.
    pub async fn remove_address(
        &self,
        ifindex: u32,
        dev: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = match address {
            IpAddr::V4(_) => rtnetlink::packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => rtnetlink::packet_route::AddressFamily::Inet6,
        };
        msg.header.index = ifindex;
        msg.header.prefix_len = prefix_len;
        msg.attributes.push(AddressAttribute::Local(address));
        if address.is_ipv6() {
            msg.attributes.push(AddressAttribute::Address(address));
        }
        super::addresses::delete(
            &self.handle,
            msg,
            &format!("{address}/{prefix_len} from {dev}"),
        )
        .await
    }

    /// The main table's routes, IPv4 and IPv6.
    pub async fn routes(&self) -> Result<Vec<super::routes::Route>> {
        super::routes::main_table(&self.handle).await
    }

    pub async fn add_unreachable(&self, net: ipnet::IpNet) -> Result<()> {
        super::routes::add_unreachable(&self.handle, net).await
    }

    pub async fn remove_route(&self, route: &super::routes::Route) -> Result<()> {
        super::routes::delete(&self.handle, route).await
    }

    /// The pod's addresses as neighbours at its MAC on its host-side veth,
    /// in state STALE (used at once, confirmed by the kernel later), unless
    /// the kernel has entries for them already. For a veth about to join
    /// or leave a bridge while the host routes to the pod over it: the
    /// host reaches the pod at once, where the pod's ARP or NDP reply
    /// would be taken by the bridge.
    pub async fn ensure_pod_neighbours(&self, pod: &Pod, host_veth: u32) -> Result<()> {
        let ips = std::iter::once(IpAddr::V4(pod.ipv4)).chain(pod.ipv6.map(IpAddr::V6));
        for ip in ips {
            let added = self
                .handle
                .neighbours()
                .add(host_veth, ip)
                .link_layer_address(&pod.mac)
                .state(rtnetlink::packet_route::neighbour::NeighbourState::Stale)
                .execute()
                .await;
            match added {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => {
                    return Err(context(format!(
                        "pod {:?}: adding the host's neighbour {ip}",
                        pod.name
                    ))(e))
                }
            }
        }
        Ok(())
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
            .protocol(PROTOCOL.into())
            .build();
        let what = format!("pod {:?}: adding host route to {}", pod.name, pod.ipv4);
        super::replace_route(&self.handle, route4, what).await?;
        if let Some(ipv6) = pod.ipv6 {
            let mut route6 = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(ipv6, 128)
                .output_interface(host_veth)
                .protocol(PROTOCOL.into());
            if let Some(src) = topology.host_address6 {
                route6 = route6.pref_source(src);
            }
            let what = format!("pod {:?}: adding host route to {ipv6}", pod.name);
            super::replace_route(&self.handle, route6.build(), what).await?;
        }
        Ok(())
    }
}
