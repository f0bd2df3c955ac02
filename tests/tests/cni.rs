//! The CNI protocol end to end against the real kernel: the `veth-cni`
//! plugin run as a container runtime runs it (clean environment, `CNI_*`
//! variables, configuration on stdin) on namespaces made the way
//! containerd makes them, with what the kernel did checked from outside:
//! links, addresses in the pods' namespaces, the dataplane's maps and
//! counters, packets delivered between namespaces the tests made.
//!
//! The first part follows the spec verb by verb (ADD results per version,
//! DEL, CHECK, STATUS, GC, bad input); the last part tries the plugin as a
//! hostile runtime or pod would.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use serde_json::{json, Value};
use veth_tests::{
    bpftool_map_dump,
    cni::{eventually, exec, CniNet, ForeignLink, Netns, Pod, Renamed, REFERENCE_PLUGINS},
    counter, expect_success, link_exists, set_forwarding, tcp_connects_to, tcp_transfer_to,
    unique_name, vethctl, AddressBlock, TcpSession, TempDir, TestTopology,
};
use veth_userspace::{
    dataplane::{self, Pins},
    model::gateway_ipv6,
    state::link_mark,
};

const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v}"))
}

/// The host link `name` as `ip -j link` shows it.
fn host_link(name: &str) -> Option<Value> {
    veth_tests::ip_json(&["link", "show"])
        .into_iter()
        .find(|l| l["ifname"].as_str() == Some(name))
}

/// Checks an ADD result field by field against the spec for `version`
/// and against what the kernel has: interfaces (host side, then the
/// sandbox interface named CNI_IFNAME, with the namespace path), ips
/// (`version` only before 1.0.0, `interface` pointing at the sandbox
/// interface, the addresses the pod really has), gateways and routes the
/// pod really uses.
fn check_result(net: &CniNet, pod: &Pod, result: &Value, version: &str) {
    let what = format!("{} ADD result {version}", net.mode);
    assert_eq!(s(&result["cniVersion"]), version, "{what}: {result}");
    let interfaces = result["interfaces"].as_array().expect("interfaces[]");
    assert_eq!(
        interfaces.len(),
        2,
        "{what}: host side and pod side: {result}"
    );
    let host = &interfaces[0];
    let veth = net.host_veth(pod);
    assert_eq!(s(&host["name"]), veth, "{what}: the host side: {result}");
    assert!(
        host.get("sandbox").is_none(),
        "{what}: host side has no sandbox"
    );
    let host_link = host_link(&veth).unwrap_or_else(|| panic!("{what}: {veth} exists"));
    assert_eq!(host["mac"], host_link["address"], "{what}: host MAC");
    assert_eq!(
        s(&host_link["ifalias"]),
        format!("vethctl:{}", net.name),
        "{what}: the host side carries the network's mark"
    );
    if net.mode == "bridge" {
        assert!(
            host_link["master"].is_string(),
            "{what}: bridge mode: the host side is a bridge port: {host_link}"
        );
    }
    let sandbox = &interfaces[1];
    assert_eq!(
        s(&sandbox["name"]),
        pod.ifname,
        "{what}: CNI_IFNAME: {result}"
    );
    assert_eq!(s(&sandbox["sandbox"]), pod.netns.path(), "{what}: sandbox");
    let pod_link = pod
        .netns
        .link(&pod.ifname)
        .unwrap_or_else(|| panic!("{what}: {} exists in the pod", pod.ifname));
    assert_eq!(sandbox["mac"], pod_link["address"], "{what}: pod MAC");
    if version == "1.1.0" {
        assert_eq!(
            sandbox["mtu"],
            json!(1500),
            "{what}: 1.1.0 has mtu: {result}"
        );
        assert_eq!(pod_link["mtu"], json!(1500));
    } else {
        assert!(
            sandbox.get("mtu").is_none() && host.get("mtu").is_none(),
            "{what}: interface mtu is a 1.1.0 field: {result}"
        );
    }

    let bridged = net.mode == "bridge";
    let has = pod.addresses();
    let ips = result["ips"].as_array().expect("ips[]");
    assert_eq!(
        ips.len(),
        2,
        "{what}: an IPv4 and an IPv6 address: {result}"
    );
    for ip in ips {
        let cidr = s(&ip["address"]);
        let (addr, len) = cidr.split_once('/').expect("CIDR notation");
        let addr: IpAddr = addr.parse().expect("an address");
        let len: u8 = len.parse().expect("a prefix length");
        assert_eq!(
            ip["interface"],
            json!(1),
            "{what}: ips[].interface: {result}"
        );
        match version {
            "0.3.1" | "0.4.0" => assert_eq!(
                ip["version"],
                json!(if addr.is_ipv4() { "4" } else { "6" }),
                "{what}: ips[].version: {result}"
            ),
            _ => assert!(
                ip.get("version").is_none(),
                "{what}: no ips[].version from 1.0.0 on: {result}"
            ),
        }
        let (want_len, gateway): (u8, IpAddr) = match (addr, bridged) {
            (IpAddr::V4(_), false) => (32, Ipv4Addr::new(169, 254, 1, 1).into()),
            (IpAddr::V6(_), false) => (128, gateway_ipv6().into()),
            (IpAddr::V4(_), true) => (24, net.node().into()),
            (IpAddr::V6(_), true) => (64, net.v6(1).into()),
        };
        assert_eq!(len, want_len, "{what}: prefix of {cidr}");
        assert_eq!(s(&ip["gateway"]), gateway.to_string(), "{what}: gateway");
        assert!(
            has.contains(&(addr, len)),
            "{what}: the pod has {cidr}: {has:?}"
        );
        let in_block = match addr {
            IpAddr::V4(a) => a.octets()[..3] == net.node().octets()[..3],
            IpAddr::V6(a) => a.segments()[..4] == net.v6(0).segments()[..4],
        };
        assert!(in_block, "{what}: {addr} is from the network's range");
        // The pod's default route of this family goes via that gateway.
        let family = if addr.is_ipv4() { "-4" } else { "-6" };
        let routes = pod.netns.ip_json(&[family, "route", "show", "default"]);
        assert!(
            routes
                .iter()
                .any(|r| r["gateway"].as_str() == Some(&gateway.to_string())),
            "{what}: the pod's default route is via {gateway}: {routes:?}"
        );
    }
    assert_eq!(
        has.len(),
        2,
        "{what}: the pod has exactly the result's addresses: {has:?}"
    );
    let dsts: BTreeSet<&str> = result["routes"]
        .as_array()
        .expect("routes[]")
        .iter()
        .map(|r| s(&r["dst"]))
        .collect();
    assert_eq!(
        dsts,
        BTreeSet::from(["0.0.0.0/0", "::/0"]),
        "{what}: routes"
    );
}

/// DEL of `pod` with its namespace and `prevResult` in `version`.
fn del_in(net: &CniNet, pod: &Pod, result: &Value, version: &str) {
    let mut conf = net.conf(version);
    conf["prevResult"] = result.clone();
    net.run(&net.vars("DEL", pod), &conf)
        .expect_ok(&format!("DEL {version} of {}", pod.id));
}

/// One pod per protocol version on a dual-stack network in `mode`: each
/// result is checked field by field, every pod reaches the node and the
/// others, and DEL takes each away again.
fn add_in_every_version(mode: &str) {
    let net = CniNet::dual(mode);
    net.bring_up();
    let _quiet = net.quiet();
    let pods: Vec<Pod> = VERSIONS.iter().map(|_| Pod::new()).collect();
    let mut results = Vec::new();
    for (pod, version) in pods.iter().zip(VERSIONS) {
        let result = net.add_with(pod, &net.conf(version), &[]);
        check_result(&net, pod, &result, version);
        results.push(result);
    }
    for (i, pod) in pods.iter().enumerate() {
        pod.netns
            .expect_pings(net.node(), 3, &format!("{mode}: pod {i} to the node"));
        let next = &pods[(i + 1) % pods.len()];
        pod.netns
            .expect_pings(next.ipv4(), 3, &format!("{mode}: pod {i} to pod {}", i + 1));
    }
    // IPv6 between two pods too.
    let v6 = |p: &Pod| {
        p.addresses()
            .into_iter()
            .find(|(a, _)| a.is_ipv6())
            .expect("an IPv6 address")
            .0
    };
    pods[0]
        .netns
        .expect_pings(v6(&pods[1]), 3, &format!("{mode}: IPv6 pod to pod"));
    assert_eq!(net.records().len(), 4, "{mode}: a record per pod");
    for ((pod, result), version) in pods.iter().zip(&results).zip(VERSIONS) {
        let veth = net.host_veth(pod);
        del_in(&net, pod, result, version);
        assert!(!link_exists(&veth), "{mode}: DEL removed {veth}");
        assert!(pod.netns.link(&pod.ifname).is_none(), "{mode}: and eth0");
    }
    assert_eq!(net.records(), BTreeSet::new(), "{mode}: no records");
    assert_eq!(net.allocations(), BTreeSet::new(), "{mode}: no addresses");
}

#[test]
fn add_in_tc_mode_answers_every_version() {
    add_in_every_version("tc");
}

#[test]
fn add_in_xdp_mode_answers_every_version() {
    add_in_every_version("xdp");
}

#[test]
fn add_in_routed_mode_answers_every_version() {
    add_in_every_version("routed");
}

#[test]
fn add_in_bridge_mode_answers_every_version() {
    add_in_every_version("bridge");
}

/// With host-local (Debian's speaks up to 1.0.0), ADD answers every
/// version too, 1.1.0 included, and DEL gives its reservation back.
#[test]
fn host_local_serves_every_version() {
    let net = CniNet::host_local("tc");
    for version in VERSIONS {
        let pod = Pod::new();
        let result = net.add_with(&pod, &net.conf(version), &[]);
        assert_eq!(s(&result["cniVersion"]), version, "{result}");
        let ip = pod.ipv4().to_string();
        assert_eq!(
            s(&result["ips"][0]["address"]),
            format!("{ip}/32"),
            "{version}: {result}"
        );
        assert_eq!(net.allocations(), BTreeSet::from([ip]), "{version}");
        del_in(&net, &pod, &result, version);
        assert_eq!(
            net.allocations(),
            BTreeSet::new(),
            "{version}: DEL freed it"
        );
    }
}

