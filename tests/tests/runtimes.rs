//! The runtime harness (src/runtime) against real runtimes and Debian's
//! reference plugins (`bridge` + `host-local`, `portmap`): containerd over
//! CRI as kubelet drives it, and podman with its CNI backend. These prove
//! the harness, so the tests of our own plugin can trust it.
//!
//! Skipped (with a message) only when not root. Every test has its own
//! network (unique name and bridge, a /24 of 198.18.0.0/15) and sends
//! traffic only between namespaces it made and the host's end of its own
//! bridge.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use veth_tests::runtime::{
    cgroup_dirs,
    cni::{CniBinDir, CniConfDir, TestNetwork},
    containerd::{Containerd, ContainerdOptions},
    cri::{PodSpec, PodStatus, Protocol},
    netns::{expect_ping, free_host_port, netns_mounted, tcp_echo, udp_echo, EchoServer},
    podman::Podman,
    root_or_skip,
};

/// A network with the reference conflist and containerd on it.
fn containerd_on_bridge() -> (TestNetwork, Containerd) {
    let net = TestNetwork::reserve();
    let bin = CniBinDir::with_reference_plugins().expect("CNI bin dir");
    let conf = CniConfDir::new();
    conf.write("10-net.conflist", &net.bridge_conflist())
        .expect("writing the conflist");
    let started = Instant::now();
    let containerd = Containerd::start(&bin, &conf).expect("starting containerd");
    eprintln!("containerd ready in {:?}", started.elapsed());
    (net, containerd)
}

fn in_subnet(ip: IpAddr, net: &TestNetwork) -> bool {
    let prefix = net.subnet.rsplit_once('.').expect("a /24").0;
    ip.to_string().starts_with(&format!("{prefix}."))
}

/// Pods after they are gone: no netns, no veth on the bridge, no address
/// held, no cached result.
fn expect_gone(net: &TestNetwork, containerd: &Containerd, pods: &[PodStatus]) {
    for pod in pods {
        assert!(
            !netns_mounted(pod.netns()) && !pod.netns().exists(),
            "netns {} of pod {} is left",
            pod.netns().display(),
            pod.name
        );
    }
    assert_eq!(
        net.bridge_ports(),
        Vec::<String>::new(),
        "veths left on the bridge"
    );
    assert_eq!(
        net.allocated_addresses(),
        Vec::<String>::new(),
        "addresses still allocated"
    );
    assert_eq!(
        net.cached_results(),
        Vec::<std::path::PathBuf>::new(),
        "cached CNI results left"
    );
    assert_eq!(
        containerd.leftovers(),
        Vec::<String>::new(),
        "containerd leftovers"
    );
}

#[test]
fn containerd_pods_started_concurrently_reach_each_other() {
    if !root_or_skip("containerd_pods_started_concurrently_reach_each_other") {
        return;
    }
    let (net, containerd) = containerd_on_bridge();

    let mut timings = Vec::new();
    let pods: Vec<PodStatus> = std::thread::scope(|s| {
        let handles: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let containerd = &containerd;
                s.spawn(move || {
                    let started = Instant::now();
                    let pod = containerd.run_pod(&PodSpec::new(name));
                    (started.elapsed(), pod)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (took, pod) = h.join().expect("RunPodSandbox thread");
                timings.push(took);
                pod.unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log_tail(20)))
            })
            .collect()
    });
    eprintln!("3 concurrent RunPodSandbox took {timings:?}");

    let ips: BTreeSet<IpAddr> = pods.iter().map(PodStatus::ip).collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {ips:?}");
    for pod in &pods {
        assert!(pod.ready, "pod {} is ready", pod.name);
        assert!(in_subnet(pod.ip(), &net), "{} in {}", pod.ip(), net.subnet);
        assert!(
            netns_mounted(pod.netns()),
            "{} is a mounted netns",
            pod.netns().display()
        );
        assert!(pod.cni_result.is_some(), "containerd kept the CNI result");
    }
    assert_eq!(
        net.bridge_ports().len(),
        3,
        "one veth per pod on {}",
        net.bridge
    );
    for from in &pods {
        for to in &pods {
            if from.id != to.id {
                expect_ping(from.netns(), to.ip(), 2);
            }
        }
    }
    let echo = EchoServer::start(Some(pods[0].netns()), 7007).expect("echo server");
    let dst = SocketAddr::new(pods[0].ip(), echo.port);
    tcp_echo(Some(pods[1].netns()), dst).expect("TCP echo between pods");
    udp_echo(Some(pods[2].netns()), dst).expect("UDP echo between pods");
    drop(echo);

    for pod in &pods {
        containerd.delete_pod(&pod.id).expect("stop and remove");
    }
    assert!(containerd.pods().expect("ListPodSandbox").is_empty());
    expect_gone(&net, &containerd, &pods);
}

