//! `cargo xtask bench cluster-scale`: a cluster kept in etcd, at scale, by
//! simulation (issue 21). A private etcd holds the settings and N node
//! records with their pod ranges, written as agents write them (the same
//! keys, values and leases: a liveness lease per node record, a range
//! lease per node's range key), but with no dataplane behind them; ONE
//! real agent, in a node namespace whose underlay network holds every
//! simulated address, wires its node to all of them. Measured from
//! outside, never from the agent's log: the initial convergence (agent
//! started → every simulated range routed, by route dumps), then single
//! nodes joining (record put → its route added) and nodes lost (liveness
//! lease revoked, as when it runs out → its route deleted), interleaved,
//! seen by `ip monitor route`; the agent's RSS and CPU; etcd's keys and
//! bytes per node.

mod etcd;
mod node;

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;

use self::{
    etcd::PrivateEtcd,
    node::{Node, Usage},
};
use super::{median, prepare};
use crate::cmd;

pub struct Options {
    pub nodes: Vec<usize>,
    pub joins: usize,
    /// `cross_node` of the cluster: host-gw or ebpf.
    pub mode: String,
    pub quick: bool,
    /// Run the vethctl of this directory (another build, to compare).
    pub bin_dir: Option<PathBuf>,
}

const CLUSTER: &str = "scale";
/// 4,096 node ranges of /24: room for 1,000 nodes, the agent and joins.
const CLUSTER_CIDR: &str = "10.128.0.0/12";
/// The agent's node; simulated nodes follow it on the same /16.
const AGENT_NODE: &str = "agent";
const AGENT_ADDRESS: &str = "198.18.0.1/16";
/// Simulated nodes are never renewed: their liveness lease outlives the
/// run (a real node's is 10 s, kept alive); a loss is its revocation,
/// which etcd turns into the same delete as an expiry.
const SIM_LIVENESS_SECONDS: i64 = 3600;
const RANGE_LEASE_SECONDS: i64 = 24 * 3600;
/// Long enough for a vethctl that makes every node's part (25 s at 1,000).
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);

/// What one cluster size measured.
#[derive(Serialize)]
struct SizeReport {
    nodes: usize,
    mode: String,
    /// Writing the simulated nodes (leases, range keys, records).
    write_seconds: f64,
    /// Agent started → every simulated range routed.
    converge_from_start_ms: f64,
    /// The agent's record holds its range (it reads the cluster right
    /// after) → every simulated range routed.
    converge_from_record_ms: f64,
    joins: Latencies,
    losses: Latencies,
    /// After the initial convergence, after the events, after idling.
    usage_converged: Usage,
    usage_events: Usage,
    usage_idle: Usage,
    /// CPU over the idle seconds, percent of one core.
    idle_cpu_percent: f64,
    etcd: Footprint,
}

#[derive(Serialize)]
struct Latencies {
    samples_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Agent CPU per event (utime + stime over the events ÷ their number).
    cpu_ms_per_event: f64,
}

/// What the simulated nodes hold in etcd, per node.
#[derive(Serialize)]
struct Footprint {
    keys_per_node: f64,
    /// Key and value bytes of all of a node's keys.
    bytes_per_node: f64,
    record_bytes: f64,
    range_bytes: f64,
    leases_per_node: usize,
    db_size_before: u64,
    db_size_after: u64,
    db_bytes_per_node: f64,
}

