//! What the dataplane counts can be read, and agrees, everywhere it is
//! shown: `stats --json`, the agent's Prometheus endpoint (and Prometheus
//! itself), the pinned map through bpftool, `stats --watch` and `trace`.
//!
//! Only redirect counters are compared exactly: IPv6 neighbour discovery
//! and MLD from the pods' and host's stacks pass through the host path
//! whenever they like, but nothing but the test's own pings is redirected.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use veth_tests::attack::{udp_socket, UdpSink};
use veth_tests::cni::{CniNet, Pod};
use veth_tests::{
    bpftool_map_dump, bpftool_map_lookup, counter, free_port, http_get, lines_of, metric_value,
    parse_metrics, percent_encode, ping, wait_until, Agent, ChildGuard, Sample, TempDir,
    TestTopology,
};
use veth_userspace::{dataplane::Pins, observe::trace::clock::rfc3339_micros};

/// Pings per test.
const PINGS: u32 = 20;
/// `skb->len` of an ICMP echo from `ping` with its default 56 data bytes:
/// 56 + 8 (ICMP) + 20 (IPv4) + 14 (Ethernet).
const ECHO_FRAME_BYTES: u64 = 98;

const DIRECTIONS: [&str; 2] = ["from_pod", "to_pod"];
const UNITS: [&str; 2] = ["packets", "bytes"];

/// Redirect counters of a topology: (pod, direction, "packets"|"bytes") -> value.
type Redirects = BTreeMap<(String, &'static str, &'static str), u64>;

/// The redirect counters as `vethctl stats --json` reports them.
fn redirects_from_stats(t: &TestTopology) -> Redirects {
    let mut out = Redirects::new();
    for (pod, pair) in t.stats() {
        for direction in DIRECTIONS {
            for unit in UNITS {
                let value = counter(&pair, direction, &format!("redirected_{unit}"));
                out.insert((pod.clone(), direction, unit), value);
            }
        }
    }
    out
}

/// The redirect counters of `topology` in an agent's exposition.
fn redirects_from_metrics(text: &str, topology: &str) -> Redirects {
    let mut out = Redirects::new();
    for sample in parse_metrics(text) {
        let Some(unit) = UNITS
            .into_iter()
            .find(|u| sample.name == format!("vethctl_pair_{u}_total"))
        else {
            continue;
        };
        if !sample.has_labels(&[("topology", topology), ("verdict", "redirected")]) {
            continue;
        }
        let direction = DIRECTIONS
            .into_iter()
            .find(|d| sample.labels["direction"] == *d)
            .unwrap_or_else(|| panic!("unknown direction in {sample:?}"));
        let key = (sample.labels["pod"].clone(), direction, unit);
        assert!(
            out.insert(key, sample.value as u64).is_none(),
            "duplicate series {sample:?}"
        );
    }
    out
}

/// The redirect counters straight from the pinned map: bpftool, summed
/// over CPUs, for each pod's host-side ifindex.
fn redirects_from_map(t: &TestTopology) -> Redirects {
    let ifindexes: BTreeMap<u64, String> = t.status()["pods"]
        .as_array()
        .expect("pods[]")
        .iter()
        .map(|p| {
            let ifindex = p["host_ifindex"].as_u64().expect("host_ifindex");
            (ifindex, p["name"].as_str().unwrap().to_string())
        })
        .collect();
    // SLOTS (host ifindex -> slot) is small; PAIR_COUNTERS is an array
    // with room for every slot, so each pod's entry is looked up by slot.
    let pins = Pins::new(t.name());
    let slots = bpftool_map_dump(&pins.map("SLOTS"));
    let mut out = Redirects::new();
    for (ifindex, pod) in &ifindexes {
        let slot = slots
            .iter()
            .find(|e| e["key"].as_u64() == Some(*ifindex))
            .and_then(|e| e["value"].as_u64())
            .unwrap_or_else(|| panic!("no SLOTS entry for {pod} (ifindex {ifindex})"));
        let entry = bpftool_map_lookup(&pins.map("PAIR_COUNTERS"), slot as u32);
        for value in entry["values"].as_array().expect("per-CPU values[]") {
            assert_eq!(
                value["value"]["host_ifindex"].as_u64(),
                Some(*ifindex),
                "slot {slot} names {pod}'s ifindex"
            );
        }
        for direction in DIRECTIONS {
            for unit in UNITS {
                let field = format!("redirected_{unit}");
                let sum = entry["values"]
                    .as_array()
                    .expect("per-CPU values[]")
                    .iter()
                    .map(|v| {
                        v["value"][direction][&field]
                            .as_u64()
                            .unwrap_or_else(|| panic!("{direction}.{field} in {v}"))
                    })
                    .sum();
                out.insert((pod.clone(), direction, unit), sum);
            }
        }
    }
    out
}

