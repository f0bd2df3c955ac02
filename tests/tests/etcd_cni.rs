//! CNI on a node of a cluster kept in etcd: the list comes from the
//! agent's lease, and the plugin adds pods (and STATUS says ready) only
//! while the node holds it, which it learns from the agent's lease file
//! without talking to etcd. A real etcd (`veth_tests::etcd`), the agent
//! and the plugin in a node namespace, pods in namespaces of their own.
//! Run as root.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use veth_tests::{
    cni::{exec_with, plugin_bin, Pod, Reply, REFERENCE_PLUGINS},
    etcd::TestEtcd,
    expect_pings, expect_success,
    node::TestNode,
    require_root, unique_name, vethctl, wait_until, AddressBlock, ChildGuard, TempDir,
};

/// The liveness TTL the agents here are given, in seconds.
const TTL: u64 = 3;

/// etcd with a cluster's settings stored (`host-gw`, IPv4, room for 8
/// nodes).
fn cluster(dir: &Path) -> TestEtcd {
    let etcd = TestEtcd::start();
    let name = unique_name();
    let file = dir.join("settings.toml");
    let text = format!(
        "name = \"{name}\"\nmode = \"tc\"\ncross_node = \"host-gw\"\n\
         cluster_cidr = \"10.252.0.0/21\"\n"
    );
    std::fs::write(&file, text).unwrap();
    let mut args = vec!["cluster", "init", "-t", file.to_str().unwrap()];
    let endpoints = etcd.args(false);
    args.extend(endpoints.iter().map(String::as_str));
    expect_success(&vethctl(&args, &[], None), "cluster init");
    etcd
}

