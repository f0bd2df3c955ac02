//! Executes plans: observes the kernel, plans, and runs each step through
//! [`netlink`](crate::netlink) and [`dataplane`](crate::dataplane).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Mutex,
};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

use crate::{
    applied::{masquerade_fingerprint, pod_fingerprint, Applied, AppliedPod},
    dataplane::{self, Dataplane, Hook, Pins},
    endpoint::{self, wire},
    model::{host_address_label, Mode, TcAttach, Topology},
    netlink::{
        links::{LinkState, MarkedLink},
        nat, netns, pair, pod,
        routes::{self, Route, RouteKind},
        sysctl, Host,
    },
    plan::{
        node_addresses, plan_down, plan_up, ForeignLink, Observed, PresentAddress, Refusal, Step,
    },
    state::{self, link_mark, Ledger, LedgerAddress, LedgerLink, StateDir},
};

/// Testing hook: abort the process after this many steps, to leave the
/// kernel exactly as a crash in the middle of `up` would.
pub const CRASH_AFTER_STEPS_ENV: &str = "VETHCTL_CRASH_AFTER_STEPS";

/// What the kernel has of topology `name`: its own objects as `ledger`
/// records them (where the kernel lets them carry a mark, marked too), and
/// others' objects standing where `desired` wants to put its own.
/// `recorded` is the description it was last brought up with; `applied` is
/// what the last `up` finished.
pub async fn observe(
    host: &Host,
    name: &str,
    ledger: &Ledger,
    recorded: Option<&Topology>,
    desired: Option<&Topology>,
    applied: Applied,
) -> Result<Observed> {
    let (netns, dead_netns) = observe_netns(ledger);
    let all = host.marked_links().await?;
    let marked = MarkedLinks::new(&all);
    let mut unproven = Vec::new();
    let links = claim_links(host, name, ledger, &marked, &mut unproven).await?;
    let foreign_links = foreign_links(desired, &marked, &links);
    let addresses =
        observe_addresses(host, name, ledger, desired, &marked, &links, &mut unproven).await?;
    let (routes, unreachable, foreign_routes) =
        observe_routes(host, ledger, desired, &marked, &links, &addresses).await?;
    let direct_pair = direct_pair_exists(recorded, desired, &netns).await?;
    let netns_inodes = netns
        .iter()
        .filter_map(|n| Some((n.clone(), netns::inode(n)?)))
        .collect();
    let (programs_current, linked) = observe_programs(name, desired, &applied);
    let masquerade_table = if desired.is_some() || ledger.nat_table {
        nat::table_exists(name)?
    } else {
        false
    };
    Ok(Observed {
        netns,
        dead_netns,
        links,
        foreign_links,
        addresses,
        unreachable,
        routes,
        foreign_routes,
        direct_pair,
        netns_inodes,
        applied,
        programs_current,
        linked,
        masquerade_table,
        masquerade_owned: ledger.nat_table,
        pins: ledger.pins,
        unproven,
        rewire_endpoints: false,
        cross_node: crate::crossnode::recorded(name)?,
    })
}

/// The ledger's namespaces that exist, and those whose mount point is left
/// without a namespace (a crash between the two).
fn observe_netns(ledger: &Ledger) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut netns = BTreeSet::new();
    let mut dead_netns = BTreeSet::new();
    for n in &ledger.netns {
        if netns::exists(n) {
            netns.insert(n.clone());
        } else if netns::path(n).exists() {
            dead_netns.insert(n.clone());
        }
    }
    (netns, dead_netns)
}

/// The host's links with their marks, looked up by ifindex and by name.
struct MarkedLinks<'a> {
    by_index: BTreeMap<u32, &'a MarkedLink>,
    by_name: BTreeMap<&'a str, &'a MarkedLink>,
}

impl<'a> MarkedLinks<'a> {
    fn new(all: &'a [MarkedLink]) -> Self {
        Self {
            by_index: all.iter().map(|m| (m.link.ifindex, m)).collect(),
            by_name: all.iter().map(|m| (m.link.name.as_str(), m)).collect(),
        }
    }
}

/// The ledger's links that the kernel proves ours, by recorded name; those
/// it cannot prove go to `unproven`.
async fn claim_links(
    host: &Host,
    name: &str,
    ledger: &Ledger,
    marked: &MarkedLinks<'_>,
    unproven: &mut Vec<String>,
) -> Result<BTreeMap<String, LinkState>> {
    let mark = link_mark(name);
    let mut links = BTreeMap::new();
    let mut claimed = BTreeSet::new();
    let mut to_prove = Vec::new();
    for (recorded_name, entry) in &ledger.links {
        let kind_matches = |m: &&&MarkedLink| m.link.kind.as_deref() == Some(entry.kind.as_str());
        // Made and confirmed: the ifindex proves it, whatever its name now.
        if let Some(m) = entry
            .ifindex
            .and_then(|i| marked.by_index.get(&i))
            .filter(kind_matches)
            .filter(|m| !claimed.contains(&m.link.ifindex))
        {
            claimed.insert(m.link.ifindex);
            links.insert(recorded_name.clone(), m.link.clone());
            continue;
        }
        // Recorded before it was made (a crashed `up`): only with our mark.
        let Some(m) = marked
            .by_name
            .get(recorded_name.as_str())
            .filter(kind_matches)
            .filter(|m| !claimed.contains(&m.link.ifindex))
        else {
            continue;
        };
        let has_mark = m.alias.as_deref() == Some(mark.as_str())
            || (m.alias.is_none() && entry.mac.is_some_and(|mac| m.link.mac == mac));
        if has_mark {
            claimed.insert(m.link.ifindex);
            links.insert(recorded_name.clone(), m.link.clone());
        } else if m.alias.is_none() && m.link.is_veth() && ledger.netns.contains(recorded_name) {
            to_prove.push((recorded_name.clone(), m.link.clone()));
        } else {
            unproven.push(format!("link {recorded_name}"));
        }
    }
    // A veth made in the same request as the pod's eth0, whose alias a
    // crash kept from being set, is the peer of that eth0.
    for (recorded_name, link) in to_prove {
        if host
            .is_pod_peer(&link, &recorded_name, crate::model::POD_IFNAME)
            .await?
        {
            links.insert(recorded_name, link);
        } else {
            unproven.push(format!("link {recorded_name}"));
        }
    }
    Ok(links)
}

/// Others' links standing where `desired` wants a host veth or its bridge.
fn foreign_links(
    desired: Option<&Topology>,
    marked: &MarkedLinks<'_>,
    links: &BTreeMap<String, LinkState>,
) -> BTreeMap<String, ForeignLink> {
    let claimed: BTreeSet<u32> = links.values().map(|l| l.ifindex).collect();
    let mut foreign_links = BTreeMap::new();
    if let Some(t) = desired {
        for wanted in t.pods.iter().map(|p| &p.host_veth).chain([&t.bridge]) {
            if let Some(m) = marked.by_name.get(wanted.as_str()) {
                if !claimed.contains(&m.link.ifindex) {
                    foreign_links.insert(
                        wanted.clone(),
                        ForeignLink {
                            link: m.link.clone(),
                            alias: m.alias.clone(),
                        },
                    );
                }
            }
        }
    }
    foreign_links
}

