//! The `vethctl` commands: argument parsing and composition of the library,
//! no logic of their own.

use std::{
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    apply, endpoint,
    model::{
        too_large, validate_topology_name, with_mode, Mode, Topology, DEFAULT_TOPOLOGY,
        MAX_TOPOLOGY_BYTES,
    },
    netlink::Host,
    observe::{self, rates, trace, StatsReport, StatusReport, Unreadable},
    preflight, privileges,
    state::{self, recorded_topologies, StateDir},
};

/// Pods in network namespaces, wired five ways (pair, bridge, routed, tc,
/// xdp) and switchable live; in the eBPF modes frames move between pods
/// with bpf_redirect_peer or an XDP redirect, bypassing bridge and host stack.
#[derive(Debug, Parser)]
#[command(name = "vethctl", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update a topology's pods and dataplane (idempotent).
    ///
    /// Without --topology, brings up the built-in default: topology "demo",
    /// mode tc, pods web, api and db in 10.200.0.0/24 and fd00:10:200::/64.
    ///
    /// Only what changed is done: pods the last `up` wired as wanted, whose
    /// namespace and host-side veth are still the same, are left alone, and
    /// links keep running programs that did not change.
    Up {
        /// Topology description (TOML); see README.md for the format.
        #[arg(long, short = 't', value_name = "FILE")]
        topology: Option<PathBuf>,
        /// Wire every pod again and reload the programs, putting right what
        /// was changed by hand inside pods' namespaces (addresses, MAC,
        /// routes), which a plain `up` does not look at.
        #[arg(long)]
        repair: bool,
        /// Print how long each phase and step took (on stderr).
        #[arg(long)]
        timings: bool,
    },
    /// Remove everything a topology made: namespaces, links, pins, state.
    ///
    /// Removes only what the topology's ledger records as made by it (never
    /// something merely named like it), also after a crashed `up`; running
    /// it twice is fine.
    Down {
        #[command(flatten)]
        select: Select,
    },
    /// Show pods, their interfaces on both sides and what is attached.
    Status {
        #[command(flatten)]
        select: Select,
        /// Print JSON (documented in README.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show per-pair counters: redirected, passed to the host stack, dropped.
    Stats {
        #[command(flatten)]
        select: Select,
        /// Print JSON (documented in README.md) instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh a table of per-pair rates in place (with --json: one
        /// JSON line of rates per interval).
        #[arg(long, short = 'w')]
        watch: bool,
        /// Seconds between refreshes of --watch (0.05 to 86400).
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS", value_parser = parse_interval)]
        interval: f64,
        /// Stop --watch after this many refreshes (at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Show what `up` would do to the kernel, without doing it.
    Plan {
        /// Topology description (TOML); default: the built-in one.
        #[arg(long, short = 't', value_name = "FILE")]
        topology: Option<PathBuf>,
    },
    /// Measure the path between two pods of a topology that is up:
    /// request/response latency (sockperf), connection rate (built in),
    /// bulk TCP and 64-byte UDP rate (iperf3), in interleaved rounds, with
    /// what the dataplane counted and the program's time per run.
    ///
    /// Client and server run inside the pods' namespaces, pinned to CPU 1
    /// and CPU 0 (or both to CPU 1 for `_same_cpu` workloads). Needs
    /// sockperf and iperf3 installed.
    Bench {
        #[command(flatten)]
        select: Select,
        /// Pod that sends (default: the first pod).
        #[arg(long)]
        client: Option<String>,
        /// Pod that answers (default: the second pod).
        #[arg(long)]
        server: Option<String>,
        /// Comma-separated: tcp_rr, tcp_rr_same_cpu, udp_rr,
        /// udp_rr_same_cpu, tcp_crr, tcp_crr_same_cpu, tcp_bulk,
        /// tcp_bulk_per_cpu, udp_64b_rate. `_same_cpu`: client and server on
        /// one CPU (what the path costs); without it, on CPUs 1 and 0 (what
        /// an application sees, cross-CPU wake-ups included).
        #[arg(long, value_delimiter = ',', default_value = "tcp_rr,tcp_rr_same_cpu,udp_rr,udp_rr_same_cpu,tcp_crr,tcp_crr_same_cpu,tcp_bulk,udp_64b_rate", value_parser = parse_workload)]
        workloads: Vec<veth_bench::Workload>,
        /// Rounds of every workload (1 to 1000).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        rounds: u64,
        /// Seconds per measurement (1 to 3600).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        seconds: u64,
        /// Print JSON (every sample included) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Switch a live topology between wiring modes.
    Mode {
        #[command(subcommand)]
        action: ModeAction,
    },
    /// The node's daemon: keeps endpoints true to their veths and serves
    /// Prometheus metrics read from the pinned maps at each scrape, with
    /// /healthz and /readyz on the same listener. One per node.
    Agent {
        /// Address to serve on. Anything but loopback exposes your pods'
        /// traffic figures to the network: choose it explicitly.
        #[arg(long, default_value = crate::agent::DEFAULT_LISTEN, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Turn on the kernel's per-program run-time statistics while the
        /// agent runs (vethctl_program_run_seconds_total); costs two clock
        /// reads per packet.
        #[arg(long)]
        bpf_stats: bool,
        /// Export drop reasons per pod (vethctl_pair_drops_total) as well
        /// as per network: a series per pod and reason, most of them 0.
        #[arg(long)]
        per_pod_drops: bool,
        /// The file that makes this the node's only agent (a second one
        /// refuses to start, naming this one's PID). A lab that runs one
        /// agent per simulated node gives each its own.
        #[arg(long, value_name = "FILE", default_value = crate::state::AGENT_LOCK)]
        lock_file: PathBuf,
        /// Bring up the network of this CNI configuration list at start
        /// (programs loaded before the first pod); repeatable.
        #[arg(long, value_name = "FILE")]
        cni_conf: Vec<PathBuf>,
    },
    /// Install the CNI plugin (`veth-cni`) and a configuration list for a
    /// container runtime (containerd, CRI-O, podman), as Kubernetes node
    /// set-up does.
    ///
    /// Both files are replaced atomically; the list says cniVersion 1.0.0
    /// with cniVersions ["1.0.0", "1.1.0"], so runtimes on older and newer
    /// libcni both use it. It is validated as the plugin would first.
    InstallCni(InstallCni),
    /// Follow a sampled stream of flow events from the programs.
    ///
    /// Tracing costs nothing while nobody listens; it switches itself off a
    /// few seconds after the listener goes away, even after `kill -9`.
    Trace {
        #[command(flatten)]
        select: Select,
        /// Only this pod's pair (frames it sends, receives, or is redirected).
        #[arg(long, short = 'p')]
        pod: Option<String>,
        /// Trace about one frame in N (1 = every frame).
        #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        sample: u32,
        /// Stop after this many events (at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct InstallCni {
    /// The runtime's CNI plugin directory.
    #[arg(long, default_value = "/opt/cni/bin", value_name = "DIR")]
    bin_dir: PathBuf,
    /// The runtime's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d", value_name = "DIR")]
    conf_dir: PathBuf,
    /// File name of the list (runtimes take the first by name).
    #[arg(long, default_value = "10-vethctl.conflist", value_name = "FILE")]
    conf_file: String,
    /// The plugin binary to install (default: `veth-cni` beside vethctl).
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// Network name: up to 10 lowercase letters and digits; `vethctl
    /// status -n NAME` shows its pods.
    #[arg(long, default_value = "vethnet")]
    name: String,
    /// tc, xdp, routed or bridge.
    #[arg(long, default_value = "tc")]
    mode: String,
    /// This node's IPv4 pod range.
    #[arg(long, value_name = "CIDR")]
    subnet: String,
    /// This node's IPv6 pod range (dual stack).
    #[arg(long, value_name = "CIDR")]
    subnet6: Option<String>,
    /// `veth-builtin` (vethctl's own allocator) or a delegated IPAM plugin
    /// in --bin-dir, such as `host-local`.
    #[arg(long, default_value = "veth-builtin")]
    ipam: String,
    /// MTU of the pods' veths (default 1500).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    mtu: Option<u32>,
    /// Plugins chained after veth-cni, comma-separated (must be in
    /// --bin-dir); empty for none.
    #[arg(long, value_delimiter = ',', default_value = "portmap,bandwidth")]
    chain: Vec<String>,
}

fn not_up(name: &str) -> String {
    format!("topology {name:?} is not up (bring it up with `vethctl up`)")
}

/// Shortest and longest `--interval` of `stats --watch`.
const INTERVAL_RANGE: std::ops::RangeInclusive<f64> = 0.05..=86_400.0;

fn parse_interval(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds (e.g. 1 or 0.5)"))?;
    if !INTERVAL_RANGE.contains(&seconds) {
        return Err(format!(
            "{text} seconds is out of range; use {} to {} (one day)",
            INTERVAL_RANGE.start(),
            INTERVAL_RANGE.end()
        ));
    }
    Ok(seconds)
}

fn parse_workload(name: &str) -> Result<veth_bench::Workload, String> {
    veth_bench::Workload::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = veth_bench::Workload::ALL.iter().map(|w| w.name()).collect();
        format!("unknown workload {name:?}; one of: {}", names.join(", "))
    })
}

#[derive(Debug, Subcommand)]
enum ModeAction {
    /// Rewire the pods of a topology that is up for MODE (pair, bridge,
    /// routed, tc, xdp), keeping namespaces and addresses; nothing of the old
    /// wiring stays. Connections may pause while it switches.
    Set {
        /// pair, bridge, routed, tc or xdp.
        mode: Mode,
        #[command(flatten)]
        select: Select,
        /// Print how long each phase and step took (on stderr).
        #[arg(long)]
        timings: bool,
    },
}

/// Which topology a command is about.
#[derive(Debug, Args)]
struct Select {
    /// Topology description (TOML); the topology is its `name`.
    #[arg(long, short = 't', value_name = "FILE", conflicts_with = "name")]
    topology: Option<PathBuf>,
    /// Topology name. Default: every topology that is up for `status` and
    /// `stats`; "demo" for the other commands.
    #[arg(long, short = 'n')]
    name: Option<String>,
}

impl Select {
    /// The selected topology's name; "demo" if none was selected.
    fn name_or_default(&self) -> Result<String> {
        Ok(self
            .name()?
            .unwrap_or_else(|| Topology::default_topology().name))
    }

    /// Whether a topology was selected (by name or file).
    fn is_some(&self) -> bool {
        self.topology.is_some() || self.name.is_some()
    }

    /// The topology name, if one was selected.
    fn name(&self) -> Result<Option<String>> {
        if let Some(path) = &self.topology {
            return Ok(Some(read_topology(path)?.0.name));
        }
        if let Some(name) = &self.name {
            validate_topology_name(name)?;
        }
        Ok(self.name.clone())
    }

    /// The topologies to report on, each with its recorded description.
    /// Without a selection, a topology whose record cannot be read is
    /// listed apart and the others are reported as usual; a selected one
    /// that cannot be read is an error.
    fn recorded(&self) -> Result<(Vec<Topology>, Vec<Unreadable>)> {
        if let Some(name) = self.name()? {
            return Ok((vec![load_recorded(&name)?], Vec::new()));
        }
        let mut topologies = Vec::new();
        let mut unreadable = Vec::new();
        for name in recorded_topologies()? {
            let state = StateDir::new(&name);
            match state.load() {
                Ok(Some(t)) => topologies.push(endpoint::with_endpoints(t)),
                // Brought down meanwhile.
                Ok(None) => {}
                Err(e) => unreadable.push(Unreadable::record(&name, &state.topology_path(), &e)),
            }
        }
        Ok((topologies, unreadable))
    }
}

/// The recorded description of topology `name`, with what to do when it is
/// not up or cannot be read.
fn load_recorded(name: &str) -> Result<Topology> {
    let state = StateDir::new(name);
    match state.load() {
        Ok(Some(t)) => Ok(endpoint::with_endpoints(t)),
        Ok(None) => bail!(not_up(name)),
        Err(e) => bail!(Unreadable::record(name, &state.topology_path(), &e).message()),
    }
}

fn read_topology(path: &Path) -> Result<(Topology, String)> {
    let text =
        read_bounded(path).with_context(|| format!("reading topology file {}", path.display()))?;
    let topology = Topology::from_toml(&text)
        .with_context(|| format!("invalid topology file {}", path.display()))?;
    // As `up` will address it: recorded pods keep their addresses.
    let topology = apply::keeping_recorded(&topology, &text)
        .with_context(|| format!("invalid topology file {}", path.display()))?;
    Ok((topology, text))
}

/// The text of `path`, read only up to [`MAX_TOPOLOGY_BYTES`] (and one
/// byte more, to tell a larger file): `-t /dev/zero` or a wrong path to a
/// large file fails at once instead of reading without bound.
fn read_bounded(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_TOPOLOGY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_TOPOLOGY_BYTES {
        return Err(too_large(bytes.len() as u64).into());
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "not UTF-8 text (invalid byte at offset {}); a topology description is a TOML file",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Standard output for everything the commands print. A reader that went
/// away (`vethctl stats --json | head -1`) is told apart from other broken
/// pipes, so that it ends the command quietly with success, as other Unix
/// tools do, rather than with an error or a panic.
struct Stdout;

/// Marks a write error of [`Stdout`] whose reader is gone.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
struct ReaderGone;

impl Stdout {
    fn mark(e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::BrokenPipe {
            io::Error::new(io::ErrorKind::BrokenPipe, ReaderGone)
        } else {
            e
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().write(buf).map_err(Stdout::mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush().map_err(Stdout::mark)
    }
}

/// Writes `text` to standard output, flushed (so a closed pipe is noticed
/// here, not when the process exits).
fn emit(text: impl std::fmt::Display) -> Result<()> {
    let mut out = Stdout;
    write!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Whether `e` is (or was caused by) the reader of standard output going
/// away.
fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<ReaderGone>())
    })
}

/// The whole `vethctl` program: parse arguments, run, report errors.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Two workers are plenty: namespace work runs on threads of its own.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if reader_gone(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!, which panics when stderr is gone too.
            let _ = writeln!(io::stderr(), "error: {e:#}");
            std::process::ExitCode::from(crate::Error::kind_of(&e).exit_code())
        }
    }
}

