//! Interface addresses, in whichever namespace the handle's socket lives.

use std::net::IpAddr;

use anyhow::Result;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope,
};

use super::{context, errno, is_exists, is_gone, links::LinkState};

/// An address with its prefix length.
pub type Prefix = (IpAddr, u8);

/// Makes `desired` the only global addresses of `link` (link-local IPv6
/// addresses are the kernel's and stay). IPv6 addresses skip duplicate
/// address detection: they are ours by construction, and DAD would keep
/// them unusable for a second.
///
/// Make before break: new IPv4 addresses are added before stale ones go.
/// Removing a link's last IPv4 address makes the kernel flush every IPv4
/// route through it (the default route included), so senders would get
/// `Network is unreachable` until the routes are back; with the new address
/// already there (the same address with another prefix is a separate entry
/// in IPv4), the link never has none. IPv6 refuses the same address twice
/// whatever the prefix, so there the stale one goes first.
pub async fn ensure_exactly(
    handle: &rtnetlink::Handle,
    link: &LinkState,
    desired: &[Prefix],
) -> Result<()> {
    let mut present = Vec::new();
    let mut stale = Vec::new();
    for msg in list(handle, link.ifindex, &link.name).await? {
        if msg.header.scope != AddressScope::Universe {
            continue;
        }
        match address_of(&msg) {
            Some(addr) if desired.contains(&(addr, msg.header.prefix_len)) => {
                present.push((addr, msg.header.prefix_len))
            }
            Some(addr) => stale.push((addr.is_ipv4(), msg)),
            None => {}
        }
    }
    let missing: Vec<Prefix> = desired
        .iter()
        .filter(|d| !present.contains(d))
        .copied()
        .collect();
    add_all(handle, link, missing.iter().filter(|(a, _)| a.is_ipv4())).await?;
    for (_, msg) in stale.iter().filter(|(v4, _)| !v4) {
        delete(
            handle,
            msg.clone(),
            &format!("a stale address of {:?}", link.name),
        )
        .await?;
    }
    add_all(handle, link, missing.iter().filter(|(a, _)| a.is_ipv6())).await?;
    for (_, msg) in stale.into_iter().filter(|(v4, _)| *v4) {
        delete(handle, msg, &format!("a stale address of {:?}", link.name)).await?;
    }
    Ok(())
}

async fn add_all(
    handle: &rtnetlink::Handle,
    link: &LinkState,
    prefixes: impl Iterator<Item = &Prefix>,
) -> Result<()> {
    for &(addr, prefix_len) in prefixes {
        let mut request = handle.address().add(link.ifindex, addr, prefix_len);
        if addr.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => {
                return Err(context(format!(
                    "adding {addr}/{prefix_len} to {:?}",
                    link.name
                ))(e))
            }
        }
    }
    Ok(())
}

/// Every address of interface `ifindex`.
pub async fn list(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    name: &str,
) -> Result<Vec<AddressMessage>> {
    let mut all = Vec::new();
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(context(format!("listing addresses of {name:?}")))?
    {
        all.push(msg);
    }
    Ok(all)
}

/// Removes an address; one that is already gone is fine.
pub async fn delete(handle: &rtnetlink::Handle, msg: AddressMessage, what: &str) -> Result<()> {
    match handle.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) || errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
        Err(e) => Err(context(format!("removing {what}"))(e)),
    }
}

/// The interface address of a message (IFA_LOCAL for IPv4 point-to-point,
/// else IFA_ADDRESS).
pub fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let find = |local: bool| {
        msg.attributes.iter().find_map(|a| match (a, local) {
            (AddressAttribute::Local(ip), true) | (AddressAttribute::Address(ip), false) => {
                Some(*ip)
            }
            _ => None,
        })
    };
    find(true).or_else(|| find(false))
}
