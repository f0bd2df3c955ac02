//! The `vethctl` commands: argument parsing and composition of the library,
//! no logic of their own.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    apply,
    model::{validate_topology_name, Topology, DEFAULT_TOPOLOGY},
    netlink::Host,
    observe::{self, StatsReport, StatusReport},
    state::{recorded_topologies, StateDir},
};

/// Pods in network namespaces, wired by an eBPF dataplane that moves frames
/// between them with bpf_redirect_peer.
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
    /// pods web, api and db in 10.200.0.0/24, mode tc.
    Up {
        /// Topology description (TOML); see README.md for the format.
        #[arg(long, short = 't', value_name = "FILE")]
        topology: Option<PathBuf>,
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
    },
}

/// Which topology a command is about.
#[derive(Debug, Args)]
struct Select {
    /// Topology description (TOML); the topology is its `name`.
    #[arg(long, short = 't', value_name = "FILE", conflicts_with = "name")]
    topology: Option<PathBuf>,
    /// Topology name. Default for `down`: "demo"; for `status` and `stats`:
    /// every topology that is up.
    #[arg(long, short = 'n')]
    name: Option<String>,
}

impl Select {
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
                None => bail!("topology {name:?} is not up (bring it up with `vethctl up`)"),
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
        Command::Up { topology } => {
            let (topology, text) = match &topology {
                Some(path) => read_topology(path)?,
                None => (Topology::default_topology(), DEFAULT_TOPOLOGY.to_string()),
            };
            apply::up(&topology, &text).await?;
            println!(
                "topology {:?} is up: {} pods, mode {} (see `vethctl status -n {0}`)",
                topology.name,
                topology.pods.len(),
                topology.mode
            );
        }
        Command::Down { select } => {
            let name = select
                .name()?
                .unwrap_or_else(|| Topology::default_topology().name);
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
        Command::Stats { select, json } => {
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