/// What `command` needs from the kernel ([`privileges`]); `None` for
/// commands that touch neither the kernel nor vethctl's state.
fn needs(command: &Command) -> Option<(&'static str, &'static [privileges::Capability])> {
    Some(match command {
        Command::Up { .. } => ("vethctl up", privileges::CHANGE),
        Command::Down { .. } => ("vethctl down", privileges::CHANGE),
        Command::Mode { .. } => ("vethctl mode set", privileges::CHANGE),
        Command::Plan { .. } => ("vethctl plan", privileges::CHANGE),
        Command::Bench { .. } => ("vethctl bench", privileges::CHANGE),
        Command::Status { .. } => ("vethctl status", privileges::INSPECT),
        Command::Stats { .. } => ("vethctl stats", privileges::READ),
        Command::Trace { .. } => ("vethctl trace", privileges::READ),
        Command::Agent {
            bpf_stats,
            cni_conf,
            ..
        } => (
            "vethctl agent",
            if !cni_conf.is_empty() {
                privileges::CHANGE
            } else if *bpf_stats {
                privileges::BPF_STATS
            } else {
                privileges::READ
            },
        ),
        Command::InstallCni(_) => return None,
    })
}

pub async fn run(cli: Cli) -> Result<()> {
    if let Some((name, caps)) = needs(&cli.command) {
        privileges::require(name, caps)?;
        state::secure_state_root()?;
    }
    match cli.command {
        Command::Up {
            topology,
            repair,
            timings,
        } => up(topology, apply::UpOptions { repair, timings }).await,
        Command::Down { select } => down(&select).await,
        Command::Status { select, json } => status(&select, json).await,
        Command::Stats {
            select,
            json,
            watch: true,
            interval,
            count,
        } => stats_watch(&select, json, interval, count).await,
        Command::Stats { select, json, .. } => stats(&select, json).await,
        Command::Plan { topology } => plan(topology).await,
        Command::Mode {
            action:
                ModeAction::Set {
                    mode,
                    select,
                    timings,
                },
        } => mode_set(&select, mode, timings).await,
        Command::Bench {
            select,
            client,
            server,
            workloads,
            rounds,
            seconds,
            json,
        } => {
            let options = |topology: &Topology| -> Result<crate::bench::BenchOptions> {
                let nth = |i: usize| topology.pods.get(i).map(|p| p.name.clone());
                Ok(crate::bench::BenchOptions {
                    client: client
                        .clone()
                        .or_else(|| nth(0))
                        .context("--client: the topology has no pods")?,
                    server: server
                        .clone()
                        .or_else(|| nth(1))
                        .context("--server: the topology has only one pod")?,
                    workloads: workloads.clone(),
                    // At most 1000: checked by clap.
                    rounds: rounds as usize,
                    seconds,
                })
            };
            bench(&select, options, json).await
        }
        Command::Agent {
            listen,
            bpf_stats,
            cni_conf,
            per_pod_drops,
            lock_file,
        } => {
            crate::agent::run(crate::agent::AgentOptions {
                listen,
                bpf_stats,
                cni_confs: cni_conf,
                per_pod_drops,
                lock_file,
            })
            .await
        }
        Command::Trace {
            select,
            pod,
            sample,
            count,
            json,
        } => {
            let request = trace::TraceRequest {
                pod,
                sample_every: sample,
                count,
                json,
            };
            trace_follow(&select, &request).await
        }
        Command::InstallCni(options) => install_cni(options),
    }
}

