//! What a topology looks like in the kernel and what its pairs counted:
//! the data behind `vethctl status` and `vethctl stats`, as JSON or tables;
//! rates for `stats --watch`, Prometheus metrics and flow traces.

pub mod cluster_sync;
pub mod lab_metrics;
pub mod metrics;
pub mod node_streams;
pub mod nodes;
pub mod passes;
pub mod rates;
pub mod readiness;
pub mod summary;
pub mod table;
pub mod trace;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use veth_common::{DropReason, Endpoint, PairCounters, PodIdentity, Verdicts};

use self::table::{render_fitting, row, Width};
use crate::{
    dataplane::{
        self,
        health::{self, EndpointMaps},
        Attachment, Hook, Pins,
    },
    model::{format_mac, Topology},
    netlink::{links::LinkState, Host},
};

/// `status --json`: `{"topologies": [...], "unreadable": [...]}`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub topologies: Vec<TopologyStatus>,
    /// The nodes of clusters: this node's, or on the machine of a lab,
    /// each of its nodes (see [`nodes`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<nodes::NodeStatus>,
    /// The cluster kept in etcd this node is in, as its agent last saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster_sync::ClusterSync>,
    /// Recorded topologies whose description cannot be read: the others
    /// are reported all the same.
    pub unreadable: Vec<Unreadable>,
}

/// A recorded topology whose description cannot be read (damaged, or
/// written by another vethctl). It affects that topology only: `status`
/// and `stats` list it apart, the agent exports `vethctl_topology_unreadable`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub name: String,
    /// The recorded description's path.
    pub path: String,
    /// Why it cannot be read.
    pub error: String,
    /// What to do about it.
    pub fix: String,
}

impl Unreadable {
    /// A recorded description at `path` that cannot be read.
    pub fn record(name: &str, path: &std::path::Path, error: &anyhow::Error) -> Unreadable {
        // The outermost context only repeats the path.
        let causes: Vec<String> = error.chain().skip(1).map(|c| c.to_string()).collect();
        Unreadable {
            name: name.to_string(),
            path: path.display().to_string(),
            error: if causes.is_empty() {
                error.to_string()
            } else {
                causes.join(": ")
            },
            fix: format!(
                "repair or replace the file (`vethctl up -t FILE` with the topology's \
                 description records it again), or remove the topology with `vethctl down -n {name}`"
            ),
        }
    }

    /// A topology whose description was read but whose objects could not
    /// be (its pins are gone, after a crashed `up` or a reboot).
    pub fn objects(name: &str, error: &anyhow::Error) -> Unreadable {
        Unreadable {
            name: name.to_string(),
            path: Pins::new(name).shown_root().display().to_string(),
            error: format!("{error:#}"),
            fix: format!(
                "finish it with `vethctl up -t FILE`, or remove it with `vethctl down -n {name}`"
            ),
        }
    }

    /// One line for people: which topology, where, why, what to do.
    pub fn message(&self) -> String {
        format!(
            "topology {:?} cannot be shown ({}): {}; {}",
            self.name, self.path, self.error, self.fix
        )
    }
}

/// The lines below the tables: the topologies that cannot be read, or
/// that none is up.
fn closing_lines(shown: usize, unreadable: &[Unreadable]) -> String {
    if shown == 0 && unreadable.is_empty() {
        return "no topology is up (start one with `vethctl up`)\n".to_string();
    }
    unreadable
        .iter()
        .map(|u| format!("UNREADABLE: {}\n", u.message()))
        .collect()
}

#[derive(Debug, Serialize)]
pub struct TopologyStatus {
    pub name: String,
    pub mode: String,
    pub pod_cidr: String,
    /// `null` for IPv4-only topologies, like `host_address6`.
    pub pod_cidr6: Option<String>,
    pub host_address: String,
    /// The IPv6 node address.
    pub host_address6: Option<String>,
    pub pin_dir: String,
    pub pods: Vec<PodStatus>,
}

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub name: String,
    /// `namespace/name` of the Kubernetes pod behind a runtime's endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s: Option<String>,
    pub netns: String,
    pub ipv4: String,
    /// `null` for IPv4-only topologies.
    pub ipv6: Option<String>,
    /// Interface inside the pod's namespace (`eth0` for a topology's pods).
    pub pod_ifname: String,
    pub pod_ifindex: Option<u32>,
    pub pod_mac: String,
    pub host_veth: String,
    pub host_ifindex: Option<u32>,
    pub host_mac: Option<String>,
    /// The cluster node the pod is on, when the network is a node's part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Both ends as `ip link` shows them: `eth0@if12 <-> demo-web@if2`.
    pub pair: Option<String>,
    /// True when the host side exists and is up.
    pub up: bool,
    /// What the dataplane's maps make of the pod, against the kernel: see
    /// [`EndpointState`].
    pub endpoint: EndpointState,
    pub attached: Vec<Attachment>,
}

