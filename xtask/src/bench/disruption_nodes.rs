//! `cargo xtask bench disruption --cross-node`: what live changes of a
//! cluster cost traffic between pods on different nodes (issue 20).
//!
//! A lab of its own (`bxd<pid>`, mode `tc` within the nodes, cluster range
//! 198.19.196.0/22, underlay 198.18.252.0/24: ranges no other benchmark
//! uses) starts with nodes n1 (pod a, the client) and n2 (pod b, the
//! server) in `host-gw`, each node with its own `vethctl agent`. The same
//! traffic as `bench disruption` (`veth_bench::disruption`: a numbered UDP
//! stream, long-lived TCP connections) runs from a to b for the whole run,
//! and around each event it counts what was lost: nothing (the noise
//! floor); node n3 (pod c) added to the file and `up`; every `cross_node`
//! transition between the modes asked for (each ordered pair once, one
//! walk); each traffic node's agent killed with SIGKILL and started again;
//! node n3 dying (its namespace deleted with `ip netns del`, the "machine
//! died" event) and then taken out of the file and `up`. Targets: nothing
//! lost, no send error and no connection broken on host-gw <-> ebpf and on
//! the node added and removed (they touch neither a's nor b's node's way to
//! the other); the rest is measured and reported.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use veth_bench::disruption::{transitions, Config, Traffic};

use super::{
    disruption::{print_rows, Row, Window},
    prepare,
};
use crate::cmd;

/// The cross-node modes, the first where the walk starts and ends.
pub const MODES: [&str; 4] = ["host-gw", "ebpf", "vxlan", "ebpf-vxlan"];
const CLUSTER_CIDR: &str = "198.19.196.0/22";
const UNDERLAY_CIDR: &str = "198.18.252.0/24";
const UDP_PORT: u16 = 11194;
const TCP_PORT: u16 = 11195;
/// Every node has a loopback of its own, so one port serves all agents.
const AGENT_LISTEN: &str = "127.0.0.1:19593";
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SECONDS: u64 = 1200;
/// The node added and then lost; it carries none of the traffic.
const EXTRA: &str = "n3";

pub struct Options {
    pub rate: u64,
    pub connections: usize,
    pub settle_ms: u64,
    pub modes: Vec<String>,
}

/// The events whose targets are 0 lost, 0 send errors, 0 broken.
pub fn targeted(event: &str) -> bool {
    matches!(
        event,
        "host-gw -> ebpf" | "ebpf -> host-gw" | "node n3 added" | "node n3 died, removed"
    )
}

/// The lab's file: `nodes` in order, n1 with pod a, n2 with pod b, n3 with
/// pod c.
pub fn lab_file(name: &str, cross_node: &str, nodes: &[&str]) -> String {
    let mut text = format!(
        "name = \"{name}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
         cluster_cidr = \"{CLUSTER_CIDR}\"\nnode_prefix_len = 24\n\n\
         [underlay]\ncidr = \"{UNDERLAY_CIDR}\"\n"
    );
    for node in nodes {
        let pod = match *node {
            "n1" => "a",
            "n2" => "b",
            _ => "c",
        };
        text += &format!("\n[[nodes]]\nname = \"{node}\"\n[[nodes.pods]]\nname = \"{pod}\"\n");
    }
    text
}

/// The lab and the agents the benchmark started, all taken down when
/// dropped.
struct Lab {
    vethctl: PathBuf,
    dir: PathBuf,
    file: PathBuf,
    name: String,
    agents: Vec<(String, Child)>,
}

impl Lab {
    fn node_ns(&self, node: &str) -> String {
        format!("{}.{node}", self.name)
    }

    /// Writes the file with `nodes` in `cross_node` and runs `up`.
    fn converge(&self, cross_node: &str, nodes: &[&str]) -> Result<String> {
        fs::write(&self.file, lab_file(&self.name, cross_node, nodes))?;
        cmd::output(
            Command::new(&self.vethctl)
                .arg("up")
                .arg("-t")
                .arg(&self.file)
                .stdout(Stdio::piped()),
        )
        .with_context(|| format!("vethctl up of lab {} ({cross_node}, {nodes:?})", self.name))?;
        Ok(String::new())
    }

    fn agent_lock(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{}.{node}.agent.lock", self.name))
    }