/// Reads the redirect counters three ways at one quiescent moment (no
/// pod-to-pod traffic, so they cannot move between the readings) and
/// requires exact agreement.
fn redirects_read_three_ways(t: &TestTopology, agent: &Agent) -> Redirects {
    let stats = redirects_from_stats(t);
    let metrics = redirects_from_metrics(&agent.scrape(), t.name());
    let map = redirects_from_map(t);
    assert_eq!(stats.len(), 2 * DIRECTIONS.len() * UNITS.len(), "{stats:?}");
    assert_eq!(metrics, stats, "agent /metrics vs stats --json");
    assert_eq!(map, stats, "bpftool map dump vs stats --json");
    stats
}

#[test]
fn exact_counts_match_pings_in_stats_metrics_and_maps() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let agent = Agent::start();
    let (a, b) = (t.pod("a"), t.pod("b"));

    let before = redirects_read_three_ways(&t, &agent);
    assert_eq!(
        ping(&a.netns, b.ipv4, PINGS),
        PINGS,
        "a -> b pings answered"
    );
    let after = redirects_read_three_ways(&t, &agent);

    let pings = u64::from(PINGS);
    for ((pod, direction, unit), value) in &after {
        let delta = value - before[&(pod.clone(), *direction, *unit)];
        // Requests leave a and enter b, replies leave b and enter a: every
        // pair sees exactly PINGS frames redirected in each direction.
        let expected = match *unit {
            "packets" => pings,
            _ => pings * ECHO_FRAME_BYTES,
        };
        assert_eq!(
            delta, expected,
            "{pod}.{direction}.redirected_{unit} grew by {delta}, expected {expected}"
        );
    }
}

/// A Prometheus server on a free loopback port that scrapes `target` every
/// second; killed when dropped. Its data and config live in `dir`.
struct Prometheus {
    addr: SocketAddr,
    log: std::path::PathBuf,
    _child: ChildGuard,
}

impl Prometheus {
    fn start(dir: &TempDir, target: SocketAddr) -> Prometheus {
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: vethctl\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .expect("writing prometheus.yml");
        let mut last_log = String::new();
        for attempt in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let mut child = ChildGuard::spawn(
                "prometheus",
                Command::new("/usr/bin/prometheus")
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("prometheus log")),
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().is_none() && Instant::now() < deadline {
                if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                    return Prometheus {
                        addr,
                        log,
                        _child: child,
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Exited (e.g. lost the race for the port) or never got ready.
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("prometheus did not start:\n{last_log}");
    }

    /// GET on the HTTP API, which must answer 200 with JSON.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path)
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}\n{}", self.log_text()));
        assert_eq!(status, 200, "prometheus {path}: {body}");
        serde_json::from_str(&body).expect("prometheus API JSON")
    }

    /// The value of an instant query that selects at most one series.
    fn query(&self, query: &str) -> Option<f64> {
        let reply = self.api(&format!("/api/v1/query?query={}", percent_encode(query)));
        assert_eq!(reply["status"], "success", "{reply}");
        let result = reply["data"]["result"].as_array().expect("result[]");
        assert!(result.len() <= 1, "several series for {query}: {reply}");
        result.first().map(|r| {
            r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("sample value in {r}"))
        })
    }

    /// Polls `query` until `good` holds for its value.
    fn wait_for(&self, query: &str, what: &str, good: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.query(query);
            if let Some(v) = value.filter(|v| good(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {query} is {value:?}, waiting for {what}\ntargets: {}\nlog:\n{}",
                self.api("/api/v1/targets"),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn prometheus_scrapes_the_agent() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let agent = Agent::start();
    // Declared before Prometheus, so it is removed after Prometheus is killed.
    let dir = TempDir::new("vethctl-prometheus");
    let prometheus = Prometheus::start(&dir, agent.addr);

    let (a, b) = (t.pod("a"), t.pod("b"));
    assert_eq!(
        ping(&a.netns, b.ipv4, PINGS),
        PINGS,
        "a -> b pings answered"
    );
    let query = format!(
        "vethctl_pair_packets_total{{topology=\"{}\",pod=\"a\",direction=\"from_pod\",verdict=\"redirected\"}}",
        t.name()
    );
    prometheus.wait_for(&query, "at least the pings", |v| v >= f64::from(PINGS));

    // Traffic has stopped: Prometheus converges on what stats reports.
    let expected = counter(&t.stats()["a"], "from_pod", "redirected_packets");
    assert!(expected >= u64::from(PINGS));
    prometheus.wait_for(&query, &format!("stats --json's {expected}"), |v| {
        v == expected as f64
    });
}

/// Every `vethctl_pair_packets_total` series of `topology`: labels -> value.
fn packet_series(text: &str, topology: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
    parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == "vethctl_pair_packets_total" && s.has_labels(&[("topology", topology)])
        })
        .map(|s| (s.labels, s.value))
        .collect()
}

