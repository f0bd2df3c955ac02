//! Node namespaces on one switch, each with its agent in a cluster kept
//! in a private etcd ([`crate::etcd::TestEtcd`]), and ways to look at
//! what they did: routes, `/metrics` (fetched inside the node, where the
//! agent listens on its loopback), `status`; and keys written straight
//! into etcd with `etcdctl`, as a writer other than an agent would.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    etcd::TestEtcd, expect_success, node::TestNode, run, unique_name, vethctl, wait_until,
    ChildGuard,
};

/// A cluster's settings file in `dir`: `cluster_cidr` 10.251.0.0/21 (eight
/// /24 node ranges), IPv6 too, `cross_node` as given.
pub fn settings(dir: &Path, name: &str, cross_node: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
         cluster_cidr = \"10.251.0.0/21\"\ncluster_cidr6 = \"fd00:10:251::/56\"\n\
         [underlay]\ncidr6 = \"fd00:198:251::/64\"\n"
    );
    let path = dir.join(format!("{name}-{cross_node}.toml"));
    std::fs::write(&path, text).expect("writing the settings");
    path
}

/// `vethctl cluster ARGS` against `etcd`.
pub fn cluster(etcd: &TestEtcd, args: &[&str]) -> Output {
    let mut full: Vec<String> = vec!["cluster".into()];
    full.extend(args.iter().map(|a| a.to_string()));
    full.extend(etcd.args(true));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    vethctl(&full, &[], None)
}

/// `vethctl cluster init` of a fresh cluster: its name.
pub fn init(etcd: &TestEtcd, dir: &Path, cross_node: &str) -> String {
    let name = unique_name();
    let file = settings(dir, &name, cross_node);
    expect_success(
        &cluster(etcd, &["init", "-t", file.to_str().unwrap()]),
        "cluster init",
    );
    name
}

/// Puts `key` = `value` into `etcd` with etcdctl, no lease.
pub fn put(etcd: &TestEtcd, key: &str, value: &str) {
    let endpoints = format!("--endpoints={}", etcd.endpoints);
    run("etcdctl", &[&endpoints, "put", key, value]);
}

/// A switch for node namespaces: a bridge in a namespace of its own.
pub fn switch() -> TestNode {
    let switch = TestNode::new();
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    switch
}

/// A node plugged into `switch` by its `eth0`, at `address` and `address6`.
pub fn node_on_switch(switch: &TestNode, port: &str, address: &str, address6: &str) -> TestNode {
    let node = TestNode::new();
    let (switch_ns, node_ns) = (switch.name.as_str(), node.name.as_str());
    run(
        "ip",
        &[
            "link", "add", port, "netns", switch_ns, "type", "veth", "peer", "name", "eth0",
            "netns", node_ns,
        ],
    );
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    node.ip(&["addr", "add", address, "dev", "eth0"]);
    node.ip(&["addr", "add", address6, "dev", "eth0", "nodad"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node
}

/// Node `name`'s entry in `vethctl cluster status --json`, once it is
/// alive with an IPv4 range: that range.
pub fn wait_alive(etcd: &TestEtcd, name: &str) -> String {
    let mut range = String::new();
    wait_until(
        Duration::from_secs(15),
        &format!("node {name} alive"),
        || {
            let out = cluster(etcd, &["status", "--json"]);
            expect_success(&out, "vethctl cluster status");
            let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
            let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
            let node = nodes.into_iter().find(|n| n["name"] == name);
            match node {
                Some(n) if n["alive"] == true && n["pod_cidr"].is_string() => {
                    range = n["pod_cidr"].as_str().unwrap().to_string();
                    true
                }
                _ => false,
            }
        },
    );
    range
}

/// Node `n<i>` (1-based) at `<base>.<i>`: plugged in, its agent started
/// (liveness TTL 3 s), its range. Fields drop in order: the agent stops
/// before its node goes.
pub struct Member {
    pub agent: ChildGuard,
    pub node: TestNode,
    pub range: String,
}

impl Member {
    pub fn join(etcd: &TestEtcd, switch: &TestNode, dir: &Path, base: &str, i: u32) -> Member {
        let name = format!("n{i}");
        let port = format!("{}p{i}", switch.name);
        let node = node_on_switch(
            switch,
            &port,
            &format!("{base}.{i}/24"),
            &format!("fd00:198:251::{i}/64"),
        );
        let conf = dir.join(&name).display().to_string();
        let mut args = vec![
            "agent",
            "--cluster-node",
            &name,
            "--cni-conf-dir",
            &conf,
            "--liveness-ttl",
            "3",
        ];
        let etcd_args = etcd.args(true);
        args.extend(etcd_args.iter().map(String::as_str));
        let mut agent = node.spawn_vethctl(&args);
        // Its log, shown with a failing test's output (and drained, so
        // that a full pipe never stalls it).
        let stderr = std::io::BufReader::new(agent.take_stderr());
        std::thread::spawn(move || {
            use std::io::BufRead;
            stderr
                .lines()
                .map_while(Result::ok)
                .for_each(|l| eprintln!("[{name}] {l}"));
        });
        let range = wait_alive(etcd, &format!("n{i}"));
        Member { agent, node, range }
    }

    /// The route to `range` in this node (empty: none).
    pub fn route(&self, range: &str) -> String {
        self.node.ip(&["route", "show", range]).trim().to_string()
    }

    /// The agent's `/metrics` (text format), fetched inside the node.
    pub fn metrics(&self) -> String {
        let out = self
            .node
            .command(Path::new("curl"))
            .args(["-sf", "--max-time", "10", "http://127.0.0.1:9435/metrics"])
            .stdin(Stdio::null())
            .output()
            .expect("running curl in the node");
        expect_success(&out, "curl /metrics in the node");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vethctl status --json` of the node.
    pub fn status(&self) -> Value {
        self.node.vethctl_json(&["status"])
    }
}

/// The value of the series `series` (name and labels as exposed; a
/// series without labels may be exposed with `{}`) in `metrics`, if it is
/// there.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("vethctl-etcd-test-{}", unique_name()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