/// A pod's endpoint (its entry in the redirect maps) against its veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Frames for the pod are redirected to its veth, which is up.
    Ready,
    /// The veth (or the pod's `eth0`) is down, or the agent marked it so:
    /// frames for the pod go to the host stack.
    Down,
    /// The maps still name, as the pod's, a device that is not its veth
    /// and that the kernel still lists in the DEVMAP: they would redirect
    /// there. Neither deletion nor ifindex reuse leads here (the kernel
    /// drops a gone device's DEVMAP entry); a map edited by hand can.
    /// `vethctl up` repairs.
    Stale,
    /// The veth exists but the maps do not know it (mid-`up`).
    Unmapped,
    /// Neither veth nor endpoint.
    Missing,
}

impl EndpointState {
    /// Judges one pod from its veth (if any), its IPv4 endpoint in the maps
    /// (if any), the identity in that endpoint's slot, and whether the
    /// endpoint's ifindex is in the DEVMAP.
    pub fn of(
        link: Option<&LinkState>,
        endpoint: Option<&Endpoint>,
        slot_identity: Option<&PodIdentity>,
        in_devmap: bool,
    ) -> EndpointState {
        let Some(endpoint) = endpoint else {
            return match link {
                Some(_) => EndpointState::Unmapped,
                None => EndpointState::Missing,
            };
        };
        let live = in_devmap
            && slot_identity
                .is_some_and(|id| id.host_ifindex == endpoint.host_ifindex && id.ready != 0);
        match link {
            Some(l) if l.ifindex == endpoint.host_ifindex => {
                if live && l.up && l.lower_up {
                    EndpointState::Ready
                } else {
                    EndpointState::Down
                }
            }
            _ if live => EndpointState::Stale,
            _ => EndpointState::Missing,
        }
    }

    pub const ALL: [EndpointState; 5] = [
        EndpointState::Ready,
        EndpointState::Down,
        EndpointState::Stale,
        EndpointState::Unmapped,
        EndpointState::Missing,
    ];

    /// Judges `pod` from the topology's [`mapped_endpoints`] and its veth.
    pub(crate) fn of_pod(
        mapped: &MappedEndpoints,
        pod: &crate::model::Pod,
        link: Option<&LinkState>,
    ) -> EndpointState {
        match mapped.get(&pod.ipv4) {
            Some((endpoint, identity, in_devmap)) => {
                EndpointState::of(link, Some(endpoint), Some(identity), *in_devmap)
            }
            None => EndpointState::of(link, None, None, false),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Down => "down",
            EndpointState::Stale => "stale",
            EndpointState::Unmapped => "unmapped",
            EndpointState::Missing => "missing",
        }
    }
}

/// A topology's IPv4 endpoints, each with the identity in its slot and
/// whether its ifindex is in the DEVMAP.
pub(crate) type MappedEndpoints = BTreeMap<std::net::Ipv4Addr, (Endpoint, PodIdentity, bool)>;

/// The IPv4 endpoints of a topology, each with the identity in its slot and
/// whether its ifindex is in the DEVMAP.
pub(crate) fn mapped_endpoints(topology: &str) -> MappedEndpoints {
    let devmap = health::devmap_ifindexes(topology).unwrap_or_default();
    let identities: BTreeMap<u32, PodIdentity> = EndpointMaps::open(topology)
        .ok()
        .flatten()
        .and_then(|maps| maps.pods().ok())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.slot, p.identity))
        .collect();
    health::ipv4_endpoints(topology)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(ip, endpoint)| {
            let identity = *identities.get(&endpoint.slot)?;
            Some((
                ip,
                (endpoint, identity, devmap.contains(&endpoint.host_ifindex)),
            ))
        })
        .collect()
}

