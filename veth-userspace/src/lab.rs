//! A whole cluster on one machine (`vethctl up -t CLUSTER` without
//! `--node`): a switch and one namespace per node (see
//! [`crate::netlink::lab`]), then on each node exactly what an operator
//! runs on a real one, `vethctl up -t CLUSTER --cluster-node NAME`: this binary
//! again, started inside the node's namespace. One code path for the lab
//! and for a real node.
//!
//! The lab records its namespaces in `/run/vethctl/labs/<cluster>/` before
//! it makes them, and removes only those; a node's own objects are removed
//! by `vethctl down` run on that node.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

use crate::{
    apply::UpOptions,
    crossnode::{Stage, STAGE_ENV},
    model::cluster::{host_port, node_netns, switch_netns, Cluster},
    netlink::{lab, netns},
    state::{lock_file, write_atomically, STATE_ROOT},
};

const CLUSTER_FILE: &str = "cluster.toml";
const RECORD_FILE: &str = "lab.json";
const HOME_FILE: &str = "netns";

/// What a lab made.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// Namespaces made (the switch's and the nodes').
    netns: BTreeSet<String>,
    /// Nodes brought up.
    nodes: BTreeSet<String>,
}

/// `/run/vethctl/labs/<cluster>/`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join("labs").join(name)
}

/// Whether a lab called `name` is recorded on this machine, made from
/// this network namespace: inside one of its nodes, `name` is the node's
/// own network.
pub fn is_up(name: &str) -> bool {
    dir(name).join(CLUSTER_FILE).exists()
        && std::fs::read_to_string(dir(name).join(HOME_FILE)).ok() == home()
}

/// Which network namespace the lab was made from (device and inode of
/// `/proc/self/ns/net`).
fn home() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/ns/net").ok()?;
    Some(format!("{}:{}", m.dev(), m.ino()))
}

