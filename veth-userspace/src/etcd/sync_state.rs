//! What the agent's following of its cluster has seen: the nodes known,
//! wired and left out, the last revision, when it was last in sync,
//! whether etcd answered, and counts of errors, events and reconnects.
//! Process-wide, like [`crate::observe::passes`]: the sync writes it,
//! `/metrics` reads it, and it is saved to [`FILE`] under the node's state
//! root for `vethctl status` (removed when the agent leaves). Nothing here
//! exists in an agent without a cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Mutex,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::histogram::{exponential_buckets, Histogram},
};
use serde::{Deserialize, Serialize};

use super::member::Member;
use crate::{
    model::{
        live::Live,
        registry::{LeftOut, NodeRecord, Reason},
    },
    observe::metrics::{counter_family, float_gauge_family, gauge_family},
};

/// The sync state's file in the node's state root.
pub const FILE: &str = "cluster-sync.json";

/// What the agent asks etcd for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// The full read of the cluster's keys.
    Read,
    /// The watch of its keys.
    Watch,
    /// Renewing the node's leases.
    Lease,
}

impl Op {
    const ALL: [Op; 3] = [Op::Read, Op::Watch, Op::Lease];

    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Watch => "watch",
            Op::Lease => "lease",
        }
    }
}

/// One node as the agent last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownNode {
    pub name: String,
    /// Its record is live (its agent runs); else it only holds ranges.
    pub alive: bool,
    pub pod_ranges: Vec<IpNet>,
    pub address: Option<String>,
    /// In this node's dataplane (routes, FDB, maps).
    pub wired: bool,
    /// Why not, when its record is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOut>,
}

/// What `vethctl status` shows of the cluster: [`FILE`]'s content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub cluster: String,
    pub endpoints: String,
    pub node: String,
    pub pod_ranges: Vec<IpNet>,
    pub agent_pid: u32,
    /// etcd's revision the agent's view is at.
    pub revision: i64,
    /// When the agent was last known in sync (Unix seconds).
    pub last_sync: Option<f64>,
    /// Whether etcd answered the agent's last request.
    pub etcd_reachable: bool,
    /// Every other node that is alive or holds a range, by name.
    pub nodes: Vec<KnownNode>,
}

struct State {
    status: SyncStatus,
    started: Instant,
    last_sync: Option<Instant>,
    left_out: BTreeSet<LeftOut>,
    live: usize,
    wired: usize,
    errors: BTreeMap<Op, u64>,
    events: u64,
    reconnects: u64,
    convergence: Histogram,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Runs `f` on the state, if the agent has a cluster, then saves it.
fn update(f: impl FnOnce(&mut State)) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(state) = guard.as_mut() else { return };
    f(state);
    if let Err(e) = save(&state.status) {
        log::warn!("vethctl agent: saving the cluster's sync state: {e:#}");
    }
}

/// Runs `f` on the state without saving it: for a step the sync always
/// follows with one that saves (a convergence, or a failure and the
/// reconnect after it), so that the file (every node known: 145 KB at
/// 1,000 nodes) is not written twice between an event and the dataplane.
fn note(f: impl FnOnce(&mut State)) {
    if let Some(state) = STATE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        f(state);
    }
}

fn path() -> PathBuf {
    crate::state::root().join(FILE)
}

fn save(status: &SyncStatus) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(status)?;
    crate::state::write_atomically(&crate::state::root(), FILE, &json)
}

/// The agent joined `member`'s cluster: the state starts.
pub fn start(member: &Member) {
    let r = &member.record;
    let status = SyncStatus {
        cluster: member.cluster.clone(),
        endpoints: member.etcd.endpoints().to_string(),
        node: r.name.clone(),
        pod_ranges: ranges_of(r),
        agent_pid: std::process::id(),
        revision: 0,
        last_sync: None,
        etcd_reachable: true,
        nodes: Vec::new(),
    };
    let buckets = exponential_buckets(0.001, 2.0, 14);
    *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(State {
        status,
        started: Instant::now(),
        last_sync: None,
        left_out: BTreeSet::new(),
        live: 0,
        wired: 0,
        errors: Op::ALL.into_iter().map(|op| (op, 0)).collect(),
        events: 0,
        reconnects: 0,
        convergence: Histogram::new(buckets),
    });
    update(|_| {});
}

