//! Cross-node `ebpf` and `ebpf-vxlan` end to end: three node namespaces
//! on a switch (a bridge in a namespace of the test's own), each running
//! its part of one network (`vethctl up` under `ip netns exec NODE`, a
//! topology file with a `[node]` table, as on a real node), two pods each.
//!
//! What the kernel proves: pods reach pods on other nodes (ping, UDP, TCP,
//! IPv4 and IPv6) while no node's IP stack forwards anything
//! (`IpForwDatagrams`, `Ip6OutForwDatagrams` unchanged); the frames on the
//! switch are plain (`ebpf`) or VXLAN with our VNI (`ebpf-vxlan`); the
//! remote counters moved. Frames put on the switch by a stranger (not a
//! node, or through the tunnel with another VNI) never reach a pod and
//! are counted under their reasons, while the same frames from a node's
//! address and our VNI do reach it (so the injection itself works).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use veth_tests::{
    attack::{marker, payload, udp_send, Capture, Ipv4, Netns, PacketSocket, UdpSink},
    counter, drops, expect_pings, forwarded,
    frames::{ethernet, ETH_P_IP},
    node::TestNode,
    run, tcp_connects_to, unique_name, wait_until, TempDir,
};

/// VXLAN's UDP port and VNI of the lab.
const PORT: u16 = 8472;
const VNI: u32 = 1;
/// MAC of every node's collect-metadata VXLAN device (`veth_common::TUNNEL_MAC`).
const TUNNEL_MAC: [u8; 6] = [0x0e, 0xee, 0xee, 0xee, 0xee, 0xee];
const UDP_PORT: u16 = 5301;
/// MAC of n1's kernel VXLAN device: `0e:58:` and its underlay address.
const VTEP_MAC_1: [u8; 6] = [0x0e, 0x58, 192, 0, 2, 1];

fn underlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i as u8)
}
fn underlay6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, i as u16)
}
fn pod_cidr(i: usize) -> String {
    format!("10.98.{i}.0/24")
}
fn pod_cidr6(i: usize) -> String {
    format!("fd00:98:0:{i}::/64")
}

/// Three nodes (1, 2, 3) on a switch, one network on all of them.
struct Lab {
    /// Dropped first: each node takes its network down, then goes.
    nodes: Vec<TestNode>,
    switch: Netns,
    network: String,
    dir: TempDir,
}

impl Lab {
    fn new(mode: &str) -> Lab {
        let switch = Netns::create("xsw");
        run(
            "ip",
            &["-n", &switch.name, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &switch.name, "link", "set", "br0", "up"]);
        let nodes: Vec<TestNode> = (1..=3).map(|_| TestNode::new()).collect();
        for (i, node) in nodes.iter().enumerate() {
            plug(&switch.name, &format!("p{}", i + 1), &node.name);
        }
        let lab = Lab {
            nodes,
            switch,
            network: unique_name(),
            dir: TempDir::new("vethctl-xnode"),
        };
        lab.up(mode);
        lab
    }

    /// Writes every node's part for `mode` and runs `up` on each.
    fn up(&self, mode: &str) {
        for i in 1..=3 {
            let file = self.file(i, mode);
            self.node(i)
                .vethctl_ok(&["up", "-t", &file.to_string_lossy()]);
        }
    }

    fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i - 1]
    }

    /// Node `i`'s part: its pods and pod ranges, and the `[node]` table.
    fn file(&self, i: usize, mode: &str) -> PathBuf {
        // IPv6 on the underlay: VXLAN's overhead is 70.
        let mtu = if mode.contains("vxlan") { 1430 } else { 1500 };
        let mut text = format!(
            "name = \"{}\"\nmode = \"tc\"\npod_cidr = \"{}\"\npod_cidr6 = \"{}\"\nmtu = {mtu}\n\
             [[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n\
             [node]\nname = \"n{i}\"\ncross_node = \"{mode}\"\ncluster_cidr = \"10.98.0.0/16\"\n\
             cluster_cidr6 = \"fd00:98::/48\"\ninterface = \"eth0\"\naddress = \"{}/24\"\n\
             address6 = \"{}/64\"\nvni = {VNI}\nport = {PORT}\nunderlay_mtu = 1500\n",
            self.network,
            pod_cidr(i),
            pod_cidr6(i),
            underlay(i),
            underlay6(i),
        );
        for j in (1..=3).filter(|&j| j != i) {
            text += &format!(
                "[[node.peers]]\nname = \"n{j}\"\naddress = \"{}\"\naddress6 = \"{}\"\n\
                 pod_cidr = \"{}\"\npod_cidr6 = \"{}\"\n",
                underlay(j),
                underlay6(j),
                pod_cidr(j),
                pod_cidr6(j)
            );
        }
        let file = self.dir.path().join(format!("n{i}.toml"));
        std::fs::write(&file, text).expect("writing a node's part");
        file
    }

    /// Pod `pod` of node `i` as `status --json` shows it.
    fn pod(&self, i: usize, pod: &str) -> Value {
        let status = self.node(i).vethctl_json(&["status", "-n", &self.network]);
        status["topologies"][0]["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["name"] == pod).cloned())
            .unwrap_or_else(|| panic!("pod {pod} of node {i} in {status}"))
    }

    /// The pair counters of pod `pod` of node `i` (`stats --json`).
    fn pair(&self, i: usize, pod: &str) -> Value {
        let stats = self.node(i).vethctl_json(&["stats", "-n", &self.network]);
        stats["topologies"][0]["pairs"]
            .as_array()
            .and_then(|pairs| pairs.iter().find(|p| p["pod"] == pod).cloned())
            .unwrap_or_else(|| panic!("pair {pod} of node {i} in {stats}"))
    }

    /// What every node's IP stack forwarded so far (IPv4 and IPv6).
    fn forwarded(&self) -> Vec<(u64, u64)> {
        self.nodes.iter().map(|n| forwarded(&n.name)).collect()
    }

    /// A namespace of the test's own on the switch, with `address`.
    fn stranger(&self, address: Ipv4Addr) -> Netns {
        let ns = Netns::create("xst");
        plug(&self.switch.name, "p9", &ns.name);
        run(
            "ip",
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ],
        );
        ns
    }
}

/// A veth from the switch's bridge (`port`) to `eth0` of `netns`, up.
fn plug(switch: &str, port: &str, netns: &str) {
    run(
        "ip",
        &[
            "-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            netns,
        ],
    );
    run(
        "ip",
        &["-n", switch, "link", "set", port, "master", "br0", "up"],
    );
    run("ip", &["-n", netns, "link", "set", "eth0", "up"]);
}

fn addr(pod: &Value, family: &str) -> IpAddr {
    pod[family]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("an address")
}

fn netns(pod: &Value) -> String {
    pod["netns"].as_str().expect("netns").to_string()
}

/// The UDP destination port of an untagged IPv4 frame (no options).
fn udp_dport(frame: &[u8]) -> Option<u16> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    (ethertype == ETH_P_IP && *frame.get(23)? == 17)
        .then(|| u16::from_be_bytes([frame[36], frame[37]]))
}