#[test]
fn containerd_restart_keeps_pods_reachable() {
    if !root_or_skip("containerd_restart_keeps_pods_reachable") {
        return;
    }
    let (net, mut containerd) = containerd_on_bridge();
    let a = containerd.run_pod(&PodSpec::new("a")).expect("pod a");
    let b = containerd.run_pod(&PodSpec::new("b")).expect("pod b");
    expect_ping(a.netns(), b.ip(), 2);

    let before = containerd.pid();
    let started = Instant::now();
    containerd.restart().expect("restarting containerd");
    eprintln!("containerd restarted in {:?}", started.elapsed());
    assert_ne!(containerd.pid(), before, "a new containerd process");

    for pod in [&a, &b] {
        let now = containerd.pod_status(&pod.id).expect("PodSandboxStatus");
        assert!(now.ready, "pod {} still ready", pod.name);
        assert_eq!(now.ip, pod.ip, "pod {} kept its address", pod.name);
        assert_eq!(now.netns, pod.netns, "pod {} kept its netns", pod.name);
    }
    expect_ping(a.netns(), b.ip(), 3);
    expect_ping(b.netns(), a.ip(), 3);
    // And the restarted containerd still wires new pods.
    let c = containerd.run_pod(&PodSpec::new("c")).expect("pod c");
    expect_ping(c.netns(), a.ip(), 2);

    for pod in [&a, &b, &c] {
        containerd.delete_pod(&pod.id).expect("stop and remove");
    }
    expect_gone(&net, &containerd, &[a, b, c]);
}

#[test]
fn containerd_host_port_reaches_the_pod() {
    if !root_or_skip("containerd_host_port_reaches_the_pod") {
        return;
    }
    let (net, containerd) = containerd_on_bridge();
    let host_port = free_host_port();
    let spec = PodSpec::new("web").host_port(Protocol::Tcp, 8080, host_port);
    let web = containerd.run_pod(&spec).expect("pod with a hostPort");
    let client = containerd
        .run_pod(&PodSpec::new("client"))
        .expect("client pod");
    let _echo = EchoServer::start(Some(web.netns()), 8080).expect("echo server");

    // The pod's own port, then the hostPort on the node's address on our
    // bridge: from the host, and from another pod (hairpin through portmap).
    tcp_echo(Some(client.netns()), SocketAddr::new(web.ip(), 8080)).expect("pod port");
    let node = SocketAddr::new(net.gateway.into(), host_port);
    tcp_echo(None, node).expect("hostPort from the host");
    tcp_echo(Some(client.netns()), node).expect("hostPort from another pod");

    containerd.delete_pod(&web.id).expect("removing web");
    containerd.delete_pod(&client.id).expect("removing client");
    assert!(
        tcp_echo(None, node).is_err(),
        "the hostPort is closed once the pod is gone"
    );
    expect_gone(&net, &containerd, &[web, client]);
}

