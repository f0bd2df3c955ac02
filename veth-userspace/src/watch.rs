//! Keeps the endpoints of every topology in the agent's scope (all, or
//! those of `vethctl agent --network`) true to the veths behind them, for
//! as long as `vethctl agent` runs: a pod whose veth goes down is marked not
//! ready, and one whose veth goes away is forgotten, within milliseconds of
//! the kernel's link event; a periodic pass over all links catches what
//! events miss (a full socket buffer, an agent started late).
//!
//! It never acts on a topology while `up`, `down` or `mode set` holds its
//! lock (they rewrite the maps and the record; acting on half of each would
//! forget live pods): events then wait for the next periodic pass.
//!
//! Without it, the maps change only when `vethctl up` runs: a gone pod's
//! entries stay (inert: the kernel dropped its DEVMAP entry, which every
//! redirect requires), and a pod whose veth or `eth0` is down keeps
//! receiving redirects that the kernel then drops.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    dataplane::{
        health::{EndpointMaps, MappedPod},
        Dataplane,
    },
    endpoint::{wire, Store},
    model::Topology,
    netlink::{
        events::{LinkEvent, LinkEvents},
        links::LinkState,
        Host,
    },
    observe::passes::{self, Pass},
    state::{self, Scope, StateDir},
};

/// How often every endpoint is checked against a fresh link dump.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// What should happen to one mapped pod, given the link at its ifindex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ready or not, as the link says.
    Ready(bool),
    /// Its veth is gone (or its ifindex now belongs to something else).
    Forget,
}

/// Pure: the link at a pod's ifindex still is that pod's veth when it is a
/// veth named as one of the topology's pods whose address the slot holds.
/// (The recorded topology and the maps agree whenever the agent looks: it
/// never acts while `up` rewrites them.)
pub fn judge(topology: &Topology, pod: &MappedPod, link: Option<&LinkState>) -> Verdict {
    let Some(link) = link else {
        return Verdict::Forget;
    };
    let ours = link.is_veth()
        && topology
            .pods
            .iter()
            .any(|p| p.host_veth == link.name && p.ipv4 == pod.ipv4());
    if !ours {
        return Verdict::Forget;
    }
    Verdict::Ready(link.up && link.lower_up)
}

/// Follows link events until the event stream ends (it does not while the
/// agent runs) and reconciles periodically.
pub async fn run(host: Host, scope: Scope) -> Result<()> {
    let mut events = LinkEvents::subscribe()?;
    remap_endpoints(&host, &scope).await;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    // A pass slower than the period is followed by one pass, not a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Pending::default();
    loop {
        if pending.is_empty() {
            tokio::select! {
                event = events.next() => pending.note(event.context(STREAM_ENDED)?),
                _ = tick.tick() => pending.note_everything(),
            }
        }
        let now = std::mem::take(&mut pending);
        let periodic = now.everything();
        let pass = act_on(&host, &scope, &now);
        tokio::pin!(pass);
        // Events keep being read while the pass runs, folded into the
        // next one: the rtnetlink connection queues them without bound,
        // and a node making pods sends them faster than one pass per event
        // can follow (the queue grew the agent by ~49 MB per 1,000 CNI
        // ADD/DEL cycles of `cargo xtask soak`).
        loop {
            tokio::select! {
                () = &mut pass => break,
                event = events.next() => pending.note(event.context(STREAM_ENDED)?),
            }
        }
        if periodic {
            give_back_freed_memory();
        }
    }
}

/// Returns the allocator's free pages to the kernel. glibc keeps what a
/// burst freed (1,000 pods made and gone) in its arenas, so without this
/// the agent's RSS stays at its peak for the rest of its life, and an
/// operator (or `cargo xtask soak`'s RSS target) cannot tell a leak from
/// a past peak. Once per periodic pass: it walks every arena.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

const STREAM_ENDED: &str = "the rtnetlink event stream ended";

/// Link events not acted on yet, folded: any number of them costs one
/// pass and holds at most [`MAX_PENDING_LINKS`] ifindexes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Links whose pods (if any) to look at again.
    links: BTreeSet<u32>,
    /// Every mapped pod to look at again (a periodic pass, namespaces that
    /// came or went, or more links than a full pass costs).
    everything: bool,
}

/// Past this many links, one full pass (a link dump) is cheaper than
/// asking the kernel about each.
pub const MAX_PENDING_LINKS: usize = 64;

