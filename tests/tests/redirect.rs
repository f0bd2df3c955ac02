//! The eBPF path carries pod-to-pod traffic, and only pod-to-pod traffic.

use std::time::Duration;

use veth_tests::{counter, ping, set_forwarding, tcp_connects, tcp_transfer, TestTopology};

const PINGS: u32 = 10;

/// Pod A reaches pod B with ping and TCP, the redirect counters account for
/// it, and without the program (forwarding off on the host side, so the
/// host stack cannot carry it either) the same traffic does not arrive.
#[test]
fn pod_to_pod_traffic_is_redirected_and_needs_the_program() {
    let t = TestTopology::new(&["a", "b", "c"]);
    t.up();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    // The host must not be able to forward pod traffic: whatever arrives
    // took the redirect path.
    for pod in &t.topology.pods {
        set_forwarding(&pod.host_veth, false);
    }

    let before = t.stats();
    assert_eq!(
        ping(&a.netns, b.ipv4, PINGS),
        PINGS,
        "a -> b pings answered"
    );
    let after = t.stats();
    let delta = |pod: &str, dir: &str, field: &str| {
        counter(&after[pod], dir, field) - counter(&before[pod], dir, field)
    };
    assert!(delta("a", "from_pod", "redirected_packets") >= u64::from(PINGS));
    assert!(delta("b", "to_pod", "redirected_packets") >= u64::from(PINGS));
    assert!(
        delta("b", "from_pod", "redirected_packets") >= u64::from(PINGS),
        "replies"
    );
    assert!(
        delta("a", "to_pod", "redirected_packets") >= u64::from(PINGS),
        "replies"
    );
    assert!(delta("a", "", "redirected_packets") >= 2 * u64::from(PINGS));
    assert_eq!(delta("c", "", "redirected_packets"), 0, "c saw none of it");
    assert_eq!(delta("a", "", "dropped_packets"), 0);

    let size = 4 * 1024 * 1024;
    let (sent, received) = tcp_transfer(&a.netns, &b, size);
    assert_eq!(sent.bytes, size);
    assert_eq!(received, sent, "the TCP stream arrived complete and intact");
    let after_tcp = t.stats();
    assert!(
        counter(&after_tcp["a"], "from_pod", "redirected_bytes")
            - counter(&after["a"], "from_pod", "redirected_bytes")
            >= size,
        "the stream's bytes were redirected"
    );

    // Control: detach by unpinning a's and b's links (nothing else holds
    // them once vethctl has exited). The same traffic no longer arrives.
    let pins = veth_userspace::dataplane::Pins::new(t.name());
    pins.remove_links(&a.host_veth).unwrap();
    pins.remove_links(&b.host_veth).unwrap();
    // The kernel frees an unpinned link after an RCU grace period: wait
    // until it reports no program at a's and b's hooks.
    let detached = |status: &serde_json::Value| {
        status["pods"].as_array().unwrap().iter().all(|p| {
            p["name"] == "c"
                || p["attached"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|h| h["tcx_program_ids"].as_array().unwrap().is_empty())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !detached(&t.status()) {
        assert!(
            std::time::Instant::now() < deadline,
            "links still attached after unpinning"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ping(&a.netns, b.ipv4, 3),
        0,
        "without the program nothing arrives"
    );
    assert!(
        !tcp_connects(&a.netns, &b, Duration::from_secs(1)),
        "without the program TCP does not connect"
    );

    // `up` re-attaches, and the path works again.
    t.up();
    for pod in &t.topology.pods {
        set_forwarding(&pod.host_veth, false);
    }
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3, "re-attached by up");
    assert!(
        tcp_connects(&a.netns, &b, Duration::from_secs(5)),
        "and TCP connects again"
    );
}

/// Pod-to-host traffic goes through the host stack (passed, not
/// redirected) while pod-to-pod traffic is redirected.
#[test]
fn pod_to_host_goes_through_the_host_stack() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let a = t.pod("a").clone();
    let before = t.stats();
    assert_eq!(
        ping(&a.netns, t.topology.host_address, PINGS),
        PINGS,
        "a -> host"
    );
    let after = t.stats();
    let delta = |dir: &str, field: &str| {
        counter(&after["a"], dir, field) - counter(&before["a"], dir, field)
    };
    assert!(delta("from_pod", "passed_packets") >= u64::from(PINGS));
    assert!(
        delta("to_pod", "passed_packets") >= u64::from(PINGS),
        "replies seen at egress"
    );
    assert_eq!(
        delta("", "redirected_packets"),
        0,
        "nothing to the host was redirected"
    );

    // And pod-to-pod in the same topology is still redirected.
    assert_eq!(ping(&a.netns, t.pod("b").ipv4, 3), 3);
    let last = t.stats();
    assert!(counter(&last["a"], "from_pod", "redirected_packets") >= 3);
}

/// TTL is decremented as by a router, and a TTL that would expire is left
/// to the host stack (which answers with ICMP time exceeded).
#[test]
fn redirect_decrements_ttl_like_a_router() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a.netns, "ping", "-n", "-c", "1", "-W", "1",
        ])
        .arg(b.ipv4.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ttl=63"), "one routed hop: {text}");

    let before = t.stats();
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a.netns, "ping", "-n", "-c", "1", "-W", "1", "-t", "1",
        ])
        .arg(b.ipv4.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a TTL-1 ping must not reach b");
    let after = t.stats();
    assert_eq!(
        counter(&after["a"], "from_pod", "redirected_packets"),
        counter(&before["a"], "from_pod", "redirected_packets"),
        "TTL 1 is not redirected"
    );
}

/// Status shows both ends of every pair as the kernel numbers them.
#[test]
fn status_maps_pod_side_to_host_side() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let status = t.status();
    assert_eq!(status["mode"], "tc");
    for pod in status["pods"].as_array().unwrap() {
        let host_veth = pod["host_veth"].as_str().unwrap();
        let host_ifindex = pod["host_ifindex"].as_u64().unwrap();
        let pod_ifindex = pod["pod_ifindex"].as_u64().unwrap();
        let netns = pod["netns"].as_str().unwrap();
        // From outside: ip in the pod's namespace says eth0@if<host ifindex>.
        let inside = veth_tests::run("ip", &["-n", netns, "-o", "link", "show", "eth0"]);
        assert!(
            inside.starts_with(&format!("{pod_ifindex}: eth0@if{host_ifindex}:")),
            "{inside}"
        );
        let outside = veth_tests::run("ip", &["-o", "link", "show", host_veth]);
        assert!(
            outside.starts_with(&format!("{host_ifindex}: {host_veth}@")),
            "{outside}"
        );
        for hook in pod["attached"].as_array().unwrap() {
            // Mode tc: TCX ingress and egress; XDP is mode xdp's.
            if hook["hook"] == "xdp" {
                assert!(hook["program_id"].is_null(), "no XDP in mode tc: {hook}");
                continue;
            }
            let prog = hook["program_id"]
                .as_u64()
                .expect("our program is attached");
            let at_hook: Vec<u64> = hook["tcx_program_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(
                at_hook.contains(&prog),
                "kernel reports our program at {hook}"
            );
        }
        let ip = pod["ipv4"].as_str().unwrap();
        let addrs = veth_tests::run("ip", &["-n", netns, "-o", "-4", "addr", "show", "eth0"]);
        assert!(addrs.contains(&format!("{ip}/32")), "{addrs}");
    }
}
