//! Planning: what `up` and `down` must do, from the desired topology and
//! what the kernel has. Pure: the kernel's side comes in as [`Observed`].
//!
//! Every step is idempotent, so a plan interrupted at any point (a crash, a
//! kill) is finished by the next `up` or cleaned by the next `down`. Only
//! objects of the topology's ledger ([`crate::state::Ledger`]) are ever
//! changed or removed; an object in the way that is not the topology's
//! (a link or route with a name or address it wants) is a [`Refusal`]
//! before anything is done.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;

use crate::{
    applied::{masquerade_fingerprint, pod_fingerprint, Applied},
    model::{Mode, Pod, Topology},
    netlink::{
        links::LinkState,
        routes::{Route, RouteKind},
    },
    state::{link_mark, LedgerAddress},
};

/// The kernel objects of one topology: its own (by its ledger), and others'
/// that stand where it wants to put something.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The topology's live named network namespaces.
    pub netns: BTreeSet<String>,
    /// The topology's namespace names under /run/netns with no namespace
    /// mounted (a kill between creating the file and mounting over it).
    pub dead_netns: BTreeSet<String>,
    /// The topology's host-namespace links, by the name it made them with;
    /// `name` is what each is called now (it differs for a renamed one).
    pub links: BTreeMap<String, LinkState>,
    /// Links that are not the topology's but carry a name it wants (a pod's
    /// host-side veth, the bridge), by name.
    pub foreign_links: BTreeMap<String, ForeignLink>,
    /// Addresses on host links that the topology owns or wants, present in
    /// the kernel, with whose they are.
    pub addresses: BTreeMap<LedgerAddress, PresentAddress>,
    /// The topology's unreachable routes for pod ranges that exist.
    pub unreachable: BTreeSet<IpNet>,
    /// Routes over the topology's links, by link (as in `links`).
    pub routes: BTreeMap<String, Vec<Route>>,
    /// Routes of others to an address a pod wants, with their device.
    pub foreign_routes: Vec<(Route, String)>,
    /// The two pods of a two-pod topology are joined by a direct pair.
    pub direct_pair: bool,
    /// Inode of each live namespace in `netns`: a recreated one differs.
    pub netns_inodes: BTreeMap<String, u64>,
    /// What the last `up` finished (nothing, for `up --repair`).
    pub applied: Applied,
    /// The pinned programs are the ones this vethctl loads for the desired
    /// settings, so links to them can stay.
    pub programs_current: bool,
    /// Host-side veths with a pinned link at every hook of the desired mode.
    pub linked: BTreeSet<String>,
    /// The topology's nf_tables table exists.
    pub masquerade_table: bool,
    /// The ledger records the nf_tables table as the topology's.
    pub masquerade_owned: bool,
    /// The ledger records the pins as the topology's.
    pub pins: bool,
    /// Recorded objects that exist but do not carry the mark that would
    /// prove them the topology's: left alone (and named on stderr).
    pub unproven: Vec<String>,
    /// The network has runtime endpoints (CNI ADDs) that this `up` must
    /// wire again: the mode changes, programs are reloaded, or a repair.
    pub rewire_endpoints: bool,
    /// Cross-node wiring is recorded (see [`crate::crossnode`]).
    pub cross_node: bool,
}

/// A link that is not the topology's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignLink {
    pub link: LinkState,
    pub alias: Option<String>,
}

/// An address the kernel has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresentAddress {
    /// The topology made it (else someone else did, and it is only used).
    pub ours: bool,
    pub ifindex: u32,
}

impl Observed {
    /// The bridge called `name`, the topology's or another's.
    pub fn bridge(&self, name: &str) -> Option<&LinkState> {
        self.links
            .get(name)
            .or_else(|| self.foreign_links.get(name).map(|f| &f.link))
    }
}

/// Why `up` will not go ahead: something in the way is not the topology's.
/// Nothing has been done when it is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// `plan --json` names each step (`"step": "create_veth"`) beside its
/// fields.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Host-wide IPv4 (and IPv6) forwarding on.
    EnableForwarding,
    /// The topology's nf_tables table: masquerade for traffic leaving the
    /// pod network (or no table, with `uplink.masquerade = false`).
    ConfigureMasquerade,
    /// Remove the topology's nf_tables table.
    RemoveMasquerade,
    /// An unreachable route for a pod range, so an unused pod address is
    /// never routed out of the node.
    AddUnreachable {
        net: IpNet,
    },
    RemoveUnreachable {
        net: IpNet,
    },
    /// Mode pair: the direct veth between the two pods, configured.
    ConfigureDirectPair,
    /// Leaving mode pair: delete the direct veth.
    RemoveDirectPair,
    /// Make the topology's bridge.
    CreateBridge {
        name: String,
    },
    /// The topology's own bridge up, with its MAC (a bridge of someone
    /// else is used as it is).
    ConfigureBridge {
        name: String,
    },
    /// A node address (on lo, or on the bridge in mode bridge).
    AddAddress {
        address: LedgerAddress,
    },
    /// Remove one of the topology's addresses.
    RemoveAddress {
        address: LedgerAddress,
        ifindex: u32,
    },
    CreateNetns {
        netns: String,
    },
    /// The veth pair, host side here and `eth0` in the pod's namespace.
    CreateVeth {
        pod: String,
        host_veth: String,
    },
    /// A link of the topology renamed behind its back gets its name back.
    RenameLink {
        ifindex: u32,
        from: String,
        to: String,
    },
    /// Entering mode bridge: the pod's host-side veth becomes a port of the
    /// bridge before any pod is readdressed. A bridged pod ARPs for the
    /// others at once; a request flooded while a peer's veth is not a port
    /// yet reaches nobody, and the kernel asks again only a second later.
    /// A pod still routed keeps working through a port: frames to the
    /// port's MAC go up the bridge to the host's routes.
    JoinBridge {
        pod: String,
    },
    /// Pod side (lo, eth0 address, gateway) and host side (veth up, route).
    /// A veth leaving a bridge stays a port until `LeaveBridge`.
    ConfigurePod {
        pod: String,
    },
    /// Leaving mode bridge: the pod's veth off the bridge, once every pod
    /// is wired for the new mode (a pod still bridged sends straight to
    /// its peers' MACs, which the bridge delivers only to its ports).
    LeaveBridge {
        pod: String,
    },
    /// Load the programs and pin them (maps are created or reused).
    LoadPrograms,
    /// Write counters and endpoints for exactly the desired pods, unpin the
    /// links of pods that are gone.
    SyncDataplane,
    /// Attach the mode's programs to these pods' host-side veths (keeping
    /// links that already run the pinned programs), all at once.
    AttachPrograms {
        pods: Vec<String>,
    },
    /// Entering mode xdp: the pod's `eth0` gets GRO (the NAPI that receives
    /// frames redirected by XDP) and tx checksum offload off, before any
    /// XDP program can redirect to it or from it.
    SetXdpOffloads {
        pod: String,
    },
    /// Leaving mode xdp: the pod's `eth0` back to veth offload defaults,
    /// only once XDP is detached.
    ResetOffloads {
        pod: String,
    },
    /// Wire the runtime's endpoints (CNI ADDs) for the mode and attach the
    /// programs loaded: after the paths they move to exist (a bridge, the
    /// maps synced) and before what they leave goes (a bridge, its
    /// addresses, routes).
    RewireEndpoints,
    /// A route over one of the topology's links that no pod wants any more
    /// (a renumbered pod, mode bridge).
    RemoveRoute {
        #[serde(serialize_with = "as_text")]
        route: Route,
    },
    DeleteLink {
        name: String,
        ifindex: u32,
    },
    DeleteNetns {
        netns: String,
    },
    /// Wait while the kernel destroys the deleted namespaces' veth pairs
    /// (it does so in the background), as long as it makes progress.
    AwaitVethsGone {
        ifindexes: Vec<u32>,
    },
    /// Unpin every program, map and link of the topology.
    RemovePins,
    /// Remove `/run/vethctl/<topology>` (with the ledger).
    RemoveState,
    /// A cluster node's underlay addresses, VXLAN device and routes to the
    /// other nodes' pod ranges, converged as a whole.
    ConfigureCrossNode,
    /// Remove the cross-node wiring (the network is no node of a cluster
    /// any more, or goes down).
    RemoveCrossNode,
}

