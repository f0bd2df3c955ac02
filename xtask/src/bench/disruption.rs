//! `cargo xtask bench disruption`: what a change costs the traffic that is
//! running through it (Cilium's "connection disruption" pattern).
//!
//! One two-pod topology (`bdisrupt`, 198.19.192.0/24 and
//! fd00:198:19:192::/64, used by nothing else) carries, for the whole run,
//! a sequence-numbered UDP stream from pod a to pod b at a fixed rate and a
//! few long-lived TCP connections exchanging small messages without pause
//! (`veth_bench::disruption`, which the no-loss test runs too). Then, one
//! after the other, with time to settle in between: nothing (the noise
//! floor); `vethctl agent` killed with SIGKILL and started again; program
//! reloads (`counters` toggled in the topology file and `vethctl up`: the
//! programs' instructions change, as with a new object; then every pinned
//! map given another layout, as a vethctl of another build would leave
//! them, and a reload; then `up --repair`); every `vethctl mode set`
//! transition between the modes (an Eulerian circuit, so each ordered pair
//! once). Around each event it counts datagrams lost (sent without error,
//! never received), the longest gap between two arrivals, sender errors
//! (such as `Network is unreachable`), the longest TCP round trip and TCP
//! connections broken (an error, a reset or no answer within the timeout;
//! a broken connection is opened again for the next events). Commands run
//! with `--timings`, so each lost datagram is put down to the step that was
//! running when it was sent (to within the command's start-up, a few ms).
//! Traffic stays between the benchmark's own namespaces.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use veth_bench::disruption::{transitions, Config, Disruption, Mark, Traffic};

use super::prepare;
use crate::cmd;

const NAME: &str = "bdisrupt";
const CIDR: &str = "198.19.192.0/24";
const CIDR6: &str = "fd00:198:19:192::/64";
const UDP_PORT: u16 = 11192;
const TCP_PORT: u16 = 11193;
/// The agent's metrics address: a port of its own, so another agent on
/// the machine does not keep this one from starting.
const AGENT_LISTEN: &str = "127.0.0.1:19592";
/// A TCP connection that gets no answer for this long counts as broken.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most seconds of UDP stream the run keeps arrival times for.
const MAX_SECONDS: u64 = 1200;

pub struct Options {
    pub rate: u64,
    pub connections: usize,
    pub settle_ms: u64,
    pub modes: Vec<String>,
}

/// What one event cost.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) event: String,
    /// How long the command (or kill and restart) took, ms.
    pub(super) command_ms: f64,
    #[serde(flatten)]
    pub(super) disruption: Disruption,
    /// Lost datagrams by the step of the command that was running when
    /// they were sent (`vethctl --timings`), in the order of the steps.
    pub(super) lost_during: Vec<(String, u64)>,
    /// The step running when the longest gap began.
    pub(super) longest_gap_began_during: String,
}

/// The topology file and the agent, both taken down when dropped.
struct Bench {
    vethctl: PathBuf,
    file: PathBuf,
    agent: Option<Child>,
}

impl Bench {
    fn write_file(&self, mode: &str, counters: bool) -> Result<()> {
        let text = format!(
            "name = \"{NAME}\"\nmode = \"{mode}\"\npod_cidr = \"{CIDR}\"\npod_cidr6 = \"{CIDR6}\"\n\
             counters = {counters}\n\n[[pods]]\nname = \"a\"\n\n[[pods]]\nname = \"b\"\n"
        );
        fs::write(&self.file, text)?;
        Ok(())
    }

    fn vethctl(&self, args: &[&str]) -> Result<String> {
        cmd::output(Command::new(&self.vethctl).args(args))
    }