/// What runs at each hook of a host-side veth: its pinned links, and where
/// a TC hook has none, the BPF filters a runtime endpoint's programs are
/// attached as (asked only then: a dump per hook and pod would slow
/// `status` of a 1,000-pod topology).
async fn attached(host: &Host, topology: &str, host_veth: &str, ifindex: u32) -> Vec<Attachment> {
    let mut attached = dataplane::attachments(topology, host_veth);
    for a in &mut attached {
        let ingress = match a.hook {
            _ if a.link_id.is_some() => continue,
            h if h == Hook::Ingress.name() => true,
            h if h == Hook::Egress.name() => false,
            _ => continue,
        };
        a.filter_program_ids = host.bpf_filter_programs(ifindex, ingress).await;
        a.program_id = a.filter_program_ids.first().copied();
    }
    attached
}

/// Status of one topology, from its description and the kernel.
pub async fn status(host: &Host, topology: &Topology) -> Result<TopologyStatus> {
    let mut pods = Vec::with_capacity(topology.pods.len());
    let mapped = mapped_endpoints(&topology.name);
    for pod in &topology.pods {
        let link = host.link(&pod.host_veth).await?;
        let pod_ifindex = link.as_ref().and_then(|l| l.peer_ifindex);
        let pair = link
            .as_ref()
            .zip(pod_ifindex)
            .map(|(l, peer)| format!("{}@if{} <-> {}@if{peer}", pod.ifname, l.ifindex, l.name));
        pods.push(PodStatus {
            name: pod.name.clone(),
            k8s: pod.k8s.as_ref().map(|k| k.to_string()),
            netns: crate::netlink::netns::kernel_name(&pod.netns),
            ipv4: pod.ipv4.to_string(),
            ipv6: pod.ipv6.map(|v| v.to_string()),
            pod_ifname: pod.ifname.clone(),
            pod_ifindex,
            pod_mac: format_mac(&pod.mac),
            host_veth: pod.host_veth.clone(),
            host_ifindex: link.as_ref().map(|l| l.ifindex),
            host_mac: link.as_ref().map(|l| format_mac(&l.mac)),
            node: topology.node.as_ref().map(|n| n.name.clone()),
            pair,
            up: link.as_ref().is_some_and(|l| l.up),
            endpoint: EndpointState::of_pod(&mapped, pod, link.as_ref()),
            attached: match &link {
                Some(l) => attached(host, &topology.name, &pod.host_veth, l.ifindex).await,
                None => Vec::new(),
            },
        });
    }
    Ok(TopologyStatus {
        name: topology.name.clone(),
        mode: topology.mode.to_string(),
        pod_cidr: topology.pod_cidr.to_string(),
        pod_cidr6: topology.pod_cidr6.map(|n| n.to_string()),
        host_address: topology.host_address.to_string(),
        host_address6: topology.host_address6.map(|a| a.to_string()),
        pin_dir: Pins::new(&topology.name).shown_root().display().to_string(),
        pods,
    })
}

impl StatusReport {
    pub fn to_table(&self, width: Width) -> String {
        let mut out = String::new();
        for t in &self.topologies {
            out += &t.header(width);
            out += &t.pod_table(width);
            out += &table::wrap(&t.stale_line(), width);
        }
        out + &closing_lines(self.topologies.len(), &self.unreadable)
    }
}

impl TopologyStatus {
    /// The topology's line (two when fitting 80 columns): mode, pod ranges,
    /// node addresses and, wide, its pins.
    fn header(&self, width: Width) -> String {
        let v6 = |v: &Option<String>| v.as_ref().map(|v| format!(" {v}")).unwrap_or_default();
        let (name, cidr6, node6) = (&self.name, v6(&self.pod_cidr6), v6(&self.host_address6));
        let ranges = format!(
            "topology {name}  mode {}  pod_cidr {}{cidr6}",
            self.mode, self.pod_cidr
        );
        let node = format!("node address {}{node6} (on lo)", self.host_address);
        match width {
            Width::Fit => format!("{ranges}\n{node}\n"),
            Width::Wide => format!("{ranges}  {node}  pins {}\n", self.pin_dir),
        }
    }

