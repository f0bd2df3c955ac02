//! CNI pods on a cluster's nodes (issue 20, "CNI per node"): a 2-node lab
//! (`vethctl up -t CLUSTER.toml`, file pods a and b on each node), and
//! `veth-cni` run in each node's namespace with a configuration whose
//! `name` is the lab's network and whose subnets are the node's pod
//! ranges. Each ADD joins the node's part as it is: an address of the
//! node's range that no file pod has, reaching file pods and the other
//! node's CNI pod across nodes (IPv4 and IPv6) in `host-gw` and `ebpf`;
//! DEL takes it away again. Real namespaces, real packets.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
};

use serde_json::Value;
use veth_tests::{
    cni::{exec_with, plugin_bin, Pod as CniPod, REFERENCE_PLUGINS},
    expect_pings, expect_success, forwarded, require_root, run, unique_name, vethctl_bin, TempDir,
};

const NODES: [&str; 2] = ["n1", "n2"];

/// A 2-node `tc` lab with file pods a and b on each node; dropping it
/// takes it down (also on panic).
struct Lab {
    name: String,
    file: PathBuf,
    cross_node: String,
}

impl Lab {
    fn up(cross_node: &str) -> Lab {
        require_root();
        let name = unique_name();
        let file = std::env::temp_dir().join(format!("vethctl-cluster-cni-{name}.toml"));
        let lab = Lab {
            name,
            file,
            cross_node: cross_node.to_string(),
        };
        lab.write(&[]);
        expect_success(&lab.vethctl_up(), "vethctl up -t CLUSTER");
        lab
    }

    /// The cluster file: pods a and b on every node, and `more` on n1.
    fn write(&self, more: &[&str]) {
        let mut text = format!(
            "name = \"{}\"\nmode = \"tc\"\ncross_node = \"{}\"\n\
             cluster_cidr = \"10.244.0.0/16\"\ncluster_cidr6 = \"fd00:10:244::/56\"\n\
             [underlay]\ncidr6 = \"fd00:198:18::/64\"\n",
            self.name, self.cross_node
        );
        for node in NODES {
            text += &format!("[[nodes]]\nname = \"{node}\"\n");
            let extra = more.iter().filter(|_| node == "n1");
            for pod in ["a", "b"].iter().chain(extra) {
                text += &format!("[[nodes.pods]]\nname = \"{pod}\"\n");
            }
        }
        std::fs::write(&self.file, text).expect("writing the cluster file");
    }

    fn vethctl_up(&self) -> std::process::Output {
        Command::new(vethctl_bin())
            .args(["up", "-t", self.file.to_str().unwrap()])
            .output()
            .expect("running vethctl")
    }

    fn node_ns(&self, node: &str) -> String {
        format!("{}.{node}", self.name)
    }

    /// Node number of `node` (its ranges are the cluster's n-th /24, /64).
    fn index(node: &str) -> u8 {
        NODES.iter().position(|n| *n == node).unwrap() as u8
    }