    /// Runs `vethctl ARGS --timings`; returns its stderr (the steps, each
    /// with the time it took).
    fn vethctl_timed(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.vethctl)
            .args(args)
            .arg("--timings")
            .stdout(Stdio::null())
            .output()
            .context("starting vethctl")?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!(
                "`vethctl {}` failed ({}): {stderr}",
                args.join(" "),
                out.status
            );
        }
        Ok(stderr)
    }

    fn start_agent(&mut self) -> Result<()> {
        let child = Command::new(&self.vethctl)
            .args(["agent", "--listen", AGENT_LISTEN])
            // Its own lock: the node's agent may run meanwhile.
            .arg("--lock-file")
            .arg(self.agent_lock())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting vethctl agent")?;
        self.agent = Some(child);
        Ok(())
    }

    /// The lock file of the agent this benchmark starts, beside its
    /// topology file.
    fn agent_lock(&self) -> PathBuf {
        self.file.with_extension("agent.lock")
    }

    /// SIGKILL to the agent this benchmark started (by its pid only).
    fn kill_agent(&mut self) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            child.kill().context("kill -9 of the agent")?;
            let _ = child.wait();
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.kill_agent();
        let _ = Command::new(&self.vethctl)
            .args(["down", "--name", NAME])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.file);
        // Left behind by the SIGKILLs.
        let _ = fs::remove_file(self.agent_lock());
    }
}

pub fn run(options: &Options) -> Result<()> {
    for m in &options.modes {
        if !["pair", "bridge", "routed", "tc", "xdp"].contains(&m.as_str()) {
            bail!("--modes: unknown mode {m:?}");
        }
    }
    if options.modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    let (vethctl, dir) = prepare()?;
    if Path::new("/run/netns").join(format!("{NAME}-a")).exists() {
        bail!(
            "topology {NAME} is already up: is another disruption benchmark running? \
             Wait for it, or take it down with `vethctl down --name {NAME}`"
        );
    }
    let mut bench = Bench {
        vethctl,
        file: dir.join(format!("{NAME}.toml")),
        agent: None,
    };
    let first = options.modes[0].clone();
    bench.write_file(&first, true)?;
    bench.vethctl(&["up", "--topology", &bench.file.to_string_lossy()])?;
    let status: Value =
        serde_json::from_str(&bench.vethctl(&["status", "--json", "--name", NAME])?)?;
    let pod = |i: usize, field: &str| -> Result<String> {
        status["topologies"][0]["pods"][i][field]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("status of {NAME} lacks pods[{i}].{field}"))
    };
    bench.start_agent()?;
    let traffic = Traffic::start(&Config {
        client_netns: pod(0, "netns")?,
        server_netns: pod(1, "netns")?,
        server: pod(1, "ipv4")?.parse()?,
        udp_port: UDP_PORT,
        tcp_port: TCP_PORT,
        rate: options.rate,
        connections: options.connections,
        max_seconds: MAX_SECONDS,
        tcp_timeout: TCP_TIMEOUT,
    })?;
    let result = drive(&mut bench, &traffic, options);
    let round_trips = traffic.round_trips();
    let rows: Vec<Row> = match &result {
        Ok(windows) => windows.iter().map(|w| w.row(&traffic)).collect(),
        Err(_) => Vec::new(),
    };
    if let Err(e) = traffic.stop() {
        eprintln!("traffic: {e:#}");
    }
    result?;
    print_table(&rows, options);
    let out = dir.join("disruption.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "rate": options.rate,
            "connections": options.connections,
            "settle_ms": options.settle_ms,
            "tcp_round_trips": round_trips,
            "rows": rows,
        }))?,
    )?;
    println!("results: {}", out.display());
    drop(bench);
    Ok(())
}

/// One event's window: sequence numbers and times, and when each step of
/// the command ended (ns on the traffic's clock), if it printed them.
pub(super) struct Window {
    pub(super) event: String,
    pub(super) command: Duration,
    pub(super) from: Mark,
    pub(super) to: Mark,
    pub(super) command_start_ns: u64,
    pub(super) steps: Vec<(String, u64)>,
}

