//! A cluster on one machine (issue 20): three nodes, each a namespace with
//! its `eth0` on a switch namespace, two pods per node, joined by the
//! `host-gw` or `vxlan` cross-node mode. Real namespaces, real packets; the
//! path is proved by the kernel's own counters. The test's "internet" is a
//! namespace it plugs into the switch itself, holding the underlay's
//! gateway and a far address behind it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use veth_tests::{
    counter, drops, expect_pings, expect_success, ping, ping_with, require_root, run,
    tcp_transfer_to, unique_name, vethctl_bin, TcpSession,
};
use veth_userspace::netlink::netns;

const GATEWAY: &str = "198.18.0.254";
/// An address "on the internet": behind the gateway, in the test's own
/// namespace.
const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// A 3-node lab with pods a and b on every node. Dropping it brings it
/// down (also on panic) and checks that no namespace of it is left.
struct Lab {
    name: String,
    file: PathBuf,
    internet: Option<String>,
    /// More `[underlay]` keys.
    underlay: String,
}

impl Lab {
    fn new(cross_node: &str) -> Lab {
        require_root();
        let name = unique_name();
        let file = std::env::temp_dir().join(format!("vethctl-cluster-{name}.toml"));
        let lab = Lab {
            name,
            file,
            internet: None,
            underlay: String::new(),
        };
        lab.write(cross_node);
        lab
    }

    /// A lab whose nodes are plugged into the host's bridge `bridge`.
    fn on_bridge(cross_node: &str, bridge: &str) -> Lab {
        let mut lab = Lab::new(cross_node);
        lab.underlay = format!("bridge = \"{bridge}\"\n");
        lab.write(cross_node);
        lab
    }

    fn write(&self, cross_node: &str) {
        self.write_nodes(cross_node, &NODES);
    }

    fn write_nodes(&self, cross_node: &str, nodes: &[&str]) {
        let mut text = format!(
            "name = \"{}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
             cluster_cidr = \"10.244.0.0/16\"\ncluster_cidr6 = \"fd00:10:244::/56\"\n\
             [underlay]\ncidr6 = \"fd00:198:18::/64\"\ngateway = \"{GATEWAY}\"\n{}",
            self.name, self.underlay
        );
        for node in nodes {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{node}\"\n[[nodes.pods]]\nname = \"a\"\n[[nodes.pods]]\nname = \"b\"\n"
            ));
        }
        std::fs::write(&self.file, text).expect("writing the cluster file");
    }

    fn vethctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(vethctl_bin())
            .args(args)
            .output()
            .expect("running vethctl")
    }

    fn up(&self) {
        let file = self.file.to_str().unwrap();
        expect_success(&self.vethctl(&["up", "-t", file]), "vethctl up -t CLUSTER");
    }

    /// `cross_node` changed in the file, then `up` again.
    fn switch(&self, cross_node: &str) {
        self.write(cross_node);
        self.up();
    }

    fn node_ns(&self, node: &str) -> String {
        format!("{}.{node}", self.name)
    }

    fn switch_ns(&self) -> String {
        format!("{}_underlay", self.name)
    }

    /// Namespace and addresses of pod `pod` on node `node` (nodes get the
    /// cluster ranges' /24s and /64s in order; pods .2 and .3 of them).
    fn pod(&self, node: &str, pod: &str) -> (String, IpAddr, IpAddr) {
        let n = NODES.iter().position(|x| *x == node).unwrap() as u8;
        let host = if pod == "a" { 2 } else { 3 };
        (
            format!("{}-{}-{pod}", self.node_ns(node), self.name),
            IpAddr::V4(Ipv4Addr::new(10, 244, n, host)),
            format!("fd00:10:244:{n:x}::{host}").parse().unwrap(),
        )
    }

    fn underlay(node: &str) -> IpAddr {
        let n = NODES.iter().position(|x| *x == node).unwrap() as u8;
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, n + 1))
    }

    /// The test's internet: a namespace on the switch with the gateway
    /// address and `FAR` behind it.
    fn plug_internet(&mut self) -> String {
        let ns = format!("{}_inet", self.name);
        run("ip", &["netns", "add", &ns]);
        self.internet = Some(ns.clone());
        let sw = self.switch_ns();
        run(
            "ip",
            &[
                "-n", &sw, "link", "add", "inet", "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        run(
            "ip",
            &["-n", &sw, "link", "set", "inet", "master", "underlay", "up"],
        );
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{GATEWAY}/24"),
                "dev",
                "eth0",
            ],
        );
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{FAR}/32"), "dev", "lo"],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// `vethctl stats --json` of node `node`: pod name -> pair.
    fn stats(&self, node: &str) -> std::collections::BTreeMap<String, Value> {
        let ns = self.node_ns(node);
        veth_tests::pairs_by_pod(
            &self.vethctl(&["--node", &ns, "stats", "--json", "-n", &self.name]),
        )
    }

    fn namespaces(&self) -> Vec<String> {
        let prefix = self.name.clone();
        netns::list("")
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.vethctl(&["down", "-n", &self.name]);
        if let Some(ns) = &self.internet {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file(&self.file);
        if std::thread::panicking() {
            return;
        }
        expect_success(&out, "vethctl down of the lab");
        assert_eq!(self.namespaces(), Vec::<String>::new(), "namespaces left");
        assert!(
            !veth_userspace::lab::dir(&self.name).exists(),
            "the lab's record is left"
        );
    }
}

