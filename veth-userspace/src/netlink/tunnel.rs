//! The collect-metadata VXLAN device of cross-node `ebpf-vxlan` (Cilium's
//! `cilium_vxlan`): one per node and UDP port, no VNI or remote of its own;
//! the programs name both per frame with a tunnel key.

use anyhow::{bail, Context, Result};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan};
use veth_common::TUNNEL_MAC;

use super::{links, links::LinkState, Host};

/// What the device should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelDevice {
    pub name: String,
    /// UDP destination port (4789 IANA, 8472 flannel and the Linux default).
    pub port: u16,
    /// Underlay MTU minus the encapsulation.
    pub mtu: u32,
    /// Our mark (IFLA_IFALIAS): only a device carrying it is ever changed
    /// or deleted.
    pub alias: String,
}

impl Host {
    /// Makes the device (marked from its first moment, with
    /// [`TUNNEL_MAC`]) or brings the one we made up to date; returns its
    /// ifindex. A device of that name that is not ours is an error.
    pub async fn ensure_tunnel(&self, want: &TunnelDevice) -> Result<u32> {
        let link = match self.link(&want.name).await? {
            Some(link) => {
                self.check_ours(&link, want).await?;
                link
            }
            None => self.create_tunnel(want).await?,
        };
        links::ensure_up(self.handle(), &link, &TUNNEL_MAC, Some(want.mtu)).await?;
        Ok(link.ifindex)
    }

    /// Deletes the device if it is ours; a missing one is fine.
    pub async fn remove_tunnel(&self, want: &TunnelDevice) -> Result<()> {
        let Some(link) = self.link(&want.name).await? else {
            return Ok(());
        };
        if self.alias(link.ifindex).await?.as_deref() != Some(want.alias.as_str()) {
            return Ok(());
        }
        self.delete_link(link.ifindex, &want.name).await
    }

    async fn check_ours(&self, link: &LinkState, want: &TunnelDevice) -> Result<()> {
        let alias = self.alias(link.ifindex).await?;
        if alias.as_deref() != Some(want.alias.as_str()) || link.kind.as_deref() != Some("vxlan") {
            bail!(
                "link {:?} exists and is not vethctl's VXLAN device (alias {alias:?}); \
                 remove it or choose another name",
                want.name
            );
        }
        Ok(())
    }

    async fn create_tunnel(&self, want: &TunnelDevice) -> Result<LinkState> {
        let what = || {
            format!(
                "creating the VXLAN device {:?} (port {})",
                want.name, want.port
            )
        };
        let ifindex = self.unused_ifindex().await?;
        // `external`: no VNI or remote of its own (the tunnel key says);
        // no learning, so no FDB entries to age or leak.
        let mut create = LinkMessageBuilder::<LinkVxlan>::new(&want.name)
            .collect_metadata(true)
            .learning(false)
            .port(want.port)
            .address(TUNNEL_MAC.to_vec())
            .mtu(want.mtu)
            .build();
        create.header.index = ifindex;
        let mark = LinkUnspec::new_with_index(ifindex)
            .alias(&want.alias)
            .build();
        let [created, marked] =
            tokio::task::spawn_blocking(move || links::create_and_change(create, mark))
                .await
                .context("netlink task panicked")?
                .with_context(what)?;
        created.with_context(what)?;
        if let Err(e) = marked {
            self.delete_link(ifindex, &want.name).await?;
            return Err(e).with_context(what);
        }
        self.link_by_index(ifindex)
            .await?
            .with_context(|| format!("{}: gone right after", what()))
    }
}