    /// One row per pod. Fitting 80 columns: name, addresses and endpoint
    /// state (IPv6 only for a dual-stack topology); wide adds the network
    /// namespace, both ends with their peers' ifindexes (the host veth's
    /// name among them), the pod's MAC and the programs attached.
    fn pod_table(&self, width: Width) -> String {
        let dual_stack = self.pod_cidr6.is_some();
        let mut rows = vec![match width {
            Width::Fit => vec!["POD", "IPV4", "IPV6", "ENDPOINT"],
            Width::Wide => vec![
                "POD",
                "NETNS",
                "IPV4",
                "IPV6",
                "POD SIDE",
                "HOST SIDE",
                "POD MAC",
                "ENDPOINT",
                "PROGRAMS INGRESS/EGRESS/XDP",
            ],
        }
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()];
        rows.extend(self.pods.iter().map(|p| p.row(width)));
        if width == Width::Fit && !dual_stack {
            for r in &mut rows {
                r.remove(2);
            }
        }
        render_fitting(&rows, width, 0)
    }

    /// The warning below the table when pods are stale.
    fn stale_line(&self) -> String {
        let stale: Vec<&str> = self
            .pods
            .iter()
            .filter(|p| p.endpoint == EndpointState::Stale)
            .map(|p| p.name.as_str())
            .collect();
        if stale.is_empty() {
            return String::new();
        }
        format!(
            "STALE: the maps would send frames for {} to a device that is not their veth \
             (were they edited by hand?); `vethctl up --repair -t FILE` rewrites them\n",
            stale.join(", ")
        )
    }
}

impl PodStatus {
    fn row(&self, width: Width) -> Vec<String> {
        let name = self.k8s.as_ref().unwrap_or(&self.name);
        let ipv6 = self.ipv6.as_deref().unwrap_or("-");
        let state = self.endpoint.name();
        match width {
            Width::Fit => row([name, &self.ipv4, ipv6, state]),
            Width::Wide => {
                let opt = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
                let host_side = match self.host_ifindex {
                    Some(_) => format!("{}@if{}", self.host_veth, opt(self.pod_ifindex)),
                    None => format!("{} (missing)", self.host_veth),
                };
                row([
                    name,
                    &self.netns,
                    &self.ipv4,
                    ipv6,
                    &format!("{}@if{}", self.pod_ifname, opt(self.host_ifindex)),
                    &host_side,
                    &self.pod_mac,
                    state,
                    &self.programs(),
                ])
            }
        }
    }

    /// `prog 254 / prog 255 / -`: the program at each hook.
    fn programs(&self) -> String {
        let attached = self
            .attached
            .iter()
            .map(|a| match a.program_id {
                Some(id) => format!("prog {id}"),
                None => "-".to_string(),
            })
            .collect::<Vec<_>>()
            .join(" / ");
        if attached.is_empty() {
            "-".to_string()
        } else {
            attached
        }
    }
}

/// `stats --json`: `{"topologies": [...], "unreadable": [...]}`.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub topologies: Vec<TopologyStats>,
    /// The nodes of the labs made from this namespace, each with its own
    /// report (`stats` of a lab, or of everything on a lab's machine).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<nodes::NodeStats>,
    /// As in [`StatusReport::unreadable`].
    pub unreadable: Vec<Unreadable>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopologyStats {
    pub name: String,
    pub pairs: Vec<PairStats>,
    /// Frames dropped because they came from a veth that runs the
    /// topology's program but has no pod (one being removed, or a veth
    /// someone attached the pinned program to).
    pub unknown_veth_drops: u64,
    /// Frames from the node's underlay interface or tunnel device for its
    /// pod ranges that no pod has, dropped (cross-node `ebpf`,
    /// `ebpf-vxlan`: from a stranger, or another VNI); the reasons count in
    /// the network's drops.
    pub underlay_drops: u64,
    /// Whether the network is a node of a cluster: only then has the
    /// table a column for frames sent to other nodes (0 everywhere else).
    #[serde(skip)]
    pub across_nodes: bool,
}