/// The source address a UDP datagram from `client_ns` to `dst` arrives
/// with, as the server in `server_ns` sees it.
fn udp_source(client_ns: &str, server_ns: &str, dst: IpAddr) -> IpAddr {
    let addr = SocketAddr::new(dst, 5301);
    let server = netns::on_thread(server_ns, move || Ok(UdpSocket::bind(addr)?))
        .unwrap()
        .join()
        .unwrap()
        .expect("binding the UDP server");
    server
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let client = netns::on_thread(client_ns, move || {
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        Ok(UdpSocket::bind(bind)?)
    })
    .unwrap()
    .join()
    .unwrap()
    .expect("binding the UDP client");
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        client.send_to(b"hello", addr).expect("sending");
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"hello");
            return from.ip();
        }
    }
    panic!("no UDP datagram from {client_ns} reached {addr}");
}

/// Frames matching `filter` that the switch port of `node` carried while
/// `during` ran, as tcpdump in the switch namespace saw them.
fn captured(lab: &Lab, node: &str, filter: &str, during: impl FnOnce()) -> usize {
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.switch_ns(),
            "tcpdump",
            "-n",
            "-l",
            "-i",
            node,
        ])
        .args(filter.split_whitespace())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (install it)");
    // It says "listening on" once it captures.
    let mut stderr = std::io::BufReader::new(tcpdump.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("listening") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            panic!("tcpdump ended: {said}");
        }
        said += &line;
    }
    during();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signals the child we started.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    let out = tcpdump.wait_with_output().expect("tcpdump");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Packets the node's VXLAN device sent, or `None` without one.
fn vxlan_tx(node_ns: &str, device: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", node_ns, "-s", "-j", "link", "show", "dev", device])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let json: Value = serde_json::from_slice(&out.stdout).ok()?;
    json[0]["stats64"]["tx"]["packets"].as_u64()
}