/// The topology file at `path`, or the built-in one.
fn topology_or_default(path: Option<&Path>) -> Result<(Topology, String)> {
    match path {
        Some(path) => read_topology(path),
        None => Ok((Topology::default_topology(), DEFAULT_TOPOLOGY.to_string())),
    }
}

async fn up(path: Option<PathBuf>, options: apply::UpOptions) -> Result<()> {
    let (topology, text) = topology_or_default(path.as_deref())?;
    // Everything that can be refused is, before anything is made.
    preflight::check(&Host::connect()?, &topology).await?;
    apply::up(&topology, &text, options).await?;
    // A CNI network's file lists no pods: its pods are the runtime's
    // endpoints, counted too (it said "0 pods" beside 902 endpoints).
    let pods = crate::endpoint::with_endpoints(topology.clone()).pods.len();
    emit(format_args!(
        "topology {:?} is up: {pods} pods, mode {} (see `vethctl status -n {0}`)\n",
        topology.name, topology.mode
    ))
}

async fn down(select: &Select) -> Result<()> {
    let name = select.name_or_default()?;
    apply::down(&name).await?;
    emit(format_args!("topology {name:?} is down\n"))
}

async fn status(select: &Select, json: bool) -> Result<()> {
    let host = Host::connect()?;
    let (topologies, unreadable) = select.recorded()?;
    let mut report = StatusReport {
        topologies: Vec::new(),
        unreadable,
    };
    for topology in topologies {
        match observe::status(&host, &topology).await {
            Ok(status) => report.topologies.push(status),
            // One topology's trouble is reported beside the others.
            Err(e) if !select.is_some() => report
                .unreadable
                .push(Unreadable::objects(&topology.name, &e)),
            Err(e) => return Err(e),
        }
    }
    print(json, &report, StatusReport::to_table)
}

