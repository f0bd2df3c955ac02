//! The kernel work of one endpoint: its veth pair, both sides wired for the
//! network's mode, the programs attached to its host side, its map entries
//! — and taking all of that away again. [`wire_pod`] is shared with `up`,
//! which wires a topology file's pods the same way.

use anyhow::{Context, Result};

use super::{EndpointError, Record, Store};
use crate::{
    dataplane::{self, Dataplane, Hook, Pins, PodEntry},
    model::{Mode, Pod, TcAttach, Topology},
    netlink::{
        links::LinkState,
        netns,
        pod::{self, PodWiring},
        routes, sysctl, Host,
    },
    state::{link_mark, StateDir},
};

/// Pod side and host side of one pod, wired for the topology's mode: the
/// pod's addresses and gateway, its offloads in mode xdp
/// (`before_offloads` runs first, so a record can say they may be set), the
/// host side up with our mark, as a bridge port in mode bridge and with its
/// host routes otherwise. Returns the host-side veth.
pub async fn wire_pod(
    host: &Host,
    topology: &Topology,
    pod: &Pod,
    before_offloads: impl FnOnce() -> Result<()>,
) -> Result<LinkState> {
    let bridge = match topology.mode {
        Mode::Bridge => Some(
            host.link(&topology.bridge)
                .await?
                .with_context(|| format!("bridge {:?} is missing", topology.bridge))?,
        ),
        _ => None,
    };
    let wiring = match &bridge {
        Some(_) => PodWiring::Bridged {
            prefix4: topology.pod_cidr.prefix_len(),
            prefix6: topology.pod_cidr6.map_or(128, |c| c.prefix_len()),
            gateway4: topology.host_address,
            gateway6: topology.host_address6,
        },
        None => PodWiring::Routed,
    };
    pod::configure(pod, &wiring).await?;
    if topology.mode == Mode::Xdp {
        before_offloads()?;
        // Before XDP is attached: redirected frames need the pod's NAPI
        // (`up` sets them earlier still, before any attach; a no-op then).
        pod::set_offloads(pod, true).await?;
    }
    let veth = host
        .link(&pod.host_veth)
        .await?
        .with_context(|| format!("host-side veth {:?} is missing", pod.host_veth))?;
    // A veth of an older vethctl, or one whose mark a crash kept from being
    // set, gets it now.
    host.ensure_alias(&veth, &link_mark(&topology.name)).await?;
    // Leaving a bridge, the veth stays a port for now (see `leave_bridge`),
    // and the host reaches the pod over it (route and neighbour) already.
    let leaving_bridge = bridge.is_none() && veth.up && veth.controller.is_some();
    if leaving_bridge {
        host.ensure_pod_neighbours(pod, veth.ifindex).await?;
    }
    let controller = match &bridge {
        Some(b) => Some(b.ifindex),
        None if leaving_bridge => veth.controller,
        None => None,
    };
    if !pod.netns_is_ours() {
        // The host side of a runtime's endpoint needs IPv6 only to be a
        // dual-stack pod's gateway. Without it, deleting the veth (DEL)
        // waits for no IPv6 routes' cached entries, which the kernel frees
        // in an RCU callback queued by another one: one more `rcu_barrier`
        // and sleep in `netdev_run_todo` (~15 ms here, `cargo xtask bench
        // cni`). Set before the link is up, so none are ever made.
        sysctl::set_ipv6(&pod.host_veth, topology.pod_cidr6.is_some())?;
    }
    host.ensure_host_veth(pod, &veth, controller).await?;
    sysctl::set_rps(&pod.host_veth, topology.rps)?;
    if bridge.is_none() {
        host.ensure_pod_routes(pod, veth.ifindex, topology).await?;
    }
    Ok(veth)
}

/// Makes the pod's host-side veth a port of the topology's bridge, before
/// the pod is readdressed for it: until then the host still routes to the
/// pod over its veth, and a port's ARP and NDP replies go to the bridge,
/// so the host's neighbours on the veth are put in place first.
pub async fn join_bridge(host: &Host, topology: &Topology, pod: &Pod) -> Result<()> {
    let bridge = host
        .link(&topology.bridge)
        .await?
        .with_context(|| format!("bridge {:?} is missing", topology.bridge))?;
    let veth = host
        .link(&pod.host_veth)
        .await?
        .with_context(|| format!("host-side veth {:?} is missing", pod.host_veth))?;
    if veth.up && veth.controller.is_none() {
        host.ensure_pod_neighbours(pod, veth.ifindex).await?;
    }
    host.ensure_host_veth(pod, &veth, Some(bridge.ifindex))
        .await
}