/// A value as its `Display` text (a route as `ip route` shows it).
fn as_text<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EnableForwarding => write!(f, "enable IP forwarding"),
            Step::ConfigureMasquerade => {
                write!(f, "configure masquerade for traffic leaving the node")
            }
            Step::RemoveMasquerade => write!(f, "remove masquerade rules"),
            Step::AddUnreachable { net } => write!(f, "add unreachable route for {net}"),
            Step::RemoveUnreachable { net } => write!(f, "remove unreachable route for {net}"),
            Step::ConfigureDirectPair => write!(f, "configure the direct pair between the pods"),
            Step::RemoveDirectPair => write!(f, "remove the direct pair between the pods"),
            Step::CreateBridge { name } => write!(f, "create bridge {name}"),
            Step::ConfigureBridge { name } => write!(f, "configure bridge {name}"),
            Step::AddAddress { address } => write!(
                f,
                "add node address {}/{} to {}",
                address.address, address.prefix_len, address.device
            ),
            Step::RemoveAddress { address, .. } => write!(
                f,
                "remove node address {}/{} from {}",
                address.address, address.prefix_len, address.device
            ),
            Step::CreateNetns { netns } => write!(f, "create network namespace {netns}"),
            Step::CreateVeth { pod, host_veth } => {
                write!(f, "create veth {host_veth} <-> eth0 for pod {pod}")
            }
            Step::RenameLink { ifindex, from, to } => {
                write!(f, "rename link {from} (ifindex {ifindex}) back to {to}")
            }
            Step::JoinBridge { pod } => write!(f, "make pod {pod}'s veth a bridge port"),
            Step::ConfigurePod { pod } => write!(f, "configure pod {pod}"),
            Step::LeaveBridge { pod } => write!(f, "take pod {pod}'s veth off the bridge"),
            Step::LoadPrograms => write!(f, "load and pin the eBPF programs"),
            Step::SyncDataplane => write!(f, "sync eBPF maps and links"),
            Step::RewireEndpoints => write!(f, "rewire the runtime's endpoints"),
            Step::AttachPrograms { pods } => match pods.as_slice() {
                [pod] => write!(f, "attach programs for pod {pod}"),
                _ if pods.len() <= 5 => write!(f, "attach programs for pods {}", pods.join(", ")),
                _ => write!(
                    f,
                    "attach programs for {} pods ({}, ...)",
                    pods.len(),
                    pods[..5].join(", ")
                ),
            },
            Step::SetXdpOffloads { pod } => write!(f, "set XDP offloads of pod {pod}"),
            Step::ResetOffloads { pod } => write!(f, "reset offloads of pod {pod}"),
            Step::RemoveRoute { route } => write!(f, "remove stale route {route}"),
            Step::DeleteLink { name, ifindex } => {
                write!(f, "delete link {name} (ifindex {ifindex})")
            }
            Step::DeleteNetns { netns } => write!(f, "delete network namespace {netns}"),
            Step::AwaitVethsGone { ifindexes } => write!(
                f,
                "wait for the kernel to remove {} veth pair(s)",
                ifindexes.len()
            ),
            Step::RemovePins => write!(f, "unpin programs, maps and links"),
            Step::RemoveState => write!(f, "remove state"),
            Step::ConfigureCrossNode => write!(f, "configure routes to the other nodes"),
            Step::RemoveCrossNode => write!(f, "remove routes to the other nodes"),
        }
    }
}

/// The pod ranges of a topology.
pub fn pod_ranges(topology: &Topology) -> BTreeSet<IpNet> {
    let mut nets = BTreeSet::from([IpNet::V4(topology.pod_cidr)]);
    nets.extend(topology.pod_cidr6.map(IpNet::V6));
    nets
}

/// The node addresses a topology puts on host links: /32 and /128 on lo,
/// or the pod ranges' prefixes on the bridge in mode bridge.
pub fn node_addresses(topology: &Topology) -> BTreeSet<LedgerAddress> {
    let bridged = topology.mode == Mode::Bridge;
    let device = if bridged {
        topology.bridge.as_str()
    } else {
        "lo"
    };
    let mut wanted = BTreeSet::from([LedgerAddress {
        device: device.to_string(),
        address: IpAddr::V4(topology.host_address),
        prefix_len: if bridged {
            topology.pod_cidr.prefix_len()
        } else {
            32
        },
    }]);
    if let (Some(v6), Some(cidr6)) = (topology.host_address6, topology.pod_cidr6) {
        wanted.insert(LedgerAddress {
            device: device.to_string(),
            address: IpAddr::V6(v6),
            prefix_len: if bridged { cidr6.prefix_len() } else { 128 },
        });
    }
    wanted
}

/// The host routes to a pod (over its host-side veth) in the routed modes.
fn pod_host_routes(topology: &Topology, pod: &Pod) -> Vec<(IpNet, Option<IpAddr>)> {
    if topology.mode == Mode::Bridge {
        return Vec::new();
    }
    let mut routes = vec![(
        IpNet::from(IpAddr::V4(pod.ipv4)),
        Some(IpAddr::V4(topology.host_address)),
    )];
    if let Some(v6) = pod.ipv6 {
        routes.push((
            IpNet::from(IpAddr::V6(v6)),
            topology.host_address6.map(IpAddr::V6),
        ));
    }
    routes
}

/// Refuses a topology that would have to take over or remove something
/// that is not its own.
fn refuse_foreign(topology: &Topology, observed: &Observed) -> Result<(), Refusal> {
    for (i, pod) in topology.pods.iter().enumerate() {
        refuse_foreign_veth(topology, observed, i, pod)?;
        refuse_foreign_route(observed, i, pod)?;
    }
    refuse_foreign_bridge(topology, observed)?;
    if observed.masquerade_table && !observed.masquerade_owned && topology.uplink.masquerade {
        let table = crate::netlink::nat::table_name(&topology.name);
        return Err(Refusal(format!(
            "uplink.masquerade: nf_tables table inet {table} exists and topology {:?} has no \
             record of making it; delete it (`nft delete table inet {table}`) if a crashed \
             vethctl left it",
            topology.name
        )));
    }
    Ok(())
}