/// The agent left: its state goes, file and all.
pub fn stop() {
    *STATE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    match std::fs::remove_file(path()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!("vethctl agent: removing {}: {e}", path().display())
        }
        _ => {}
    }
}

/// A request of `op` failed: counted, and etcd is taken as unreachable
/// until it answers again.
pub fn failed(op: Op) {
    update(|s| {
        *s.errors.entry(op).or_default() += 1;
        s.status.etcd_reachable = false;
    });
}

/// etcd answered.
pub fn answered() {
    let reachable = STATE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|s| s.status.etcd_reachable);
    if !reachable {
        update(|s| s.status.etcd_reachable = true);
    }
}

/// The agent reads everything again after a failure.
pub fn reconnecting() {
    update(|s| s.reconnects += 1);
}

/// The agent's view is at `revision`; `events` of it were applied. Saved
/// by the convergence that follows.
pub fn at(revision: i64, events: usize) {
    note(|s| {
        s.status.revision = s.status.revision.max(revision);
        s.status.etcd_reachable = true;
        s.events += events as u64;
    });
}

/// etcd said the watch is current at `revision` (a quiet cluster's
/// progress notification): in sync, with nothing to apply.
pub fn current(revision: i64) {
    update(|s| {
        s.status.revision = s.status.revision.max(revision);
        s.status.etcd_reachable = true;
        stamp_sync(s);
    });
}

fn stamp_sync(s: &mut State) {
    s.last_sync = Some(Instant::now());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    s.status.last_sync = Some(now.as_secs_f64());
}

/// The dataplane was converged to `live`, leaving out `left_out` (of the
/// records the agent reads) and the unreadable ones; `arrived`: when the
/// watch response that asked for it arrived. A change in what is left out
/// is logged, once.
pub fn converged(live: &Live, left_out: &[LeftOut], arrived: Option<Instant>) {
    let mut all: BTreeSet<LeftOut> = left_out.iter().cloned().collect();
    all.extend(live.unreadable.iter().map(|(node, why)| LeftOut {
        node: node.clone(),
        reason: Reason::Unreadable,
        why: why.clone(),
    }));
    update(|s| {
        log_changes(&s.left_out, &all);
        s.status.nodes = known(live, &s.status.node, &all);
        s.live = live.nodes.len() + live.unreadable.len();
        s.wired = 1 + s.status.nodes.iter().filter(|n| n.wired).count();
        s.left_out = all;
        stamp_sync(s);
        if let Some(arrived) = arrived {
            s.convergence.observe(arrived.elapsed().as_secs_f64());
        }
    });
}

fn log_changes(before: &BTreeSet<LeftOut>, now: &BTreeSet<LeftOut>) {
    for l in now.difference(before) {
        match l.reason {
            Reason::Unwired => {
                log::info!("vethctl agent: node {:?} is not wired: {}", l.node, l.why)
            }
            _ => log::warn!(
                "vethctl agent: node record {:?} is left out ({}): {}; the others are wired",
                l.node,
                l.reason.name(),
                l.why
            ),
        }
    }
    let names: BTreeSet<&str> = now.iter().map(|l| l.node.as_str()).collect();
    for l in before.iter().filter(|l| !names.contains(l.node.as_str())) {
        log::info!(
            "vethctl agent: node record {:?} is no longer left out",
            l.node
        );
    }
}