#[test]
fn metrics_survive_an_agent_restart() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3);
    let mut agent = Agent::start();
    let addr = agent.addr;
    let before = packet_series(&agent.scrape(), t.name());
    // Verdicts: redirected, remote (across nodes), passed, dropped.
    assert_eq!(
        before.len(),
        2 * 2 * 4,
        "pods x directions x paths: {before:?}"
    );

    agent.child().signal(libc::SIGTERM);
    let status = agent.child().expect_exit(Duration::from_secs(5));
    assert!(status.success(), "agent stopped by SIGTERM: {status}");
    drop(agent);

    // The dataplane does not depend on the agent.
    assert_eq!(
        ping(&a.netns, b.ipv4, PINGS),
        PINGS,
        "a -> b still forwarded with the agent stopped"
    );

    // A restarted agent on the same address (what Prometheus scrapes)
    // reports the counters where they were, plus the pings.
    let agent = Agent::start_on(addr).unwrap_or_else(|e| panic!("restarting the agent: {e}"));
    let after = packet_series(&agent.scrape(), t.name());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "same series after the restart"
    );
    for (labels, old) in &before {
        let new = after[labels];
        assert!(new >= *old, "{labels:?} went back from {old} to {new}");
        if labels["verdict"] == "redirected" {
            assert_eq!(
                new - old,
                f64::from(PINGS),
                "{labels:?} grew by exactly the pings sent while the agent was away"
            );
        }
    }
}

/// Every sample of the exposition that belongs to `pod` of `topology`.
fn pod_series(text: &str, topology: &str, pod: &str) -> Vec<Sample> {
    parse_metrics(text)
        .into_iter()
        .filter(|s| s.has_labels(&[("topology", topology), ("pod", pod)]))
        .collect()
}

#[test]
fn removed_pod_series_disappear() {
    let t = TestTopology::new(&["a", "b", "c"]);
    t.up();
    let agent = Agent::start();
    let text = agent.scrape();
    assert!(!pod_series(&text, t.name(), "c").is_empty(), "c is shown");
    assert_eq!(
        metric_value(&text, "vethctl_pods", &[("topology", t.name())]),
        Some(3.0)
    );

    let file = std::fs::read_to_string(&t.file).unwrap();
    let without_c = file.replace("\n[[pods]]\nname = \"c\"\n", "");
    assert_ne!(file, without_c, "c removed from the file");
    std::fs::write(&t.file, without_c).unwrap();
    t.up();

    let text = agent.scrape();
    assert_eq!(
        pod_series(&text, t.name(), "c"),
        vec![],
        "no series of the removed pod"
    );
    for pod in ["a", "b"] {
        assert!(
            !pod_series(&text, t.name(), pod).is_empty(),
            "{pod} is still shown"
        );
    }
    assert_eq!(
        metric_value(&text, "vethctl_pods", &[("topology", t.name())]),
        Some(2.0)
    );
}

/// The first trace session's switch, TRACE_CONFIG[0] (the entry a lone
/// `trace` claims), as bpftool shows it.
fn trace_config(t: &TestTopology) -> Value {
    let entries = bpftool_map_dump(&Pins::new(t.name()).map("TRACE_CONFIG"));
    assert_eq!(
        entries.len(),
        veth_common::TRACE_SESSIONS,
        "one TRACE_CONFIG entry per session: {entries:?}"
    );
    entries.iter().find(|e| e["key"] == 0).expect("entry 0")["value"].clone()
}

