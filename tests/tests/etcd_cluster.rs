//! A cluster kept in etcd: a real etcd (Debian's etcd-server, a private
//! process per test, see `veth_tests::etcd`), settings stored with
//! `vethctl cluster init`, and agents in node namespaces (`ip netns exec
//! NODE vethctl agent --cluster … --cluster-node …`) that lease their pod
//! ranges. The node namespaces reach etcd through its unix socket, which
//! lives in the file system every namespace shares. Run as root.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use veth_tests::{
    cni::{exec_with, plugin_bin, Pod as CniPod, REFERENCE_PLUGINS},
    etcd::TestEtcd,
    expect_pings, expect_success,
    node::TestNode,
    require_root, run, unique_name, vethctl, wait_until, AddressBlock, ChildGuard,
};

/// A cluster's settings file in `dir`: `cluster_cidr` with room for
/// `ranges` IPv4 node ranges (/24 each).
fn settings(dir: &Path, name: &str, cross_node: &str, ranges: u32) -> PathBuf {
    let len = 24 - ranges.trailing_zeros();
    let text = format!(
        "# kept in etcd\nname = \"{name}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
         cluster_cidr = \"10.251.0.0/{len}\"\ncluster_cidr6 = \"fd00:10:251::/56\"\n\
         [underlay]\ncidr6 = \"fd00:198:251::/64\"\n"
    );
    let path = dir.join(format!("{name}-{cross_node}.toml"));
    std::fs::write(&path, text).expect("writing the settings");
    path
}

fn cluster(etcd: &TestEtcd, with_cert: bool, args: &[&str]) -> Output {
    let mut full: Vec<String> = vec!["cluster".into()];
    full.extend(args.iter().map(|a| a.to_string()));
    full.extend(etcd.args(with_cert));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    vethctl(&full, &[], None)
}