/// `cniVersions` is honoured and the result is never newer than
/// `cniVersion`; a version we do not speak is code 1 and makes nothing;
/// VERSION lists all four.
#[test]
fn cni_versions_are_negotiated() {
    let net = CniNet::builtin("tc");
    let with = |version: Option<&str>, versions: &[&str]| {
        let mut conf = net.conf("1.0.0");
        match version {
            Some(v) => conf["cniVersion"] = json!(v),
            None => {
                conf.as_object_mut().unwrap().remove("cniVersion");
            }
        }
        conf["cniVersions"] = json!(versions);
        conf
    };
    let table: [(Option<&str>, &[&str], &str); 4] = [
        // What `vethctl install-cni` writes: old runtimes read 1.0.0.
        (Some("1.0.0"), &["1.0.0", "1.1.0"], "1.0.0"),
        (None, &["0.4.0", "1.1.0"], "1.1.0"),
        // A newer runtime asks for a version we do not know yet.
        (Some("1.2.0"), &["0.4.0", "1.1.0"], "1.1.0"),
        (Some("0.4.0"), &["1.1.0"], "0.4.0"),
    ];
    for (version, versions, answered) in table {
        let pod = Pod::new();
        let result = net.add_with(&pod, &with(version, versions), &[]);
        assert_eq!(
            s(&result["cniVersion"]),
            answered,
            "cniVersion {version:?}, cniVersions {versions:?}: {result}"
        );
        let mtu_field = result["interfaces"][1].get("mtu").is_some();
        assert_eq!(
            mtu_field,
            answered == "1.1.0",
            "fields of {answered}: {result}"
        );
        net.del(&pod, Some(&result));
    }
    let pod = Pod::new();
    let reply = net.run(&net.vars("ADD", &pod), &with(Some("0.2.0"), &[]));
    reply.expect_error(1, &["0.2.0"], "ADD with cniVersion 0.2.0");
    assert!(pod.netns.link("eth0").is_none(), "nothing made for 0.2.0");
    assert_eq!(net.records(), BTreeSet::new());

    let version = exec(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    let answer = version.expect_ok("VERSION");
    assert_eq!(answer["cniVersion"], json!("1.0.0"), "{answer}");
    assert_eq!(
        answer["supportedVersions"],
        json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        "{answer}"
    );
}

/// `"mode": "pair"` joins two named pods; a CNI ADD attaches one: code 7
/// naming the mode, and nothing made.
#[test]
fn pair_mode_is_refused() {
    let net = CniNet::builtin("pair");
    let pod = Pod::new();
    let reply = net.run(&net.vars("ADD", &pod), &net.conf("1.0.0"));
    reply.expect_error(7, &["mode", "pair"], "ADD in mode pair");
    assert!(!link_exists(&net.host_veth(&pod)));
    assert!(pod.netns.link("eth0").is_none());
    assert_eq!(net.leftovers(), Vec::<String>::new(), "nothing made");
}

fn pair_counter(stats: &BTreeMap<String, Value>, veth: &str, dir: &str, field: &str) -> u64 {
    let pair = stats
        .get(veth)
        .unwrap_or_else(|| panic!("stats have no pair for {veth}: {stats:?}"));
    counter(pair, dir, field)
}

/// Two pods in tc mode talk through the redirect path: with forwarding
/// off on their host sides (so the host stack could not forward between
/// them), pings and a TCP transfer get through and the counters of both
/// pods count them as redirected, not passed. Both reach the node.
#[test]
fn pods_talk_through_the_redirect_path() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let (a, b) = (Pod::new(), Pod::new());
    net.add(&a);
    net.add(&b);
    let (va, vb) = (net.host_veth(&a), net.host_veth(&b));
    set_forwarding(&va, false);
    set_forwarding(&vb, false);
    let (ip_a, ip_b) = (a.ipv4(), b.ipv4());
    a.netns.expect_pings(ip_b, 1, "a to b");
    let before = net.stats();
    assert_eq!(a.netns.ping(ip_b, 20), 20, "20 pings from a to b");
    let after = net.stats();
    let delta = |veth: &str, dir: &str, field: &str| {
        pair_counter(&after, veth, dir, field) - pair_counter(&before, veth, dir, field)
    };
    for (veth, who) in [(&va, "a's requests"), (&vb, "b's replies")] {
        assert!(
            delta(veth, "from_pod", "redirected_packets") >= 20,
            "{who} were redirected: {:?}",
            after[veth]
        );
        assert!(
            delta(veth, "from_pod", "passed_packets") < 5,
            "{who} did not go through the host stack: {:?}",
            after[veth]
        );
    }
    assert!(
        delta(&vb, "to_pod", "redirected_packets") >= 20,
        "b received them"
    );
    let (sent, received) = tcp_transfer_to(b.netns.path(), a.netns.path(), ip_a, 2 << 20);
    assert_eq!(sent, received, "2 MiB from b to a arrived intact");
    let end = net.stats();
    assert!(
        pair_counter(&end, &vb, "from_pod", "redirected_bytes")
            >= pair_counter(&after, &vb, "from_pod", "redirected_bytes") + (2 << 20),
        "the transfer was redirected: {:?}",
        end[&vb]
    );
    // The node is reached through the host stack (passed).
    a.netns.expect_pings(net.node(), 3, "a to the node");
    b.netns.expect_pings(net.node(), 3, "b to the node");
    assert!(
        tcp_connects_to(a.netns.path(), b.netns.path(), ip_b, Duration::from_secs(5)),
        "a connects to b"
    );
}

/// 8 ADDs at once get 8 distinct addresses: first on a network that
/// does not exist yet (all of them race to bring it up, as when kubelet
/// starts the pods of a fresh node), then on the running network, where
/// every pod reaches the next; 8 DELs at once leave nothing.
fn concurrent_adds(net: CniNet) {
    let add_8 = || -> Vec<Pod> {
        let pods: Vec<Pod> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let net = &net;
                    scope.spawn(move || {
                        let pod = Pod::new();
                        let reply = net.run(&net.vars("ADD", &pod), &net.conf("1.0.0"));
                        (pod, reply)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("an ADD thread"))
                .map(|(pod, reply)| {
                    let result = reply.expect_ok("one of 8 concurrent ADDs");
                    let ip = s(&result["ips"][0]["address"])
                        .split('/')
                        .next()
                        .unwrap()
                        .to_string();
                    assert_eq!(
                        pod.ipv4().to_string(),
                        ip,
                        "the pod has its result's address"
                    );
                    pod
                })
                .collect()
        });
        let addresses: BTreeSet<Ipv4Addr> = pods.iter().map(Pod::ipv4).collect();
        assert_eq!(addresses.len(), 8, "8 distinct addresses: {addresses:?}");
        assert!(
            addresses
                .iter()
                .all(|a| a.octets()[..3] == net.node().octets()[..3] && *a != net.node()),
            "all from the range, none the node's: {addresses:?}"
        );
        assert_eq!(net.records().len(), 8);
        assert_eq!(net.allocations().len(), 8);
        for pod in &pods {
            assert!(link_exists(&net.host_veth(pod)), "every host side exists");
        }
        pods
    };
    let del_8 = |pods: &[Pod]| {
        std::thread::scope(|scope| {
            for pod in pods {
                let net = &net;
                scope.spawn(move || net.del(pod, None));
            }
        });
        assert_eq!(net.records(), BTreeSet::new(), "no records after 8 DELs");
        assert_eq!(
            net.allocations(),
            BTreeSet::new(),
            "no addresses after 8 DELs"
        );
        assert_eq!(net.marked_links(), Vec::<String>::new(), "no links");
    };

    let pods = add_8();
    del_8(&pods);
    drop(pods);

    let quiet = net.quiet();
    let pods = add_8();
    if !matches!(net.ipam, veth_tests::cni::Ipam::HostLocal(_)) {
        let addresses: BTreeSet<Ipv4Addr> = pods.iter().map(Pod::ipv4).collect();
        let lowest: BTreeSet<Ipv4Addr> = (2..10).map(|h| net.v4(h)).collect();
        assert_eq!(addresses, lowest, "the built-in pool hands out the lowest");
    }
    assert_eq!(net.stats().len(), 8, "8 pairs in the maps");
    for (i, pod) in pods.iter().enumerate() {
        let next = &pods[(i + 1) % pods.len()];
        pod.netns
            .expect_pings(next.ipv4(), 2, &format!("pod {i} to pod {}", i + 1));
    }
    del_8(&pods);
    drop(quiet);
}

#[test]
fn concurrent_adds_get_distinct_addresses_builtin() {
    concurrent_adds(CniNet::builtin("tc"));
}

#[test]
fn concurrent_adds_get_distinct_addresses_host_local() {
    concurrent_adds(CniNet::host_local("tc"));
}

/// A u32 as bpftool prints it: a number (with BTF) or bytes ("0x0b", ...,
/// little-endian) without.
fn u32_of(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let bytes: Vec<u8> = v
        .as_array()?
        .iter()
        .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect::<Option<_>>()?;
    let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(b)))
}

/// Which of the network's maps still mention host ifindex `ifindex`:
/// SLOTS and DEVMAP by key, ENDPOINTS by the entry's device.
fn maps_mentioning(net: &CniNet, ifindex: u64) -> Vec<String> {
    let pins = Pins::new(&net.name);
    let mut found = Vec::new();
    for map in ["SLOTS", "DEVMAP"] {
        if bpftool_map_dump(&pins.map(map))
            .iter()
            .any(|e| u32_of(&e["key"]) == Some(ifindex))
        {
            found.push(map.to_string());
        }
    }
    if bpftool_map_dump(&pins.map("ENDPOINTS"))
        .iter()
        .any(|e| e["value"]["host_ifindex"].as_u64() == Some(ifindex))
    {
        found.push("ENDPOINTS".into());
    }
    found
}

fn ifindex_of(veth: &str) -> u64 {
    host_link(veth)
        .and_then(|l| l["ifindex"].as_u64())
        .unwrap_or_else(|| panic!("{veth} exists"))
}

/// Nothing of `pod` is left: no host side, no map entry, no record, no
/// address allocation, no pair in `stats`.
fn assert_gone(net: &CniNet, pod: &Pod, ifindex: u64, what: &str) {
    let veth = net.host_veth(pod);
    assert!(
        eventually(Duration::from_secs(5), || !link_exists(&veth)),
        "{what}: {veth} is gone"
    );
    assert_eq!(
        maps_mentioning(net, ifindex),
        Vec::<String>::new(),
        "{what}: maps"
    );
    let links = Pins::new(&net.name).root().join("links").join(&veth);
    assert!(!links.exists(), "{what}: its link pins are gone");
    assert!(
        !net.records().contains(&net.record_of(pod)),
        "{what}: the record is gone: {:?}",
        net.records()
    );
    let key = format!("{}@{}", pod.ifname, pod.id);
    assert!(
        !net.allocations().contains(&key) && net.allocations().is_empty(),
        "{what}: the address is released: {:?}",
        net.allocations()
    );
    assert!(!net.stats().contains_key(&veth), "{what}: stats");
}

/// DEL is idempotent and best-effort: the first DEL (namespace and
/// prevResult) removes everything of the pod, a second one, containerd's
/// second form (`CNI_NETNS=""`, no prevResult), a DEL of a container that
/// was never added and a DEL of a network that never existed all succeed
/// and make nothing.
#[test]
fn del_is_idempotent_and_takes_every_form_containerd_sends() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let quiet = net.quiet();
    let pod = Pod::new();
    let result = net.add(&pod);
    let ifindex = ifindex_of(&net.host_veth(&pod));
    assert_eq!(
        maps_mentioning(&net, ifindex),
        ["SLOTS", "DEVMAP", "ENDPOINTS"],
        "ADD filled the maps"
    );
    assert!(net.records().contains(&net.record_of(&pod)));
    net.del(&pod, Some(&result));
    assert_gone(&net, &pod, ifindex, "after DEL");
    assert!(pod.netns.link("eth0").is_none(), "eth0 went with its pair");
    net.del(&pod, Some(&result));
    net.del_without_netns(&pod)
        .expect_ok("containerd's second DEL");
    net.del_without_netns(&pod).expect_ok("and its third");
    assert_gone(&net, &pod, ifindex, "after more DELs");

    let stranger = Pod::new();
    net.del(&stranger, None);
    net.del_without_netns(&stranger)
        .expect_ok("DEL of a container never added, without namespace");
    assert_eq!(net.records(), BTreeSet::new());
    drop(quiet);

    // A network that never existed: nothing is made for it.
    let other = unique_name();
    let mut conf = net.conf("1.0.0");
    conf["name"] = json!(other);
    net.run(&net.vars("DEL", &stranger), &conf)
        .expect_ok("DEL on a network that never existed");
    assert!(!std::path::Path::new("/run/vethctl").join(&other).exists());
    assert!(!Pins::new(&other).exist());
}

