//! The `vethctl` commands: argument parsing and composition of the library,
//! no logic of their own.

use std::{
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{
    apply, endpoint,
    model::{
        too_large, validate_topology_name, with_mode, Mode, Topology, DEFAULT_TOPOLOGY,
        MAX_TOPOLOGY_BYTES,
    },
    netlink::Host,
    observe::{
        self, rates, summary::Summary, table::Width, trace, StatsReport, StatusReport, Unreadable,
    },
    preflight, privileges,
    state::{self, recorded_topologies, StateDir},
};

/// Pods in network namespaces, wired five ways (pair, bridge, routed, tc,
/// xdp) and switchable live; in the eBPF modes frames move between pods
/// with bpf_redirect_peer or an XDP redirect, bypassing bridge and host stack.
#[derive(Debug, Parser)]
#[command(name = "vethctl", version, about, long_about = None)]
pub struct Cli {
    /// Act for node NODE of a lab on this machine: a network namespace
    /// made with `ip netns add NODE`. Same as running the command under
    /// `ip netns exec NODE`: the node's own state, pins and pods.
    #[arg(long, global = true, value_name = "NODE")]
    node: Option<String>,
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
        /// Topology description (TOML); see docs/topology.md for the format. A
        /// cluster file (with `[[nodes]]`) without --cluster-node brings up
        /// the whole cluster on this machine, one namespace per node.
        #[arg(long, short = 't', value_name = "FILE")]
        topology: Option<PathBuf>,
        /// Bring up only node NAME's part of the cluster file, here (run it
        /// on that node).
        #[arg(long, value_name = "NAME", requires = "topology")]
        cluster_node: Option<String>,
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
        /// One node of a cluster: on the machine of a lab, that node and
        /// its namespace; elsewhere, this node's part.
        #[arg(long, value_name = "NAME")]
        cluster_node: Option<String>,
    },
    /// Show pods, their addresses and endpoint state (`-o wide`: both ends
    /// of each pair, MACs and the programs attached), and a last line that
    /// counts them by state (`3 pods: 3 ready`).
    Status {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        output: Output,
        /// Exit with status 5, naming them on stderr, when a pod is not
        /// ready or a topology cannot be read (for health checks).
        #[arg(long)]
        check: bool,
    },
    /// Show per-pair counters: redirected, passed to the host stack, dropped.
    Stats {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        output: Output,
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
        /// With a cluster file: node NAME's part (run it on that node).
        #[arg(long, value_name = "NAME", requires = "topology")]
        cluster_node: Option<String>,
        /// Print JSON: the topology, its mode and the steps, each with its
        /// kind (`"step"`), its fields and its text.
        #[arg(long)]
        json: bool,
    },
    /// Measure the path between two pods of a topology that is up:
    /// request/response latency (sockperf), connection rate (built in),
    /// bulk TCP and 64-byte UDP rate (iperf3), in interleaved rounds, with
    /// what the dataplane counted and the program's time per run.
    ///
    /// Client and server run inside the pods' namespaces, pinned to CPU 1
    /// and CPU 0 (or both to CPU 1 for `_same_cpu` workloads). Needs
    /// sockperf and iperf3 installed.
    Bench(BenchArgs),
    /// Switch a live topology between wiring modes.
    Mode {
        #[command(subcommand)]
        action: ModeAction,
    },
    /// The node's daemon: keeps endpoints true to their veths and serves
    /// Prometheus metrics read from the pinned maps at each scrape, with
    /// /healthz and /readyz on the same listener. One per node.
    Agent(AgentArgs),
    /// Install the CNI plugin (`veth-cni`) and a configuration list for a
    /// container runtime (containerd, CRI-O, podman), as Kubernetes node
    /// set-up does.
    ///
    /// Both files are replaced atomically; the list says cniVersion 1.0.0
    /// with cniVersions ["1.0.0", "1.1.0"], so runtimes on older and newer
    /// libcni both use it. It is validated as the plugin would first. On a
    /// node of a cluster kept in etcd, `--cluster-node NAME` installs only
    /// the plugin: the node's agent writes the list from its lease.
    InstallCni(InstallCni),
    /// Remove the plugin and the configuration list `install-cni` wrote.
    ///
    /// Each file goes only if its content shows it is ours (the plugin's
    /// marker; the list exactly as written, naming veth-cni), never for its
    /// name alone, and nothing goes while the network still has pods (drain
    /// the node first). Networks that are up and their pins stay: `vethctl
    /// down -n NAME` removes them.
    UninstallCni(UninstallCni),
    /// Print a completion script for SHELL (bash, elvish, fish, powershell,
    /// zsh), e.g. `vethctl completions bash >
    /// /usr/share/bash-completion/completions/vethctl`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `vethctl man | man -l -`.
    Man,
    /// Follow a sampled stream of flow events from the programs.
    ///
    /// Tracing costs nothing while nobody listens; it switches itself off a
    /// few seconds after the listener goes away, even after `kill -9`.
    /// On a lab's machine, `-n LAB` traces every node of the lab.
    Trace(TraceArgs),
    /// Print the metrics once, as the agent's /metrics serves them, read
    /// from the pinned maps: for a textfile collector, or a look without
    /// an agent. On a lab's machine every node's series too, labelled
    /// `node`.
    Metrics {
        /// OpenMetrics instead of the Prometheus text format 0.0.4.
        #[arg(long)]
        openmetrics: bool,
        /// Drop reasons per pod as well as per network.
        #[arg(long)]
        per_pod_drops: bool,
    },
    /// A cluster whose nodes find each other through etcd: its settings
    /// (`init`) and what its nodes hold (`status`). Each node joins with
    /// `vethctl agent --cluster ENDPOINTS --cluster-node NAME`.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Store the cluster's settings in etcd: a cluster file without
    /// `[[nodes]]` (name, mode, cross_node, cluster_cidr, cluster_cidr6,
    /// node_prefix_len, [underlay] vni, port, mtu; see docs/etcd.md).
    /// The same settings again change nothing; different ones are
    /// refused, naming the first key that differs.
    Init {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The settings file (TOML).
        #[arg(long, short = 't', value_name = "FILE")]
        topology: PathBuf,
    },
    /// Show the cluster's settings and nodes: alive or not, pod ranges,
    /// underlay address, agent.
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where etcd is and how to reach it.
#[derive(Debug, Args)]
struct EtcdArgs {
    /// etcd's client endpoints, comma-separated: http://HOST:2379,
    /// https://HOST:2379 (TLS) or one unix:///PATH socket.
    #[arg(long = "cluster", value_name = "ENDPOINTS")]
    endpoints: Option<String>,
    /// Which cluster in that etcd (default: the only one there).
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// The CA certificate that signed etcd's (PEM), for https://.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM), when etcd wants one (--client-cert-auth).
    #[arg(long, value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The options, if `--cluster` was given.
    fn options(&self) -> Option<crate::etcd::EtcdOptions> {
        Some(crate::etcd::EtcdOptions {
            endpoints: self.endpoints.clone()?,
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        })
    }

    fn required(&self) -> Result<crate::etcd::EtcdOptions> {
        self.options().ok_or_else(|| {
            crate::Error::InvalidConfig {
                field: "--cluster".into(),
                message: "required: etcd's client endpoints, e.g. --cluster http://10.0.0.1:2379"
                    .into(),
            }
            .into()
        })
    }
}

// `vethctl bench`: which pods, which workloads, how long.
#[derive(Debug, Args)]
struct BenchArgs {
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
    // Wide adds p50, retransmits, loss and CPU; JSON has every sample.
    #[command(flatten)]
    output: Output,
}

// `vethctl agent`: where it listens, what it exports, what it brings up.
#[derive(Debug, Args)]
struct AgentArgs {
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
    /// agent per simulated node gives each its own. Default:
    /// /run/vethctl/agent.lock, or in a node namespace (`ip netns exec
    /// NODE vethctl agent`) the node's own under /run/vethctl/_nodes/.
    #[arg(long, value_name = "FILE")]
    lock_file: Option<PathBuf>,
    /// Bring up the network of this CNI configuration list at start
    /// (programs loaded before the first pod); repeatable.
    #[arg(long, value_name = "FILE")]
    cni_conf: Vec<PathBuf>,
    /// Keep only this network's endpoints current, and serve only its
    /// metrics and readiness (with the networks of --cni-conf);
    /// repeatable. Without it: every network of the node, present and
    /// future. Agents of disjoint networks may run side by side, each
    /// with its own --lock-file.
    #[arg(long = "network", value_name = "NAME", value_parser = parse_network_name)]
    networks: Vec<String>,
    /// Join the cluster kept in etcd at --cluster as node --cluster-node:
    /// lease its pod ranges, keep its record alive, and write the CNI
    /// configuration list for its range into --cni-conf-dir.
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This node's name in the cluster (with --cluster; 1 to 12 lowercase
    /// letters, digits and '-').
    #[arg(long, value_name = "NAME", requires = "endpoints")]
    cluster_node: Option<String>,
    /// The interface on the network the nodes share, whose addresses the
    /// other nodes reach this one at (default: the settings' [underlay]
    /// interface, eth0).
    #[arg(long, value_name = "IFACE", requires = "endpoints")]
    underlay: Option<String>,
    /// Where the CNI configuration list for the node's range goes.
    #[arg(long, default_value = "/etc/cni/net.d", value_name = "DIR")]
    cni_conf_dir: PathBuf,
    /// Seconds the node's record outlives its agent (its liveness lease).
    #[arg(long, default_value_t = crate::model::registry::DEFAULT_LIVENESS_SECONDS, value_name = "SECONDS")]
    liveness_ttl: i64,
    /// Pods of this node's own beside the runtime's (with --cluster): FILE
    /// holds `[[pods]]` entries written as the cluster file's
    /// `[[nodes.pods]]` (`name`, `mtu`; no address: they get the lowest
    /// free ones of the range the node leases).
    #[arg(long, value_name = "FILE", requires = "endpoints")]
    pods: Option<PathBuf>,
    /// Log lines at this level and above (error, warn, info, debug);
    /// without it, RUST_LOG's level if set, else info. Each line on
    /// stderr has an RFC 3339 UTC timestamp and the level.
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level)]
    log_level: Option<veth_cni_protocol::LogLevel>,
}