pub fn run(o: &Options) -> Result<()> {
    if !["host-gw", "ebpf"].contains(&o.mode.as_str()) {
        bail!("--mode: {:?} is not simulated; use host-gw or ebpf", o.mode);
    }
    let (sizes, joins) = match o.quick {
        true => (vec![100], o.joins.min(10)),
        false => (o.nodes.clone(), o.joins),
    };
    if sizes.is_empty() || sizes.iter().any(|&n| n == 0 || n > 3000) || joins == 0 {
        bail!("--nodes: each size 1 to 3000; --joins: at least 1");
    }
    let (built, dir) = match &o.bin_dir {
        None => prepare()?,
        Some(bin) if !bin.join("vethctl").exists() => {
            bail!("--bin-dir {}: no vethctl there", bin.display())
        }
        Some(bin) => {
            crate::setup::run(crate::setup::Needs::Everything)?;
            let dir = cmd::target_dir().join("bench");
            std::fs::create_dir_all(&dir)?;
            (bin.join("vethctl"), dir)
        }
    };
    // The target directory may be shared with other checkouts, whose
    // builds would replace the binary under the agent: run a copy.
    let vethctl = dir.join(format!("vethctl-scale-{}", std::process::id()));
    std::fs::copy(&built, &vethctl)?;
    let _copy = Scratch(vethctl.clone());
    let mut reports = Vec::new();
    for &n in &sizes {
        let report = one_size(&vethctl, o, n, joins)?;
        print_report(&report);
        reports.push(report);
    }
    let file = dir.join(format!("cluster-scale-{}.json", o.mode));
    std::fs::write(&file, serde_json::to_vec_pretty(&reports)?)?;
    println!("raw: {}", file.display());
    Ok(())
}

/// A directory (or file) of this run's, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn one_size(vethctl: &Path, o: &Options, n: usize, joins: usize) -> Result<SizeReport> {
    let tag = format!("{}-{n}", std::process::id());
    let scratch = Scratch(std::env::temp_dir().join(format!("vethctl-scale-{tag}")));
    std::fs::create_dir_all(&scratch.0)?;
    let etcd = PrivateEtcd::start(&scratch.0, &tag)?;
    init(vethctl, &etcd, &scratch.0, &o.mode)?;
    let db_size_before = db_size(&etcd)?;
    let sims = Sims::new()?;
    let started = Instant::now();
    let mut live: Vec<Sim> = (0..n)
        .map(|k| sims.register(&etcd, k).map(|s| s.0))
        .collect::<Result<_>>()?;
    let write_seconds = started.elapsed().as_secs_f64();
    let footprint = footprint(&etcd, n, db_size_before)?;
    println!("{n} nodes: written in {write_seconds:.1} s; converging…");
    let mut node = Node::new(vethctl, &format!("bcs{tag}"), AGENT_ADDRESS, CLUSTER)?;
    node.monitor_routes()?;
    let expected: HashSet<String> = (0..n).map(sim_range).collect();
    let (from_start, from_record) = converge(&mut node, &etcd, &scratch.0, &expected)?;
    let usage_converged = node.agent_usage()?;
    // The agent holds range n: joins take the ones after it.
    let (joins, losses) = events(&node, &etcd, &sims, &mut live, n + 1, joins, o.quick)?;
    let usage_events = node.agent_usage()?;
    let idle = Duration::from_secs(if o.quick { 2 } else { 10 });
    std::thread::sleep(idle);
    node.check_agent()?;
    let usage_idle = node.agent_usage()?;
    let events = (joins.len() + losses.len()) as f64;
    let per_event = (usage_events.cpu_seconds - usage_converged.cpu_seconds) * 1e3 / events;
    Ok(SizeReport {
        nodes: n,
        mode: o.mode.clone(),
        write_seconds,
        converge_from_start_ms: from_start,
        converge_from_record_ms: from_record,
        joins: latencies(joins, per_event),
        losses: latencies(losses, per_event),
        usage_converged,
        usage_events,
        idle_cpu_percent: (usage_idle.cpu_seconds - usage_events.cpu_seconds) * 100.0
            / idle.as_secs_f64(),
        usage_idle,
        etcd: footprint,
    })
}

/// `vethctl cluster init` with the benchmark's settings.
fn init(vethctl: &Path, etcd: &PrivateEtcd, dir: &Path, mode: &str) -> Result<()> {
    let file = dir.join("settings.toml");
    let text = format!(
        "name = \"{CLUSTER}\"\nmode = \"tc\"\ncross_node = \"{mode}\"\n\
         cluster_cidr = \"{CLUSTER_CIDR}\"\nnode_prefix_len = 24\n"
    );
    std::fs::write(&file, text)?;
    cmd::output(
        Command::new(vethctl)
            .args(["cluster", "init", "--cluster", &etcd.endpoints(), "-t"])
            .arg(&file),
    )
    .map(drop)
}