/// Reads a `trace --count COUNT` session's lines, running `traffic` until
/// it has printed them all; checks that it then exits 0.
fn collect_lines(
    trace: &mut ChildGuard,
    lines: &Receiver<String>,
    stderr: &Receiver<String>,
    count: usize,
    mut traffic: impl FnMut(),
) -> Vec<String> {
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    'traffic: while printed.len() < count {
        assert!(
            Instant::now() < deadline,
            "trace printed only {printed:?}; stderr: {:?}",
            stderr.try_iter().collect::<Vec<_>>()
        );
        traffic();
        while printed.len() < count {
            match lines.recv_timeout(Duration::from_secs(2)) {
                Ok(line) => printed.push(line),
                Err(RecvTimeoutError::Timeout) => continue 'traffic,
                Err(RecvTimeoutError::Disconnected) => break 'traffic,
            }
        }
    }
    let status = trace.expect_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "trace exits 0 after --count events: {status}; stderr: {:?}",
        stderr.try_iter().collect::<Vec<_>>()
    );
    printed.extend(lines.iter());
    assert_eq!(printed.len(), count, "--count {count}: {printed:#?}");
    printed
}

/// [`collect_lines`] of a `--json` session, parsed.
fn collect_events(
    trace: &mut ChildGuard,
    lines: &Receiver<String>,
    stderr: &Receiver<String>,
    count: usize,
    traffic: impl FnMut(),
) -> Vec<Value> {
    collect_lines(trace, lines, stderr, count, traffic)
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("trace line {line:?}: {e}"))
        })
        .collect()
}

#[test]
fn trace_shows_a_generated_flow() {
    const EVENTS: usize = 4;
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let status = t.status();
    let a_ifindex = status["pods"]
        .as_array()
        .expect("pods[]")
        .iter()
        .find(|p| p["name"] == "a")
        .expect("pod a in status")["host_ifindex"]
        .clone();
    assert_eq!(trace_config(&t)["sample_every"], 0, "tracing starts off");

    let count = EVENTS.to_string();
    let mut trace = t.spawn_vethctl(&[
        "trace", "--pod", "a", "--sample", "1", "--count", &count, "--json",
    ]);
    let lines = lines_of(trace.take_stdout());
    let stderr = lines_of(trace.take_stderr());
    wait_until(Duration::from_secs(20), "trace switches tracing on", || {
        if let Some(status) = trace.try_wait() {
            panic!(
                "trace exited early ({status}): {:?}",
                stderr.try_iter().collect::<Vec<_>>()
            );
        }
        trace_config(&t)["sample_every"] == 1
    });
    assert_eq!(
        trace_config(&t)["ifindex"],
        a_ifindex,
        "only a's pair is traced"
    );

    // IPv6 neighbour discovery on a's pair is traced too and may take some
    // of the events; ping again until trace has its count.
    let events = collect_events(&mut trace, &lines, &stderr, EVENTS, || {
        assert_eq!(ping(&a.netns, b.ipv4, 2), 2, "a -> b pings answered");
    });
    for event in &events {
        assert_eq!(event["topology"], t.name(), "{event}");
        assert!(
            event["pod"] == "a" || event["peer_pod"] == "a",
            "--pod a shows only a's pair: {event}"
        );
    }
    let (a_ip, b_ip) = (a.ipv4.to_string(), b.ipv4.to_string());
    assert!(
        events.iter().any(|e| e["hook"] == "from_pod"
            && e["pod"] == "a"
            && e["peer_pod"] == "b"
            && e["verdict"] == "redirected"
            && e["drop_reason"].is_null()
            && e["ethertype"] == "ipv4"
            && e["protocol"] == "icmp"
            && e["icmp_type"] == 8
            && e["src"] == a_ip.as_str()
            && e["dst"] == b_ip.as_str()
            && e["src_ip"] == a_ip.as_str()
            && e["src_port"].is_null()
            && e["len"] == ECHO_FRAME_BYTES),
        "an a -> b echo request, redirected: {events:#?}"
    );
    assert_eq!(
        trace_config(&t)["sample_every"],
        0,
        "tracing is switched off when trace exits"
    );
}

/// The wall clock now, as `trace` prints it (RFC 3339 in UTC, fixed
/// width, so strings compare like times).
fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    rfc3339_micros(i128::try_from(now.as_nanos()).unwrap())
}