// `vethctl trace`: which frames, how many, in what form.
#[derive(Debug, Args)]
struct TraceArgs {
    #[command(flatten)]
    select: Select,
    /// Only this pod's pair (frames it sends, receives, or is redirected).
    #[arg(long, short = 'p')]
    pod: Option<String>,
    /// Trace about one frame in N (1 = every frame).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    sample: u32,
    /// Stop after this many events (at least 1) that pass the filters.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    filter: TraceFilter,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

// How `status`, `stats` and `bench` print their report (a plain comment: the
// commands' own help stays theirs).
#[derive(Debug, Args)]
struct Output {
    /// table: the main columns, within 80 characters; wide: every column,
    /// nothing shortened; json: everything (documented in docs/cli.md).
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, value_name = "FORMAT")]
    output: Format,
    /// The same as `-o json`.
    #[arg(long, conflicts_with = "output")]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Wide,
    Json,
}

impl Output {
    fn json(&self) -> bool {
        self.json || self.output == Format::Json
    }

    fn width(&self) -> Width {
        match self.output {
            Format::Wide => Width::Wide,
            Format::Table | Format::Json => Width::Fit,
        }
    }
}

/// `trace` filters: each flag may be repeated (any of its values);
/// different flags must all match.
#[derive(Debug, Args)]
#[command(next_help_heading = "Filters (applied to the sampled events)")]
struct TraceFilter {
    /// Only frames with this verdict: redirected, remote (sent to another
    /// node by the programs), passed or dropped.
    #[arg(long, value_name = "VERDICT", value_parser = parse_verdict)]
    verdict: Vec<trace::filter::Verdict>,
    /// Only frames dropped for this reason (a name as in `stats`, e.g. spoofed_ipv4).
    #[arg(long, value_name = "REASON", value_parser = trace::filter::parse_drop_reason)]
    drop_reason: Vec<veth_common::DropReason>,
    /// Only frames from or to this address or CIDR (IPv4 or IPv6).
    #[arg(long, value_name = "ADDR|CIDR", value_parser = trace::filter::parse_address)]
    ip: Vec<ipnet::IpNet>,
    /// Only frames from this address or CIDR.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = trace::filter::parse_address)]
    src_ip: Vec<ipnet::IpNet>,
    /// Only frames to this address or CIDR.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = trace::filter::parse_address)]
    dst_ip: Vec<ipnet::IpNet>,
    /// Only TCP/UDP frames from or to this port.
    #[arg(long, value_name = "PORT", value_parser = trace::filter::parse_port)]
    port: Vec<u16>,
    /// Only TCP/UDP frames from this port.
    #[arg(long, value_name = "PORT", value_parser = trace::filter::parse_port)]
    src_port: Vec<u16>,
    /// Only TCP/UDP frames to this port.
    #[arg(long, value_name = "PORT", value_parser = trace::filter::parse_port)]
    dst_port: Vec<u16>,
    /// Only this transport protocol: tcp, udp, icmp or icmpv6.
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    protocol: Vec<trace::filter::Protocol>,
}

