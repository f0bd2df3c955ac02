//! A cluster kept in etcd: a real etcd (Debian's etcd-server, a private
//! process per test, see `veth_tests::etcd`), settings stored with
//! `vethctl cluster init`, and agents in node namespaces (`ip netns exec
//! NODE vethctl agent --cluster … --cluster-node …`) that lease their pod
//! ranges and wire their nodes to each other (`veth_tests::etcd_lab`).
//! Run as root.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use veth_bench::disruption::{Config, Traffic};
use veth_tests::{
    bpftool_map_dump,
    cni::Pod as CniPod,
    etcd::TestEtcd,
    etcd_lab::{conf_range, netns_name, stderr, EtcdLab, Member, Switch, TTL},
    expect_pings, expect_success, global_addresses,
    loss::Events,
    node::TestNode,
    run, unique_name, wait_until, ChildGuard,
};

#[test]
fn init_stores_settings_once_and_refuses_other_ones() {
    let lab = EtcdLab::start();
    let name = unique_name();
    let file = lab.settings(&name, "vxlan", 256);
    expect_success(&lab.init(&file), "cluster init");
    let again = lab.init(&file);
    expect_success(&again, "cluster init again");
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let other = lab.init(&lab.settings(&name, "ebpf", 256));
    assert_eq!(other.status.code(), Some(3), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("cross_node = vxlan"),
        "{}",
        stderr(&other)
    );
    let s = lab.status();
    assert_eq!(s["cluster"], name.as_str());
    assert_eq!(s["settings"]["cross_node"], "vxlan");
    assert_eq!(s["nodes"], serde_json::json!([]));
    let bad = lab.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("name = \"{name}\"\ncluster_cidr = \"10.251.0.1/16\"\n"),
    )
    .unwrap();
    let refused = lab.init(&bad);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("cluster_cidr: "),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn agents_lease_disjoint_ranges_and_keep_them_across_restarts() {
    let lab = EtcdLab::start();
    lab.init_ok("host-gw", 256);
    let names = ["n1", "n2", "n3"];
    let nodes: Vec<TestNode> = (1..=3).map(|i| lab.node_with_underlay(i)).collect();
    let mut agents: Vec<ChildGuard> = (0..3)
        .map(|i| lab.agent(&nodes[i], names[i], &[]))
        .collect();
    let mut ranges: Vec<String> = names.iter().map(|n| lab.wait_alive(n)).collect();
    let before = ranges.clone();
    for (range, name) in ranges.iter().zip(names) {
        assert_eq!(
            &conf_range(&lab.conf_dir(name)),
            range,
            "the list has the leased range"
        );
    }
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ranges:?}");
    let n1 = lab.status_of("n1").unwrap();
    assert_eq!(n1["address"], format!("{}.1", lab.base));
    assert!(n1["pod_cidr6"].is_string(), "{n1}");

    // Stopped: its record goes at once, its range stays its own.
    agents[1].signal(libc::SIGTERM);
    assert!(agents[1].expect_exit(Duration::from_secs(10)).success());
    let n2 = lab.status_of("n2").unwrap();
    assert_eq!(
        (n2["alive"].clone(), n2["pod_cidr"].clone()),
        (Value::Bool(false), Value::String(ranges[1].clone()))
    );
    agents[1] = lab.agent(&nodes[1], "n2", &[]);
    assert_eq!(lab.wait_alive("n2"), ranges[1], "kept across a restart");

    // Killed: the next agent of the same node takes its record over.
    agents[2].signal(libc::SIGKILL);
    agents[2].expect_exit(Duration::from_secs(10));
    let started = Instant::now();
    agents[2] = lab.agent(&nodes[2], "n3", &[]);
    ranges[2] = lab.wait_alive("n3");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(conf_range(&lab.conf_dir("n3")), ranges[2]);
    assert_eq!(ranges, before, "every node kept its range");
}

#[test]
fn a_second_agent_with_the_same_name_is_refused() {
    let lab = EtcdLab::start();
    lab.init_ok("vxlan", 256);
    let (a, b) = (lab.node_with_underlay(1), lab.node_with_underlay(2));
    let first = lab.agent(&a, "n1", &[]);
    lab.wait_alive("n1");
    let other_conf = lab.dir.path().join("b");
    let mut second = lab.agent_in(&b, "n1", &other_conf, &[]);
    let status = second.expect_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(3));
    let err = read_stderr(&mut second);
    assert!(
        err.contains("held by another agent") && err.contains(&format!("PID {}", first.id())),
        "{err}"
    );
    assert!(!other_conf.join("10-vethctl.conflist").exists());
}