    /// Host `host` of node `node`'s IPv4 and IPv6 pod ranges.
    fn host(node: &str, host: u8) -> (IpAddr, IpAddr) {
        let n = Lab::index(node);
        (
            IpAddr::V4(Ipv4Addr::new(10, 244, n, host)),
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                n.into(),
                0,
                0,
                0,
                host.into(),
            )),
        )
    }

    /// Namespace of file pod `pod` on `node`.
    fn file_pod_ns(&self, node: &str, pod: &str) -> String {
        format!("{}-{}-{pod}", self.node_ns(node), self.name)
    }

    /// The node's CNI configuration: what `vethctl install-cni --name LAB`
    /// (no `--subnet`: the node's part gives its ranges and mode) writes
    /// in the node, as the plugin gets it from the list.
    fn conf(&self, node: &str) -> Value {
        let (out, dir) = self.install_cni_in(node, &[]);
        expect_success(&out, &format!("install-cni on {node}"));
        let list = dir.path().join("conf").join("10-vethctl.conflist");
        let text = std::fs::read_to_string(list).expect("the list");
        let list: Value = serde_json::from_str(&text).expect("a JSON list");
        let mut plugin = list["plugins"][0].clone();
        plugin["name"] = list["name"].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin
    }

    /// `vethctl install-cni --name LAB ARGS` in node `node`, into a
    /// directory of the test's (returned with what the command said).
    fn install_cni_in(&self, node: &str, args: &[&str]) -> (std::process::Output, TempDir) {
        let dir = TempDir::new("vethctl-cluster-cni");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(node)])
            .arg(vethctl_bin())
            .args(["install-cni", "--name", &self.name, "--chain", ""])
            .args(args)
            .arg("--plugin")
            .arg(plugin_bin())
            .arg("--bin-dir")
            .arg(dir.path().join("bin"))
            .arg("--conf-dir")
            .arg(dir.path().join("conf"))
            .output()
            .expect("running vethctl install-cni");
        (out, dir)
    }

    fn install_cni(&self, node: &str, args: &[&str]) -> std::process::Output {
        self.install_cni_in(node, args).0
    }

    /// `veth-cni` `command` for `pod` in node `node`'s namespace.
    fn cni(&self, node: &str, command: &str, pod: &CniPod, conf: &Value) -> veth_tests::cni::Reply {
        let vars = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_NETNS", pod.netns.path()),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_ns(node)])
            .arg(plugin_bin());
        exec_with(cmd, &vars, conf.to_string().as_bytes())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = Command::new(vethctl_bin())
            .args(["down", "-n", &self.name])
            .output();
        let _ = std::fs::remove_file(&self.file);
        if !std::thread::panicking() {
            expect_success(&out.expect("running vethctl"), "vethctl down of the lab");
        }
    }
}

/// The pod's addresses in an ADD's result.
fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .expect("ips[]")
        .iter()
        .map(|ip| {
            let cidr = ip["address"].as_str().expect("an address");
            cidr.split('/').next().unwrap().parse().expect("an IP")
        })
        .collect()
}