/// A record that cannot be read (damaged, or written by another version)
/// must not block the pod's removal forever: DEL still removes the pod's
/// veth (found by its name and the network's mark), its record and its
/// address, and says what it could not read; GC and `status` report it
/// instead of failing.
#[test]
fn del_goes_ahead_when_the_record_is_unreadable() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    net.add(&pod);
    let record = net.state_dir().join("endpoints").join(net.record_of(&pod));
    std::fs::write(&record, "{ this is not a record").unwrap();
    net.gc(&[&pod]).expect_ok("GC beside an unreadable record");
    net.status().expect_ok("STATUS beside an unreadable record");
    net.vethctl_status();
    let reply = net.run(&net.vars("DEL", &pod), &net.conf("1.0.0"));
    reply.expect_ok("DEL with an unreadable record");
    assert!(!link_exists(&net.host_veth(&pod)), "the veth is gone");
    assert!(pod.netns.link("eth0").is_none());
    assert_eq!(net.records(), BTreeSet::new(), "the record is gone");
    assert_eq!(net.allocations(), BTreeSet::new(), "the address is free");
}

/// The runtime removed the pod's namespace before DEL (the veth went with
/// it): DEL with the dangling path, and then without any, succeeds and
/// leaves no host side, map entry, record or address; the next ADD gets
/// the lowest address again. With host-local, its reservation is freed.
fn del_after_the_namespace_is_gone(net: CniNet, netns: Netns) {
    net.bring_up();
    let quiet = net.quiet();
    let mut pod = Pod::with(netns);
    let result = net.add(&pod);
    let ifindex = ifindex_of(&net.host_veth(&pod));
    let first = pod.ipv4();
    pod.netns.delete();
    net.del(&pod, Some(&result));
    assert_gone(&net, &pod, ifindex, "DEL after the namespace went");
    net.del_without_netns(&pod).expect_ok("the second DEL");
    let next = Pod::new();
    net.add(&next);
    if !matches!(net.ipam, veth_tests::cni::Ipam::HostLocal(_)) {
        // host-local goes round-robin; the built-in pool hands out the lowest.
        assert_eq!(next.ipv4(), first, "the address was free again");
    }
    next.netns.expect_pings(net.node(), 2, "the next pod works");
    net.del(&next, None);
    drop(quiet);
}

#[test]
fn del_after_the_namespace_is_gone_builtin() {
    del_after_the_namespace_is_gone(CniNet::builtin("tc"), Netns::in_dir());
}

#[test]
fn del_after_the_namespace_is_gone_host_local() {
    del_after_the_namespace_is_gone(CniNet::host_local("tc"), Netns::named());
}

/// An ADD whose CNI_NETNS is not a network namespace fails with code 4
/// naming it, and leaves nothing: no link, no record, no address (the
/// next ADD gets the lowest one).
fn failed_adds_leave_nothing(net: CniNet) {
    let scratch = TempDir::new("veth-cni-not-a-netns");
    let file = scratch.path().join("file");
    std::fs::write(&file, "").unwrap();
    let (file, dir) = (file.to_str().unwrap(), scratch.path().to_str().unwrap());
    let missing = format!("{dir}/missing");
    let cases = [
        ("a regular file", file),
        ("another kind of namespace", "/proc/self/ns/pid"),
        ("the mount namespace", "/proc/self/ns/mnt"),
        ("a directory", dir),
        ("a missing path", missing.as_str()),
        ("a relative path", "run/netns/x"),
        ("a path with ..", "/run/netns/../netns/x"),
    ];
    for (what, path) in cases {
        let pod = Pod::new();
        let mut vars = net.vars("ADD", &pod);
        vars.retain(|(k, _)| *k != "CNI_NETNS");
        vars.push(("CNI_NETNS", path));
        let reply = net.run(&vars, &net.conf("1.0.0"));
        reply.expect_error(4, &["CNI_NETNS"], &format!("ADD into {what}"));
        assert!(!link_exists(&net.host_veth(&pod)), "{what}: no link");
        assert_eq!(net.records(), BTreeSet::new(), "{what}: no record");
        assert_eq!(net.allocations(), BTreeSet::new(), "{what}: no address");
        assert_eq!(net.marked_links(), Vec::<String>::new(), "{what}: no link");
    }
    let pod = Pod::new();
    net.add(&pod);
    if let veth_tests::cni::Ipam::HostLocal(_) = net.ipam {
        // host-local goes round-robin: the failed ADDs' addresses were
        // given back all the same.
        assert_eq!(net.allocations(), BTreeSet::from([pod.ipv4().to_string()]));
    } else {
        assert_eq!(pod.ipv4(), net.v4(2), "the first address is still free");
    }
}

#[test]
fn failed_adds_leave_nothing_builtin() {
    failed_adds_leave_nothing(CniNet::builtin("tc"));
}

#[test]
fn failed_adds_leave_nothing_host_local() {
    failed_adds_leave_nothing(CniNet::host_local("tc"));
}

/// CHECK passes right after ADD and fails, naming what differs, once the
/// pod lost its address or its interface; it needs prevResult (code 7)
/// and a version that has it (code 1); an unknown container is code 3.
#[test]
fn check_compares_the_kernel_with_the_add() {
    let net = CniNet::dual("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let pod = Pod::new();
    let result = net.add(&pod);
    let check = |version: &str, prev: Option<&Value>| {
        let mut conf = net.conf(version);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        net.run(&net.vars("CHECK", &pod), &conf)
    };
    check("1.0.0", Some(&result)).expect_ok("CHECK after ADD");
    check("1.1.0", Some(&result)).expect_ok("CHECK 1.1.0 after ADD");
    check("0.4.0", Some(&result)).expect_ok("CHECK 0.4.0 after ADD");
    check("1.0.0", None).expect_error(7, &["prevResult"], "CHECK without prevResult");
    check("0.3.1", Some(&result)).expect_error(1, &["CHECK"], "CHECK in 0.3.1");
    let ip = pod.ipv4().to_string();
    let mut other = result.clone();
    other["ips"] = json!([{"address": format!("{}/32", net.v4(77)), "interface": 1}]);
    check("1.0.0", Some(&other)).expect_error(999, &[&ip], "a prevResult of others");

    let v4 = format!("{ip}/32");
    pod.netns.ip(&["addr", "del", &v4, "dev", "eth0"]);
    check("1.0.0", Some(&result)).expect_error(999, &[&ip], "CHECK without the address");
    pod.netns.ip(&["addr", "add", &v4, "dev", "eth0"]);
    check("1.0.0", Some(&result)).expect_ok("CHECK with the address back");

    pod.netns.ip(&["link", "del", "eth0"]);
    check("1.0.0", Some(&result)).expect_error(999, &["gone"], "CHECK without the interface");
    net.del(&pod, Some(&result));
    check("1.0.0", Some(&result)).expect_error(3, &[&pod.id], "CHECK after DEL");
}

/// STATUS (1.1.0 only) is fine before the network exists and once it is
/// up; with its programs unpinned it is 51 while pods are attached (they
/// may have lost connectivity) and 50 without, and the next ADD loads the
/// programs again.
#[test]
fn status_follows_the_dataplane() {
    let net = CniNet::builtin("tc");
    net.status().expect_ok("STATUS before the network exists");
    let mut old = net.conf("1.0.0");
    old["cniVersion"] = json!("1.0.0");
    exec(&[("CNI_COMMAND", "STATUS")], old.to_string().as_bytes()).expect_error(
        1,
        &["STATUS"],
        "STATUS with a 1.0.0 configuration",
    );
    assert_eq!(net.leftovers(), Vec::<String>::new(), "STATUS made nothing");

    let (a, b) = (Pod::new(), Pod::new());
    net.add(&a);
    net.status().expect_ok("STATUS with the network up");

    let from_pod = Pins::new(&net.name).program("from_pod");
    {
        let _gone = Renamed::new(&from_pod);
        net.status().expect_error(
            51,
            &[&net.name, "pinned"],
            "STATUS without programs, a pod attached",
        );
    }
    net.status().expect_ok("STATUS with the programs back");
    net.del(&a, None);
    let gone = Renamed::new(&from_pod);
    net.status()
        .expect_error(50, &[&net.name], "STATUS without programs, no pod");
    // The next ADD brings the programs back.
    let reply = net.run(&net.vars("ADD", &b), &net.conf("1.0.0"));
    gone.discard();
    reply.expect_ok("ADD after the programs were unpinned");
    assert!(from_pod.exists(), "the ADD pinned the programs again");
    net.status().expect_ok("STATUS after that ADD");
    let _quiet = net.quiet();
    b.netns.expect_pings(net.node(), 2, "the new pod works");
}

/// The network converges on the next ADD, its endpoints with it, when its
/// programs were unpinned under attached pods or its configuration changed
/// (another mode) — also when one of its pods lost its namespace (and
/// with it its veth) before its DEL came.
#[test]
fn the_network_converges_with_endpoints_attached_and_dead() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let (a, mut dead) = (Pod::new(), Pod::new());
    net.add(&a);
    net.add(&dead);
    let dead_veth = net.host_veth(&dead);
    dead.netns.delete();
    assert!(
        eventually(Duration::from_secs(10), || !link_exists(&dead_veth)),
        "the kernel removed {dead_veth} with the namespace"
    );

    let gone = Renamed::new(&Pins::new(&net.name).program("from_pod"));
    net.status()
        .expect_error(51, &[&net.name], "STATUS without programs, pods attached");
    let b = Pod::new();
    let reply = net.run(&net.vars("ADD", &b), &net.conf("1.0.0"));
    gone.discard();
    reply.expect_ok("ADD that loads the programs again, with pods attached");
    net.status().expect_ok("STATUS after it");

    let c = Pod::new();
    let mut routed = net.conf("1.0.0");
    routed["mode"] = json!("routed");
    net.add_with(&c, &routed, &[]);
    assert_eq!(
        s(&net.vethctl_status()["mode"]),
        "routed",
        "the network follows"
    );
    let _quiet = net.quiet();
    for (from, to, what) in [(&a, &c, "a to c"), (&c, &b, "c to b"), (&b, &a, "b to a")] {
        from.netns.expect_pings(to.ipv4(), 2, what);
    }
    a.netns.expect_pings(net.node(), 2, "a to the node");
    net.del(&dead, None);
    assert!(!net.records().contains(&net.record_of(&dead)));
    assert_eq!(net.records().len(), 3);
}

/// GC removes every attachment the runtime does not list (link, record,
/// map entries, address) and leaves the listed one working; without the
/// list it refuses (code 7) and removes nothing.
#[test]
fn gc_removes_what_the_runtime_no_longer_lists() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let quiet = net.quiet();
    let (keep, gone) = (Pod::new(), Pod::new());
    net.add(&keep);
    net.add(&gone);
    keep.netns.expect_pings(net.node(), 1, "before GC");
    let gone_ifindex = ifindex_of(&net.host_veth(&gone));
    // GC holds the change lock exclusively.
    drop(quiet);
    let mut no_list = net.conf("1.1.0");
    no_list
        .as_object_mut()
        .unwrap()
        .remove("cni.dev/valid-attachments");
    exec(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", REFERENCE_PLUGINS)],
        no_list.to_string().as_bytes(),
    )
    .expect_error(7, &["cni.dev/valid-attachments"], "GC without the list");
    assert_eq!(net.records().len(), 2, "nothing removed");
    net.gc(&[&keep]).expect_ok("GC listing one of two");
    let _quiet = net.quiet();
    assert!(link_exists(&net.host_veth(&keep)), "the listed one stays");
    assert!(gone.netns.link("eth0").is_none(), "the other's eth0 went");
    assert!(!link_exists(&net.host_veth(&gone)));
    assert_eq!(maps_mentioning(&net, gone_ifindex), Vec::<String>::new());
    assert_eq!(net.records(), BTreeSet::from([net.record_of(&keep)]));
    assert_eq!(
        net.allocations(),
        BTreeSet::from([format!("{}@{}", keep.ifname, keep.id)])
    );
    keep.netns
        .expect_pings(net.node(), 3, "the listed pod still works");
}

