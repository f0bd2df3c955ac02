//! The wiring modes (tc, routed, bridge) with dual stack, switching a live
//! topology between them, anti-spoofing in mode tc, MTU, two topologies
//! side by side, and `plan`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde_json::Value;
use veth_tests::{
    counter, drops, expect_pings, expect_success, global_addresses, link_exists, netns_inode, ping,
    ping_with, run, set_forwarding, snmp6, tcp_transfer_to, TcpSession, TestTopology,
};
use veth_userspace::model::{format_mac, Pod, GATEWAY_IPV4};

const PINGS: u32 = 10;
const MIB: u64 = 1024 * 1024;

fn v6(pod: &Pod) -> Ipv6Addr {
    pod.ipv6.expect("a dual-stack pod has an IPv6 address")
}

fn host6(t: &TestTopology) -> Ipv6Addr {
    t.topology
        .host_address6
        .expect("a dual-stack topology has an IPv6 node address")
}

/// Pod a reaches pod b and the node over IPv4 and IPv6, every ping answered.
fn expect_connectivity(t: &TestTopology, what: &str) {
    let (a, b) = (t.pod("a"), t.pod("b"));
    expect_pings(&a.netns, b.ipv4, PINGS, &format!("{what}: a -> b IPv4"));
    expect_pings(&a.netns, v6(b), PINGS, &format!("{what}: a -> b IPv6"));
    expect_pings(
        &a.netns,
        t.topology.host_address,
        PINGS,
        &format!("{what}: a -> node IPv4"),
    );
    expect_pings(
        &a.netns,
        host6(t),
        PINGS,
        &format!("{what}: a -> node IPv6"),
    );
}

/// 1 MiB from a to b over TCP, over IPv4 and over IPv6, arrives intact.
fn expect_tcp(t: &TestTopology, what: &str) {
    let (a, b) = (t.pod("a"), t.pod("b"));
    for dst in [IpAddr::V4(b.ipv4), IpAddr::V6(v6(b))] {
        let (sent, received) = tcp_transfer_to(&a.netns, &b.netns, dst, MIB);
        assert_eq!(sent.bytes, MIB, "{what}: sent to {dst}");
        assert_eq!(
            received, sent,
            "{what}: 1 MiB over TCP to {dst} arrived complete and intact"
        );
    }
}

/// Sum of a counter over every pair of the topology.
fn total(stats: &BTreeMap<String, Value>, direction: &str, field: &str) -> u64 {
    stats.values().map(|p| counter(p, direction, field)).sum()
}

/// Redirected packets of every pair, both directions.
fn redirected(t: &TestTopology) -> u64 {
    total(&t.stats(), "", "redirected_packets")
}

/// One test per mode: dual stack, ping and TCP over both families,
/// the node reachable over both, status reports the mode and the IPv6
/// addresses (which the pods' eth0 carry).
fn dual_stack_traffic_in_mode(mode: &str) {
    // Mode pair joins exactly two pods.
    let names: &[&str] = if mode == "pair" {
        &["a", "b"]
    } else {
        &["a", "b", "c"]
    };
    let t = TestTopology::dual_stack(mode, names);
    t.up();
    expect_connectivity(&t, mode);
    expect_tcp(&t, mode);

    let status = t.status();
    assert_eq!(status["mode"], mode, "status --json: {status}");
    let pods = status["pods"].as_array().expect("pods[]");
    assert_eq!(pods.len(), names.len());
    for pod in pods {
        let name = pod["name"].as_str().expect("pod name");
        let ipv6 = v6(t.pod(name)).to_string();
        assert_eq!(pod["ipv6"], ipv6.as_str(), "status of pod {name}: {pod}");
        let netns = pod["netns"].as_str().expect("netns");
        assert!(
            global_addresses(netns, "eth0").contains(&ipv6),
            "{name}'s eth0 carries {ipv6}"
        );
    }

    // Only the eBPF modes move pod-to-pod frames themselves.
    let moved = redirected(&t);
    if mode == "tc" || mode == "xdp" {
        assert!(
            moved >= 4 * u64::from(PINGS),
            "tc redirected the pings both ways: {moved}"
        );
    } else {
        assert_eq!(moved, 0, "mode {mode} redirects nothing");
    }
}