fn cni_pods_reach_pods_on_other_nodes(cross_node: &str) {
    let lab = Lab::up(cross_node);
    let pods = [CniPod::new(), CniPod::new()];
    let confs: Vec<Value> = NODES.iter().map(|node| lab.conf(node)).collect();
    for (node, conf) in NODES.iter().zip(&confs) {
        let n = Lab::index(node);
        let ipam = &conf["ipam"];
        assert_eq!(ipam["subnet"], format!("10.244.{n}.0/24"), "{conf}");
        let range6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, n.into(), 0, 0, 0, 0);
        assert_eq!(ipam["subnet6"], format!("{range6}/64"), "{conf}");
    }
    // Another node's range, or another mode, is refused, naming the key
    // and the node's value; nothing is made.
    let stray = CniPod::new();
    lab.cni("n1", "ADD", &stray, &confs[1]).expect_error(
        7,
        &["ipam.subnet", "10.244.0.0/24"],
        "n2's range on n1",
    );
    assert!(
        stray.netns.link("eth0").is_none(),
        "a refused ADD made nothing"
    );
    let out = lab.install_cni("n1", &["--mode", "bridge"]);
    assert!(
        !out.status.success(),
        "install-cni --mode bridge on a tc node"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mode") && stderr.contains("tc"), "{stderr}");
    let mut ips = Vec::new();
    for ((node, pod), conf) in NODES.iter().zip(&pods).zip(&confs) {
        let reply = lab.cni(node, "ADD", pod, conf);
        let result = reply.expect_ok(&format!("ADD on {node}"));
        // The node's pods' MTU: VXLAN's 50 bytes less where it encapsulates.
        let mtu = if cross_node.ends_with("vxlan") {
            1450
        } else {
            1500
        };
        let link = pod.netns.link("eth0").expect("the pod's eth0");
        assert_eq!(link["mtu"], mtu, "the pod's MTU on {node}: {link}");
        let got = addresses(result);
        assert_eq!(got.len(), 2, "IPv4 and IPv6 on {node}: {got:?}");
        // The node (.1) and the file pods (.2, .3) have theirs already.
        let taken: Vec<IpAddr> = [1, 2, 3]
            .iter()
            .flat_map(|h| {
                let (v4, v6) = Lab::host(node, *h);
                [v4, v6]
            })
            .collect();
        let (v4, v6) = Lab::host(node, 4);
        assert_eq!(
            got,
            vec![v4, v6],
            "the lowest addresses of {node}'s ranges no file pod has ({taken:?} are taken)"
        );
        ips.push(got);
    }
    // A pod added to the file later never gets a CNI pod's address: the
    // lowest free one (.4) is n1's CNI pod's, and `up` refuses.
    lab.write(&["c"]);
    let out = lab.vethctl_up();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("10.244.0.4") && stderr.contains(&pods[0].id),
        "up with pod c on n1: {stderr}"
    );
    lab.write(&[]);
    expect_success(&lab.vethctl_up(), "up without pod c");
    let (n1, n2) = (&pods[0], &pods[1]);
    let node_nss: Vec<String> = NODES.iter().map(|n| lab.node_ns(n)).collect();
    let before: Vec<(u64, u64)> = node_nss.iter().map(|ns| forwarded(ns)).collect();
    for ip in &ips[1] {
        n1.netns.expect_pings(
            *ip,
            3,
            &format!("{cross_node}: CNI pod on n1 -> CNI pod on n2"),
        );
    }
    let after: Vec<(u64, u64)> = node_nss.iter().map(|ns| forwarded(ns)).collect();
    // The programs carry the CNI pods' frames past both nodes' stacks, as
    // they do the file pods'; the kernel-path modes forward them.
    match cross_node.starts_with("ebpf") {
        true => assert_eq!(before, after, "{cross_node}: no node forwarded"),
        false => assert_ne!(before, after, "{cross_node}: the nodes forwarded"),
    }
    for family in 0..2 {
        let what = |to: &str| format!("{cross_node}: CNI pod on n1 -> {to} ({})", ips[0][family]);
        let (a2, a2_v6) = Lab::host("n2", 2);
        n1.netns
            .expect_pings([a2, a2_v6][family], 3, &what("file pod a on n2"));
        let (a1, a1_v6) = Lab::host("n1", 2);
        n1.netns
            .expect_pings([a1, a1_v6][family], 3, &what("file pod a on n1"));
        expect_pings(
            &lab.file_pod_ns("n1", "b"),
            ips[1][family],
            3,
            &format!("{cross_node}: file pod b on n1 -> CNI pod on n2"),
        );
        n2.netns
            .expect_pings(ips[0][family], 3, "CNI pod on n2 -> CNI pod on n1");
    }
    for ((node, pod), conf) in NODES.iter().zip(&pods).zip(&confs) {
        lab.cni(node, "DEL", pod, conf)
            .expect_ok(&format!("DEL on {node}"));
        assert!(
            pod.netns.link("eth0").is_none(),
            "DEL removed eth0 on {node}"
        );
        let links = run("ip", &["-n", &lab.node_ns(node), "-o", "link", "show"]);
        assert!(
            !links.contains(" vc"),
            "DEL removed the host veth on {node}: {links}"
        );
    }
    // File pods are untouched by the CNI pods' DELs; the address is free
    // again for a file pod.
    lab.write(&["c"]);
    expect_success(&lab.vethctl_up(), "pod c on n1 after the DELs");
    let (b2, _) = Lab::host("n2", 3);
    expect_pings(
        &lab.file_pod_ns("n1", "a"),
        b2,
        3,
        "file pods after the DELs",
    );
}

#[test]
fn cni_pods_on_cluster_nodes_reach_pods_on_other_nodes_host_gw() {
    cni_pods_reach_pods_on_other_nodes("host-gw");
}

#[test]
fn cni_pods_on_cluster_nodes_reach_pods_on_other_nodes_ebpf() {
    cni_pods_reach_pods_on_other_nodes("ebpf");
}

#[test]
fn cni_pods_on_cluster_nodes_reach_pods_on_other_nodes_vxlan() {
    cni_pods_reach_pods_on_other_nodes("vxlan");
}

#[test]
fn cni_pods_on_cluster_nodes_reach_pods_on_other_nodes_ebpf_vxlan() {
    cni_pods_reach_pods_on_other_nodes("ebpf-vxlan");
}