async fn stats(select: &Select, json: bool) -> Result<()> {
    let host = Host::connect()?;
    let (topologies, unreadable) = select.recorded()?;
    let mut report = StatsReport {
        topologies: Vec::new(),
        unreadable,
    };
    for topology in topologies {
        match observe::stats(&host, &topology).await {
            Ok(stats) => report.topologies.push(stats),
            Err(e) if !select.is_some() => report
                .unreadable
                .push(Unreadable::objects(&topology.name, &e)),
            Err(e) => return Err(e),
        }
    }
    print(json, &report, StatsReport::to_table)
}

async fn stats_watch(select: &Select, json: bool, interval: f64, count: Option<u64>) -> Result<()> {
    let (mut topologies, mut unreadable) = select.recorded()?;
    let host = Host::connect()?;
    if !select.is_some() {
        // Watch the others when one cannot be read.
        let mut readable = Vec::new();
        for topology in topologies {
            match observe::stats(&host, &topology).await {
                Ok(_) => readable.push(topology),
                Err(e) => unreadable.push(Unreadable::objects(&topology.name, &e)),
            }
        }
        topologies = readable;
    }
    for u in &unreadable {
        let _ = writeln!(io::stderr(), "vethctl: {}", u.message());
    }
    let options = rates::WatchOptions {
        // In range: checked by parse_interval.
        interval: std::time::Duration::from_secs_f64(interval),
        count,
        json,
    };
    rates::watch(&host, &topologies, &options, &mut Stdout).await
}