/// IPv6 is decoded like IPv4 (addresses, ports, ICMPv6 types), times are
/// wall-clock, and filters select one flow out of several on a's pair:
/// UDP from a to b's port 40053, beside UDP to another port of b, UDP to c
/// and IPv6 pings.
#[test]
fn trace_decodes_ipv6_and_filters_one_flow() {
    const PORT: u16 = 40053;
    const OTHER_PORT: u16 = 40054;
    const PAYLOAD: &[u8] = b"vethctl trace ipv6";
    let t = TestTopology::dual_stack("tc", &["a", "b", "c"]);
    t.up();
    let (a, b, c) = (t.pod("a"), t.pod("b"), t.pod("c"));
    let v6 = |pod: &veth_userspace::model::Pod| IpAddr::V6(pod.ipv6.expect("dual stack"));
    let (a6, b6, c6) = (v6(a), v6(b), v6(c));
    let sink = UdpSink::start(&b.netns, &[b6], PORT);
    let socket = udp_socket(&a.netns, b6);
    let sport = socket.local_addr().unwrap().port();
    let traffic = || {
        for (dst, port) in [(b6, PORT), (b6, OTHER_PORT), (c6, PORT)] {
            socket
                .send_to(PAYLOAD, SocketAddr::new(dst, port))
                .unwrap_or_else(|e| panic!("UDP a -> {dst}:{port}: {e}"));
        }
        ping(&a.netns, b6, 1);
    };

    let started = rfc3339_now();
    let (b6s, port) = (b6.to_string(), PORT.to_string());
    let mut trace = t.spawn_vethctl(&[
        "trace",
        "--pod",
        "a",
        "--protocol",
        "udp",
        "--dst-ip",
        &b6s,
        "--dst-port",
        &port,
        "--count",
        "3",
        "--json",
    ]);
    let (lines, stderr) = (lines_of(trace.take_stdout()), lines_of(trace.take_stderr()));
    let udp = collect_events(&mut trace, &lines, &stderr, 3, traffic);
    let ended = rfc3339_now();
    let udp_frame_len = 14 + 40 + 8 + PAYLOAD.len() as u64;
    for e in &udp {
        let expected = serde_json::json!({
            "topology": t.name(), "hook": "from_pod", "pod": "a", "peer_pod": "b",
            "verdict": "redirected", "drop_reason": null, "ethertype": "ipv6",
            "protocol": "udp", "ip_protocol": 17,
            "src": format!("[{a6}]:{sport}"), "dst": format!("[{b6}]:{PORT}"),
            "src_ip": a6.to_string(), "dst_ip": b6s, "src_port": sport, "dst_port": PORT,
            "icmp_type": null, "icmp_code": null, "fragment_offset": null,
            "more_fragments": null, "len": udp_frame_len,
            "time": e["time"], "monotonic_ns": e["monotonic_ns"],
        });
        assert_eq!(e, &expected, "only the a -> b:{PORT} flow");
        let time = e["time"].as_str().expect("time is a string");
        assert!(
            started.as_str() <= time && time <= ended.as_str(),
            "wall-clock time {time} within [{started}, {ended}]"
        );
    }
    assert!(
        !sink.containing(PAYLOAD).is_empty(),
        "b received the traced datagrams"
    );
    let mut trace = t.spawn_vethctl(&[
        "trace",
        "--pod",
        "a",
        "--src-port",
        &sport.to_string(),
        "--dst-ip",
        &b6s,
        "--port",
        &port,
        "--count",
        "1",
    ]);
    let (lines, stderr) = (lines_of(trace.take_stdout()), lines_of(trace.take_stderr()));
    let text = collect_lines(&mut trace, &lines, &stderr, 1, traffic).remove(0);
    let (time, rest) = text.split_once(' ').expect("time first");
    assert_eq!(
        rest,
        format!(
            "{} a -> b redirected udp [{a6}]:{sport} -> [{b6}]:{PORT} len {udp_frame_len}",
            t.name()
        )
    );
    assert!(
        started.as_str() <= time && time <= rfc3339_now().as_str() && time.len() == 27,
        "RFC 3339 time with microseconds: {time}"
    );

    let mut trace = t.spawn_vethctl(&[
        "trace",
        "--pod",
        "a",
        "--protocol",
        "icmpv6",
        "--ip",
        &b6s,
        "--verdict",
        "redirected",
        "--count",
        "6",
        "--json",
    ]);
    let (lines, stderr) = (lines_of(trace.take_stdout()), lines_of(trace.take_stderr()));
    let icmp = collect_events(&mut trace, &lines, &stderr, 6, traffic);
    let (a6s, b6s) = (a6.to_string(), b6.to_string());
    for e in &icmp {
        let ends = (e["src_ip"].as_str().unwrap(), e["dst_ip"].as_str().unwrap());
        assert!(
            e["protocol"] == "icmpv6"
                && e["verdict"] == "redirected"
                && (ends == (&a6s, &b6s) || ends == (&b6s, &a6s))
                && e["src_port"].is_null(),
            "only redirected ICMPv6 between a and b: {e}"
        );
    }
    let echo = |icmp_type: u8, from: &str, to: &str| {
        icmp.iter().any(|e| {
            e["icmp_type"] == icmp_type
                && e["icmp_code"] == 0
                && e["src"] == from
                && e["dst"] == to
                && e["len"] == 14 + 40 + 64
        })
    };
    assert!(
        echo(128, &a6s, &b6s) && echo(129, &b6s, &a6s),
        "echo request a -> b and reply b -> a: {icmp:#?}"
    );
}