/// The topology a link's alias marks it as, if any: `" (it is marked as
/// topology "x"'s)"`.
fn marked_as(alias: &Option<String>) -> String {
    match alias {
        Some(a) if a.starts_with("vethctl:") => {
            format!(" (it is marked as topology {:?}'s)", &a["vethctl:".len()..])
        }
        _ => String::new(),
    }
}

/// A link with the name of pod `i`'s host veth that the topology did not make.
fn refuse_foreign_veth(
    topology: &Topology,
    observed: &Observed,
    i: usize,
    pod: &Pod,
) -> Result<(), Refusal> {
    let Some(foreign) = observed.foreign_links.get(&pod.host_veth) else {
        return Ok(());
    };
    let ours_renamed = match observed.links.get(&pod.host_veth) {
        Some(link) => format!(
            "; the pod's own veth is now called {:?} and cannot get its name back",
            link.name
        ),
        None => String::new(),
    };
    Err(Refusal(format!(
        "pods[{i}] ({:?}): link {:?} exists and topology {:?} has no record of making \
         it{}{ours_renamed}; remove or rename it (`ip link del {}` if a crashed vethctl \
         left it), or rename the pod",
        pod.name,
        pod.host_veth,
        topology.name,
        marked_as(&foreign.alias),
        pod.host_veth
    )))
}

/// A host route to pod `i`'s address that vethctl did not make.
fn refuse_foreign_route(observed: &Observed, i: usize, pod: &Pod) -> Result<(), Refusal> {
    for (route, dev) in &observed.foreign_routes {
        let mine = route.dst == IpNet::from(IpAddr::V4(pod.ipv4))
            || pod
                .ipv6
                .is_some_and(|v6| route.dst == IpNet::from(IpAddr::V6(v6)));
        if mine {
            return Err(Refusal(format!(
                "pods[{i}] ({:?}): the host already has a route to {} (dev {dev}, proto {}) \
                 that vethctl did not make; remove it or give the pod another address",
                pod.name, route.dst, route.protocol
            )));
        }
    }
    Ok(())
}

/// A bridge of the topology's bridge name that is not a bridge, or (mode
/// bridge) another topology's, or down.
fn refuse_foreign_bridge(topology: &Topology, observed: &Observed) -> Result<(), Refusal> {
    let Some(foreign) = observed.foreign_links.get(&topology.bridge) else {
        return Ok(());
    };
    let link = &foreign.link;
    if link.kind.as_deref() != Some("bridge") {
        return Err(Refusal(format!(
            "bridge: {:?} is an existing interface (kind {}), not a bridge; name a bridge, or \
             a name no interface has (vethctl then makes the bridge)",
            topology.bridge,
            link.kind.as_deref().unwrap_or("none")
        )));
    }
    if topology.mode != Mode::Bridge {
        return Ok(());
    }
    let other = foreign
        .alias
        .as_deref()
        .filter(|a| a.starts_with("vethctl:") && *a != link_mark(&topology.name));
    if let Some(other) = other {
        return Err(Refusal(format!(
            "bridge: {:?} is the bridge of topology {:?}; two topologies cannot share a \
             bridge: name another one",
            topology.bridge,
            &other["vethctl:".len()..]
        )));
    }
    if !link.up {
        return Err(Refusal(format!(
            "bridge: {:?} is down and vethctl did not make it, so it does not change it; \
             bring it up (`ip link set {} up`) or name another bridge",
            topology.bridge, topology.bridge
        )));
    }
    Ok(())
}

/// Steps that converge the kernel to `topology`.
///
/// Order matters: pods are created, attached and configured first, then the
/// dataplane is synced (which drops endpoints of removed pods), and only
/// then are removed pods' links deleted, so no endpoint ever points at a
/// deleted interface whose ifindex the kernel could hand to someone else.
/// New addresses and routes are in place before old ones go. Only pods that
/// are new or not as the last `up` left them are touched.
pub fn plan_up(topology: &Topology, observed: &Observed) -> Result<Vec<Step>, Refusal> {
    refuse_foreign(topology, observed)?;
    let mut steps = vec![Step::EnableForwarding];
    let ranges = pod_ranges(topology);
    let wanted_addresses = node_addresses(topology);
    add_node_objects(topology, observed, &ranges, &wanted_addresses, &mut steps);
    let rewired = ensure_pod_links(topology, observed, &mut steps);
    make_kernel_paths(topology, observed, &rewired, &mut steps);
    load_and_attach(topology, observed, &rewired, &mut steps);
    configure_pods(topology, observed, &rewired, &mut steps);
    match &topology.node {
        Some(_) => steps.push(Step::ConfigureCrossNode),
        None if observed.cross_node => steps.push(Step::RemoveCrossNode),
        None => {}
    }
    remove_stale_routes(topology, observed, &mut steps);
    remove_unwanted(topology, observed, &ranges, &wanted_addresses, &mut steps);
    Ok(steps)
}

/// The node-wide objects: masquerading, unreachable pod ranges, the bridge
/// and the node addresses.
fn add_node_objects(
    topology: &Topology,
    observed: &Observed,
    ranges: &BTreeSet<IpNet>,
    wanted_addresses: &BTreeSet<LedgerAddress>,
    steps: &mut Vec<Step>,
) {
    let masquerade_as_recorded = observed.applied.masquerade.as_deref()
        == Some(&masquerade_fingerprint(topology))
        && observed.masquerade_table == topology.uplink.masquerade;
    if !masquerade_as_recorded {
        steps.push(Step::ConfigureMasquerade);
    }
    steps.extend(
        ranges
            .difference(&observed.unreachable)
            .map(|&net| Step::AddUnreachable { net }),
    );
    if topology.mode == Mode::Bridge {
        ensure_bridge(topology, observed, steps);
    }
    steps.extend(
        wanted_addresses
            .iter()
            .filter(|a| !observed.addresses.contains_key(a))
            .map(|a| Step::AddAddress { address: a.clone() }),
    );
}

/// Our bridge renamed back and configured, or made; someone else's is used
/// as it is.
fn ensure_bridge(topology: &Topology, observed: &Observed, steps: &mut Vec<Step>) {
    let name = topology.bridge.clone();
    match observed.links.get(&topology.bridge) {
        Some(ours) => {
            if ours.name != topology.bridge {
                steps.push(Step::RenameLink {
                    ifindex: ours.ifindex,
                    from: ours.name.clone(),
                    to: name.clone(),
                });
            }
            steps.push(Step::ConfigureBridge { name });
        }
        // Someone else's: used as it is.
        None if observed.foreign_links.contains_key(&topology.bridge) => {}
        None => {
            steps.push(Step::CreateBridge { name: name.clone() });
            steps.push(Step::ConfigureBridge { name });
        }
    }
}