    /// `vethctl --node NODE agent` for this lab's network only, with a
    /// lock file of its own (another agent may run in the node).
    fn start_agent(&mut self, node: &str) -> Result<()> {
        let child = Command::new(&self.vethctl)
            .args(["--node", &self.node_ns(node), "agent", "--listen"])
            .arg(AGENT_LISTEN)
            .args(["--network", &self.name, "--lock-file"])
            .arg(self.agent_lock(node))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting vethctl agent")?;
        self.agents.push((node.to_string(), child));
        Ok(())
    }

    /// SIGKILL to the agent of `node` this benchmark started (its pid only).
    fn kill_agent(&mut self, node: &str) -> Result<()> {
        if let Some(i) = self.agents.iter().position(|(n, _)| n == node) {
            let (_, mut child) = self.agents.remove(i);
            child.kill().context("kill -9 of the agent")?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// (netns, IPv4 address) of pod `pod` on `node`, from `status --json`.
    fn pod(&self, node: &str, pod: &str) -> Result<(String, String)> {
        let status: Value = serde_json::from_str(&cmd::output(
            Command::new(&self.vethctl).args(["status", "--json", "-n", &self.name]),
        )?)?;
        let found = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["name"] == node)
            .flat_map(|n| n["pods"].as_array().into_iter().flatten())
            .find(|p| p["name"] == pod)
            .with_context(|| format!("status of lab {} lacks pod {pod} on {node}", self.name))?;
        let field = |f: &str| found[f].as_str().map(str::to_string).unwrap_or_default();
        Ok((field("netns"), field("ipv4")))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.agents.iter().map(|(n, _)| n.clone()).collect();
        for node in nodes {
            let _ = self.kill_agent(&node);
        }
        let _ = Command::new(&self.vethctl)
            .args(["down", "-n", &self.name])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.file);
        for node in ["n1", "n2", EXTRA] {
            let _ = fs::remove_file(self.agent_lock(node));
        }
    }
}

pub fn run(options: &Options, quick: bool) -> Result<()> {
    for m in &options.modes {
        if !MODES.contains(&m.as_str()) {
            bail!("--modes with --cross-node: unknown mode {m:?} (one of {MODES:?})");
        }
    }
    if options.modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    let (vethctl, dir) = prepare()?;
    let name = format!("bxd{}", std::process::id() % 100_000);
    let switch = Path::new("/run/netns").join(format!("{name}_underlay"));
    if switch.exists() {
        bail!("lab {name} is already up: take it down with `vethctl down -n {name}`");
    }
    let mut lab = Lab {
        vethctl,
        file: dir.join(format!("{name}.toml")),
        dir: dir.clone(),
        name,
        agents: Vec::new(),
    };
    lab.converge(&options.modes[0], &["n1", "n2"])?;
    lab.start_agent("n1")?;
    lab.start_agent("n2")?;
    let (client_netns, _) = lab.pod("n1", "a")?;
    let (server_netns, server) = lab.pod("n2", "b")?;
    let traffic = Traffic::start(&Config {
        client_netns,
        server_netns,
        server: server.parse()?,
        udp_port: UDP_PORT,
        tcp_port: TCP_PORT,
        rate: options.rate,
        connections: options.connections,
        max_seconds: MAX_SECONDS,
        tcp_timeout: TCP_TIMEOUT,
    })?;
    let result = drive(&mut lab, &traffic, options);
    let round_trips = traffic.round_trips();
    let rows: Vec<Row> = match &result {
        Ok(windows) => windows.iter().map(|w| w.row(&traffic)).collect(),
        Err(_) => Vec::new(),
    };
    if let Err(e) = traffic.stop() {
        eprintln!("traffic: {e:#}");
    }
    result?;
    drop(lab);
    report(&rows, options, round_trips, &dir, quick)
}

