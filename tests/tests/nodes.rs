//! Nodes on one machine (issue 20): a network namespace run under `ip netns
//! exec` behaves like a machine of its own. The same network name on two
//! nodes never shares state, pins, locks, address ledgers or pod
//! namespace names; what a command set up outlives it (pins on the host's
//! bpffs, pod namespaces mounted in the host's mount namespace); `down` of
//! one node leaves the other's pods working, and the last `down` leaves
//! nothing. Real namespaces, programs and packets.

use std::{collections::BTreeSet, net::IpAddr, path::Path, time::Duration};

use serde_json::{json, Value};
use veth_tests::{
    cni::{exec_with, plugin_bin, Pod as CniPod, REFERENCE_PLUGINS},
    counter, expect_pings, free_port,
    node::TestNode,
    ping, run, serving, unique_name, wait_until, AddressBlock, ChildGuard,
};

/// A dual-stack tc network named `name` with pods a and b, as a file.
fn topology_file(name: &str, block: &AddressBlock) -> std::path::PathBuf {
    let text = format!(
        "name = \"{name}\"\nmode = \"tc\"\npod_cidr = \"{}\"\npod_cidr6 = \"{}\"\n\
         \n[[pods]]\nname = \"a\"\n\n[[pods]]\nname = \"b\"\n",
        block.cidr, block.cidr6
    );
    let file = std::env::temp_dir().join(format!("vethctl-nodes-{name}.toml"));
    std::fs::write(&file, text).expect("writing the topology file");
    file
}

