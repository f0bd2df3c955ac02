//! Link and namespace events of the host namespace, as rtnetlink multicasts
//! them: what `vethctl agent` follows to keep the dataplane's endpoints in
//! step with the veths behind them.

use anyhow::{Context, Result};
use futures::{channel::mpsc::UnboundedReceiver, StreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::{AsyncSocket, SocketAddr},
};

/// `RTNLGRP_LINK` and `RTNLGRP_NSID` from linux/rtnetlink.h.
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NSID: u32 = 28;

/// Something changed that may concern an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link was created or changed (flags, carrier, name...).
    Changed { ifindex: u32 },
    /// A link is gone (deleted, or its namespace was).
    Removed { ifindex: u32 },
    /// A namespace id came or went: links may have moved.
    Namespaces,
}

/// A subscription to the host namespace's link and namespace events.
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl LinkEvents {
    /// Subscribes; must be called on a host-namespace thread.
    pub fn subscribe() -> Result<LinkEvents> {
        let (mut connection, _handle, messages) =
            rtnetlink::new_connection().context("opening rtnetlink for events")?;
        let socket = connection.socket_mut().socket_mut();
        // Unbound, the socket has port id 0, the kernel's own, and never
        // gets the kernel's multicasts.
        socket
            .bind_auto()
            .context("binding the rtnetlink event socket")?;
        for group in [RTNLGRP_LINK, RTNLGRP_NSID] {
            socket
                .add_membership(group)
                .with_context(|| format!("joining rtnetlink multicast group {group}"))?;
        }
        tokio::spawn(connection);
        Ok(LinkEvents { messages })
    }

    /// The next event; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            let NetlinkPayload::InnerMessage(inner) = message.payload else {
                continue;
            };
            return Some(match inner {
                RouteNetlinkMessage::NewLink(link) => LinkEvent::Changed {
                    ifindex: link.header.index,
                },
                RouteNetlinkMessage::DelLink(link) => LinkEvent::Removed {
                    ifindex: link.header.index,
                },
                RouteNetlinkMessage::NewNsId(_) | RouteNetlinkMessage::DelNsId(_) => {
                    LinkEvent::Namespaces
                }
                _ => continue,
            });
        }
    }
}
