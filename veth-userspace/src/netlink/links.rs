//! Links as the kernel reports them, in whichever namespace the handle's
//! socket lives.

use anyhow::Result;
use futures::TryStreamExt;
use rtnetlink::packet_route::{
    link::{InfoKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage},
    AddressFamily,
};

use super::{context, is_gone};

/// What the tool needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub ifindex: u32,
    /// `veth`, `dummy`, ... (`None` for kinds without rtnl link ops, e.g. lo).
    pub kind: Option<String>,
    pub mac: Vec<u8>,
    pub up: bool,
    /// Carrier: for a veth, the peer is up too.
    pub lower_up: bool,
    pub mtu: u32,
    /// For a veth: the peer's ifindex, in the peer's namespace.
    pub peer_ifindex: Option<u32>,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
}

impl LinkState {
    fn from_message(msg: &LinkMessage) -> Option<LinkState> {
        let mut link = LinkState {
            name: String::new(),
            ifindex: msg.header.index,
            kind: None,
            mac: Vec::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            mtu: 0,
            peer_ifindex: None,
            controller: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) => link.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Link(peer) => link.peer_ifindex = Some(*peer),
                LinkAttribute::Controller(c) if *c != 0 => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        (!link.name.is_empty()).then_some(link)
    }

    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

#[cfg(test)]
impl LinkState {
    /// A link as unit tests need one: up, carrier on, MTU 1500, MAC
    /// ee:ee:ee:ee:ee:ee, peer ifindex 2, no controller.
    pub fn for_test(name: &str, ifindex: u32, kind: &str) -> LinkState {
        LinkState {
            name: name.into(),
            ifindex,
            kind: Some(kind.into()),
            mac: vec![0xee; 6],
            up: true,
            lower_up: true,
            mtu: 1500,
            peer_ifindex: Some(2),
            controller: None,
        }
    }
}

fn kind_name(kind: &InfoKind) -> String {
    kind.to_string()
}

/// All links of the handle's namespace.
pub async fn list(handle: &rtnetlink::Handle) -> Result<Vec<LinkState>> {
    Ok(list_marked(handle)
        .await?
        .into_iter()
        .map(|marked| marked.link)
        .collect())
}

/// The link called `name`, if any.
pub async fn by_name(handle: &rtnetlink::Handle, name: &str) -> Result<Option<LinkState>> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(LinkState::from_message(&msg)),
        Ok(None) => Ok(None),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(context(format!("looking up link {name:?}"))(e)),
    }
}

/// Whether the link called `name` is operationally up. Carrier alone is
/// not enough to send through a link: until the kernel's link watch has
/// seen the carrier come on (it sets the operational state, then attaches
/// the link's queueing discipline), frames sent into it are dropped.
pub async fn is_operational(handle: &rtnetlink::Handle, name: &str) -> Result<bool> {
    use rtnetlink::packet_route::link::State;
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(msg
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))),
        Ok(None) => Ok(false),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(context(format!("looking up link {name:?}"))(e)),
    }
}

/// The link with index `ifindex`, if any.
pub async fn by_index(handle: &rtnetlink::Handle, ifindex: u32) -> Result<Option<LinkState>> {
    let mut stream = handle.link().get().match_index(ifindex).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(LinkState::from_message(&msg)),
        Ok(None) => Ok(None),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(context(format!("looking up link {ifindex}"))(e)),
    }
}

/// Deletes a link by index; a link that is already gone is fine.
pub async fn delete(handle: &rtnetlink::Handle, ifindex: u32, name: &str) -> Result<()> {
    match handle.link().del(ifindex).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(context(format!("deleting link {name:?}"))(e)),
    }
}

/// Sets a link up with the given MAC and (if given) MTU; a no-op when it
/// already is.
pub async fn ensure_up(
    handle: &rtnetlink::Handle,
    link: &LinkState,
    mac: &[u8],
    mtu: Option<u32>,
) -> Result<()> {
    ensure_port(handle, link, mac, mtu, link.controller).await
}

/// Like [`ensure_up`], and makes the link a port of `controller` (a bridge)
/// or of nothing (`None`).
pub async fn ensure_port(
    handle: &rtnetlink::Handle,
    link: &LinkState,
    mac: &[u8],
    mtu: Option<u32>,
    controller: Option<u32>,
) -> Result<()> {
    if link.up
        && link.mac == mac
        && mtu.is_none_or(|m| m == link.mtu)
        && link.controller == controller
    {
        return Ok(());
    }
    let mut msg = rtnetlink::LinkUnspec::new_with_index(link.ifindex).up();
    // Only a MAC that differs: setting even the same one makes the kernel
    // announce a changed address (NETDEV_CHANGEADDR), and ARP and NDP then
    // flush every neighbour of the link (`neigh_changeaddr`), so traffic
    // through it waits for resolution again.
    if link.mac != mac {
        msg = msg.address(mac.to_vec());
    }
    if let Some(mtu) = mtu {
        msg = msg.mtu(mtu);
    }
    if link.controller != controller {
        msg = msg.controller(controller.unwrap_or(0));
    }
    handle
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(context(format!("setting link {:?} up", link.name)))
}

