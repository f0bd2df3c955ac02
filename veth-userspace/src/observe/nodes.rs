//! `status` of a cluster's nodes: each node's name, namespace, underlay
//! addresses and pod ranges, and its pods (each saying its `node`). On a
//! node the network's own description says it; on the machine of a lab
//! each node is asked, as an operator would ask it (`vethctl --node NS
//! status --json`).

use serde::Serialize;

use super::table::{render_fitting, row, Width};

use crate::model::{cluster::node_netns, Topology};

/// One node of a cluster.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub cluster: String,
    pub name: String,
    /// The node's network namespace (`null` on a real node: the host).
    pub netns: Option<String>,
    pub cross_node: String,
    /// Underlay addresses with their prefix length.
    pub underlay: Vec<String>,
    pub pod_ranges: Vec<String>,
    /// The pods as `status --json` of the node shows them.
    pub pods: Vec<serde_json::Value>,
    /// Why the node could not be asked, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The node a network is part of, if it is one; `pods` are its pods'
/// statuses.
pub fn of_network(topology: &Topology, pods: Vec<serde_json::Value>) -> Option<NodeStatus> {
    let node = topology.node.as_ref()?;
    let current = crate::node::current();
    Some(NodeStatus {
        cluster: topology.name.clone(),
        name: node.name.clone(),
        netns: current.name().map(str::to_string),
        cross_node: node.cross_node.to_string(),
        underlay: std::iter::once(node.address.to_string())
            .chain(node.address6.map(|a| a.to_string()))
            .collect(),
        pod_ranges: std::iter::once(topology.pod_cidr.to_string())
            .chain(topology.pod_cidr6.map(|c| c.to_string()))
            .collect(),
        pods,
        error: None,
    })
}

/// Every node of the labs `labs` (made from this namespace), asked in
/// turn.
pub fn of_labs(labs: &[String]) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for lab in labs {
        let cluster = match crate::lab::recorded_cluster(lab) {
            Ok(c) => c,
            Err(_) => continue,
        };
        for (node, part) in cluster.nodes.iter().zip(&cluster.parts) {
            let ns = node_netns(&cluster.name, &node.name);
            let args = ["status", "--json", "-n", &cluster.name].map(String::from);
            let asked = crate::lab::run_on_node(&ns, &args, crate::crossnode::Stage::Full);
            let (pods, error) = match asked {
                Ok(o) if o.status.success() => (pods_of(&o.stdout), None),
                Ok(o) => (
                    Vec::new(),
                    Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                ),
                Err(e) => (Vec::new(), Some(format!("{e:#}"))),
            };
            let mut status = of_network(part, pods).expect("a cluster's part is a node");
            status.netns = Some(ns);
            status.error = error;
            out.push(status);
        }
    }
    out
}

/// One node's `stats`, as the node answers them.
#[derive(Debug, Serialize)]
pub struct NodeStats {
    pub cluster: String,
    pub node: String,
    pub netns: String,
    /// The node's `stats --json` report (`null` in a table's run, or when
    /// the node could not be asked).
    pub stats: serde_json::Value,
    /// The node's own table (a table's run).
    #[serde(skip)]
    pub table: String,
    /// Why the node could not be asked, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `stats` of every node of the labs `labs` (made from this namespace),
/// each node asked as an operator would ask it (`vethctl --node NS stats
/// -n LAB`): its JSON report with `json`, else its table at `width`.
pub fn stats_of_labs(labs: &[String], json: bool, width: Width) -> Vec<NodeStats> {
    let mut out = Vec::new();
    for lab in labs {
        let Ok(cluster) = crate::lab::recorded_cluster(lab) else {
            continue;
        };
        for node in &cluster.nodes {
            let ns = node_netns(&cluster.name, &node.name);
            let format = match (json, width) {
                (true, _) => "json",
                (false, Width::Wide) => "wide",
                (false, Width::Fit) => "table",
            };
            let args = ["stats", "-o", format, "-n", &cluster.name].map(String::from);
            let asked = crate::lab::run_on_node(&ns, &args, crate::crossnode::Stage::Full);
            let mut stats = NodeStats {
                cluster: cluster.name.clone(),
                node: node.name.clone(),
                netns: ns,
                stats: serde_json::Value::Null,
                table: String::new(),
                error: None,
            };
            match asked {
                Ok(o) if o.status.success() && json => {
                    stats.stats = serde_json::from_slice(&o.stdout).unwrap_or_default();
                }
                Ok(o) if o.status.success() => {
                    stats.table = String::from_utf8_lossy(&o.stdout).into_owned();
                }
                Ok(o) => stats.error = Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => stats.error = Some(format!("{e:#}")),
            }
            out.push(stats);
        }
    }
    out
}

/// The nodes' stats tables, each under a line naming its node.
pub fn stats_tables(nodes: &[NodeStats]) -> String {
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out += &format!("node {} of {} (netns {}):\n", n.node, n.cluster, n.netns);
        match &n.error {
            Some(e) => out += &format!("  could not be asked: {e}\n"),
            None => out += &n.table,
        }
    }
    out
}

/// The pods of the one network in a node's `status --json`.
fn pods_of(json: &[u8]) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["topologies"][0]["pods"].as_array().cloned())
        .unwrap_or_default()
}

/// The nodes as a table after the pods' (one line per node): by default
/// the IPv4 underlay address and pod range; `-o wide` adds the namespace,
/// every address and range, and why a node could not be asked.
pub fn table(nodes: &[NodeStatus], width: Width) -> String {
    let wide = width == Width::Wide;
    let mut rows = vec![match wide {
        true => row([
            "CLUSTER",
            "NODE",
            "NETNS",
            "PODS",
            "UNDERLAY",
            "POD RANGES",
            "ERROR",
        ]),
        false => row([
            "CLUSTER",
            "NODE",
            "PODS",
            "UNDERLAY",
            "POD RANGE",
            "CROSS-NODE",
        ]),
    }];
    for n in nodes {
        let pods = n.pods.len().to_string();
        let first = |v: &[String]| v.first().cloned().unwrap_or_else(|| "-".into());
        rows.push(match wide {
            true => row([
                &n.cluster,
                &n.name,
                n.netns.as_deref().unwrap_or("-"),
                &pods,
                &n.underlay.join(" "),
                &n.pod_ranges.join(" "),
                n.error.as_deref().unwrap_or("-"),
            ]),
            false => row([
                &n.cluster,
                &n.name,
                &pods,
                &first(&n.underlay),
                &first(&n.pod_ranges),
                &n.cross_node,
            ]),
        });
    }
    render_fitting(&rows, width, 1)
}