/// One pod's pair. Top-level counters are both directions added up;
/// `from_pod` and `to_pod` split them.
#[derive(Clone, Debug, Serialize)]
pub struct PairStats {
    /// The pod's name: a topology file's, or the Kubernetes pod's name for
    /// a runtime's endpoint (with [`PairStats::namespace`]), or the short
    /// container id when the runtime gave none.
    pub pod: String,
    /// The Kubernetes namespace of a runtime's endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub host_veth: String,
    pub host_ifindex: u32,
    #[serde(flatten)]
    pub total: Verdicts,
    /// Frames the pod sent, by what the program did with them.
    pub from_pod: Verdicts,
    /// Frames delivered into the pod: redirected from other pods, or
    /// passed by the host stack.
    pub to_pod: Verdicts,
    /// Dropped packets by reason.
    pub drops: BTreeMap<&'static str, u64>,
}

/// Joins the summed counters (by host ifindex) with the topology's pods.
/// Pods without counters (not up, or mid-`up`) are left out.
pub fn pair_stats(
    topology: &Topology,
    ifindexes: &BTreeMap<String, u32>,
    counters: &BTreeMap<u32, PairCounters>,
) -> TopologyStats {
    let pairs = topology
        .pods
        .iter()
        .filter_map(|pod| {
            let ifindex = *ifindexes.get(&pod.host_veth)?;
            let c = counters.get(&ifindex)?;
            let mut total = c.from_pod;
            total.accumulate(&c.to_pod);
            let (namespace, name) = k8s_names(pod);
            Some(PairStats {
                pod: name,
                namespace,
                host_veth: pod.host_veth.clone(),
                host_ifindex: ifindex,
                total,
                from_pod: c.from_pod,
                to_pod: c.to_pod,
                drops: DropReason::ALL
                    .iter()
                    .map(|r| (r.name(), c.drop_reasons[*r as usize]))
                    .collect(),
            })
        })
        .collect();
    TopologyStats {
        name: topology.name.clone(),
        pairs,
        unknown_veth_drops: counters
            .get(&dataplane::UNKNOWN_VETH_IFINDEX)
            .map_or(0, |c| c.from_pod.dropped_packets),
        underlay_drops: counters
            .get(&dataplane::UNDERLAY_IFINDEX)
            .map_or(0, |c| c.to_pod.dropped_packets),
        across_nodes: topology.node.is_some(),
    }
}

/// (Kubernetes namespace, pod name) of a pod: the runtime's names where it
/// gave them, else (none, the pod's own name).
pub fn k8s_names(pod: &crate::model::Pod) -> (Option<String>, String) {
    match &pod.k8s {
        Some(k8s) if !k8s.name.is_empty() => (
            Some(crate::model::printable(&k8s.namespace)).filter(|n| !n.is_empty()),
            crate::model::printable(&k8s.name),
        ),
        _ => (None, pod.name.clone()),
    }
}

impl PairStats {
    /// `namespace/name`, or the name.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.pod),
            None => self.pod.clone(),
        }
    }
}

/// Reads one topology's counters from its pinned map.
pub async fn stats(host: &Host, topology: &Topology) -> Result<TopologyStats> {
    let ifindexes = host_ifindexes(host, topology).await?;
    let counters = dataplane::read_counters(&topology.name)?;
    Ok(pair_stats(topology, &ifindexes, &counters))
}

/// Host-side ifindex -> pod name, for naming what the programs report.
pub async fn pods_by_ifindex(host: &Host, topology: &Topology) -> Result<BTreeMap<u32, String>> {
    let ifindexes = host_ifindexes(host, topology).await?;
    Ok(topology
        .pods
        .iter()
        .filter_map(|p| Some((*ifindexes.get(&p.host_veth)?, p.display_name())))
        .collect())
}

/// Host-side veth name -> ifindex for the topology's pods (a runtime's
/// endpoints included), in one netlink dump.
pub async fn host_ifindexes(host: &Host, topology: &Topology) -> Result<BTreeMap<String, u32>> {
    let wanted: std::collections::BTreeSet<&str> =
        topology.pods.iter().map(|p| p.host_veth.as_str()).collect();
    Ok(host
        .links()
        .await?
        .into_iter()
        .filter(|l| wanted.contains(l.name.as_str()))
        .map(|l| (l.name, l.ifindex))
        .collect())
}

