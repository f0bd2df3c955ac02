//! Planning: what `up` and `down` must do, from the desired topology and
//! what the kernel has. Pure: the kernel's side comes in as [`Observed`].
//!
//! Every step is idempotent, so a plan interrupted at any point (a crash, a
//! kill) is finished by the next `up` or cleaned by the next `down`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use crate::{
    applied::{masquerade_fingerprint, pod_fingerprint, Applied},
    model::{Mode, Pod, Topology},
    netlink::links::LinkState,
};

/// The kernel objects of one topology, found by name prefix.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Live named network namespaces with the topology's prefix.
    pub netns: BTreeSet<String>,
    /// Names under /run/netns with the prefix but no namespace mounted
    /// (a kill between creating the file and mounting over it).
    pub dead_netns: BTreeSet<String>,
    /// Host-namespace links with the topology's prefix, by name.
    pub links: BTreeMap<String, LinkState>,
    /// Node addresses on the host's loopback with the topology's label.
    pub host_addresses: BTreeSet<IpAddr>,
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Host-wide IPv4 (and IPv6) forwarding on.
    EnableForwarding,
    /// The topology's nf_tables table: masquerade for traffic leaving the
    /// pod network (or no table, with `uplink.masquerade = false`).
    ConfigureMasquerade,
    /// Remove the topology's nf_tables table.
    RemoveMasquerade,
    /// Mode pair: the direct veth between the two pods, configured.
    ConfigureDirectPair,
    /// Leaving mode pair: delete the direct veth.
    RemoveDirectPair,
    /// The node address on the host's loopback (and no other of ours).
    ConfigureHostAddress,
    /// The bridge of mode bridge, with the node addresses (pods' gateway).
    ConfigureBridge {
        name: String,
    },
    CreateNetns {
        netns: String,
    },
    /// The veth pair, host side here and `eth0` in the pod's namespace.
    CreateVeth {
        pod: String,
        host_veth: String,
    },
    /// Pod side (lo, eth0 address, gateway) and host side (veth up, route).
    ConfigurePod {
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
    /// Leaving mode xdp: the pod's `eth0` back to veth offload defaults,
    /// only once XDP is detached.
    ResetOffloads {
        pod: String,
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
        names: Vec<String>,
    },
    /// Remove a node address from the host's loopback.
    RemoveHostAddress {
        address: IpAddr,
    },
    /// Unpin every program, map and link of the topology.
    RemovePins,
    /// Remove `/run/vethctl/<topology>`.
    RemoveState,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EnableForwarding => write!(f, "enable IP forwarding"),
            Step::ConfigureMasquerade => {
                write!(f, "configure masquerade for traffic leaving the node")
            }
            Step::RemoveMasquerade => write!(f, "remove masquerade rules"),
            Step::ConfigureDirectPair => write!(f, "configure the direct pair between the pods"),
            Step::RemoveDirectPair => write!(f, "remove the direct pair between the pods"),
            Step::ConfigureHostAddress => write!(f, "configure the node address"),
            Step::ConfigureBridge { name } => write!(f, "configure bridge {name}"),
            Step::CreateNetns { netns } => write!(f, "create network namespace {netns}"),
            Step::CreateVeth { pod, host_veth } => {
                write!(f, "create veth {host_veth} <-> eth0 for pod {pod}")
            }
            Step::ConfigurePod { pod } => write!(f, "configure pod {pod}"),
            Step::LoadPrograms => write!(f, "load and pin the eBPF programs"),
            Step::SyncDataplane => write!(f, "sync eBPF maps and links"),
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
            Step::ResetOffloads { pod } => write!(f, "reset offloads of pod {pod}"),
            Step::DeleteLink { name, ifindex } => {
                write!(f, "delete link {name} (ifindex {ifindex})")
            }
            Step::DeleteNetns { netns } => write!(f, "delete network namespace {netns}"),
            Step::AwaitVethsGone { names } => write!(
                f,
                "wait for the kernel to remove {} veth pair(s)",
                names.len()
            ),
            Step::RemoveHostAddress { address } => write!(f, "remove node address {address}"),
            Step::RemovePins => write!(f, "unpin programs, maps and links"),
            Step::RemoveState => write!(f, "remove state"),
        }
    }
}

