//! Rebuilds a network's record (`/run/vethctl/<name>/`) from what carries
//! its marks in the kernel, when the record is gone (a cleaned /run, an
//! operator's `rm`): the crash-recovery rule applied to a lost state
//! directory. Without it every ADD was refused (the network's own node
//! address looked like someone else's) and `down` removed nothing.
//!
//! Only a network whose pins (`/sys/fs/bpf/vethctl/<name>`, which only
//! vethctl makes) are there is rebuilt, and of it only what carries its
//! mark: links with the alias `vethctl:<name>`, IPv4 addresses on lo
//! labelled `lo:<name>`, addresses on a bridge so marked, unreachable
//! routes of vethctl's protocol and metric over a range that holds one of
//! those addresses or a mapped endpoint's, the nf_tables table
//! `vethctl_<name>` with the comment `vethctl:<name>`, and the pins. A
//! marked veth with a slot in the network's maps is a runtime endpoint: it
//! gets a record again (its addresses from its slot) under a stand-in id,
//! which the DEL of its attachment finds by the host-side veth name (a hash
//! of network, container id and interface).

use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::{
    dataplane::{health::EndpointMaps, Pins},
    endpoint::{AddressSource, Record, Store, HOST_VETH_PREFIX},
    model::{host_address_label, object_prefix, K8sPod, TcAttach},
    netlink::{
        links::MarkedLink,
        nat,
        routes::{self, RouteKind},
        Host,
    },
    state::{link_mark, Ledger, LedgerAddress, LedgerLink, StateDir},
};

/// The container id of an endpoint record rebuilt from the kernel: the
/// runtime's id is not in the kernel; its DEL finds the record by host veth.
pub const RECOVERED_ID_PREFIX: &str = "recovered-";

/// Whether network `name` lost its record: no description, no ledger, no
/// endpoint records.
pub fn record_lost(name: &str) -> bool {
    let state = StateDir::new(name);
    !state.topology_path().exists()
        && matches!(Ledger::load(&state), Ok(None))
        && Store::new(name).records().is_empty()
}

/// Sets aside (as `<file>.unreadable`) a description or ledger of network
/// `name` that cannot be read, so that the record counts as lost and is
/// rebuilt; true if it did. Kept, not deleted: someone may want to look.
fn set_aside_unreadable(name: &str) -> Result<bool> {
    let state = StateDir::new(name);
    let description = state.load().is_err().then(|| state.topology_path());
    let ledger = Ledger::load(&state)
        .is_err()
        .then(|| state.path().join(crate::state::LEDGER_FILE));
    let mut set_aside = false;
    for path in [description, ledger].into_iter().flatten() {
        let aside = path.with_extension("unreadable");
        std::fs::rename(&path, &aside)
            .with_context(|| format!("setting {} aside", path.display()))?;
        eprintln!(
            "vethctl: network {name:?}: {} cannot be read; set aside as {} and rebuilt from \
             the kernel",
            path.display(),
            aside.display()
        );
        set_aside = true;
    }
    Ok(set_aside)
}

/// What was rebuilt.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub ledger: Ledger,
    pub endpoints: Vec<Record>,
}

/// Rebuilds network `name`'s ledger and endpoint records from the kernel's
/// marks if its record is lost (see [`record_lost`]) or unreadable (its
/// description or ledger; endpoint records that can be read are kept) and
/// the kernel holds anything of it; `None` otherwise. Endpoints get `addresses` as their
/// addresses' source (the configuration's IPAM, when an ADD asks). The
/// caller holds the network's lock exclusively.
pub async fn rebuild_if_lost(
    host: &Host,
    name: &str,
    addresses: AddressSource,
) -> Result<Option<Rebuilt>> {
    // The anchor: only vethctl pins programs and maps there. A label or an
    // alias alone is no proof (anyone can set one), so without the pins
    // nothing is taken back.
    if !Pins::new(name).exist() {
        return Ok(None);
    }
    let unreadable = set_aside_unreadable(name)?;
    if !unreadable && !record_lost(name) {
        return Ok(None);
    }
    let rebuilt = rebuild(host, name, addresses).await?;
    if rebuilt.ledger.is_empty() && rebuilt.endpoints.is_empty() {
        return Ok(None);
    }
    let state = StateDir::new(name);
    rebuilt.ledger.save(&state)?;
    let store = Store::new(name);
    for record in &rebuilt.endpoints {
        store.save(record)?;
    }
    eprintln!(
        "vethctl: network {name:?} had lost its record ({}); rebuilt from what carries its \
         mark: {} links, {} addresses, {} unreachable routes, pins {}, nf_tables table {}, {} \
         endpoints",
        state.path().display(),
        rebuilt.ledger.links.len(),
        rebuilt.ledger.addresses.len(),
        rebuilt.ledger.unreachable.len(),
        if rebuilt.ledger.pins { "yes" } else { "no" },
        if rebuilt.ledger.nat_table {
            "yes"
        } else {
            "no"
        },
        rebuilt.endpoints.len()
    );
    Ok(Some(rebuilt))
}