/// A node namespace whose `eth0` has an address of `block`.
fn node(block: &AddressBlock) -> TestNode {
    let node = TestNode::new();
    let address = format!("{}.1/24", block.cidr.trim_end_matches(".0/24"));
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    node.ip(&["addr", "add", &address, "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node
}

/// Node `n1`'s agent in `node`, writing its list into `conf`.
fn agent(etcd: &TestEtcd, node: &TestNode, conf: &Path) -> ChildGuard {
    let ttl = TTL.to_string();
    let conf = conf.display().to_string();
    let mut args = vec!["agent", "--cluster-node", "n1", "--cni-conf-dir", &conf];
    args.extend(["--liveness-ttl", &ttl]);
    let endpoints = etcd.args(false);
    args.extend(endpoints.iter().map(String::as_str));
    node.spawn_vethctl(&args)
}

/// Our plugin's configuration from the list in `conf`, as the runtime
/// passes it.
fn plugin_conf(conf: &Path) -> Value {
    let text = std::fs::read_to_string(conf.join("10-vethctl.conflist")).expect("the list");
    let list: Value = serde_json::from_str(&text).unwrap();
    let mut ours = list["plugins"][0].clone();
    ours["name"] = list["name"].clone();
    ours["cniVersion"] = list["cniVersion"].clone();
    ours["cniVersions"] = list["cniVersions"].clone();
    ours
}

/// The plugin run in `node` for `command` (of `pod`, if any), with the
/// configuration of the list in `conf`.
fn plugin(node: &TestNode, conf: &Path, command: &str, pod: Option<&Pod>) -> Reply {
    let mut vars = vec![("CNI_COMMAND", command), ("CNI_PATH", REFERENCE_PLUGINS)];
    if let Some(pod) = pod {
        vars.extend([
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_NETNS", pod.netns.path()),
            ("CNI_IFNAME", pod.ifname.as_str()),
        ]);
    }
    let mut conf = plugin_conf(conf);
    if command == "STATUS" {
        // STATUS is 1.1.0's.
        conf["cniVersion"] = "1.1.0".into();
    }
    exec_with(
        node.command(&plugin_bin()),
        &vars,
        conf.to_string().as_bytes(),
    )
}

/// An ADD of `pod` that must work: the pod's IPv4 address, which the node
/// reaches.
fn add_ok(node: &TestNode, conf: &Path, pod: &Pod, what: &str) -> std::net::Ipv4Addr {
    plugin(node, conf, "ADD", Some(pod)).expect_ok(what);
    let ip = pod.ipv4();
    expect_pings(&node.name, ip, 2, what);
    ip
}

/// An ADD of `pod` refused with `code`, its message naming `mentions`:
/// nothing made in the pod (only its loopback) and no address taken.
fn add_refused(node: &TestNode, conf: &Path, pod: &Pod, code: u64, mentions: &[&str]) -> String {
    let msg = plugin(node, conf, "ADD", Some(pod)).expect_error(code, mentions, "ADD");
    let links = pod.netns.ip_json(&["link", "show"]);
    assert_eq!(
        links.len(),
        1,
        "the refused ADD made no interface: {links:?}"
    );
    msg
}

fn wait_ready(node: &TestNode, conf: &Path, within: Duration, what: &str) {
    wait_until(within, what, || {
        conf.join("10-vethctl.conflist").exists() && plugin(node, conf, "STATUS", None).is_ok()
    });
}

fn lease_file(node: &TestNode) -> PathBuf {
    node.state_root()
        .expect("the node's state root")
        .join("cluster-lease.json")
}

/// Before the agent runs (a list left by a previous run), STATUS says not
/// ready and ADD is refused, saying to start it; with it, pods are added;
/// the agent killed -9: refused at once (its PID is gone), the pods made
/// before still reached; back: added again; etcd away for longer than the
/// liveness TTL: refused once the last renewal is older than the TTL;
/// etcd back: added again.
#[test]
fn add_and_status_follow_the_nodes_lease() {
    require_root();
    let dir = TempDir::new("vethctl-etcd-cni");
    let mut etcd = cluster(dir.path());
    let block = AddressBlock::reserve(&unique_name());
    let node = node(&block);
    let conf = dir.path().join("net.d");
    // A previous run: the list written, then the agent stopped.
    let mut first = agent(&etcd, &node, &conf);
    wait_until(Duration::from_secs(15), "the agent's list", || {
        conf.join("10-vethctl.conflist").exists() && lease_file(&node).exists()
    });
    let mark = &plugin_conf(&conf)["cluster"];
    assert_eq!(mark["node"], "n1", "the list names its node: {mark}");
    first.signal(libc::SIGTERM);
    first.expect_exit(Duration::from_secs(10));
    assert!(!lease_file(&node).exists(), "a stopped agent removes it");
    let before = plugin(&node, &conf, "STATUS", None).expect_error(
        50,
        &["node \"n1\"", "agent is not running", "--cluster-node n1"],
        "STATUS before the agent",
    );
    eprintln!("STATUS before the agent: {before}");
    let pods: Vec<Pod> = (0..4).map(|_| Pod::new()).collect();
    add_refused(&node, &conf, &pods[0], 50, &["agent is not running"]);

    let mut agent1 = agent(&etcd, &node, &conf);
    wait_ready(
        &node,
        &conf,
        Duration::from_secs(15),
        "STATUS ready with the agent",
    );
    let ip0 = add_ok(&node, &conf, &pods[0], "ADD with the agent");

    // Killed -9: its PID is gone at once; the node's pods stay reached.
    let pid = agent1.id();
    agent1.signal(libc::SIGKILL);
    agent1.expect_exit(Duration::from_secs(10));
    let pid = format!("PID {pid}");
    let gone = ["is gone", pid.as_str()];
    // Code 51: the network has a pod, which the other nodes stop reaching.
    plugin(&node, &conf, "STATUS", None).expect_error(51, &gone, "STATUS, agent killed");
    add_refused(&node, &conf, &pods[1], 51, &gone);
    expect_pings(&node.name, ip0, 2, "the pod made before, agent killed");

    let _agent2 = agent(&etcd, &node, &conf);
    wait_ready(
        &node,
        &conf,
        Duration::from_secs(15),
        "STATUS ready, agent back",
    );
    add_ok(&node, &conf, &pods[1], "ADD, agent back");

    // etcd away: the agent cannot renew; once the last renewal is older
    // than the TTL (renewed every TTL/3), nothing more is added.
    etcd.kill9();
    let killed = Instant::now();
    assert!(
        plugin(&node, &conf, "STATUS", None).is_ok(),
        "within the TTL of the last renewal the lease is held"
    );
    wait_until(
        Duration::from_secs(TTL + 2),
        "STATUS not ready, etcd away",
        || !plugin(&node, &conf, "STATUS", None).is_ok(),
    );
    let after = killed.elapsed();
    eprintln!("not ready {after:?} after etcd was killed (TTL {TTL} s)");
    assert!(
        after <= Duration::from_secs(TTL + 1),
        "{after:?} > TTL + 1 s"
    );
    let msg = add_refused(&node, &conf, &pods[2], 51, &["last renewed", "TTL of 3 s"]);
    eprintln!("ADD, etcd away: {msg}");
    expect_pings(&node.name, ip0, 2, "a pod while etcd is away");
    etcd.restart();
    wait_ready(
        &node,
        &conf,
        Duration::from_secs(20),
        "STATUS ready, etcd back",
    );
    add_ok(&node, &conf, &pods[2], "ADD, etcd back");
    for pod in &pods[..3] {
        plugin(&node, &conf, "DEL", Some(pod)).expect_ok("DEL");
    }
}

/// A list of the same form without the cluster key (`install-cni
/// --subnet`) is not asked about any lease.
#[test]
fn a_list_without_the_cluster_key_needs_no_lease() {
    require_root();
    let dir = TempDir::new("vethctl-etcd-cni");
    let block = AddressBlock::reserve(&unique_name());
    let node = node(&block);
    let conf = dir.path().join("net.d");
    let name = unique_name();
    let out = node.vethctl(&[
        "install-cni",
        "--bin-dir",
        dir.path().join("bin").to_str().unwrap(),
        "--conf-dir",
        conf.to_str().unwrap(),
        "--plugin",
        plugin_bin().to_str().unwrap(),
        "--name",
        &name,
        "--subnet",
        "10.252.64.0/24",
        "--chain",
        "",
    ]);
    expect_success(&out, "install-cni --subnet");
    assert!(plugin_conf(&conf).get("cluster").is_none());
    plugin(&node, &conf, "STATUS", None).expect_ok("STATUS without a cluster");
    let pod = Pod::new();
    add_ok(&node, &conf, &pod, "ADD without a cluster");
    plugin(&node, &conf, "DEL", Some(&pod)).expect_ok("DEL");
    node.vethctl(&["down", "-n", &name]);
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `install-cni --cluster-node NAME` installs the plugin and leaves the
/// list to the agent, saying what is there; --subnet with it is refused;
/// another node's name while an agent runs here is refused naming it.
#[test]
fn install_cni_on_a_cluster_node_needs_no_subnet() {
    require_root();
    let dir = TempDir::new("vethctl-etcd-cni");
    let etcd = cluster(dir.path());
    let block = AddressBlock::reserve(&unique_name());
    let node = node(&block);
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    let install = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "install-cni",
            "--cluster-node",
            name,
            "--bin-dir",
            bin.to_str().unwrap(),
            "--conf-dir",
            conf.to_str().unwrap(),
        ];
        let plugin = plugin_bin().display().to_string();
        args.extend(["--plugin", plugin.as_str()]);
        args.extend(extra);
        node.vethctl(&args)
    };
    let out = install("n1", &[]);
    expect_success(&out, "install-cni --cluster-node n1");
    let said = stdout(&out);
    assert!(
        said.contains("left to node \"n1\"'s agent") && said.contains("none yet"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(bin.join("veth-cni")).unwrap(),
        std::fs::read(plugin_bin()).unwrap()
    );
    assert!(!conf.join("10-vethctl.conflist").exists(), "no list");

    let refused = install("n1", &["--subnet", "10.252.64.0/24"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--subnet") && stderr(&refused).contains("--cluster-node"),
        "{}",
        stderr(&refused)
    );

    let _agent = agent(&etcd, &node, &conf);
    wait_ready(&node, &conf, Duration::from_secs(15), "STATUS ready");
    let out = install("n1", &[]);
    expect_success(&out, "install-cni --cluster-node n1, agent running");
    let subnet = plugin_conf(&conf)["ipam"]["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let said = stdout(&out);
    assert!(
        said.contains("the agent's list for node \"n1\"") && said.contains(&subnet),
        "{said}"
    );
    let other = install("n2", &[]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("holds node \"n1\""),
        "{}",
        stderr(&other)
    );
    let pod = Pod::new();
    add_ok(&node, &conf, &pod, "ADD after install-cni --cluster-node");
    plugin(&node, &conf, "DEL", Some(&pod)).expect_ok("DEL");
}
