//! Live changes of a cluster under traffic (issue 20): a numbered UDP
//! stream and long-lived TCP connections from a pod on node n1 to a pod on
//! node n2 (`veth_bench::disruption`, the traffic of `cargo xtask bench
//! disruption --cross-node`) lose no datagram and break no connection
//! while `cross_node` goes host-gw -> ebpf -> host-gw, while a third node
//! joins, and while that node dies (its namespace deleted) and is taken
//! out of the file. Loss is counted by sequence number, so a slow machine
//! shows as gaps, not loss.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use veth_bench::disruption::{Config, Traffic};
use veth_tests::{expect_success, loss::Events, require_root, run, unique_name, vethctl_bin};
use veth_userspace::netlink::netns;

const RATE: u64 = 2_000;
/// How long every connection gets to answer after an event.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A lab of nodes n1 (pod a), n2 (pod b) and, when asked, n3 (pod c).
/// Dropping it brings it down (also on panic) and removes whatever of it
/// is left.
struct Lab {
    name: String,
    file: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let name = unique_name();
        let file = std::env::temp_dir().join(format!("vethctl-disrupt-{name}.toml"));
        Lab { name, file }
    }

    /// Writes the file with `nodes` in `cross_node` and runs `up`.
    fn converge(&self, cross_node: &str, nodes: &[&str]) {
        let mut text = format!(
            "name = \"{}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
             cluster_cidr = \"10.244.0.0/16\"\n",
            self.name
        );
        for (node, pod) in nodes.iter().zip(["a", "b", "c"]) {
            text += &format!("[[nodes]]\nname = \"{node}\"\n[[nodes.pods]]\nname = \"{pod}\"\n");
        }
        std::fs::write(&self.file, text).expect("writing the cluster file");
        let out = Command::new(vethctl_bin())
            .args(["up", "-t", self.file.to_str().unwrap()])
            .output()
            .expect("running vethctl");
        expect_success(&out, &format!("vethctl up ({cross_node}, {nodes:?})"));
    }

    fn node_ns(&self, node: &str) -> String {
        format!("{}.{node}", self.name)
    }

    /// Namespace and address of the pod of node n1, n2 or n3 (each node
    /// gets the next /24 of 10.244.0.0/16, its one pod .2).
    fn pod(&self, node: &str, pod: &str) -> (String, IpAddr) {
        let n: u8 = node[1..].parse::<u8>().unwrap() - 1;
        (
            format!("{}-{}-{pod}", self.node_ns(node), self.name),
            IpAddr::V4(Ipv4Addr::new(10, 244, n, 2)),
        )
    }

    fn namespaces(&self) -> Vec<String> {
        netns::list("")
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&self.name))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = Command::new(vethctl_bin())
            .args(["down", "-n", &self.name])
            .output();
        let _ = std::fs::remove_file(&self.file);
        let left = self.namespaces();
        for ns in &left {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::thread::panicking() {
            return;
        }
        expect_success(&out.expect("running vethctl"), "vethctl down of the lab");
        assert_eq!(left, Vec::<String>::new(), "namespaces left");
    }
}

/// The directory name of node namespace `ns`'s state root and pins.
fn node_key(ns: &str) -> String {
    std::fs::read_dir("/run/vethctl/_nodes")
        .expect("node state roots")
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("netns")).is_ok_and(|n| n.trim() == ns))
        .and_then(|e| e.file_name().into_string().ok())
        .unwrap_or_else(|| panic!("no state root of node {ns}"))
}

#[test]
fn live_cluster_changes_lose_nothing_between_pods_on_two_nodes() {
    let lab = Lab::new();
    lab.converge("host-gw", &["n1", "n2"]);
    let (a_ns, _) = lab.pod("n1", "a");
    let (b_ns, b) = lab.pod("n2", "b");
    let traffic = Traffic::start(&Config {
        client_netns: a_ns,
        server_netns: b_ns,
        server: b,
        udp_port: 11290,
        tcp_port: 11291,
        rate: RATE,
        connections: 2,
        max_seconds: 600,
        tcp_timeout: Duration::from_secs(10),
    })
    .expect("traffic from n1's pod a to n2's pod b");
    thread::sleep(Duration::from_millis(300));
    let mut events = Events::new(&traffic, ANSWER_WITHIN);
    let all = ["n1", "n2", "n3"];
    events.event("host-gw -> ebpf", || lab.converge("ebpf", &["n1", "n2"]));
    events.event("ebpf -> host-gw", || lab.converge("host-gw", &["n1", "n2"]));
    events.event("node n3 added", || lab.converge("host-gw", &all));
    let (c_ns, c) = lab.pod("n3", "c");
    let n3_key = node_key(&lab.node_ns("n3"));
    assert_eq!(veth_tests::ping(&lab.pod("n1", "a").0, c, 2), 2, "n1 -> n3");
    events.event("node n3 died, removed", || {
        run("ip", &["netns", "del", &lab.node_ns("n3")]);
        lab.converge("host-gw", &["n1", "n2"]);
    });
    events.assert_nothing_lost();
    drop(events);
    traffic.stop().expect("the traffic threads");
    // What the dead node left on the machine went with the file's `up`:
    // its pod's namespace (a mount of its own, not inside the node's), its
    // state and its pins.
    assert!(
        !netns::exists(&c_ns),
        "the dead node's pod namespace is left"
    );
    let root = Path::new("/run/vethctl/_nodes").join(&n3_key);
    assert!(
        !root.exists(),
        "the dead node's state is left: {}",
        root.display()
    );
    let pins = Path::new("/sys/fs/bpf/vethctl/_nodes").join(&n3_key);
    assert!(
        !pins.exists(),
        "the dead node's pins are left: {}",
        pins.display()
    );
}

/// Mid `vxlan` -> `ebpf-vxlan` a node already on the programs' tunnel
/// and a node still on the kernel's VXLAN device reach each other both
/// ways: the tunnelled frames carry the receiving node's VTEP MAC, which
/// the kernel's device takes as its own (with the device's own MAC,
/// `TUNNEL_MAC`, it dropped them until the other node changed too).
#[test]
fn a_node_on_ebpf_vxlan_and_a_node_on_vxlan_reach_each_other() {
    let lab = Lab::new();
    lab.converge("vxlan", &["n1", "n2"]);
    let (a_ns, a) = lab.pod("n1", "a");
    let (b_ns, b) = lab.pod("n2", "b");
    assert_eq!(veth_tests::ping(&a_ns, b, 2), 2, "vxlan: a -> b");
    // Only n1 changes, as its operator would on a real node: the same
    // file in ebpf-vxlan, `up` for n1 alone.
    let half = std::env::temp_dir().join(format!("vethctl-disrupt-{}-n1.toml", lab.name));
    let text = std::fs::read_to_string(&lab.file)
        .unwrap()
        .replace("cross_node = \"vxlan\"", "cross_node = \"ebpf-vxlan\"");
    std::fs::write(&half, text).unwrap();
    let out = Command::new(vethctl_bin())
        .args(["--node", &lab.node_ns("n1"), "up", "-t"])
        .arg(&half)
        .args(["--cluster-node", "n1"])
        .output()
        .expect("running vethctl");
    let _ = std::fs::remove_file(&half);
    expect_success(&out, "up of n1 alone in ebpf-vxlan");
    assert_eq!(
        veth_tests::ping(&a_ns, b, 3),
        3,
        "ebpf-vxlan n1 -> vxlan n2"
    );
    assert_eq!(
        veth_tests::ping(&b_ns, a, 3),
        3,
        "vxlan n2 -> ebpf-vxlan n1"
    );
}