/// The pods `status --json` of `node` lists for network `name`, by pod.
fn status_pods(node: &TestNode, name: &str) -> Vec<Value> {
    node.vethctl_json(&["status", "-n", name])["topologies"][0]["pods"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn addr(pod: &Value, family: &str) -> IpAddr {
    pod[family]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("an address")
}

/// Pods a and b of `node` reach each other over IPv4 and IPv6, and the
/// programs (not the node's stack) carried it: the redirect counters moved.
fn expect_pods_ping(node: &TestNode, name: &str, what: &str) {
    let pods = status_pods(node, name);
    assert_eq!(pods.len(), 2, "{what}: two pods in {}: {pods:?}", node.name);
    let redirected = |node: &TestNode| -> u64 {
        let stats = node.vethctl_json(&["stats", "-n", name]);
        stats["topologies"][0]["pairs"]
            .as_array()
            .expect("pairs[]")
            .iter()
            .map(|p| counter(p, "from_pod", "redirected_packets"))
            .sum()
    };
    let before = redirected(node);
    let netns = pods[0]["netns"].as_str().expect("netns");
    for family in ["ipv4", "ipv6"] {
        expect_pings(
            netns,
            addr(&pods[1], family),
            5,
            &format!("{what} ({family})"),
        );
    }
    assert!(
        redirected(node) >= before + 10,
        "{what}: the programs of node {} redirected the pings",
        node.name
    );
}

#[test]
fn the_same_network_on_two_nodes_keeps_apart_and_outlives_its_commands() {
    let (a, b) = (TestNode::new(), TestNode::new());
    let name = unique_name();
    let block = AddressBlock::reserve(&name);
    let file = topology_file(&name, &block);
    let file_arg = file.to_str().expect("a UTF-8 path");
    for node in [&a, &b] {
        node.vethctl_ok(&["up", "-t", file_arg]);
    }
    // Both commands have exited: what they made must still work.
    for node in [&a, &b] {
        expect_pods_ping(node, &name, "after up");
        assert_eq!(
            node.pod_namespaces(),
            vec![
                format!("{}-{name}-a", node.name),
                format!("{}-{name}-b", node.name)
            ],
            "each node names its pod namespaces after itself"
        );
        let pins = node.pins_root().expect("the node's pins").join(&name);
        let link = pins.join(format!("links/{name}-a/ingress"));
        let shown = run(
            "bpftool",
            &["-j", "link", "show", "pinned", link.to_str().unwrap()],
        );
        let shown: Value = serde_json::from_str(&shown).expect("bpftool JSON");
        assert!(
            shown["prog_id"].as_u64().is_some_and(|id| id > 0),
            "{}: a pinned link to a program: {shown}",
            link.display()
        );
        let status = node.vethctl_json(&["status", "-n", &name]);
        assert_eq!(
            status["topologies"][0]["pin_dir"].as_str(),
            pins.to_str(),
            "status shows where the pins are on the host"
        );
    }
    assert!(
        !Path::new("/run/vethctl").join(&name).exists(),
        "nothing of a node in the host's own state"
    );
    assert!(!Path::new("/sys/fs/bpf/vethctl").join(&name).exists());

    let netns_of = |node: &TestNode| -> BTreeSet<String> {
        status_pods(node, &name)
            .iter()
            .map(|p| p["netns"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(
        netns_of(&a)
            .iter()
            .all(|n| n.starts_with(&format!("{}-", a.name))),
        "status in node A shows only A's pods: {:?}",
        netns_of(&a)
    );
    // `vethctl --node B` from the host is the same command as under
    // `ip netns exec B`.
    let out = veth_tests::vethctl(
        &["--node", &b.name, "status", "-n", &name, "--json"],
        &[],
        None,
    );
    veth_tests::expect_success(&out, "vethctl --node B status");
    let via_flag: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        via_flag["topologies"][0]["pods"],
        b.vethctl_json(&["status", "-n", &name])["topologies"][0]["pods"],
        "--node B sees B's pods"
    );

    a.vethctl_ok(&["down", "-n", &name]);
    assert!(a.pod_namespaces().is_empty(), "A's pod namespaces are gone");
    assert_eq!(a.state_root(), None, "A's state root is gone");
    expect_pods_ping(&b, &name, "B after A's down");

    let (b_root, b_pins) = (b.state_root().unwrap(), b.pins_root().unwrap());
    b.vethctl_ok(&["down", "-n", &name]);
    assert!(b.pod_namespaces().is_empty(), "B's pod namespaces are gone");
    assert!(!b_root.exists(), "{} is gone", b_root.display());
    assert!(!b_pins.exists(), "{} is gone", b_pins.display());
    let links = b.ip(&["-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo is left in B: {links}");
    let _ = std::fs::remove_file(&file);
}

/// A CNI configuration of network `name` (tc, dual stack, built-in IPAM).
fn cni_conf(name: &str, block: &AddressBlock) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "veth-cni",
        "mode": "tc",
        "mtu": 1500,
        "ipam": {"type": "veth-builtin", "subnet": block.cidr, "subnet6": block.cidr6},
    })
}

fn cni(node: &TestNode, command: &str, pod: &CniPod, conf: &Value) -> Value {
    let vars = [
        ("CNI_COMMAND", command),
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
    reply
        .expect_ok(&format!("{command} of {} in node {}", pod.id, node.name))
        .clone()
}

#[test]
fn cni_on_two_nodes_gives_addresses_from_each_nodes_own_ledger() {
    let (a, b) = (TestNode::new(), TestNode::new());
    let name = unique_name();
    let block = AddressBlock::reserve(&name);
    let conf = cni_conf(&name, &block);
    let (pod_a, pod_b) = (CniPod::new(), CniPod::new());
    let firsts: Vec<Vec<String>> = [(&a, &pod_a), (&b, &pod_b)]
        .iter()
        .map(|(node, pod)| {
            let result = cni(node, "ADD", pod, &conf);
            let ips: Vec<String> = result["ips"]
                .as_array()
                .expect("ips[]")
                .iter()
                .map(|ip| ip["address"].as_str().unwrap_or_default().to_string())
                .collect();
            assert_eq!(ips.len(), 2, "IPv4 and IPv6 for {}: {result}", node.name);
            ips
        })
        .collect();
    assert_eq!(
        firsts[0], firsts[1],
        "each node allocates from its own ledger: the same first addresses"
    );
    assert!(!Path::new("/run/vethctl").join(&name).exists());
    for (node, pod) in [(&a, &pod_a), (&b, &pod_b)] {
        // The plugin has exited; the pod reaches its node's address.
        let node_pods = status_pods(node, &name);
        assert_eq!(
            node_pods.len(),
            1,
            "only its own pod in {}: {node_pods:?}",
            node.name
        );
        pod.netns.expect_pings(
            block_host(&block.cidr, 1),
            3,
            &format!("pod to node {}", node.name),
        );
        let records = node
            .state_root()
            .expect("a state root")
            .join(&name)
            .join("endpoints");
        assert_eq!(
            std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0),
            1,
            "one endpoint record in {}",
            records.display()
        );
    }

    for (node, pod) in [(&a, &pod_a), (&b, &pod_b)] {
        cni(node, "DEL", pod, &conf);
        let records = node.state_root().unwrap().join(&name).join("endpoints");
        let left = std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "DEL removed the record in {}", records.display());
        assert!(
            pod.netns.link("eth0").is_none(),
            "DEL removed the pod's interface"
        );
        node.vethctl_ok(&["down", "-n", &name]);
        assert_eq!(node.state_root(), None, "nothing left of {}", node.name);
        assert!(node.pod_namespaces().is_empty());
    }
}

/// Host number `n` of an IPv4 /24 given as "a.b.c.0/24".
fn block_host(cidr: &str, n: u8) -> IpAddr {
    let net: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    let [x, y, z, _] = net.octets();
    IpAddr::from([x, y, z, n])
}

/// Starts `vethctl agent` in `node` on 127.0.0.1:`port` and waits until
/// it serves; `Err` with what it said if it exits instead.
fn start_agent(node: &TestNode, port: u16) -> Result<ChildGuard, String> {
    let listen = format!("127.0.0.1:{port}");
    serving(node.spawn_vethctl(&["agent", "--listen", &listen]))
}

fn scrape(node: &TestNode, port: u16) -> String {
    let curl = Path::new("/usr/bin/curl");
    let out = node
        .command(curl)
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn each_node_runs_its_own_agent() {
    let (a, b) = (TestNode::new(), TestNode::new());
    let name = unique_name();
    let block = AddressBlock::reserve(&name);
    let file = topology_file(&name, &block);
    a.vethctl_ok(&["up", "-t", file.to_str().unwrap()]);
    // One port for both: each node has a loopback of its own.
    let port = free_port();
    let agent_a = start_agent(&a, port).expect("the agent of node A");
    let agent_b = start_agent(&b, port).expect("the agent of node B, beside A's");
    for (node, agent) in [(&a, &agent_a), (&b, &agent_b)] {
        let lock = node.state_root().expect("a state root").join("agent.lock");
        wait_until(
            Duration::from_secs(5),
            "the agent's PID in its lock",
            || std::fs::read_to_string(&lock).is_ok_and(|pid| pid.trim() == agent.id().to_string()),
        );
    }
    assert!(
        scrape(&a, port).contains(&format!("topology=\"{name}\"")),
        "A's agent exports A's network"
    );
    assert!(
        !scrape(&b, port).contains(&format!("topology=\"{name}\"")),
        "B's agent does not see A's network"
    );
    // A second agent in A is refused: A's lock is A's.
    let second = start_agent(&a, free_port());
    let said = second
        .err()
        .expect("a second agent in node A must not start");
    assert!(
        said.contains(&agent_a.id().to_string()),
        "the refusal names the running agent's PID: {said}"
    );
    // The host's agent lock is not the nodes'.
    assert!(
        std::fs::read_to_string("/run/vethctl/agent.lock")
            .map_or(true, |pid| pid.trim() != agent_a.id().to_string()),
        "node A's agent does not hold the host's lock"
    );
    drop((agent_a, agent_b));
    assert_eq!(
        ping(
            &format!("{}-{name}-a", a.name),
            block_host(&block.cidr, 3),
            2
        ),
        2
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_node_that_does_not_exist_is_named_with_the_fix() {
    let out = veth_tests::vethctl(&["--node", "no-such-node", "status"], &[], None);
    assert!(
        !out.status.success(),
        "--node of a missing namespace must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-node") && err.contains("ip netns add"),
        "the error names the node and the fix: {err}"
    );
}
