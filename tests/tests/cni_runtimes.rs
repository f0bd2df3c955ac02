//! `veth-cni` driven by real runtimes: containerd over CRI as kubelet drives
//! it, and podman with its CNI backend (the harness in src/runtime, proven
//! against the reference plugins by tests/runtimes.rs).
//!
//! Every test has its own network (unique name, a /24 of 198.18.0.0/15)
//! and sends traffic only between namespaces it made (the pods, "the
//! outside") and the node's own address.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use serde_json::{json, Value};
use veth_tests::{
    counter, expect_success,
    outside::Outside,
    runtime::{
        cni::{portmap, target_binary, CniBinDir, CniConfDir, TestNetwork},
        containerd::Containerd,
        cri::{PodSpec, PodStatus, Protocol},
        netns::{expect_ping, free_host_port, tcp_echo, EchoServer},
        podman::Podman,
        root_or_skip,
    },
    vethctl, AddressBlock,
};

/// `vethctl down -n NAME` when dropped: the network (programs, node
/// address, masquerade) goes after the runtime removed its pods. Declare it
/// before the runtime, so that it is dropped after it.
struct NetworkDown(String);

impl Drop for NetworkDown {
    fn drop(&mut self) {
        let out = vethctl(&["down", "-n", &self.0], &[], None);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "vethctl down -n {}: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A bin dir with the reference plugins and ours, and a conf dir whose list
/// runs `veth-cni` in `mode` with the built-in IPAM, then `portmap`.
fn veth_cni_dirs(net: &TestNetwork, mode: &str) -> (CniBinDir, CniConfDir) {
    let bin = CniBinDir::with_reference_plugins().expect("CNI bin dir");
    bin.add_as("veth-cni", &target_binary("veth-cni-test"))
        .expect("adding veth-cni");
    let conf = CniConfDir::new();
    let mut list = net.conflist(vec![
        json!({"type": "veth-cni", "mode": mode,
               "capabilities": {"portMappings": true, "bandwidth": true},
               "ipam": {"type": "veth-builtin", "subnet": net.subnet}}),
        portmap(),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
    ]);
    list["cniVersions"] = json!(["1.0.0", "1.1.0"]);
    conf.write("10-veth.conflist", &list)
        .expect("writing the conflist");
    (bin, conf)
}

fn json_of(args: &[&str]) -> Value {
    let out = vethctl(args, &[], None);
    expect_success(&out, &args.join(" "));
    serde_json::from_slice(&out.stdout).expect("JSON from vethctl")
}

/// `vethctl stats --json` pairs of the network, by `namespace/pod`.
fn pairs(name: &str) -> BTreeMap<String, Value> {
    json_of(&["stats", "-n", name, "--json"])["topologies"][0]["pairs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let ns = p["namespace"].as_str().unwrap_or("-").to_string();
            (format!("{ns}/{}", p["pod"].as_str().unwrap_or("?")), p)
        })
        .collect()
}

/// `vethctl status --json` pods of the network.
fn status_pods(name: &str) -> Vec<Value> {
    json_of(&["status", "-n", name, "--json"])["topologies"][0]["pods"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// What the network holds of its endpoints, outside the kernel's links:
/// records, address allocations, endpoint map entries.
fn endpoint_state(name: &str) -> (usize, usize, usize) {
    let records = std::fs::read_dir(format!("/run/vethctl/{name}/endpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    let allocations = std::fs::read(format!("/run/vethctl/{name}/addresses.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["offsets"].as_object().map(|o| o.len()))
        .unwrap_or(0);
    let map = veth_tests::run(
        "bpftool",
        &[
            "-j",
            "map",
            "dump",
            "pinned",
            &format!("/sys/fs/bpf/vethctl/{name}/ENDPOINTS"),
        ],
    );
    let entries = serde_json::from_str::<Value>(&map)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    (records, allocations, entries)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn run_pods(containerd: &Containerd, names: &[&str]) -> Vec<PodStatus> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| s.spawn(move || containerd.run_pod(&PodSpec::new(name).namespace("web"))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("RunPodSandbox thread")
                    .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log_tail(30)))
            })
            .collect()
    })
}