/// Steps that converge the kernel to `topology`.
///
/// Order matters: pods are created, attached and configured first, then the
/// dataplane is synced (which drops endpoints of removed pods), and only
/// then are removed pods' links deleted, so no endpoint ever points at a
/// deleted interface whose ifindex the kernel could hand to someone else.
/// Only pods that are new or not as the last `up` left them are touched.
pub fn plan_up(topology: &Topology, observed: &Observed) -> Vec<Step> {
    let bridged = topology.mode == Mode::Bridge;
    let mut steps = vec![Step::EnableForwarding];
    let masquerade_as_recorded = observed.applied.masquerade.as_deref()
        == Some(&masquerade_fingerprint(topology))
        && observed.masquerade_table == topology.uplink.masquerade;
    if !masquerade_as_recorded {
        steps.push(Step::ConfigureMasquerade);
    }
    steps.push(if bridged {
        Step::ConfigureBridge {
            name: topology.bridge.clone(),
        }
    } else {
        Step::ConfigureHostAddress
    });
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
            Some(link) if link.is_veth() && has_netns => {}
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
    let reload = !observed.programs_current;
    if reload {
        steps.push(Step::LoadPrograms);
    }
    // Attaching waits for an RCU grace period; it runs while the pods are
    // configured. Until the maps are synced the programs do not know the
    // new pods and pass their frames to the host stack.
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
    // In the topology's order, like everything else.
    steps.extend(
        topology
            .pods
            .iter()
            .filter(|p| rewired.contains(p.name.as_str()))
            .map(|p| Step::ConfigurePod {
                pod: p.name.clone(),
            }),
    );
    if topology.mode == Mode::Pair {
        steps.push(Step::ConfigureDirectPair);
    } else if observed.direct_pair {
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

    let mut wanted_links: BTreeSet<&str> =
        topology.pods.iter().map(|p| p.host_veth.as_str()).collect();
    if bridged {
        wanted_links.insert(&topology.bridge);
    }
    for link in observed.links.values() {
        if !wanted_links.contains(link.name.as_str()) {
            steps.push(Step::DeleteLink {
                name: link.name.clone(),
                ifindex: link.ifindex,
            });
        }
    }
    // On lo in the routed modes; on the bridge in mode bridge.
    let mut wanted_addresses = BTreeSet::new();
    if !bridged {
        wanted_addresses.insert(IpAddr::V4(topology.host_address));
        wanted_addresses.extend(topology.host_address6.map(IpAddr::V6));
    }
    steps.extend(
        observed
            .host_addresses
            .difference(&wanted_addresses)
            .map(|&address| Step::RemoveHostAddress { address }),
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
    steps
}

/// The last `up` wired this pod as the topology now wants it, and what the
/// host sees of it is what that `up` left: same namespace, same veth, still
/// up with its MTU, MAC and bridge port.
fn wired_as_recorded(topology: &Topology, pod: &Pod, observed: &Observed) -> bool {
    let (Some(record), Some(link)) = (
        observed.applied.pods.get(&pod.name),
        observed.links.get(&pod.host_veth),
    ) else {
        return false;
    };
    let port_of = match topology.mode {
        Mode::Bridge => match observed.links.get(&topology.bridge) {
            Some(bridge) => Some(bridge.ifindex),
            None => return false,
        },
        _ => None,
    };
    record.fingerprint == pod_fingerprint(topology, pod)
        && observed.netns_inodes.get(&pod.netns) == Some(&record.netns_inode)
        && link.ifindex == record.host_ifindex
        && link.up
        && link.mtu == pod.mtu
        && link.mac == pod.gateway_mac
        && link.controller == port_of
}

fn create_veth(pod: &Pod) -> Step {
    Step::CreateVeth {
        pod: pod.name.clone(),
        host_veth: pod.host_veth.clone(),
    }
}

/// Steps that remove every object of a topology. Needs no description:
/// everything is found by name, so it works after a crash or a partial `up`.
pub fn plan_down(observed: &Observed) -> Vec<Step> {
    let mut steps = vec![Step::RemovePins, Step::RemoveMasquerade];
    // Namespaces first: the kernel then destroys their veth pairs in
    // batches, far faster than one deletion (and grace period) per link.
    steps.extend(
        observed
            .netns
            .iter()
            .chain(&observed.dead_netns)
            .map(|n| Step::DeleteNetns { netns: n.clone() }),
    );
    let veths: Vec<String> = observed
        .links
        .values()
        .filter(|l| l.is_veth())
        .map(|l| l.name.clone())
        .collect();
    if !observed.netns.is_empty() && !veths.is_empty() {
        steps.push(Step::AwaitVethsGone { names: veths });
    }
    // Whatever is left (the bridge, a veth whose namespace is held open
    // elsewhere); deleting a host-side veth deletes its pod-side peer.
    steps.extend(observed.links.values().map(|l| Step::DeleteLink {
        name: l.name.clone(),
        ifindex: l.ifindex,
    }));
    steps.extend(
        observed
            .host_addresses
            .iter()
            .map(|&address| Step::RemoveHostAddress { address }),
    );
    steps.push(Step::RemoveState);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::applied::AppliedPod;

    fn topology() -> Topology {
        Topology::from_toml(
            "name = \"t\"\npod_cidr = \"10.1.0.0/24\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n",
        )
        .unwrap()
    }

    fn link(name: &str, ifindex: u32, kind: &str) -> LinkState {
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

    /// What the kernel has after a complete `up` of `t`.
    fn observed_complete(t: &Topology) -> Observed {
        let mut o = Observed::default();
        for (i, p) in t.pods.iter().enumerate() {
            let ifindex = 10 + i as u32;
            o.netns.insert(p.netns.clone());
            o.netns_inodes.insert(p.netns.clone(), 100 + i as u64);
            let mut veth = link(&p.host_veth, ifindex, "veth");
            veth.mac = p.gateway_mac.to_vec();
            o.links.insert(p.host_veth.clone(), veth);
            o.linked.insert(p.host_veth.clone());
            o.applied.pods.insert(
                p.name.clone(),
                AppliedPod {
                    fingerprint: pod_fingerprint(t, p),
                    host_ifindex: ifindex,
                    netns_inode: 100 + i as u64,
                },
            );
        }
        o.host_addresses.insert(t.host_address.into());
        o.programs_current = true;
        o.applied.masquerade = Some(masquerade_fingerprint(t));
        o.masquerade_table = true;
        o
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fresh_up_creates_everything_then_syncs() {
        let steps = plan_up(&topology(), &Observed::default());
        assert_eq!(
            names(&steps),
            [
                "enable IP forwarding",
                "configure masquerade for traffic leaving the node",
                "configure the node address",
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
            names(&plan_up(&t, &observed_complete(&t))),
            [
                "enable IP forwarding",
                "configure the node address",
                "sync eBPF maps and links",
            ]
        );
        let mut flushed = observed_complete(&t);
        flushed.masquerade_table = false;
        assert!(plan_up(&t, &flushed).contains(&Step::ConfigureMasquerade));
    }

    #[test]
    fn an_added_pod_is_the_only_one_wired() {
        let t = topology();
        let o = observed_complete(&t);
        let bigger = Topology::from_toml(
            "name = \"t\"\npod_cidr = \"10.1.0.0/24\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n[[pods]]\nname = \"c\"\n",
        )
        .unwrap();
        let steps = plan_up(&bigger, &o);
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
            let steps = plan_up(&t, o);
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
        let steps = plan_up(&t, &unlinked);
        assert!(steps.contains(&Step::AttachPrograms {
            pods: vec!["a".into()]
        }));
        assert!(!steps.contains(&Step::ConfigurePod { pod: "a".into() }));
        type Change = (&'static str, fn(&mut Observed));
        let changes: [Change; 6] = [
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
        let steps = plan_up(&t, &o);
        assert!(steps.contains(&Step::LoadPrograms));
        assert!(!steps.iter().any(|s| matches!(s, Step::ConfigurePod { .. })));
        assert!(steps.contains(&Step::AttachPrograms {
            pods: vec!["a".into(), "b".into()]
        }));
    }

    #[test]
    fn leaving_xdp_resets_offloads_after_attaching() {
        let mut t = topology();
        t.mode = Mode::Xdp;
        let mut o = observed_complete(&t);
        o.applied.xdp_offloads.insert("a".into());
        o.applied.xdp_offloads.insert("b".into());
        assert!(!plan_up(&t, &o)
            .iter()
            .any(|s| matches!(s, Step::ResetOffloads { .. })));
        t.mode = Mode::Tc;
        let steps = plan_up(&t, &o);
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
        let steps = plan_up(&t, &o);
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
        let steps = plan_up(&t, &o);
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
        let steps = plan_up(&t, &o);
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
    }

    #[test]
    fn dead_namespace_names_are_revived_or_removed() {
        let t = topology();
        let mut o = observed_complete(&t);
        o.netns.remove("t-a");
        o.dead_netns.insert("t-a".into());
        o.dead_netns.insert("t-old".into());
        let steps = plan_up(&t, &o);
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
        let steps = plan_up(&t, &routed);
        assert!(steps.contains(&Step::ConfigureBridge {
            name: "t-br".into()
        }));
        assert!(steps.contains(&Step::RemoveHostAddress {
            address: t.host_address.into()
        }));
        let mut bridged = routed.clone();
        bridged.host_addresses.clear();
        bridged
            .links
            .insert("t-br".into(), link("t-br", 30, "bridge"));
        assert!(!plan_up(&t, &bridged)
            .iter()
            .any(|s| matches!(s, Step::DeleteLink { .. })));
        t.mode = Mode::Tc;
        let back = plan_up(&t, &bridged);
        assert!(back.contains(&Step::ConfigureHostAddress));
        assert!(back.contains(&Step::DeleteLink {
            name: "t-br".into(),
            ifindex: 30
        }));
    }

    #[test]
    fn down_removes_everything_found() {
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
        assert!(steps.contains(&Step::RemoveHostAddress {
            address: t.host_address.into()
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
        assert_eq!(
            names(&plan_down(&Observed::default())),
            [
                "unpin programs, maps and links",
                "remove masquerade rules",
                "remove state"
            ]
        );
    }
}