/// GC with host-local: the gone attachment's reservation in host-local's
/// dataDir is freed, the listed one's stays.
#[test]
fn gc_passes_the_list_to_host_local() {
    let net = CniNet::host_local("tc");
    let (keep, gone) = (Pod::new(), Pod::new());
    net.add(&keep);
    net.add(&gone);
    let (keep_ip, gone_ip) = (keep.ipv4().to_string(), gone.ipv4().to_string());
    assert_eq!(
        net.allocations(),
        BTreeSet::from([keep_ip.clone(), gone_ip])
    );
    net.gc(&[&keep]).expect_ok("GC listing one of two");
    assert_eq!(
        net.allocations(),
        BTreeSet::from([keep_ip]),
        "host-local freed the other"
    );
    assert!(!link_exists(&net.host_veth(&gone)));
    assert_eq!(net.records(), BTreeSet::from([net.record_of(&keep)]));
    net.gc(&[]).expect_ok("GC listing none");
    assert_eq!(net.allocations(), BTreeSet::new());
    assert_eq!(net.records(), BTreeSet::new());
}

/// A runtime that repeats an ADD (a retry after a timeout) gets the same
/// pod again: the same address, one record, a working interface.
#[test]
fn a_repeated_add_gives_the_same_pod() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let (pod, peer) = (Pod::new(), Pod::new());
    let first = net.add(&pod);
    net.add(&peer);
    let again = net.add(&pod);
    assert_eq!(first["ips"], again["ips"], "the same addresses");
    assert_eq!(net.records().len(), 2);
    assert_eq!(net.allocations().len(), 2);
    peer.netns
        .expect_pings(pod.ipv4(), 3, "the repeated pod works");
}

/// containerd passes `/var/run/netns/cni-<uuid>` (/var/run is a link to
/// /run): the path works as given, is what the result names, and DEL
/// after the namespace went by that path cleans up.
#[test]
fn a_namespace_path_through_a_symlink_works() {
    let net = CniNet::builtin("tc");
    let mut pod = Pod::new();
    let var_run = pod.netns.path().replacen("/run/", "/var/run/", 1);
    let mut vars = net.vars("ADD", &pod);
    vars.retain(|(k, _)| *k != "CNI_NETNS");
    vars.push(("CNI_NETNS", &var_run));
    let result = net.run(&vars, &net.conf("1.0.0")).expect_ok("ADD").clone();
    assert_eq!(s(&result["interfaces"][1]["sandbox"]), var_run, "{result}");
    assert!(pod.netns.link("eth0").is_some());
    pod.netns.delete();
    let mut vars = net.vars("DEL", &pod);
    vars.retain(|(k, _)| *k != "CNI_NETNS");
    vars.push(("CNI_NETNS", &var_run));
    net.run(&vars, &net.conf("1.0.0")).expect_ok("DEL");
    assert!(eventually(Duration::from_secs(5), || !link_exists(
        &net.host_veth(&pod)
    )));
    assert_eq!(net.records(), BTreeSet::new());
    assert_eq!(net.allocations(), BTreeSet::new());
}

/// The configuration's MTU is both sides', and DNS settings (the
/// configuration's `dns`, else the runtime's) come back in the result;
/// a containerd port mapping (Go's capitalised names) is accepted.
#[test]
fn mtu_dns_and_runtime_config_are_honoured() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let mut conf = net.conf("1.1.0");
    conf["mtu"] = json!(1400);
    conf["dns"] = json!({"nameservers": ["198.18.0.53"], "search": ["svc.local"]});
    conf["runtimeConfig"] = json!({
        "portMappings": [{"HostPort": 18080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}],
        "dns": {"Servers": ["198.18.0.54"], "Searches": null, "Options": ["ndots:5"]},
    });
    let result = net.add_with(&pod, &conf, &[]);
    assert_eq!(result["interfaces"][1]["mtu"], json!(1400), "{result}");
    assert_eq!(pod.netns.link("eth0").unwrap()["mtu"], json!(1400));
    assert_eq!(host_link(&net.host_veth(&pod)).unwrap()["mtu"], json!(1400));
    assert_eq!(
        result["dns"]["nameservers"],
        json!(["198.18.0.53"]),
        "{result}"
    );
    let other = Pod::new();
    let mut conf = net.conf("1.1.0");
    conf["mtu"] = json!(1400);
    conf["runtimeConfig"] = json!({"dns": {"Servers": ["198.18.0.54"], "Options": ["ndots:5"]}});
    let result = net.add_with(&other, &conf, &[]);
    assert_eq!(
        result["dns"]["nameservers"],
        json!(["198.18.0.54"]),
        "{result}"
    );
    assert_eq!(result["dns"]["options"], json!(["ndots:5"]), "{result}");
}

/// A second network over the first one's range is refused (code 7, naming
/// `ipam.subnet`, the key that gave the range) before it makes anything,
/// and the first one's pods keep working.
#[test]
fn a_second_network_over_the_same_range_is_refused() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let quiet = net.quiet();
    let (a, b) = (Pod::new(), Pod::new());
    net.add(&a);
    net.add(&b);
    a.netns.expect_pings(b.ipv4(), 1, "before");
    // Bringing a network up takes the change lock exclusively.
    drop(quiet);
    let other = unique_name();
    let mut conf = net.conf("1.0.0");
    conf["name"] = json!(other);
    let intruder = Pod::new();
    let msg = exec(&net.vars("ADD", &intruder), conf.to_string().as_bytes()).expect_error(
        7,
        &["ipam.subnet: ", "overlaps"],
        "ADD of a network over another's range",
    );
    // In the configuration's words, not the topology's.
    assert!(!msg.contains("pod_cidr"), "{msg}");
    assert!(!std::path::Path::new("/run/vethctl").join(&other).exists());
    assert!(!Pins::new(&other).exist());
    assert!(intruder.netns.link("eth0").is_none());
    let _quiet = net.quiet();
    a.netns
        .expect_pings(b.ipv4(), 3, "the first network's pods");
}

/// stdin that is not a JSON object is code 6 for every verb that reads
/// it, and nothing is made.
#[test]
fn malformed_configuration_is_code_6() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let inputs = [
        "",
        "   ",
        "{",
        "[]",
        "null",
        "\"tc\"",
        "{\"cniVersion\":\"1.0.0\",",
        "\u{0}",
    ];
    for stdin in inputs {
        for command in ["ADD", "DEL", "CHECK"] {
            exec(&net.vars(command, &pod), stdin.as_bytes()).expect_error(
                6,
                &["configuration"],
                &format!("{command} with stdin {stdin:?}"),
            );
        }
        for command in ["GC", "STATUS"] {
            let vars = [("CNI_COMMAND", command), ("CNI_PATH", REFERENCE_PLUGINS)];
            exec(&vars, stdin.as_bytes()).expect_error(
                6,
                &["configuration"],
                &format!("{command} with stdin {stdin:?}"),
            );
        }
    }
    assert!(pod.netns.link("eth0").is_none());
    assert_eq!(net.leftovers(), Vec::<String>::new(), "nothing made");
}

/// A variable the verb needs that is unset or empty is code 4 naming it.
#[test]
fn missing_variables_are_code_4() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let mut check_conf = net.conf("1.0.0");
    check_conf["prevResult"] = json!({"cniVersion": "1.0.0"});
    let cases = [
        ("ADD", "CNI_COMMAND"),
        ("ADD", "CNI_CONTAINERID"),
        ("ADD", "CNI_IFNAME"),
        ("ADD", "CNI_NETNS"),
        ("DEL", "CNI_CONTAINERID"),
        ("DEL", "CNI_IFNAME"),
        ("CHECK", "CNI_CONTAINERID"),
        ("CHECK", "CNI_NETNS"),
    ];
    for (command, missing) in cases {
        for empty in [false, true] {
            let mut vars = net.vars(command, &pod);
            vars.retain(|(k, _)| *k != missing);
            if empty {
                vars.push((missing, ""));
            }
            let conf = if command == "CHECK" {
                check_conf.clone()
            } else {
                net.conf("1.0.0")
            };
            exec(&vars, conf.to_string().as_bytes()).expect_error(
                4,
                &[missing],
                &format!("{command} without {missing} (empty: {empty})"),
            );
        }
    }
    // GC needs CNI_PATH (it may run the IPAM plugin).
    let mut gc = net.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    exec(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes()).expect_error(
        4,
        &["CNI_PATH"],
        "GC without CNI_PATH",
    );
    exec(&[("CNI_COMMAND", "BOGUS")], gc.to_string().as_bytes()).expect_error(
        4,
        &["CNI_COMMAND"],
        "an unknown command",
    );
    assert!(pod.netns.link("eth0").is_none());
    assert_eq!(net.leftovers(), Vec::<String>::new(), "nothing made");
}

/// Container ids and interface names end up in file and link names: path
/// tricks, over-long and otherwise invalid ones are code 4 naming the
/// variable, for ADD, DEL and CHECK alike, and nothing is made anywhere.
#[test]
fn path_tricks_in_ids_and_interface_names_are_code_4() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let long_id = "a".repeat(300);
    let ids = [
        "../x",
        "a/b",
        "../../../../etc/passwd",
        "/abs",
        ".",
        "..",
        ".hidden",
        "-x",
        "a b",
        "a\nb",
        "a@b",
        long_id.as_str(),
    ];
    let ifnames = [
        "../eth0",
        "a/b",
        "0123456789abcdef",
        "..",
        ".",
        "eth 0",
        "eth0:1",
        "a\tb",
        "/",
    ];
    let mut check_conf = net.conf("1.0.0");
    check_conf["prevResult"] = json!({"cniVersion": "1.0.0"});
    let mut tried = Vec::new();
    for id in ids {
        tried.push(("CNI_CONTAINERID", id, pod.ifname.as_str()));
    }
    for ifname in ifnames {
        tried.push(("CNI_IFNAME", pod.id.as_str(), ifname));
    }
    for (var, id, ifname) in tried {
        for command in ["ADD", "DEL", "CHECK"] {
            let vars = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", pod.netns.path()),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", REFERENCE_PLUGINS),
            ];
            let conf = if command == "CHECK" {
                check_conf.clone()
            } else {
                net.conf("1.0.0")
            };
            exec(&vars, conf.to_string().as_bytes()).expect_error(
                4,
                &[var],
                &format!(
                    "{command} with {var} {:?}",
                    if var == "CNI_IFNAME" { ifname } else { id }
                ),
            );
        }
    }
    assert_eq!(
        pod.netns.ip_json(&["link", "show"]).len(),
        1,
        "only lo in the pod's namespace"
    );
    assert_eq!(net.leftovers(), Vec::<String>::new(), "nothing made");
    // Where the records of the tricks above would have landed.
    for escaped in [
        "/run/vethctl/x.json",
        "/run/x.json",
        "/run/vethctl/endpoints",
        "/etc/passwd.json",
    ] {
        assert!(!std::path::Path::new(escaped).exists(), "{escaped}");
    }
}