/// Table, verdicts and JSON; an error when a target is missed.
fn report(
    rows: &[Row],
    options: &Options,
    round_trips: u64,
    dir: &Path,
    quick: bool,
) -> Result<()> {
    println!(
        "\ndisruption across nodes: UDP {} datagrams/s from pod a (n1) to pod b (n2), {} TCP \
         connections, windows of {} ms settle around each event; load average {}",
        options.rate,
        options.connections,
        options.settle_ms,
        load_average()
    );
    print_rows(rows);
    let verdicts: Vec<(String, bool)> = rows
        .iter()
        .filter(|r| targeted(&r.event))
        .map(|r| {
            let d = &r.disruption;
            let met = d.sent > 0 && d.lost == 0 && d.send_errors == 0 && d.connections_broken == 0;
            (r.event.clone(), met)
        })
        .collect();
    println!("targets (0 lost, 0 send errors, 0 broken):");
    for (event, met) in &verdicts {
        println!("- {event}: {}", if *met { "met" } else { "MISSED" });
    }
    let out = dir.join("disruption-cross-node.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "rate": options.rate,
            "connections": options.connections,
            "settle_ms": options.settle_ms,
            "quick": quick,
            "load_average": load_average(),
            "tcp_round_trips": round_trips,
            "rows": rows,
            "targets": verdicts.iter().map(|(e, m)| serde_json::json!({"event": e, "met": m})).collect::<Vec<_>>(),
        }))?,
    )?;
    println!("results: {}", out.display());
    let missed = verdicts.iter().filter(|(_, met)| !met).count();
    if missed > 0 {
        bail!("{missed} of {} live-change targets missed", verdicts.len());
    }
    Ok(())
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the events one after the other; each window starts a quarter of
/// the settle time before the event and ends a settle time after it.
fn drive(lab: &mut Lab, traffic: &Traffic, options: &Options) -> Result<Vec<Window>> {
    let settle = Duration::from_millis(options.settle_ms);
    thread::sleep(Duration::from_secs(1));
    let mut windows = Vec::new();
    type Action<'a> = dyn FnMut() -> Result<String> + 'a;
    let mut event = |name: String, action: &mut Action| -> Result<()> {
        let from = traffic.mark();
        thread::sleep(settle / 4);
        let started = Instant::now();
        let command_start_ns = traffic.now_ns();
        action().with_context(|| name.clone())?;
        let command = started.elapsed();
        thread::sleep(settle);
        let w = Window {
            event: name,
            command,
            from,
            to: traffic.mark(),
            command_start_ns,
            steps: Vec::new(),
        };
        // What was sent just before `to` is given time to arrive.
        thread::sleep(Duration::from_millis(100));
        let d = w.row(traffic).disruption;
        println!(
            "{:<28} lost {:>5}  gap {:>7.1} ms  send errors {:>5}  tcp stall {:>7.1} ms  broken {}",
            w.event,
            d.lost,
            d.longest_gap_ms,
            d.send_errors,
            d.tcp_longest_stall_ms,
            d.connections_broken
        );
        windows.push(w);
        Ok(())
    };
    let first = options.modes[0].clone();
    let all = ["n1", "n2", EXTRA];
    let cell = std::cell::RefCell::new(lab);
    event("idle (no change)".into(), &mut || Ok(String::new()))?;
    event(format!("node {EXTRA} added"), &mut || {
        cell.borrow().converge(&first, &all)
    })?;
    for (from, to) in transitions(&options.modes, &[]) {
        event(format!("{from} -> {to}"), &mut || {
            cell.borrow().converge(&to, &all)
        })?;
    }
    for node in ["n1", "n2"] {
        event(format!("agent {node} kill -9, restart"), &mut || {
            let mut lab = cell.borrow_mut();
            lab.kill_agent(node)?;
            thread::sleep(Duration::from_millis(500));
            lab.start_agent(node)?;
            Ok(String::new())
        })?;
    }
    event(format!("node {EXTRA} died, removed"), &mut || {
        let lab = cell.borrow();
        // The machine dies: its namespace goes with everything in it.
        cmd::run(Command::new("ip").args(["netns", "del", &lab.node_ns(EXTRA)]))?;
        thread::sleep(Duration::from_millis(200));
        lab.converge(&first, &["n1", "n2"])
    })?;
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_keeps_to_its_own_ranges() {
        let f = lab_file("bxd1", "ebpf", &["n1", "n2", "n3"]);
        assert!(f.contains("cluster_cidr = \"198.19.196.0/22\""));
        assert!(f.contains("cidr = \"198.18.252.0/24\""));
        assert!(f.contains("cross_node = \"ebpf\""));
        assert_eq!(f.matches("[[nodes]]").count(), 3);
    }

    #[test]
    fn targets_are_host_gw_ebpf_both_ways_and_the_node_events() {
        let walk = transitions(&MODES.map(String::from), &[]);
        assert_eq!(walk.len(), 12);
        let targeted_pairs: Vec<_> = walk
            .iter()
            .map(|(f, t)| format!("{f} -> {t}"))
            .filter(|e| targeted(e))
            .collect();
        assert_eq!(targeted_pairs.len(), 2);
        assert!(targeted("node n3 added") && targeted("node n3 died, removed"));
        assert!(!targeted("vxlan -> ebpf-vxlan") && !targeted("agent n1 kill -9, restart"));
    }
}