/// A link with its alias (IFLA_IFALIAS), which marks the links a topology
/// made (see [`crate::state::link_mark`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkedLink {
    pub link: LinkState,
    pub alias: Option<String>,
}

/// All links of the handle's namespace, with their aliases.
pub async fn list_marked(handle: &rtnetlink::Handle) -> Result<Vec<MarkedLink>> {
    let mut links = Vec::new();
    // Without statistics, a dump of hundreds of veths is a fraction of the
    // size (and of the time to parse).
    let mut stream = handle
        .link()
        .get()
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute();
    while let Some(msg) = stream.try_next().await.map_err(context("listing links"))? {
        let alias = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfAlias(alias) if !alias.is_empty() => Some(alias.clone()),
            _ => None,
        });
        if let Some(link) = LinkState::from_message(&msg) {
            links.push(MarkedLink { link, alias });
        }
    }
    Ok(links)
}

/// The alias of link `ifindex` (`None` without one, or without the link).
pub async fn alias_of(handle: &rtnetlink::Handle, ifindex: u32) -> Result<Option<String>> {
    let mut stream = handle.link().get().match_index(ifindex).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfAlias(alias) if !alias.is_empty() => Some(alias.clone()),
            _ => None,
        })),
        Ok(None) => Ok(None),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(context(format!("looking up link {ifindex}"))(e)),
    }
}

/// Sets the alias of link `ifindex` (named `name`, for errors).
pub async fn set_alias(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    name: &str,
    alias: &str,
) -> Result<()> {
    let msg = rtnetlink::LinkUnspec::new_with_index(ifindex)
        .alias(alias)
        .build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(context(format!(
            "marking link {name:?} with alias {alias:?}"
        )))
}

/// Renames link `ifindex` from `from` to `to`. Kernels before 6.8 refuse
/// to rename a link that is up (EBUSY): it is then taken down, renamed and
/// brought up again.
pub async fn rename(handle: &rtnetlink::Handle, ifindex: u32, from: &str, to: &str) -> Result<()> {
    let set = |msg| async { handle.link().set(msg).execute().await };
    let named = || {
        rtnetlink::LinkUnspec::new_with_index(ifindex)
            .name(to.to_string())
            .build()
    };
    let what = || format!("renaming link {from:?} (ifindex {ifindex}) back to {to:?}");
    match set(named()).await {
        Ok(()) => Ok(()),
        Err(e) if super::errno(&e) == Some(libc::EBUSY) => {
            let down = rtnetlink::LinkUnspec::new_with_index(ifindex)
                .down()
                .build();
            set(down).await.map_err(context(what()))?;
            set(named()).await.map_err(context(what()))?;
            let up = rtnetlink::LinkUnspec::new_with_index(ifindex).up().build();
            set(up).await.map_err(context(what()))
        }
        Err(e) => Err(context(what())(e)),
    }
}

/// Creates a link and changes it in one `sendmsg`: `create` (an
/// `RTM_NEWLINK` that names the ifindex it wants) and `change` (an
/// `RTM_SETLINK` of that ifindex). The kernel handles every message of one
/// `sendmsg` before the call returns, so no signal — `kill -9` included —
/// falls between the two: the link never exists without the change. (The
/// kernel takes no `IFLA_IFALIAS` in the request that creates a link.)
/// Opened on the calling thread, so in its namespace. Returns each
/// request's outcome; `change` of an index `create` did not make fails
/// with ENODEV.
pub fn create_and_change(
    create: LinkMessage,
    change: LinkMessage,
) -> std::io::Result<[std::io::Result<()>; 2]> {
    use rtnetlink::{
        packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
        },
        packet_route::RouteNetlinkMessage,
        sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    };
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let requests = [
        (
            RouteNetlinkMessage::NewLink(create),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ),
        (
            RouteNetlinkMessage::SetLink(change),
            NLM_F_REQUEST | NLM_F_ACK,
        ),
    ];
    let mut buf = Vec::new();
    for (seq, (payload, flags)) in requests.into_iter().enumerate() {
        let mut msg = NetlinkMessage::from(payload);
        msg.header.flags = flags;
        msg.header.sequence_number = seq as u32 + 1;
        msg.finalize();
        let start = buf.len();
        // Each message starts 4-byte aligned (NLMSG_ALIGN).
        buf.resize(start + msg.buffer_len().next_multiple_of(4), 0);
        msg.serialize(&mut buf[start..]);
    }
    socket.send(&buf, 0)?;
    let mut outcomes: [Option<std::io::Result<()>>; 2] = [None, None];
    while outcomes.iter().any(Option::is_none) {
        let (bytes, _) = socket.recv_from_full()?;
        let mut rest = &bytes[..];
        while rest.len() >= 16 {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| std::io::Error::other(format!("decoding a netlink answer: {e}")))?;
            let len = (msg.header.length as usize).next_multiple_of(4).max(16);
            rest = rest.get(len..).unwrap_or_default();
            let slot = match msg.header.sequence_number {
                1 => 0,
                2 => 1,
                _ => continue,
            };
            if let NetlinkPayload::Error(e) = msg.payload {
                outcomes[slot] = Some(match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                });
            }
        }
    }
    Ok(outcomes.map(|o| o.unwrap_or(Ok(()))))
}