fn read_stderr(child: &mut ChildGuard) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.take_stderr(), &mut err).unwrap();
    err
}

#[test]
fn an_exhausted_cluster_range_is_a_clear_error() {
    let lab = EtcdLab::start();
    lab.init_ok("vxlan", 2);
    let nodes: Vec<TestNode> = (1..=3).map(|i| lab.node_with_underlay(i)).collect();
    let _agents: Vec<ChildGuard> = (0..2)
        .map(|i| lab.agent(&nodes[i], &format!("n{i}"), &[]))
        .collect();
    lab.wait_alive("n0");
    lab.wait_alive("n1");
    let mut third = lab.agent(&nodes[2], "n2", &[]);
    let status = third.expect_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(2));
    let err = read_stderr(&mut third);
    assert!(
        err.contains("cluster_cidr: 10.251.0.0/23 has no free /24"),
        "{err}"
    );
}

#[test]
fn tls_with_client_certificates_and_without() {
    let lab = EtcdLab::with(TestEtcd::start_tls());
    let file = lab.settings(&unique_name(), "ebpf", 256);
    expect_success(&lab.init(&file), "init over TLS with a client certificate");
    let started = Instant::now();
    let refused = lab.cluster(false, &["status"]);
    assert!(
        !refused.status.success(),
        "no client certificate, yet: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&refused).contains(&lab.etcd.endpoints),
        "{}",
        stderr(&refused)
    );
    assert_eq!(lab.status()["settings"]["cross_node"], "ebpf");
}

#[test]
fn etcd_down_is_a_clear_error_within_seconds() {
    let mut lab = EtcdLab::start();
    let name = lab.init_ok("vxlan", 256);
    lab.etcd.kill9();
    let started = Instant::now();
    let out = lab.cluster(true, &["status"]);
    assert_eq!(out.status.code(), Some(4), "try again: {}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr(&out).contains("etcd at unix://"), "{}", stderr(&out));
    lab.etcd.restart();
    assert_eq!(
        lab.status()["cluster"],
        name.as_str(),
        "kept on its data dir"
    );
}

/// The agent does not depend on etcd being up: etcd killed -9 under it
/// leaves it running, and once etcd is back its node is alive with the
/// same range.
#[test]
fn an_agent_rides_out_etcd_going_away() {
    let mut lab = EtcdLab::start();
    lab.init_ok("vxlan", 256);
    let node = lab.node_with_underlay(1);
    let mut running = lab.agent(&node, "n1", &[]);
    let range = lab.wait_alive("n1");
    lab.etcd.kill9();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        running.try_wait().is_none(),
        "the agent stopped while etcd was away"
    );
    lab.etcd.restart();
    assert_eq!(lab.wait_alive("n1"), range);
    assert!(running.try_wait().is_none());
}

/// An agent frozen past its liveness TTL while etcd stays up (SIGSTOP: a
/// stalled node, a long pause) loses its record, as a dead node would;
/// thawed, it registers again under a new lease, with the same range.
#[test]
fn a_frozen_agent_registers_again_when_it_thaws() {
    let lab = EtcdLab::start();
    lab.init_ok("vxlan", 256);
    let node = lab.node_with_underlay(1);
    let mut frozen = lab.agent(&node, "n1", &["--liveness-ttl", "2"]);
    let range = lab.wait_alive("n1");
    frozen.signal(libc::SIGSTOP);
    wait_until(
        Duration::from_secs(6),
        "the frozen node's record gone",
        || lab.status_of("n1").is_none_or(|n| n["alive"] != true),
    );
    frozen.signal(libc::SIGCONT);
    let thawed = Instant::now();
    assert_eq!(lab.wait_alive("n1"), range);
    eprintln!("registered again {:?} after SIGCONT", thawed.elapsed());
    assert!(
        thawed.elapsed() < Duration::from_secs(5),
        "registered again only after {:?}",
        thawed.elapsed()
    );
    assert!(frozen.try_wait().is_none());
}