/// Every other node alive or holding a range, as `me` sees it.
fn known(live: &Live, me: &str, left_out: &BTreeSet<LeftOut>) -> Vec<KnownNode> {
    let mut held: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
    for (range, node) in &live.held {
        held.entry(node.as_str()).or_default().push(*range);
    }
    let faults: BTreeMap<&str, &LeftOut> = left_out.iter().map(|l| (l.node.as_str(), l)).collect();
    let mut names: BTreeSet<&str> = live.nodes.keys().map(String::as_str).collect();
    names.extend(live.unreadable.keys().map(String::as_str));
    names.extend(held.keys());
    names.remove(me);
    names
        .into_iter()
        .map(|name| {
            let record = live.nodes.get(name);
            let left_out = faults.get(name).map(|l| (*l).clone());
            KnownNode {
                name: name.to_string(),
                alive: record.is_some() || live.unreadable.contains_key(name),
                pod_ranges: match record {
                    Some(r) => ranges_of(r),
                    None => held.remove(name).unwrap_or_default(),
                },
                address: record.and_then(|r| r.address).map(|a| a.to_string()),
                wired: record.is_some() && left_out.is_none(),
                left_out,
            }
        })
        .collect()
}

fn ranges_of(r: &NodeRecord) -> Vec<IpNet> {
    let v4 = r.pod_cidr.map(IpNet::V4);
    v4.into_iter().chain(r.pod_cidr6.map(IpNet::V6)).collect()
}

/// The sync's families, when the agent has a cluster.
pub fn encode(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_ref() {
        Some(s) => encode_state(s, e),
        None => Ok(()),
    }
}

fn encode_state(s: &State, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let none = Vec::new;
    let one = |v: u64| [(none(), v)];
    let info = vec![
        ("cluster", s.status.cluster.clone()),
        ("node", s.status.node.clone()),
    ];
    gauge_family(
        e,
        "vethctl_cluster_info",
        "Always 1: the cluster this agent's node is in, and its name there",
        &[(info, 1)],
    )?;
    gauge_family(
        e,
        "vethctl_cluster_nodes_known",
        "Live node records in etcd, this node's included",
        &one(s.live as u64),
    )?;
    gauge_family(
        e,
        "vethctl_cluster_nodes_wired",
        "Nodes in this node's dataplane, itself included",
        &one(s.wired as u64),
    )?;
    let left_out: Vec<_> = Reason::ALL
        .into_iter()
        .map(|r| {
            let n = s.left_out.iter().filter(|l| l.reason == r).count() as u64;
            (vec![("reason", r.name().to_string())], n)
        })
        .collect();
    gauge_family(e, "vethctl_cluster_records_left_out", "Node records not wired, by reason (unwired: no range yet or another underlay network; the others: a record at fault, see the log)", &left_out)?;
    gauge_family(
        e,
        "vethctl_cluster_sync_revision",
        "etcd revision the agent's view of the cluster is at",
        &one(s.status.revision.max(0) as u64),
    )?;
    let age = s.last_sync.unwrap_or(s.started).elapsed().as_secs_f64();
    float_gauge_family(e, "vethctl_cluster_sync_age_seconds", "Seconds since the agent was last known in sync with etcd (a read converged, a watch event applied, or etcd's word that a quiet watch is current); since its start before the first", &[(none(), age)])?;
    gauge_family(
        e,
        "vethctl_cluster_etcd_reachable",
        "1 if etcd answered the agent's last request, else 0",
        &one(u64::from(s.status.etcd_reachable)),
    )?;
    let errors: Vec<_> = s
        .errors
        .iter()
        .map(|(op, n)| (vec![("op", op.name().to_string())], *n))
        .collect();
    counter_family(
        e,
        "vethctl_cluster_etcd_errors",
        "Requests to etcd that failed, by operation (read, watch, lease)",
        &errors,
    )?;
    counter_family(
        e,
        "vethctl_cluster_watch_events_applied",
        "Watch events (key put or deleted) applied to the agent's view",
        &one(s.events),
    )?;
    counter_family(
        e,
        "vethctl_cluster_reconnects",
        "Times the agent read the cluster again after etcd or the dataplane failed",
        &one(s.reconnects),
    )?;
    let family = e.encode_descriptor(
        "vethctl_cluster_convergence_seconds",
        "From a watch response's arrival to this node's dataplane converged to it",
        None,
        s.convergence.metric_type(),
    )?;
    s.convergence.encode(family)
}