/// `Ip: ForwDatagrams` of a namespace (what its stack forwarded).
fn forwarded(node_ns: &str) -> u64 {
    let snmp = run("ip", &["netns", "exec", node_ns, "cat", "/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Everything a cluster must do, in mode `cross_node`.
fn exercise(cross_node: &str) {
    let mut lab = Lab::new(cross_node);
    lab.up();
    let inet = lab.plug_internet();
    let vx = format!("{}-vx", lab.name);

    // status: every node, its namespace, underlay and ranges; pods say their node.
    let out = lab.vethctl(&["status", "--json", "-n", &lab.name]);
    expect_success(&out, "status of the lab");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = status["nodes"].as_array().expect("nodes[]");
    assert_eq!(nodes.len(), 3, "{status}");
    assert_eq!(nodes[1]["name"], "n2");
    assert_eq!(nodes[1]["netns"], lab.node_ns("n2"));
    assert_eq!(nodes[1]["underlay"][0], "198.18.0.2/24");
    assert_eq!(nodes[1]["pod_ranges"][0], "10.244.1.0/24");
    assert_eq!(nodes[1]["pods"][0]["node"], "n2");
    assert_eq!(nodes[1]["pods"].as_array().unwrap().len(), 2);

    // stats of the whole lab, from its machine: each node's own report.
    let out = lab.vethctl(&["stats", "--json", "-n", &lab.name]);
    expect_success(&out, "stats of the lab");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = all["nodes"].as_array().expect("nodes[]");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(names, NODES, "{all}");
    for node in nodes {
        let pairs = node["stats"]["topologies"][0]["pairs"].as_array();
        assert_eq!(pairs.map(Vec::len), Some(2), "two pods on {node}");
    }
    let out = lab.vethctl(&["stats", "-n", &lab.name]);
    expect_success(&out, "stats of the lab, a table");
    let table = String::from_utf8_lossy(&out.stdout);
    for node in NODES {
        assert!(
            table.contains(&format!("node {node} of {}", lab.name)),
            "{table}"
        );
    }

    lab_is_seen_whole(&lab, cross_node);

    // Pod <-> pod across nodes: ping (IPv4, IPv6), TCP, UDP keeping its source.
    for (from, to) in [(("n1", "a"), ("n2", "b")), (("n3", "b"), ("n1", "a"))] {
        let (src_ns, src4, src6) = lab.pod(from.0, from.1);
        let (dst_ns, dst4, dst6) = lab.pod(to.0, to.1);
        let what = format!("{cross_node}: {}/{} -> {}/{}", from.0, from.1, to.0, to.1);
        expect_pings(&src_ns, dst4, 3, &format!("{what} IPv4"));
        expect_pings(&src_ns, dst6, 3, &format!("{what} IPv6"));
        let (sent, received) = tcp_transfer_to(&src_ns, &dst_ns, dst4, 4 << 20);
        assert_eq!(sent, received, "{what}: TCP IPv4 stream intact");
        let (sent, received) = tcp_transfer_to(&src_ns, &dst_ns, dst6, 1 << 20);
        assert_eq!(sent, received, "{what}: TCP IPv6 stream intact");
        assert_eq!(
            udp_source(&src_ns, &dst_ns, dst4),
            src4,
            "{what}: UDP keeps its source"
        );
        assert_eq!(
            udp_source(&src_ns, &dst_ns, dst6),
            src6,
            "{what}: UDP6 keeps its source"
        );
    }

    // The path, from the kernel: encapsulated by the VXLAN device, or
    // forwarded plainly by the node's stack with no VXLAN device at all.
    let (a1, ..) = lab.pod("n1", "a");
    let (_, b2, _) = lab.pod("n2", "b");
    let (tx, fwd) = (
        vxlan_tx(&lab.node_ns("n1"), &vx),
        forwarded(&lab.node_ns("n1")),
    );
    // On the wire to n2: VXLAN from n1's underlay address, or the pods'
    // own ICMP, plain.
    let (encapsulated, plain) = (
        "udp port 8472 and src host 198.18.0.1",
        "icmp and src host 10.244.0.2 and dst host 10.244.1.3",
    );
    let filter = if cross_node.contains("vxlan") {
        encapsulated
    } else {
        plain
    };
    let seen = captured(&lab, "n2", filter, || {
        assert_eq!(ping(&a1, b2, 20), 20, "{cross_node}: 20 pings n1 -> n2");
    });
    assert!(
        seen >= 20,
        "{cross_node}: the switch saw {seen} frames of `{filter}` for 20 pings"
    );
    let (tx_after, fwd_after) = (
        vxlan_tx(&lab.node_ns("n1"), &vx),
        forwarded(&lab.node_ns("n1")),
    );
    match cross_node {
        "vxlan" => {
            let sent = tx_after.unwrap() - tx.expect("a VXLAN device on n1");
            assert!(sent >= 20, "vxlan: the device sent {sent} of 20 pings");
        }
        // The programs send it: no kernel VXLAN device, no forwarding.
        "ebpf" | "ebpf-vxlan" => {
            assert_eq!(tx_after, None, "{cross_node}: no kernel VXLAN device on n1");
            assert_eq!(fwd_after, fwd, "{cross_node}: n1 forwarded nothing");
            let remote = counter(&lab.stats("n1")["a"], "from_pod", "remote_packets");
            assert!(
                remote >= 20,
                "{cross_node}: n1/a sent {remote} frames to other nodes"
            );
        }
        _ => {
            assert_eq!(tx_after, None, "host-gw: no VXLAN device on n1");
            assert!(
                fwd_after - fwd >= 20,
                "host-gw: n1 forwarded {} of 20",
                fwd_after - fwd
            );
        }
    }

    // Pod -> another node's underlay address.
    expect_pings(
        &a1,
        Lab::underlay("n3"),
        3,
        "pod -> node n3's underlay address",
    );

    // Pod -> outside: masqueraded to its own node's underlay address.
    for node in NODES {
        let (pod_ns, ..) = lab.pod(node, "b");
        assert_eq!(
            udp_source(&pod_ns, &inet, IpAddr::V4(FAR)),
            Lab::underlay(node),
            "{cross_node}: {node}/b -> the internet leaves masqueraded by its own node"
        );
    }

    // A hostile pod: a spoofed source towards another node is dropped on
    // its own node (tc's checks) and counted.
    let spoofed = "10.244.0.200";
    run(
        "ip",
        &[
            "-n",
            &a1,
            "addr",
            "add",
            &format!("{spoofed}/32"),
            "dev",
            "eth0",
        ],
    );
    let before = lab.stats("n1");
    assert_eq!(
        ping_with(&a1, &["-I", spoofed], b2, 5),
        0,
        "spoofed pings answered"
    );
    let after = lab.stats("n1");
    assert_eq!(
        drops(&after["a"], "spoofed_ipv4") - drops(&before["a"], "spoofed_ipv4"),
        5,
        "{cross_node}: n1 dropped and counted every spoofed ping"
    );
    assert!(counter(&after["a"], "from_pod", "dropped_packets") >= 5);
}

/// `trace`, `stats --watch` and `metrics` of the lab, from its machine:
/// every node's, each marked with its node.
fn lab_is_seen_whole(lab: &Lab, cross_node: &str) {
    let (a1, ..) = lab.pod("n1", "a");
    let (_, b2, _) = lab.pod("n2", "b");
    // trace: a ping from n1/a to n2/b is seen leaving n1 and arriving on n2.
    let mut trace = Command::new(vethctl_bin())
        .args([
            "trace",
            "-n",
            &lab.name,
            "--json",
            "--protocol",
            "icmp",
            "--count",
            "12",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running vethctl trace");
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..50 {
        if matches!(trace.try_wait(), Ok(Some(_))) {
            break;
        }
        ping(&a1, b2, 1);
    }
    let _ = trace.kill();
    let out = trace.wait_with_output().expect("trace's output");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    assert_eq!(events.len(), 12, "{cross_node}: 12 events: {events:?}");
    let nodes: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["node"].as_str()).collect();
    assert!(
        nodes.contains("n1") && nodes.contains("n2"),
        "{cross_node}: events from n1 and n2: {events:?}"
    );
    if cross_node.starts_with("ebpf") {
        assert!(
            events
                .iter()
                .any(|e| e["node"] == "n1" && e["verdict"] == "remote" && e["remote_node"] == "n2"),
            "{cross_node}: n1's programs sent the ping to node n2: {events:?}"
        );
    }

    // stats --watch: one refresh with every node's pairs.
    let out = lab.vethctl(&[
        "stats",
        "--watch",
        "--json",
        "-n",
        &lab.name,
        "--count",
        "1",
        "--interval",
        "0.3",
    ]);
    expect_success(&out, "stats --watch of the lab");
    let refresh: Value = serde_json::from_slice(&out.stdout).expect("one JSON refresh");
    let pairs = refresh["pairs"].as_array().expect("pairs[]");
    assert_eq!(pairs.len(), 6, "two pods on each of three nodes: {refresh}");
    for node in NODES {
        assert_eq!(
            pairs.iter().filter(|p| p["node"] == node).count(),
            2,
            "{refresh}"
        );
    }

    // metrics: every node's series, labelled with its node.
    let out = lab.vethctl(&["metrics"]);
    expect_success(&out, "vethctl metrics on the lab's machine");
    let text = String::from_utf8_lossy(&out.stdout);
    for node in NODES {
        let scraped = format!("vethctl_lab_node_scraped{{node=\"{node}\"}} 1");
        assert!(text.contains(&scraped), "{scraped} in:\n{text}");
        let pods = format!("{{node=\"{node}\",topology=\"{}\"", lab.name);
        assert!(text.contains(&pods), "{pods} in:\n{text}");
    }
}

/// Longest a TCP session may sit idle while the lab switches modes.
const SWITCH_IDLE: Duration = Duration::from_secs(120);
#[test]
fn host_gw_cluster_of_three_nodes() {
    exercise("host-gw");
}

#[test]
fn vxlan_cluster_of_three_nodes() {
    exercise("vxlan");
}

#[test]
fn ebpf_cluster_of_three_nodes() {
    exercise("ebpf");
}

#[test]
fn ebpf_vxlan_cluster_of_three_nodes() {
    exercise("ebpf-vxlan");
}

/// host-gw -> vxlan -> host-gw while pods ping every 10 ms across nodes
/// and a TCP connection keeps sending: no ping is lost and the connection
/// survives (the lab changes every node in three rounds: ready to receive
/// the new way, routes replaced in place, the old way removed).
#[test]
fn cross_node_mode_changes_live() {
    let lab = Lab::new("host-gw");
    lab.up();
    let (a1, ..) = lab.pod("n1", "a");
    let (b3_ns, b3, _) = lab.pod("n3", "b");
    expect_pings(&a1, b3, 3, "before the changes");
    // The receiver's read timeout is how long the connection may sit idle:
    // the sender waits while each switch runs (several `up`s on three
    // nodes), which took over 10 s under CI load.
    let mut session = TcpSession::open(&a1, &b3_ns, b3, SWITCH_IDLE);
    session.send(1 << 20);
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &a1, "ping", "-n", "-q", "-i", "0.01", "-c", "500", "-W", "1",
        ])
        .arg(b3.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    lab.switch("vxlan");
    session.send(1 << 20);
    assert!(vxlan_tx(&lab.node_ns("n1"), &format!("{}-vx", lab.name)).is_some());
    std::thread::sleep(Duration::from_millis(500));
    lab.switch("host-gw");
    session.send(1 << 20);
    let out = pinger.wait_with_output().expect("ping");
    let received = veth_tests::pings_received(&out.stdout);
    eprintln!("live host-gw -> vxlan -> host-gw: {received}/500 pings answered");
    assert_eq!(received, 500, "{} of 500 pings lost", 500 - received);
    let (sent, got) = session.finish();
    assert_eq!(sent, got, "the TCP connection survived both changes intact");
    assert_eq!(
        vxlan_tx(&lab.node_ns("n1"), &format!("{}-vx", lab.name)),
        None
    );
}

/// A vxlan lab that is up; the namespace of n1's pod a, and the IPv4
/// addresses of pod a on n2 and n3, which it reaches.
fn vxlan_lab_pinging() -> (Lab, String, IpAddr, IpAddr) {
    let lab = Lab::new("vxlan");
    lab.up();
    let (a1, ..) = lab.pod("n1", "a");
    let (_, a2, _) = lab.pod("n2", "a");
    let (_, a3, _) = lab.pod("n3", "a");
    expect_pings(&a1, a3, 3, "n1 -> n3 before");
    (lab, a1, a2, a3)
}

/// `down --cluster-node` takes one node and its namespace away; the
/// others keep talking.
#[test]
fn one_node_down_leaves_the_others_working() {
    let (lab, a1, a2, a3) = vxlan_lab_pinging();
    let out = lab.vethctl(&["down", "-n", &lab.name, "--cluster-node", "n3"]);
    expect_success(&out, "down --cluster-node n3");
    assert!(!netns::exists(&lab.node_ns("n3")), "n3's namespace is gone");
    assert!(!netns::exists(&lab.pod("n3", "a").0), "n3's pods are gone");
    expect_pings(&a1, a2, 5, "n1 -> n2 after n3 went");
    assert_eq!(ping(&a1, a3, 2), 0, "n3's pods are gone");
    // `up` brings it back.
    lab.up();
    expect_pings(&a1, a3, 3, "n1 -> n3 once it is back");
}

/// A node taken out of the file goes (its namespace, and the others'
/// routes, FDB entries and neighbours for it); put back, it comes back.
#[test]
fn nodes_leave_and_join_with_the_file() {
    let (lab, a1, a2, a3) = vxlan_lab_pinging();
    lab.write_nodes("vxlan", &["n1", "n2"]);
    lab.up();
    assert!(!netns::exists(&lab.node_ns("n3")), "n3's namespace is gone");
    let n1 = lab.node_ns("n1");
    let routes = run("ip", &["-n", &n1, "route", "show", "proto", "118"]);
    assert!(
        !routes.contains("10.244.2.0/24"),
        "n1 still routes to n3: {routes}"
    );
    let fdb = run(
        "ip",
        &[
            "netns",
            "exec",
            &n1,
            "bridge",
            "fdb",
            "show",
            "dev",
            &format!("{}-vx", lab.name),
        ],
    );
    assert!(!fdb.contains("198.18.0.3"), "n1 still has n3's VTEP: {fdb}");
    expect_pings(&a1, a2, 3, "n1 -> n2 without n3");
    lab.write("vxlan");
    lab.up();
    expect_pings(&a1, a3, 3, "n1 -> n3 back");
}

/// A bridge of the host's namespace, someone else's as far as the lab is
/// concerned; deleted when dropped.
struct HostBridge(String);

impl Drop for HostBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// `[underlay] bridge` names an existing bridge: the nodes are plugged into
/// it (ports `<cluster>_<node>`, marked), and `down` removes the ports and
/// leaves the bridge.
#[test]
fn nodes_on_an_existing_bridge() {
    require_root();
    let bridge = HostBridge(format!("{}b", unique_name()));
    run("ip", &["link", "add", &bridge.0, "type", "bridge"]);
    run("ip", &["link", "set", &bridge.0, "up"]);
    let lab = Lab::on_bridge("host-gw", &bridge.0);
    lab.up();
    let ports = run("ip", &["-br", "link", "show", "master", &bridge.0]);
    for node in NODES {
        assert!(ports.contains(&format!("{}_{node}", lab.name)), "{ports}");
    }
    let (a1, ..) = lab.pod("n1", "a");
    let (_, b3, b3v6) = lab.pod("n3", "b");
    expect_pings(&a1, b3, 3, "n1 -> n3 over the host's bridge");
    expect_pings(&a1, b3v6, 3, "n1 -> n3 over the host's bridge, IPv6");
    let name = lab.name.clone();
    drop(lab);
    let ports = run("ip", &["-br", "link", "show", "master", &bridge.0]);
    assert!(!ports.contains(&name), "ports left: {ports}");
    assert!(veth_tests::link_exists(&bridge.0), "the bridge stays");
}

/// host-gw -> ebpf -> ebpf-vxlan -> ebpf -> host-gw while pods ping every
/// 10 ms across nodes and a TCP connection keeps sending: no ping is lost
/// and the connection survives (the programs' way is ready on every node
/// before any node sends it; host-gw's routes stay under ebpf).
#[test]
fn ebpf_modes_change_live() {
    let lab = Lab::new("host-gw");
    lab.up();
    let (a1, ..) = lab.pod("n1", "a");
    let (b3_ns, b3, _) = lab.pod("n3", "b");
    expect_pings(&a1, b3, 3, "before the changes");
    // The receiver's read timeout is how long the connection may sit idle:
    // the sender waits while each switch runs (several `up`s on three
    // nodes), which took over 10 s under CI load.
    let mut session = TcpSession::open(&a1, &b3_ns, b3, SWITCH_IDLE);
    session.send(1 << 20);
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &a1, "ping", "-n", "-q", "-i", "0.01", "-c", "800", "-W", "1",
        ])
        .arg(b3.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    for mode in ["ebpf", "ebpf-vxlan", "ebpf", "host-gw"] {
        lab.switch(mode);
        session.send(1 << 20);
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = pinger.wait_with_output().expect("ping");
    let received = veth_tests::pings_received(&out.stdout);
    eprintln!("live host-gw -> ebpf -> ebpf-vxlan -> ebpf -> host-gw: {received}/800 answered");
    assert_eq!(received, 800, "{} of 800 pings lost", 800 - received);
    let (sent, got) = session.finish();
    assert_eq!(sent, got, "the TCP connection survived every change intact");
}

/// vxlan -> ebpf-vxlan -> vxlan: the kernel's VXLAN device and the
/// collect-metadata one take turns on the UDP port (both changes succeed,
/// pods reach each other after each), and what a ping stream lost in the
/// handover is reported.
#[test]
fn vxlan_and_ebpf_vxlan_take_turns_on_the_port() {
    let lab = Lab::new("vxlan");
    lab.up();
    let (a1, ..) = lab.pod("n1", "a");
    let (_, b3, _) = lab.pod("n3", "b");
    expect_pings(&a1, b3, 3, "vxlan before the changes");
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &a1, "ping", "-n", "-q", "-i", "0.01", "-c", "600", "-W", "1",
        ])
        .arg(b3.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    for mode in ["ebpf-vxlan", "vxlan"] {
        lab.switch(mode);
        expect_pings(&a1, b3, 3, &format!("after the change to {mode}"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = pinger.wait_with_output().expect("ping");
    let received = veth_tests::pings_received(&out.stdout);
    eprintln!(
        "live vxlan -> ebpf-vxlan -> vxlan: {} of 600 pings lost",
        600 - received
    );
    assert!(received > 0, "the stream went on");
}