/// Takes the pod's host-side veth off its bridge (a no-op if it is on
/// none), once `wire_pod` wired the pod for a mode without one. Only once
/// every pod is wired: a pod still bridged sends to its peers' MACs, which
/// a bridge no longer delivers once the peer's port is gone. A pod wired
/// for routing keeps working through a port meanwhile: it sends to the
/// port's MAC, which takes its frames up the bridge to the host's routes,
/// and the host reaches it over the veth by route and neighbour.
pub async fn leave_bridge(host: &Host, pod: &Pod) -> Result<()> {
    let veth = host
        .link(&pod.host_veth)
        .await?
        .with_context(|| format!("host-side veth {:?} is missing", pod.host_veth))?;
    if veth.controller.is_some() {
        host.ensure_host_veth(pod, &veth, None).await?;
    }
    Ok(())
}

/// What the maps know of a pod.
pub fn entry(pod: &Pod, host_ifindex: u32) -> PodEntry {
    PodEntry {
        host_ifindex,
        ipv4: pod.ipv4,
        ipv6: pod.ipv6,
        mac: pod.mac,
        gateway_mac: pod.gateway_mac,
        mtu: pod.mtu,
        host_path: pod.host_path,
    }
}

/// Attaches the endpoint to `network` (whose programs are loaded): the
/// record first (the proof that what follows is ours), then the veth pair
/// into the runtime's namespace, its wiring, the programs, the map entries.
/// On failure, everything it made is taken away again and the record
/// removed; the caller gives the addresses back.
pub async fn add(
    host: &Host,
    network: &Topology,
    record: &mut Record,
) -> Result<(), EndpointError> {
    if let Err(reason) = netns::check_pod_netns(&record.netns) {
        return Err(EndpointError::InvalidNetns {
            path: record.netns.clone(),
            reason,
        });
    }
    let store = Store::new(&network.name);
    // A second ADD of one attachment (a runtime retrying): what the first
    // made goes first, map entries included (its slot would leak).
    if let Some(previous) = store.load(&record.container_id, &record.ifname)? {
        remove(host, &network.name, &previous).await?;
    }
    store.save(record)?;
    let result = attach(host, network, &store, record).await;
    if let Err(e) = result {
        if let Err(undo) = remove(host, &network.name, record).await {
            eprintln!(
                "veth-cni: undoing a failed ADD of {}: {undo:#}",
                record.key()
            );
        }
        return Err(e);
    }
    Ok(())
}

async fn attach(
    host: &Host,
    network: &Topology,
    store: &Store,
    record: &mut Record,
) -> Result<(), EndpointError> {
    let pod = record.pod();
    let mark = link_mark(&network.name);
    if let Some(existing) = host.link(&pod.host_veth).await? {
        // A leftover of an ADD of this very attachment (a crash, or a
        // runtime that repeats ADD): ours only if it carries our mark or
        // is the record's pair.
        if !is_ours(host, &network.name, record, &existing).await? {
            return Err(EndpointError::Conflict(format!(
                "host interface {:?} exists and is not vethctl's (no alias {mark:?}); it was left \
                 unchanged — remove it or rename it",
                pod.host_veth
            )));
        }
        host.delete_link(existing.ifindex, &existing.name).await?;
    }
    let ifindex = host.create_marked_pod_veth(&pod, &mark).await?;
    let link = host
        .link_by_index(ifindex)
        .await?
        .with_context(|| format!("link {:?} vanished right after creation", pod.host_veth))?;
    record.host_ifindex = Some(link.ifindex);
    store.save(record)?;
    wire_pod(host, network, &pod, || Ok(())).await?;
    let name = network.name.clone();
    let hooks = Hook::for_mode(network.mode);
    let veths = vec![pod.host_veth.clone()];
    let entry = entry(&pod, link.ifindex);
    let state_dir = StateDir::new(&network.name).path().to_path_buf();
    let tc = record.tc_attach;
    // The endpoint before the programs: attached first, they would drop
    // the pod's first frames (IPv6 DAD, router solicitations) as from an
    // unknown veth.
    tokio::task::spawn_blocking(move || -> Result<()> {
        Dataplane::open(&name)?.put_endpoint(&entry, &state_dir)?;
        dataplane::attach_all(&name, &veths, hooks, tc)?;
        Ok(())
    })
    .await
    .context("attach task panicked")??;
    Ok(())
}

