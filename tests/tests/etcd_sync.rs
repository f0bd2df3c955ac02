//! The agent's sync with its cluster in etcd as it is seen and as it
//! stands up to bad records: node records written straight into etcd
//! (etcdctl, as a broken or hostile writer with access to a key would)
//! beside the agents' own; the agents' `/metrics` and `vethctl status`
//! across a join and etcd killed -9. A private etcd per test, node
//! namespaces on one switch (see `veth_tests::etcd_lab`). Run as root.

use std::time::Duration;

use serde_json::{json, Value};
use veth_tests::{
    etcd_lab::{metric, EtcdLab, Switch},
    wait_until,
};

/// A node record as an agent writes it, for node `name` at `<base>.<host>`
/// holding `range` (and `range6`).
fn record(name: &str, base: &str, host: u32, range: &str, range6: &str) -> String {
    json!({
        "name": name,
        "agent": {"boot": "written-by-hand", "netns": 1, "pid": 1, "started": "2026-01-01T00:00:00Z"},
        "address": format!("{base}.{host}"),
        "address6": format!("fd00:198:251::{host}"),
        "address_len": 24,
        "address6_len": 64,
        "pod_cidr": range,
        "pod_cidr6": range6,
    })
    .to_string()
}

/// The entry of node `name` in `status --json`'s cluster.
fn known(status: &Value, name: &str) -> Value {
    let nodes = status["cluster"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    nodes
        .into_iter()
        .find(|n| n["name"] == name)
        .unwrap_or(Value::Null)
}

/// Bad records beside good ones: a name that is no node's, a value that
/// is not a record (both there before the agents start), then, while they
/// run, a record claiming a range leased to another node and one with
/// another node's address (its own ranges leased), next to a good record
/// written by hand. Each bad one is left out and counted; the agents and
/// the good record are wired.
#[test]
fn each_bad_record_is_left_out_and_the_others_are_wired() {
    let lab = EtcdLab::start();
    let base = lab.base.clone();
    let name = lab.init_ok("host-gw", 8);
    let prefix = format!("/vethctl/v1/{name}");
    let evil = record("Evil", &base, 8, "10.251.7.0/24", "fd00:10:251:7::/64");
    lab.put(&format!("{prefix}/nodes/Evil"), &evil);
    lab.put(&format!("{prefix}/nodes/junk"), "{not json");
    let switch = Switch::new();
    let n1 = lab.member(&switch, 1, &[]);
    let n2 = lab.member(&switch, 2, &[]);
    let thief = record("thief", &base, 9, &n2.range, "fd00:10:251:1::/64");
    lab.put(&format!("{prefix}/nodes/thief"), &thief);
    for (node, range, range6, host) in [
        ("twin", "10.251.5.0/24", "fd00:10:251:5::/64", 2),
        ("ghost", "10.251.6.0/24", "fd00:10:251:6::/64", 7),
    ] {
        for r in [range, range6] {
            let family = if r.contains(':') { "v6" } else { "v4" };
            lab.put(
                &format!("{prefix}/ranges/{family}/{r}"),
                &json!({"node": node}).to_string(),
            );
        }
        lab.put(
            &format!("{prefix}/nodes/{node}"),
            &record(node, &base, host, range, range6),
        );
    }
    let (a, b) = (&n1, &n2);
    wait_until(
        Duration::from_secs(15),
        "the agents and the good record wired",
        || {
            [a, b].iter().all(|m| !m.route("10.251.6.0/24").is_empty())
                && a.route(&b.range).contains(&format!("via {base}.2 "))
                && b.route(&a.range).contains(&format!("via {base}.1 "))
        },
    );
    for m in [a, b] {
        assert_eq!(m.route("10.251.5.0/24"), "", "the twin's range is routed");
        assert_eq!(m.route("10.251.7.0/24"), "", "Evil's range is routed");
    }
    // The sync notes a convergence just after the routes are made.
    let mut metrics = String::new();
    wait_until(
        Duration::from_secs(5),
        "the metrics at the last convergence",
        || {
            metrics = n1.metrics();
            metric(&metrics, "vethctl_cluster_nodes_wired") == Some(3.0)
        },
    );
    for (reason, n) in [
        ("range", 1.0),
        ("address", 1.0),
        ("name", 1.0),
        ("unreadable", 1.0),
        ("invalid", 0.0),
    ] {
        let series = format!("vethctl_cluster_records_left_out{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), Some(n), "{series}\n{metrics}");
    }
    assert_eq!(
        metric(&metrics, "vethctl_cluster_nodes_known"),
        Some(7.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "vethctl_cluster_nodes_wired"),
        Some(3.0),
        "{metrics}"
    );
    let status = n1.status();
    assert_eq!(known(&status, "ghost")["wired"], true, "{status:#}");
    for (node, reason) in [
        ("thief", "range"),
        ("twin", "address"),
        ("Evil", "name"),
        ("junk", "unreadable"),
    ] {
        let n = known(&status, node);
        assert_eq!(
            (&n["wired"], &n["left_out"]["reason"]),
            (&json!(false), &json!(reason)),
            "{node}: {status:#}"
        );
    }
    let table = n1.node.vethctl_ok(&["status"]);
    eprintln!("{table}");
    assert!(
        table.contains(&format!("cluster {name} (etcd unix://")),
        "{table}"
    );
    assert!(
        table.contains("no (range)") && table.contains("no (address)"),
        "{table}"
    );
}

/// `promtool check metrics` (Prometheus's own lint) on a scrape: no
/// complaint.
fn promtool_passes(metrics: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool (Debian's prometheus package; `cargo xtask setup`)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(metrics.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.is_empty(),
        "promtool check metrics: {said}"
    );
}

/// After a join the sync's metrics and `status` move; etcd killed -9
/// shows as unreachable with errors counted within seconds, and as
/// reachable again once it is back; the state goes with the agent.
#[test]
fn the_sync_is_seen_in_metrics_and_status() {
    let mut lab = EtcdLab::start();
    let name = lab.init_ok("host-gw", 8);
    let switch = Switch::new();
    let mut n1 = lab.member(&switch, 1, &[]);
    let before = n1.metrics();
    let at =
        |m: &str, series: &str| metric(m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"));
    let events = "vethctl_cluster_watch_events_applied_total";
    let converged = "vethctl_cluster_convergence_seconds_count";
    let revision = "vethctl_cluster_sync_revision";
    assert_eq!(at(&before, "vethctl_cluster_etcd_reachable"), 1.0);
    let n2 = lab.member(&switch, 2, &[]);
    wait_until(
        Duration::from_secs(15),
        "node 1 routes node 2's range",
        || !n1.route(&n2.range).is_empty(),
    );
    // The sync notes a convergence just after the routes are made.
    let mut after = String::new();
    wait_until(Duration::from_secs(5), "the convergence counted", || {
        after = n1.metrics();
        at(&after, converged) > at(&before, converged)
    });
    promtool_passes(&after);
    assert!(at(&after, events) > at(&before, events), "{after}");
    assert!(at(&after, revision) > at(&before, revision), "{after}");
    assert_eq!(at(&after, "vethctl_cluster_nodes_known"), 2.0, "{after}");
    assert_eq!(at(&after, "vethctl_cluster_nodes_wired"), 2.0, "{after}");
    assert!(
        at(&after, "vethctl_cluster_sync_age_seconds") < 15.0,
        "{after}"
    );
    let status = n1.status();
    let cluster = &status["cluster"];
    assert_eq!(
        (&cluster["cluster"], &cluster["node"]),
        (&json!(name), &json!("n1")),
        "{status:#}"
    );
    assert_eq!(cluster["pod_ranges"][0], json!(n1.range), "{status:#}");
    assert!(
        cluster["revision"].as_i64().unwrap() >= at(&before, revision) as i64,
        "{status:#}"
    );
    let n = known(&status, "n2");
    assert_eq!(
        (&n["alive"], &n["wired"]),
        (&json!(true), &json!(true)),
        "{status:#}"
    );
    assert_eq!(n["pod_ranges"][0], json!(n2.range), "{status:#}");
    // etcd killed -9: seen within seconds, the routes stay.
    let errors = |m: &str| {
        ["read", "watch", "lease"]
            .iter()
            .map(|op| {
                at(
                    m,
                    &format!("vethctl_cluster_etcd_errors_total{{op=\"{op}\"}}"),
                )
            })
            .sum::<f64>()
    };
    let errors_before = errors(&after);
    lab.etcd.kill9();
    let killed = std::time::Instant::now();
    wait_until(
        Duration::from_secs(10),
        "etcd unreachable in the metrics",
        || {
            let m = n1.metrics();
            at(&m, "vethctl_cluster_etcd_reachable") == 0.0 && errors(&m) > errors_before
        },
    );
    eprintln!(
        "etcd unreachable in the metrics {:?} after kill -9",
        killed.elapsed()
    );
    assert_eq!(n1.status()["cluster"]["etcd_reachable"], false);
    assert!(!n1.route(&n2.range).is_empty(), "a route went with etcd");
    lab.etcd.restart();
    let restarted = std::time::Instant::now();
    wait_until(
        Duration::from_secs(25),
        "etcd reachable again, the sync read again",
        || {
            let m = n1.metrics();
            at(&m, "vethctl_cluster_etcd_reachable") == 1.0
                && at(&m, "vethctl_cluster_reconnects_total") >= 1.0
        },
    );
    eprintln!(
        "etcd reachable in the metrics {:?} after it was healthy again",
        restarted.elapsed()
    );
    assert_eq!(n1.status()["cluster"]["etcd_reachable"], true);
    // The agent leaves: its sync state goes with it.
    n1.agent.signal(libc::SIGTERM);
    n1.agent.expect_exit(Duration::from_secs(10));
    assert_eq!(n1.status().get("cluster"), None);
}
