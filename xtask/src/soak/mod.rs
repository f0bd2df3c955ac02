//! `cargo xtask soak`: the CNI path as a node uses it, for a long time
//! (issue 18). `--width` ADD/DEL cycles at a time through the real
//! `veth-cni` binary, executed as containerd executes it (clean
//! environment, `CNI_*`, configuration on stdin; see `runtime.rs` for the
//! retries), into pod namespaces the soak makes under
//! `/run/vethctl-soak/netns/`, with `vethctl agent` running, random
//! SIGKILLs of the plugin during ADD and DEL, `vethctl mode set` changes
//! and one map-layout change during the churn (`schedule.rs`), and a
//! numbered UDP stream and a TCP connection between two long-lived pods
//! of the same network (`veth_bench::disruption`).
//!
//! It reports datagrams lost between the long-lived pods, pods whose ADD
//! succeeded but that are cut off (each probed after its ADD against a
//! long-lived pod, and every live pod's mapped state checked against
//! `vethctl status` every second), addresses two live pods held at
//! once, what is left at the end that was not there at the start (links,
//! records, map entries, addresses, pins, locks, routes, interfaces in a
//! pod's namespace after its DEL), the agent's RSS and fds at start and
//! end, and ADD/DEL p50/p99 by live pod count — each target PASS or MISS
//! with the figure. `--quick` fails only on correctness (never on timing).
//!
//! Network `vsoak` in a /21 of 198.18.0.0/15 (RFC 2544) whose /24s it
//! reserves as the integration tests reserve theirs; one soak at a time
//! per machine.
//! Everything is removed at the end, also on failure and on Ctrl-C.

mod churn;
mod probe;
mod report;
mod rss;
mod runtime;
mod schedule;
mod snapshot;
mod text;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use veth_bench::{
    disruption::{Config, Disruption, Traffic},
    interrupt,
};

use crate::bench::cni::{exec, reserve_range, run_lock};
use churn::{Ctx, EventRow};
use report::Counts;
use snapshot::Footprint;

pub struct Options {
    pub cycles: Option<usize>,
    pub width: usize,
    pub quick: bool,
    pub json: bool,
    pub max_pods: Option<usize>,
    pub kill_percent: f64,
    pub seed: Option<u64>,
    pub rate: u64,
}

const NETWORK: &str = "vsoak";
/// The network's range: the first /21 of 198.18.0.0/15 below the
/// benchmarks' fixed ranges (198.19.192.0/18) whose eight /24s no test
/// holds, reserved as the integration tests reserve theirs.
const PREFIX: u8 = 21;
const RUN_DIR: &str = "/run/vethctl-soak";
const LOCK_FILE: &str = "/run/vethctl-soak.lock";
/// A port (and a lock file) of its own, so another agent on the machine
/// does not keep this one from starting.
const AGENT_LISTEN: &str = "127.0.0.1:19594";
const UDP_PORT: u16 = 11240;
const TCP_PORT: u16 = 11241;
const ECHO_PORT: u16 = 11242;
const LONG_LIVED: [&str; 2] = ["long-a", "long-b"];

/// What the soak made, taken away when dropped (also on failure and
/// Ctrl-C): the agent (by its pid), the network (`down`),
/// the pod namespaces, the address block reservations and the lock.
struct Soak {
    vethctl: PathBuf,
    agent: Option<Child>,
    blocks: Vec<PathBuf>,
    _lock: fs::File,
}

impl Soak {
    fn netns_dir() -> PathBuf {
        Path::new(RUN_DIR).join("netns")
    }

    /// `vethctl down` of the network. When it fails (a changed map layout
    /// makes it fail today: issue 18, finding 5), `up --repair` of the
    /// network's recorded description first (docs/tests.md, the soak), and
    /// `down` again; the first failure is returned beside.
    fn down(&self) -> Result<Option<String>> {
        let state = Path::new("/run/vethctl").join(NETWORK);
        if !state.exists() {
            return Ok(None);
        }
        let down =
            || crate::cmd::output(Command::new(&self.vethctl).args(["down", "--name", NETWORK]));
        let Err(first) = down() else {
            return Ok(None);
        };
        let copy = std::env::temp_dir().join(format!("vsoak-{}.toml", std::process::id()));
        fs::copy(state.join("topology.toml"), &copy).with_context(|| {
            format!("`vethctl down` failed ({first:#}) and the network's description is unreadable")
        })?;
        let repaired = crate::cmd::output(
            Command::new(&self.vethctl)
                .args(["up", "--repair", "-t"])
                .arg(&copy),
        )
        .and_then(|_| down());
        let _ = fs::remove_file(&copy);
        repaired.with_context(|| {
            format!("`vethctl down` failed ({first:#}), and so did `up --repair` and `down`")
        })?;
        Ok(Some(format!("{first:#}")))
    }