#[test]
fn containerd_drop_removes_running_pods_and_everything_else() {
    if !root_or_skip("containerd_drop_removes_running_pods_and_everything_else") {
        return;
    }
    let (net, containerd) = containerd_on_bridge();
    let pod = containerd.run_pod(&PodSpec::new("a")).expect("pod a");
    let dir_of = |p: &std::path::Path| p.parent().unwrap().to_path_buf();
    let socket = containerd.socket().to_path_buf();
    let cgroup = containerd.cgroup_parent().to_string();
    assert!(
        !cgroup_dirs(&cgroup).is_empty(),
        "the pod runs under {cgroup}"
    );
    drop(containerd);

    assert!(!pod.netns().exists(), "netns removed");
    assert!(!dir_of(&socket).exists(), "containerd's directory removed");
    assert!(
        veth_tests::runtime::processes_with_arg(&socket.to_string_lossy()).is_empty(),
        "no shim left"
    );
    assert_eq!(
        cgroup_dirs(&cgroup),
        Vec::<std::path::PathBuf>::new(),
        "cgroups removed"
    );
    assert_eq!(net.bridge_ports(), Vec::<String>::new());
    assert_eq!(net.allocated_addresses(), Vec::<String>::new());
    assert_eq!(net.cached_results(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn podman_containers_reach_each_other() {
    if !root_or_skip("podman_containers_reach_each_other") {
        return;
    }
    let net = TestNetwork::reserve();
    let bin = CniBinDir::with_reference_plugins().expect("CNI bin dir");
    let conf = CniConfDir::new();
    conf.write("10-net.conflist", &net.bridge_conflist())
        .expect("writing the conflist");
    let podman = Podman::new(&bin, &conf).expect("podman");

    let prefix = net.name.clone();
    let started = Instant::now();
    let a = podman
        .run(&format!("{prefix}-a"), &net.name)
        .expect("container a");
    eprintln!("podman run took {:?}", started.elapsed());
    let b = podman
        .run(&format!("{prefix}-b"), &net.name)
        .expect("container b");
    assert_ne!(a.ip, b.ip);
    assert!(in_subnet(a.ip, &net) && in_subnet(b.ip, &net));
    assert!(netns_mounted(&a.netns) && netns_mounted(&b.netns));
    // Nothing global: runc's state and the cgroups are the instance's own.
    assert!(
        podman.runc_root().join(&a.id).is_dir(),
        "runc state of a in our dir"
    );
    assert!(
        !cgroup_dirs(podman.cgroup_parent()).is_empty(),
        "cgroups under ours"
    );
    expect_ping(&a.netns, b.ip, 3);
    expect_ping(&b.netns, a.ip, 3);
    let echo = EchoServer::start(Some(&b.netns), 7007).expect("echo server");
    tcp_echo(Some(&a.netns), SocketAddr::new(b.ip, echo.port)).expect("TCP echo");
    drop(echo);

    let started = Instant::now();
    podman.rm_f(&a.name).expect("podman rm -f");
    podman.rm_f(&b.name).expect("podman rm -f");
    eprintln!("two podman rm -f took {:?}", started.elapsed());
    for c in [&a, &b] {
        assert!(
            !netns_mounted(&c.netns) && !c.netns.exists(),
            "netns of {} left",
            c.name
        );
    }
    assert_eq!(
        net.bridge_ports(),
        Vec::<String>::new(),
        "veths left on the bridge"
    );
    assert_eq!(
        net.allocated_addresses(),
        Vec::<String>::new(),
        "addresses still allocated"
    );
    assert_eq!(
        net.cached_results(),
        Vec::<std::path::PathBuf>::new(),
        "cached results left"
    );
    assert_eq!(podman.leftovers(), Vec::<String>::new());
    assert_eq!(
        podman.containers().expect("podman ps"),
        Vec::<String>::new()
    );
}

/// Timings of the reference plugins through the whole stack, for
/// comparison with ours (printed, never asserted): 10 pods one after
/// another, as RUNTIMES.md measured them.
#[test]
fn containerd_pod_lifecycle_timings() {
    if !root_or_skip("containerd_pod_lifecycle_timings") {
        return;
    }
    let (net, containerd) = containerd_on_bridge();
    let (mut run, mut stop, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    let mut pods = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let pod = containerd
            .run_pod(&PodSpec::new(&format!("p{i}")))
            .expect("RunPodSandbox");
        run.push(started.elapsed());
        pods.push(pod);
    }
    for pod in &pods {
        let started = Instant::now();
        containerd.stop_pod(&pod.id).expect("StopPodSandbox");
        stop.push(started.elapsed());
        let started = Instant::now();
        containerd.remove_pod(&pod.id).expect("RemovePodSandbox");
        remove.push(started.elapsed());
    }
    let p50 = |v: &mut Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "reference bridge + host-local, 10 pods: p50 RunPodSandbox {:?}, StopPodSandbox {:?}, \
         RemovePodSandbox {:?}",
        p50(&mut run),
        p50(&mut stop),
        p50(&mut remove)
    );
    expect_gone(&net, &containerd, &pods);
}

#[test]
fn containerd_waits_for_a_conflist_written_later() {
    if !root_or_skip("containerd_waits_for_a_conflist_written_later") {
        return;
    }
    let net = TestNetwork::reserve();
    let bin = CniBinDir::with_reference_plugins().expect("CNI bin dir");
    let conf = CniConfDir::new();
    // Without a conflist, start() reports why it is not ready.
    let quick = ContainerdOptions {
        start_timeout: std::time::Duration::from_secs(2),
        ..ContainerdOptions::default()
    };
    let error = match Containerd::start_with(&bin, &conf, quick) {
        Ok(_) => panic!("containerd was NetworkReady without a conflist"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("NetworkReady") && error.contains("containerd"),
        "a clear error: {error}"
    );
    eprintln!(
        "start without a conflist: {}",
        error.lines().next().unwrap_or("")
    );

    let mut containerd = Containerd::start_with(
        &bin,
        &conf,
        ContainerdOptions {
            wait_network_ready: false,
            ..ContainerdOptions::default()
        },
    )
    .expect("containerd without a network");
    let conditions = containerd.cri().conditions().expect("Status");
    assert!(
        !conditions["NetworkReady"].0,
        "not NetworkReady: {conditions:?}"
    );
    let refused = containerd
        .run_pod(&PodSpec::new("early"))
        .expect_err("no pod without a network");
    eprintln!("RunPodSandbox without a conflist: {}", refused.message());

    conf.write("10-net.conflist", &net.bridge_conflist())
        .expect("writing the conflist");
    containerd
        .wait_network_ready()
        .expect("NetworkReady once the conflist is there");
    let a = containerd.run_pod(&PodSpec::new("a")).expect("pod a");
    let b = containerd.run_pod(&PodSpec::new("b")).expect("pod b");
    expect_ping(a.netns(), b.ip(), 2);
    containerd.delete_pod(&a.id).expect("removing a");
    containerd.delete_pod(&b.id).expect("removing b");
    expect_gone(&net, &containerd, &[a, b]);
}