fn parse_verdict(s: &str) -> Result<trace::filter::Verdict, String> {
    s.parse()
}

fn parse_protocol(s: &str) -> Result<trace::filter::Protocol, String> {
    s.parse()
}

impl From<TraceFilter> for trace::Filter {
    fn from(f: TraceFilter) -> trace::Filter {
        trace::Filter {
            verdicts: f.verdict,
            drop_reasons: f.drop_reason,
            addresses: f.ip,
            src_addresses: f.src_ip,
            dst_addresses: f.dst_ip,
            ports: f.port,
            src_ports: f.src_port,
            dst_ports: f.dst_port,
            protocols: f.protocol,
        }
    }
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
    /// tc, xdp, routed or bridge (default: tc, or the mode of the cluster
    /// node's part --name names).
    #[arg(long)]
    mode: Option<String>,
    /// This node's IPv4 pod range; optional when --name names a cluster
    /// node's part up on this node (`vethctl up -t CLUSTER --cluster-node
    /// NODE`): its pod range. None with --cluster-node.
    #[arg(long, value_name = "CIDR")]
    subnet: Option<String>,
    /// This node's IPv6 pod range (dual stack; without --subnet, a cluster
    /// node part's IPv6 pod range).
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
    /// The plugin's log file (absolute path, created 0600, appended to);
    /// without it the plugin logs only errors, on stderr.
    #[arg(long, value_name = "FILE")]
    log_file: Option<String>,
    /// What goes into --log-file: error (default), warn, info or debug.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Copy the plugins the list needs (loopback, --chain, a delegated
    /// --ipam) from DIR into --bin-dir where it lacks them; a plugin
    /// already there is left as it is. The image's are in /usr/lib/cni.
    #[arg(long, value_name = "DIR")]
    plugins_from: Option<PathBuf>,
    /// This machine is node NAME of a cluster kept in etcd: install only
    /// the plugin (and, with --plugins-from, loopback); the list is
    /// written by the node's agent (`vethctl agent --cluster ENDPOINTS
    /// --cluster-node NAME --cni-conf-dir DIR`) for the pod ranges it
    /// leases, and pods are added only while it holds the node's lease.
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "subnet", "subnet6", "mode", "ipam", "mtu", "chain", "log_file", "log_level", "name",
    ])]
    cluster_node: Option<String>,
}