#[test]
fn containerd_pods_on_veth_cni_reach_each_other_the_node_and_the_outside() {
    if !root_or_skip("containerd_pods_on_veth_cni_reach_each_other_the_node_and_the_outside") {
        return;
    }
    let net = TestNetwork::reserve();
    let _down = NetworkDown(net.name.clone());
    let outside_block = AddressBlock::reserve(&format!("{}o", net.name));
    let outside = Outside::new(&net.name, &outside_block);
    let (bin, conf) = veth_cni_dirs(&net, "tc");
    let containerd = Containerd::start(&bin, &conf).expect("starting containerd");

    let pods = run_pods(&containerd, &["a", "b", "c"]);
    let ips: BTreeSet<IpAddr> = pods.iter().map(PodStatus::ip).collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {ips:?}");
    let prefix = net.subnet.trim_end_matches(".0/24");
    for pod in &pods {
        assert!(pod.ready, "pod {} is ready", pod.name);
        assert!(
            pod.ip().to_string().starts_with(&format!("{prefix}.")),
            "{} in {}",
            pod.ip(),
            net.subnet
        );
    }

    // Pod to pod: through the redirect path, as the counters say.
    for from in &pods {
        for to in &pods {
            if from.id != to.id {
                expect_ping(from.netns(), to.ip(), 2);
            }
        }
    }
    let stats = pairs(&net.name);
    for name in ["web/a", "web/b", "web/c"] {
        let pair = stats
            .get(name)
            .unwrap_or_else(|| panic!("stats show {name}: {stats:?}"));
        assert!(
            counter(pair, "from_pod", "redirected_packets") >= 8,
            "{name}: 4 echo requests and 4 replies redirected: {pair}"
        );
        assert_eq!(
            counter(pair, "from_pod", "dropped_packets"),
            0,
            "{name}: nothing dropped: {pair}"
        );
    }
    let status = status_pods(&net.name);
    assert_eq!(status.len(), 3, "{status:?}");
    assert!(
        status.iter().all(|p| p["endpoint"] == "ready"),
        "{status:?}"
    );
    let veths: Vec<String> = status
        .iter()
        .map(|p| p["host_veth"].as_str().unwrap().to_string())
        .collect();
    assert!(
        veths.iter().all(|v| v.starts_with("vc") && v.len() == 15),
        "host veths named from the container id: {veths:?}"
    );

    // The node, and the outside through masquerade.
    expect_ping(pods[0].netns(), net.gateway.into(), 2);
    let pod_netns = pods[1].netns().to_str().unwrap().to_string();
    let (peer, echo) = outside.connect_from(&pod_netns, &outside.addr4);
    assert_eq!(echo, b"hello");
    assert_eq!(
        peer.to_string(),
        outside.host4,
        "the outside sees the node's address (masquerade)"
    );

    for pod in &pods {
        containerd.delete_pod(&pod.id).expect("stop and remove");
    }
    assert_eq!(
        endpoint_state(&net.name),
        (0, 0, 0),
        "records, address allocations and map entries all gone"
    );
    assert!(status_pods(&net.name).is_empty());
    for veth in &veths {
        assert!(!link_exists(veth), "host veth {veth} left");
    }
    assert_eq!(containerd.leftovers(), Vec::<String>::new());
}

#[test]
fn containerd_host_port_through_chained_portmap_reaches_its_pod() {
    if !root_or_skip("containerd_host_port_through_chained_portmap_reaches_its_pod") {
        return;
    }
    let net = TestNetwork::reserve();
    let _down = NetworkDown(net.name.clone());
    let (bin, conf) = veth_cni_dirs(&net, "tc");
    let containerd = Containerd::start(&bin, &conf).expect("starting containerd");
    let host_port = free_host_port();
    let web = containerd
        .run_pod(&PodSpec::new("web").host_port(Protocol::Tcp, 8080, host_port))
        .expect("pod with a hostPort");
    let client = containerd
        .run_pod(&PodSpec::new("client"))
        .expect("client pod");
    let echo = EchoServer::start(Some(web.netns()), 8080).expect("echo server");

    tcp_echo(Some(client.netns()), SocketAddr::new(web.ip(), 8080)).expect("pod port");
    let node = SocketAddr::new(net.gateway.into(), host_port);
    tcp_echo(None, node).expect("hostPort from the host");
    tcp_echo(Some(client.netns()), node).expect("hostPort from another pod");
    drop(echo);

    containerd.delete_pod(&web.id).expect("removing web");
    containerd.delete_pod(&client.id).expect("removing client");
    assert!(
        tcp_echo(None, node).is_err(),
        "the hostPort is closed once the pod is gone"
    );
    assert_eq!(endpoint_state(&net.name), (0, 0, 0));
}