/// A configuration the plugin cannot serve is code 7 naming the key, and
/// nothing is made, also for the name that would have been used.
#[test]
fn invalid_configurations_are_code_7_naming_the_key() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let with = |key: &str, value: Value| {
        let mut conf = net.conf("1.0.0");
        conf[key] = value;
        conf
    };
    let subnet = net.block.cidr.clone();
    let host_bits = format!("{}/24", net.v4(7));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an unknown key of the built-in IPAM",
            with(
                "ipam",
                json!({"type": "veth-builtin", "subnet": subnet, "rangeStart": "x"}),
            ),
            "ipam.rangeStart",
        ),
        (
            "a typo in the built-in IPAM",
            with("ipam", json!({"type": "veth-builtin", "subnet4": subnet})),
            "ipam.subnet4",
        ),
        (
            "a subnet with host bits",
            with("ipam", json!({"type": "veth-builtin", "subnet": host_bits})),
            "ipam.subnet",
        ),
        (
            "IPv6 only",
            with(
                "ipam",
                json!({"type": "veth-builtin", "subnet6": net.block.cidr6}),
            ),
            "ipam",
        ),
        ("no ipam", with("ipam", Value::Null), "ipam"),
        (
            "an IPAM type that is a path",
            with(
                "ipam",
                json!({"type": "../../../bin/true", "subnet": subnet}),
            ),
            "ipam.type",
        ),
        (
            "this plugin as its own IPAM",
            with("ipam", json!({"type": "veth-cni", "subnet": subnet})),
            "ipam.type",
        ),
        (
            "a network name of 11 characters",
            with("name", json!("abcdefghijk")),
            "name",
        ),
        (
            "a network name with capitals",
            with("name", json!("Pods")),
            "name",
        ),
        (
            "a network name with a slash",
            with("name", json!("a/b")),
            "name",
        ),
        (
            "a network name that is a path",
            with("name", json!("../x")),
            "name",
        ),
        ("no network name", with("name", Value::Null), "name"),
        ("a tiny MTU", with("mtu", json!(100)), "mtu"),
        ("an MTU that is a string", with("mtu", json!("1500")), "mtu"),
        ("an unknown mode", with("mode", json!("fast")), "mode"),
        (
            "ipMasq that is not a boolean",
            with("ipMasq", json!("yes")),
            "ipMasq",
        ),
        (
            "a port mapping without a port",
            with(
                "runtimeConfig",
                json!({"portMappings": [{"ContainerPort": 80}]}),
            ),
            "runtimeConfig.portMappings[0].hostPort",
        ),
    ];
    for (what, conf, field) in cases {
        let reply = exec(&net.vars("ADD", &pod), conf.to_string().as_bytes());
        let msg = reply.expect_error(7, &[], what);
        assert!(
            msg.starts_with(field),
            "{what}: the message names {field}: {msg}"
        );
        assert!(pod.netns.link("eth0").is_none(), "{what}: no eth0");
        // STATUS says so too, rather than promising ADDs that will fail.
        let mut status = conf.clone();
        status["cniVersion"] = json!("1.1.0");
        let vars = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", REFERENCE_PLUGINS)];
        let msg = exec(&vars, status.to_string().as_bytes()).expect_error(
            7,
            &[],
            &format!("STATUS with {what}"),
        );
        assert!(msg.starts_with(field), "STATUS with {what}: {msg}");
    }
    // Nothing for the names that were refused either (../x would be /run/x).
    for path in [
        "/run/vethctl/abcdefghijk",
        "/run/vethctl/Pods",
        "/run/vethctl/a",
        "/run/x",
    ] {
        assert!(!std::path::Path::new(path).exists(), "{path}");
    }
    assert_eq!(net.leftovers(), Vec::<String>::new(), "nothing made");
    // A delegated IPAM that is not in CNI_PATH: 7 too, and no endpoint.
    let missing = with("ipam", json!({"type": "no-such-ipam", "subnet": subnet}));
    net.run(&net.vars("ADD", &pod), &missing).expect_error(
        7,
        &["no-such-ipam", "CNI_PATH"],
        "an IPAM plugin not in CNI_PATH",
    );
    assert_eq!(net.records(), BTreeSet::new());
    assert_eq!(net.marked_links(), Vec::<String>::new());
}

/// CNI_ARGS is parsed, not matched: the Kubernetes keys in any order,
/// IgnoreUnknown anywhere; `vethctl status` and `stats` show
/// `namespace/name`. Unknown keys without IgnoreUnknown and malformed
/// pairs are code 4 for ADD; DEL goes ahead without them.
#[test]
fn cni_args_in_any_order_give_pods_their_kubernetes_names() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let cases = [
        ("ns1", "web-0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=uid-1"),
        ("ns2", "db-0", "K8S_POD_UID=uid-2;K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_NAME=db-0;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns2"),
        ("kube-system", "dns-1", "K8S_POD_NAME=dns-1;K8S_POD_NAMESPACE=kube-system;K8S_POD_UID=uid-3;K8S_POD_INFRA_CONTAINER_ID={id};IgnoreUnknown=true;FOO=bar"),
        ("ns4", "late", "FOO=bar;K8S_POD_NAMESPACE=ns4;K8S_POD_NAME=late;IgnoreUnknown=1"),
    ];
    let mut pods = Vec::new();
    for (ns, name, args) in cases {
        let pod = Pod::new();
        let args = args.replace("{id}", &pod.id);
        net.add_with(&pod, &net.conf("1.0.0"), &[("CNI_ARGS", &args)]);
        pods.push((pod, ns, name));
    }
    let status = net.status_pods();
    let stats = net.stats();
    for (pod, ns, name) in &pods {
        let veth = net.host_veth(pod);
        assert_eq!(
            s(&status[&veth]["k8s"]),
            format!("{ns}/{name}"),
            "status: {:?}",
            status[&veth]
        );
        assert_eq!(s(&stats[&veth]["pod"]), *name, "stats: {:?}", stats[&veth]);
        assert_eq!(
            s(&stats[&veth]["namespace"]),
            *ns,
            "stats: {:?}",
            stats[&veth]
        );
    }
    let table = |command: &str| {
        let out = vethctl(&[command, "-n", &net.name], &[], None);
        expect_success(&out, command);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (status_table, stats_table) = (table("status"), table("stats"));
    for (_, ns, name) in &pods {
        let shown = format!("{ns}/{name}");
        assert!(
            status_table.contains(&shown),
            "status shows {shown}:\n{status_table}"
        );
        assert!(
            stats_table.contains(&shown),
            "stats shows {shown}:\n{stats_table}"
        );
    }

    let refused = [
        ("K8S_POD_NAME=a;FOO=bar", "FOO"),
        ("FOO=bar;K8S_POD_NAME=a", "FOO"),
        ("IgnoreUnknown=maybe;K8S_POD_NAME=a", "IgnoreUnknown"),
        ("K8S_POD_NAME", "K8S_POD_NAME"),
        ("K8S_POD_NAME=a=b", "K8S_POD_NAME=a=b"),
        ("=x", "empty key"),
    ];
    for (args, names) in refused {
        let pod = Pod::new();
        let mut vars = net.vars("ADD", &pod);
        vars.push(("CNI_ARGS", args));
        net.run(&vars, &net.conf("1.0.0")).expect_error(
            4,
            &["CNI_ARGS", names],
            &format!("CNI_ARGS {args:?}"),
        );
        assert!(pod.netns.link("eth0").is_none(), "{args}: nothing made");
    }
    let (pod, _, _) = &pods[0];
    let mut vars = net.vars("DEL", pod);
    vars.push(("CNI_ARGS", "FOO=bar"));
    net.run(&vars, &net.conf("1.0.0"))
        .expect_ok("DEL with CNI_ARGS it cannot read");
    assert!(!link_exists(&net.host_veth(pod)));
}

/// Pods added and removed do not disturb the others: while pod C comes
/// and goes again and again, a ping between A and B loses nothing and a
/// TCP connection between them delivers every byte.
#[test]
fn a_pod_coming_and_going_does_not_disturb_others() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let (a, b) = (Pod::new(), Pod::new());
    net.add(&a);
    net.add(&b);
    let (ip_a, ip_b) = (a.ipv4(), b.ipv4());
    a.netns.expect_pings(ip_b, 1, "a to b");
    let mut session = TcpSession::open(
        a.netns.path(),
        b.netns.path(),
        ip_b,
        Duration::from_secs(20),
    );
    let ping = a
        .netns
        .command("ping")
        .args(["-n", "-q", "-c", "500", "-i", "0.02", "-W", "2"])
        .arg(ip_b.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting ping");
    let mut ping = veth_tests::cni::Child::new(ping);
    let before = net.stats();
    let (va, vb) = (net.host_veth(&a), net.host_veth(&b));
    // On a failure, what the dataplane counted for a and b says where it
    // happened.
    let send = |session: &mut TcpSession, when: &str| {
        if let Err(e) = session.try_send(256 << 10) {
            let stats = net.stats();
            panic!(
                "{when}: sending after {} bytes: {e}\na: {}\nb: {}\nc's: {:?}",
                session.sent_bytes(),
                stats.get(&va).cloned().unwrap_or_default(),
                stats.get(&vb).cloned().unwrap_or_default(),
                net.status_pods().keys().collect::<Vec<_>>(),
            );
        }
    };
    let mut rounds_during_ping = 0;
    for round in 0..20 {
        let c = Pod::new();
        net.add(&c);
        send(
            &mut session,
            &format!("round {round}, c ({}) added", c.ipv4()),
        );
        c.netns
            .expect_pings(ip_a, 1, &format!("round {round}: c to a"));
        net.del(&c, None);
        send(&mut session, &format!("round {round}, c deleted"));
        if ping.running() {
            rounds_during_ping += 1;
        } else if round >= 2 {
            break;
        }
    }
    let out = ping.wait(Duration::from_secs(60));
    assert!(
        rounds_during_ping >= 1,
        "c came and went while the ping ran"
    );
    assert!(out.contains("500 packets transmitted"), "{out}");
    assert_eq!(veth_tests::cni::replies(&out), 500, "no ping lost: {out}");
    let (sent, received) = session.finish();
    assert_eq!(sent, received, "every byte arrived");
    let after = net.stats();
    for veth in [net.host_veth(&a), net.host_veth(&b)] {
        assert_eq!(
            pair_counter(&after, &veth, "", "dropped_packets"),
            pair_counter(&before, &veth, "", "dropped_packets"),
            "nothing of {veth} dropped: {:?}",
            after[&veth]
        );
    }
}

// ---------------------------------------------------------------------------
// The plugin as a hostile runtime or pod would try it.

/// A link the plugin did not make, named exactly like the host side it
/// would make for an attachment (someone else's, or a trap): ADD refuses
/// to use or delete it, and neither DEL, GC nor `vethctl down` touch it;
/// it does not matter whether it carries no alias or another network's
/// mark.
#[test]
fn a_foreign_link_with_the_host_side_name_is_never_taken_or_deleted() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    for alias in [None, Some("vethctl:othernet")] {
        let pod = Pod::new();
        let veth = net.host_veth(&pod);
        let foreign = ForeignLink::bridge(&veth, alias);
        let ifindex = foreign.ifindex();
        let reply = net.run(&net.vars("ADD", &pod), &net.conf("1.0.0"));
        reply.expect_error(999, &[&veth], "ADD onto a foreign link");
        assert_eq!(foreign.ifindex(), ifindex, "the foreign link is untouched");
        assert!(pod.netns.link("eth0").is_none(), "no pod side");
        assert_eq!(net.records(), BTreeSet::new(), "no record");
        assert_eq!(net.allocations(), BTreeSet::new(), "the address went back");
        net.del(&pod, None);
        net.del_without_netns(&pod).expect_ok("second DEL");
        net.gc(&[]).expect_ok("GC");
        assert_eq!(foreign.ifindex(), ifindex, "DEL and GC left it alone");
        expect_success(
            &vethctl(&["down", "-n", &net.name], &[], None),
            "vethctl down",
        );
        assert_eq!(foreign.ifindex(), ifindex, "vethctl down left it alone");
        drop(foreign);
        net.bring_up();
    }
}

/// The pod's host side was deleted and a foreign link took its name: DEL
/// and GC know the recorded link (by ifindex and mark) and leave the
/// newcomer alone.
#[test]
fn a_link_that_took_the_place_of_ours_survives_del_and_gc() {
    let net = CniNet::builtin("tc");
    for verb in ["DEL", "GC"] {
        let pod = Pod::new();
        net.add(&pod);
        let veth = net.host_veth(&pod);
        veth_tests::run("ip", &["link", "del", &veth]);
        let foreign = ForeignLink::bridge(&veth, None);
        let ifindex = foreign.ifindex();
        match verb {
            "DEL" => net.del(&pod, None),
            _ => {
                net.gc(&[]).expect_ok("GC");
            }
        }
        assert_eq!(foreign.ifindex(), ifindex, "{verb} left the newcomer alone");
        assert_eq!(net.records(), BTreeSet::new(), "{verb} removed the record");
        assert_eq!(
            net.allocations(),
            BTreeSet::new(),
            "{verb} released the address"
        );
    }
}