impl Pending {
    pub fn note(&mut self, event: LinkEvent) {
        match event {
            // Removed is looked up, not believed: taking a port off a
            // bridge sends an RTM_DELLINK (of family AF_BRIDGE) for a link
            // that stays, and forgetting that pod's endpoint would leave it
            // unmapped until the next `up` (seen when leaving mode bridge:
            // `bench disruption`). A link really gone is not found, and
            // its pod is forgotten.
            LinkEvent::Changed { ifindex } | LinkEvent::Removed { ifindex } => {
                if !self.everything {
                    self.links.insert(ifindex);
                    if self.links.len() > MAX_PENDING_LINKS {
                        self.note_everything();
                    }
                }
            }
            LinkEvent::Namespaces => self.note_everything(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && self.links.is_empty()
    }

    pub fn note_everything(&mut self) {
        self.everything = true;
        self.links.clear();
    }

    /// The links to look at one by one (none when `everything`).
    pub fn links(&self) -> &BTreeSet<u32> {
        &self.links
    }

    pub fn everything(&self) -> bool {
        self.everything
    }
}

async fn act_on(host: &Host, scope: &Scope, pending: &Pending) {
    if pending.everything() {
        reconcile(host, scope).await;
    } else if !pending.links().is_empty() {
        on_links(host, scope, pending.links()).await;
    }
}

/// Runs `f` on every recorded topology of `scope` whose description can
/// be read and that no change holds (see [`unless_changing`]), read under
/// its lock, with its runtime endpoints.
fn each_topology(scope: &Scope, mut f: impl FnMut(&Topology)) {
    for name in scope.recorded().unwrap_or_default() {
        let Some(_lock) = unless_changing(&name) else {
            continue;
        };
        if let Ok(Some(topology)) = StateDir::new(&name).load() {
            f(&crate::endpoint::with_endpoints(topology));
        }
    }
}

/// Topology `name`'s lock, shared, unless a change of it (`up`, `down`,
/// `mode set`) holds it: the agent then leaves its maps alone (they are
/// being rewritten) and the next periodic pass catches up. Endpoint work
/// (CNI ADD and DEL) shares it: readiness updates are per endpoint too.
fn unless_changing(name: &str) -> Option<crate::state::Lock> {
    match state::network_lock(name, state::Hold::Shared, false) {
        Ok(lock) => lock,
        Err(e) => {
            log::error!("vethctl agent: {e:#}");
            None
        }
    }
}

/// Checks the pods (if any) behind `ifindexes` against their links as they
/// are now, not as the events said: events can arrive late. A link that
/// could not be looked up is left for the next pass.
async fn on_links(host: &Host, scope: &Scope, ifindexes: &BTreeSet<u32>) {
    let mut links = BTreeMap::new();
    let mut looked_up = true;
    for &ifindex in ifindexes {
        match host.link_by_index(ifindex).await {
            Ok(link) => {
                links.insert(ifindex, link);
            }
            Err(e) => {
                log::error!("vethctl agent: looking up link {ifindex}: {e:#}");
                looked_up = false;
            }
        }
    }
    let ok = act_on_changes(
        host,
        scope,
        |maps| {
            links
                .keys()
                .filter_map(|&ifindex| maps.pod(ifindex).transpose())
                .collect()
        },
        |ifindex| links.get(&ifindex).and_then(Option::as_ref),
    )
    .await;
    passes::finished(Pass::LinkEvent, looked_up && ok);
}

/// Checks every mapped pod of every topology of `scope` against a fresh
/// link dump.
pub async fn reconcile(host: &Host, scope: &Scope) {
    let ok = match host.links().await {
        Ok(links) => reconcile_with(host, scope, &links).await,
        Err(e) => {
            log::error!("vethctl agent: listing links: {e:#}");
            false
        }
    };
    passes::finished(Pass::Reconcile, ok);
}

/// Checks every mapped pod of every topology against `links`, a link dump
/// taken at some moment before. The dump only points at pods that may need
/// a change: an ADD between the dump and the map read has a veth the dump
/// lacks (its pod was taken for gone and unmapped while it worked), so
/// every change is decided again by [`confirm_and_act`]. `false` if any of
/// it failed.
pub async fn reconcile_with(host: &Host, scope: &Scope, links: &[LinkState]) -> bool {
    let links: BTreeMap<u32, &LinkState> = links.iter().map(|l| (l.ifindex, l)).collect();
    act_on_changes(host, scope, EndpointMaps::pods, |ifindex| {
        links.get(&ifindex).copied()
    })
    .await
}

/// Every pod that `read` picks from a topology's maps and whose verdict,
/// given the link `link_of` says is at its ifindex, would change something,
/// decided again by [`confirm_and_act`]. `false` if any of it failed.
async fn act_on_changes<'a>(
    host: &Host,
    scope: &Scope,
    read: impl Fn(&EndpointMaps) -> Result<Vec<MappedPod>>,
    link_of: impl Fn(u32) -> Option<&'a LinkState>,
) -> bool {
    let mut ok = true;
    let mut changes = Vec::new();
    each_topology(scope, |topology| {
        let pods = EndpointMaps::open(&topology.name)
            .and_then(|maps| maps.map(|m| read(&m)).transpose())
            .map(Option::unwrap_or_default);
        match pods {
            Ok(pods) => changes.extend(
                pods.into_iter()
                    .filter(|pod| {
                        changes_anything(pod, judge(topology, pod, link_of(pod.host_ifindex)))
                    })
                    .map(|pod| (topology.name.clone(), pod)),
            ),
            Err(e) => {
                ok = false;
                log::error!(
                    "vethctl agent: topology {:?}: reading its maps: {e:#}",
                    topology.name
                )
            }
        }
    });
    for (name, pod) in changes {
        ok &= confirm_and_act(host, &name, &pod).await;
    }
    ok
}

/// Maps again every runtime endpoint that its record and its veth say is
/// attached but that has no slot: what an agent before
/// [`confirm_and_act`] unmapped while its ADD ran (every frame of the pod
/// then dropped as `unknown_veth`). Run when the agent starts; `vethctl up`
/// of the network repairs it too.
pub async fn remap_endpoints(host: &Host, scope: &Scope) {
    for name in scope.recorded().unwrap_or_default() {
        if let Err(e) = remap_network(host, &name).await {
            log::error!("vethctl agent: network {name:?}: mapping its endpoints: {e:#}");
        }
    }
}

async fn remap_network(host: &Host, name: &str) -> Result<()> {
    // Exclusive: with no ADD or DEL half done, an endpoint recorded with a
    // veth but no slot is cut off, not being made or taken away.
    let Some(_lock) = state::network_lock(name, state::Hold::Exclusive, true)? else {
        return Ok(());
    };
    let Some(maps) = EndpointMaps::open(name)? else {
        return Ok(());
    };
    let mark = state::link_mark(name);
    for record in Store::new(name).records() {
        let Some(ifindex) = record.host_ifindex else {
            continue;
        };
        if maps.pod(ifindex)?.is_some() {
            continue;
        }
        let ours = match host.link_by_index(ifindex).await? {
            Some(link) if link.name == record.host_veth => {
                host.alias(ifindex).await?.as_deref() == Some(mark.as_str())
            }
            _ => false,
        };
        if !ours {
            continue;
        }
        Dataplane::open(name)?.put_endpoint(
            &wire::entry(&record.pod(), ifindex),
            StateDir::new(name).path(),
        )?;
        log::warn!(
            "vethctl agent: network {name:?}: endpoint {} (ifindex {ifindex}) had no map \
             entries; mapped again",
            record.key()
        );
    }
    Ok(())
}

/// Whether `verdict` would change what the maps hold of `pod`.
fn changes_anything(pod: &MappedPod, verdict: Verdict) -> bool {
    match verdict {
        Verdict::Forget => true,
        Verdict::Ready(ready) => (pod.identity.ready != 0) != ready,
    }
}

/// Acts on `pod` (as read from topology `name`'s maps) only on a view newer
/// than its map entry: the kernel asked about its one ifindex now, then the
/// topology and its endpoint records read again, then its entry read again
/// and found unchanged. An ADD writes record, veth and entry in that order,
/// each before the next, so an entry read before the kernel was asked had
/// its veth made before too: a veth not found now is gone, not yet to come.
/// `false` if it failed.
async fn confirm_and_act(host: &Host, name: &str, pod: &MappedPod) -> bool {
    // The agent's socket is in the namespace the agent runs in, the node's,
    // where every network's host-side veths are.
    let link = match host.link_by_index(pod.host_ifindex).await {
        Ok(link) => link,
        Err(e) => {
            log::error!("vethctl agent: looking up link {}: {e:#}", pod.host_ifindex);
            return false;
        }
    };
    let Some(_lock) = unless_changing(name) else {
        return true;
    };
    let result = (|| -> Result<()> {
        let Some(topology) = StateDir::new(name).load()? else {
            return Ok(());
        };
        let topology = crate::endpoint::with_endpoints(topology);
        let Some(mut maps) = EndpointMaps::open(name)? else {
            return Ok(());
        };
        // Rewritten since (a new ADD of the veth, a DEL): the next pass
        // judges it afresh.
        if maps.pod(pod.host_ifindex)?.as_ref() != Some(pod) {
            return Ok(());
        }
        act(name, &mut maps, pod, judge(&topology, pod, link.as_ref()))
    })();
    if let Err(e) = &result {
        log::error!(
            "vethctl agent: topology {name:?}, link {}: {e:#}",
            pod.host_ifindex
        );
    }
    result.is_ok()
}

fn act(topology: &str, maps: &mut EndpointMaps, pod: &MappedPod, verdict: Verdict) -> Result<()> {
    match verdict {
        Verdict::Ready(ready) => {
            if maps.set_ready(pod, ready)? {
                log::info!(
                    "vethctl agent: topology {topology:?}: pod {} (ifindex {}) is {}",
                    pod.ipv4(),
                    pod.host_ifindex,
                    if ready {
                        "ready"
                    } else {
                        "down: frames for it go to the host stack"
                    }
                );
            }
        }
        Verdict::Forget => {
            maps.forget(pod)?;
            log::info!(
                "vethctl agent: topology {topology:?}: pod {} lost its veth (ifindex {}); \
                 endpoint removed",
                pod.ipv4(),
                pod.host_ifindex
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veth_common::PodIdentity;

    fn topology() -> Topology {
        Topology::from_toml(
            "name = \"t\"\npod_cidr = \"10.1.0.0/24\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n",
        )
        .unwrap()
    }

    fn veth(name: &str, up: bool, lower_up: bool) -> LinkState {
        LinkState {
            up,
            lower_up,
            ..LinkState::for_test(name, 7, "veth")
        }
    }

    #[test]
    fn pods_are_judged_by_their_veth() {
        let t = topology();
        let b = t.pod("b").unwrap();
        let pod = MappedPod {
            host_ifindex: 7,
            slot: 1,
            identity: PodIdentity {
                ipv4: b.ipv4.octets(),
                host_ifindex: 7,
                ready: 1,
                ..PodIdentity::default()
            },
        };
        let name = b.host_veth.as_str();
        assert_eq!(judge(&t, &pod, None), Verdict::Forget, "gone");
        assert_eq!(
            judge(&t, &pod, Some(&veth(name, true, true))),
            Verdict::Ready(true)
        );
        assert_eq!(
            judge(&t, &pod, Some(&veth(name, true, false))),
            Verdict::Ready(false),
            "the pod's eth0 is down"
        );
        assert_eq!(
            judge(&t, &pod, Some(&veth(name, false, false))),
            Verdict::Ready(false)
        );
        let a = t.pod("a").unwrap().host_veth.as_str();
        assert_eq!(
            judge(&t, &pod, Some(&veth(a, true, true))),
            Verdict::Forget,
            "another pod's veth name at the old ifindex"
        );
        assert_eq!(
            judge(&t, &pod, Some(&veth("intruder0", true, true))),
            Verdict::Forget,
            "an unrelated veth reusing the ifindex"
        );
        assert!(changes_anything(&pod, Verdict::Forget));
        assert!(
            !changes_anything(&pod, Verdict::Ready(true)),
            "ready already"
        );
        assert!(changes_anything(&pod, Verdict::Ready(false)));
        let mut dummy = veth(name, true, true);
        dummy.kind = Some("dummy".into());
        assert_eq!(judge(&t, &pod, Some(&dummy)), Verdict::Forget);
    }

    #[test]
    fn a_storm_of_link_events_folds_into_one_bounded_pass() {
        let mut pending = Pending::default();
        for ifindex in [7, 9, 7, 7] {
            pending.note(LinkEvent::Changed { ifindex });
        }
        pending.note(LinkEvent::Removed { ifindex: 9 });
        assert_eq!(pending.links().iter().copied().collect::<Vec<_>>(), [7, 9]);
        assert!(!pending.everything());
        // Every pod's veth changing many times: one full pass, no list.
        for round in 0..100 {
            for ifindex in 0..1_000 {
                pending.note(if round % 2 == 0 {
                    LinkEvent::Changed { ifindex }
                } else {
                    LinkEvent::Removed { ifindex }
                });
                assert!(pending.links().len() <= MAX_PENDING_LINKS);
            }
        }
        assert!(pending.everything());
        assert!(pending.links().is_empty());
        let mut namespaces = Pending::default();
        namespaces.note(LinkEvent::Changed { ifindex: 3 });
        namespaces.note(LinkEvent::Namespaces);
        namespaces.note(LinkEvent::Changed { ifindex: 4 });
        assert!(namespaces.everything() && namespaces.links().is_empty());
    }
}