/// Takes away everything of the endpoint that is still there — its map
/// entries, its links to the programs, its veth pair (and with it the host
/// routes and the interface in the pod's namespace) — and its record. A
/// veth is deleted only if it is the recorded one and carries our mark.
/// Each part is tried even when one before failed (a failure kept the
/// record, so a repeated DEL tries again); the first error is returned.
pub async fn remove(host: &Host, network: &str, record: &Record) -> Result<()> {
    let pins = Pins::new(network);
    let mut first_error = None;
    let mut note = |result: Result<()>| {
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    };
    // Maps of another layout (an upgrade) cannot be read; the load that
    // remakes them fills them from the records, which no longer list this
    // endpoint once its record goes.
    if let (Some(ifindex), true) = (
        record.host_ifindex,
        pins.exist() && dataplane::maps_current(network),
    ) {
        let (name, state_dir) = (
            network.to_string(),
            StateDir::new(network).path().to_path_buf(),
        );
        let (ipv4, ipv6) = (record.ipv4, record.ipv6);
        note(
            tokio::task::spawn_blocking(move || -> Result<()> {
                dataplane::remove_endpoint(&name, ifindex, ipv4, ipv6, &state_dir)
            })
            .await
            .context("map task panicked")
            .and_then(|r| r),
        );
    }
    note(remove_veth(host, network, record).await);
    // Unpinned only now: the device's unregistration detached the programs
    // in one RCU grace period, and a link whose device is gone goes without
    // another (unpinning first cost one grace period per hook, under RTNL,
    // ~9 ms each here: `cargo xtask bench cni`).
    note(pins.remove_links(&record.host_veth));
    match first_error {
        Some(e) => Err(e),
        None => Store::new(network).remove(record),
    }
}

/// Deletes the endpoint's veth pair, if it is the recorded one and ours
/// (see [`is_ours`]).
async fn remove_veth(host: &Host, network: &str, record: &Record) -> Result<()> {
    let link = match record.host_ifindex {
        Some(ifindex) => host.link_by_index(ifindex).await?,
        None => host.link(&record.host_veth).await?,
    };
    if let Some(link) = link.filter(|l| l.name == record.host_veth) {
        if is_ours(host, network, record, &link).await? {
            host.delete_link(link.ifindex, &link.name).await?;
        }
    }
    Ok(())
}

/// Whether `link` (named as `record`'s host side) is the endpoint's: it
/// carries the network's mark, or — unmarked — it is a veth whose peer is
/// the record's interface in the record's namespace. A pair is marked in
/// the `sendmsg` that makes it now, but an ADD of an earlier vethctl
/// killed between making and marking it left one unmarked; the record,
/// written before the pair was made, and the pairing, made in the same
/// request as the pod's interface, prove it ours (without that, DEL and
/// GC dropped the record and left the pair, and every retried ADD failed
/// on it).
async fn is_ours(host: &Host, network: &str, record: &Record, link: &LinkState) -> Result<bool> {
    if host.alias(link.ifindex).await?.as_deref() == Some(link_mark(network).as_str()) {
        return Ok(true);
    }
    Ok(record.host_ifindex.is_none_or(|i| i == link.ifindex)
        && !record.netns.is_empty()
        && host
            .is_pod_peer(link, &record.netns, &record.ifname)
            .await?)
}