    /// Removes what a soak that died left (the lock says none runs).
    fn remove_leftovers(&self) {
        if let Err(e) = self.down() {
            eprintln!("cleanup: {e:#}");
        }
        for entry in fs::read_dir(Self::netns_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            exec::remove_netns(&entry.path());
        }
        let _ = fs::remove_dir_all(RUN_DIR);
    }

    fn start_agent(&mut self, log: &Path) -> Result<()> {
        let log = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&self.vethctl)
            // This network's only: the node's other networks (tests
            // running beside) are not the soak's to act on or measure.
            .args(["agent", "--listen", AGENT_LISTEN, "--network", NETWORK])
            // Its own lock, in the soak's run directory (removed at the
            // end): the node's agent may run meanwhile.
            .arg("--lock-file")
            .arg(Path::new(RUN_DIR).join("agent.lock"))
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting vethctl agent")?;
        self.agent = Some(child);
        Ok(())
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().map_or(0, Child::id)
    }

    fn agent_alive(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL to the agent this soak started (by its pid only).
    fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        self.stop_agent();
        self.remove_leftovers();
        for block in &self.blocks {
            let _ = fs::remove_file(block);
        }
    }
}

/// The long run's cycles: 750 at each plateau. The agent's RSS floor moves
/// by 0.1–0.2 MB at a constant count, which over the 200 cycles judged at
/// the top plateau of a 2,000-cycle run reads as 1–1.5 MB per 1,000
/// (three runs of one build); 600 judged cycles tell growth from that.
const LONG_CYCLES: usize = 4000;

pub fn run(options: &Options) -> Result<()> {
    let cycles = options
        .cycles
        .unwrap_or(if options.quick { 300 } else { LONG_CYCLES });
    let max_pods = options
        .max_pods
        .unwrap_or(if options.quick { 40 } else { 1000 });
    if cycles == 0 || !(1..=64).contains(&options.width) {
        bail!("--cycles must be at least 1 and --width 1 to 64");
    }
    if !(1..=1800).contains(&max_pods) {
        bail!("--max-pods takes 1 to 1800 (the network's /21 holds 2,045 pods, kept for leaks)");
    }
    if !(0.0..=100.0).contains(&options.kill_percent) {
        bail!("--kill-percent takes 0 to 100");
    }
    if !(1..=20_000).contains(&options.rate) {
        bail!("--rate takes 1 to 20000 datagrams per second");
    }
    let (vethctl, out_dir) = crate::bench::prepare()?;
    let lock = run_lock(LOCK_FILE, "cargo xtask soak")?;
    let (subnet, blocks) = reserve_subnet()?;
    let mut soak = Soak {
        vethctl,
        agent: None,
        blocks,
        _lock: lock,
    };
    soak.remove_leftovers();
    interrupt::catch();
    let seed = options.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let result = soak_run(
        &mut soak,
        options,
        (cycles, max_pods, seed),
        subnet,
        &out_dir,
    );
    drop(soak);
    interrupt::release();
    let measured = result?;
    let text = text::text(&measured);
    if options.json {
        println!("{}", serde_json::to_string_pretty(&measured)?);
    } else {
        print!("{text}");
    }
    let json_path = out_dir.join("soak.json");
    fs::write(&json_path, serde_json::to_string_pretty(&measured)?)?;
    fs::write(out_dir.join("soak.txt"), &text)?;
    eprintln!("results: {} (and soak.txt)", json_path.display());
    let missed = report::failed(&measured.targets, options.quick);
    if !missed.is_empty() {
        bail!("soak missed: {}", missed.join("; "));
    }
    Ok(())
}

