//! The `vethctl` commands: argument parsing and composition of the library,
//! no logic of their own.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    apply,
    model::{validate_topology_name, with_mode, Mode, Topology, DEFAULT_TOPOLOGY},
    netlink::Host,
    observe::{self, rates, trace, StatsReport, StatusReport},
    state::{recorded_topologies, StateDir},
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
    /// Finds objects by name, so it also cleans up after a crashed `up`;
    /// running it twice is fine.
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
        /// Seconds between refreshes of --watch.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Stop --watch after this many refreshes.
        #[arg(long, value_name = "N")]
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
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
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
    /// Serve Prometheus metrics read from the pinned maps at each scrape.
    Agent {
        /// Address to serve on. Anything but loopback exposes your pods'
        /// traffic figures to the network: choose it explicitly.
        #[arg(long, default_value = crate::agent::DEFAULT_LISTEN, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Turn on the kernel's per-program run-time statistics while the
        /// agent runs (veth_program_run_seconds_total); costs two clock
        /// reads per packet.
        #[arg(long)]
        bpf_stats: bool,
    },
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
        #[arg(long, default_value_t = 1, value_name = "N")]
        sample: u32,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn not_up(name: &str) -> String {
    format!("topology {name:?} is not up (bring it up with `vethctl up`)")
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
    fn recorded(&self) -> Result<Vec<Topology>> {
        let names = match self.name()? {
            Some(name) => vec![name],
            None => recorded_topologies()?,
        };
        let mut topologies = Vec::new();
        for name in names {
            match StateDir::new(&name).load()? {
                Some(t) => topologies.push(t),
                None => bail!(not_up(&name)),
            }
        }
        Ok(topologies)
    }
}

fn read_topology(path: &PathBuf) -> Result<(Topology, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading topology file {}", path.display()))?;
    let topology = Topology::from_toml(&text)
        .with_context(|| format!("invalid topology file {}", path.display()))?;
    Ok((topology, text))
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
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            topology,
            repair,
            timings,
        } => {
            let (topology, text) = match &topology {
                Some(path) => read_topology(path)?,
                None => (Topology::default_topology(), DEFAULT_TOPOLOGY.to_string()),
            };
            apply::up(&topology, &text, apply::UpOptions { repair, timings }).await?;
            println!(
                "topology {:?} is up: {} pods, mode {} (see `vethctl status -n {0}`)",
                topology.name,
                topology.pods.len(),
                topology.mode
            );
        }
        Command::Down { select } => {
            let name = select.name_or_default()?;
            apply::down(&name).await?;
            println!("topology {name:?} is down");
        }
        Command::Status { select, json } => {
            let host = Host::connect()?;
            let mut report = StatusReport {
                topologies: Vec::new(),
            };
            for topology in select.recorded()? {
                report
                    .topologies
                    .push(observe::status(&host, &topology).await?);
            }
            print(json, &report, StatusReport::to_table)?;
        }
        Command::Stats {
            select,
            json,
            watch: true,
            interval,
            count,
        } => {
            if !(interval.is_finite() && interval > 0.0) {
                bail!("--interval must be a positive number of seconds, got {interval}");
            }
            let topologies = select.recorded()?;
            let host = Host::connect()?;
            let options = rates::WatchOptions {
                interval: std::time::Duration::from_secs_f64(interval),
                count,
                json,
            };
            rates::watch(&host, &topologies, &options, &mut std::io::stdout()).await?;
        }
        Command::Stats { select, json, .. } => {
            let host = Host::connect()?;
            let mut report = StatsReport {
                topologies: Vec::new(),
            };
            for topology in select.recorded()? {
                report
                    .topologies
                    .push(observe::stats(&host, &topology).await?);
            }
            print(json, &report, StatsReport::to_table)?;
        }
        Command::Plan { topology } => {
            let (topology, _) = match &topology {
                Some(path) => read_topology(path)?,
                None => (Topology::default_topology(), DEFAULT_TOPOLOGY.to_string()),
            };
            let steps = apply::plan(&topology).await?;
            println!(
                "plan for topology {:?} (mode {}):",
                topology.name, topology.mode
            );
            for step in steps {
                println!("  {step}");
            }
        }
        Command::Mode {
            action: ModeAction::Set { mode, select },
        } => {
            let name = select.name_or_default()?;
            let state = StateDir::new(&name);
            let text = state.load_text()?.with_context(|| not_up(&name))?;
            let (topology, text) = with_mode(&text, mode)?;
            apply::up(&topology, &text, apply::UpOptions::default()).await?;
            println!("topology {name:?} is now in mode {mode}");
        }
        Command::Bench {
            select,
            client,
            server,
            workloads,
            rounds,
            seconds,
            json,
        } => {
            let name = select.name_or_default()?;
            let topology = StateDir::new(&name)
                .load()?
                .with_context(|| not_up(&name))?;
            let nth = |i: usize| topology.pods.get(i).map(|p| p.name.clone());
            let options = crate::bench::BenchOptions {
                client: client
                    .or_else(|| nth(0))
                    .context("--client: the topology has no pods")?,
                server: server
                    .or_else(|| nth(1))
                    .context("--server: the topology has only one pod")?,
                workloads,
                rounds,
                seconds,
            };
            let report = crate::bench::run(&topology, &options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::bench::table(&report));
            }
        }
        Command::Agent { listen, bpf_stats } => {
            crate::agent::run(crate::agent::AgentOptions { listen, bpf_stats }).await?;
        }
        Command::Trace {
            select,
            pod,
            sample,
            count,
            json,
        } => {
            let topology = match select.name()? {
                Some(_) => select.recorded()?.remove(0),
                None => Topology::default_topology(),
            };
            if sample == 0 {
                bail!("--sample must be at least 1 (trace one frame in N)");
            }
            let host = Host::connect()?;
            let pods = observe::pods_by_ifindex(&host, &topology).await?;
            let request = trace::TraceRequest {
                pod,
                sample_every: sample,
                count,
                json,
            };
            trace::follow(&topology, pods, &request, &mut std::io::stdout()).await?;
        }
    }
    Ok(())
}

fn print<T: serde::Serialize>(json: bool, report: &T, table: fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", table(report));
    }
    Ok(())
}