/// Bad options, and a bad pods file, are refused naming the flag or the
/// field, before the node claims anything.
#[test]
fn bad_agent_options_are_refused_naming_the_flag() {
    let lab = EtcdLab::start();
    let dir = lab.dir.path();
    let lock = dir.join("agent.lock").display().to_string();
    let pods = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let bad_name = pods(
        "bad-name.toml",
        "[[pods]]\nname = \"f\"\n[[pods]]\nname = \"F\"\n",
    );
    let fixed = pods(
        "fixed.toml",
        "[[pods]]\nname = \"f\"\nipv4 = \"10.251.0.9\"\n",
    );
    let settings = pods(
        "settings.toml",
        "mode = \"bridge\"\n[[pods]]\nname = \"f\"\n",
    );
    let cases: [(&[&str], &str); 6] = [
        (&["--cluster-node", "n1"], "vethctl cluster init"),
        (&["--cluster-node", "N1"], "--cluster-node"),
        (&["--cluster-node", "n1"], "--underlay"),
        (
            &["--cluster-node", "n1", "--pods", &bad_name],
            "pods[1].name: ",
        ),
        (
            &["--cluster-node", "n1", "--pods", &fixed],
            "pods[0].ipv4: ",
        ),
        (
            &["--cluster-node", "n1", "--pods", &settings],
            "line 1, column 1: ",
        ),
    ];
    for (i, (args, says)) in cases.into_iter().enumerate() {
        if i == 1 {
            lab.init_ok("vxlan", 256);
        }
        let mut full = vec!["agent", "--lock-file", &lock];
        full.extend(args);
        full.extend(["--underlay", "nosuch0", "--listen", "127.0.0.1:0"]);
        let etcd_args = lab.etcd.args(true);
        full.extend(etcd_args.iter().map(String::as_str));
        let out = veth_tests::vethctl(&full, &[], None);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{says}: {}", stderr(&out));
        if args.contains(&"--pods") {
            assert!(stderr(&out).contains("--pods "), "{}", stderr(&out));
        }
    }
    assert_eq!(lab.status()["nodes"], serde_json::json!([]), "nothing held");
}

#[test]
fn agents_wire_host_gw_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("host-gw", Duration::from_secs(5));
}

#[test]
fn agents_wire_ebpf_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("ebpf", Duration::from_secs(5));
}

#[test]
fn agents_wire_vxlan_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("vxlan", Duration::from_secs(30));
}

#[test]
fn agents_wire_ebpf_vxlan_nodes_from_their_records() {
    agents_wire_nodes_from_their_records("ebpf-vxlan", Duration::from_secs(30));
}

/// Every node routes every other's range.
fn wired(members: &[Member]) -> bool {
    members.iter().all(|a| {
        members
            .iter()
            .all(|b| a.range == b.range || a.routes(&b.range))
    })
}

/// A cluster in etcd whose nodes' agents run one file pod each (`--pods`).
struct Wiring {
    /// Dropped first: the pods' namespaces go before the nodes.
    cni: Vec<CniPod>,
    members: Vec<Member>,
    switch: Switch,
    cluster: String,
    cross_node: String,
    pods_file: String,
    lab: EtcdLab,
}

impl Wiring {
    fn new(cross_node: &str) -> Wiring {
        let lab = EtcdLab::start();
        let cluster = lab.init_ok(cross_node, 8);
        let pods_file = lab.dir.path().join("pods.toml");
        std::fs::write(&pods_file, "# this node's own\n[[pods]]\nname = \"f\"\n").unwrap();
        Wiring {
            cni: Vec::new(),
            members: Vec::new(),
            switch: Switch::new(),
            cluster,
            cross_node: cross_node.to_string(),
            pods_file: pods_file.display().to_string(),
            lab,
        }
    }

    /// Node `i` plugged in and its agent, running the file pod, alive.
    fn join(&mut self, i: u32) {
        let node = self.lab.plug(&self.switch, i);
        self.start(node, i);
    }

    fn start(&mut self, node: TestNode, i: u32) {
        let member = self.lab.start_member(node, i, &["--pods", &self.pods_file]);
        self.members.push(member);
    }

    /// A CNI pod on member `m`: its namespace and address.
    fn cni_pod(&mut self, m: usize) -> (String, IpAddr) {
        let pod = CniPod::new();
        let ip = self.members[m].cni_pod(&pod);
        let netns = netns_name(&pod);
        self.cni.push(pod);
        (netns, ip)
    }

    /// Member `m`'s file pod: its namespace and IPv4 address.
    fn file_pod(&self, m: usize) -> (String, IpAddr) {
        let netns = format!("{}-{}-f", self.members[m].node.name, self.cluster);
        let mut ip = None;
        wait_until(Duration::from_secs(10), "the file pod's address", || {
            ip = global_addresses(&netns, "eth0")
                .iter()
                .find_map(|a| a.parse::<std::net::Ipv4Addr>().ok());
            ip.is_some()
        });
        (netns, IpAddr::V4(ip.unwrap()))
    }