/// Addresses: the ledger's that exist (an IPv4 one on lo with our label)
/// and the wanted ones that exist (someone else's unless recorded).
async fn observe_addresses(
    host: &Host,
    name: &str,
    ledger: &Ledger,
    desired: Option<&Topology>,
    marked: &MarkedLinks<'_>,
    links: &BTreeMap<String, LinkState>,
    unproven: &mut Vec<String>,
) -> Result<BTreeMap<LedgerAddress, PresentAddress>> {
    let label = host_address_label(name);
    let host_addresses = host.addresses().await?;
    let ifindex_of = |device: &str| -> Option<u32> {
        links
            .get(device)
            .map(|l: &LinkState| l.ifindex)
            .or_else(|| marked.by_name.get(device).map(|m| m.link.ifindex))
    };
    let find = |a: &LedgerAddress| -> Option<(u32, &crate::netlink::host::HostAddress)> {
        let ifindex = ifindex_of(&a.device)?;
        host_addresses
            .iter()
            .find(|h| {
                h.ifindex == ifindex
                    && h.address == a.address
                    // An IPv6 address is one per link, whatever its prefix.
                    && (a.address.is_ipv6() || h.prefix_len == a.prefix_len)
            })
            .map(|h| (ifindex, h))
    };
    let mut addresses = BTreeMap::new();
    for a in &ledger.addresses {
        if let Some((ifindex, h)) = find(a) {
            let has_mark = !(a.device == "lo" && a.address.is_ipv4())
                || h.label.as_deref() == Some(label.as_str());
            if has_mark {
                addresses.insert(
                    a.clone(),
                    PresentAddress {
                        ours: true,
                        ifindex,
                    },
                );
            } else {
                unproven.push(format!("address {a}"));
            }
        }
    }
    for a in desired.map(node_addresses).unwrap_or_default() {
        if let (std::collections::btree_map::Entry::Vacant(slot), Some((ifindex, _))) =
            (addresses.entry(a.clone()), find(&a))
        {
            slot.insert(PresentAddress {
                ours: false,
                ifindex,
            });
        }
    }
    Ok(addresses)
}

/// Routes found by [`observe_routes`]: ours by link, our unreachable
/// ranges, and others' routes to a pod's address with their device.
type ObservedRoutes = (
    BTreeMap<String, Vec<Route>>,
    BTreeSet<IpNet>,
    Vec<(Route, String)>,
);

/// Routes: ours over our links, our unreachable ranges, and others'
/// routes to a pod's address.
async fn observe_routes(
    host: &Host,
    ledger: &Ledger,
    desired: Option<&Topology>,
    marked: &MarkedLinks<'_>,
    links: &BTreeMap<String, LinkState>,
    addresses: &BTreeMap<LedgerAddress, PresentAddress>,
) -> Result<ObservedRoutes> {
    let our_ifindexes: BTreeMap<u32, &String> =
        links.iter().map(|(name, l)| (l.ifindex, name)).collect();
    let pod_addresses = pod_addresses(desired);
    // The kernel's own routes of addresses of ours (an IPv6 /128 on lo has
    // one in the main table) are not someone else's.
    let our_addresses: BTreeSet<IpNet> = addresses
        .iter()
        .filter(|(_, p)| p.ours)
        .map(|(a, _)| IpNet::from(a.address))
        .collect();
    let mut routes: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    let mut unreachable = BTreeSet::new();
    let mut foreign_routes = Vec::new();
    for route in host.routes().await? {
        let over_ours = route.oif.and_then(|i| our_ifindexes.get(&i));
        let our_protocol = route.protocol == routes::PROTOCOL;
        match over_ours {
            Some(link)
                if route.kind == RouteKind::Unicast
                    && (our_protocol || route.protocol == routes::LEGACY_PROTOCOL) =>
            {
                routes.entry((*link).clone()).or_default().push(route);
            }
            _ if route.kind == RouteKind::Unreachable
                && our_protocol
                && route.metric == Some(routes::UNREACHABLE_METRIC)
                && ledger.unreachable.contains(&route.dst) =>
            {
                unreachable.insert(route.dst);
            }
            None if pod_addresses.contains(&route.dst)
                && !(route.protocol == routes::KERNEL_PROTOCOL
                    && our_addresses.contains(&route.dst)) =>
            {
                let dev = route
                    .oif
                    .and_then(|i| marked.by_index.get(&i))
                    .map_or_else(|| "-".to_string(), |m| m.link.name.clone());
                foreign_routes.push((route, dev));
            }
            _ => {}
        }
    }
    Ok((routes, unreachable, foreign_routes))
}