/// Whether the endpoint is as its record says: its veth (ours, up), the
/// interface in the pod's namespace with the recorded addresses, its map
/// entries. The error says what differs.
pub async fn check(host: &Host, network: &Topology, record: &Record) -> Result<(), EndpointError> {
    let differs = |what: String| Err(EndpointError::Failed(anyhow::anyhow!(what)));
    let Some(ifindex) = record.host_ifindex else {
        return differs(format!("the ADD of {} never finished", record.key()));
    };
    let Some(link) = host.link_by_index(ifindex).await? else {
        return differs(format!("host interface {:?} is gone", record.host_veth));
    };
    if link.name != record.host_veth || !link.up {
        return differs(format!(
            "host interface {:?} (ifindex {ifindex}) is {} ",
            record.host_veth,
            if link.up { "renamed" } else { "down" }
        ));
    }
    if !netns::exists(&record.netns) {
        return differs(format!("network namespace {} is gone", record.netns));
    }
    let pod = record.pod();
    let wanted: Vec<std::net::IpAddr> = std::iter::once(record.ipv4.into())
        .chain(record.ipv6.map(Into::into))
        .collect();
    let ifname = pod.ifname.clone();
    let found = netns::run_in(&pod.netns, move |handle| async move {
        let Some(link) = crate::netlink::links::by_name(&handle, &ifname).await? else {
            return Ok(None);
        };
        let messages = crate::netlink::addresses::list(&handle, link.ifindex, &ifname).await?;
        Ok(Some(
            messages
                .iter()
                .filter_map(crate::netlink::addresses::address_of)
                .collect::<Vec<_>>(),
        ))
    })
    .await?;
    let Some(found) = found else {
        return differs(format!("{} is missing in {}", pod.ifname, pod.netns));
    };
    if let Some(missing) = wanted.iter().find(|a| !found.contains(a)) {
        return differs(format!("{} in {} lacks {missing}", pod.ifname, pod.netns));
    }
    let mapped = crate::dataplane::health::EndpointMaps::open(&network.name)?
        .and_then(|maps| maps.pod(ifindex).ok().flatten());
    if mapped.is_none_or(|p| p.ipv4() != record.ipv4) {
        return differs(format!(
            "the dataplane maps have no endpoint for {} at ifindex {ifindex}",
            record.ipv4
        ));
    }
    Ok(())
}

/// Wires every endpoint of `network` for its mode again and attaches the
/// mode's programs, each endpoint the way its record says (after `up`
/// changed the network: `mode set`, a new configuration, programs
/// reloaded). Map entries are kept by `up` itself. In the order `up`
/// rewires a topology's pods (see `plan::plan_up`), so the old path works
/// until the new one does: xdp offloads before any XDP attach, bridge
/// ports before pods are readdressed for them, the programs before the
/// pods' wiring, and leaving a bridge last.
///
/// ADDs and DELs run meanwhile (the caller holds only the network's
/// rewire lock, see `state::rewire_lock`): each endpoint's step is taken
/// under its attachment lock, on its record as it is then, and an
/// endpoint deleted (or made again) since the list was taken is left to
/// its DEL (or to its ADD, which wired it for the network as recorded).
pub async fn rewire_all(host: &Host, network: &Topology) -> Result<()> {
    let pods = live_endpoints(host, network).await?;
    if pods.is_empty() {
        return Ok(());
    }
    each(host, network, &pods, |Live { pod, .. }| async move {
        if network.mode == Mode::Xdp {
            pod::set_offloads(pod, true).await?;
        }
        if network.mode == Mode::Bridge {
            join_bridge(host, network, pod).await?;
        }
        Ok(())
    })
    .await?;
    let hooks = Hook::for_mode(network.mode);
    each(host, network, &pods, |Live { pod, tc, .. }| async move {
        let (name, veth) = (network.name.clone(), pod.host_veth.clone());
        let tc = *tc;
        tokio::task::spawn_blocking(move || dataplane::attach_all(&name, &[veth], hooks, tc))
            .await
            .context("attach task panicked")?
    })
    .await?;
    each(host, network, &pods, |Live { pod, .. }| async move {
        wire_pod(host, network, pod, || Ok(()))
            .await
            .map(drop)
            .with_context(|| format!("endpoint {}", pod.name))
    })
    .await?;
    if network.mode == Mode::Bridge {
        let routes = host.routes().await?;
        each(host, network, &pods, |live| {
            remove_host_routes(host, &routes, live.ifindex)
        })
        .await?;
    } else {
        // Off a bridge only now that every endpoint is wired and, in mode
        // tc or xdp, the programs that take the pods' frames before a
        // bridge would are attached.
        each(host, network, &pods, |live| leave_bridge(host, &live.pod)).await?;
    }
    if network.mode != Mode::Xdp {
        // Leaving xdp: offloads back to the veth defaults, only now that
        // XDP is detached (it redirects into pods by their NAPI, which GRO
        // off takes away, and needs their tx checksums done in software).
        each(host, network, &pods, |live| {
            pod::set_offloads(&live.pod, false)
        })
        .await?;
    }
    Ok(())
}