#[derive(Debug, Args)]
struct UninstallCni {
    /// The runtime's CNI plugin directory.
    #[arg(long, default_value = "/opt/cni/bin", value_name = "DIR")]
    bin_dir: PathBuf,
    /// The runtime's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d", value_name = "DIR")]
    conf_dir: PathBuf,
    /// File name of the list `install-cni` wrote.
    #[arg(long, default_value = "10-vethctl.conflist", value_name = "FILE")]
    conf_file: String,
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
    /// wiring stays. Connections may pause while it switches. A CNI
    /// network's endpoints are rewired too (not for pair); its next ADD
    /// converges it back to the mode of its CNI configuration.
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
        if let Some((cluster, _)) = read_cluster(self.topology.as_deref())? {
            return Ok(Some(cluster.name));
        }
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
    let cli = parse();
    // Before the runtime starts any thread (see `enter_node`).
    if let Some(node) = &cli.node {
        if let Err(e) = crate::netlink::netns::enter_node(node) {
            let _ = writeln!(io::stderr(), "error: {e:#}");
            return std::process::ExitCode::from(crate::Error::kind_of(&e).exit_code());
        }
    }
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
        Err(e) if e.is::<NotReady>() => {
            let _ = writeln!(io::stderr(), "vethctl: {e}");
            std::process::ExitCode::from(NOT_READY_EXIT)
        }
        Err(e) => {
            // Not eprintln!, which panics when stderr is gone too.
            let _ = writeln!(io::stderr(), "error: {e:#}");
            std::process::ExitCode::from(crate::Error::kind_of(&e).exit_code())
        }
    }
}

/// The command line, with the version texts that are known only at run
/// time (the eBPF object's digest).
fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The clap command with its version texts, as parsing, completions and
/// the man page see it.
fn command() -> clap::Command {
    Cli::command()
        .version(crate::version::short())
        .long_version(crate::version::long())
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
        Command::Metrics { .. } => ("vethctl metrics", privileges::READ),
        Command::Agent(AgentArgs {
            bpf_stats,
            cni_conf,
            ..
        }) => (
            "vethctl agent",
            if !cni_conf.is_empty() {
                privileges::CHANGE
            } else if *bpf_stats {
                privileges::BPF_STATS
            } else {
                privileges::READ
            },
        ),
        // Reads the networks' endpoint records (root's).
        Command::UninstallCni(_) => ("vethctl uninstall-cni", privileges::READ),
        Command::InstallCni(_)
        | Command::Completions { .. }
        | Command::Man
        | Command::Cluster { .. } => return None,
    })
}

/// Whether `command` uses the kernel's eBPF hooks, so an old kernel is
/// refused first; taking vethctl off a node must work on any kernel.
fn needs_kernel(command: &Command) -> bool {
    !matches!(
        command,
        Command::UninstallCni(_)
            | Command::InstallCni(_)
            | Command::Completions { .. }
            | Command::Man
            | Command::Cluster { .. }
    )
}

pub async fn run(cli: Cli) -> Result<()> {
    if let Some((name, caps)) = needs(&cli.command) {
        if needs_kernel(&cli.command) {
            crate::kernel::check()?;
        }
        privileges::require(name, caps)?;
        state::secure_state_root()?;
    }
    match cli.command {
        Command::Up {
            topology,
            cluster_node,
            repair,
            timings,
        } => up(topology, cluster_node, apply::UpOptions { repair, timings }).await,
        Command::Down {
            select,
            cluster_node,
        } => down(&select, cluster_node.as_deref()).await,
        Command::Status {
            select,
            output,
            check,
        } => status(&select, &output, check).await,
        Command::Stats {
            select,
            output,
            watch: true,
            interval,
            count,
        } => stats_watch(&select, &output, interval, count).await,
        Command::Stats { select, output, .. } => stats(&select, &output).await,
        Command::Plan {
            topology,
            cluster_node,
            json,
        } => plan(topology, cluster_node, json).await,
        Command::Mode {
            action:
                ModeAction::Set {
                    mode,
                    select,
                    timings,
                },
        } => mode_set(&select, mode, timings).await,
        Command::Bench(args) => bench(args).await,
        Command::Agent(args) => agent(args).await,
        Command::Trace(args) => trace_follow(args).await,
        Command::Metrics {
            openmetrics,
            per_pod_drops,
        } => metrics_once(openmetrics, per_pod_drops).await,
        Command::InstallCni(options) => install_cni(options),
        Command::UninstallCni(options) => uninstall_cni(options),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
        Command::Cluster { action } => cluster(action).await,
    }
}

/// The topology file at `path`, or the built-in one.
fn topology_or_default(path: Option<&Path>) -> Result<(Topology, String)> {
    match path {
        Some(path) => read_topology(path),
        None => Ok((Topology::default_topology(), DEFAULT_TOPOLOGY.to_string())),
    }
}