#[test]
fn stats_watch_reports_rates() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    let baseline = counter(&t.stats()["a"], "from_pod", "redirected_packets");
    // 20 pings a second for up to 10 s; killed when the test is done.
    let _pinger = ChildGuard::spawn(
        "ping",
        Command::new("ip")
            .args(["netns", "exec", &a.netns, "ping", "-n", "-q"])
            .args(["-i", "0.05", "-c", "200"])
            .arg(b.ipv4.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(10), "the background ping flows", || {
        counter(&t.stats()["a"], "from_pod", "redirected_packets") > baseline
    });

    let mut watch = t.spawn_vethctl(&[
        "stats",
        "--watch",
        "--json",
        "--interval",
        "0.5",
        "--count",
        "3",
    ]);
    let lines = lines_of(watch.take_stdout());
    let stderr = lines_of(watch.take_stderr());
    let status = watch.expect_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "stats --watch --count 3 exits 0: {status}; stderr: {:?}",
        stderr.iter().collect::<Vec<_>>()
    );
    let reports: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("watch line {l:?}: {e}")))
        .collect();
    assert_eq!(reports.len(), 3, "--count 3: {reports:#?}");
    for report in &reports {
        let interval = report["interval_seconds"]
            .as_f64()
            .expect("interval_seconds");
        assert!(interval >= 0.5, "an interval of at least 0.5 s: {report}");
    }
    let busy = reports.iter().any(|report| {
        report["pairs"].as_array().unwrap().iter().any(|p| {
            p["topology"] == t.name()
                && p["pod"] == "a"
                && p["redirected_packets_per_second"].as_f64().unwrap() > 0.0
        })
    });
    assert!(
        busy,
        "a's redirect rate is shown while it pings: {reports:#?}"
    );
}

/// A real scrape passes `promtool check metrics` (Prometheus's own lint of
/// names, types, HELP and suffixes), and every family carries the one
/// application prefix `vethctl_`, per-pod drop reasons included.
#[test]
fn a_scrape_passes_promtool_with_one_prefix() {
    let t = TestTopology::dual_stack("tc", &["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3, "a -> b pings answered");
    let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, free_port()));
    let agent = Agent::start_with(addr, &["--per-pod-drops", "--bpf-stats"])
        .unwrap_or_else(|e| panic!("{e}"));
    let text = agent.scrape();
    assert!(
        metric_value(&text, "vethctl_pods", &[("topology", t.name())]) == Some(2.0),
        "{text}"
    );
    let dir = TempDir::new("vethctl-promtool");
    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, &text).expect("writing the scrape");
    let out = Command::new("promtool")
        .arg("check")
        .arg("metrics")
        .stdin(std::fs::File::open(&file).expect("the scrape"))
        .output()
        .expect("running promtool (Debian's prometheus package; `cargo xtask setup`)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert!(
        families.len() > 10 && families.iter().all(|f| f.starts_with("vethctl_")),
        "one prefix for every family: {families:?}"
    );
    for family in [
        "vethctl_build_info",
        "vethctl_pair_drops_total",
        "vethctl_drops_total",
        "vethctl_endpoints",
        "vethctl_endpoint_ready",
        "vethctl_agent_passes_total",
    ] {
        assert!(families.contains(&family), "{family} in {families:?}");
    }
    assert_eq!(
        metric_value(
            &text,
            "vethctl_endpoints",
            &[("topology", t.name()), ("state", "ready")]
        ),
        Some(2.0),
        "{text}"
    );
    // The agent's first reconcile runs at start: it succeeded, and says when.
    wait_until(Duration::from_secs(10), "a reconcile succeeded", || {
        let text = agent.scrape();
        let stamp = metric_value(
            &text,
            "vethctl_agent_last_success_timestamp_seconds",
            &[("pass", "reconcile")],
        );
        let runs = metric_value(
            &text,
            "vethctl_agent_passes_total",
            &[("pass", "reconcile")],
        );
        stamp.is_some_and(|s| s > 1.7e9) && runs.is_some_and(|r| r >= 1.0)
    });
}