/// Each pod's namespace and veth pair, made or renamed back; returns the
/// pods to (re)wire: new ones and those not as the last `up` left them.
fn ensure_pod_links<'t>(
    topology: &'t Topology,
    observed: &Observed,
    steps: &mut Vec<Step>,
) -> BTreeSet<&'t str> {
    let mut rewired = BTreeSet::new();
    for pod in &topology.pods {
        let has_netns = observed.netns.contains(&pod.netns);
        if !has_netns {
            steps.push(Step::CreateNetns {
                netns: pod.netns.clone(),
            });
        }
        let mut fresh = !has_netns;
        match observed.links.get(&pod.host_veth) {
            // A veth whose namespace was missing has its peer elsewhere:
            // not this pod's pair.
            Some(link) if link.is_veth() && has_netns => {
                if link.name != pod.host_veth {
                    steps.push(Step::RenameLink {
                        ifindex: link.ifindex,
                        from: link.name.clone(),
                        to: pod.host_veth.clone(),
                    });
                }
            }
            Some(link) => {
                steps.push(Step::DeleteLink {
                    name: link.name.clone(),
                    ifindex: link.ifindex,
                });
                steps.push(create_veth(pod));
                fresh = true;
            }
            None => {
                steps.push(create_veth(pod));
                fresh = true;
            }
        }
        if fresh || !wired_as_recorded(topology, pod, observed) {
            rewired.insert(pod.name.as_str());
        }
    }
    rewired
}

/// The topology's pods named in `rewired`, in the topology's order.
fn rewired_pods<'a>(
    topology: &'a Topology,
    rewired: &'a BTreeSet<&str>,
) -> impl Iterator<Item = &'a Pod> + 'a {
    topology
        .pods
        .iter()
        .filter(move |p| rewired.contains(p.name.as_str()))
}

/// XDP offloads, bridge ports and the direct pair: what must stand before
/// the programs are (re)attached.
fn make_kernel_paths(
    topology: &Topology,
    observed: &Observed,
    rewired: &BTreeSet<&str>,
    steps: &mut Vec<Step>,
) {
    // Every pod can receive frames XDP redirects as soon as the first XDP
    // program runs: without GRO its eth0 has no NAPI and the kernel drops
    // them (veth_xdp_xmit), so no attach starts before all have it.
    if topology.mode == Mode::Xdp {
        steps.extend(
            topology
                .pods
                .iter()
                .filter(|p| {
                    rewired.contains(p.name.as_str())
                        || !observed.applied.xdp_offloads.contains(&p.name)
                })
                .map(|p| Step::SetXdpOffloads {
                    pod: p.name.clone(),
                }),
        );
    }
    // The paths of a kernel mode (bridge ports, the direct pair) are made
    // while the programs attached now still run: leaving mode tc or xdp,
    // those redirect the pods' frames before the bridge could see them
    // (and before a new port is forwarding), and pods never wait for them.
    if topology.mode == Mode::Bridge {
        steps.extend(rewired_pods(topology, rewired).map(|p| Step::JoinBridge {
            pod: p.name.clone(),
        }));
    }
    if topology.mode == Mode::Pair {
        steps.push(Step::ConfigureDirectPair);
    }
}

/// Programs loaded when not current, and attached to every pod that is
/// rewired or lacks its links.
fn load_and_attach(
    topology: &Topology,
    observed: &Observed,
    rewired: &BTreeSet<&str>,
    steps: &mut Vec<Step>,
) {
    let reload = !observed.programs_current;
    if reload {
        steps.push(Step::LoadPrograms);
    }
    // Attaching waits for an RCU grace period; it runs while the pods are
    // configured. The maps are synced first (see `apply`): programs that
    // did not know a pod would drop its frames as from an unknown veth.
    let attach: Vec<String> = topology
        .pods
        .iter()
        .filter(|p| {
            reload || rewired.contains(p.name.as_str()) || !observed.linked.contains(&p.host_veth)
        })
        .map(|p| p.name.clone())
        .collect();
    if !attach.is_empty() {
        steps.push(Step::AttachPrograms { pods: attach });
    }
}

/// Rewired pods configured (and out of a bridge the mode no longer has),
/// the direct pair gone when unused, the dataplane synced, and what mode
/// xdp set undone.
fn configure_pods(
    topology: &Topology,
    observed: &Observed,
    rewired: &BTreeSet<&str>,
    steps: &mut Vec<Step>,
) {
    // In the topology's order, like everything else.
    steps.extend(rewired_pods(topology, rewired).map(|p| Step::ConfigurePod {
        pod: p.name.clone(),
    }));
    if topology.mode != Mode::Bridge {
        steps.extend(
            rewired_pods(topology, rewired)
                .filter(|p| {
                    observed
                        .links
                        .get(&p.host_veth)
                        .is_some_and(|l| l.controller.is_some())
                })
                .map(|p| Step::LeaveBridge {
                    pod: p.name.clone(),
                }),
        );
    }
    if topology.mode != Mode::Pair && observed.direct_pair {
        steps.push(Step::RemoveDirectPair);
    }
    steps.push(Step::SyncDataplane);
    if topology.mode != Mode::Xdp {
        for pod in &topology.pods {
            if observed.applied.xdp_offloads.contains(&pod.name) {
                steps.push(Step::ResetOffloads {
                    pod: pod.name.clone(),
                });
            }
        }
    }
    if observed.rewire_endpoints {
        steps.push(Step::RewireEndpoints);
    }
}

/// The links the topology keeps: its pods' host veths and, bridged, its
/// bridge.
fn wanted_links(topology: &Topology) -> BTreeSet<&str> {
    let mut wanted: BTreeSet<&str> = topology.pods.iter().map(|p| p.host_veth.as_str()).collect();
    if topology.mode == Mode::Bridge {
        wanted.insert(&topology.bridge);
    }
    wanted
}

/// Routes over links that stay and that no pod wants (any more): the new
/// ones are in place (ConfigurePod) before these go.
fn remove_stale_routes(topology: &Topology, observed: &Observed, steps: &mut Vec<Step>) {
    let wanted_links = wanted_links(topology);
    let wanted_routes: BTreeSet<(&str, IpNet)> = topology
        .pods
        .iter()
        .flat_map(|p| {
            pod_host_routes(topology, p)
                .into_iter()
                .map(move |(dst, _)| (p.host_veth.as_str(), dst))
        })
        .collect();
    for (link, routes) in &observed.routes {
        if !wanted_links.contains(link.as_str()) {
            continue;
        }
        for route in routes {
            if route.kind == RouteKind::Unicast
                && !wanted_routes.contains(&(link.as_str(), route.dst))
            {
                steps.push(Step::RemoveRoute {
                    route: route.clone(),
                });
            }
        }
    }
}

/// Our links, addresses, unreachable ranges and namespaces that the
/// topology no longer wants.
fn remove_unwanted(
    topology: &Topology,
    observed: &Observed,
    ranges: &BTreeSet<IpNet>,
    wanted_addresses: &BTreeSet<LedgerAddress>,
    steps: &mut Vec<Step>,
) {
    let wanted_links = wanted_links(topology);
    for (recorded, link) in &observed.links {
        if !wanted_links.contains(recorded.as_str()) {
            steps.push(Step::DeleteLink {
                name: link.name.clone(),
                ifindex: link.ifindex,
            });
        }
    }
    for (address, present) in &observed.addresses {
        if present.ours && !wanted_addresses.contains(address) {
            steps.push(Step::RemoveAddress {
                address: address.clone(),
                ifindex: present.ifindex,
            });
        }
    }
    steps.extend(
        observed
            .unreachable
            .difference(ranges)
            .map(|&net| Step::RemoveUnreachable { net }),
    );
    let wanted_netns: BTreeSet<&str> = topology.pods.iter().map(|p| p.netns.as_str()).collect();
    // A wanted dead name is revived by CreateNetns; the others go.
    for netns in observed.netns.iter().chain(&observed.dead_netns) {
        if !wanted_netns.contains(netns.as_str()) {
            steps.push(Step::DeleteNetns {
                netns: netns.clone(),
            });
        }
    }
}