async fn plan(path: Option<PathBuf>) -> Result<()> {
    let (topology, _) = topology_or_default(path.as_deref())?;
    // What `up` would refuse, `plan` refuses too.
    preflight::check(&Host::connect()?, &topology).await?;
    let steps = apply::plan(&topology).await?;
    let mut text = format!(
        "plan for topology {:?} (mode {}):\n",
        topology.name, topology.mode
    );
    for step in steps {
        text += &format!("  {step}\n");
    }
    emit(text)
}

async fn mode_set(select: &Select, mode: Mode, timings: bool) -> Result<()> {
    let name = select.name_or_default()?;
    // The recorded description is read under the lock the change is made
    // under, so nothing recorded meanwhile is lost.
    apply::up_from_record(
        &name,
        |text| Ok(with_mode(&text.with_context(|| not_up(&name))?, mode)?),
        apply::UpOptions {
            timings,
            ..apply::UpOptions::default()
        },
    )
    .await?;
    emit(format_args!("topology {name:?} is now in mode {mode}\n"))
}

async fn bench(
    select: &Select,
    options: impl FnOnce(&Topology) -> Result<crate::bench::BenchOptions>,
    json: bool,
) -> Result<()> {
    let topology = load_recorded(&select.name_or_default()?)?;
    let report = crate::bench::run(&topology, &options(&topology)?).await?;
    if json {
        emit(format_args!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        emit(crate::bench::table(&report))
    }
}

async fn trace_follow(select: &Select, request: &trace::TraceRequest) -> Result<()> {
    let topology = match select.name()? {
        Some(name) => load_recorded(&name)?,
        None => Topology::default_topology(),
    };
    let host = Host::connect()?;
    let pods = observe::pods_by_ifindex(&host, &topology).await?;
    trace::follow(&topology, pods, request, &mut Stdout).await?;
    Ok(())
}

fn install_cni(o: InstallCni) -> Result<()> {
    let plugin = match o.plugin {
        Some(path) => path,
        None => std::env::current_exe()
            .context("finding vethctl's own path")?
            .with_file_name(crate::cni::install::PLUGIN_TYPE),
    };
    let options = crate::cni::install::InstallOptions {
        plugin,
        bin_dir: o.bin_dir,
        conf_dir: o.conf_dir,
        conf_file: o.conf_file,
        name: o.name,
        mode: o.mode,
        ipam: o.ipam,
        subnet: o.subnet,
        subnet6: o.subnet6,
        mtu: o.mtu,
        chain: o.chain.into_iter().filter(|c| !c.is_empty()).collect(),
    };
    let (plugin, conf) = crate::cni::install::install(&options)?;
    emit(format_args!(
        "installed {} and {}; the runtime's next pod uses network {:?} (`vethctl status -n {}`)\n",
        plugin.display(),
        conf.display(),
        options.name,
        options.name
    ))
}

fn print<T: serde::Serialize>(json: bool, report: &T, table: fn(&T) -> String) -> Result<()> {
    if json {
        emit(format_args!("{}\n", serde_json::to_string_pretty(report)?))
    } else {
        emit(table(report))
    }
}