fn status(etcd: &TestEtcd) -> Value {
    let out = cluster(etcd, true, &["status", "--json"]);
    expect_success(&out, "vethctl cluster status");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn init(etcd: &TestEtcd, file: &Path) -> Output {
    cluster(etcd, true, &["init", "-t", file.to_str().unwrap()])
}

/// A node namespace with an underlay interface `eth0` at `address` (one
/// end of a veth pair whose both ends are in the node: nothing is sent
/// in these tests, and this kernel has no dummy links).
fn node_with_underlay(address: &str) -> TestNode {
    let node = TestNode::new();
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    node.ip(&["addr", "add", address, "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node
}

/// The agent of node `name` in `node`, writing its CNI list into `conf_dir`.
fn agent(etcd: &TestEtcd, node: &TestNode, name: &str, conf_dir: &Path) -> ChildGuard {
    let mut args: Vec<String> = vec!["agent".into(), "--cluster-node".into(), name.into()];
    args.extend(["--cni-conf-dir".into(), conf_dir.display().to_string()]);
    args.extend(etcd.args(true));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.spawn_vethctl(&args)
}

/// Waits until node `name` is alive in `status` with an IPv4 range; that
/// range.
fn wait_alive(etcd: &TestEtcd, name: &str) -> String {
    let mut range = String::new();
    wait_until(
        Duration::from_secs(15),
        &format!("node {name} alive"),
        || {
            let s = status(etcd);
            let node = s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == name)
                .cloned();
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

fn conf_range(conf_dir: &Path) -> String {
    let text = std::fs::read_to_string(conf_dir.join("10-vethctl.conflist")).expect("the list");
    let list: Value = serde_json::from_str(&text).unwrap();
    list["plugins"][0]["ipam"]["subnet"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("vethctl-etcd-test-{}", unique_name()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn init_stores_settings_once_and_refuses_other_ones() {
    require_root();
    let etcd = TestEtcd::start();
    let dir = Scratch::new();
    let name = unique_name();
    let file = settings(&dir.0, &name, "vxlan", 256);
    expect_success(&init(&etcd, &file), "cluster init");
    let again = init(&etcd, &file);
    expect_success(&again, "cluster init again");
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let other = init(&etcd, &settings(&dir.0, &name, "ebpf", 256));
    assert_eq!(other.status.code(), Some(3), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("cross_node = vxlan"),
        "{}",
        stderr(&other)
    );
    let s = status(&etcd);
    assert_eq!(s["cluster"], name.as_str());
    assert_eq!(s["settings"]["cross_node"], "vxlan");
    assert_eq!(s["nodes"], serde_json::json!([]));
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        format!("name = \"{name}\"\ncluster_cidr = \"10.251.0.1/16\"\n"),
    )
    .unwrap();
    let refused = init(&etcd, &bad);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("cluster_cidr: "),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn agents_lease_disjoint_ranges_and_keep_them_across_restarts() {
    require_root();
    let etcd = TestEtcd::start();
    let dir = Scratch::new();
    let block = AddressBlock::reserve(&unique_name());
    let base = block.cidr.trim_end_matches(".0/24");
    expect_success(
        &init(&etcd, &settings(&dir.0, &unique_name(), "host-gw", 256)),
        "init",
    );
    let names = ["n1", "n2", "n3"];
    let nodes: Vec<TestNode> = (1..=3)
        .map(|i| node_with_underlay(&format!("{base}.{i}/24")))
        .collect();
    let confs: Vec<PathBuf> = names.iter().map(|n| dir.0.join(n)).collect();
    let mut agents: Vec<ChildGuard> = (0..3)
        .map(|i| agent(&etcd, &nodes[i], names[i], &confs[i]))
        .collect();
    let mut ranges: Vec<String> = names.iter().map(|n| wait_alive(&etcd, n)).collect();
    let before = ranges.clone();
    for (range, conf) in ranges.iter().zip(&confs) {
        assert_eq!(&conf_range(conf), range, "the list has the leased range");
    }
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ranges:?}");
    let s = status(&etcd);
    let n1 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n1")
        .unwrap();
    assert_eq!(n1["address"], format!("{base}.1"));
    assert!(n1["pod_cidr6"].is_string(), "{n1}");

    // Stopped: its record goes at once, its range stays its own.
    agents[1].signal(libc::SIGTERM);
    assert!(agents[1].expect_exit(Duration::from_secs(10)).success());
    let s = status(&etcd);
    let n2 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n2")
        .unwrap()
        .clone();
    assert_eq!(
        (n2["alive"].clone(), n2["pod_cidr"].clone()),
        (Value::Bool(false), Value::String(ranges[1].clone()))
    );
    agents[1] = agent(&etcd, &nodes[1], "n2", &confs[1]);
    assert_eq!(wait_alive(&etcd, "n2"), ranges[1], "kept across a restart");

    // Killed: the next agent of the same node takes its record over.
    agents[2].signal(libc::SIGKILL);
    agents[2].expect_exit(Duration::from_secs(10));
    let started = Instant::now();
    agents[2] = agent(&etcd, &nodes[2], "n3", &confs[2]);
    ranges[2] = wait_alive(&etcd, "n3");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(conf_range(&confs[2]), ranges[2]);
    assert_eq!(ranges, before, "every node kept its range");
}

#[test]
fn a_second_agent_with_the_same_name_is_refused() {
    require_root();
    let etcd = TestEtcd::start();
    let dir = Scratch::new();
    let block = AddressBlock::reserve(&unique_name());
    let base = block.cidr.trim_end_matches(".0/24");
    expect_success(
        &init(&etcd, &settings(&dir.0, &unique_name(), "vxlan", 256)),
        "init",
    );
    let (a, b) = (
        node_with_underlay(&format!("{base}.1/24")),
        node_with_underlay(&format!("{base}.2/24")),
    );
    let first = agent(&etcd, &a, "n1", &dir.0.join("a"));
    wait_alive(&etcd, "n1");
    let mut second = agent(&etcd, &b, "n1", &dir.0.join("b"));
    let status = second.expect_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(3));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.take_stderr(), &mut err).unwrap();
    assert!(
        err.contains("held by another agent") && err.contains(&format!("PID {}", first.id())),
        "{err}"
    );
    assert!(!dir.0.join("b/10-vethctl.conflist").exists());
}

#[test]
fn an_exhausted_cluster_range_is_a_clear_error() {
    require_root();
    let etcd = TestEtcd::start();
    let dir = Scratch::new();
    let block = AddressBlock::reserve(&unique_name());
    let base = block.cidr.trim_end_matches(".0/24");
    expect_success(
        &init(&etcd, &settings(&dir.0, &unique_name(), "vxlan", 2)),
        "init",
    );
    let nodes: Vec<TestNode> = (1..=3)
        .map(|i| node_with_underlay(&format!("{base}.{i}/24")))
        .collect();
    let _agents: Vec<ChildGuard> = (0..2)
        .map(|i| {
            agent(
                &etcd,
                &nodes[i],
                &format!("n{i}"),
                &dir.0.join(format!("n{i}")),
            )
        })
        .collect();
    wait_alive(&etcd, "n0");
    wait_alive(&etcd, "n1");
    let mut third = agent(&etcd, &nodes[2], "n2", &dir.0.join("n2"));
    let status = third.expect_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut third.take_stderr(), &mut err).unwrap();
    assert!(
        err.contains("cluster_cidr: 10.251.0.0/23 has no free /24"),
        "{err}"
    );
}

#[test]
fn tls_with_client_certificates_and_without() {
    require_root();
    let etcd = TestEtcd::start_tls();
    let dir = Scratch::new();
    let file = settings(&dir.0, &unique_name(), "ebpf", 256);
    expect_success(
        &init(&etcd, &file),
        "init over TLS with a client certificate",
    );
    let started = Instant::now();
    let refused = cluster(&etcd, false, &["status"]);
    assert!(
        !refused.status.success(),
        "no client certificate, yet: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&refused).contains(&etcd.endpoints),
        "{}",
        stderr(&refused)
    );
    assert_eq!(status(&etcd)["settings"]["cross_node"], "ebpf");
}

#[test]
fn etcd_down_is_a_clear_error_within_seconds() {
    require_root();
    let mut etcd = TestEtcd::start();
    let dir = Scratch::new();
    let name = unique_name();
    expect_success(&init(&etcd, &settings(&dir.0, &name, "vxlan", 256)), "init");
    etcd.kill9();
    let started = Instant::now();
    let out = cluster(&etcd, true, &["status"]);
    assert_eq!(out.status.code(), Some(4), "try again: {}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr(&out).contains("etcd at unix://"), "{}", stderr(&out));
    etcd.restart();
    assert_eq!(
        status(&etcd)["cluster"],
        name.as_str(),
        "kept on its data dir"
    );
}

/// The agent does not depend on etcd being up: etcd killed -9 under it
/// leaves it running, and once etcd is back its node is alive with the
/// same range.
#[test]
fn an_agent_rides_out_etcd_going_away() {
    require_root();
    let mut etcd = TestEtcd::start();
    let dir = Scratch::new();
    let block = AddressBlock::reserve(&unique_name());
    let base = block.cidr.trim_end_matches(".0/24");
    expect_success(
        &init(&etcd, &settings(&dir.0, &unique_name(), "vxlan", 256)),
        "init",
    );
    let node = node_with_underlay(&format!("{base}.1/24"));
    let mut running = agent(&etcd, &node, "n1", &dir.0.join("n1"));
    let range = wait_alive(&etcd, "n1");
    etcd.kill9();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        running.try_wait().is_none(),
        "the agent stopped while etcd was away"
    );
    etcd.restart();
    assert_eq!(wait_alive(&etcd, "n1"), range);
    assert!(running.try_wait().is_none());
}

/// An agent frozen past its liveness TTL while etcd stays up (SIGSTOP: a
/// stalled node, a long GC pause) loses its record, as a dead node would;
/// thawed, it registers again under a new lease, with the same range.
#[test]
fn a_frozen_agent_registers_again_when_it_thaws() {
    require_root();
    let etcd = TestEtcd::start();
    let dir = Scratch::new();
    let block = AddressBlock::reserve(&unique_name());
    let base = block.cidr.trim_end_matches(".0/24");
    expect_success(
        &init(&etcd, &settings(&dir.0, &unique_name(), "vxlan", 256)),
        "init",
    );
    let node = node_with_underlay(&format!("{base}.1/24"));
    let mut frozen = agent_ttl(&etcd, &node, "n1", &dir.0.join("n1"), 2);
    let range = wait_alive(&etcd, "n1");
    frozen.signal(libc::SIGSTOP);
    let alive = |etcd: &TestEtcd| {
        status(etcd)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "n1" && n["alive"] == true)
    };
    wait_until(
        Duration::from_secs(6),
        "the frozen node's record gone",
        || !alive(&etcd),
    );
    frozen.signal(libc::SIGCONT);
    let thawed = Instant::now();
    assert_eq!(wait_alive(&etcd, "n1"), range);
    eprintln!("registered again {:?} after SIGCONT", thawed.elapsed());
    assert!(
        thawed.elapsed() < Duration::from_secs(5),
        "registered again only after {:?}",
        thawed.elapsed()
    );
    assert!(frozen.try_wait().is_none());
}

#[test]
fn bad_agent_options_are_refused_naming_the_flag() {
    require_root();
    let etcd = TestEtcd::start();
    let dir = Scratch::new();
    let lock = dir.0.join("agent.lock");
    let lock = lock.to_str().unwrap();
    let cases = [
        ("n1", "vethctl cluster init"),
        ("N1", "--cluster-node"),
        ("n1", "--underlay"),
    ];
    for (i, (node, says)) in cases.into_iter().enumerate() {
        if i == 1 {
            expect_success(
                &init(&etcd, &settings(&dir.0, &unique_name(), "vxlan", 256)),
                "init",
            );
        }
        let mut args = vec!["agent", "--lock-file", lock, "--cluster-node", node];
        args.extend(["--underlay", "nosuch0", "--listen", "127.0.0.1:0"]);
        let etcd_args = etcd.args(true);
        args.extend(etcd_args.iter().map(String::as_str));
        let out = vethctl(&args, &[], None);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
}

/// A switch for node namespaces: a bridge in a namespace of its own.
fn switch() -> TestNode {
    let switch = TestNode::new();
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    switch
}

/// A node plugged into `switch` by its `eth0`, at `address` and `address6`.
fn node_on_switch(switch: &TestNode, port: &str, address: &str, address6: &str) -> TestNode {
    let node = TestNode::new();
    run(
        "ip",
        &[
            "link",
            "add",
            port,
            "netns",
            &switch.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node.name,
        ],
    );
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    node.ip(&["addr", "add", address, "dev", "eth0"]);
    node.ip(&["addr", "add", address6, "dev", "eth0", "nodad"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node
}

/// The agent of node `name` with a liveness TTL of `ttl` seconds.
fn agent_ttl(etcd: &TestEtcd, node: &TestNode, name: &str, conf: &Path, ttl: u32) -> ChildGuard {
    let ttl = ttl.to_string();
    let mut args: Vec<String> = vec!["agent".into(), "--cluster-node".into(), name.into()];
    args.extend(["--cni-conf-dir".into(), conf.display().to_string()]);
    args.extend(["--liveness-ttl".into(), ttl]);
    args.extend(etcd.args(true));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.spawn_vethctl(&args)
}

/// Whether `node` routes `range` (host-gw: through the other node).
fn routes(node: &TestNode, range: &str) -> bool {
    !node.ip(&["route", "show", range]).trim().is_empty()
}

/// A CNI pod on `node`, added with the plugin configuration of the list
/// the node's agent wrote into `conf_dir`: its IPv4 address.
fn cni_pod(node: &TestNode, conf_dir: &Path, pod: &CniPod) -> std::net::IpAddr {
    let text = std::fs::read_to_string(conf_dir.join("10-vethctl.conflist")).expect("the list");
    let list: Value = serde_json::from_str(&text).unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let vars = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", pod.id.as_str()),
        ("CNI_NETNS", pod.netns.path()),
        ("CNI_IFNAME", pod.ifname.as_str()),
        ("CNI_PATH", REFERENCE_PLUGINS),
    ];
    let reply = exec_with(
        node.command(&plugin_bin()),
        &vars,
        conf.to_string().as_bytes(),
    );
    let result = reply.expect_ok("CNI ADD");
    let ip = result["ips"][0]["address"].as_str().expect("an address");
    ip.split('/').next().unwrap().parse().expect("an IP")
}

fn netns_name(pod: &CniPod) -> String {
    Path::new(pod.netns.path())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Node `i` (1-based) of a test: plugged in, its agent started, its range.
/// Fields drop in order: the agent stops before its node goes down.
struct Member {
    agent: ChildGuard,
    node: TestNode,
    conf: PathBuf,
    range: String,
}

fn member(etcd: &TestEtcd, switch: &TestNode, dir: &Path, base: &str, i: u32) -> Member {
    let name = format!("n{i}");
    let node = node_on_switch(
        switch,
        &format!("{}p{i}", switch.name),
        &format!("{base}.{i}/24"),
        &format!("fd00:198:251::{i}/64"),
    );
    let conf = dir.join(&name);
    let agent = agent_ttl(etcd, &node, &name, &conf, 3);
    let range = wait_alive(etcd, &name);
    Member {
        agent,
        node,
        conf,
        range,
    }
}

#[test]
fn agents_wire_host_gw_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("host-gw");
}

#[test]
fn agents_wire_ebpf_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("ebpf");
}

#[test]
fn agents_wire_vxlan_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("vxlan");
}

#[test]
fn agents_wire_ebpf_vxlan_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("ebpf-vxlan");
}

/// Three nodes started with nothing but the settings in etcd wire their
/// pods to each other from the node records: CNI pods ping across nodes;
/// a 4th node joins and is reached; a node whose agent is killed -9 and
/// whose namespace is deleted leaves the others' routes within its
/// liveness TTL (3 s) + 1 s.
fn agents_wire_nodes_from_their_records(cross_node: &str) {
    require_root();
    let mut etcd = TestEtcd::start();
    let dir = Scratch::new();
    let block = AddressBlock::reserve(&unique_name());
    let base = block.cidr.trim_end_matches(".0/24").to_string();
    expect_success(
        &init(&etcd, &settings(&dir.0, &unique_name(), cross_node, 8)),
        "init",
    );
    let switch = switch();
    let mut members: Vec<Member> = (1..=3)
        .map(|i| member(&etcd, &switch, &dir.0, &base, i))
        .collect();
    let wired = |members: &[Member]| {
        members.iter().all(|a| {
            members
                .iter()
                .all(|b| a.range == b.range || routes(&a.node, &b.range))
        })
    };
    wait_until(
        Duration::from_secs(15),
        "every node routes the others' ranges",
        || wired(&members),
    );
    let pods: Vec<CniPod> = (0..4).map(|_| CniPod::new()).collect();
    let mut ips: Vec<std::net::IpAddr> = members
        .iter()
        .zip(&pods)
        .map(|(m, pod)| cni_pod(&m.node, &m.conf, pod))
        .collect();
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        expect_pings(
            &netns_name(&pods[from]),
            ips[to],
            3,
            "pod to pod across nodes",
        );
    }
    // A 4th node joins: the others route its range within a second of its
    // record, and its pod is reached from all.
    members.push(member(&etcd, &switch, &dir.0, &base, 4));
    let joined = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "the 4th node wired everywhere",
        || wired(&members),
    );
    eprintln!(
        "4th node routed by all {:?} after its record was seen",
        joined.elapsed()
    );
    ips.push(cni_pod(&members[3].node, &members[3].conf, &pods[3]));
    for from in &pods[..3] {
        expect_pings(&netns_name(from), ips[3], 3, "pod to the new node's pod");
    }
    // Node 3 dies: agent killed -9, namespace gone.
    let mut dead = members.remove(2);
    // vxlan: its VTEP in the others' FDB, to be removed with the routes.
    let dead_vtep = format!("dst {base}.3 ");
    let fdb = |m: &Member| run("bridge", &["-n", &m.node.name, "fdb", "show"]);
    if cross_node == "vxlan" {
        assert!(members.iter().all(|m| fdb(m).contains(&dead_vtep)));
    }
    dead.agent.signal(libc::SIGKILL);
    dead.agent.expect_exit(Duration::from_secs(10));
    let killed = Instant::now();
    // Known only while the namespace exists: removed by hand below.
    let leftovers = [dead.node.state_root(), dead.node.pins_root()];
    run("ip", &["netns", "del", &dead.node.name]);
    wait_until(
        Duration::from_secs(5),
        "node 3 gone from the others' routes and FDB",
        || {
            members
                .iter()
                .all(|m| !routes(&m.node, &dead.range) && !fdb(m).contains(&dead_vtep))
        },
    );
    let gone = killed.elapsed();
    eprintln!("node 3 gone from every route {gone:?} after its agent was killed");
    assert!(gone <= Duration::from_secs(4), "{gone:?} > TTL 3 s + 1 s");
    expect_pings(
        &netns_name(&pods[0]),
        ips[3],
        3,
        "the others still reach each other",
    );
    // etcd killed -9 for 5 s: nothing changes on the wire; once it is back
    // the agents read again, and a node that joins then is wired.
    etcd.kill9();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        assert!(wired(&members), "a route went while etcd was away");
        expect_pings(&netns_name(&pods[1]), ips[3], 1, "pods while etcd is away");
    }
    etcd.restart();
    members.push(member(&etcd, &switch, &dir.0, &base, 5));
    wait_until(
        Duration::from_secs(20),
        "the 5th node wired after etcd came back",
        || wired(&members),
    );
    let pod5 = CniPod::new();
    let ip5 = cni_pod(&members[3].node, &members[3].conf, &pod5);
    expect_pings(
        &netns_name(&pods[0]),
        ip5,
        3,
        "pod to the node that joined after etcd came back",
    );
    drop(pod5);
    drop(members);
    for dir in leftovers.into_iter().flatten() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