impl Window {
    pub(super) fn row(&self, t: &Traffic) -> Row {
        let disruption = t.window(self.from, self.to);
        let mut lost_during: Vec<(String, u64)> = Vec::new();
        for &sent in &disruption.lost_sent_ns {
            let what = self.step_at(sent);
            match lost_during.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += 1,
                None => lost_during.push((what.to_string(), 1)),
            }
        }
        Row {
            event: self.event.clone(),
            command_ms: self.command.as_secs_f64() * 1e3,
            longest_gap_began_during: self.step_at(disruption.longest_gap_from_ns).to_string(),
            disruption,
            lost_during,
        }
    }

    /// The step of the command that was running at `ns`.
    fn step_at(&self, ns: u64) -> &str {
        if ns < self.command_start_ns {
            return "before the command";
        }
        match self.steps.iter().find(|(_, end)| ns < *end) {
            Some((what, _)) => what,
            None if self.steps.is_empty() => "during or after the event",
            None => "after the last step",
        }
    }
}

/// Parses `--timings` lines (`   12.34 ms  what`, each time since the
/// previous line) into (what, end on the traffic's clock). They start at
/// the CLOCK_MONOTONIC time the first line gives, else at `spawned_ns`
/// (when the command was started: its own start-up then shifts them).
pub(super) fn step_ends(stderr: &str, spawned_ns: u64, traffic: &Traffic) -> Vec<(String, u64)> {
    let mut at = spawned_ns;
    let mut steps = Vec::new();
    for line in stderr.lines() {
        let Some((ms, what)) = line.trim_start().split_once(" ms  ") else {
            continue;
        };
        let Ok(ms) = ms.trim().parse::<f64>() else {
            continue;
        };
        if let Some(clock) = what
            .strip_prefix("start (CLOCK_MONOTONIC ")
            .and_then(|rest| rest.strip_suffix(" s)"))
        {
            if let Ok(seconds) = clock.parse::<f64>() {
                at = traffic.from_monotonic_ns((seconds * 1e9) as u64);
            }
            continue;
        }
        at += (ms * 1e6) as u64;
        steps.push((what.to_string(), at));
    }
    steps
}