/// The cluster file a lab was brought up with.
pub fn recorded_cluster(name: &str) -> Result<Cluster> {
    let path = dir(name).join(CLUSTER_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Cluster::from_toml(&text).with_context(|| format!("invalid cluster file {}", path.display()))
}

/// Names of the labs recorded on this machine.
pub fn recorded_labs() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new(STATE_ROOT).join("labs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_up(n))
        .collect();
    names.sort();
    names
}

fn load(name: &str) -> Result<Record> {
    let path = dir(name).join(RECORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is unreadable, and it is what proves which namespaces are this lab's; \
                 restore it, or delete them by hand and then the file",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(name: &str, record: &Record) -> Result<()> {
    write_atomically(&dir(name), RECORD_FILE, &serde_json::to_vec_pretty(record)?)
}

/// Records a namespace before it is made; one that exists unrecorded is
/// someone else's.
fn claim_netns(name: &str, record: &mut Record, ns: &str) -> Result<()> {
    if record.netns.contains(ns) {
        return Ok(());
    }
    if netns::path(ns).exists() {
        bail!(
            "network namespace {ns:?} exists and is not lab {name:?}'s; delete it or rename \
             the cluster"
        );
    }
    record.netns.insert(ns.to_string());
    save(name, record)
}

/// Brings the whole cluster up (or converges it to an edited file): the
/// switch, each node's machine, then each node's part on that node;
/// nodes gone from the file are brought down and their machines removed.
pub async fn up(cluster: &Cluster, text: &str, options: UpOptions) -> Result<()> {
    let name = &cluster.name;
    let _lock = lock(name)?;
    let mut record = load(name)?;
    let previous = is_up(name)
        .then(|| recorded_cluster(name).ok())
        .flatten()
        .map(|c| c.cross_node);
    if dir(name).join(CLUSTER_FILE).exists() && !is_up(name) {
        bail!("lab {name:?} was made from another network namespace; bring it down there");
    }
    let home = home().context("reading /proc/self/ns/net")?;
    write_atomically(&dir(name), HOME_FILE, home.as_bytes())?;
    write_atomically(&dir(name), CLUSTER_FILE, text.as_bytes())?;
    if cluster.underlay.bridge.is_none() {
        let switch = switch_netns(name);
        claim_netns(name, &mut record, &switch)?;
        lab::make_switch(&switch, cluster.underlay.mtu).await?;
    }
    for node in &cluster.nodes {
        let ns = node_netns(name, &node.name);
        claim_netns(name, &mut record, &ns)?;
        lab::plug_node(&machine(cluster, &node.name)).await?;
        if record.nodes.insert(node.name.clone()) {
            save(name, &record)?;
        }
    }
    let file = dir(name).join(CLUSTER_FILE);
    let mut args = vec!["up".to_string(), "-t".into(), path_arg(&file)?];
    if options.repair {
        args.push("--repair".into());
    }
    if options.timings {
        args.push("--timings".into());
    }
    let nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let stages = match previous {
        Some(p) if p != cluster.cross_node => vec![Stage::Prepare, Stage::Route, Stage::Full],
        _ => vec![Stage::Full],
    };
    for stage in stages {
        on_nodes(name, &nodes, stage, |node| {
            let mut a = args.clone();
            a.extend(["--cluster-node".to_string(), node.to_string()]);
            a
        })?;
    }
    let gone: Vec<String> = record
        .nodes
        .iter()
        .filter(|n| cluster.node(n).is_none())
        .cloned()
        .collect();
    for node in gone {
        remove_node(name, &mut record, &node, &switch(cluster)).await?;
    }
    Ok(())
}

/// Where a cluster's nodes are plugged in.
fn switch(cluster: &Cluster) -> lab::Switch {
    match &cluster.underlay.bridge {
        Some(bridge) => lab::Switch::HostBridge {
            bridge: bridge.clone(),
            mark: format!("vethctl-lab:{}", cluster.name),
        },
        None => lab::Switch::Namespace(switch_netns(&cluster.name)),
    }
}

/// The machine of node `node`: its NIC on the switch with its underlay
/// addresses and default routes.
fn machine(cluster: &Cluster, node: &str) -> lab::NodeNic {
    let n = cluster.node(node).expect("a node of the cluster");
    let u = &cluster.underlay;
    let mut addresses = vec![IpNet::new(n.address.into(), u.cidr.prefix_len()).expect("valid")];
    if let (Some(a6), Some(c6)) = (n.address6, u.cidr6) {
        addresses.push(IpNet::new(a6.into(), c6.prefix_len()).expect("valid"));
    }
    lab::NodeNic {
        switch: switch(cluster),
        node_netns: node_netns(&cluster.name, node),
        port: match &u.bridge {
            Some(_) => host_port(&cluster.name, node),
            None => node.to_string(),
        },
        mtu: u.mtu,
        mac: crate::model::cluster::nic_mac(n.address),
        addresses,
        gateways: u
            .gateway
            .map(IpAddr::V4)
            .into_iter()
            .chain(u.gateway6.map(IpAddr::V6))
            .collect(),
    }
}

/// Brings the whole lab down: each node's part on its node, then the
/// machines and the switch.
pub async fn down(name: &str) -> Result<()> {
    let _lock = lock(name)?;
    let mut record = load(name)?;
    let switch = recorded_switch(name);
    let nodes: Vec<String> = record.nodes.iter().cloned().collect();
    for node in nodes {
        remove_node(name, &mut record, &node, &switch).await?;
    }
    for ns in std::mem::take(&mut record.netns) {
        netns::delete(&ns)?;
    }
    std::fs::remove_dir_all(dir(name))
        .with_context(|| format!("removing {}", dir(name).display()))?;
    // The last lab gone: `labs` too (another lab keeps it).
    let _ = std::fs::remove_dir(Path::new(STATE_ROOT).join("labs"));
    Ok(())
}

/// Brings one node of the lab down and removes its machine; the other
/// nodes are not touched (their routes to it stay until their next `up`).
pub async fn down_node(name: &str, node: &str) -> Result<()> {
    let _lock = lock(name)?;
    let mut record = load(name)?;
    if !record.nodes.contains(node) {
        let nodes: Vec<&str> = record.nodes.iter().map(String::as_str).collect();
        bail!(
            "--node: lab {name:?} has no node {node:?} up; its nodes are {}",
            nodes.join(", ")
        );
    }
    remove_node(name, &mut record, node, &recorded_switch(name)).await
}

/// The switch of the lab as recorded (its own, if the record is gone).
fn recorded_switch(name: &str) -> lab::Switch {
    match recorded_cluster(name) {
        Ok(cluster) => switch(&cluster),
        Err(_) => lab::Switch::Namespace(switch_netns(name)),
    }
}

async fn remove_node(
    name: &str,
    record: &mut Record,
    node: &str,
    switch: &lab::Switch,
) -> Result<()> {
    let ns = node_netns(name, node);
    if record.netns.contains(&ns) && netns::exists(&ns) {
        on_nodes(name, &[node], Stage::Full, |_| {
            vec!["down".into(), "-n".into(), name.into()]
        })?;
        netns::delete(&ns)?;
        let port = match switch {
            lab::Switch::HostBridge { .. } => host_port(name, node),
            lab::Switch::Namespace(_) => node.to_string(),
        };
        lab::unplug_node(switch, &port).await?;
    } else if record.netns.contains(&ns) {
        // The node's namespace went without its `down` (its machine
        // died): its devices and programs went with it, but its pods'
        // namespaces, state and pins are on this machine and nobody else
        // will remove them.
        for path in crate::node::forget_dead(&ns)? {
            eprintln!(
                "node {node} of lab {name} is gone: removed its {}",
                path.display()
            );
        }
    }
    record.netns.remove(&ns);
    record.nodes.remove(node);
    save(name, record)
}

fn lock(name: &str) -> Result<std::fs::File> {
    crate::state::private_dir(&dir(name))?;
    lock_file(&dir(name).join(".lock"), true)?.context("a blocking lock returned without the lock")
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}

/// Runs this binary with `args(node)` on each node (inside its namespace),
/// all at once; their output is printed line by line after the node's
/// name. Fails naming every node whose command failed.
fn on_nodes(
    name: &str,
    nodes: &[&str],
    stage: Stage,
    args: impl Fn(&str) -> Vec<String>,
) -> Result<()> {
    let runs: Vec<(String, std::thread::JoinHandle<Result<Output>>)> = nodes
        .iter()
        .map(|node| {
            let ns = node_netns(name, node);
            let a = args(node);
            let handle = std::thread::spawn(move || run_on_node(&ns, &a, stage));
            (node.to_string(), handle)
        })
        .collect();
    let mut failed = Vec::new();
    for (node, handle) in runs {
        let output = handle
            .join()
            .map_err(|_| anyhow!("the thread running node {node:?}'s command panicked"))??;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            println!("{node}: {line}");
        }
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            eprintln!("{node}: {line}");
        }
        if !output.status.success() {
            failed.push(node);
        }
    }
    match failed.as_slice() {
        [] => Ok(()),
        _ => bail!("lab {name:?}: failed on node(s) {}", failed.join(", ")),
    }
}

/// This binary run with `args` for the node in namespace `ns` (`vethctl
/// --node NS …`, the same as `ip netns exec NS vethctl …`).
pub fn run_on_node(ns: &str, args: &[String], stage: Stage) -> Result<Output> {
    let exe = std::env::current_exe().context("finding the vethctl binary")?;
    Command::new(exe)
        .env(STAGE_ENV, stage.name())
        .arg("--node")
        .arg(ns)
        .args(args)
        .output()
        .with_context(|| format!("running vethctl for node namespace {ns:?}"))
}