async fn up(path: Option<PathBuf>, node: Option<String>, options: apply::UpOptions) -> Result<()> {
    let topology = match (read_cluster_text(path.as_deref())?, node) {
        // A node's part: the file checked as that node's agent checks it,
        // without making every other node's part.
        (Some((text, _)), Some(node)) => apply::up_cluster_node(&text, &node, options).await?,
        (Some((text, file)), None) => {
            let cluster = parse_cluster(&text, &file)?;
            crate::lab::up(&cluster, &text, options).await?;
            return emit(format_args!(
                "cluster {:?} is up: {} nodes, cross_node {} (see `vethctl status`)\n",
                cluster.name,
                cluster.nodes.len(),
                cluster.cross_node
            ));
        }
        (None, node) => {
            let (topology, text) = node_part_or_topology(path.as_deref(), node)?;
            // Everything that can be refused is, before anything is made.
            preflight::check(&Host::connect()?, &topology).await?;
            apply::up(&topology, &text, options).await?;
            topology
        }
    };
    // A CNI network's file lists no pods: its pods are the runtime's
    // endpoints, counted too (it said "0 pods" beside 902 endpoints).
    let pods = crate::endpoint::with_endpoints(topology.clone()).pods.len();
    let pods = observe::summary::count(pods, "pod", "pods");
    emit(format_args!(
        "topology {:?} is up: {pods}, mode {} (see `vethctl status -n {0}`)\n",
        topology.name, topology.mode
    ))
}

async fn down(select: &Select, node: Option<&str>) -> Result<()> {
    let name = match read_cluster(select.topology.as_deref())? {
        Some((cluster, _)) => cluster.name,
        None => select.name_or_default()?,
    };
    match (crate::lab::is_up(&name), node) {
        (true, None) => {
            crate::lab::down(&name).await?;
            emit(format_args!("cluster {name:?} is down\n"))
        }
        (true, Some(node)) => {
            crate::lab::down_node(&name, node).await?;
            emit(format_args!("node {node:?} of cluster {name:?} is down\n"))
        }
        (false, _) => {
            apply::down(&name).await?;
            crate::node::current().forget_if_empty()?;
            emit(format_args!("topology {name:?} is down\n"))
        }
    }
}

/// A cluster node's part, or a one-node description (the built-in one
/// without a file).
fn node_part_or_topology(
    path: Option<&Path>,
    cluster_node: Option<String>,
) -> Result<(Topology, String)> {
    match (read_cluster(path)?, cluster_node) {
        (Some((cluster, _)), Some(node)) => {
            let (topology, text) = cluster.node_part(&node)?;
            Ok((apply::keeping_recorded(&topology, &text)?, text))
        }
        (Some((cluster, _)), None) => bail!(
            "--cluster-node: {:?} is a cluster file; name the node whose part to plan (its \
             nodes: {})",
            cluster.name,
            cluster
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, Some(_)) => {
            bail!("--cluster-node: the topology file has no [[nodes]]; it is not a cluster file")
        }
        (None, None) => topology_or_default(path),
    }
}

/// The cluster file at `path`, if it is one (it has `[[nodes]]`).
fn read_cluster(path: Option<&Path>) -> Result<Option<(crate::model::cluster::Cluster, String)>> {
    let Some((text, path)) = read_cluster_text(path)? else {
        return Ok(None);
    };
    Ok(Some((parse_cluster(&text, &path)?, text)))
}

/// The text of the file at `path` if it is a cluster file, and its path.
fn read_cluster_text(path: Option<&Path>) -> Result<Option<(String, PathBuf)>> {
    let Some(path) = path else { return Ok(None) };
    let text =
        read_bounded(path).with_context(|| format!("reading topology file {}", path.display()))?;
    Ok(crate::model::cluster::is_cluster(&text).then(|| (text, path.to_path_buf())))
}

fn parse_cluster(text: &str, path: &Path) -> Result<crate::model::cluster::Cluster> {
    crate::model::cluster::Cluster::from_toml(text)
        .with_context(|| format!("invalid cluster file {}", path.display()))
}

async fn status(select: &Select, output: &Output, check: bool) -> Result<()> {
    let host = Host::connect()?;
    let lab = select.name()?.filter(|n| crate::lab::is_up(n));
    let (topologies, unreadable) = match lab {
        Some(_) => Default::default(),
        None => select.recorded()?,
    };
    let mut report = StatusReport {
        topologies: Vec::new(),
        nodes: Vec::new(),
        // A damaged file hides the cluster, not the rest of the status.
        cluster: observe::cluster_sync::of_this_node()
            .inspect_err(|e| log::warn!("vethctl status: the cluster's sync state: {e:#}"))
            .ok()
            .flatten(),
        unreadable,
    };
    for topology in topologies {
        match observe::status(&host, &topology).await {
            Ok(status) => {
                let pods = status
                    .pods
                    .iter()
                    .filter_map(|p| serde_json::to_value(p).ok());
                report
                    .nodes
                    .extend(observe::nodes::of_network(&topology, pods.collect()));
                report.topologies.push(status)
            }
            // One topology's trouble is reported beside the others.
            Err(e) if !select.is_some() => report
                .unreadable
                .push(Unreadable::objects(&topology.name, &e)),
            Err(e) => return Err(e),
        }
    }
    let labs = match lab {
        Some(lab) => vec![lab],
        None if !select.is_some() => crate::lab::recorded_labs(),
        None => Vec::new(),
    };
    report.nodes.extend(observe::nodes::of_labs(&labs));
    let summary = Summary::of(&report);
    print(output.json(), &report, |r| {
        let table = r.to_table(output.width());
        let nodes = match r.nodes.is_empty() {
            true => String::new(),
            false => observe::nodes::table(&r.nodes, output.width()),
        };
        let cluster = r
            .cluster
            .as_ref()
            .map_or_else(String::new, |c| format!("\n{}", c.table(output.width())));
        if r.topologies.is_empty() && r.unreadable.is_empty() && !nodes.is_empty() {
            // A lab's machine: its networks are its nodes'.
            nodes
        } else if r.topologies.is_empty() && r.unreadable.is_empty() {
            // The table already says that no topology is up.
            format!("{table}{cluster}")
        } else {
            format!("{table}{summary}\n{nodes}{cluster}")
        }
    })?;
    if check && !summary.all_ready() {
        return Err(NotReady(summary.problems()).into());
    }
    Ok(())
}