/// Runs the events one after the other; each window starts a quarter of
/// the settle time before the event and ends a settle time after it.
fn drive(bench: &mut Bench, traffic: &Traffic, options: &Options) -> Result<Vec<Window>> {
    let settle = Duration::from_millis(options.settle_ms);
    // Let the stream and the connections run.
    thread::sleep(Duration::from_secs(1));
    let mut windows = Vec::new();
    type Action<'a> = dyn FnMut() -> Result<String> + 'a;
    let mut event = |name: String, action: &mut Action| -> Result<()> {
        let from = traffic.mark();
        thread::sleep(settle / 4);
        let started = Instant::now();
        let command_start_ns = traffic.now_ns();
        let stderr = action().with_context(|| name.clone())?;
        let command = started.elapsed();
        thread::sleep(settle);
        let w = Window {
            event: name,
            command,
            from,
            to: traffic.mark(),
            command_start_ns,
            steps: step_ends(&stderr, command_start_ns, traffic),
        };
        let row = w.row(traffic);
        let d = &row.disruption;
        println!(
            "{:<28} lost {:>5}  gap {:>7.1} ms  send errors {:>5}  tcp stall {:>7.1} ms  broken {}",
            row.event,
            d.lost,
            d.longest_gap_ms,
            d.send_errors,
            d.tcp_longest_stall_ms,
            d.connections_broken
        );
        windows.push(w);
        Ok(())
    };
    let file = bench.file.to_string_lossy().to_string();
    let first = options.modes[0].clone();
    let cell = std::cell::RefCell::new(bench);

    event("idle (no change)".into(), &mut || Ok(String::new()))?;
    event("agent kill -9, restart".into(), &mut || {
        let mut b = cell.borrow_mut();
        b.kill_agent()?;
        thread::sleep(Duration::from_millis(500));
        b.start_agent()?;
        Ok(String::new())
    })?;
    event("reload: counters off".into(), &mut || {
        let b = cell.borrow();
        b.write_file(&first, false)?;
        b.vethctl_timed(&["up", "--topology", &file])
    })?;
    event("reload: counters on".into(), &mut || {
        let b = cell.borrow();
        b.write_file(&first, true)?;
        b.vethctl_timed(&["up", "--topology", &file])
    })?;
    event("reload: map layouts changed".into(), &mut || {
        let b = cell.borrow();
        let pins = Path::new("/sys/fs/bpf/vethctl").join(NAME);
        let replaced = veth_bench::disruption::give_pinned_maps_other_layouts(&pins)?;
        if replaced.is_empty() {
            bail!("no pinned maps in {}", pins.display());
        }
        // A layout change comes with new programs: counters toggled.
        b.write_file(&first, false)?;
        let stderr = b.vethctl_timed(&["up", "--topology", &file])?;
        let remade = replaced
            .iter()
            .filter(|m| {
                stderr.contains(&format!(
                    "map {m} was pinned by a vethctl with another layout"
                ))
            })
            .count();
        if remade != replaced.len() {
            bail!(
                "vethctl remade {remade} of the {} maps given other layouts ({}): {stderr}",
                replaced.len(),
                replaced.join(", ")
            );
        }
        Ok(stderr)
    })?;
    event("reload: counters on (again)".into(), &mut || {
        let b = cell.borrow();
        b.write_file(&first, true)?;
        b.vethctl_timed(&["up", "--topology", &file])
    })?;
    event("up --repair".into(), &mut || {
        cell.borrow()
            .vethctl_timed(&["up", "--repair", "--topology", &file])
    })?;
    for (from, to) in transitions(&options.modes, &[]) {
        event(format!("mode {from} -> {to}"), &mut || {
            cell.borrow()
                .vethctl_timed(&["mode", "set", &to, "--name", NAME])
        })?;
    }
    Ok(windows)
}

fn print_table(rows: &[Row], options: &Options) {
    println!(
        "\ndisruption: UDP {} datagrams/s from pod a to pod b, {} TCP connections, windows of {} ms settle around each event",
        options.rate, options.connections, options.settle_ms
    );
    print_rows(rows);
}

/// The table of `rows` and, under it, what each lost and why.
pub(super) fn print_rows(rows: &[Row]) {
    println!(
        "| {:<28} | {:>7} | {:>6} | {:>11} | {:>11} | {:>13} | {:>6} | {:>10} |",
        "event", "sent", "lost", "gap (ms)", "send errors", "tcp stall ms", "broken", "command ms"
    );
    println!(
        "|{:-<30}|{:->9}|{:->8}|{:->13}|{:->13}|{:->15}|{:->8}|{:->12}|",
        "", "", "", "", "", "", "", ""
    );
    for r in rows {
        let d = &r.disruption;
        println!(
            "| {:<28} | {:>7} | {:>6} | {:>11.1} | {:>11} | {:>13.1} | {:>6} | {:>10.0} |",
            r.event,
            d.sent,
            d.lost,
            d.longest_gap_ms,
            d.send_errors,
            d.tcp_longest_stall_ms,
            d.connections_broken,
            r.command_ms
        );
    }
    for r in rows {
        let d = &r.disruption;
        for (kind, n) in &d.send_error_kinds {
            println!("{}: send error: {kind} x{n}", r.event);
        }
        for b in &d.broken_by {
            println!("{}: broken: {b}", r.event);
        }
        for (step, n) in &r.lost_during {
            println!("{}: {n} lost while: {step}", r.event);
        }
        if d.lost > 0 || d.longest_gap_ms > 100.0 {
            println!(
                "{}: the longest gap ({:.1} ms) began while: {}",
                r.event, d.longest_gap_ms, r.longest_gap_began_during
            );
        }
    }
}