impl StatsReport {
    pub fn to_table(&self, width: Width) -> String {
        let mut out = String::new();
        for t in &self.topologies {
            out += &format!("topology {}\n", t.name);
            out += &t.pair_table(width);
            out += &t.drop_lines();
        }
        out + &closing_lines(self.topologies.len(), &self.unreadable)
    }
}

impl TopologyStats {
    /// Two rows per pair, one per direction: packets by verdict (frames
    /// sent to other nodes only on a cluster's node), and wide also the
    /// host veth and bytes.
    fn pair_table(&self, width: Width) -> String {
        let wide = width == Width::Wide;
        type Cell = fn(&PairStats, &str, &Verdicts) -> String;
        let columns: [(&str, bool, Cell); 9] = [
            ("POD", true, |p, _, _| p.display_name()),
            ("HOST VETH", wide, |p, _, _| p.host_veth.clone()),
            ("DIRECTION", true, |_, d, _| d.to_string()),
            ("REDIRECTED PKTS", true, |_, _, v| {
                v.redirected_packets.to_string()
            }),
            ("REDIRECTED BYTES", wide, |_, _, v| {
                v.redirected_bytes.to_string()
            }),
            ("REMOTE PKTS", self.across_nodes, |_, _, v| {
                v.remote_packets.to_string()
            }),
            ("PASSED PKTS", true, |_, _, v| v.passed_packets.to_string()),
            ("PASSED BYTES", wide, |_, _, v| v.passed_bytes.to_string()),
            ("DROPPED PKTS", true, |_, _, v| {
                v.dropped_packets.to_string()
            }),
        ];
        let shown: Vec<_> = columns.iter().filter(|c| c.1).collect();
        let mut rows = vec![shown.iter().map(|c| c.0.to_string()).collect()];
        for p in &self.pairs {
            for (direction, v) in [("from_pod", &p.from_pod), ("to_pod", &p.to_pod)] {
                rows.push(shown.iter().map(|c| (c.2)(p, direction, v)).collect());
            }
        }
        render_fitting(&rows, width, 0)
    }