/// An interface already in the pod's namespace under CNI_IFNAME (another
/// plugin's, or `lo`): ADD fails without touching it and leaves nothing.
#[test]
fn an_existing_interface_in_the_pod_is_left_alone() {
    let net = CniNet::builtin("tc");
    let mut lo = Pod::new();
    lo.ifname = "lo".into();
    let reply = net.run(&net.vars("ADD", &lo), &net.conf("1.0.0"));
    assert!(!reply.is_ok(), "ADD as lo fails: {reply}");
    assert_eq!(lo.netns.ip_json(&["link", "show"]).len(), 1, "only lo");
    assert_eq!(net.records(), BTreeSet::new());
    assert_eq!(net.allocations(), BTreeSet::new());
    let pod = Pod::new();
    pod.netns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let before = pod.netns.link("eth0").expect("eth0")["ifindex"].clone();
    let reply = net.run(&net.vars("ADD", &pod), &net.conf("1.0.0"));
    assert!(!reply.is_ok(), "ADD onto an existing eth0 fails: {reply}");
    assert_eq!(
        pod.netns.link("eth0").expect("eth0 is still there")["ifindex"],
        before
    );
    assert!(!link_exists(&net.host_veth(&pod)));
    assert_eq!(net.records(), BTreeSet::new());
    assert_eq!(net.allocations(), BTreeSet::new());
    net.del(&pod, None);
    assert_eq!(
        pod.netns.link("eth0").expect("DEL left it")["ifindex"],
        before
    );
}

/// A pod attached by CNI is held to its identity like a topology's: one
/// that sends with another pod's address (or a MAC of its own choosing)
/// gets nothing through, and the drops are counted as spoofing.
#[test]
fn a_pod_cannot_speak_with_another_pods_address() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let (thief, victim, target) = (Pod::new(), Pod::new(), Pod::new());
    for pod in [&thief, &victim, &target] {
        net.add(pod);
    }
    thief
        .netns
        .expect_pings(target.ipv4(), 1, "the thief as itself");
    let stolen = victim.ipv4().to_string();
    thief
        .netns
        .ip(&["addr", "add", &format!("{stolen}/32"), "dev", "eth0"]);
    let out = thief
        .netns
        .command("ping")
        .args([
            "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1", "-I", &stolen,
        ])
        .arg(target.ipv4().to_string())
        .output()
        .expect("ping");
    assert_eq!(
        veth_tests::cni::replies(&String::from_utf8_lossy(&out.stdout)),
        0,
        "nothing answers the stolen address"
    );
    let stats = net.stats();
    let pair = &stats[&net.host_veth(&thief)];
    assert!(veth_tests::drops(pair, "spoofed_ipv4") >= 5, "{pair}");
    thief
        .netns
        .ip(&["link", "set", "eth0", "address", "0a:58:01:02:03:04"]);
    assert_eq!(
        thief.netns.ping(target.ipv4(), 3),
        0,
        "another MAC gets nothing through"
    );
    let stats = net.stats();
    assert!(veth_tests::drops(&stats[&net.host_veth(&thief)], "spoofed_mac") >= 1);
    victim
        .netns
        .expect_pings(target.ipv4(), 3, "the victim is unharmed");
}

/// The node's own namespace as CNI_NETNS (a runtime's bug, or a hostile
/// runtime): the pod side would land in the host with the pod's address,
/// and the pod's default route would replace the node's. Tried on a node
/// of the test's own — the plugin started inside a namespace the test
/// made, with its own sysfs and /run/vethctl, so nothing of the real
/// host is at stake — it is refused with code 4, and the node's default
/// route and links are as they were. The network the plugin brought up
/// is pinned on the host's bpffs, as a node's are: it is taken down at
/// the end.
#[test]
fn the_nodes_own_namespace_is_refused() {
    let net = CniNet::builtin("tc");
    let uplink = AddressBlock::reserve(&unique_name());
    let uplink_net = uplink.cidr.split('/').next().unwrap().to_string();
    let prefix = uplink_net.rsplit_once('.').unwrap().0.to_string();
    let node = Netns::named();
    node.ip(&["link", "set", "lo", "up"]);
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["link", "set", "up1", "up"]);
    node.ip(&["addr", "add", &format!("{prefix}.10/24"), "dev", "up0"]);
    node.ip(&["route", "add", "default", "via", &format!("{prefix}.1")]);
    let default_route = || node.ip(&["route", "show", "default"]);
    let links = || -> BTreeSet<String> {
        node.ip_json(&["link", "show"])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    };
    let (route_before, links_before) = (default_route(), links());
    assert!(route_before.contains("up0"), "{route_before}");
    let node_name = node.path().rsplit('/').next().unwrap().to_string();
    let plugin = veth_tests::cni::plugin_bin();
    // The node's /run/vethctl, kept across the plugin's runs.
    let state = TempDir::new("veth-cni-node-state");
    std::fs::create_dir_all("/run/vethctl").unwrap();
    let in_node = |program: &std::path::Path| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &node_name, "sh", "-c"])
            .arg(
                "mount -t bpf bpf /sys/fs/bpf && mount --bind \"$1\" /run/vethctl && \
                 shift && exec \"$0\" \"$@\"",
            )
            .arg(program)
            .arg(state.path());
        cmd
    };
    let _down = veth_tests::OnDrop(|| {
        let mut down = in_node(&veth_tests::vethctl_bin());
        let _ = down.args(["down", "-n", &net.name]).output();
    });
    for target in ["/proc/self/ns/net", "/proc/thread-self/ns/net", node.path()] {
        let cmd = in_node(&plugin);
        let id = veth_tests::cni::container_id();
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", target),
            ("CNI_IFNAME", "evil0"),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ];
        let reply =
            veth_tests::cni::exec_with(cmd, &vars, net.conf("1.0.0").to_string().as_bytes());
        reply.expect_error(
            4,
            &["CNI_NETNS"],
            &format!("ADD into the node's namespace as {target}"),
        );
        assert_eq!(
            default_route(),
            route_before,
            "{target}: the node's default route"
        );
        let added: Vec<String> = links().difference(&links_before).cloned().collect();
        assert_eq!(
            added,
            Vec::<String>::new(),
            "{target}: no link made in the node"
        );
    }
}

/// A delegated IPAM that hands out an address the network already uses
/// (`static`, or a host-local whose dataDir was lost): another pod's
/// address would take its map entry and host route, the node's address
/// its traffic. Both are refused with code 7, and the pod that has the
/// address keeps working.
#[test]
fn addresses_of_other_pods_or_the_node_are_never_taken() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let (victim, peer) = (Pod::new(), Pod::new());
    net.add(&victim);
    net.add(&peer);
    let victim_ip = victim.ipv4();
    peer.netns.expect_pings(victim_ip, 2, "before");
    for (what, taken) in [
        ("the victim's address", victim_ip),
        ("the node's address", net.node()),
    ] {
        let thief = Pod::new();
        let mut conf = net.conf("1.0.0");
        conf["ipam"] = json!({
            "type": "static",
            "subnet": net.block.cidr,
            "addresses": [{"address": format!("{taken}/24")}],
        });
        let reply = net.run(&net.vars("ADD", &thief), &conf);
        reply.expect_error(7, &[&taken.to_string()], &format!("ADD with {what}"));
        assert!(thief.netns.link("eth0").is_none(), "{what}: no pod side");
        assert!(!link_exists(&net.host_veth(&thief)), "{what}: no host side");
        assert_eq!(net.records().len(), 2, "{what}: no record");
    }
    let route = veth_tests::run("ip", &["route", "get", &victim_ip.to_string()]);
    assert!(
        route.contains(&net.host_veth(&victim)),
        "the host still routes {victim_ip} to the victim: {route}"
    );
    let status = net.status_pods();
    assert_eq!(
        s(&status[&net.host_veth(&victim)]["endpoint"]),
        "ready",
        "{status:?}"
    );
    peer.netns.expect_pings(victim_ip, 3, "after");
}

/// An interface name that starts with a dot (valid for the kernel) gives
/// a record file that starts with one: it must not be hidden from
/// `status`, GC and `vethctl down`, or GC would free the address of a
/// pod that still has it, and `down` would leave its link.
#[test]
fn interface_names_with_a_leading_dot_are_not_hidden() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let mut pod = Pod::new();
    pod.ifname = ".hid".into();
    net.add(&pod);
    let veth = net.host_veth(&pod);
    assert!(net.status_pods().contains_key(&veth), "status shows it");
    net.gc(&[&pod]).expect_ok("GC listing it");
    assert!(link_exists(&veth), "GC keeps a listed pod");
    assert_eq!(net.allocations().len(), 1, "and its address");
    net.gc(&[]).expect_ok("GC listing nothing");
    assert!(!link_exists(&veth), "GC removes it");
    assert_eq!(net.allocations(), BTreeSet::new());
    let mut other = Pod::new();
    other.ifname = "...".into();
    net.add(&other);
    expect_success(
        &vethctl(&["down", "-n", &net.name], &[], None),
        "vethctl down",
    );
    assert!(!link_exists(&net.host_veth(&other)), "down removes it");
}

/// Unusual but valid container ids and interface names work, and every
/// file the plugin writes stays in the network's endpoints directory,
/// named after the attachment.
#[test]
fn odd_but_valid_names_stay_inside_the_networks_directory() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let names = [
        ("a", "eth0"),
        ("A.b-c_d", "net1"),
        ("0", "x@y"),
        ("id.json", "eth-1.2"),
        ("z", "012345678901234"),
    ];
    let mut pods = Vec::new();
    for (id, ifname) in names {
        let mut pod = Pod::new();
        pod.id = format!("{id}{}", &pod.id[..8]);
        pod.ifname = ifname.into();
        net.add(&pod);
        assert!(
            pod.netns.link(ifname).is_some(),
            "{ifname} exists in the pod"
        );
        pods.push(pod);
    }
    let expected: BTreeSet<String> = pods.iter().map(|p| net.record_of(p)).collect();
    assert_eq!(net.records(), expected);
    let all = veth_tests::cni::files_in(&net.state_dir().join("endpoints"));
    assert_eq!(all, expected, "nothing else in the endpoints directory");
    assert_eq!(net.status_pods().len(), names.len());
    for pod in &pods {
        net.del(pod, None);
    }
    assert_eq!(net.records(), BTreeSet::new());
}

/// A CNI configuration named like a topology brought up from a file: an
/// ADD would converge that topology to the configuration (no pods),
/// deleting the file's pods. It is refused (code 7, naming `name`), and
/// DEL and GC under that name leave the file's pods alone.
#[test]
fn a_configuration_named_like_a_topology_file_leaves_its_pods_alone() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    let inode = veth_tests::netns_inode(&a.netns);
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let mut conf = net.conf("1.0.0");
    conf["name"] = json!(t.name());
    conf["ipam"] = json!({"type": "veth-builtin", "subnet": t.topology.pod_cidr.to_string()});
    exec(&net.vars("ADD", &pod), conf.to_string().as_bytes()).expect_error(
        7,
        &["name", t.name()],
        "ADD on a file's topology",
    );
    assert!(pod.netns.link("eth0").is_none());
    exec(&net.vars("DEL", &pod), conf.to_string().as_bytes()).expect_ok("DEL");
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    exec(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", REFERENCE_PLUGINS)],
        gc.to_string().as_bytes(),
    )
    .expect_ok("GC");
    assert_eq!(
        veth_tests::netns_inode(&a.netns),
        inode,
        "pod a is the same"
    );
    assert!(link_exists(&a.host_veth) && link_exists(&b.host_veth));
    assert_eq!(
        veth_tests::ping(&a.netns, b.ipv4, 3),
        3,
        "a still reaches b"
    );
}