fn db_size(etcd: &PrivateEtcd) -> Result<u64> {
    let status = etcd.status()?;
    Ok(status["dbSize"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// Simulated node `k`'s pod range: the `k`-th /24 of the cluster range.
fn sim_range(k: usize) -> String {
    format!("10.{}.{}.0/24", 128 + k / 256, k % 256)
}

/// Simulated node `k`'s underlay address, after the agent's.
fn sim_address(k: usize) -> Ipv4Addr {
    let [_, _, hi, lo] = ((k + 2) as u32).to_be_bytes();
    Ipv4Addr::new(198, 18, hi, lo)
}

/// A simulated node: its name and liveness lease.
struct Sim {
    index: usize,
    live: String,
}

/// What every simulated record says about its agent.
struct Sims {
    boot: String,
    started: String,
}

impl Sims {
    fn new() -> Result<Sims> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
        let started = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
        Ok(Sims {
            boot: boot.trim().to_string(),
            started: started.trim().to_string(),
        })
    }

    /// Node `k` joins as an agent does: leases, its range key, then its
    /// record; returns it and when the record's put was sent.
    fn register(&self, etcd: &PrivateEtcd, k: usize) -> Result<(Sim, Instant)> {
        let name = format!("s{k}");
        let prefix = format!("/vethctl/v1/{CLUSTER}/");
        let range_lease = etcd.grant(RANGE_LEASE_SECONDS)?;
        let live = etcd.grant(SIM_LIVENESS_SECONDS)?;
        let range = json!({ "node": name }).to_string();
        let range_key = format!("{prefix}ranges/v4/{}", sim_range(k));
        etcd.put(&range_key, range.as_bytes(), &range_lease)?;
        let address = sim_address(k);
        let [a, b, c, d] = address.octets();
        let record = json!({
            "name": name,
            "agent": { "boot": self.boot, "netns": 4026531840u64 + k as u64,
                       "pid": 10_000 + k, "started": self.started },
            "address": address.to_string(),
            "address_len": 16,
            "vtep_mac": format!("0e:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
            "pod_cidr": sim_range(k),
        });
        let put_at = Instant::now();
        etcd.put(
            &format!("{prefix}nodes/{name}"),
            record.to_string().as_bytes(),
            &live,
        )?;
        Ok((Sim { index: k, live }, put_at))
    }
}

/// etcd's keys and bytes per simulated node (only they are in etcd yet,
/// with the settings).
fn footprint(etcd: &PrivateEtcd, n: usize, db_size_before: u64) -> Result<Footprint> {
    let prefix = format!("/vethctl/v1/{CLUSTER}/");
    let records = etcd.sizes(&format!("{prefix}nodes/"))?;
    let ranges = etcd.sizes(&format!("{prefix}ranges/"))?;
    let bytes = |kvs: &[(usize, usize)]| kvs.iter().map(|(k, v)| k + v).sum::<usize>() as f64;
    let db_size_after = db_size(etcd)?;
    let n = n as f64;
    Ok(Footprint {
        keys_per_node: (records.len() + ranges.len()) as f64 / n,
        bytes_per_node: (bytes(&records) + bytes(&ranges)) / n,
        record_bytes: bytes(&records) / n,
        range_bytes: bytes(&ranges) / n,
        leases_per_node: 2,
        db_size_before,
        db_size_after,
        db_bytes_per_node: db_size_after.saturating_sub(db_size_before) as f64 / n,
    })
}

/// Starts the agent and waits until every `expected` range is routed:
/// milliseconds from its start, and from its record holding its range.
fn converge(
    node: &mut Node,
    etcd: &PrivateEtcd,
    dir: &Path,
    expected: &HashSet<String>,
) -> Result<(f64, f64)> {
    let key = format!("/vethctl/v1/{CLUSTER}/nodes/{AGENT_NODE}");
    let started = Instant::now();
    node.start_agent(&etcd.endpoints(), AGENT_NODE, dir)?;
    let mut recorded = None;
    loop {
        node.check_agent()?;
        // Its second version: the record put again with its ranges.
        if recorded.is_none() && etcd.version(&key)? >= 2 {
            recorded = Some(Instant::now());
        }
        if expected.is_subset(&node.routes()?) {
            let done = Instant::now();
            let ms = |t: Instant| done.duration_since(t).as_secs_f64() * 1e3;
            return Ok((ms(started), recorded.map_or(f64::NAN, ms)));
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            bail!(
                "the agent did not route all {} simulated nodes within {} s",
                expected.len(),
                CONVERGE_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `joins` nodes joining (from range `next` on), each followed by a live
/// node lost: milliseconds from each put (revocation) to its route added
/// (deleted).
fn events(
    node: &Node,
    etcd: &PrivateEtcd,
    sims: &Sims,
    live: &mut Vec<Sim>,
    next: usize,
    joins: usize,
    quick: bool,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let settle = Duration::from_millis(if quick { 100 } else { 300 });
    let (mut joined, mut lost) = (Vec::new(), Vec::new());
    for j in 0..joins {
        node.forget_events();
        let (sim, put_at) = sims.register(etcd, next + j)?;
        let at = node.wait_route(&sim_range(sim.index), true, put_at, EVENT_TIMEOUT)?;
        joined.push(at.duration_since(put_at).as_secs_f64() * 1e3);
        live.push(sim);
        std::thread::sleep(settle);
        // Losses spread over the nodes (a prime stride).
        let victim = live.remove((j * 7919) % live.len());
        node.forget_events();
        let revoked_at = Instant::now();
        etcd.revoke(&victim.live)?;
        let at = node.wait_route(&sim_range(victim.index), false, revoked_at, EVENT_TIMEOUT)?;
        lost.push(at.duration_since(revoked_at).as_secs_f64() * 1e3);
        std::thread::sleep(settle);
    }
    Ok((joined, lost))
}

fn latencies(samples_ms: Vec<f64>, cpu_ms_per_event: f64) -> Latencies {
    let mut sorted = samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    // Nearest rank: with fewer than 100 samples, p99 is the largest.
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Latencies {
        p50_ms: median(&samples_ms),
        p99_ms: rank(0.99),
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        samples_ms,
        cpu_ms_per_event,
    }
}

fn print_report(r: &SizeReport) {
    let l = |name: &str, x: &Latencies| {
        println!(
            "  {name}: p50 {:.1} ms, p99 {:.1} ms, min {:.1}, max {:.1} ({} events; agent CPU {:.1} ms per event)",
            x.p50_ms,
            x.p99_ms,
            x.min_ms,
            x.max_ms,
            x.samples_ms.len(),
            x.cpu_ms_per_event
        )
    };
    println!("{} nodes ({}):", r.nodes, r.mode);
    if r.mode == "ebpf" {
        // The routes go in just before the maps, in the same convergence.
        println!("  (timed to the routes; the remote-range and node maps are not observed yet)");
    }
    println!(
        "  initial convergence: {:.0} ms from the agent's start, {:.0} ms from its record",
        r.converge_from_start_ms, r.converge_from_record_ms
    );
    l("join (record put → route)", &r.joins);
    l("loss (lease revoked → route gone)", &r.losses);
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "  agent: RSS {:.1} MiB converged, {:.1} MiB after the events (peak {:.1} MiB); CPU {:.2} s to converge, {:.2}% idle",
        mib(r.usage_converged.rss_kib),
        mib(r.usage_idle.rss_kib),
        mib(r.usage_idle.hwm_kib),
        r.usage_converged.cpu_seconds,
        r.idle_cpu_percent
    );
    let e = &r.etcd;
    println!(
        "  etcd per node: {:.0} keys, {:.0} bytes (record {:.0}, range {:.0}), {} leases; db {:.0} bytes per node ({} → {} bytes)",
        e.keys_per_node, e.bytes_per_node, e.record_bytes, e.range_bytes, e.leases_per_node,
        e.db_bytes_per_node, e.db_size_before, e.db_size_after
    );
}