/// A free /21 for the network (see [`PREFIX`]) and its reservations.
fn reserve_subnet() -> Result<((Ipv4Addr, u8), Vec<PathBuf>)> {
    let (subnet, files) = reserve_range(1 << (24 - PREFIX))?;
    Ok(((subnet, PREFIX), files))
}

fn network_config(subnet: (Ipv4Addr, u8)) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "veth-cni", "mode": "tc",
        "ipMasq": false,
        "ipam": {"type": "veth-builtin", "subnet": format!("{}/{}", subnet.0, subnet.1)},
    })
}

/// A long-lived pod: ADDed once (no kills), DELed at the end.
struct LongLived {
    attachment: exec::Attachment,
    result: Vec<u8>,
    ipv4: Ipv4Addr,
}

fn add_long_lived(veth_cni: &Path, config: &Value, index: usize) -> Result<LongLived> {
    let attachment = exec::Attachment {
        container_id: churn::container_id(usize::MAX - index),
        netns: Soak::netns_dir().join(LONG_LIVED[index]),
        pod_name: LONG_LIVED[index].to_string(),
    };
    exec::make_netns(&attachment.netns)?;
    let out = exec::run(veth_cni, "ADD", &attachment, config)
        .with_context(|| format!("ADD of the long-lived pod {}", LONG_LIVED[index]))?;
    let ipv4 = runtime::ips(&out.stdout)
        .iter()
        .find_map(|a| a.split('/').next()?.parse().ok())
        .context("the long-lived pod's ADD result has no IPv4 address")?;
    Ok(LongLived {
        attachment,
        result: out.stdout,
        ipv4,
    })
}

fn del_long_lived(veth_cni: &Path, config: &Value, pod: &LongLived) -> Result<()> {
    let with_prev = exec::with_prev_result(config, &pod.result)?;
    exec::run(veth_cni, "DEL", &pod.attachment, &with_prev)?;
    let later = exec::Attachment {
        netns: PathBuf::new(),
        ..pod.attachment.clone()
    };
    exec::run(veth_cni, "DEL", &later, config)?;
    Ok(())
}

/// The agent's side of a run.
#[derive(Debug, Serialize)]
pub struct Agent {
    pub start: Footprint,
    pub end: Footprint,
    /// Its RSS as each cycle ended, with the live pod count.
    pub rss: Vec<rss::Sample>,
    /// The stretches at a constant live count the RSS target judges.
    pub judged: Vec<rss::Stretch>,
    pub alive: bool,
    /// What it logged removing this network's endpoints.
    pub endpoint_removed: Vec<String>,
}

/// Everything one run measured (soak.json), and what the text shows.
#[derive(Debug, Serialize)]
pub struct Measured {
    pub command: String,
    pub cycles: usize,
    pub width: usize,
    pub max_pods: usize,
    pub subnet: String,
    pub levels: Vec<usize>,
    pub kill_percent: f64,
    pub rate: u64,
    pub seed: u64,
    pub quick: bool,
    pub wall_s: f64,
    pub loadavg: String,
    pub targets: Vec<report::Target>,
    pub latency: Vec<report::LatencyRow>,
    pub counts: Counts,
    pub events: Vec<EventRow>,
    pub findings: churn::Findings,
    pub leaks: Vec<snapshot::Leak>,
    pub leaks_after_down: Vec<snapshot::Leak>,
    pub executions: runtime::Tally,
    pub traffic: Disruption,
    pub agent: Agent,
    pub samples: Vec<report::OpSample>,
}

/// The long-lived pods and the traffic between them, stopped when
/// dropped (before `Soak` cleans up, also on an error).
struct Stage {
    long: Vec<LongLived>,
    echo: SocketAddrV4,
    _echo_server: probe::EchoServer,
    traffic: Traffic,
}