/// `status --check` found something not ready; exit status 5.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotReady(String);

/// Exit status of `status --check` when something is not ready: apart from
/// the failures of [`crate::Error::exit_code`], so a health check can tell
/// "not ready" from "could not look".
const NOT_READY_EXIT: u8 = 5;

async fn stats(select: &Select, output: &Output) -> Result<()> {
    let host = Host::connect()?;
    let lab = select.name()?.filter(|n| crate::lab::is_up(n));
    let (topologies, unreadable) = match lab {
        Some(_) => Default::default(),
        None => select.recorded()?,
    };
    let mut report = StatsReport {
        topologies: Vec::new(),
        nodes: Vec::new(),
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
    let labs = match lab {
        Some(lab) => vec![lab],
        None if !select.is_some() => crate::lab::recorded_labs(),
        None => Vec::new(),
    };
    report.nodes = observe::nodes::stats_of_labs(&labs, output.json(), output.width());
    print(output.json(), &report, |r| {
        let nodes = observe::nodes::stats_tables(&r.nodes);
        match (
            r.topologies.is_empty() && r.unreadable.is_empty(),
            nodes.is_empty(),
        ) {
            // A lab's machine: its networks are its nodes'.
            (true, false) => nodes,
            (_, true) => r.to_table(output.width()),
            (false, false) => format!("{}\n{nodes}", r.to_table(output.width())),
        }
    })
}

async fn stats_watch(
    select: &Select,
    output: &Output,
    interval: f64,
    count: Option<u64>,
) -> Result<()> {
    let options = rates::WatchOptions {
        redraw: io::IsTerminal::is_terminal(&io::stdout()),
        // In range: checked by parse_interval.
        interval: std::time::Duration::from_secs_f64(interval),
        count,
        json: output.json(),
        width: output.width(),
        all: !select.is_some(),
    };
    if let Some(lab) = select.name()?.filter(|n| crate::lab::is_up(n)) {
        return rates::watch_labs(&[lab], &options, &mut Stdout).await;
    }
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
    let labs = crate::lab::recorded_labs();
    if topologies.is_empty() && !select.is_some() && !labs.is_empty() {
        // A lab's machine: its networks are its nodes'.
        return rates::watch_labs(&labs, &options, &mut Stdout).await;
    }
    rates::watch(&host, &topologies, &options, &mut Stdout).await
}

async fn plan(path: Option<PathBuf>, cluster_node: Option<String>, json: bool) -> Result<()> {
    let (topology, _) = node_part_or_topology(path.as_deref(), cluster_node)?;
    // What `up` would refuse, `plan` refuses too.
    preflight::check(&Host::connect()?, &topology).await?;
    let steps = apply::plan(&topology).await?;
    if json {
        return emit(format_args!("{}\n", plan_json(&topology, &steps)?));
    }
    let mut text = format!(
        "plan for topology {:?} (mode {}):\n",
        topology.name, topology.mode
    );
    for step in steps {
        text += &format!("  {step}\n");
    }
    emit(text)
}

/// `plan --json`: `{"topology", "mode", "steps": [{"step", ..., "text"}]}`.
fn plan_json(topology: &Topology, steps: &[crate::plan::Step]) -> Result<String> {
    let steps = steps
        .iter()
        .map(|step| {
            let mut value = serde_json::to_value(step)?;
            value["text"] = step.to_string().into();
            Ok(value)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "topology": topology.name,
        "mode": topology.mode.to_string(),
        "steps": steps,
    }))?)
}

async fn mode_set(select: &Select, mode: Mode, timings: bool) -> Result<()> {
    let name = select.name_or_default()?;
    // The recorded description is read under the lock the change is made
    // under, so nothing recorded meanwhile is lost.
    let mut by_cni = false;
    apply::up_from_record(
        &name,
        |text| {
            let text = text.with_context(|| not_up(&name))?;
            by_cni = crate::cni::network::made_by_cni(&text);
            if by_cni && mode == Mode::Pair {
                anyhow::bail!(
                    "network {name:?} was made by veth-cni, whose endpoints are wired in mode tc, \
                     xdp, routed or bridge; mode pair joins the two pods of a topology file"
                );
            }
            Ok(with_mode(&text, mode)?)
        },
        apply::UpOptions {
            timings,
            ..apply::UpOptions::default()
        },
    )
    .await?;
    if by_cni {
        // Its description is the CNI configuration's, which ADD compares.
        return emit(format_args!(
            "network {name:?} is now in mode {mode}; it was made by veth-cni, and the next ADD \
             converges it back to the mode of its CNI configuration: set \"mode\": \"{mode}\" \
             there to keep this one\n"
        ));
    }
    emit(format_args!("topology {name:?} is now in mode {mode}\n"))
}