/// A clean `up` fills the maps before its programs run on the pods' veths:
/// the pods' first frames (IPv6 DAD, router solicitations, the test's
/// pings) are never dropped as coming from an unknown veth.
#[test]
fn a_fresh_up_counts_no_unknown_veth_drops() {
    let t = TestTopology::dual_stack("tc", &["a", "b", "c"]);
    t.up();
    let (a, b) = (t.pod("a"), t.pod("b"));
    // Traffic right after `up`; what is judged is the drop counter below
    // (a reply later than ping's 1 s on a loaded machine is no failure).
    assert!(ping(&a.netns, b.ipv4, 3) >= 1, "a -> b pings answered");
    // IPv6 DAD and router solicitations go out during the first seconds.
    std::thread::sleep(Duration::from_secs(2));
    let out = t.vethctl(&["stats", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert_eq!(
        json["topologies"][0]["unknown_veth_drops"], 0,
        "frames dropped as from an unknown veth: {json}"
    );
    let agent = Agent::start();
    assert_eq!(
        metric_value(
            &agent.scrape(),
            "vethctl_drops_total",
            &[("topology", t.name()), ("reason", "unknown_veth")]
        ),
        Some(0.0)
    );
}

/// A runtime's pods, attached as `clsact` filters, count as attached (an
/// "attached < pods" alert stays quiet on a CNI node), carry their
/// Kubernetes `namespace` label, are ready in the endpoint gauges, and
/// their first frames are never dropped as from an unknown veth (the
/// endpoint is in the maps before the programs run).
#[test]
fn cni_pods_count_as_attached_and_drop_nothing_as_unknown() {
    let net = CniNet::dual("tc");
    // No `bring_up`: its throwaway pod's DEL takes the endpoint out of the
    // maps before the veth goes, and frames the pod sends meanwhile count
    // as from an unknown veth (documented; here only ADDs are judged).
    let (a, b) = (Pod::new(), Pod::new());
    net.add_with(
        &a,
        &net.conf("1.0.0"),
        &[("CNI_ARGS", "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0")],
    );
    net.add(&b);
    a.netns.expect_pings(b.ipv4(), 3, "a to b");
    // IPv6 DAD and router solicitations go out during the first seconds.
    std::thread::sleep(Duration::from_secs(2));
    let out = veth_tests::vethctl(&["stats", "-n", &net.name, "--json"], &[], None);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert_eq!(
        json["topologies"][0]["unknown_veth_drops"], 0,
        "frames dropped as from an unknown veth: {json}"
    );

    let agent = Agent::start();
    let text = agent.scrape();
    let value = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("topology", net.name.as_str())];
        all.extend_from_slice(labels);
        metric_value(&text, name, &all).unwrap_or_else(|| panic!("{name}{all:?} in {text}"))
    };
    assert_eq!(value("vethctl_pods", &[]), 2.0);
    for hook in ["ingress", "egress"] {
        assert_eq!(
            value("vethctl_attached_programs", &[("hook", hook)]),
            2.0,
            "{hook}"
        );
    }
    assert_eq!(value("vethctl_endpoints", &[("state", "ready")]), 2.0);
    assert_eq!(
        value(
            "vethctl_endpoint_ready",
            &[("namespace", "prod"), ("pod", "web-0")]
        ),
        1.0
    );
    assert_eq!(
        value("vethctl_drops_total", &[("reason", "unknown_veth")]),
        0.0
    );
}