/// The sync state the agent of this node saved, if it runs one.
pub fn load() -> anyhow::Result<Option<SyncStatus>> {
    let text = match std::fs::read(path()) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("reading {}", path().display())))
        }
    };
    let status = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e} (written by another vethctl?)", path().display()))?;
    Ok(Some(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::registry::Keys;

    fn state() -> State {
        State {
            status: SyncStatus {
                cluster: "lab".into(),
                endpoints: "unix:///e.sock".into(),
                node: "n1".into(),
                pod_ranges: Vec::new(),
                agent_pid: 1,
                revision: 42,
                last_sync: None,
                etcd_reachable: false,
                nodes: Vec::new(),
            },
            started: Instant::now(),
            last_sync: None,
            left_out: BTreeSet::new(),
            live: 3,
            wired: 2,
            errors: Op::ALL.into_iter().map(|op| (op, 0)).collect(),
            events: 7,
            reconnects: 1,
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }

    #[test]
    fn known_nodes_say_whether_they_are_wired_and_why_not() {
        let k = Keys::new("lab");
        let record = |name: &str| {
            format!(
                r#"{{"name":"{name}","agent":{{"boot":"b","netns":1,"pid":2,"started":"t"}},
                "address":"10.9.0.2","pod_cidr":"10.244.1.0/24"}}"#
            )
        };
        let entries: Vec<crate::model::registry::Entry> = vec![
            (k.node("n1"), record("n1").into_bytes(), 1, 0),
            (k.node("n2"), record("n2").into_bytes(), 2, 0),
            (k.node("bad"), b"{".to_vec(), 3, 0),
            (
                k.range("10.244.7.0/24".parse().unwrap()),
                br#"{"node":"gone"}"#.to_vec(),
                4,
                0,
            ),
        ];
        let live = Live::of(&k, entries);
        let fault = LeftOut {
            node: "bad".into(),
            reason: Reason::Unreadable,
            why: "eof".into(),
        };
        let nodes = known(&live, "n1", &[fault].into_iter().collect());
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["bad", "gone", "n2"]);
        assert!(nodes[0].alive && !nodes[0].wired && nodes[0].left_out.is_some());
        assert!(!nodes[1].alive && !nodes[1].wired);
        assert_eq!(nodes[1].pod_ranges[0].to_string(), "10.244.7.0/24");
        assert!(nodes[2].alive && nodes[2].wired);
    }

    struct Families(State);

    impl std::fmt::Debug for Families {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Families")
        }
    }

    impl prometheus_client::collector::Collector for Families {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_state(&self.0, &mut e)
        }
    }

    #[test]
    fn the_sync_s_families_are_exposed() {
        let s = state();
        s.convergence.observe(0.003);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Families(s)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "vethctl_cluster_info{cluster=\"lab\",node=\"n1\"} 1",
            "vethctl_cluster_nodes_known 3",
            "vethctl_cluster_nodes_wired 2",
            "vethctl_cluster_records_left_out{reason=\"range\"} 0",
            "vethctl_cluster_sync_revision 42",
            "vethctl_cluster_etcd_reachable 0",
            "vethctl_cluster_etcd_errors_total{op=\"lease\"} 0",
            "vethctl_cluster_watch_events_applied_total 7",
            "vethctl_cluster_reconnects_total 1",
            "vethctl_cluster_convergence_seconds_count 1",
            "vethctl_cluster_convergence_seconds_bucket{le=\"0.004\"} 1",
        ] {
            let found = text.lines().any(|l| l.replace("{}", "") == line);
            assert!(found, "{line} missing in\n{text}");
        }
    }
}