fn stage(
    soak: &mut Soak,
    config: &Value,
    rate: u64,
    cycles: usize,
    out_dir: &Path,
) -> Result<Stage> {
    let veth_cni = soak.vethctl.with_file_name("veth-cni");
    fs::create_dir_all(Soak::netns_dir())?;
    soak.start_agent(&out_dir.join("soak-agent.log"))?;
    eprintln!(
        "soak: network {NETWORK} up with two long-lived pods, agent pid {} ...",
        soak.agent_pid()
    );
    let long: Vec<LongLived> = (0..2)
        .map(|i| add_long_lived(&veth_cni, config, i))
        .collect::<Result<_>>()?;
    let echo = SocketAddrV4::new(long[0].ipv4, ECHO_PORT);
    let echo_server = probe::EchoServer::start(&long[0].attachment.netns, echo)?;
    let traffic = Traffic::start(&Config {
        client_netns: long[0].attachment.netns.display().to_string(),
        server_netns: long[1].attachment.netns.display().to_string(),
        server: long[1].ipv4.into(),
        udp_port: UDP_PORT,
        tcp_port: TCP_PORT,
        rate,
        connections: 1,
        max_seconds: (cycles as u64 * 2).max(900),
        tcp_timeout: Duration::from_secs(10),
    })?;
    Ok(Stage {
        long,
        echo,
        _echo_server: echo_server,
        traffic,
    })
}

fn soak_run(
    soak: &mut Soak,
    options: &Options,
    (cycles, max_pods, seed): (usize, usize, u64),
    subnet: (Ipv4Addr, u8),
    out_dir: &Path,
) -> Result<Measured> {
    let started = Instant::now();
    let config = network_config(subnet);
    let stage = stage(soak, &config, options.rate, cycles, out_dir)?;
    thread::sleep(Duration::from_secs(2));
    let from = stage.traffic.mark();
    let snap_start = snapshot::take(NETWORK, subnet)?;
    let agent_start = snapshot::footprint(soak.agent_pid())?;

    let veth_cni = soak.vethctl.with_file_name("veth-cni");
    let runtime = runtime::Runtime::new(&veth_cni, config.clone(), options.kill_percent, seed);
    let schedule = schedule::Schedule::new(cycles, max_pods);
    let levels = schedule.levels().to_vec();
    let events = schedule::events(cycles);
    eprintln!(
        "soak: {cycles} cycles {} wide, plateaus at {levels:?} live pods, {} % of executions \
         killed, {} events, seed {seed}",
        options.width,
        options.kill_percent,
        events.len()
    );
    let vethctl = soak.vethctl.clone();
    let netns_dir = Soak::netns_dir();
    let long_lived = stage
        .long
        .iter()
        .map(|l| {
            (
                l.attachment.pod_name.clone(),
                l.attachment.netns.clone(),
                l.ipv4,
            )
        })
        .collect();
    let ctx = Ctx::new(
        &runtime,
        &vethctl,
        NETWORK,
        &netns_dir,
        stage.echo,
        long_lived,
        schedule,
        seed,
        Duration::from_secs(1),
    )
    .with_agent(soak.agent_pid());
    let mut events = ctx.run(options.width, &events, &stage.traffic)?;
    ctx.sweep()?;
    thread::sleep(Duration::from_secs(1));
    let to = stage.traffic.mark();
    thread::sleep(Duration::from_millis(500));
    let traffic = stage.traffic.window(from, to);
    attribute(&mut events, &traffic.lost_sent_ns);
    let snap_end = snapshot::take(NETWORK, subnet)?;
    let rss = ctx.rss_samples();
    let agent = Agent {
        start: agent_start,
        end: snapshot::footprint(soak.agent_pid()).unwrap_or_default(),
        judged: rss::stretches(&rss),
        rss,
        alive: soak.agent_alive(),
        endpoint_removed: Vec::new(),
    };
    let mut findings = ctx.findings();
    let cycles_done = ctx.cycles_done();
    let mut leaks = std::mem::take(&mut findings.leftovers);
    leaks.extend(snapshot::leaks(&snap_start, &snap_end));
    let (more, leaks_after_down, endpoint_removed) = finish(soak, stage, &config, subnet, out_dir)?;
    leaks.extend(more);

    let samples = std::mem::take(&mut *runtime.samples.lock().unwrap_or_else(|e| e.into_inner()));
    let executions = std::mem::take(&mut *runtime.tally.lock().unwrap_or_else(|e| e.into_inner()));
    let latency = report::latency_rows(&samples);
    let mut m = Measured {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cycles: cycles_done,
        width: options.width,
        max_pods,
        subnet: format!("{}/{}", subnet.0, subnet.1),
        levels,
        kill_percent: options.kill_percent,
        rate: options.rate,
        seed,
        quick: options.quick,
        wall_s: started.elapsed().as_secs_f64(),
        loadavg: fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        targets: Vec::new(),
        latency,
        counts: Counts::default(),
        events,
        findings,
        leaks,
        leaks_after_down,
        executions,
        traffic,
        agent: Agent {
            endpoint_removed,
            ..agent
        },
        samples,
    };
    m.counts = counts(&m);
    m.targets = report::targets(&m.counts, &m.latency);
    Ok(m)
}