    /// Whether member `m`'s known-node and remote-range maps name the
    /// node at underlay `address` (ebpf, ebpf-vxlan).
    fn maps_name(&self, m: usize, address: &str) -> bool {
        let octets: Vec<u64> = address.split('.').map(|o| o.parse().unwrap()).collect();
        let pins = self.members[m].pins(&self.cluster);
        ["NODES", "REMOTE_ROUTES"].iter().any(|map| {
            bpftool_map_dump(&pins.join(map))
                .iter()
                .any(|entry| holds_run(entry, &octets))
        })
    }

    /// Waits until every node routes every other's range; how long it
    /// took. When they do not within `within`, fails with the agents'
    /// logs.
    fn wait_wired(&mut self, within: Duration, what: &str) -> Duration {
        let started = Instant::now();
        while !wired(&self.members) {
            if started.elapsed() > within {
                let logs: Vec<String> = self.members.iter_mut().map(stop_for_log).collect();
                panic!(
                    "{what}: not within {within:?}; the agents said:\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    fn ebpf(&self) -> bool {
        self.cross_node.starts_with("ebpf")
    }
}

/// Stops member `m`'s agent: what it logged.
fn stop_for_log(m: &mut Member) -> String {
    m.agent.signal(libc::SIGTERM);
    m.agent.expect_exit(Duration::from_secs(10));
    format!("{}:\n{}", m.node.name, read_stderr(&mut m.agent))
}

/// Whether the numbers of `value` (bpftool's JSON: numbers, or "0x.."
/// bytes without BTF), read in order, hold `run`.
fn holds_run(value: &Value, run: &[u64]) -> bool {
    fn numbers(v: &Value, out: &mut Vec<u64>) {
        match v {
            Value::Number(n) => out.extend(n.as_u64()),
            Value::String(s) => out.extend(
                s.strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok()),
            ),
            Value::Array(a) => a.iter().for_each(|v| numbers(v, out)),
            Value::Object(o) => o.values().for_each(|v| numbers(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    numbers(value, &mut all);
    all.windows(run.len()).any(|w| w == run)
}

/// Three nodes started with nothing but the settings in etcd, each agent
/// running a file pod (`--pods`), wire their pods to each other from the
/// node records: CNI and file pods reach each other across nodes. Then,
/// under a numbered UDP stream and TCP connections from n1's file pod to
/// n2's CNI pod, which must lose nothing: a 4th node joins and is wired
/// everywhere within 1 s; node 3's agent is killed -9 and its namespace
/// deleted, and it leaves the others' routes (vxlan: FDB; ebpf modes:
/// known-node and remote-range maps) within its liveness TTL (3 s) + 1
/// s; etcd is killed -9 for `outage`, every route staying meanwhile, and
/// a 5th node whose agent started then (and exited 4, try again) is wired
/// once etcd is back and its agent started again.
fn agents_wire_nodes_from_their_records(cross_node: &str, outage: Duration) {
    let started = Instant::now();
    let mut w = Wiring::new(cross_node);
    for i in 1..=3 {
        w.join(i);
    }
    w.wait_wired(
        Duration::from_secs(15),
        "every node routes the others' ranges",
    );
    let cni: Vec<(String, IpAddr)> = (0..3).map(|m| w.cni_pod(m)).collect();
    let file: Vec<(String, IpAddr)> = (0..3).map(|m| w.file_pod(m)).collect();
    let kinds = [("CNI", &cni), ("file", &file)];
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        for ((a, sources), (b, targets)) in kinds.iter().flat_map(|s| kinds.map(|t| (s, t))) {
            let what = format!("{a} pod to {b} pod across nodes");
            expect_pings(&sources[from].0, targets[to].1, 3, &what);
        }
    }
    let traffic = Traffic::start(&Config {
        client_netns: file[0].0.clone(),
        server_netns: cni[1].0.clone(),
        server: cni[1].1,
        udp_port: 11390,
        tcp_port: 11391,
        rate: 2_000,
        connections: 2,
        max_seconds: 300,
        tcp_timeout: Duration::from_secs(10),
    })
    .expect("traffic from n1's file pod to n2's CNI pod");
    let mut events = Events::new(&traffic, Duration::from_secs(5));
    events.event("a 4th node joins", || fourth_node_joins(&mut w));
    let dead = events.event("node n3 lost", || node_3_lost(&mut w));
    events.event(&format!("etcd away {} s", outage.as_secs()), || {
        etcd_away(&mut w, outage)
    });
    events.assert_nothing_lost();
    drop(events);
    traffic.stop().expect("the traffic threads");
    let (cni5, file5) = (w.cni_pod(3), w.file_pod(3));
    expect_pings(
        &file[0].0,
        cni5.1,
        3,
        "to the node that joined after etcd came back",
    );
    expect_pings(
        &cni[1].0,
        file5.1,
        3,
        "to the node that joined after etcd came back",
    );
    drop(w);
    for dir in dead.into_iter().flatten() {
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!("{cross_node}: {:?} in all", started.elapsed());
}

/// A 4th node joins: the others route its range within a second of its
/// record, and its pods are reached from all.
fn fourth_node_joins(w: &mut Wiring) {
    w.join(4);
    let took = w.wait_wired(Duration::from_secs(1), "the 4th node wired everywhere");
    eprintln!("4th node routed by all {took:?} after its record was seen");
    let (_, ip) = w.cni_pod(3);
    let (_, file4) = w.file_pod(3);
    for m in 0..3 {
        let (from, _) = w.file_pod(m);
        expect_pings(&from, ip, 3, "file pod to the new node's CNI pod");
        expect_pings(&from, file4, 3, "file pod to the new node's file pod");
    }
}

/// Node 3 dies: agent killed -9, namespace deleted. It leaves the others'
/// routes, FDB (vxlan) and maps (ebpf modes) within TTL + 1 s. Its state
/// and pins, which its namespace named, to be removed by the caller.
fn node_3_lost(w: &mut Wiring) -> [Option<std::path::PathBuf>; 2] {
    let mut dead = w.members.remove(2);
    let dead_vtep = format!("dst {} ", dead.address);
    let fdb = |m: &Member| run("bridge", &["-n", &m.node.name, "fdb", "show"]);
    let vxlan = w.cross_node == "vxlan";
    // Whether survivor `m` still has the dead node in its routes, FDB or
    // maps.
    let knows = |m: usize| {
        let member = &w.members[m];
        member.routes(&dead.range)
            || (vxlan && fdb(member).contains(&dead_vtep))
            || (w.ebpf() && w.maps_name(m, &dead.address))
    };
    let survivors = 0..w.members.len();
    // What must go was there: else the test could not fail.
    assert!(!vxlan || w.members.iter().all(|m| fdb(m).contains(&dead_vtep)));
    assert!(!w.ebpf() || survivors.clone().all(|m| w.maps_name(m, &dead.address)));
    dead.agent.signal(libc::SIGKILL);
    dead.agent.expect_exit(Duration::from_secs(10));
    let killed = Instant::now();
    let leftovers = [dead.node.state_root(), dead.node.pins_root()];
    run("ip", &["netns", "del", &dead.node.name]);
    wait_until(
        TTL + Duration::from_secs(2),
        "node 3 gone from the others' routes, FDB and maps",
        || !survivors.clone().any(knows),
    );
    let gone = killed.elapsed();
    eprintln!("node 3 gone from every route and map {gone:?} after its agent was killed");
    assert!(gone <= TTL + Duration::from_secs(1), "{gone:?} > TTL + 1 s");
    // Its pods' namespaces go with the TestNode.
    drop(dead);
    leftovers
}

/// etcd killed -9 for `outage`: every route stays and pods reach each
/// other meanwhile; a node plugged in then has an agent that cannot join
/// (exit 4, try again); once etcd is back, that agent started again (as
/// its supervisor would) joins, and the node is wired everywhere.
fn etcd_away(w: &mut Wiring, outage: Duration) {
    w.lab.etcd.kill9();
    let node = w.lab.plug(&w.switch, 5);
    let mut early = w.lab.agent(&node, "n5", &[]);
    assert_eq!(early.expect_exit(Duration::from_secs(15)).code(), Some(4));
    let (from, _) = w.file_pod(0);
    let (_, to) = w.file_pod(1);
    let away = Instant::now();
    while away.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(1));
        assert!(wired(&w.members), "a route went while etcd was away");
        expect_pings(&from, to, 1, "pods while etcd is away");
    }
    w.lab.etcd.restart();
    w.start(node, 5);
    w.wait_wired(
        Duration::from_secs(20),
        "the 5th node wired after etcd came back",
    );
}