/// The id of the program pinned at `pin`.
fn pinned_program_id(pin: &std::path::Path) -> u64 {
    let out = veth_tests::run(
        "bpftool",
        &["-j", "prog", "show", "pinned", pin.to_str().unwrap()],
    );
    let prog: Value = serde_json::from_str(&out).expect("bpftool JSON");
    prog["id"].as_u64().expect("a program id")
}

/// The programs of the BPF filters at `veth`'s ingress or egress, as
/// `tc` shows them.
fn filter_programs(veth: &str, hook: &str) -> Vec<u64> {
    let out = std::process::Command::new("tc")
        .args(["-j", "filter", "show", "dev", veth, hook])
        .output()
        .expect("running tc");
    // No clsact qdisc: tc refuses the dump.
    let filters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    filters
        .iter()
        .filter_map(|f| f["options"]["prog"]["id"].as_u64())
        .collect()
}

/// Our programs at each hook of `veth`, as `vethctl status` reports them.
fn status_programs(net: &CniNet, veth: &str) -> BTreeMap<String, Value> {
    net.status_pods()[veth]["attached"]
        .as_array()
        .expect("attached")
        .iter()
        .map(|a| (s(&a["hook"]).to_string(), a.clone()))
        .collect()
}

/// Endpoints get their TC programs as `clsact` filters (no RCU grace
/// period per attach: fast pod start), or as TCX links with
/// `"tcAttach": "tcx"`; both kinds redirect to each other, follow mode
/// changes, and run the programs a reload pinned. A bad value is code 7
/// and makes nothing.
#[test]
fn endpoints_attach_as_clsact_filters_or_tcx_links() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    // Held while pinging; never across an ADD that changes the network.
    let quiet = net.quiet();
    let pins = Pins::new(&net.name);
    let (from_pod, to_pod) = (pins.program("from_pod"), pins.program("to_pod"));
    let (a, b) = (Pod::new(), Pod::new());
    net.add(&a);
    let mut tcx = net.conf("1.0.0");
    tcx["tcAttach"] = json!("tcx");
    net.add_with(&b, &tcx, &[]);
    let (va, vb) = (net.host_veth(&a), net.host_veth(&b));

    let (ingress, egress) = (pinned_program_id(&from_pod), pinned_program_id(&to_pod));
    assert_eq!(
        filter_programs(&va, "ingress"),
        [ingress],
        "a: filter at ingress"
    );
    assert_eq!(
        filter_programs(&va, "egress"),
        [egress],
        "a: filter at egress"
    );
    assert!(
        !pins.link(&va, dataplane::Hook::Ingress).exists(),
        "a: no TCX link"
    );
    let shown = status_programs(&net, &va);
    assert_eq!(shown["ingress"]["program_id"], json!(ingress), "{shown:?}");
    assert_eq!(shown["ingress"]["filter_program_ids"], json!([ingress]));
    assert_eq!(shown["egress"]["program_id"], json!(egress), "{shown:?}");
    assert_eq!(shown["ingress"]["tcx_program_ids"], json!([]), "{shown:?}");

    assert!(filter_programs(&vb, "ingress").is_empty(), "b: no filter");
    let shown = status_programs(&net, &vb);
    assert_eq!(
        shown["ingress"]["tcx_program_ids"],
        json!([ingress]),
        "{shown:?}"
    );
    assert_eq!(
        shown["egress"]["tcx_program_ids"],
        json!([egress]),
        "{shown:?}"
    );

    // Each kind redirects to the other.
    set_forwarding(&va, false);
    set_forwarding(&vb, false);
    a.netns.expect_pings(b.ipv4(), 1, "a to b");
    let before = net.stats();
    assert_eq!(a.netns.ping(b.ipv4(), 10), 10, "10 pings from a to b");
    let after = net.stats();
    for veth in [&va, &vb] {
        let redirected = pair_counter(&after, veth, "from_pod", "redirected_packets")
            - pair_counter(&before, veth, "from_pod", "redirected_packets");
        assert!(redirected >= 10, "{veth} redirected: {:?}", after[veth]);
    }
    set_forwarding(&va, true);
    set_forwarding(&vb, true);
    drop(quiet);

    // Mode xdp: XDP takes the filter's place at ingress; egress stays.
    let c = Pod::new();
    let mut xdp = net.conf("1.0.0");
    xdp["mode"] = json!("xdp");
    net.add_with(&c, &xdp, &[]);
    assert!(
        filter_programs(&va, "ingress").is_empty(),
        "a: ingress in xdp"
    );
    // Mode tc's programs redirect, the other modes' only count: a mode
    // change loads them again.
    let egress = pinned_program_id(&to_pod);
    assert_eq!(filter_programs(&va, "egress"), [egress], "a: egress in xdp");
    assert!(pins.link(&va, dataplane::Hook::Xdp).exists(), "a: XDP link");
    let quiet = net.quiet();
    for (from, to, what) in [(&a, &b, "a to b"), (&b, &c, "b to c"), (&c, &a, "c to a")] {
        from.netns
            .expect_pings(to.ipv4(), 2, &format!("{what} in xdp"));
    }

    // Back to tc: the filter is back at ingress.
    drop(quiet);
    let d = Pod::new();
    net.add(&d);
    let ingress = pinned_program_id(&from_pod);
    assert_eq!(
        filter_programs(&va, "ingress"),
        [ingress],
        "a: ingress in tc"
    );
    assert!(
        !pins.link(&va, dataplane::Hook::Xdp).exists(),
        "a: XDP gone"
    );

    // The programs lost (a crash), mode unchanged: the ADD that loads them
    // again moves every endpoint onto the new ones.
    let gone = Renamed::new(&to_pod);
    let e = Pod::new();
    net.add(&e);
    gone.discard();
    let new_egress = pinned_program_id(&to_pod);
    assert_ne!(new_egress, egress, "the program was loaded again");
    assert_eq!(filter_programs(&va, "egress"), [new_egress], "a runs it");
    let shown = status_programs(&net, &vb);
    assert_eq!(
        shown["egress"]["tcx_program_ids"],
        json!([new_egress]),
        "b runs it: {shown:?}"
    );
    assert!(filter_programs(&vb, "egress").is_empty(), "b has no filter");
    let quiet = net.quiet();
    for (from, to, what) in [(&d, &a, "d to a"), (&a, &b, "a to b"), (&b, &e, "b to e")] {
        from.netns
            .expect_pings(to.ipv4(), 2, &format!("{what} back in tc"));
    }

    drop(quiet);
    let records = net.records();
    for bad in [json!("fast"), json!(1), json!("TCX")] {
        let mut conf = net.conf("1.0.0");
        conf["tcAttach"] = bad.clone();
        let e = Pod::new();
        net.run(&net.vars("ADD", &e), &conf).expect_error(
            7,
            &["tcAttach", "clsact"],
            &format!("tcAttach {bad}"),
        );
        assert!(!link_exists(&net.host_veth(&e)), "tcAttach {bad}: no veth");
    }
    assert_eq!(net.records(), records, "bad tcAttach: no record");
    net.del(&a, None);
    assert!(!link_exists(&va), "DEL took a's veth and its filters");
}

// ---------------------------------------------------------------------------
// One attachment ADDed twice at once, into two namespaces, after a crash.

/// Six ADDs of one container id at the same moment (a runtime retrying
/// while the first still runs): one endpoint, one address, every ADD
/// answers with it; the pods added after get other addresses. Before,
/// the losers' undo gave the winner's address back to the pool, and the
/// next pods got it again.
#[test]
fn concurrent_adds_of_one_container_id_make_one_endpoint() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let pod = Pod::new();
    let replies: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| net.run(&net.vars("ADD", &pod), &net.conf("1.0.0"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let others: Vec<Pod> = (0..4).map(|_| Pod::new()).collect();
    for other in &others {
        net.add(other);
    }
    let addresses: Vec<Ipv4Addr> = veth_userspace::endpoint::Store::new(&net.name)
        .records()
        .iter()
        .map(|r| r.ipv4)
        .collect();
    let distinct: BTreeSet<Ipv4Addr> = addresses.iter().copied().collect();
    assert_eq!(distinct.len(), 5, "no address twice: {addresses:?}");
    assert_eq!(net.allocations().len(), 5);
    assert_eq!(net.stats().len(), 5, "5 pairs in the maps");
    assert!(net.records().contains(&net.record_of(&pod)));
    assert_eq!(net.records().len(), 5, "one endpoint of the id");
    // Waited for the first, and answered from it (the spec allows an
    // error; the same result is what a runtime retrying wants).
    let mut answers = BTreeSet::new();
    for reply in &replies {
        answers.insert(reply.expect_ok("one of 6 ADDs of one id")["ips"].to_string());
    }
    assert_eq!(answers.len(), 1, "every ADD answers the same: {answers:?}");
    others[0]
        .netns
        .expect_pings(pod.ipv4(), 2, "the pod ADDed 6 times works");
    let locks = net.state_dir().join("endpoint-locks");
    assert_eq!(
        veth_tests::cni::files_in(&locks).len(),
        5,
        "a lock per endpoint"
    );
    for p in others.iter().chain([&pod]) {
        net.del(p, None);
    }
    assert_eq!(
        veth_tests::cni::files_in(&locks),
        BTreeSet::new(),
        "no lock left"
    );
}

/// A second ADD of an attachment into another namespace is refused
/// (code 4, naming both namespaces) and the first pod keeps its
/// interface, address and traffic; the same ADD again is answered from
/// the record, the veth untouched.
#[test]
fn an_add_of_an_existing_attachment_into_another_namespace_is_refused() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let (pod, peer) = (Pod::new(), Pod::new());
    let first = net.add(&pod);
    net.add(&peer);
    let veth = net.host_veth(&pod);
    let ifindex = ifindex_of(&veth);
    let intruder = Netns::named();
    let mut vars = net.vars("ADD", &pod);
    vars.retain(|(k, _)| *k != "CNI_NETNS");
    vars.push(("CNI_NETNS", intruder.path()));
    net.run(&vars, &net.conf("1.0.0")).expect_error(
        4,
        &["CNI_NETNS", intruder.path(), pod.netns.path()],
        "ADD of the attachment into another namespace",
    );
    assert!(intruder.link("eth0").is_none(), "nothing in the other one");
    assert_eq!(ifindex_of(&veth), ifindex, "the first pod's veth stays");
    peer.netns
        .expect_pings(pod.ipv4(), 2, "the first pod still works");
    let again = net.add(&pod);
    assert_eq!(again, first, "the same ADD: the same result");
    assert_eq!(ifindex_of(&veth), ifindex, "answered, not made again");
    assert_eq!(net.records().len(), 2);
    assert_eq!(net.allocations().len(), 2);
    // Once the first namespace is gone (a runtime that lost its DEL), the
    // attachment may go elsewhere.
    let mut pod = pod;
    pod.netns.delete();
    let moved = Pod {
        id: pod.id.clone(),
        ifname: pod.ifname.clone(),
        netns: intruder,
    };
    net.add(&moved);
    peer.netns
        .expect_pings(moved.ipv4(), 2, "the attachment in its new namespace");
    assert_eq!(net.records().len(), 2);
    assert_eq!(net.allocations().len(), 2);
}