/// Pods on different nodes reach each other by every protocol, the nodes'
/// stacks forward nothing, the switch sees plain or encapsulated frames,
/// and the remote counters move.
fn pods_reach_other_nodes(mode: &str) {
    let lab = Lab::new(mode);
    let (a1, b2, a3, b3) = (
        lab.pod(1, "a"),
        lab.pod(2, "b"),
        lab.pod(3, "a"),
        lab.pod(3, "b"),
    );
    let before = lab.forwarded();
    let sent_before = counter(&lab.pair(1, "a"), "from_pod", "remote_packets");
    let received_before = counter(&lab.pair(2, "b"), "to_pod", "remote_packets");
    let capture = Capture::start(&lab.switch.name);
    for family in ["ipv4", "ipv6"] {
        for (from, to, what) in [(&a1, &b2, "n1.a -> n2.b"), (&b3, &a1, "n3.b -> n1.a")] {
            expect_pings(
                &netns(from),
                addr(to, family),
                3,
                &format!("[{mode}] {what} {family}"),
            );
        }
        assert!(
            tcp_connects_to(
                &netns(&a1),
                &netns(&a3),
                addr(&a3, family),
                Duration::from_secs(5)
            ),
            "[{mode}] TCP n1.a -> n3.a over {family}"
        );
        let sink = UdpSink::start(&netns(&b2), &[addr(&b2, family)], UDP_PORT);
        let mark = marker();
        udp_send(
            &netns(&a1),
            addr(&b2, family),
            UDP_PORT,
            &payload(&mark, 64),
        );
        wait_until(
            Duration::from_secs(5),
            &format!("[{mode}] UDP {family}"),
            || !sink.containing(&mark).is_empty(),
        );
        let from = sink.containing(&mark)[0].from.ip();
        assert_eq!(
            from,
            addr(&a1, family),
            "[{mode}] the source is kept across nodes"
        );
    }
    assert_eq!(
        lab.forwarded(),
        before,
        "[{mode}] (IpForwDatagrams, Ip6OutForwDatagrams) of n1, n2, n3: nothing went through \
         a node's forwarding"
    );
    // The last datagram (IPv6 n1.a -> n2.b) on the wire.
    let on_wire = capture.matching(|c| c.len > 100 && udp_dport(&c.frame) == Some(PORT));
    let plain_v4 = capture.matching(|c| udp_dport(&c.frame) == Some(UDP_PORT));
    drop(capture);
    if mode == "ebpf-vxlan" {
        assert!(!on_wire.is_empty(), "[{mode}] VXLAN frames on the switch");
        let vni = &on_wire[0].frame[46..49];
        assert_eq!(
            vni,
            &VNI.to_be_bytes()[1..],
            "[{mode}] the VNI of the network"
        );
        assert!(
            plain_v4.is_empty(),
            "[{mode}] no plain pod frames on the switch"
        );
    } else {
        assert!(
            on_wire.is_empty(),
            "[{mode}] nothing encapsulated on the switch"
        );
        assert!(
            !plain_v4.is_empty(),
            "[{mode}] the pods' UDP plain on the switch"
        );
    }
    let sent = counter(&lab.pair(1, "a"), "from_pod", "remote_packets") - sent_before;
    let received = counter(&lab.pair(2, "b"), "to_pod", "remote_packets") - received_before;
    assert!(
        sent >= 10,
        "[{mode}] n1.a sent {sent} frames to other nodes, counted"
    );
    assert!(
        received >= 8,
        "[{mode}] n2.b received {received} frames from other nodes, counted"
    );
}

#[test]
fn ebpf_pods_reach_pods_on_other_nodes_past_the_nodes_forwarding() {
    pods_reach_other_nodes("ebpf");
}

#[test]
fn ebpf_vxlan_pods_reach_pods_on_other_nodes_through_the_tunnel() {
    pods_reach_other_nodes("ebpf-vxlan");
}

/// An IPv4/UDP frame from `src` to pod `dst` with `mark`, sent to `dst_mac`.
fn datagram(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, mark: &[u8]) -> Vec<u8> {
    let packet = Ipv4::new(src, dst).udp(40000, UDP_PORT, &payload(mark, 64));
    ethernet(dst_mac, [0x02, 0, 0, 0, 0, 0x66], ETH_P_IP, &packet)
}

/// `inner` in VXLAN (`vni`) from `src` to `dst` on the underlay.
fn vxlan(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut body = vec![0x08, 0, 0, 0];
    body.extend_from_slice(&(vni << 8).to_be_bytes());
    body.extend_from_slice(inner);
    let packet = Ipv4::new(src, dst).udp(40001, PORT, &body);
    ethernet(dst_mac, [0x02, 0, 0, 0, 0, 0x66], ETH_P_IP, &packet)
}