/// Every pod address of `desired`, IPv4 and IPv6, as host routes.
fn pod_addresses(desired: Option<&Topology>) -> BTreeSet<IpNet> {
    desired
        .map(|t| {
            t.pods
                .iter()
                .flat_map(|p| {
                    std::iter::once(IpNet::from(IpAddr::V4(p.ipv4)))
                        .chain(p.ipv6.map(|v6| IpNet::from(IpAddr::V6(v6))))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Only a two-pod topology can have (had) a direct pair.
async fn direct_pair_exists(
    recorded: Option<&Topology>,
    desired: Option<&Topology>,
    netns: &BTreeSet<String>,
) -> Result<bool> {
    match [recorded, desired]
        .into_iter()
        .flatten()
        .find(|t| t.pods.len() == 2)
    {
        Some(t) if netns.contains(&t.pods[0].netns) => pair::exists(&t.pods[0]).await,
        _ => Ok(false),
    }
}

/// Whether the pinned programs are the ones `desired` needs, and the host
/// veths that have all of the mode's program links pinned.
fn observe_programs(
    name: &str,
    desired: Option<&Topology>,
    applied: &Applied,
) -> (bool, BTreeSet<String>) {
    let pins = Pins::new(name);
    // A map pinned with another layout (an upgrade) is made afresh by a
    // load, which plain `up` then does as `up --repair` would.
    let programs_current = desired.is_some_and(|t| {
        pins.programs_exist()
            && applied.programs.as_deref() == Some(&programs_digest(t))
            && dataplane::maps_current(name)
    });
    let linked = match desired {
        Some(t) => {
            let hooks = Hook::for_mode(t.mode);
            t.pods
                .iter()
                .filter(|p| hooks.iter().all(|&h| pins.link(&p.host_veth, h).exists()))
                .map(|p| p.host_veth.clone())
                .collect()
        }
        None => BTreeSet::new(),
    };
    (programs_current, linked)
}

/// The ledger of topology `name`: its own, or, for a topology brought up
/// by a vethctl without ledgers, what its recorded description says that
/// vethctl made (each still subject to the marks and proofs of
/// [`observe`]; an IPv6 node address, which it may have found on lo, is
/// not claimed).
pub fn ledger_of(name: &str, recorded: Option<&Topology>) -> Result<Ledger> {
    let state = StateDir::new(name);
    if let Some(ledger) = Ledger::load(&state)? {
        return Ok(ledger);
    }
    let Some(t) = recorded else {
        return Ok(Ledger::default());
    };
    let mut ledger = Ledger {
        nat_table: true,
        pins: true,
        ..Ledger::default()
    };
    for pod in &t.pods {
        ledger.netns.insert(pod.netns.clone());
        ledger.links.insert(
            pod.host_veth.clone(),
            LedgerLink {
                kind: "veth".into(),
                ifindex: None,
                mac: None,
            },
        );
    }
    ledger.addresses.insert(LedgerAddress {
        device: "lo".into(),
        address: IpAddr::V4(t.host_address),
        prefix_len: 32,
    });
    if t.mode == Mode::Bridge && t.bridge.starts_with(&t.object_prefix()) {
        ledger.links.insert(
            t.bridge.clone(),
            LedgerLink {
                kind: "bridge".into(),
                ifindex: None,
                mac: Some(t.bridge_mac()),
            },
        );
        ledger.addresses.extend(node_addresses(t));
    }
    Ok(ledger)
}

fn programs_digest(topology: &Topology) -> String {
    dataplane::programs_digest(topology.counters, topology.mode == Mode::Tc)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct UpOptions {
    /// Wire every pod again and reload the programs, ignoring the record of
    /// what the last `up` did.
    pub repair: bool,
    /// Print how long each phase and step took (stderr).
    pub timings: bool,
}

/// `up --timings`: the time since the previous mark, on stderr.
struct Timings {
    on: bool,
    last: Mutex<std::time::Instant>,
}

impl Timings {
    fn new(on: bool) -> Timings {
        let last = std::time::Instant::now();
        if on {
            // Where the marks start on the system's monotonic clock, so that
            // a tool watching traffic (`bench disruption`) can line steps up
            // with what it saw.
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| format!("{}.{:09} s", t.tv_sec(), t.tv_nsec()))
                .unwrap_or_else(|_| "unknown".into());
            eprintln!("{:>9.2} ms  start (CLOCK_MONOTONIC {now})", 0.0);
        }
        Timings {
            on,
            last: Mutex::new(last),
        }
    }

    fn mark(&self, what: impl std::fmt::Display) {
        if self.on {
            let mut last = self.last.lock().expect("timings lock");
            let now = std::time::Instant::now();
            eprintln!(
                "{:>9.2} ms  {what}",
                now.duration_since(*last).as_secs_f64() * 1e3
            );
            *last = now;
        }
    }
}

/// Converges the kernel to `topology`. `source` is the description's text,
/// recorded for `status`, `stats` and `down`. Pods the last `up` wired as
/// wanted are left alone, unless `options.repair` asks to wire every pod
/// again (which also puts right what was changed inside a pod's namespace).
pub async fn up(topology: &Topology, source: &str, options: UpOptions) -> Result<Vec<Step>> {
    let timings = Timings::new(options.timings);
    let locks = state::change_lock_marked(&topology.name, |what| timings.mark(what))?;
    Ok(up_locked(topology, source, options, timings, locks)
        .await?
        .1)
}

/// [`up`] by the holder of the network's `rewire` lock (see
/// [`state::change_lock_with`]).
pub async fn up_with_rewire_lock(
    topology: &Topology,
    source: &str,
    options: UpOptions,
    rewire: state::Lock,
) -> Result<Vec<Step>> {
    let timings = Timings::new(options.timings);
    let locks = state::change_lock_with(&topology.name, rewire)?;
    timings.mark("wait for the node-wide and the network's lock");
    Ok(up_locked(topology, source, options, timings, locks)
        .await?
        .1)
}

/// Like [`up`], for a description derived from the one recorded for topology
/// `name` (`None` if it is not up), read under the same lock as the change
/// is made: nothing another command records meanwhile is lost (`vethctl
/// mode set`). Returns the derived topology and the steps.
pub async fn up_from_record<F>(
    name: &str,
    derive: F,
    options: UpOptions,
) -> Result<(Topology, Vec<Step>)>
where
    F: FnOnce(Option<String>) -> Result<(Topology, String)>,
{
    let timings = Timings::new(options.timings);
    let locks = state::change_lock_marked(name, |what| timings.mark(what))?;
    let (topology, source) = derive(StateDir::new(name).load_text()?)?;
    if topology.name != name {
        bail!(
            "the description derived for topology {name:?} names topology {:?}",
            topology.name
        );
    }
    up_locked(&topology, &source, options, timings, locks).await
}

/// Brings node `node`'s part of the cluster file `cluster` up: `vethctl
/// up -t CLUSTER --cluster-node NODE` on that node, and the agent of a
/// cluster kept in etcd whenever the live nodes change. Returns the part
/// as brought up.
pub async fn up_cluster_node(cluster: &str, node: &str, options: UpOptions) -> Result<Topology> {
    let (topology, text) = crate::model::cluster::Cluster::node_part_of(cluster, node)?;
    let topology = keeping_recorded(&topology, &text)?;
    // Everything that can be refused is, before anything is made.
    crate::preflight::check(&Host::connect()?, &topology).await?;
    up(&topology, &text, options).await?;
    Ok(topology)
}

/// `topology` (described by `source`) with each recorded pod keeping the
/// addresses it was given, so that no pod moves when others come or go.
pub fn keeping_recorded(topology: &Topology, source: &str) -> Result<Topology> {
    let previous = StateDir::new(&topology.name).load_addresses()?;
    if previous.is_empty() {
        return Ok(topology.clone());
    }
    Ok(Topology::from_toml_keeping(source, &previous)?)
}

/// Returns the topology as converged to (addresses decided under the lock)
/// and the steps taken. `locks` (see [`state::change_lock`]) are held to
/// the end, but for a rewire of the runtime's endpoints, which runs with
/// the rewire lock alone (see [`rewire_endpoints`]).
async fn up_locked(
    topology: &Topology,
    source: &str,
    options: UpOptions,
    timings: Timings,
    locks: (state::Lock, state::Lock),
) -> Result<(Topology, Vec<Step>)> {
    let topology = &keeping_recorded(topology, source)?;
    let recorded_mode = StateDir::new(&topology.name)
        .load()
        .ok()
        .flatten()
        .map(|t| t.mode);
    refuse_address_clashes(topology)?;
    refuse_endpoint_clashes(topology, &endpoint::Store::new(&topology.name).records())?;
    refuse_shared_bridge(topology)?;
    let host = Host::connect()?;
    let (mut observed, ledger) = observe_for(&host, topology, options.repair).await?;
    // A runtime's endpoints follow the network's mode too, and run the
    // programs loaded (their links and filters still hold the old ones,
    // and those the old maps if the layout changed).
    observed.rewire_endpoints = !endpoint::Store::new(&topology.name).records().is_empty()
        && (options.repair
            || !observed.programs_current
            || StateDir::new(&topology.name).rewire_owed()
            || recorded_mode.is_some_and(|m| m != topology.mode));
    timings.mark("observe the kernel");
    let steps = plan_up(topology, &observed)?;
    warn_unproven(&topology.name, &observed);
    let state = StateDir::new(&topology.name);
    // The ledger first (with every object the steps may make), then the
    // description: nothing is made before both are saved.
    let ledger = with_objects_to_make(ledger, topology, &steps);
    ledger.save(&state)?;
    if steps.contains(&Step::RewireEndpoints) {
        // Onto or off a bridge, also when an earlier rewire that did was
        // abandoned half way: ADDs wait for such a rewire (see
        // `cni::Standing::AcrossBridge`).
        let across_bridge = state.rewire_across_bridge()
            || recorded_mode == Some(Mode::Bridge)
            || topology.mode == Mode::Bridge;
        state.owe_rewire(across_bridge)?;
    }
    state.save(source)?;
    state.save_addresses(&topology.assigned())?;
    let executor = Executor::new(
        host,
        &topology.name,
        forget_redone(&observed.applied, &steps),
        ledger,
        timings,
    );
    *executor.veths.lock().expect("veths lock") = observed
        .links
        .values()
        .filter(|l| l.is_veth())
        .map(|l| (l.name.clone(), l.ifindex))
        .collect();
    executor.save_applied()?;
    executor.timings.mark("plan and save state");
    // A rewire of the runtime's endpoints runs between the steps before it
    // and those after it (leaving a bridge: the bridge goes only once no
    // endpoint is its port), with the rewire lock alone.
    let rewire_at = steps.iter().position(|s| *s == Step::RewireEndpoints);
    let (head, tail) = steps.split_at(rewire_at.map_or(steps.len(), |at| at + 1));
    executor.run(Some(topology), head, 0).await?;
    let _locks = match rewire_at {
        Some(_) => {
            let relock = !tail.is_empty();
            rewire_endpoints(&executor.host, topology, locks, &executor.timings, relock).await?
        }
        None => vec![locks.0, locks.1],
    };
    executor.run(Some(topology), tail, head.len()).await?;
    executor.record_applied(topology).await?;
    executor.confirm_links(&observed).await?;
    executor.timings.mark("record what was applied");
    Ok((topology.clone(), steps))
}

/// The runtime's endpoints rewired for `topology` (the plan's step
/// `RewireEndpoints`), holding only the network's rewire lock of `locks`:
/// ADDs and DELs go on meanwhile, each wiring its endpoint for the
/// network as now recorded, while the next change of the network waits
/// (see [`state::rewire_lock`]). Killed before the end, the rewire stays
/// owed, and the next change or ADD does it. Returns the locks to finish
/// with: the change's, taken again if steps after the rewire (`relock`)
/// change the network itself, or else the rewire lock alone (what is left
/// to record, the applied record and the ledger, endpoint work never
/// writes), so that ADDs do not wait for the change twice.
async fn rewire_endpoints(
    host: &Host,
    topology: &Topology,
    locks: (state::Lock, state::Lock),
    timings: &Timings,
    relock: bool,
) -> Result<Vec<state::Lock>> {
    let (global, network) = locks;
    drop(global);
    let rewire = network
        .keep_rewire()
        .context("a change's lock without its rewire lock")?;
    timings.mark("let endpoint work go on");
    wire::rewire_all(host, topology)
        .await
        .with_context(|| format!("topology {:?}: {}", topology.name, Step::RewireEndpoints))?;
    StateDir::new(&topology.name).rewire_done()?;
    timings.mark(Step::RewireEndpoints);
    if !relock {
        return Ok(vec![rewire]);
    }
    let (global, network) = state::change_lock_with(&topology.name, rewire)?;
    timings.mark("wait for the network's lock again");
    Ok(vec![global, network])
}

/// `ledger` with an entry for every object `steps` may make, written
/// before the first of them is made.
fn with_objects_to_make(mut ledger: Ledger, topology: &Topology, steps: &[Step]) -> Ledger {
    for step in steps {
        match step {
            Step::CreateNetns { netns } => {
                ledger.netns.insert(netns.clone());
            }
            Step::CreateVeth { host_veth, .. } => {
                ledger
                    .links
                    .entry(host_veth.clone())
                    .or_insert_with(|| LedgerLink {
                        kind: "veth".into(),
                        ifindex: None,
                        mac: None,
                    });
            }
            Step::CreateBridge { name } => {
                ledger
                    .links
                    .entry(name.clone())
                    .or_insert_with(|| LedgerLink {
                        kind: "bridge".into(),
                        ifindex: None,
                        mac: Some(topology.bridge_mac()),
                    });
            }
            Step::AddAddress { address } => {
                ledger.addresses.insert(address.clone());
            }
            Step::AddUnreachable { net } => {
                ledger.unreachable.insert(*net);
            }
            Step::ConfigureMasquerade if topology.uplink.masquerade => ledger.nat_table = true,
            Step::LoadPrograms => ledger.pins = true,
            _ => {}
        }
    }
    ledger
}

/// Names, on stderr, recorded objects vethctl leaves alone because they do
/// not carry its mark.
fn warn_unproven(name: &str, observed: &Observed) {
    if let Ok(None) = Ledger::load(&StateDir::new(name)) {
        if let Some(v6) = StateDir::new(name)
            .load()
            .ok()
            .flatten()
            .and_then(|t| t.host_address6)
        {
            eprintln!(
                "vethctl: topology {name:?} was brought up by a vethctl that kept no ledger, \
                 which does not tell whether it made the IPv6 node address {v6} on lo or \
                 found it there: it is left alone; remove it by hand if it is this topology's"
            );
        }
    }
    for what in &observed.unproven {
        eprintln!(
            "vethctl: topology {name:?}: {what} is recorded but does not carry vethctl's mark, \
             so it is left alone; remove it by hand if it is a leftover of this topology"
        );
    }
}

/// The record minus what `steps` redo: saved before they start, so a crash
/// in the middle leaves nothing recorded as done that may be half-done.
fn forget_redone(applied: &Applied, steps: &[Step]) -> Applied {
    let mut kept = applied.clone();
    for step in steps {
        match step {
            Step::ConfigurePod { pod } => {
                kept.pods.remove(pod);
            }
            Step::AttachPrograms { pods } => {
                for pod in pods {
                    kept.pods.remove(pod);
                }
            }
            Step::LoadPrograms => kept.programs = None,
            Step::ConfigureMasquerade => kept.masquerade = None,
            _ => {}
        }
    }
    kept
}

/// Refuses a topology whose addresses overlap another topology that is up,
/// before anything is made.
fn refuse_address_clashes(topology: &Topology) -> Result<()> {
    for name in state::recorded_topologies()? {
        if name == topology.name {
            continue;
        }
        if let Ok(Some(other)) = StateDir::new(&name).load() {
            if let Some(clash) = topology.address_clash(&other) {
                return Err(clash.into());
            }
        }
    }
    Ok(())
}

/// Refuses a file pod an address a runtime's endpoint of the network has
/// (a cluster node's part takes CNI pods beside its file's, and a pod
/// added to the file later is assigned without the runtime's ledger): two
/// pods with one address take each other's traffic.
fn refuse_endpoint_clashes(topology: &Topology, records: &[endpoint::Record]) -> Result<()> {
    for (i, pod) in topology.pods.iter().enumerate() {
        let ours = [Some(IpAddr::V4(pod.ipv4)), pod.ipv6.map(IpAddr::V6)];
        for record in records {
            let theirs = [Some(IpAddr::V4(record.ipv4)), record.ipv6.map(IpAddr::V6)];
            if let Some(ip) = ours
                .iter()
                .flatten()
                .find(|ip| theirs.contains(&Some(**ip)))
            {
                return Err(crate::model::ModelError {
                    field: format!("pods[{i}]"),
                    message: format!(
                        "pod {:?} would get {ip}, which the runtime's pod {} already has; give \
                         it a free address (ipv4/ipv6) or remove that pod through its runtime \
                         first",
                        pod.name,
                        record.key()
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Refuses, in mode bridge, a bridge another topology that is up uses or
/// made: two topologies cannot share a bridge.
fn refuse_shared_bridge(topology: &Topology) -> Result<()> {
    if topology.mode != Mode::Bridge {
        return Ok(());
    }
    for name in state::recorded_topologies()? {
        if name == topology.name {
            continue;
        }
        let dir = StateDir::new(&name);
        let uses = dir
            .load()
            .ok()
            .flatten()
            .is_some_and(|t| t.mode == Mode::Bridge && t.bridge == topology.bridge);
        let made = Ledger::load(&dir)
            .ok()
            .flatten()
            .is_some_and(|l| l.links.contains_key(&topology.bridge));
        if uses || made {
            return Err(Refusal(format!(
                "bridge: {:?} is the bridge of topology {name:?}, which is up; two topologies \
                 cannot share a bridge: name another one (or bring {name:?} down)",
                topology.bridge
            ))
            .into());
        }
    }
    Ok(())
}

/// What `up` would do, without doing it.
pub async fn plan(topology: &Topology) -> Result<Vec<Step>> {
    refuse_shared_bridge(topology)?;
    let host = Host::connect()?;
    let (observed, _) = observe_for(&host, topology, false).await?;
    Ok(plan_up(topology, &observed)?)
}

/// What the kernel has of `topology`, with what the last `up` finished
/// (nothing with `repair`, so that every pod is wired again), and its
/// ledger.
async fn observe_for(host: &Host, topology: &Topology, repair: bool) -> Result<(Observed, Ledger)> {
    let state = StateDir::new(&topology.name);
    let recorded = state.load().ok().flatten();
    let ledger = ledger_of(&topology.name, recorded.as_ref())?;
    let mut applied = Applied::load(&state)?;
    if repair {
        // Offloads are still reset where they may be set.
        applied = Applied {
            xdp_offloads: applied.xdp_offloads,
            ..Applied::default()
        };
    }
    let observed = observe(
        host,
        &topology.name,
        &ledger,
        recorded.as_ref(),
        Some(topology),
        applied,
    )
    .await?;
    Ok((observed, ledger))
}

/// Removes everything topology `name` made (as its ledger records it) and
/// nothing else; fine to repeat, and after a crash.
pub async fn down(name: &str) -> Result<Vec<Step>> {
    let _locks = state::change_lock(name)?;
    let host = Host::connect()?;
    // A record that is gone is rebuilt from what carries the network's
    // mark, so that this removes it all the same.
    crate::recover::rebuild_if_lost(&host, name, endpoint::AddressSource::Builtin).await?;
    // A runtime's endpoints first: their veths, map entries and records
    // (their namespaces are the runtime's and stay).
    for record in endpoint::Store::new(name).records() {
        wire::remove(&host, name, &record)
            .await
            .with_context(|| format!("topology {name:?}: removing endpoint {}", record.key()))?;
    }
    let recorded = StateDir::new(name).load().ok().flatten();
    let ledger = ledger_of(name, recorded.as_ref())?;
    let observed = observe(
        &host,
        name,
        &ledger,
        recorded.as_ref(),
        None,
        Applied::default(),
    )
    .await?;
    warn_unproven(name, &observed);
    let steps = plan_down(&observed);
    Executor::new(host, name, Applied::default(), ledger, Timings::new(false))
        .run(None, &steps, 0)
        .await?;
    Ok(steps)
}

struct Executor {
    host: Host,
    name: String,
    crash_after: Option<usize>,
    /// The record as the steps change it; saved before a step makes it
    /// true (xdp offloads) and after the last step (everything else).
    applied: Mutex<Applied>,
    /// The ledger as the steps change it. Saved before a step makes an
    /// object it does not record yet, and after the last step (what was
    /// removed, the ifindexes of links made).
    ledger: Mutex<Ledger>,
    /// Set once `RemoveState` removed the state directory (and the ledger).
    state_removed: std::sync::atomic::AtomicBool,
    /// An attach running while the next steps go on.
    attaching: Mutex<Option<tokio::task::JoinHandle<Result<()>>>>,
    /// Ifindex of host-side veths by name: as observed, minus those the
    /// steps delete or create (looked up again when needed).
    veths: Mutex<BTreeMap<String, u32>>,
    timings: Timings,
}

impl Executor {
    fn new(host: Host, name: &str, applied: Applied, ledger: Ledger, timings: Timings) -> Executor {
        let crash_after = std::env::var(CRASH_AFTER_STEPS_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        Executor {
            host,
            name: name.to_string(),
            crash_after,
            applied: Mutex::new(applied),
            ledger: Mutex::new(ledger),
            state_removed: std::sync::atomic::AtomicBool::new(false),
            attaching: Mutex::new(None),
            veths: Mutex::new(BTreeMap::new()),
            timings,
        }
    }

    fn save_applied(&self) -> Result<()> {
        let applied = self.applied.lock().expect("applied record lock");
        applied.save(&StateDir::new(&self.name))
    }

    /// Changes the ledger in memory only (saved after the last step): for
    /// what a step removed, or learnt of an object the ledger already has.
    fn record_in_memory(&self, change: impl FnOnce(&mut Ledger)) {
        change(&mut self.ledger.lock().expect("ledger lock"));
    }

    /// Records an object before it is made: saves the ledger at once if
    /// `record` added anything (it says so; usually the ledger saved
    /// before the steps has it already, see [`with_objects_to_make`]).
    fn record_and_save(&self, record: impl FnOnce(&mut Ledger) -> bool) -> Result<()> {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        if record(&mut ledger) {
            ledger.save(&StateDir::new(&self.name))?;
        }
        Ok(())
    }

    fn save_ledger(&self) -> Result<()> {
        if self
            .state_removed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let ledger = self.ledger.lock().expect("ledger lock");
        ledger.save(&StateDir::new(&self.name))
    }

    /// After a complete `up`: every pod is wired as `topology` says, on the
    /// veth and namespace it has now.
    async fn record_applied(&self, topology: &Topology) -> Result<()> {
        let veths = self.host_veths(topology).await?;
        {
            let mut applied = self.applied.lock().expect("applied record lock");
            applied.programs = Some(programs_digest(topology));
            applied.masquerade = Some(masquerade_fingerprint(topology));
            applied.pods.clear();
            for pod in &topology.pods {
                let (Some(&host_ifindex), Some(netns_inode)) =
                    (veths.get(&pod.host_veth), netns::inode(&pod.netns))
                else {
                    continue;
                };
                applied.pods.insert(
                    pod.name.clone(),
                    AppliedPod {
                        fingerprint: pod_fingerprint(topology, pod),
                        host_ifindex,
                        netns_inode,
                    },
                );
            }
            applied
                .xdp_offloads
                .retain(|p| topology.pod(p).is_some() && topology.mode == Mode::Xdp);
        }
        self.save_applied()
    }

    /// Links observed as ours without a confirmed record (recorded before
    /// a crash kept their mark or ifindex from being set; made by an older
    /// vethctl) get both now, if they are still the links observed.
    async fn confirm_links(&self, observed: &Observed) -> Result<()> {
        let pending: Vec<(String, LinkState)> = {
            let ledger = self.ledger.lock().expect("ledger lock");
            observed
                .links
                .iter()
                .filter(|(recorded, link)| {
                    ledger
                        .links
                        .get(*recorded)
                        .is_some_and(|e| e.ifindex != Some(link.ifindex))
                })
                .map(|(recorded, link)| (recorded.clone(), link.clone()))
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        for (recorded, link) in pending {
            let Some(now) = self.host.link_by_index(link.ifindex).await? else {
                continue;
            };
            if now.name != recorded || now.kind != link.kind {
                continue;
            }
            self.host.ensure_alias(&now, &link_mark(&self.name)).await?;
            self.record_in_memory(|l| {
                if let Some(entry) = l.links.get_mut(&recorded) {
                    if entry.ifindex.is_none() {
                        entry.ifindex = Some(now.ifindex);
                    }
                }
            });
        }
        self.save_ledger()
    }

    /// Ifindex of each pod's host-side veth: known ones from what was
    /// observed, the others looked up (and remembered).
    async fn host_veths(&self, topology: &Topology) -> Result<BTreeMap<String, u32>> {
        let mut known = self.veths.lock().expect("veths lock").clone();
        for pod in &topology.pods {
            if !known.contains_key(&pod.host_veth) {
                if let Some(link) = self.host.link(&pod.host_veth).await? {
                    known.insert(link.name, link.ifindex);
                }
            }
        }
        *self.veths.lock().expect("veths lock") = known.clone();
        Ok(known)
    }

    /// Runs the steps (`first` is the plan's index of the first of them);
    /// the ledger is saved at the end, also when a step fails.
    async fn run(&self, topology: Option<&Topology>, steps: &[Step], first: usize) -> Result<()> {
        let result = self.run_steps(topology, steps, first).await;
        let saved = self.save_ledger();
        result.and(saved)
    }

    async fn run_steps(
        &self,
        topology: Option<&Topology>,
        steps: &[Step],
        first: usize,
    ) -> Result<()> {
        let pods = |s: &Step| matches!(s, Step::ConfigurePod { .. });
        // `--timings` prints a line per step, which a counter would garble.
        let wired = match self.timings.on {
            true => 0,
            false => steps.iter().filter(|s| pods(s)).count(),
        };
        let mut progress = crate::progress::Counter::new("pods wired", wired);
        for (done, step) in (first..).zip(steps) {
            if self.crash_after == Some(done) {
                eprintln!("vethctl: {CRASH_AFTER_STEPS_ENV}={done}: aborting before \"{step}\"");
                std::process::abort();
            }
            self.step(topology, step)
                .await
                .with_context(|| format!("topology {:?}: {step}", self.name))?;
            self.timings.mark(step);
            if pods(step) {
                progress.tick();
            }
        }
        self.finish_attaching().await
    }

    /// Polls until none of `ifindexes` is left, giving up once a second
    /// passes without one going (a namespace held open elsewhere keeps its
    /// pair; the following steps delete what is left).
    async fn await_veths_gone(&self, ifindexes: &[u32]) -> Result<()> {
        let wanted: BTreeSet<u32> = ifindexes.iter().copied().collect();
        let mut left = usize::MAX;
        let mut progress = std::time::Instant::now();
        loop {
            let now_left = self
                .host
                .links()
                .await?
                .iter()
                .filter(|l| wanted.contains(&l.ifindex))
                .count();
            if now_left == 0 {
                return Ok(());
            }
            if now_left < left {
                left = now_left;
                progress = std::time::Instant::now();
            } else if progress.elapsed() > std::time::Duration::from_secs(1) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits for the attach running in the background, if any.
    async fn finish_attaching(&self) -> Result<()> {
        let running = self.attaching.lock().expect("attaching lock").take();
        if let Some(task) = running {
            task.await.context("attach task panicked")??;
            self.timings.mark("wait for the attach to finish");
        }
        Ok(())
    }

    /// The link just made as `name` (recorded before it was made): marked
    /// with the topology's alias, and its ifindex in the ledger.
    async fn mark_new_link(&self, name: &str) -> Result<LinkState> {
        let link = self
            .host
            .link(name)
            .await?
            .with_context(|| format!("link {name:?} vanished right after creation"))?;
        self.host.set_alias(&link, &link_mark(&self.name)).await?;
        self.record_in_memory(|l| {
            if let Some(entry) = l.links.get_mut(name) {
                entry.ifindex = Some(link.ifindex);
            }
        });
        Ok(link)
    }

    /// The other IPv4 addresses of its subnet the kernel would remove with
    /// `address` (the link's first of that subnet, on a link that does not
    /// promote secondaries), if any.
    async fn would_take_others(
        &self,
        address: &LedgerAddress,
        ifindex: u32,
    ) -> Result<Option<String>> {
        let IpAddr::V4(v4) = address.address else {
            return Ok(None);
        };
        let Ok(subnet) = ipnet::Ipv4Net::new(v4, address.prefix_len) else {
            return Ok(None);
        };
        let on_link: Vec<_> = self
            .host
            .addresses()
            .await?
            .into_iter()
            .filter(|h| h.ifindex == ifindex)
            .collect();
        let primary = on_link
            .iter()
            .any(|h| h.address == address.address && !h.secondary);
        let others: Vec<String> = on_link
            .iter()
            .filter(|h| h.address != address.address && h.secondary)
            .filter(|h| matches!(h.address, IpAddr::V4(o) if subnet.contains(&o)))
            .map(|h| format!("{}/{}", h.address, h.prefix_len))
            .collect();
        let device = self.host.link_by_index(ifindex).await?;
        let promotes = device.is_some_and(|d| sysctl::promotes_secondaries(&d.name));
        Ok((primary && !others.is_empty() && !promotes).then(|| others.join(", ")))
    }

    /// The ifindex of a host device the ledger names (lo, the bridge).
    async fn device(&self, name: &str) -> Result<LinkState> {
        self.host
            .link(name)
            .await?
            .with_context(|| format!("interface {name:?} is missing"))
    }

    async fn step(&self, topology: Option<&Topology>, step: &Step) -> Result<()> {
        let need = || topology.ok_or_else(|| anyhow!("step needs the topology description"));
        match step {
            Step::ConfigureDirectPair => {
                let topology = need()?;
                pair::ensure(&self.host, &topology.pods[0], &topology.pods[1]).await?;
            }
            Step::RemoveDirectPair => {
                let topology = need()?;
                pair::remove(&topology.pods[0], topology.pods.get(1)).await?;
            }
            Step::ConfigureMasquerade => self.configure_masquerade(need()?)?,
            Step::RemoveMasquerade => {
                nat::remove(&self.name)?;
                self.record_in_memory(|l| l.nat_table = false);
            }
            Step::AddUnreachable { net } => self.add_unreachable(*net).await?,
            Step::RemoveUnreachable { net } => self.remove_unreachable(*net).await?,
            Step::EnableForwarding => {
                sysctl::enable_forwarding(need()?.pod_cidr6.is_some())?;
            }
            Step::CreateBridge { name } => self.create_bridge(need()?, name).await?,
            Step::ConfigureBridge { name } => self.configure_bridge(need()?, name).await?,
            Step::AddAddress { address } => self.add_address(address).await?,
            Step::RemoveAddress { address, ifindex } => {
                self.remove_address(address, *ifindex).await?
            }
            Step::CreateNetns { netns } => {
                self.record_and_save(|l| l.netns.insert(netns.clone()))?;
                netns::create(netns)?
            }
            Step::CreateVeth { pod, host_veth } => {
                self.create_veth(need()?, pod, host_veth).await?
            }
            Step::RenameLink { ifindex, from, to } => {
                self.veths.lock().expect("veths lock").remove(from);
                self.host.rename_link(*ifindex, from, to).await?;
            }
            Step::JoinBridge { pod } => {
                let topology = need()?;
                wire::join_bridge(&self.host, topology, pod_in(topology, pod)?).await?;
            }
            Step::ConfigurePod { pod } => {
                let topology = need()?;
                self.configure_pod(topology, pod_in(topology, pod)?).await?;
            }
            Step::LeaveBridge { pod } => self.leave_bridge(need()?, pod).await?,
            Step::LoadPrograms => self.load_programs(need()?).await?,
            Step::SyncDataplane => self.sync_dataplane(need()?).await?,
            Step::RewireEndpoints => {
                // The topology pods' attach first: both end in the same
                // pins directory. The rewire itself runs once every step
                // has, beside endpoint work (see `rewire_endpoints`).
                self.finish_attaching().await?;
            }
            Step::AttachPrograms { pods } => self.attach_programs(need()?, pods).await?,
            Step::SetXdpOffloads { pod } => {
                self.set_xdp_offloads(pod_in(need()?, pod)?).await?;
            }
            Step::ResetOffloads { pod } => self.reset_offloads(need()?, pod).await?,
            Step::RemoveRoute { route } => self.host.remove_route(route).await?,
            Step::DeleteLink { name, ifindex } => self.delete_link(name, *ifindex).await?,
            Step::DeleteNetns { netns } => self.delete_netns(netns)?,
            Step::AwaitVethsGone { ifindexes } => self.await_veths_gone(ifindexes).await?,
            Step::RemovePins => {
                Pins::new(&self.name).remove_all()?;
                self.record_in_memory(|l| l.pins = false);
            }
            Step::ConfigureCrossNode => self.configure_cross_node(topology).await?,
            Step::RemoveCrossNode => crate::crossnode::remove(&self.host, &self.name).await?,
            Step::RemoveState => {
                StateDir::new(&self.name).remove()?;
                self.state_removed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn configure_cross_node(&self, topology: Option<&Topology>) -> Result<()> {
        let (node, t) = topology
            .and_then(|t| Some((t.node.as_ref()?, t)))
            .context("configuring cross-node routes needs the node's description")?;
        let ranges = crate::crossnode::PodRanges {
            v4: t.pod_cidr,
            v6: t.pod_cidr6,
        };
        crate::crossnode::apply(&self.host, &self.name, node, ranges).await
    }

    /// Masquerades the pod networks when the uplink asks for it; otherwise
    /// removes a NAT table this topology made earlier.
    fn configure_masquerade(&self, topology: &Topology) -> Result<()> {
        if topology.uplink.masquerade {
            let node = topology.node.as_ref();
            let mut nets = vec![nat::Masquerade {
                network: topology.pod_cidr.network().into(),
                prefix_len: topology.pod_cidr.prefix_len(),
                unmasked: node
                    .map(|n| (n.cluster_cidr.network().into(), n.cluster_cidr.prefix_len())),
            }];
            nets.extend(topology.pod_cidr6.map(|c| {
                nat::Masquerade {
                    network: c.network().into(),
                    prefix_len: c.prefix_len(),
                    unmasked: node
                        .and_then(|n| n.cluster_cidr6)
                        .map(|k| (k.network().into(), k.prefix_len())),
                }
            }));
            self.record_and_save(|l| !std::mem::replace(&mut l.nat_table, true))?;
            nat::apply(
                &topology.name,
                &topology.object_prefix(),
                topology.uplink.interface.as_deref(),
                &nets,
            )?;
        } else if self.ledger.lock().expect("ledger lock").nat_table {
            nat::remove(&self.name)?;
            self.record_in_memory(|l| l.nat_table = false);
        }
        Ok(())
    }

    async fn add_unreachable(&self, net: IpNet) -> Result<()> {
        self.record_and_save(|l| l.unreachable.insert(net))?;
        if let Err(e) = self.host.add_unreachable(net).await {
            // Someone else's route: not ours to remove later.
            self.record_in_memory(|l| {
                l.unreachable.remove(&net);
            });
            return Err(e);
        }
        Ok(())
    }

    async fn remove_unreachable(&self, net: IpNet) -> Result<()> {
        self.host.remove_route(&routes::unreachable(net)).await?;
        self.record_in_memory(|l| {
            l.unreachable.remove(&net);
        });
        Ok(())
    }

    async fn create_bridge(&self, topology: &Topology, name: &str) -> Result<()> {
        let mac = topology.bridge_mac();
        self.record_and_save(|l| {
            let link = LedgerLink {
                kind: "bridge".into(),
                ifindex: None,
                mac: Some(mac),
            };
            l.links.insert(name.to_string(), link.clone()) != Some(link)
        })?;
        self.host.create_bridge(name, mac).await?;
        self.mark_new_link(name).await?;
        Ok(())
    }

    async fn configure_bridge(&self, topology: &Topology, name: &str) -> Result<()> {
        let bridge = self
            .host
            .link(name)
            .await?
            .with_context(|| format!("bridge {name:?} is missing"))?;
        self.host
            .ensure_own_bridge(&bridge, topology.bridge_mac(), &link_mark(&self.name))
            .await?;
        // A new node address replaces an old one of the same subnet
        // without going with it.
        sysctl::promote_secondaries(&bridge.name)
    }

    async fn add_address(&self, address: &LedgerAddress) -> Result<()> {
        self.record_and_save(|l| l.addresses.insert(address.clone()))?;
        let device = self.device(&address.device).await?;
        let label = host_address_label(&self.name);
        let label = (address.device == "lo").then_some(label.as_str());
        let added = self
            .host
            .add_address(
                device.ifindex,
                &device.name,
                address.address,
                address.prefix_len,
                label,
            )
            .await?;
        if !added {
            // Someone else added it meanwhile: used, not ours.
            self.record_in_memory(|l| {
                l.addresses.remove(address);
            });
        }
        Ok(())
    }

    /// Removes a node address unless that would take others' addresses with
    /// it; then it stays, with a warning.
    async fn remove_address(&self, address: &LedgerAddress, ifindex: u32) -> Result<()> {
        if let Some(others) = self.would_take_others(address, ifindex).await? {
            eprintln!(
                "vethctl: topology {:?}: {address} is left in place: removing it would \
                 remove {others} with it (the link does not promote secondary \
                 addresses); remove it by hand",
                self.name
            );
            return Ok(());
        }
        self.host
            .remove_address(
                ifindex,
                &address.device,
                address.address,
                address.prefix_len,
            )
            .await?;
        self.record_in_memory(|l| {
            l.addresses.remove(address);
        });
        Ok(())
    }

    async fn create_veth(&self, topology: &Topology, pod: &str, host_veth: &str) -> Result<()> {
        self.veths.lock().expect("veths lock").remove(host_veth);
        let pod = pod_in(topology, pod)?;
        self.record_and_save(|l| {
            let link = LedgerLink {
                kind: "veth".into(),
                ifindex: None,
                mac: None,
            };
            l.links.insert(host_veth.to_string(), link.clone()) != Some(link)
        })?;
        self.host.create_pod_veth(pod).await?;
        self.mark_new_link(host_veth).await?;
        Ok(())
    }

    async fn leave_bridge(&self, topology: &Topology, pod: &str) -> Result<()> {
        let pod = pod_in(topology, pod)?;
        if matches!(topology.mode, Mode::Tc | Mode::Xdp) {
            // The kernel disables a port before it stops handing it
            // frames (`del_nbp`) and drops what arrives in between;
            // the programs of mode tc and xdp take the pod's frames
            // before the bridge would, once they are attached.
            self.finish_attaching().await?;
        }
        wire::leave_bridge(&self.host, pod).await
    }

    async fn load_programs(&self, topology: &Topology) -> Result<()> {
        let owned = topology.clone();
        self.record_and_save(|l| !std::mem::replace(&mut l.pins, true))?;
        // Loading verifies programs and may take a moment: off the
        // runtime.
        let replaced = tokio::task::spawn_blocking(move || {
            dataplane::load_programs(&owned.name, owned.counters, owned.mode == Mode::Tc)
        })
        .await
        .context("loading task panicked")??;
        for map in &replaced {
            eprintln!(
                "vethctl: topology {:?}: map {map} was pinned by a vethctl with another \
                 layout; made afresh (what it held, such as counters, starts over)",
                self.name
            );
        }
        if !replaced.is_empty() {
            // Fresh maps know no veth, and the new programs drop
            // frames of a veth they do not know: filled before any
            // of them is attached (`SyncDataplane` runs later too).
            self.sync_dataplane(topology).await?;
        }
        Ok(())
    }

    /// Starts attaching the mode's programs to the pods' veths in the
    /// background; the next step that needs them waits (`finish_attaching`).
    async fn attach_programs(&self, topology: &Topology, pods: &[String]) -> Result<()> {
        let veths = pods
            .iter()
            .map(|p| Ok(pod_in(topology, p)?.host_veth.clone()))
            .collect::<Result<Vec<_>>>()?;
        let (name, hooks) = (self.name.clone(), Hook::for_mode(topology.mode));
        self.finish_attaching().await?;
        // The maps know the pods before the programs run on their
        // veths, which would otherwise drop the pods' first frames
        // (IPv6 DAD, router solicitations) as from an unknown veth.
        self.sync_dataplane(topology).await?;
        let task = tokio::task::spawn_blocking(move || {
            dataplane::attach_all(&name, &veths, hooks, TcAttach::Tcx)
        });
        *self.attaching.lock().expect("attaching lock") = Some(task);
        Ok(())
    }

    async fn reset_offloads(&self, topology: &Topology, pod: &str) -> Result<()> {
        // Only once XDP is detached.
        self.finish_attaching().await?;
        let pod = pod_in(topology, pod)?;
        pod::set_offloads(pod, false).await?;
        let mut applied = self.applied.lock().expect("applied record lock");
        applied.xdp_offloads.remove(&pod.name);
        Ok(())
    }

    fn delete_netns(&self, netns: &str) -> Result<()> {
        netns::delete(netns)?;
        self.record_in_memory(|l| {
            l.netns.remove(netns);
        });
        Ok(())
    }

    async fn delete_link(&self, name: &str, ifindex: u32) -> Result<()> {
        self.veths.lock().expect("veths lock").remove(name);
        self.host.delete_link(ifindex, name).await?;
        self.record_in_memory(|l| {
            l.links.retain(|recorded, entry| match entry.ifindex {
                Some(i) => i != ifindex,
                None => recorded != name,
            })
        });
        Ok(())
    }

    /// Pod side and host side of one pod, wired for the topology's mode
    /// (the applied record says first when xdp offloads may be set).
    async fn configure_pod(&self, topology: &Topology, pod: &crate::model::Pod) -> Result<()> {
        wire::wire_pod(&self.host, topology, pod, || {
            let newly = (self.applied.lock().expect("applied record lock"))
                .xdp_offloads
                .insert(pod.name.clone());
            if newly {
                self.save_applied()?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// The pod's `eth0` as mode xdp needs it (GRO on, tx checksum offload
    /// off), recorded before it is so, for `ResetOffloads` to undo.
    async fn set_xdp_offloads(&self, pod: &crate::model::Pod) -> Result<()> {
        let newly = (self.applied.lock().expect("applied record lock"))
            .xdp_offloads
            .insert(pod.name.clone());
        if newly {
            self.save_applied()?;
        }
        pod::set_offloads(pod, true).await
    }

    /// Makes the maps hold exactly the topology's pods and the network's
    /// recorded endpoints (they are made apart, by CNI ADD, under the shared
    /// lock this `up` excludes), and unpins the links of veths of neither.
    async fn sync_dataplane(&self, topology: &Topology) -> Result<()> {
        let veths = self.host_veths(topology).await?;
        let mut entries = Vec::with_capacity(topology.pods.len());
        for pod in &topology.pods {
            let host_ifindex = *veths
                .get(&pod.host_veth)
                .with_context(|| format!("host-side veth {:?} is missing", pod.host_veth))?;
            entries.push(wire::entry(pod, host_ifindex));
        }
        let mut wanted: BTreeSet<String> =
            topology.pods.iter().map(|p| p.host_veth.clone()).collect();
        for record in endpoint::Store::new(&self.name).records() {
            wanted.insert(record.host_veth.clone());
            let Some(ifindex) = record.host_ifindex else {
                continue;
            };
            // A pod whose namespace went before its DEL took its veth
            // along: no entry until the DEL (the DEVMAP refuses a device
            // that does not exist, which failed the whole `up`).
            let alive = self
                .host
                .link_by_index(ifindex)
                .await?
                .is_some_and(|l| l.name == record.host_veth);
            if alive {
                entries.push(wire::entry(&record.pod(), ifindex));
            }
        }
        let ifindexes: BTreeSet<u32> = entries.iter().map(|e| e.host_ifindex).collect();
        let mut dataplane = Dataplane::open(&self.name)?;
        dataplane.sync_pods(&entries)?;
        dataplane.sync_devmap(&ifindexes)?;
        for veth in dataplane.pins().linked_veths()? {
            if !wanted.contains(&veth) {
                dataplane.pins().remove_links(&veth)?;
            }
        }
        Ok(())
    }
}

/// The topology's pod a step names (the plan only names pods it has).
fn pod_in<'a>(topology: &'a Topology, pod: &str) -> Result<&'a crate::model::Pod> {
    topology.pod(pod).context("pod missing from the topology")
}