    /// Drops by reason (only those that happened), drops of frames from
    /// veths without a pod, and of frames from other nodes for no pod.
    fn drop_lines(&self) -> String {
        let mut out = String::new();
        let drops: Vec<String> = self
            .pairs
            .iter()
            .flat_map(|p| {
                p.drops
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(move |(reason, n)| format!("{} {reason} {n}", p.pod))
            })
            .collect();
        if !drops.is_empty() {
            out += &format!("drops by reason: {}\n", drops.join(", "));
        }
        if self.unknown_veth_drops > 0 {
            out += &format!(
                "frames from veths without a pod, dropped: {}\n",
                self.unknown_veth_drops
            );
        }
        if self.underlay_drops > 0 {
            out += &format!(
                "frames from other nodes' side for no pod, dropped: {}\n",
                self.underlay_drops
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_stats_add_directions_and_skip_pods_without_counters() {
        let topology = Topology::default_topology();
        let mut c = PairCounters::default();
        c.from_pod.redirected_packets = 5;
        c.from_pod.redirected_bytes = 500;
        c.to_pod.redirected_packets = 4;
        c.to_pod.passed_packets = 2;
        c.drop_reasons[DropReason::RedirectFailed as usize] = 1;
        let ifindexes = BTreeMap::from([("demo-web".to_string(), 7), ("demo-api".to_string(), 8)]);
        let counters = BTreeMap::from([(7, c)]);
        let stats = pair_stats(&topology, &ifindexes, &counters);
        assert_eq!(stats.pairs.len(), 1);
        let p = &stats.pairs[0];
        assert_eq!((p.pod.as_str(), p.host_ifindex), ("web", 7));
        assert_eq!(p.total.redirected_packets, 9);
        assert_eq!(p.total.passed_packets, 2);
        assert_eq!(p.from_pod.redirected_bytes, 500);
        assert_eq!(p.drops["redirect_failed"], 1);

        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["pairs"][0]["redirected_packets"], 9);
        assert_eq!(json["pairs"][0]["from_pod"]["redirected_packets"], 5);
        assert_eq!(json["pairs"][0]["host_veth"], "demo-web");
    }

    #[test]
    fn endpoint_state_follows_veth_and_slot() {
        let link = |ifindex, up, lower_up| LinkState {
            up,
            lower_up,
            ..LinkState::for_test("t-b", ifindex, "veth")
        };
        let endpoint = Endpoint {
            host_ifindex: 7,
            slot: 1,
            ..Endpoint::default()
        };
        let identity = |host_ifindex, ready| PodIdentity {
            host_ifindex,
            ready,
            ..PodIdentity::default()
        };
        use EndpointState::*;
        let cases = [
            (Some(link(7, true, true)), Some(identity(7, 1)), true, Ready),
            (Some(link(7, true, false)), Some(identity(7, 1)), true, Down),
            (
                Some(link(7, false, false)),
                Some(identity(7, 1)),
                true,
                Down,
            ),
            (Some(link(7, true, true)), Some(identity(7, 0)), true, Down),
            (Some(link(7, true, true)), Some(identity(7, 1)), false, Down),
            (None, Some(identity(7, 1)), true, Stale),
            (Some(link(9, true, true)), Some(identity(7, 1)), true, Stale),
            // Deleted, or its ifindex reused: the kernel dropped the DEVMAP
            // entry, so nothing is redirected there.
            (None, Some(identity(7, 1)), false, Missing),
            (
                Some(link(9, true, true)),
                Some(identity(7, 1)),
                false,
                Missing,
            ),
            (None, Some(identity(0, 0)), true, Missing),
            (None, None, false, Missing),
        ];
        for (i, (link, id, in_devmap, want)) in cases.iter().enumerate() {
            let ep = id.as_ref().map(|_| &endpoint);
            assert_eq!(
                EndpointState::of(link.as_ref(), ep, id.as_ref(), *in_devmap),
                *want,
                "case {i}"
            );
        }
        assert_eq!(
            EndpointState::of(Some(&link(7, true, true)), None, None, false),
            Unmapped
        );
    }

    #[test]
    fn an_unreadable_topology_is_listed_apart_with_path_and_fix() {
        let unreadable = vec![Unreadable::record(
            "broken",
            std::path::Path::new("/run/vethctl/broken/topology.toml"),
            &anyhow::anyhow!("line 9, column 1: expected `=`")
                .context("/run/vethctl/broken/topology.toml is not a valid topology"),
        )];
        let stats = pair_stats(
            &Topology::default_topology(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let report = StatsReport {
            topologies: vec![stats],
            nodes: Vec::new(),
            unreadable: unreadable.clone(),
        };
        let table = report.to_table(Width::Fit);
        assert!(table.starts_with("topology demo\n"), "{table}");
        let last = table.lines().last().unwrap();
        assert!(
            last.starts_with("UNREADABLE: topology \"broken\""),
            "{table}"
        );
        assert!(
            last.contains("/run/vethctl/broken/topology.toml"),
            "{table}"
        );
        assert!(last.contains("line 9, column 1: expected `=`"), "{table}");
        assert_eq!(
            last.matches("/run/vethctl/broken/topology.toml").count(),
            1,
            "the path once: {table}"
        );
        assert!(last.contains("`vethctl down -n broken`"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["unreadable"][0]["name"], "broken");
        assert_eq!(
            json["unreadable"][0]["path"],
            "/run/vethctl/broken/topology.toml"
        );

        let report = StatusReport {
            topologies: Vec::new(),
            nodes: Vec::new(),
            cluster: None,
            unreadable,
        };
        let table = report.to_table(Width::Fit);
        assert!(!table.contains("no topology is up"), "{table}");
        assert!(table.contains("UNREADABLE"), "{table}");
    }

    /// A dual-stack network of a runtime: three pods, one with a long
    /// Kubernetes name, all attached.
    fn cni_status() -> StatusReport {
        let pod = |i: u8, k8s: &str| PodStatus {
            name: format!("0123456789a{i}"),
            k8s: Some(k8s.to_string()),
            netns: format!("/var/run/netns/cni-3f2a9c1e-5b7d-4e21-9a0b-8c6d2e4f{i:04}"),
            ipv4: format!("10.244.1.{}", 100 + i),
            ipv6: Some(format!("fd00:10:244:1::{:x}", 0xa00 + u32::from(i))),
            pod_ifname: "eth0".into(),
            pod_ifindex: Some(2),
            pod_mac: format!("0a:58:0a:f4:01:{:02x}", 100 + i),
            host_veth: format!("veth0123456789{i}"),
            host_ifindex: Some(4000 + u32::from(i)),
            host_mac: Some("ee:ee:ee:ee:ee:ee".into()),
            node: None,
            pair: None,
            up: true,
            endpoint: EndpointState::Ready,
            attached: vec![],
        };
        StatusReport {
            nodes: Vec::new(),
            cluster: None,
            topologies: vec![TopologyStatus {
                name: "k8spods".into(),
                mode: "tc".into(),
                pod_cidr: "10.244.1.0/24".into(),
                pod_cidr6: Some("fd00:10:244:1::/64".into()),
                host_address: "10.244.1.1".into(),
                host_address6: Some("fd00:10:244:1::1".into()),
                pin_dir: "/sys/fs/bpf/vethctl/k8spods".into(),
                pods: vec![
                    pod(1, "default/web-7d4b9c8f6-x2x9z"),
                    pod(2, "kube-system/coredns-5d78c9869d-qj8lt"),
                    pod(
                        3,
                        "monitoring/prometheus-operator-kube-state-metrics-6f8b7c9d5-abcde",
                    ),
                ],
            }],
            unreadable: vec![],
        }
    }

    #[test]
    fn status_fits_80_columns_and_wide_shows_the_rest() {
        let report = cni_status();
        let fit = report.to_table(Width::Fit);
        assert!(table::widest_line(&fit) <= table::FIT, "{fit}");
        for shown in ["IPV6", "fd00:10:244:1::a02", "ready"] {
            assert!(fit.contains(shown), "{shown}: {fit}");
        }
        assert!(
            fit.contains("monitoring/prom") && fit.contains("abcde"),
            "{fit}"
        );
        for wide_only in [
            "NETNS",
            "POD MAC",
            "PROGRAMS",
            "veth0123",
            "pins /sys/fs/bpf",
        ] {
            assert!(!fit.contains(wide_only), "{wide_only}: {fit}");
        }
        let wide = report.to_table(Width::Wide);
        for shown in [
            "NETNS",
            "POD MAC",
            "PROGRAMS INGRESS/EGRESS/XDP",
            "eth0@if4001",
            "veth01234567891@if2",
            "/var/run/netns/cni-3f2a9c1e",
            "monitoring/prometheus-operator-kube-state-metrics-6f8b7c9d5-abcde",
            "pins /sys/fs/bpf/vethctl/k8spods",
        ] {
            assert!(wide.contains(shown), "{shown}: {wide}");
        }
    }

    #[test]
    fn stats_fit_80_columns_and_wide_shows_bytes() {
        let mut topology = Topology::default_topology();
        for (i, pod) in topology.pods.iter_mut().enumerate() {
            pod.k8s = Some(crate::model::K8sPod {
                namespace: "monitoring".into(),
                name: format!("prometheus-operator-kube-state-metrics-6f8b7c9d5-{i}"),
                uid: String::new(),
            });
        }
        let ifindexes: BTreeMap<String, u32> = topology
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.host_veth.clone(), 10 + i as u32))
            .collect();
        let mut c = PairCounters::default();
        c.from_pod.redirected_packets = 123_456_789;
        c.from_pod.redirected_bytes = 98_765_432_100;
        let counters = ifindexes.values().map(|i| (*i, c)).collect();
        let report = StatsReport {
            topologies: vec![pair_stats(&topology, &ifindexes, &counters)],
            nodes: Vec::new(),
            unreadable: vec![],
        };
        let fit = report.to_table(Width::Fit);
        assert!(table::widest_line(&fit) <= table::FIT, "{fit}");
        assert!(fit.contains("123456789") && !fit.contains("BYTES"), "{fit}");
        let wide = report.to_table(Width::Wide);
        assert!(
            wide.contains("98765432100") && wide.contains("HOST VETH"),
            "{wide}"
        );
        assert!(wide.contains("kube-state-metrics-6f8b7c9d5-2"), "{wide}");
    }
}