async fn rebuild(host: &Host, name: &str, addresses: AddressSource) -> Result<Rebuilt> {
    let mark = link_mark(name);
    let ours: Vec<MarkedLink> = host
        .marked_links()
        .await?
        .into_iter()
        .filter(|m| m.alias.as_deref() == Some(mark.as_str()))
        .collect();
    let pins = Pins::new(name);
    let maps = EndpointMaps::open(name).ok().flatten();
    // Endpoints whose records could still be read keep them.
    let recorded: std::collections::BTreeSet<u32> = Store::new(name)
        .records()
        .iter()
        .filter_map(|r| r.host_ifindex)
        .collect();
    let mut rebuilt = Rebuilt {
        ledger: Ledger {
            pins: pins.exist(),
            // Without nf_tables there is no table of ours.
            nat_table: nat::table_is_ours(name).unwrap_or(false),
            ..Ledger::default()
        },
        endpoints: Vec::new(),
    };
    for m in ours.iter().filter(|m| !recorded.contains(&m.link.ifindex)) {
        let link = &m.link;
        let mapped = maps
            .as_ref()
            .and_then(|maps| maps.pod(link.ifindex).ok().flatten());
        let endpoint = link.is_veth()
            && link.name.starts_with(HOST_VETH_PREFIX)
            && !link.name.starts_with(&object_prefix(name));
        match mapped {
            Some(pod) if endpoint => rebuilt.endpoints.push(Record {
                container_id: format!("{RECOVERED_ID_PREFIX}{}", link.name),
                ifname: crate::model::POD_IFNAME.to_string(),
                // Unknown: such an endpoint stays mapped and forwarded, and
                // goes with its DEL, but is not rewired by a mode change.
                netns: String::new(),
                host_veth: link.name.clone(),
                host_ifindex: Some(link.ifindex),
                ipv4: pod.ipv4(),
                ipv6: (pod.identity.has_ipv6 != 0)
                    .then(|| std::net::Ipv6Addr::from(pod.identity.ipv6)),
                mtu: link.mtu,
                k8s: None::<K8sPod>,
                addresses: addresses.clone(),
                host_path: pod.identity.host_path != 0,
                tc_attach: TcAttach::default(),
            }),
            _ => {
                rebuilt.ledger.links.insert(
                    link.name.clone(),
                    LedgerLink {
                        kind: link.kind.clone().unwrap_or_default(),
                        ifindex: Some(link.ifindex),
                        mac: link.mac.as_slice().try_into().ok(),
                    },
                );
            }
        }
    }
    add_addresses_and_routes(host, name, &ours, &mut rebuilt).await?;
    Ok(rebuilt)
}

/// The node addresses (lo's labelled ones, our bridges') and the
/// unreachable routes of ranges that hold one of them or an endpoint's.
async fn add_addresses_and_routes(
    host: &Host,
    name: &str,
    ours: &[MarkedLink],
    rebuilt: &mut Rebuilt,
) -> Result<()> {
    let label = host_address_label(name);
    let lo = host.link("lo").await?.map(|l| l.ifindex);
    let bridges: Vec<(u32, &str)> = ours
        .iter()
        .filter(|m| m.link.kind.as_deref() == Some("bridge"))
        .map(|m| (m.link.ifindex, m.link.name.as_str()))
        .collect();
    let all = host.addresses().await?;
    let mut inside: Vec<IpAddr> = rebuilt
        .endpoints
        .iter()
        .flat_map(|r| std::iter::once(IpAddr::V4(r.ipv4)).chain(r.ipv6.map(IpAddr::V6)))
        .collect();
    for a in &all {
        let device = if Some(a.ifindex) == lo && a.label.as_deref() == Some(label.as_str()) {
            "lo"
        } else if let Some((_, bridge)) = bridges.iter().find(|(i, _)| *i == a.ifindex) {
            bridge
        } else {
            continue;
        };
        inside.push(a.address);
        rebuilt.ledger.addresses.insert(LedgerAddress {
            device: device.to_string(),
            address: a.address,
            prefix_len: a.prefix_len,
        });
    }
    for route in host.routes().await? {
        if route.kind == RouteKind::Unreachable
            && route.protocol == routes::PROTOCOL
            && route.metric == Some(routes::UNREACHABLE_METRIC)
            && inside.iter().any(|ip| route.dst.contains(ip))
        {
            rebuilt.ledger.unreachable.insert(route.dst);
        }
    }
    // The IPv6 node address on lo carries no label: ours when it lies in
    // one of the network's own IPv6 ranges.
    for a in &all {
        if Some(a.ifindex) == lo
            && a.address.is_ipv6()
            && rebuilt
                .ledger
                .unreachable
                .iter()
                .any(|net| net.contains(&a.address))
        {
            rebuilt.ledger.addresses.insert(LedgerAddress {
                device: "lo".into(),
                address: a.address,
                prefix_len: a.prefix_len,
            });
        }
    }
    Ok(())
}

/// The rebuilt record of the endpoint whose host-side veth is `host_veth`,
/// if network `name` has one (a DEL whose own record is not found).
pub fn recovered_endpoint(name: &str, host_veth: &str) -> Option<Record> {
    Store::new(name)
        .records()
        .into_iter()
        .find(|r| r.container_id.starts_with(RECOVERED_ID_PREFIX) && r.host_veth == host_veth)
}