/// What an ADD killed between creating the veth pair and marking it left:
/// its record (written first, no ifindex yet) and the pair, unmarked, its
/// pod side `eth0` in the pod's namespace.
fn crashed_add(net: &CniNet, pod: &Pod) {
    use veth_userspace::endpoint::{AddressSource, Record, Store};
    let record = Record {
        container_id: pod.id.clone(),
        ifname: pod.ifname.clone(),
        netns: pod.netns.path().to_string(),
        host_veth: net.host_veth(pod),
        host_ifindex: None,
        ipv4: net.v4(2),
        ipv6: None,
        mtu: 1500,
        k8s: None,
        addresses: AddressSource::Builtin,
        host_path: false,
        tc_attach: Default::default(),
    };
    Store::new(&net.name).save(&record).unwrap();
    let ns = pod.netns.path().rsplit('/').next().unwrap().to_string();
    veth_tests::run(
        "ip",
        &[
            "link",
            "add",
            &record.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ],
    );
    let veth = host_link(&record.host_veth).expect("the leftover veth");
    assert_eq!(veth["ifalias"].as_str(), None, "unmarked");
    assert!(pod.netns.link("eth0").is_some(), "its pod side");
}

/// The leftover of an ADD killed before it marked its veth (what vethctl
/// before marking in the creating `sendmsg` could leave) is taken away by
/// DEL and by GC (pod side included), and a retried ADD makes the pod.
/// Before, DEL and GC dropped the record and left the pair, and every
/// retried ADD failed "exists and is not vethctl's".
#[test]
fn an_add_killed_before_marking_its_veth_is_recovered() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    for verb in ["DEL", "GC", "ADD"] {
        let pod = Pod::new();
        crashed_add(&net, &pod);
        let veth = net.host_veth(&pod);
        match verb {
            "DEL" => net.del(&pod, None),
            "GC" => {
                net.gc(&[]).expect_ok("GC");
            }
            _ => {
                net.add(&pod);
                let link = host_link(&veth).expect("the pod's veth");
                assert_eq!(
                    link["ifalias"].as_str(),
                    Some(link_mark(&net.name).as_str())
                );
                let peer = Pod::new();
                net.add(&peer);
                peer.netns
                    .expect_pings(pod.ipv4(), 2, "the retried ADD's pod");
                net.del(&peer, None);
                net.del(&pod, None);
            }
        }
        assert!(!link_exists(&veth), "{verb}: the host side is gone");
        assert!(pod.netns.link("eth0").is_none(), "{verb}: the pod side too");
        assert_eq!(net.records(), BTreeSet::new(), "{verb}: no record");
        assert_eq!(net.allocations(), BTreeSet::new(), "{verb}: no address");
    }
}

/// ADDs killed (SIGKILL) at random moments: none leaves a veth without
/// the network's mark (before, 3 in 24 did: killed between creating the
/// pair and marking it), a retried ADD makes a working pod, and its DEL
/// leaves nothing — no link (marked or not), no pod side, no record, no
/// address.
#[test]
fn adds_killed_at_random_moments_are_recovered_by_a_retry() {
    use std::{io::Write, process::Stdio};
    let net = CniNet::builtin("tc");
    net.bring_up();
    let peer = Pod::new();
    net.add(&peer);
    let conf = net.conf("1.0.0").to_string();
    let mut seed = u64::from(std::process::id());
    let mut seen = BTreeMap::new();
    for round in 0..40 {
        let pod = Pod::new();
        let vars = net.vars("ADD", &pod);
        // Remembered for the network's clean-up.
        net.remember(&pod);
        let mut child = std::process::Command::new(veth_tests::cni::plugin_bin())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The plugin starts in ~2 ms and an ADD of an up network takes
        // ~5-15 ms here: killed anywhere from its start to its end.
        std::thread::sleep(Duration::from_micros(1_000 + (seed >> 33) % 14_000));
        let _ = child.kill();
        let _ = child.wait();
        let veth = net.host_veth(&pod);
        let left = match host_link(&veth) {
            None => "no veth",
            Some(l) if l["ifalias"].as_str().is_none() => "an unmarked veth",
            Some(_) => "a marked veth",
        };
        *seen.entry(left).or_insert(0) += 1;
        assert_ne!(
            left, "an unmarked veth",
            "round {round}: a killed ADD never leaves a veth without our mark"
        );
        net.add(&pod);
        let link = host_link(&veth).expect("the retried ADD's veth");
        assert_eq!(
            link["ifalias"].as_str(),
            Some(link_mark(&net.name).as_str()),
            "round {round}: marked"
        );
        peer.netns
            .expect_pings(pod.ipv4(), 1, &format!("round {round}: the pod works"));
        net.del(&pod, None);
        assert!(!link_exists(&veth), "round {round}: no host side");
        assert!(
            pod.netns.link("eth0").is_none(),
            "round {round}: no pod side"
        );
        assert_eq!(net.records(), BTreeSet::from([net.record_of(&peer)]));
        assert_eq!(net.allocations().len(), 1, "round {round}: only the peer's");
    }
    eprintln!("what the killed ADDs left: {seen:?}");
}

/// A DEL killed after it freed the endpoint's slot but before it cleared
/// the slot's identity (or an ADD killed between the two writes) left an
/// identity in PODS that no retried DEL found again. A retried DEL clears
/// it now.
#[test]
fn a_retried_del_clears_an_identity_whose_slot_entry_is_gone() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let _quiet = net.quiet();
    let pod = Pod::new();
    net.add(&pod);
    let ifindex = ifindex_of(&net.host_veth(&pod));
    let pins = Pins::new(&net.name);
    let key: Vec<String> = (ifindex as u32)
        .to_le_bytes()
        .iter()
        .map(|b| b.to_string())
        .collect();
    let mut args = vec!["map", "delete", "pinned"];
    let slots = pins.map("SLOTS");
    args.push(slots.to_str().unwrap());
    args.push("key");
    args.extend(key.iter().map(String::as_str));
    veth_tests::run("bpftool", &args);
    let naming = |net: &CniNet| {
        bpftool_map_dump(&Pins::new(&net.name).map("PODS"))
            .iter()
            .filter(|e| e["value"]["host_ifindex"].as_u64() == Some(ifindex))
            .count()
    };
    assert_eq!(naming(&net), 1, "the identity is still there");
    net.del(&pod, None);
    assert_eq!(naming(&net), 0, "the retried DEL cleared it");
    assert_eq!(maps_mentioning(&net, ifindex), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Codes, names and bounded input.

/// Runtime failures carry docs/cli.md's code (999, libcni's ErrInternal),
/// and `/proc/1/ns/net` is refused for what it is: the node's own
/// namespace, or one the plugin may not open.
#[test]
fn proc_1_ns_net_is_refused_for_the_right_reason() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let mut vars = net.vars("ADD", &pod);
    vars.retain(|(k, _)| *k != "CNI_NETNS");
    vars.push(("CNI_NETNS", "/proc/1/ns/net"));
    let readable = std::fs::metadata("/proc/1/ns/net").is_ok();
    let why = if readable {
        "the node's own network namespace"
    } else {
        "cannot be opened"
    };
    let msg = net.run(&vars, &net.conf("1.0.0")).expect_error(
        4,
        &["CNI_NETNS", why],
        "ADD into /proc/1/ns/net",
    );
    assert!(!msg.contains("no nsfs file"), "{msg}");
    assert_eq!(net.records(), BTreeSet::new());
    assert_eq!(net.allocations(), BTreeSet::new());
}

/// More than 1 MiB on stdin is refused (code 6, naming the limit) after
/// reading no more than the limit: the plugin's peak memory stays small.
#[test]
fn stdin_beyond_one_mebibyte_is_refused_without_reading_it_all() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let mut conf = net.conf("1.0.0").to_string().into_bytes();
    conf.truncate(conf.len() - 1);
    conf.extend(b",\"pad\":\"");
    conf.extend(std::iter::repeat_n(b'x', 64 << 20));
    conf.extend(b"\"}");
    let reply = exec(&net.vars("ADD", &pod), &conf);
    let msg = reply.expect_error(
        6,
        &["stdin", "larger than 1048576 bytes"],
        "64 MiB on stdin",
    );
    assert!(!msg.contains("pad"), "{msg}");
    assert_eq!(net.records(), BTreeSet::new());
}

/// Kubernetes names that Kubernetes itself would refuse (an escape
/// sequence, a newline, upper case, too long) are refused with code 4
/// naming the key, and nothing is made.
#[test]
fn kubernetes_names_are_checked_against_kubernetes_rules() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    let long = "a".repeat(64);
    for (args, key) in [
        (
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\u{1b}[2J",
            "K8S_POD_NAME",
        ),
        (
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\nroot",
            "K8S_POD_NAME",
        ),
        (
            "K8S_POD_NAMESPACE=Default;K8S_POD_NAME=web",
            "K8S_POD_NAMESPACE",
        ),
        (
            &format!("K8S_POD_NAMESPACE={long};K8S_POD_NAME=web"),
            "K8S_POD_NAMESPACE",
        ),
    ] {
        let pod = Pod::new();
        let mut vars = net.vars("ADD", &pod);
        vars.push(("CNI_ARGS", args));
        let msg = net.run(&vars, &net.conf("1.0.0")).expect_error(
            4,
            &["CNI_ARGS", key],
            &format!("ADD with {args:?}"),
        );
        assert!(
            !msg.contains('\u{1b}') && !msg.contains('\n'),
            "escaped: {msg:?}"
        );
        assert!(pod.netns.link("eth0").is_none(), "{args:?}: no pod side");
        assert_eq!(net.records(), BTreeSet::new(), "{args:?}: no record");
        assert_eq!(net.allocations(), BTreeSet::new(), "{args:?}: no address");
    }
    let pod = Pod::new();
    let mut vars = net.vars("ADD", &pod);
    vars.push((
        "CNI_ARGS",
        "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c.x-1",
    ));
    net.run(&vars, &net.conf("1.0.0")).expect_ok("valid names");
}

/// `static` IPAM handing out the subnet's network or broadcast address,
/// or an IPv6 address the network has no range for, is refused (code 7)
/// with a message naming the right family.
#[test]
fn static_addresses_that_no_pod_can_have_are_refused() {
    let net = CniNet::builtin("tc");
    net.bring_up();
    for (addresses, fragment) in [
        (vec![format!("{}/24", net.v4(0))], "the network address"),
        (vec![format!("{}/24", net.v4(255))], "the broadcast address"),
        (
            vec![format!("{}/24", net.v4(9)), format!("{}/64", net.v6(9))],
            "IPv6 address",
        ),
    ] {
        let pod = Pod::new();
        let mut conf = net.conf("1.0.0");
        let list: Vec<Value> = addresses.iter().map(|a| json!({"address": a})).collect();
        conf["ipam"] = json!({"type": "static", "subnet": net.block.cidr, "addresses": list});
        let msg = net.run(&net.vars("ADD", &pod), &conf).expect_error(
            7,
            &["ipam", fragment],
            &format!("ADD with {addresses:?}"),
        );
        if fragment == "IPv6 address" {
            assert!(!msg.contains("IPv4 range"), "names IPv6: {msg}");
        }
        assert!(
            pod.netns.link("eth0").is_none(),
            "{addresses:?}: no pod side"
        );
        assert_eq!(net.records(), BTreeSet::new(), "{addresses:?}: no record");
    }
}

/// `vethctl up -t` of a CNI network's recorded description counts its
/// endpoints among the pods (it said "0 pods").
#[test]
fn up_of_a_cni_networks_recorded_file_counts_its_endpoints() {
    let net = CniNet::builtin("tc");
    let (a, b) = (Pod::new(), Pod::new());
    net.add(&a);
    net.add(&b);
    let file = net.state_dir().join("topology.toml");
    let copy = TempDir::new("veth-cni-recorded");
    let path = copy.path().join("net.toml");
    std::fs::copy(&file, &path).unwrap();
    let out = vethctl(&["up", "-t", path.to_str().unwrap()], &[], None);
    expect_success(&out, "vethctl up -t <recorded file>");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(": 2 pods,"), "{said}");
    b.netns
        .expect_pings(a.ipv4(), 2, "the endpoints still work");
}