/// An endpoint as [`live_endpoints`] found it.
struct Live {
    pod: Pod,
    tc: TcAttach,
    container_id: String,
    ifname: String,
    ifindex: u32,
}

/// Runs `f` on every endpoint of `pods` still recorded as it was listed,
/// one at a time, each under its attachment lock (an ADD or DEL of it
/// waits; others go on); the first error of an endpoint that is still
/// there. One whose veth or namespace went meanwhile (its pod died, or a
/// DEL was killed half way: the runtime's retry finishes it) has nothing
/// left to rewire; failing on it failed the whole change (`mode set`
/// under `cargo xtask soak`). Each step of [`rewire_all`]
/// ends for every endpoint before the next begins. One at a time: 16 at
/// once held the network's lock 1.7 times shorter (500 endpoints, `cargo
/// xtask bench mode-set`), but one of three long soaks with it lost a
/// datagram between pods after a `mode set bridge`, which is not
/// understood yet; and endpoint work no longer waits for the rewire.
async fn each<'a, F, Fut>(host: &Host, network: &Topology, pods: &'a [Live], f: F) -> Result<()>
where
    F: Fn(&'a Live) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let store = Store::new(&network.name);
    for live in pods {
        let key = super::key(&live.container_id, &live.ifname);
        let _attachment = store.lock(&key)?;
        let now = store.load(&live.container_id, &live.ifname)?;
        if now.and_then(|r| r.host_ifindex) != Some(live.ifindex) {
            continue;
        }
        if let Err(e) = f(live).await {
            if still_there(host, live).await? {
                return Err(e);
            }
            log::info!("endpoint {} went while being rewired: {e:#}", live.pod.name);
        }
    }
    Ok(())
}

/// Whether the endpoint's host veth (by its ifindex) and namespace are
/// still there.
async fn still_there(host: &Host, live: &Live) -> Result<bool> {
    let veth = host.link_by_index(live.ifindex).await?;
    Ok(veth.is_some_and(|l| l.name == live.pod.host_veth) && netns::exists(&live.pod.netns))
}

/// Removes the host routes of ours (among `routes`) over the endpoint's
/// veth `ifindex`, once it is a bridge port and readdressed for the bridge
/// (the host reaches it through the bridge's subnet then), as `up` removes
/// a topology's pods'.
async fn remove_host_routes(host: &Host, routes: &[routes::Route], ifindex: u32) -> Result<()> {
    for route in routes {
        if route.oif == Some(ifindex)
            && route.kind == routes::RouteKind::Unicast
            && route.protocol == routes::PROTOCOL
        {
            host.remove_route(route).await?;
        }
    }
    Ok(())
}

/// The network's endpoints whose veth and namespace are still there, with
/// how their programs are attached. A pod whose namespace (and with it its
/// veth) went before its DEL has nothing left to rewire; failing on it
/// failed the whole `up`.
async fn live_endpoints(host: &Host, network: &Topology) -> Result<Vec<Live>> {
    // One dump, not a lookup per endpoint.
    let links: std::collections::BTreeMap<u32, String> = host
        .links()
        .await?
        .into_iter()
        .map(|l| (l.ifindex, l.name))
        .collect();
    let mut pods = Vec::new();
    for record in Store::new(&network.name).records() {
        let Some(ifindex) = record.host_ifindex else {
            continue;
        };
        let alive = links.get(&ifindex) == Some(&record.host_veth);
        if alive && netns::exists(&record.netns) {
            pods.push(Live {
                pod: record.pod(),
                tc: record.tc_attach,
                ifindex,
                container_id: record.container_id,
                ifname: record.ifname,
            });
        }
    }
    Ok(pods)
}