async fn bench(args: BenchArgs) -> Result<()> {
    let topology = load_recorded(&args.select.name_or_default()?)?;
    let nth = |i: usize| topology.pods.get(i).map(|p| p.name.clone());
    let options = crate::bench::BenchOptions {
        client: args
            .client
            .or_else(|| nth(0))
            .context("--client: the topology has no pods")?,
        server: args
            .server
            .or_else(|| nth(1))
            .context("--server: the topology has only one pod")?,
        workloads: args.workloads,
        // At most 1000: checked by clap.
        rounds: args.rounds as usize,
        seconds: args.seconds,
    };
    let report = crate::bench::run(&topology, &options).await?;
    print(args.output.json(), &report, |r| {
        crate::bench::table(r, args.output.width())
    })
}

async fn agent(args: AgentArgs) -> Result<()> {
    crate::logging::init_agent(args.log_level);
    let cluster = match (args.etcd.options(), args.cluster_node) {
        (Some(etcd), Some(node)) => Some(crate::etcd::member::JoinOptions {
            etcd,
            cluster: args.etcd.cluster_name.clone(),
            node,
            underlay: args.underlay,
            cni_conf_dir: args.cni_conf_dir,
            liveness_seconds: args.liveness_ttl,
            pods: args.pods,
        }),
        (Some(_), None) => {
            return Err(crate::Error::InvalidConfig {
                field: "--cluster-node".into(),
                message: "required with --cluster: this node's name in the cluster".into(),
            }
            .into())
        }
        (None, _) => None,
    };
    crate::agent::run(crate::agent::AgentOptions {
        cluster,
        listen: args.listen,
        bpf_stats: args.bpf_stats,
        cni_confs: args.cni_conf,
        per_pod_drops: args.per_pod_drops,
        lock_file: args
            .lock_file
            .unwrap_or_else(|| crate::node::current().agent_lock()),
        networks: args.networks,
    })
    .await
}

async fn trace_follow(args: TraceArgs) -> Result<()> {
    if let Some(lab) = args.select.name()?.filter(|n| crate::lab::is_up(n)) {
        let node_args = |lab: &str| trace_args_for_node(lab, &args);
        trace::follow_labs(&[lab], node_args, args.count, &mut Stdout).await?;
        return Ok(());
    }
    let topology = match args.select.name()? {
        Some(name) => load_recorded(&name)?,
        None => Topology::default_topology(),
    };
    let request = trace::TraceRequest {
        pod: args.pod,
        sample_every: args.sample,
        count: args.count,
        filter: args.filter.into(),
        json: args.json,
    };
    let host = Host::connect()?;
    let pods = observe::pods_by_ifindex(&host, &topology).await?;
    trace::follow(&topology, pods, &request, &mut Stdout).await?;
    Ok(())
}

async fn metrics_once(openmetrics: bool, per_pod_drops: bool) -> Result<()> {
    let options = observe::metrics::MetricsOptions {
        bpf_stats: crate::dataplane::bpf_stats_enabled(),
        per_pod_drops,
    };
    let scope = crate::state::Scope::all();
    let text = observe::metrics::exposition(&Host::connect()?, options, &scope, Vec::new()).await?;
    match openmetrics {
        true => emit(format_args!("{text}")),
        false => emit(format_args!("{}", observe::metrics::to_text_format(&text))),
    }
}

/// The arguments that run the trace `a` on a node of the lab `lab`.
fn trace_args_for_node(lab: &str, a: &TraceArgs) -> Vec<String> {
    let mut out: Vec<String> = ["trace", "-n", lab, "--sample", &a.sample.to_string()]
        .map(String::from)
        .into();
    let mut flag = |name: &str, value: String| out.extend([format!("--{name}"), value]);
    if let Some(pod) = &a.pod {
        flag("pod", pod.clone());
    }
    if let Some(count) = a.count {
        flag("count", count.to_string());
    }
    let f = &a.filter;
    f.verdict
        .iter()
        .for_each(|v| flag("verdict", v.name().into()));
    f.drop_reason
        .iter()
        .for_each(|r| flag("drop-reason", r.name().into()));
    for (name, nets) in [("ip", &f.ip), ("src-ip", &f.src_ip), ("dst-ip", &f.dst_ip)] {
        nets.iter().for_each(|n| flag(name, n.to_string()));
    }
    for (name, ports) in [
        ("port", &f.port),
        ("src-port", &f.src_port),
        ("dst-port", &f.dst_port),
    ] {
        ports.iter().for_each(|p| flag(name, p.to_string()));
    }
    f.protocol
        .iter()
        .for_each(|p| flag("protocol", p.name().into()));
    if a.json {
        out.push("--json".into());
    }
    out
}

async fn cluster(action: ClusterAction) -> Result<()> {
    match action {
        ClusterAction::Init { etcd, topology } => {
            let text = read_bounded(&topology)
                .with_context(|| format!("reading settings file {}", topology.display()))?;
            let settings = crate::model::registry::Settings::from_toml(&text)
                .with_context(|| format!("invalid settings file {}", topology.display()))?;
            let client = crate::etcd::Etcd::connect(&etcd.required()?).await?;
            let said = match crate::etcd::cluster::init(&client, &settings).await? {
                crate::etcd::cluster::Init::Stored => "stored in",
                crate::etcd::cluster::Init::Unchanged => "unchanged: already so in",
            };
            emit(format_args!(
                "cluster {:?}: settings {said} etcd at {}; start each node's agent with \
                 `vethctl agent --cluster {} --cluster-node NAME`\n",
                settings.name(),
                client.endpoints(),
                client.endpoints()
            ))
        }
        ClusterAction::Status { etcd, json } => {
            let client = crate::etcd::Etcd::connect(&etcd.required()?).await?;
            let report =
                crate::etcd::cluster::status(&client, etcd.cluster_name.as_deref()).await?;
            print(json, &report, |r| r.to_table())
        }
    }
}