/// The last `up` wired this pod as the topology now wants it, and what the
/// host sees of it is what that `up` left: same namespace, same veth, still
/// up with its MTU, MAC, bridge port and host routes.
fn wired_as_recorded(topology: &Topology, pod: &Pod, observed: &Observed) -> bool {
    let (Some(record), Some(link)) = (
        observed.applied.pods.get(&pod.name),
        observed.links.get(&pod.host_veth),
    ) else {
        return false;
    };
    let port_of = match topology.mode {
        Mode::Bridge => match observed.bridge(&topology.bridge) {
            Some(bridge) => Some(bridge.ifindex),
            None => return false,
        },
        _ => None,
    };
    let routes = observed.routes.get(&pod.host_veth);
    let routed = pod_host_routes(topology, pod).iter().all(|(dst, src)| {
        routes.is_some_and(|rs| {
            rs.iter()
                .any(|r| r.dst == *dst && r.prefsrc == *src && r.kind == RouteKind::Unicast)
        })
    });
    record.fingerprint == pod_fingerprint(topology, pod)
        && observed.netns_inodes.get(&pod.netns) == Some(&record.netns_inode)
        && link.ifindex == record.host_ifindex
        && link.up
        && link.mtu == pod.mtu
        && link.mac == pod.gateway_mac
        && link.controller == port_of
        && routed
}

fn create_veth(pod: &Pod) -> Step {
    Step::CreateVeth {
        pod: pod.name.clone(),
        host_veth: pod.host_veth.clone(),
    }
}