#[test]
fn containerd_bandwidth_limited_pod_takes_the_shaped_host_path() {
    if !root_or_skip("containerd_bandwidth_limited_pod_takes_the_shaped_host_path") {
        return;
    }
    let net = TestNetwork::reserve();
    let _down = NetworkDown(net.name.clone());
    let (bin, conf) = veth_cni_dirs(&net, "tc");
    let containerd = Containerd::start(&bin, &conf).expect("starting containerd");
    let slow = containerd
        .run_pod(
            &PodSpec::new("slow")
                .namespace("web")
                .annotation("kubernetes.io/egress-bandwidth", "10M")
                .annotation("kubernetes.io/ingress-bandwidth", "10M"),
        )
        .expect("pod with bandwidth limits");
    let fast = containerd
        .run_pod(&PodSpec::new("fast").namespace("web"))
        .expect("pod without");
    expect_ping(slow.netns(), fast.ip(), 3);
    expect_ping(fast.netns(), slow.ip(), 3);
    let stats = pairs(&net.name);
    let (slow_pair, fast_pair) = (&stats["web/slow"], &stats["web/fast"]);
    // The limits live in qdiscs on the host veth: nothing of slow's may
    // skip them, neither what it sends nor what is sent to it.
    assert_eq!(
        counter(slow_pair, "from_pod", "redirected_packets"),
        0,
        "{slow_pair}"
    );
    assert!(
        counter(slow_pair, "from_pod", "passed_packets") >= 6,
        "{slow_pair}"
    );
    assert_eq!(
        counter(fast_pair, "from_pod", "redirected_packets"),
        0,
        "nothing redirected into slow: {fast_pair}"
    );
    let veth = status_pods(&net.name)
        .iter()
        .find(|p| p["k8s"] == "web/slow")
        .map(|p| p["host_veth"].as_str().unwrap().to_string())
        .expect("slow's status");
    let qdiscs = veth_tests::run("tc", &["qdisc", "show", "dev", &veth]);
    assert!(qdiscs.contains("tbf"), "bandwidth shaped {veth}: {qdiscs}");

    containerd.delete_pod(&slow.id).expect("removing slow");
    containerd.delete_pod(&fast.id).expect("removing fast");
    assert_eq!(endpoint_state(&net.name), (0, 0, 0));
}

#[test]
fn containerd_restart_with_pods_running_changes_nothing() {
    if !root_or_skip("containerd_restart_with_pods_running_changes_nothing") {
        return;
    }
    let net = TestNetwork::reserve();
    let _down = NetworkDown(net.name.clone());
    let (bin, conf) = veth_cni_dirs(&net, "tc");
    let mut containerd = Containerd::start(&bin, &conf).expect("starting containerd");
    let pods = run_pods(&containerd, &["a", "b"]);
    expect_ping(pods[0].netns(), pods[1].ip(), 2);
    let before = status_pods(&net.name);
    let state_before = endpoint_state(&net.name);

    containerd.restart().expect("restarting containerd");
    for pod in &pods {
        let now = containerd.pod_status(&pod.id).expect("PodSandboxStatus");
        assert!(now.ready, "pod {} still ready", pod.name);
        assert_eq!(now.ip, pod.ip, "pod {} kept its address", pod.name);
    }
    // Same endpoints, veths, ifindexes and map entries: nothing was redone.
    let after = status_pods(&net.name);
    let key = |pods: &[Value]| -> Vec<(Value, Value, Value)> {
        pods.iter()
            .map(|p| {
                (
                    p["ipv4"].clone(),
                    p["host_veth"].clone(),
                    p["host_ifindex"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(key(&after), key(&before));
    assert_eq!(endpoint_state(&net.name), state_before);
    expect_ping(pods[1].netns(), pods[0].ip(), 2);
    let c = containerd.run_pod(&PodSpec::new("c")).expect("pod c");
    expect_ping(c.netns(), pods[0].ip(), 2);

    for pod in pods.iter().chain([&c]) {
        containerd.delete_pod(&pod.id).expect("stop and remove");
    }
    assert_eq!(endpoint_state(&net.name), (0, 0, 0));
}

#[test]
fn podman_containers_on_veth_cni_reach_each_other_through_the_redirect() {
    if !root_or_skip("podman_containers_on_veth_cni_reach_each_other_through_the_redirect") {
        return;
    }
    let net = TestNetwork::reserve();
    let _down = NetworkDown(net.name.clone());
    let (bin, conf) = veth_cni_dirs(&net, "tc");
    let podman = Podman::new(&bin, &conf).expect("podman");
    let a = podman
        .run(&format!("{}-a", net.name), &net.name)
        .expect("container a");
    let b = podman
        .run(&format!("{}-b", net.name), &net.name)
        .expect("container b");
    assert_ne!(a.ip, b.ip);
    expect_ping(&a.netns, b.ip, 3);
    expect_ping(&b.netns, a.ip, 3);
    let echo = EchoServer::start(Some(&b.netns), 7007).expect("echo server");
    tcp_echo(Some(&a.netns), SocketAddr::new(b.ip, echo.port)).expect("TCP echo");
    drop(echo);
    let stats = pairs(&net.name);
    assert_eq!(stats.len(), 2, "{stats:?}");
    for (name, pair) in &stats {
        assert!(
            counter(pair, "from_pod", "redirected_packets") >= 6,
            "{name}: pings redirected: {pair}"
        );
    }
    let veths: Vec<String> = status_pods(&net.name)
        .iter()
        .map(|p| p["host_veth"].as_str().unwrap().to_string())
        .collect();

    podman.rm_f(&a.name).expect("podman rm -f a");
    podman.rm_f(&b.name).expect("podman rm -f b");
    assert_eq!(endpoint_state(&net.name), (0, 0, 0));
    for veth in &veths {
        assert!(!link_exists(veth), "host veth {veth} left");
    }
    assert_eq!(podman.leftovers(), Vec::<String>::new());
}