fn install_cni(o: InstallCni) -> Result<()> {
    let plugin = match &o.plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("finding vethctl's own path")?
            .with_file_name(crate::cni::install::PLUGIN_TYPE),
    };
    if let Some(node) = &o.cluster_node {
        return install_cni_for_agent(&o, node, &plugin);
    }
    // A cluster node's part gives what the options leave out.
    let part =
        crate::cni::cluster_node::recorded_part(&o.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Both ranges from the record, or neither (a --subnet alone is IPv4 only).
    let from_part = part.as_ref().filter(|_| o.subnet.is_none());
    let subnet = match (o.subnet, &part) {
        (Some(subnet), _) => subnet,
        (None, Some(part)) => part.pod_cidr.to_string(),
        (None, None) => bail!(
            "--subnet: required (this node's IPv4 pod range), unless --name names a cluster \
             node's part up on this node ({:?} is none), or this machine is a node of a cluster \
             kept in etcd: then give --cluster-node NAME, and the node's agent writes the list",
            o.name
        ),
    };
    let options = crate::cni::install::InstallOptions {
        plugin,
        bin_dir: o.bin_dir,
        conf_dir: o.conf_dir,
        conf_file: o.conf_file,
        name: o.name,
        mode: o
            .mode
            .or_else(|| part.as_ref().map(|p| p.mode.name().to_string()))
            .unwrap_or_else(|| "tc".to_string()),
        ipam: o.ipam,
        subnet,
        subnet6: o
            .subnet6
            .or_else(|| from_part.and_then(|p| p.pod_cidr6).map(|n| n.to_string())),
        mtu: o.mtu,
        chain: o.chain.into_iter().filter(|c| !c.is_empty()).collect(),
        log_file: o.log_file,
        log_level: o.log_level,
        plugins_from: o.plugins_from,
        cluster: None,
    };
    let installed = crate::cni::install::install(&options)?;
    for copied in &installed.copied {
        emit(format_args!("copied {}\n", copied.display()))?;
    }
    emit(format_args!(
        "installed {} and {}; the runtime's next pod uses network {:?} (`vethctl status -n {}`)\n",
        installed.plugin.display(),
        installed.conf.display(),
        options.name,
        options.name
    ))
}

/// `install-cni --cluster-node NAME`: the plugin only; the list is the
/// agent's.
fn install_cni_for_agent(o: &InstallCni, node: &str, plugin: &Path) -> Result<()> {
    crate::model::cluster::validate_node_name("--cluster-node", node)?;
    crate::cni::node_lease::refuse_other_running_node(node)?;
    let (installed, copied) =
        crate::cni::install::install_plugin(plugin, &o.bin_dir, o.plugins_from.as_deref())?;
    for copied in &copied {
        emit(format_args!("copied {}\n", copied.display()))?;
    }
    let list = o.conf_dir.join(&o.conf_file);
    emit(format_args!(
        "installed {}; the list {} is left to node {node:?}'s agent (`vethctl agent --cluster \
         ENDPOINTS --cluster-node {node} --cni-conf-dir {}`), which writes it for the pod ranges \
         it leases; pods are added only while it holds the node's lease\n{}\n",
        installed.display(),
        list.display(),
        o.conf_dir.display(),
        crate::cni::node_lease::describe_list(&list, node)
    ))
}

fn uninstall_cni(o: UninstallCni) -> Result<()> {
    let removed = crate::cni::uninstall::uninstall(&crate::cni::uninstall::UninstallOptions {
        bin_dir: o.bin_dir,
        conf_dir: o.conf_dir,
        conf_file: o.conf_file,
    })?;
    if removed.is_empty() {
        return emit("nothing to remove: neither file is there\n");
    }
    let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    emit(format_args!(
        "removed {}; networks that are up stay until `vethctl down -n NAME`\n",
        names.join(" and ")
    ))
}

fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "vethctl", &mut script);
    emit(String::from_utf8_lossy(&script))
}

/// The manual page: the top-level command, then each subcommand's page
/// appended as a section, so one `vethctl.1` documents them all.
fn man() -> Result<()> {
    let command = command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("vethctl {}", sub.get_name());
        let sub = sub.clone().name(&name).display_name(&name);
        page.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        let man = clap_mangen::Man::new(sub);
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
    }
    emit(String::from_utf8_lossy(&page))
}

fn print<T: serde::Serialize>(json: bool, report: &T, table: impl Fn(&T) -> String) -> Result<()> {
    if json {
        emit(format_args!("{}\n", serde_json::to_string_pretty(report)?))
    } else {
        emit(table(report))
    }
}

fn parse_log_level(s: &str) -> Result<veth_cni_protocol::LogLevel, String> {
    veth_cni_protocol::LogLevel::parse(s).ok_or_else(|| {
        format!(
            "{s:?} is not a log level; use {}",
            veth_cni_protocol::LogLevel::choices()
        )
    })
}

fn parse_network_name(s: &str) -> Result<String, String> {
    validate_topology_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}