/// Steps that remove every object of a topology. Needs no description:
/// everything is in the ledger, so it works after a crash or a partial
/// `up`; nothing that is not the topology's is touched.
pub fn plan_down(observed: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    if observed.cross_node {
        steps.push(Step::RemoveCrossNode);
    }
    if observed.pins {
        steps.push(Step::RemovePins);
    }
    if observed.masquerade_owned {
        steps.push(Step::RemoveMasquerade);
    }
    // Namespaces first: the kernel then destroys their veth pairs in
    // batches, far faster than one deletion (and grace period) per link.
    steps.extend(
        observed
            .netns
            .iter()
            .chain(&observed.dead_netns)
            .map(|n| Step::DeleteNetns { netns: n.clone() }),
    );
    let veths: Vec<u32> = observed
        .links
        .values()
        .filter(|l| l.is_veth())
        .map(|l| l.ifindex)
        .collect();
    if !observed.netns.is_empty() && !veths.is_empty() {
        steps.push(Step::AwaitVethsGone { ifindexes: veths });
    }
    // Whatever is left (the bridge, a veth whose namespace is held open
    // elsewhere); deleting a host-side veth deletes its pod-side peer.
    steps.extend(observed.links.values().map(|l| Step::DeleteLink {
        name: l.name.clone(),
        ifindex: l.ifindex,
    }));
    for (address, present) in &observed.addresses {
        if present.ours {
            steps.push(Step::RemoveAddress {
                address: address.clone(),
                ifindex: present.ifindex,
            });
        }
    }
    steps.extend(
        observed
            .unreachable
            .iter()
            .map(|&net| Step::RemoveUnreachable { net }),
    );
    steps.push(Step::RemoveState);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{applied::AppliedPod, netlink::routes::PROTOCOL};

    fn topology() -> Topology {
        Topology::from_toml(
            "name = \"t\"\npod_cidr = \"10.1.0.0/24\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n",
        )
        .unwrap()
    }

    fn link(name: &str, ifindex: u32, kind: &str) -> LinkState {
        LinkState::for_test(name, ifindex, kind)
    }

    fn host_route(dst: IpAddr, ifindex: u32, src: Option<IpAddr>) -> Route {
        Route {
            dst: dst.into(),
            kind: RouteKind::Unicast,
            oif: Some(ifindex),
            prefsrc: src,
            protocol: PROTOCOL,
            metric: None,
            scope: 253,
        }
    }

    /// What the kernel has after a complete `up` of `t`.
    fn observed_complete(t: &Topology) -> Observed {
        let mut o = Observed::default();
        for (i, p) in t.pods.iter().enumerate() {
            let ifindex = 10 + i as u32;
            o.netns.insert(p.netns.clone());
            o.netns_inodes.insert(p.netns.clone(), 100 + i as u64);
            let mut veth = link(&p.host_veth, ifindex, "veth");
            veth.mac = p.gateway_mac.to_vec();
            veth.mtu = p.mtu;
            o.links.insert(p.host_veth.clone(), veth);
            o.linked.insert(p.host_veth.clone());
            o.routes.insert(
                p.host_veth.clone(),
                pod_host_routes(t, p)
                    .into_iter()
                    .map(|(dst, src)| host_route(dst.addr(), ifindex, src))
                    .collect(),
            );
            o.applied.pods.insert(
                p.name.clone(),
                AppliedPod {
                    fingerprint: pod_fingerprint(t, p),
                    host_ifindex: ifindex,
                    netns_inode: 100 + i as u64,
                },
            );
        }
        for a in node_addresses(t) {
            o.addresses.insert(
                a,
                PresentAddress {
                    ours: true,
                    ifindex: 1,
                },
            );
        }
        o.unreachable = pod_ranges(t);
        o.programs_current = true;
        o.applied.masquerade = Some(masquerade_fingerprint(t));
        o.masquerade_table = true;
        o.masquerade_owned = true;
        o.pins = true;
        o
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    fn up(t: &Topology, o: &Observed) -> Vec<Step> {
        plan_up(t, o).expect("a plan")
    }

    fn lo(address: &str, prefix_len: u8) -> LedgerAddress {
        LedgerAddress {
            device: "lo".into(),
            address: address.parse().unwrap(),
            prefix_len,
        }
    }

    const CLUSTER: &str =
        "name = \"t\"\ncross_node = \"vxlan\"\ncluster_cidr = \"10.244.0.0/16\"\n\
        [[nodes]]\nname = \"n1\"\n[[nodes.pods]]\nname = \"a\"\n[[nodes]]\nname = \"n2\"\n";

    fn node_part(cross_node: &str) -> Topology {
        let text = CLUSTER.replace("vxlan", cross_node);
        let cluster = crate::model::cluster::Cluster::from_toml(&text).unwrap();
        cluster.node_part("n1").unwrap().0
    }

    #[test]
    fn a_node_converges_its_cross_node_wiring_after_its_pods() {
        let t = node_part("vxlan");
        let steps = up(&t, &observed_complete(&t));
        assert_eq!(
            names(&steps),
            [
                "enable IP forwarding",
                "sync eBPF maps and links",
                "configure routes to the other nodes"
            ]
        );
        // Leaving the cluster removes it; a node's down too, before its state.
        let mut o = observed_complete(&topology());
        o.cross_node = true;
        assert!(up(&topology(), &o).contains(&Step::RemoveCrossNode));
        let down = plan_down(&o);
        assert_eq!(down.first(), Some(&Step::RemoveCrossNode));
        assert_eq!(down.last(), Some(&Step::RemoveState));
        assert!(!plan_down(&observed_complete(&topology())).contains(&Step::RemoveCrossNode));
    }

    #[test]
    fn the_ebpf_cross_node_modes_are_configured_like_the_others() {
        for mode in ["ebpf", "ebpf-vxlan"] {
            let t = node_part(mode);
            let steps = plan_up(&t, &Observed::default()).expect("planned");
            assert!(steps.contains(&Step::ConfigureCrossNode), "{mode}");
        }
    }

    #[test]
    fn fresh_up_creates_everything_then_syncs() {
        let steps = up(&topology(), &Observed::default());
        assert_eq!(
            names(&steps),
            [
                "enable IP forwarding",
                "configure masquerade for traffic leaving the node",
                "add unreachable route for 10.1.0.0/24",
                "add node address 10.1.0.1/32 to lo",
                "create network namespace t-a",
                "create veth t-a <-> eth0 for pod a",
                "create network namespace t-b",
                "create veth t-b <-> eth0 for pod b",
                "load and pin the eBPF programs",
                "attach programs for pods a, b",
                "configure pod a",
                "configure pod b",
                "sync eBPF maps and links",
            ]
        );
    }

    #[test]
    fn second_up_leaves_pods_alone() {
        let t = topology();
        assert_eq!(
            names(&up(&t, &observed_complete(&t))),
            ["enable IP forwarding", "sync eBPF maps and links"]
        );
        let mut flushed = observed_complete(&t);
        flushed.masquerade_table = false;
        assert!(up(&t, &flushed).contains(&Step::ConfigureMasquerade));
    }

    #[test]
    fn an_added_pod_is_the_only_one_wired() {
        let t = topology();
        let o = observed_complete(&t);
        let bigger = Topology::from_toml(
            "name = \"t\"\npod_cidr = \"10.1.0.0/24\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n[[pods]]\nname = \"c\"\n",
        )
        .unwrap();
        let steps = up(&bigger, &o);
        let touched: Vec<&Step> = steps
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::CreateNetns { .. }
                        | Step::CreateVeth { .. }
                        | Step::ConfigurePod { .. }
                        | Step::AttachPrograms { .. }
                        | Step::LoadPrograms
                        | Step::RemoveRoute { .. }
                        | Step::DeleteLink { .. }
                )
            })
            .collect();
        assert_eq!(
            names(&touched.into_iter().cloned().collect::<Vec<_>>()),
            [
                "create network namespace t-c",
                "create veth t-c <-> eth0 for pod c",
                "attach programs for pod c",
                "configure pod c",
            ]
        );
    }

    #[test]
    fn a_pod_is_wired_again_when_what_the_host_sees_differs() {
        let t = topology();
        let rewired = |o: &Observed| {
            let steps = up(&t, o);
            let a = steps.contains(&Step::ConfigurePod { pod: "a".into() })
                && steps.contains(&Step::AttachPrograms {
                    pods: vec!["a".into()],
                });
            let b = steps.contains(&Step::ConfigurePod { pod: "b".into() });
            assert!(!b, "b is untouched: {steps:?}");
            a
        };
        let complete = observed_complete(&t);
        assert!(!rewired(&complete));
        let mut unlinked = complete.clone();
        unlinked.linked.remove("t-a");
        let steps = up(&t, &unlinked);
        assert!(steps.contains(&Step::AttachPrograms {
            pods: vec!["a".into()]
        }));
        assert!(!steps.contains(&Step::ConfigurePod { pod: "a".into() }));
        type Change = (&'static str, fn(&mut Observed));
        let changes: [Change; 8] = [
            ("veth recreated", |o| {
                o.links.get_mut("t-a").unwrap().ifindex = 99
            }),
            ("namespace recreated", |o| {
                o.netns_inodes.insert("t-a".into(), 999);
            }),
            ("veth down", |o| o.links.get_mut("t-a").unwrap().up = false),
            ("mtu changed", |o| {
                o.links.get_mut("t-a").unwrap().mtu = 9000
            }),
            ("mac changed", |o| {
                o.links.get_mut("t-a").unwrap().mac = vec![2; 6]
            }),
            ("never recorded", |o| {
                o.applied.pods.remove("a");
            }),
            ("host route flushed", |o| {
                o.routes.remove("t-a");
            }),
            ("host route with another source", |o| {
                o.routes.get_mut("t-a").unwrap()[0].prefsrc = Some("10.1.0.9".parse().unwrap())
            }),
        ];
        for (what, change) in changes {
            let mut o = complete.clone();
            change(&mut o);
            assert!(rewired(&o), "{what}");
        }
    }

    #[test]
    fn changed_programs_are_attached_everywhere_without_rewiring_pods() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.programs_current = false;
        let steps = up(&t, &o);
        assert!(steps.contains(&Step::LoadPrograms));
        assert!(!steps.iter().any(|s| matches!(s, Step::ConfigurePod { .. })));
        assert!(steps.contains(&Step::AttachPrograms {
            pods: vec!["a".into(), "b".into()]
        }));
    }

    #[test]
    fn entering_xdp_sets_offloads_of_every_pod_before_attaching() {
        let t = topology();
        let mut o = observed_complete(&t);
        let mut x = t.clone();
        x.mode = Mode::Xdp;
        o.programs_current = false;
        o.linked.clear();
        let steps = up(&x, &o);
        let pos = |s: &Step| steps.iter().position(|x| x == s).unwrap();
        let attach = Step::AttachPrograms {
            pods: vec!["a".into(), "b".into()],
        };
        for pod in ["a", "b"] {
            assert!(pos(&Step::SetXdpOffloads { pod: pod.into() }) < pos(&attach));
        }
        // Already set and recorded: nothing to do.
        let mut o = observed_complete(&x);
        o.applied.xdp_offloads.insert("a".into());
        o.applied.xdp_offloads.insert("b".into());
        assert!(!up(&x, &o)
            .iter()
            .any(|s| matches!(s, Step::SetXdpOffloads { .. })));
    }

    #[test]
    fn entering_bridge_makes_every_port_before_readdressing_a_pod() {
        let t = topology();
        let mut b = t.clone();
        b.mode = Mode::Bridge;
        let steps = up(&b, &observed_complete(&t));
        let pos = |s: &Step| steps.iter().position(|x| x == s).unwrap();
        for joins in ["a", "b"] {
            for configured in ["a", "b"] {
                assert!(
                    pos(&Step::JoinBridge { pod: joins.into() })
                        < pos(&Step::ConfigurePod {
                            pod: configured.into()
                        })
                );
            }
        }
    }

    #[test]
    fn leaving_bridge_takes_veths_off_only_once_every_pod_is_configured() {
        let mut b = topology();
        b.mode = Mode::Bridge;
        let mut o = observed_complete(&b);
        for (name, link) in o.links.iter_mut() {
            if name.starts_with("t-") {
                link.controller = Some(99);
            }
        }
        let t = topology();
        let steps = up(&t, &o);
        let pos = |s: &Step| steps.iter().position(|x| x == s).unwrap();
        for leaves in ["a", "b"] {
            for configured in ["a", "b"] {
                assert!(
                    pos(&Step::ConfigurePod {
                        pod: configured.into()
                    }) < pos(&Step::LeaveBridge { pod: leaves.into() })
                );
            }
        }
        // Veths on no bridge have nothing to leave.
        assert!(!up(&t, &observed_complete(&t))
            .iter()
            .any(|s| matches!(s, Step::LeaveBridge { .. })));
    }

    #[test]
    fn leaving_xdp_resets_offloads_after_attaching() {
        let mut t = topology();
        t.mode = Mode::Xdp;
        let mut o = observed_complete(&t);
        o.applied.xdp_offloads.insert("a".into());
        o.applied.xdp_offloads.insert("b".into());
        assert!(!up(&t, &o)
            .iter()
            .any(|s| matches!(s, Step::ResetOffloads { .. })));
        t.mode = Mode::Tc;
        let steps = up(&t, &o);
        let pos = |s: &Step| steps.iter().position(|x| x == s).unwrap();
        let attach = Step::AttachPrograms {
            pods: vec!["a".into(), "b".into()],
        };
        for pod in ["a", "b"] {
            assert!(pos(&attach) < pos(&Step::ResetOffloads { pod: pod.into() }));
        }
    }

    #[test]
    fn half_made_pod_is_finished() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.links.remove("t-b");
        let steps = up(&t, &o);
        assert!(steps.contains(&Step::CreateVeth {
            pod: "b".into(),
            host_veth: "t-b".into()
        }));
        assert!(!steps.iter().any(|s| matches!(s, Step::CreateNetns { .. })));
    }

    #[test]
    fn wrong_kind_or_orphaned_veth_is_replaced() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.links.insert("t-a".into(), link("t-a", 10, "dummy"));
        o.netns.remove("t-b");
        let steps = up(&t, &o);
        let delete_a = Step::DeleteLink {
            name: "t-a".into(),
            ifindex: 10,
        };
        let pos = |s: &Step| steps.iter().position(|x| x == s).unwrap();
        assert!(pos(&delete_a) < pos(&create_veth(t.pod("a").unwrap())));
        assert!(steps.contains(&Step::DeleteLink {
            name: "t-b".into(),
            ifindex: 11
        }));
        assert!(steps.contains(&Step::CreateNetns {
            netns: "t-b".into()
        }));
    }

    #[test]
    fn removed_pods_are_deleted_after_the_dataplane_forgets_them() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.netns.insert("t-gone".into());
        o.links.insert("t-gone".into(), link("t-gone", 20, "veth"));
        o.routes.insert(
            "t-gone".into(),
            vec![host_route("10.1.0.9".parse().unwrap(), 20, None)],
        );
        let steps = up(&t, &o);
        let sync = steps
            .iter()
            .position(|s| *s == Step::SyncDataplane)
            .unwrap();
        let del_link = steps
            .iter()
            .position(|s| matches!(s, Step::DeleteLink { name, .. } if name == "t-gone"))
            .unwrap();
        let del_ns = steps
            .iter()
            .position(|s| matches!(s, Step::DeleteNetns { netns } if netns == "t-gone"))
            .unwrap();
        assert!(sync < del_link && sync < del_ns);
        assert!(
            !steps.iter().any(|s| matches!(s, Step::RemoveRoute { .. })),
            "routes go with the link: {steps:?}"
        );
    }

    #[test]
    fn dead_namespace_names_are_revived_or_removed() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.netns.remove("t-a");
        o.dead_netns.insert("t-a".into());
        o.dead_netns.insert("t-old".into());
        let steps = up(&t, &o);
        assert!(steps.contains(&Step::CreateNetns {
            netns: "t-a".into()
        }));
        assert!(steps.contains(&Step::DeleteNetns {
            netns: "t-old".into()
        }));
        assert!(!steps.contains(&Step::DeleteNetns {
            netns: "t-a".into()
        }));
        let down = plan_down(&o);
        assert!(down.contains(&Step::DeleteNetns {
            netns: "t-a".into()
        }));
        assert!(down.contains(&Step::DeleteNetns {
            netns: "t-old".into()
        }));
    }

    #[test]
    fn switching_to_bridge_and_back_moves_the_node_address_and_the_bridge() {
        let mut t = topology();
        let routed = observed_complete(&t);
        t.mode = Mode::Bridge;
        let steps = up(&t, &routed);
        let pos = |s: &Step| steps.iter().position(|x| x == s).unwrap();
        let on_bridge = Step::AddAddress {
            address: LedgerAddress {
                device: "t-br".into(),
                address: t.host_address.into(),
                prefix_len: 24,
            },
        };
        let off_lo = Step::RemoveAddress {
            address: lo("10.1.0.1", 32),
            ifindex: 1,
        };
        assert!(
            pos(&Step::CreateBridge {
                name: "t-br".into()
            }) < pos(&on_bridge)
        );
        assert!(pos(&on_bridge) < pos(&off_lo), "the new address first");
        // Bridged pods have no host routes: the routed ones go, after the
        // pods are on the bridge.
        let route_a = Step::RemoveRoute {
            route: host_route("10.1.0.2".parse().unwrap(), 10, Some(t.host_address.into())),
        };
        assert!(pos(&Step::ConfigurePod { pod: "a".into() }) < pos(&route_a));

        let mut bridged = routed.clone();
        bridged.addresses.clear();
        bridged.routes.clear();
        bridged
            .links
            .insert("t-br".into(), link("t-br", 30, "bridge"));
        assert!(!up(&t, &bridged)
            .iter()
            .any(|s| matches!(s, Step::DeleteLink { .. } | Step::CreateBridge { .. })));
        t.mode = Mode::Tc;
        let back = up(&t, &bridged);
        assert!(back.contains(&Step::AddAddress {
            address: lo("10.1.0.1", 32)
        }));
        assert!(back.contains(&Step::DeleteLink {
            name: "t-br".into(),
            ifindex: 30
        }));
    }

    #[test]
    fn a_bridge_of_someone_else_is_used_but_never_changed_or_deleted() {
        let mut t = topology();
        t.mode = Mode::Bridge;
        t.bridge = "cni0".into();
        let mut o = observed_complete(&t);
        o.addresses.clear();
        let mut cni0 = link("cni0", 40, "bridge");
        cni0.mac = vec![2, 0, 0, 0, 0, 1];
        o.foreign_links.insert(
            "cni0".into(),
            ForeignLink {
                link: cni0.clone(),
                alias: None,
            },
        );
        let steps = up(&t, &o);
        assert!(!steps.iter().any(|s| matches!(
            s,
            Step::CreateBridge { .. } | Step::ConfigureBridge { .. } | Step::DeleteLink { .. }
        )));
        assert!(steps.contains(&Step::AddAddress {
            address: LedgerAddress {
                device: "cni0".into(),
                address: t.host_address.into(),
                prefix_len: 24
            }
        }));
        // Its own address, equal to the node address: used, not ours.
        o.addresses.insert(
            node_addresses(&t).into_iter().next().unwrap(),
            PresentAddress {
                ours: false,
                ifindex: 40,
            },
        );
        assert!(!up(&t, &o)
            .iter()
            .any(|s| matches!(s, Step::AddAddress { .. } | Step::RemoveAddress { .. })));
        // Back to tc: cni0 stays, and so does its address.
        t.mode = Mode::Tc;
        let back = up(&t, &o);
        assert!(!back
            .iter()
            .any(|s| matches!(s, Step::DeleteLink { .. } | Step::RemoveAddress { .. })));
        assert!(!plan_down(&o).iter().any(|s| matches!(
            s,
            Step::DeleteLink { name, .. } if name == "cni0"
        ) || matches!(s, Step::RemoveAddress { .. })));

        // Down, or marked as another topology's: refused in mode bridge.
        t.mode = Mode::Bridge;
        let mut down = o.clone();
        down.foreign_links.get_mut("cni0").unwrap().link.up = false;
        assert!(plan_up(&t, &down).unwrap_err().0.contains("is down"));
        let mut shared = o.clone();
        shared.foreign_links.get_mut("cni0").unwrap().alias = Some("vethctl:other".into());
        let err = plan_up(&t, &shared).unwrap_err().0;
        assert!(
            err.starts_with("bridge:") && err.contains("\"other\""),
            "{err}"
        );
    }

    #[test]
    fn an_interface_that_is_not_a_bridge_is_refused_in_every_mode() {
        for mode in Mode::ALL.into_iter().filter(|&m| m != Mode::Pair) {
            let mut t = topology();
            t.mode = mode;
            t.bridge = "eth0".into();
            let mut o = Observed::default();
            o.foreign_links.insert(
                "eth0".into(),
                ForeignLink {
                    link: link("eth0", 2, "veth"),
                    alias: None,
                },
            );
            let err = plan_up(&t, &o).unwrap_err().0;
            assert!(
                err.starts_with("bridge: \"eth0\"") && err.contains("not a bridge"),
                "{mode}: {err}"
            );
        }
    }

    #[test]
    fn links_routes_and_tables_of_others_are_refused_not_taken_over() {
        let t = topology();
        let mut o = Observed::default();
        o.foreign_links.insert(
            "t-b".into(),
            ForeignLink {
                link: link("t-b", 5, "dummy"),
                alias: None,
            },
        );
        let err = plan_up(&t, &o).unwrap_err().0;
        assert!(err.starts_with("pods[1] (\"b\"): link \"t-b\""), "{err}");

        let mut o = Observed::default();
        let mut theirs = host_route("10.1.0.3".parse().unwrap(), 3, None);
        theirs.protocol = 4;
        o.foreign_routes.push((theirs, "eth1".into()));
        let err = plan_up(&t, &o).unwrap_err().0;
        assert!(err.contains("10.1.0.3/32") && err.contains("eth1"), "{err}");

        let o = Observed {
            masquerade_table: true,
            ..Observed::default()
        };
        let err = plan_up(&t, &o).unwrap_err().0;
        assert!(err.starts_with("uplink.masquerade:"), "{err}");
    }

    #[test]
    fn a_renamed_veth_gets_its_name_back_and_nothing_else() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.links.get_mut("t-b").unwrap().name = "x".into();
        let steps = up(&t, &o);
        assert_eq!(
            names(&steps),
            [
                "enable IP forwarding",
                "rename link x (ifindex 11) back to t-b",
                "sync eBPF maps and links",
            ]
        );
        // The name taken meanwhile by someone else: refused.
        o.foreign_links.insert(
            "t-b".into(),
            ForeignLink {
                link: link("t-b", 50, "dummy"),
                alias: None,
            },
        );
        let err = plan_up(&t, &o).unwrap_err().0;
        assert!(err.contains("now called \"x\""), "{err}");
    }

    #[test]
    fn edits_replace_addresses_and_routes_new_before_old() {
        let t = topology();
        let o = observed_complete(&t);
        let edited = Topology::from_toml(
            "name = \"t\"\npod_cidr = \"10.2.0.0/24\"\nhost_address = \"10.2.0.254\"\n\
             [[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n",
        )
        .unwrap();
        let steps = up(&edited, &o);
        let pos = |s: &Step| {
            steps
                .iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s} in {steps:?}"))
        };
        let new_address = Step::AddAddress {
            address: lo("10.2.0.254", 32),
        };
        let old_address = Step::RemoveAddress {
            address: lo("10.1.0.1", 32),
            ifindex: 1,
        };
        let configure_a = Step::ConfigurePod { pod: "a".into() };
        let old_route_a = Step::RemoveRoute {
            route: host_route(
                "10.1.0.2".parse().unwrap(),
                10,
                Some("10.1.0.1".parse().unwrap()),
            ),
        };
        let new_range = Step::AddUnreachable {
            net: "10.2.0.0/24".parse().unwrap(),
        };
        let old_range = Step::RemoveUnreachable {
            net: "10.1.0.0/24".parse().unwrap(),
        };
        assert!(pos(&new_address) < pos(&configure_a));
        assert!(pos(&configure_a) < pos(&old_route_a));
        assert!(pos(&old_route_a) < pos(&old_address));
        assert!(pos(&new_range) < pos(&configure_a) && pos(&configure_a) < pos(&old_range));
        // Only the one old address is removed, never every labelled one.
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(s, Step::RemoveAddress { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn addresses_and_routes_of_others_are_used_but_never_removed() {
        let t = topology();
        let mut o = Observed::default();
        o.addresses.insert(
            lo("10.1.0.1", 32),
            PresentAddress {
                ours: false,
                ifindex: 1,
            },
        );
        let steps = up(&t, &o);
        assert!(!steps.iter().any(|s| matches!(s, Step::AddAddress { .. })));
        let mut edited = t.clone();
        edited.host_address = "10.1.0.9".parse().unwrap();
        assert!(!up(&edited, &o)
            .iter()
            .any(|s| matches!(s, Step::RemoveAddress { .. })));
        assert!(!plan_down(&o)
            .iter()
            .any(|s| matches!(s, Step::RemoveAddress { .. })));
    }

    #[test]
    fn down_removes_everything_recorded() {
        let t = topology();
        let steps = plan_down(&observed_complete(&t));
        assert_eq!(steps.first(), Some(&Step::RemovePins));
        assert_eq!(steps.last(), Some(&Step::RemoveState));
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(s, Step::DeleteLink { .. }))
                .count(),
            2
        );
        assert!(steps.contains(&Step::RemoveAddress {
            address: lo("10.1.0.1", 32),
            ifindex: 1,
        }));
        assert!(steps.contains(&Step::RemoveUnreachable {
            net: "10.1.0.0/24".parse().unwrap()
        }));
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(s, Step::DeleteNetns { .. }))
                .count(),
            2
        );
        let pos = |f: fn(&Step) -> bool| steps.iter().position(f).unwrap();
        assert!(
            pos(|s| matches!(s, Step::DeleteNetns { .. }))
                < pos(|s| matches!(s, Step::AwaitVethsGone { .. }))
                && pos(|s| matches!(s, Step::AwaitVethsGone { .. }))
                    < pos(|s| matches!(s, Step::DeleteLink { .. })),
            "namespaces go first, then the kernel's own clean-up, then leftovers: {steps:?}"
        );
        // Nothing recorded, nothing removed (a topology that was never up).
        assert_eq!(names(&plan_down(&Observed::default())), ["remove state"]);
    }
}
