//! Developer tasks for this workspace, run as `cargo xtask <task>`.

mod bench;
mod checks;
mod cmd;
mod demo;
mod demo_etcd;
mod demo_nodes;
#[cfg(test)]
mod fn_length;
mod image;
mod setup;
mod soak;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for the veth eBPF workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing Debian packages (those of the demo and of the tests)
    /// and bpf-linker, and mount bpffs (needs root).
    Setup,
    /// Set up, then build the whole workspace.
    Build,
    /// Set up, then run rustfmt, clippy and the test suite.
    Test {
        /// Extra arguments for the test binaries, e.g. `cargo xtask test -- --nocapture`.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Set up, bring up the demo topology and send traffic through it.
    Demo {
        /// Instead, a cluster of this many nodes on this machine (one
        /// namespace each, pods bridged, VXLAN between nodes); pings across
        /// nodes.
        #[arg(long, value_name = "N")]
        nodes: Option<u32>,
        /// Instead, a cluster kept in etcd: a private etcd, `vethctl cluster
        /// init`, N nodes (default 3) each with an agent told only the etcd
        /// endpoint and its name, a pod per node added through veth-cni;
        /// pings across nodes and leaves it running.
        #[arg(long)]
        etcd: bool,
        /// With --etcd: how the nodes are joined (host-gw, vxlan, ebpf,
        /// ebpf-vxlan).
        #[arg(long, value_name = "MODE", default_value = "ebpf", requires = "etcd")]
        cross_node: String,
        /// With --etcd: take the demo's cluster away (pods, agents, nodes,
        /// etcd and its data).
        #[arg(long, requires = "etcd", conflicts_with = "nodes")]
        down: bool,
    },
    /// Build the node image (`localhost/vethctl:VERSION` and
    /// `:VERSION-COMMIT`) with podman FROM scratch, nothing pulled: vethctl,
    /// veth-cni, the reference plugins loopback, portmap, bandwidth and
    /// host-local, and the libraries they load; saved as the OCI archive
    /// target/image/vethctl.oci.tar. Same binaries, same image ID.
    Image,
    /// The CNI path under churn, crashes and mode changes for a long time
    /// (needs root): ADD/DEL cycles through veth-cni with the agent
    /// running, kill -9 of the plugin, `mode set` and a map-layout change,
    /// traffic between two long-lived pods; reports pods cut off,
    /// duplicate addresses, leaks, lost datagrams, the agent's RSS and
    /// fds, ADD/DEL p50/p99 by live pods, each target PASS or MISS.
    Soak {
        /// ADD/DEL cycles (pods added and deleted) [default: 4000;
        /// --quick: 300].
        #[arg(long)]
        cycles: Option<usize>,
        /// Pods added or deleted at once.
        #[arg(long, default_value_t = 8)]
        width: usize,
        /// Most live pods: the churn climbs through 10, 100, 500 and 1,000
        /// up to this [default: 1000; --quick: 40].
        #[arg(long)]
        max_pods: Option<usize>,
        /// Percent of ADD and DEL executions killed with SIGKILL at a
        /// random moment.
        #[arg(long, default_value_t = 8.0)]
        kill_percent: f64,
        /// Datagrams per second between the long-lived pods.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seed of the random choices (printed; default: the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// What CI runs: 300 cycles, at most 40 live pods, under a minute
        /// on an idle machine; fails only when a correctness target is
        /// missed, never on timing.
        #[arg(long)]
        quick: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (needs root; traffic stays in the benchmark's namespaces).
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The redirect path with 2, 100 and 1,000 pods present: does its cost
    /// stay flat? (TCP/UDP request/response, 64-byte UDP rate.)
    Scale {
        /// Pods per topology, one topology per size.
        #[arg(long, value_delimiter = ',', default_value = "2,100,1000")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 4)]
        seconds: u64,
    },
    /// Pod start: CNI ADD and DEL latency of veth-cni (tc; built-in IPAM
    /// and host-local) beside the reference bridge and ptp plugins
    /// (host-local), one at a time and concurrently, interleaved; then
    /// RunPodSandbox and Stop+Remove through containerd's CRI (veth-cni
    /// against bridge).
    Cni {
        /// Pods per plugin, each added and deleted once one at a time and
        /// once concurrently (--quick: at most 20); the containerd part
        /// starts and removes as many per network (--quick: 10).
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Plugin executions in flight at once in the concurrent half.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Pods per round: every plugin adds and deletes this many before
        /// the next round (--quick: at most 10).
        #[arg(long, default_value_t = 40)]
        batch: usize,
        /// Few pods, short rounds, no profile unless --profile: a smoke
        /// test that runs in about a minute (half of it the containerd
        /// part).
        #[arg(long)]
        quick: bool,
        /// Also trace a few ADDs and DELs with strace to show where the
        /// time goes (done anyway when a target is missed, except --quick).
        #[arg(long)]
        profile: bool,
    },
    /// How long `vethctl mode set` holds a CNI network (every ADD and DEL
    /// waits meanwhile) with --pods endpoints attached through veth-cni,
    /// for each transition of the soak's mode walk, with its slowest steps.
    ModeSet {
        /// Endpoints attached before the mode changes (1 to 1000).
        #[arg(long, default_value_t = 500)]
        pods: usize,
        /// ADDs in flight at once while attaching them.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Print the transitions as JSON.
        #[arg(long)]
        json: bool,
        /// Run the vethctl and veth-cni of this directory (another build,
        /// to compare) instead of building this checkout's.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// A cluster kept in etcd at scale, by simulation: N node records (no
    /// dataplane behind them) in a private etcd, ONE real agent in a node
    /// namespace wiring its node to them: initial convergence, nodes
    /// joining and lost one at a time (p50/p99/max, seen in the node's
    /// routes), the agent's RSS and CPU, etcd's keys and bytes per node.
    ClusterScale {
        /// Simulated nodes, one private etcd and agent per size.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        nodes: Vec<usize>,
        /// Nodes joining one at a time, each followed by a node lost.
        #[arg(long, default_value_t = 50)]
        joins: usize,
        /// The cluster's cross_node: host-gw or ebpf (ebpf is timed to
        /// its routes too, written just before its maps).
        #[arg(long, default_value = "host-gw")]
        mode: String,
        /// What CI runs: 100 nodes, 10 joins, under 2 minutes; fails only
        /// on an error (an agent that stops, a route that never comes),
        /// never on a timing.
        #[arg(long)]
        quick: bool,
        /// Run the vethctl of this directory (another build, to compare)
        /// instead of building this checkout's.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Control plane: up/down of 10, 100, 500 pods; adding one pod.
    Control {
        /// Topology sizes to bring up and down.
        #[arg(long, value_delimiter = ',', default_value = "10,100,500")]
        sizes: Vec<usize>,
        /// Pods to add one at a time to a running 100-pod topology.
        #[arg(long, default_value_t = 10)]
        adds: usize,
    },
    /// Every path side by side (loopback, pair, bridge, routed, tc, xdp):
    /// request/response latency, bulk TCP, 64-byte UDP rate, CPU cost.
    Paths {
        /// Interleaved rounds per path and workload.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Pods in the tc and xdp topologies, so their maps hold this many
        /// endpoints (2 to 1000; --quick uses 2).
        #[arg(long, default_value_t = 1000)]
        endpoints: usize,
        /// Only these workloads (comma-separated: tcp_rr, tcp_rr_same_cpu,
        /// udp_rr, udp_rr_same_cpu, tcp_crr, tcp_crr_same_cpu, tcp_bulk,
        /// tcp_bulk_per_cpu, udp_64b_rate). Default: all of them.
        #[arg(long, value_delimiter = ',', value_parser = parse_workload)]
        workloads: Vec<veth_bench::Workload>,
        /// One short round: fails only if a path carries no traffic.
        #[arg(long)]
        quick: bool,
    },
    /// Pods on different nodes: the four cross-node modes (host-gw, ebpf,
    /// vxlan, ebpf-vxlan) side by side, one two-node lab each, with the
    /// same workloads as `paths` and issue 20's targets judged on paired
    /// per-round ratios (ebpf ÷ host-gw, ebpf-vxlan ÷ vxlan).
    CrossNode {
        /// Interleaved rounds per mode and workload.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// One short round of three workloads: fails only if a mode
        /// carries no traffic, never on a timing.
        #[arg(long)]
        quick: bool,
    },
    /// What changes cost running traffic: datagrams lost and TCP
    /// connections broken across an agent kill -9, program reloads and
    /// every `mode set` transition; with --cross-node, between pods on two
    /// nodes of a lab across every `cross_node` transition, a node added,
    /// a node dying and removed, and agent restarts.
    Disruption {
        /// Datagrams per second of the sequence-numbered UDP stream.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Long-lived TCP connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Milliseconds of traffic measured after each event (a quarter
        /// of it before).
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
        /// Modes whose transitions are measured, each ordered pair once;
        /// the first is where it starts and ends. Default: tc, xdp, routed,
        /// bridge, pair; with --cross-node host-gw, ebpf, vxlan, ebpf-vxlan
        /// (--quick: host-gw, ebpf).
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Pods on two nodes of a lab of its own (issue 20's live changes);
        /// exits 1 when host-gw <-> ebpf or a node added or removed loses
        /// or breaks anything.
        #[arg(long)]
        cross_node: bool,
        /// With --cross-node: host-gw -> ebpf -> host-gw only and windows
        /// of 500 ms (under a minute).
        #[arg(long, requires = "cross_node")]
        quick: bool,
    },
    /// Per-packet cost of the per-pair counters: counters on vs compiled out.
    Counting {
        /// Interleaved rounds per variant.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Seconds of 64-byte UDP flood per round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Per-packet cost of the security checks: the programs run on a
    /// 64-byte frame with BPF_PROG_TEST_RUN, checks on vs compiled out.
    Checks {
        /// Interleaved rounds per variant (each of 40,000 runs).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
}

// Printed by hand because returning the error from `main` adds a backtrace
// whenever RUST_BACKTRACE is set, burying the one line that matters.
fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(setup::Needs::Everything),
        Task::Build => build(),
        Task::Test { test_args } => checks::run(&test_args),
        Task::Demo {
            etcd: true,
            down: true,
            ..
        } => demo_etcd::down(),
        Task::Demo {
            etcd: true,
            nodes,
            cross_node,
            ..
        } => demo_etcd::run(nodes.unwrap_or(3), &cross_node),
        Task::Demo { nodes: None, .. } => demo::run(),
        Task::Demo { nodes: Some(n), .. } => demo_nodes::run(n),
        Task::Image => image::run(),
        Task::Soak {
            cycles,
            width,
            max_pods,
            kill_percent,
            rate,
            seed,
            quick,
            json,
        } => soak::run(&soak::Options {
            cycles,
            width,
            quick,
            json,
            max_pods,
            kill_percent,
            seed,
            rate,
        }),
        Task::Bench {
            bench: Bench::Counting { rounds, seconds },
        } => bench::counting::run(rounds, seconds),
        Task::Bench {
            bench:
                Bench::Disruption {
                    rate,
                    connections,
                    settle_ms,
                    modes,
                    cross_node,
                    quick,
                },
        } => bench_disruption(rate, connections, settle_ms, modes, cross_node, quick),
        Task::Bench {
            bench: Bench::Checks { rounds },
        } => bench::checks::run(rounds),
        Task::Bench {
            bench:
                Bench::Cni {
                    pods,
                    parallel,
                    batch,
                    quick,
                    profile,
                },
        } => bench::cni::run(&bench::cni::Options {
            pods,
            parallel,
            batch,
            quick,
            profile,
        }),
        Task::Bench {
            bench:
                Bench::ModeSet {
                    pods,
                    parallel,
                    json,
                    bin_dir,
                },
        } => bench::mode_set::run(pods, parallel, json, bin_dir),
        Task::Bench {
            bench:
                Bench::ClusterScale {
                    nodes,
                    joins,
                    mode,
                    quick,
                    bin_dir,
                },
        } => bench::cluster_scale::run(&bench::cluster_scale::Options {
            nodes,
            joins,
            mode,
            quick,
            bin_dir,
        }),
        Task::Bench {
            bench: Bench::Control { sizes, adds },
        } => bench::control::run(&sizes, adds),
        Task::Bench {
            bench:
                Bench::Scale {
                    sizes,
                    rounds,
                    seconds,
                },
        } => bench::paths::scale(&sizes, rounds, seconds),
        Task::Bench {
            bench:
                Bench::Paths {
                    rounds,
                    seconds,
                    endpoints,
                    workloads,
                    quick,
                },
        } => bench::paths::run(&bench::paths::Options {
            rounds,
            seconds,
            endpoints,
            workloads,
            quick,
        }),
        Task::Bench {
            bench:
                Bench::CrossNode {
                    rounds,
                    seconds,
                    quick,
                },
        } => bench::cross_node::run(&bench::cross_node::Options {
            rounds,
            seconds,
            quick,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bench disruption`, on one node or (`cross_node`) across nodes.
fn bench_disruption(
    rate: u64,
    connections: usize,
    settle_ms: u64,
    modes: Vec<String>,
    cross_node: bool,
    quick: bool,
) -> Result<()> {
    let or = |default: &[&str]| {
        if modes.is_empty() {
            default.iter().map(|m| m.to_string()).collect()
        } else {
            modes.clone()
        }
    };
    if !cross_node {
        return bench::disruption::run(&bench::disruption::Options {
            rate,
            connections,
            settle_ms,
            modes: or(&["tc", "xdp", "routed", "bridge", "pair"]),
        });
    }
    let options = bench::disruption_nodes::Options {
        rate,
        connections,
        settle_ms: if quick { settle_ms.min(500) } else { settle_ms },
        modes: if quick {
            or(&["host-gw", "ebpf"])
        } else {
            or(&bench::disruption_nodes::MODES)
        },
    };
    bench::disruption_nodes::run(&options, quick)
}

fn build() -> Result<()> {
    setup::run(setup::Needs::Demo)?;
    cmd::run(cmd::cargo().args(["build", "--workspace"]))
}

fn parse_workload(name: &str) -> Result<veth_bench::Workload, String> {
    veth_bench::Workload::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = veth_bench::Workload::ALL.iter().map(|w| w.name()).collect();
        format!("unknown workload {name:?}; one of: {}", names.join(", "))
    })
}