/// Where a frame that must not reach the pod is counted: for the pod
/// under a reason, or for the node (`underlay_drops`) when no pod is
/// known yet (the outer header of the kernel's VXLAN).
#[derive(Clone, Copy)]
enum Counted {
    Pod(&'static str),
    Underlay,
}

/// A frame a stranger puts on the switch, its marker, whether the pod must
/// get it, and where it must be counted otherwise.
struct Injection {
    what: &'static str,
    frame: Vec<u8>,
    mark: Vec<u8>,
    delivered: bool,
    counted: Option<Counted>,
}

type Case = (&'static str, Vec<u8>, Vec<u8>, bool, Option<Counted>);

impl From<Case> for Injection {
    fn from((what, frame, mark, delivered, counted): Case) -> Injection {
        Injection {
            what,
            frame,
            mark,
            delivered,
            counted,
        }
    }
}

fn mac_of(netns: &str, ifname: &str) -> [u8; 6] {
    let text = run("ip", &["-n", netns, "-j", "link", "show", ifname]);
    let links: Value = serde_json::from_str(&text).expect("ip -j");
    let mac = links[0]["address"].as_str().expect("a MAC");
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().expect("6 bytes")
}

impl Lab {
    /// What node `i` dropped from the underlay for no pod.
    fn underlay_drops(&self, i: usize) -> u64 {
        self.node(i).vethctl_json(&["stats", "-n", &self.network])["topologies"][0]
            ["underlay_drops"]
            .as_u64()
            .expect("underlay_drops")
    }

    /// How many times `counted` has counted so far.
    fn counted(&self, counted: Counted) -> u64 {
        match counted {
            Counted::Pod(reason) => drops(&self.pair(1, "a"), reason),
            Counted::Underlay => self.underlay_drops(1),
        }
    }
}

/// A stranger on the switch with a route to n1's pod range via n1 pings
/// pod a of n1: no reply, each request counted `unknown_node` for the pod;
/// n2 itself still reaches the pod.
fn strangers_pings_go_unanswered(lab: &Lab, mode: &str, stranger: &Netns) {
    let a1 = lab.pod(1, "a");
    run(
        "ip",
        &[
            "-n",
            &stranger.name,
            "route",
            "add",
            &pod_cidr(1),
            "via",
            &underlay(1).to_string(),
        ],
    );
    let before = drops(&lab.pair(1, "a"), "unknown_node");
    let replies = veth_tests::ping(&stranger.name, addr(&a1, "ipv4"), 3);
    let dropped = drops(&lab.pair(1, "a"), "unknown_node") - before;
    assert_eq!(
        (replies, dropped),
        (0, 3),
        "[{mode}] a stranger's pings to n1.a: (replies, counted unknown_node)"
    );
    expect_pings(
        &lab.node(2).name,
        addr(&a1, "ipv4"),
        3,
        &format!("[{mode}] n2 itself -> n1.a"),
    );
}

/// The cases for `mode`: plain frames for every mode (the underlay's
/// program checks them in all four), VXLAN ones for the tunnelled modes.
fn injections(mode: &str, node_mac: [u8; 6], stranger_ip: Ipv4Addr, pod: Ipv4Addr) -> Vec<Case> {
    let remote_pod = Ipv4Addr::new(10, 98, 3, 5);
    let (m1, m2, m3) = (marker(), marker(), marker());
    let mut cases: Vec<Case> = vec![
        (
            "from a stranger's address",
            datagram(node_mac, stranger_ip, pod, &m1),
            m1,
            false,
            Some(Counted::Pod("unknown_node")),
        ),
        (
            "from node 3's address",
            datagram(node_mac, underlay(3), pod, &m2),
            m2,
            true,
            None,
        ),
    ];
    if !mode.contains("vxlan") {
        cases.push((
            "from node 3's pod range",
            datagram(node_mac, remote_pod, pod, &m3),
            m3,
            true,
            None,
        ));
        return cases;
    }
    // The inner frame to what takes it on n1: every node's tunnel device
    // (`ebpf-vxlan`), or n1's VTEP (`vxlan`), whose outer checks find no
    // pod to count for.
    let kernel = mode == "vxlan";
    let inner_mac = if kernel { VTEP_MAC_1 } else { TUNNEL_MAC };
    let counted: fn(&'static str) -> Counted = if kernel {
        |_| Counted::Underlay
    } else {
        Counted::Pod
    };
    let inner = |mark: &[u8]| datagram(inner_mac, remote_pod, pod, mark);
    let (m4, m5, m6) = (marker(), marker(), marker());
    let to_n1 = |src, vni, mark: &[u8]| vxlan(node_mac, src, underlay(1), vni, &inner(mark));
    cases.extend([
        (
            "VXLAN from a stranger",
            to_n1(stranger_ip, VNI, &m4),
            m4,
            false,
            Some(counted("unknown_node")),
        ),
        (
            "VXLAN from node 3's address, another VNI",
            to_n1(underlay(3), VNI + 98, &m5),
            m5,
            false,
            Some(counted("wrong_vni")),
        ),
        (
            "VXLAN from node 3's address, our VNI",
            to_n1(underlay(3), VNI, &m6),
            m6,
            true,
            None,
        ),
    ]);
    cases
}

/// A stranger on the switch pings a pod of n1 and puts frames for it on
/// the wire: from an address that is no node's they are dropped
/// (`unknown_node`), through the tunnel with another VNI too
/// (`wrong_vni`); the same frames from a node's address or pod range, or
/// with our VNI, arrive, so what is dropped is dropped for its source.
fn strangers_frames_never_reach_a_pod(mode: &str) {
    let lab = Lab::new(mode);
    let a1 = lab.pod(1, "a");
    let IpAddr::V4(pod) = addr(&a1, "ipv4") else {
        unreachable!()
    };
    let stranger_ip = Ipv4Addr::new(192, 0, 2, 66);
    let stranger = lab.stranger(stranger_ip);
    strangers_pings_go_unanswered(&lab, mode, &stranger);
    let sock = PacketSocket::open(&stranger.name, "eth0");
    let node_mac = mac_of(&lab.node(1).name, "eth0");
    let sink = UdpSink::start(&netns(&a1), &[IpAddr::V4(pod)], UDP_PORT);
    let cases = injections(mode, node_mac, stranger_ip, pod);
    for Injection {
        what,
        frame,
        mark,
        delivered,
        counted,
    } in cases.into_iter().map(Injection::from)
    {
        let counted_before = counted.map(|c| lab.counted(c));
        for _ in 0..3 {
            sock.send(&frame);
        }
        if delivered {
            wait_until(
                Duration::from_secs(5),
                &format!("[{mode}] {what}: delivered"),
                || !sink.containing(&mark).is_empty(),
            );
        } else {
            std::thread::sleep(Duration::from_millis(500));
            assert!(
                sink.containing(&mark).is_empty(),
                "[{mode}] {what}: reached the pod"
            );
        }
        if let (Some(c), Some(before)) = (counted, counted_before) {
            assert_eq!(lab.counted(c) - before, 3, "[{mode}] {what}: counted");
        }
    }
    // For the pod range but no pod: dropped, and counted for the node.
    let before = lab.underlay_drops(1);
    let no_pod = Ipv4Addr::new(10, 98, 1, 200);
    let frame = match mode {
        "ebpf-vxlan" => vxlan(
            node_mac,
            stranger_ip,
            underlay(1),
            VNI,
            &datagram(TUNNEL_MAC, Ipv4Addr::new(10, 98, 3, 5), no_pod, &marker()),
        ),
        _ => datagram(node_mac, stranger_ip, no_pod, &marker()),
    };
    for _ in 0..3 {
        sock.send(&frame);
    }
    wait_until(
        Duration::from_secs(2),
        &format!("[{mode}] 3 underlay drops"),
        || lab.underlay_drops(1) == before + 3,
    );
}

#[test]
fn ebpf_frames_from_a_stranger_on_the_underlay_never_reach_a_pod() {
    strangers_frames_never_reach_a_pod("ebpf");
}

#[test]
fn ebpf_vxlan_frames_from_a_stranger_or_another_vni_never_reach_a_pod() {
    strangers_frames_never_reach_a_pod("ebpf-vxlan");
}

#[test]
fn host_gw_frames_from_a_stranger_on_the_underlay_never_reach_a_pod() {
    strangers_frames_never_reach_a_pod("host-gw");
}

#[test]
fn vxlan_frames_from_a_stranger_or_another_vni_never_reach_a_pod() {
    strangers_frames_never_reach_a_pod("vxlan");
}

/// `host-gw` -> `ebpf` -> `host-gw`, node after node, under a ping stream
/// (100/s) from a pod of n1 to a pod of n2: the loss is measured and must
/// be 0 (both paths carry the same plain frames, and the routes stay).
#[test]
fn host_gw_and_ebpf_switch_live_without_loss() {
    let lab = Lab::new("host-gw");
    let (a1, b2) = (lab.pod(1, "a"), lab.pod(2, "b"));
    let dst = addr(&b2, "ipv4");
    expect_pings(&netns(&a1), dst, 3, "host-gw before the switch");
    let count = 600;
    let stream = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns(&a1),
            "ping",
            "-n",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .args(["-c", &count.to_string(), &dst.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(300));
    let sent_before = counter(&lab.pair(1, "a"), "from_pod", "remote_packets");
    lab.up("ebpf");
    std::thread::sleep(Duration::from_millis(500));
    let sent_in_ebpf = counter(&lab.pair(1, "a"), "from_pod", "remote_packets") - sent_before;
    lab.up("host-gw");
    let out = stream.wait_with_output().expect("ping output");
    let received = veth_tests::pings_received(&out.stdout);
    eprintln!(
        "host-gw -> ebpf -> host-gw under {count} pings: {} lost; {sent_in_ebpf} sent by the \
         programs while in ebpf",
        count - received
    );
    assert!(
        sent_in_ebpf > 10,
        "the stream took the programs' path in ebpf"
    );
    assert_eq!(received, count, "pings lost across host-gw <-> ebpf");
}