macro_rules! dual_stack_tests {
    ($($test:ident: $mode:literal,)*) => {$(
        #[test]
        fn $test() {
            dual_stack_traffic_in_mode($mode);
        }
    )*};
}

dual_stack_tests! {
    mode_tc_carries_dual_stack_traffic: "tc",
    mode_routed_carries_dual_stack_traffic: "routed",
    mode_bridge_carries_dual_stack_traffic: "bridge",
    mode_pair_carries_dual_stack_traffic: "pair",
    mode_xdp_carries_dual_stack_traffic: "xdp",
}

/// In modes tc and xdp pod-to-pod traffic never passes the host's forwarding: IPv4
/// flows with forwarding off on the host-side veths, and the host's IPv6
/// forwarding counter of b's veth stays put. Mode routed is the contrast:
/// IPv4 needs the host's forwarding, the IPv6 counter counts every ping,
/// and nothing is redirected.
#[test]
fn tc_bypasses_the_host_forwarding_path() {
    let mut t = TestTopology::dual_stack("tc", &["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    expect_host_forwarding_bypassed(&t, &a, &b, "tc");

    t.mode_set("routed");
    assert_eq!(t.status()["mode"], "routed");
    // The per-interface switches are still off: routed IPv4 has no path.
    set_forwarding(&a.host_veth, false);
    set_forwarding(&b.host_veth, false);
    assert_eq!(
        ping(&a.netns, b.ipv4, 3),
        0,
        "routed: IPv4 a -> b needs the host's forwarding"
    );
    set_forwarding(&a.host_veth, true);
    set_forwarding(&b.host_veth, true);
    expect_pings(&a.netns, b.ipv4, PINGS, "routed: a -> b IPv4");

    let before = t.stats();
    let forwarded = snmp6(&b.host_veth, "Ip6OutForwDatagrams");
    assert_eq!(
        ping(&a.netns, v6(&b), PINGS6),
        PINGS6,
        "routed: a -> b IPv6"
    );
    let grown = snmp6(&b.host_veth, "Ip6OutForwDatagrams") - forwarded;
    assert!(
        grown >= u64::from(PINGS6),
        "routed: the host stack forwarded a's IPv6 pings to b ({grown} counted)"
    );
    let after = t.stats();
    assert_eq!(
        total(&after, "", "redirected_packets"),
        total(&before, "", "redirected_packets"),
        "routed redirects nothing"
    );
    assert!(
        total(&after, "from_pod", "passed_packets") - total(&before, "from_pod", "passed_packets")
            >= 2 * u64::from(PINGS6),
        "routed counts what it passes"
    );

    // Mode xdp bypasses the host stack too: same evidence as for tc.
    t.mode_set("xdp");
    expect_host_forwarding_bypassed(&t, &a, &b, "xdp");
}

/// IPv6 pings per direction in the forwarding-path checks.
const PINGS6: u32 = 20;

/// With IPv4 forwarding off on a's and b's host-side veths, a still reaches
/// b over IPv4; b's veth forwards none of a's IPv6 pings; and the program
/// counts both families' requests and replies as redirected.
fn expect_host_forwarding_bypassed(t: &TestTopology, a: &Pod, b: &Pod, mode: &str) {
    set_forwarding(&a.host_veth, false);
    set_forwarding(&b.host_veth, false);
    let before = t.stats();
    expect_pings(
        &a.netns,
        b.ipv4,
        PINGS,
        &format!("{mode}, forwarding off: a -> b IPv4"),
    );
    let forwarded = snmp6(&b.host_veth, "Ip6OutForwDatagrams");
    assert_eq!(ping(&a.netns, v6(b), PINGS6), PINGS6, "{mode}: a -> b IPv6");
    assert_eq!(
        snmp6(&b.host_veth, "Ip6OutForwDatagrams"),
        forwarded,
        "{mode}: the host stack forwarded none of a's IPv6 pings to b"
    );
    let after = t.stats();
    let delta = |pod: &str, dir: &str| {
        counter(&after[pod], dir, "redirected_packets")
            - counter(&before[pod], dir, "redirected_packets")
    };
    let both = u64::from(PINGS + PINGS6);
    assert!(
        delta("a", "from_pod") >= both,
        "{mode}: a's requests redirected"
    );
    assert!(delta("b", "to_pod") >= both, "{mode}: into b redirected");
    assert!(
        delta("b", "from_pod") >= both,
        "{mode}: b's replies redirected"
    );
}

/// In mode bridge the host-side veths are ports of `<name>-br`, which
/// learns the pods' MACs, and the programs redirect nothing.
#[test]
fn bridge_mode_uses_the_bridge() {
    let t = TestTopology::dual_stack("bridge", &["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let bridge = t.topology.bridge.clone();
    assert_eq!(bridge, format!("{}-br", t.name()));

    let ports = run("ip", &["-o", "link", "show", "master", &bridge]);
    for pod in [a, b] {
        assert!(
            ports.contains(&format!(": {}@", pod.host_veth)),
            "{} is a port of {bridge}: {ports}",
            pod.host_veth
        );
    }

    expect_pings(&a.netns, b.ipv4, PINGS, "bridge: a -> b IPv4");
    expect_pings(&a.netns, v6(b), PINGS, "bridge: a -> b IPv6");

    let status = t.status();
    let a_mac = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a")
        .and_then(|p| p["pod_mac"].as_str())
        .expect("a's pod_mac in status")
        .to_string();
    assert_eq!(a_mac, format_mac(&a.mac));
    assert!(a_mac.starts_with("0a:58:"), "{a_mac}");
    let fdb = run("bridge", &["fdb", "show", "br", &bridge]);
    assert!(
        fdb.lines()
            .any(|l| l.starts_with(&format!("{a_mac} dev {} ", a.host_veth))),
        "{bridge} learnt a's MAC {a_mac} on {}: {fdb}",
        a.host_veth
    );

    let stats = t.stats();
    assert_eq!(
        total(&stats, "", "redirected_packets"),
        0,
        "nothing redirected in mode bridge"
    );
    assert!(total(&stats, "from_pod", "passed_packets") >= 2 * u64::from(PINGS));
}

/// Whether the node address is on the host's loopback: (IPv4 labelled
/// `lo:<name>`, IPv6).
fn node_address_on_lo(t: &TestTopology) -> (bool, bool) {
    let v4 = run("ip", &["-o", "-4", "addr", "show", "dev", "lo"]);
    let v6 = run("ip", &["-o", "-6", "addr", "show", "dev", "lo"]);
    (
        v4.lines().any(|l| {
            l.contains(&format!(" {}", t.topology.host_address_label))
                && l.contains(&format!(" {}/32 ", t.topology.host_address))
        }),
        v6.contains(&format!(" {}/128 ", host6(t))),
    )
}

/// `mode set` rewires a live topology: the pods (namespaces, addresses)
/// stay, the old wiring goes, and a TCP connection survives tc -> routed
/// -> tc.
#[test]
fn switching_modes_live_keeps_pods_and_leaves_no_old_wiring() {
    let mut t = TestTopology::dual_stack("tc", &["a", "b", "c"]);
    t.up();
    let bridge = t.topology.bridge.clone();
    let pods: Vec<Pod> = t.topology.pods.clone();
    let inodes: Vec<u64> = pods.iter().map(|p| netns_inode(&p.netns)).collect();
    let addresses = |pod: &Pod| {
        let mut want = vec![pod.ipv4.to_string(), v6(pod).to_string()];
        want.sort();
        want
    };
    for pod in &pods {
        assert_eq!(global_addresses(&pod.netns, "eth0"), addresses(pod));
    }
    let same_pods = |when: &str| {
        for (pod, inode) in pods.iter().zip(&inodes) {
            assert_eq!(
                netns_inode(&pod.netns),
                *inode,
                "{when}: {}'s namespace was not recreated",
                pod.name
            );
            assert_eq!(
                global_addresses(&pod.netns, "eth0"),
                addresses(pod),
                "{when}: {}'s addresses kept",
                pod.name
            );
        }
    };
    expect_connectivity(&t, "tc");
    assert_eq!(
        node_address_on_lo(&t),
        (true, true),
        "tc: node address on lo"
    );

    t.mode_set("bridge");
    assert_eq!(t.status()["mode"], "bridge");
    same_pods("tc -> bridge");
    expect_connectivity(&t, "bridge");
    assert!(link_exists(&bridge), "bridge {bridge} exists");
    assert_eq!(
        node_address_on_lo(&t),
        (false, false),
        "bridge: the node address moved from lo to the bridge"
    );
    let on_bridge = run("ip", &["-o", "addr", "show", "dev", &bridge]);
    assert!(on_bridge.contains(&format!(" {}/24 ", t.topology.host_address)));
    assert!(on_bridge.contains(&format!(" {}/64 ", host6(&t))));

    t.mode_set("routed");
    assert_eq!(t.status()["mode"], "routed");
    same_pods("bridge -> routed");
    expect_connectivity(&t, "routed");
    assert!(!link_exists(&bridge), "routed: bridge {bridge} is gone");
    assert_eq!(
        node_address_on_lo(&t),
        (true, true),
        "routed: node address back on lo"
    );
    let before = redirected(&t);
    assert_eq!(ping(&t.pod("a").netns, t.pod("b").ipv4, 3), 3);
    assert_eq!(redirected(&t), before, "routed redirects nothing");

    t.mode_set("tc");
    assert_eq!(t.status()["mode"], "tc");
    same_pods("routed -> tc");
    let before = redirected(&t);
    expect_connectivity(&t, "back to tc");
    assert!(
        redirected(&t) >= before + 4 * u64::from(PINGS),
        "tc redirects again"
    );
    assert!(!link_exists(&bridge));

    // Long-lived connections (one per family) across tc -> routed -> tc.
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    let chunk = 256 * 1024;
    let mut sessions: Vec<TcpSession> = [IpAddr::V4(b.ipv4), IpAddr::V6(v6(&b))]
        .into_iter()
        .map(|dst| TcpSession::open(&a.netns, &b.netns, dst, Duration::from_secs(15)))
        .collect();
    let send_all = |sessions: &mut Vec<TcpSession>| {
        for s in sessions.iter_mut() {
            s.send(chunk);
        }
    };
    send_all(&mut sessions);
    t.mode_set("routed");
    send_all(&mut sessions);
    t.mode_set("tc");
    send_all(&mut sessions);
    for (session, family) in sessions.into_iter().zip(["IPv4", "IPv6"]) {
        let (sent, received) = session.finish();
        assert_eq!(sent.bytes, 3 * chunk as u64);
        assert_eq!(
            received, sent,
            "{family}: every byte sent across the mode switches arrived"
        );
    }
    same_pods("tc -> routed -> tc");
}

/// The redirect modes drop, and count by reason, what a pod sends under an
/// address or MAC that is not its own; `up` puts the pod right again.
#[test]
fn spoofed_sources_are_dropped_and_counted_in_tc() {
    spoofed_sources_are_dropped_and_counted("tc");
}

#[test]
fn spoofed_sources_are_dropped_and_counted_in_xdp() {
    spoofed_sources_are_dropped_and_counted("xdp");
}

fn spoofed_sources_are_dropped_and_counted(mode: &str) {
    const SPOOFED: u32 = 5;
    let t = TestTopology::dual_stack(mode, &["a", "b", "c"]);
    t.up();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    expect_pings(&a.netns, b.ipv4, 3, "a -> b IPv4 before spoofing");
    expect_pings(&a.netns, v6(&b), 3, "a -> b IPv6 before spoofing");

    // Addresses of the block that no pod and not the node has.
    let fake4 = Ipv4Addr::from(u32::from(t.topology.pod_cidr.network()) + 200);
    let fake6 =
        Ipv6Addr::from(u128::from(t.topology.pod_cidr6.expect("dual stack").network()) + 200);
    let taken: Vec<IpAddr> = t
        .topology
        .pods
        .iter()
        .flat_map(|p| [IpAddr::V4(p.ipv4), IpAddr::V6(v6(p))])
        .chain([t.topology.host_address.into(), host6(&t).into()])
        .collect();
    assert!(!taken.contains(&fake4.into()) && !taken.contains(&fake6.into()));

    // What a, b changed by while `spoof` ran: (a's drops.<reason>, a's
    // from_pod dropped, b's to_pod redirected).
    let measure = |reason: &str, spoof: &dyn Fn() -> u32| {
        let before = t.stats();
        let answered = spoof();
        let after = t.stats();
        assert_eq!(answered, 0, "{reason}: no replies to spoofed pings");
        (
            drops(&after["a"], reason) - drops(&before["a"], reason),
            counter(&after["a"], "from_pod", "dropped_packets")
                - counter(&before["a"], "from_pod", "dropped_packets"),
            counter(&after["b"], "to_pod", "redirected_packets")
                - counter(&before["b"], "to_pod", "redirected_packets"),
        )
    };
    let n = u64::from(SPOOFED);

    // (a) A second IPv4 address on a's eth0, used as the source.
    run(
        "ip",
        &[
            "-n",
            &a.netns,
            "addr",
            "add",
            &format!("{fake4}/32"),
            "dev",
            "eth0",
        ],
    );
    let (spoofed, dropped, into_b) = measure("spoofed_ipv4", &|| {
        ping_with(&a.netns, &["-I", &fake4.to_string()], b.ipv4, SPOOFED)
    });
    assert_eq!(spoofed, n, "drops.spoofed_ipv4 counts every spoofed ping");
    assert_eq!(dropped, n, "from_pod.dropped_packets counts them too");
    assert_eq!(into_b, 0, "nothing was redirected into b");

    // (b) The same with an extra IPv6 address.
    run(
        "ip",
        &[
            "-n",
            &a.netns,
            "addr",
            "add",
            &format!("{fake6}/128"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    let (spoofed, dropped, into_b) = measure("spoofed_ipv6", &|| {
        ping_with(&a.netns, &["-I", &fake6.to_string()], v6(&b), SPOOFED)
    });
    assert_eq!(spoofed, n, "drops.spoofed_ipv6 counts every spoofed ping");
    assert_eq!(dropped, n, "from_pod.dropped_packets counts them too");
    assert_eq!(into_b, 0, "nothing was redirected into b");

    // (c) Another MAC on a's eth0. The kernel flushes eth0's neighbours on
    // a MAC change, the permanent gateway entry included (a would then
    // only send ARP requests, themselves dropped as spoofed_mac); put the
    // gateway back so the pings themselves leave with the forged MAC.
    let forged_mac = "02:00:00:00:00:01";
    run(
        "ip",
        &["-n", &a.netns, "link", "set", "eth0", "address", forged_mac],
    );
    run(
        "ip",
        &[
            "-n",
            &a.netns,
            "neigh",
            "replace",
            &GATEWAY_IPV4.to_string(),
            "lladdr",
            &format_mac(&a.gateway_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let (spoofed, _, into_b) = measure("spoofed_mac", &|| {
        ping_with(&a.netns, &["-I", &a.ipv4.to_string()], b.ipv4, SPOOFED)
    });
    assert!(
        spoofed >= n,
        "drops.spoofed_mac counts every ping with the forged MAC ({spoofed})"
    );
    assert_eq!(into_b, 0, "nothing was redirected into b");

    // `up --repair` puts a right: its MAC, only its own addresses.
    t.up_repair();
    let link = run("ip", &["-n", &a.netns, "-o", "link", "show", "eth0"]);
    assert!(
        link.contains(&format!("link/ether {} ", format_mac(&a.mac))),
        "up --repair restored a's MAC: {link}"
    );
    let mut own = vec![a.ipv4.to_string(), v6(&a).to_string()];
    own.sort();
    assert_eq!(
        global_addresses(&a.netns, "eth0"),
        own,
        "up --repair removed the extra addresses"
    );
    let before = t.stats();
    expect_pings(&a.netns, b.ipv4, PINGS, "a -> b IPv4 after up");
    expect_pings(&a.netns, v6(&b), PINGS, "a -> b IPv6 after up");
    let after = t.stats();
    assert_eq!(
        counter(&after["a"], "from_pod", "dropped_packets"),
        counter(&before["a"], "from_pod", "dropped_packets"),
        "nothing of a's is dropped any more"
    );
    assert!(
        counter(&after["b"], "to_pod", "redirected_packets")
            - counter(&before["b"], "to_pod", "redirected_packets")
            >= 2 * u64::from(PINGS),
        "a's pings are redirected into b again"
    );
}

/// A tc and a bridge topology up at once, each in its own block; taking
/// one down leaves the other working and whole.
#[test]
fn two_topologies_side_by_side() {
    let tc = TestTopology::dual_stack("tc", &["a", "b"]);
    let mut bridged = TestTopology::dual_stack("bridge", &["a", "b"]);
    assert_ne!(tc.topology.pod_cidr, bridged.topology.pod_cidr);
    assert_ne!(tc.topology.pod_cidr6, bridged.topology.pod_cidr6);
    tc.up();
    bridged.up();
    for t in [&tc, &bridged] {
        let (a, b) = (t.pod("a"), t.pod("b"));
        let what = format!("{} ({})", t.name(), t.topology.mode);
        expect_pings(&a.netns, b.ipv4, PINGS, &format!("{what}: a -> b IPv4"));
        expect_pings(&a.netns, v6(b), PINGS, &format!("{what}: a -> b IPv6"));
    }
    assert!(redirected(&tc) >= 4 * u64::from(PINGS));
    assert_eq!(redirected(&bridged), 0);

    let tc_status = tc.status();
    bridged.down();
    assert_eq!(bridged.leftovers(), Vec::<String>::new());
    bridged.keep_on_drop();

    let (a, b) = (tc.pod("a"), tc.pod("b"));
    expect_pings(&a.netns, b.ipv4, PINGS, "tc after the other's down: IPv4");
    expect_pings(&a.netns, v6(b), PINGS, "tc after the other's down: IPv6");
    let status = tc.status();
    for (now, then) in status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .zip(tc_status["pods"].as_array().unwrap())
    {
        assert_eq!(now["up"], true, "{now}");
        for key in ["host_ifindex", "pod_ifindex", "attached"] {
            assert_eq!(
                now[key], then[key],
                "tc pod {}: {key} unchanged",
                now["name"]
            );
        }
    }
    assert_eq!(
        node_address_on_lo(&tc),
        (true, true),
        "tc's node address still on lo"
    );
}

/// `plan` shows what `up` would do and does none of it; after `up` there
/// is nothing to create or delete.
#[test]
fn plan_shows_what_up_would_do() {
    let t = TestTopology::dual_stack("tc", &["a", "b"]);
    let out = t.vethctl(&["plan"]);
    expect_success(&out, "vethctl plan");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for pod in &t.topology.pods {
        assert!(
            text.contains(&format!("create network namespace {}\n", pod.netns)),
            "plan creates {}'s namespace: {text}",
            pod.name
        );
    }
    assert_eq!(t.leftovers(), Vec::<String>::new(), "plan created nothing");

    t.up();
    let out = t.vethctl(&["plan"]);
    expect_success(&out, "vethctl plan after up");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let changes: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("create") || l.contains("delete"))
        .collect();
    assert!(changes.is_empty(), "nothing to create or delete: {text}");
}

fn mtu_of(ip_link_line: &str) -> u32 {
    let mut words = ip_link_line.split_whitespace();
    words.find(|w| *w == "mtu");
    words
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {ip_link_line:?}"))
}

/// A topology whose pods a and b have MTU 9000 and c the default 1500.
fn jumbo_topology(mode: &str) -> TestTopology {
    TestTopology::reserved(|name, block| {
        format!(
            "name = \"{name}\"\nmode = \"{mode}\"\npod_cidr = \"{}\"\npod_cidr6 = \"{}\"\n\n\
             [[pods]]\nname = \"a\"\nmtu = 9000\n\n\
             [[pods]]\nname = \"b\"\nmtu = 9000\n\n\
             [[pods]]\nname = \"c\"\n",
            block.cidr, block.cidr6
        )
    })
}

/// A pod's `mtu` is set on both ends of its pair, and jumbo frames flow.
#[test]
fn mtu_is_applied() {
    let t = jumbo_topology("tc");
    t.up();
    for (name, mtu) in [("a", 9000), ("b", 9000), ("c", 1500)] {
        let pod = t.pod(name);
        let inside = run("ip", &["-n", &pod.netns, "-o", "link", "show", "eth0"]);
        assert_eq!(mtu_of(&inside), mtu, "{name}'s eth0: {inside}");
        let outside = run("ip", &["-o", "link", "show", &pod.host_veth]);
        assert_eq!(mtu_of(&outside), mtu, "{}: {outside}", pod.host_veth);
    }
    let (a, b) = (t.pod("a"), t.pod("b"));
    expect_pings(&a.netns, b.ipv4, 1, "a -> b");
    let jumbo = ["-s", "8000", "-M", "do"];
    assert_eq!(
        ping_with(&a.netns, &jumbo, b.ipv4, 3),
        3,
        "8000-byte IPv4 pings, not fragmented, a -> b"
    );
    assert_eq!(
        ping_with(&a.netns, &jumbo, v6(b), 3),
        3,
        "8000-byte IPv6 pings a -> b"
    );
}

/// A frame bigger than the destination pod's MTU must not be delivered
/// to it: a router (mode routed) answers "fragmentation needed" (IPv4) or
/// "packet too big" (IPv6), and so must mode tc (it leaves such packets to
/// the host stack).
#[test]
fn tc_does_not_deliver_frames_larger_than_the_destination_mtu() {
    let mut t = jumbo_topology("tc");
    t.up();
    let (a, c) = (t.pod("a").clone(), t.pod("c").clone());
    let jumbo = ["-s", "8000", "-M", "do"];
    let dsts = [IpAddr::V4(c.ipv4), IpAddr::V6(v6(&c))];
    for dst in dsts {
        expect_pings(&a.netns, dst, 1, "tc: a -> c");
    }
    let tc_answered: Vec<u32> = dsts
        .iter()
        .map(|&dst| ping_with(&a.netns, &jumbo, dst, 3))
        .collect();

    // The contrast, after tc (the ICMP errors leave PMTU entries in a).
    t.mode_set("routed");
    for dst in dsts {
        expect_pings(&a.netns, dst, 1, "routed: a -> c");
        assert_eq!(
            ping_with(&a.netns, &jumbo, dst, 3),
            0,
            "routed: the host refuses 8000-byte pings to {dst} for c's 1500-byte link"
        );
    }
    assert_eq!(
        tc_answered,
        [0, 0],
        "tc: 8000-byte pings (IPv4 DF, IPv6) were delivered into c, whose MTU is 1500"
    );
}