/// The figures the targets judge.
fn counts(m: &Measured) -> Counts {
    let f = &m.findings;
    Counts {
        cycles: m.cycles,
        pods_added: f.added,
        unreachable: f.cut_off.len(),
        unanswered: f.cut_off.iter().filter(|c| c.unanswered).count(),
        duplicate_addresses: f.duplicates.len(),
        double_add_two_addresses: f.double_add_two_addresses.len(),
        leaks: m.leaks.len() + m.leaks_after_down.len(),
        stuck: f.stuck.len(),
        datagrams_sent: m.traffic.sent,
        datagrams_lost: m.traffic.lost,
        tcp_broken: m.traffic.connections_broken,
        agent_alive: m.agent.alive,
        agent_rss: m.agent.judged.clone(),
        agent_fds: (m.agent.start.fds, m.agent.end.fds),
    }
}

/// The long-lived pods go as any pod does (their namespaces must be empty
/// after), then the agent and the network. Returns what was left in the
/// pods' namespaces, what `down` left, and the agent's removals of this
/// network's endpoints.
fn finish(
    soak: &mut Soak,
    stage: Stage,
    config: &Value,
    subnet: (Ipv4Addr, u8),
    out_dir: &Path,
) -> Result<(Vec<snapshot::Leak>, Vec<snapshot::Leak>, Vec<String>)> {
    let veth_cni = soak.vethctl.with_file_name("veth-cni");
    let Stage { long, traffic, .. } = stage;
    if let Err(e) = traffic.stop() {
        eprintln!("traffic: {e:#}");
    }
    let mut leaks = Vec::new();
    for pod in &long {
        del_long_lived(&veth_cni, config, pod)?;
        let left = exec::interfaces_besides_lo(&pod.attachment.netns)?;
        if !left.is_empty() {
            leaks.push(snapshot::Leak {
                kind: "pod interface".into(),
                what: format!("{} left in {}", left.join(", "), pod.attachment.pod_name),
            });
        }
        exec::remove_netns(&pod.attachment.netns);
    }
    soak.stop_agent();
    let down_failed = soak.down()?;
    let mut after_down = snapshot::after_down(NETWORK, subnet)?;
    if let Some(error) = down_failed {
        after_down.push(snapshot::Leak {
            kind: "down".into(),
            what: format!("`vethctl down` failed, and worked after `up --repair`: {error}"),
        });
    }
    // Only this network's lines (the agent serves no other).
    let ours = format!("topology {NETWORK:?}");
    let removed = fs::read_to_string(out_dir.join("soak-agent.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&ours) && l.contains("endpoint removed"))
        .map(str::to_string)
        .collect();
    Ok((leaks, after_down, removed))
}

/// Each lost datagram goes to the disturbance last started before it
/// was sent.
fn attribute(rows: &mut [EventRow], lost_sent_ns: &[u64]) {
    for &sent in lost_sent_ns {
        if let Some(row) = rows.iter_mut().rev().find(|r| r.started_ns <= sent) {
            row.datagrams_lost_after += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(started_ns: u64) -> EventRow {
        EventRow {
            at_cycle: 0,
            what: String::new(),
            ms: 0.0,
            outcome: String::new(),
            started_ns,
            datagrams_lost_after: 0,
        }
    }

    #[test]
    fn a_lost_datagram_goes_to_the_disturbance_before_it() {
        let mut rows = vec![row(100), row(200)];
        attribute(&mut rows, &[50, 150, 199, 200, 900]);
        // 50 was lost before any disturbance: nobody's.
        assert_eq!(rows[0].datagrams_lost_after, 2);
        assert_eq!(rows[1].datagrams_lost_after, 2);
    }
}
