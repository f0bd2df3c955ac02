//! `cargo xtask bench cross-node`: the four cross-node modes side by side,
//! in one run.
//!
//! One two-node lab per mode, all up at once (as `bench paths` keeps one
//! topology per mode): switching a lab's `cross_node` between measurements
//! would put a transition and its clean-up into some rounds and not others,
//! and four labs cost only their namespaces. The client pod is on node n1,
//! the server on n2; the host-gw lab also has a server on n1, the
//! intra-node tc path, as the ceiling without a second node. Rounds
//! interleave the modes (rotated each round) and the verdicts use per-round
//! paired ratios: `ebpf` ÷ `host-gw` and `ebpf-vxlan` ÷ `vxlan`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use veth_bench::{interrupt, Sample, Target, Workload};

use super::{
    median,
    paths::run_rounds,
    pin_probe, prepare,
    report::{self, Compare},
    BpfStats,
};
use crate::cmd;

/// The modes, in the report's order, each with its lab's number.
const MODES: [&str; 4] = ["host-gw", "ebpf", "vxlan", "ebpf-vxlan"];

/// Client and server on one node, in the host-gw lab.
const SAME_NODE: &str = "tc-same-node";

/// Each program mode and the kernel mode it is measured against.
const TWINS: [(&str, &str); 2] = [("ebpf", "host-gw"), ("ebpf-vxlan", "vxlan")];

/// A target of issue 20: `path` ÷ `twin` under `workload` at least `at_least`.
#[derive(Debug, PartialEq)]
pub struct Goal {
    pub path: &'static str,
    pub twin: &'static str,
    pub workload: Workload,
    pub at_least: f64,
}

pub const GOALS: [Goal; 4] = [
    Goal {
        path: "ebpf",
        twin: "host-gw",
        workload: Workload::TcpRrSameCpu,
        at_least: 1.1,
    },
    Goal {
        path: "ebpf",
        twin: "host-gw",
        workload: Workload::UdpRate,
        at_least: 1.1,
    },
    Goal {
        path: "ebpf-vxlan",
        twin: "vxlan",
        workload: Workload::TcpRrSameCpu,
        at_least: 1.0,
    },
    Goal {
        path: "ebpf-vxlan",
        twin: "vxlan",
        workload: Workload::UdpRate,
        at_least: 1.0,
    },
];

/// A goal's outcome: the median of the per-round ratios and their range.
#[derive(Debug, PartialEq)]
pub struct Verdict<'a> {
    pub goal: &'a Goal,
    /// (median, min, max) of the paired ratios; None when no round
    /// measured both paths.
    pub ratio: Option<(f64, f64, f64)>,
}

impl Verdict<'_> {
    pub fn met(&self) -> bool {
        self.ratio.is_some_and(|(m, _, _)| m >= self.goal.at_least)
    }

    pub fn line(&self) -> String {
        let g = self.goal;
        let outcome = match self.ratio {
            None => "not measured".to_string(),
            Some((m, lo, hi)) => format!(
                "{m:.2} ({lo:.2}–{hi:.2}), {}",
                if self.met() { "met" } else { "MISSED" }
            ),
        };
        format!(
            "- `{}` ÷ `{}` on `{}` (target ≥ {:.2}): {outcome}",
            g.path,
            g.twin,
            g.workload.name(),
            g.at_least
        )
    }
}

pub fn verdicts<'a>(samples: &[Sample], goals: &'a [Goal]) -> Vec<Verdict<'a>> {
    goals
        .iter()
        .map(|goal| {
            let ratios = report::paired_ratios(samples, goal.workload, goal.path, goal.twin);
            let ratio = (!ratios.is_empty()).then(|| {
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (median(&ratios), lo, hi)
            });
            Verdict { goal, ratio }
        })
        .collect()
}

pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    /// One short round of a few workloads: fails only if a mode carries
    /// no traffic, never on a timing.
    pub quick: bool,
}

/// What `--quick` measures: request/response, small datagrams and bulk
/// (GSO-sized frames through the tunnels).
const QUICK_WORKLOADS: [Workload; 3] =
    [Workload::TcpRrSameCpu, Workload::UdpRate, Workload::TcpBulk];

pub fn run(options: &Options) -> Result<()> {
    let (rounds, seconds) = if options.quick {
        (1, 1)
    } else {
        (options.rounds, options.seconds)
    };
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    let (vethctl, dir) = prepare()?;
    let _stats = BpfStats::enable()?;
    let workloads: &[Workload] = if options.quick {
        &QUICK_WORKLOADS
    } else {
        &Workload::ALL
    };
    // Ctrl-C stops the run between measurements and still takes the labs down.
    interrupt::catch();
    let samples = measure_labs(&vethctl, &dir, workloads, rounds, seconds);
    interrupt::release();
    let samples = samples?;
    let compare = Compare::Twins(&TWINS, SAME_NODE);
    let summary = report::summarize(&samples, compare);
    println!("{}", report::table(&summary, rounds, seconds, compare));
    report::write_files(&dir, "cross-node", &summary, &samples, compare)?;
    println!(
        "results: {0}/cross-node.json, {0}/cross-node.csv, {0}/cross-node.svg",
        dir.display()
    );
    if options.quick {
        report::check_every_path_carried_traffic(&samples)?;
        println!("quick check: every cross-node mode carried traffic in every workload");
        return Ok(());
    }
    let verdicts = verdicts(&samples, &GOALS);
    println!("targets (paired per-round ratios, median (min–max)):");
    for v in &verdicts {
        println!("{}", v.line());
    }
    let missed = verdicts.iter().filter(|v| !v.met()).count();
    if missed > 0 {
        bail!("{missed} of {} cross-node targets missed", verdicts.len());
    }
    Ok(())
}

/// Every workload through every lab, the labs up only meanwhile.
fn measure_labs(
    vethctl: &Path,
    dir: &Path,
    workloads: &[Workload],
    rounds: usize,
    seconds: u64,
) -> Result<Vec<Sample>> {
    let tag = std::process::id() % 100_000;
    let mut labs = Vec::new();
    for (i, mode) in MODES.iter().enumerate() {
        interrupt::check("the labs made so far are being removed")?;
        labs.push(Lab::up(vethctl, dir, &format!("bx{tag}{i}"), mode, i)?);
    }
    let mut targets: Vec<Target> = labs.iter().map(Lab::target).collect();
    targets.push(labs[0].same_node_target());
    run_rounds(&targets, workloads, rounds, seconds)
}

/// A two-node lab in one cross-node mode, brought down when dropped.
struct Lab {
    vethctl: PathBuf,
    file: PathBuf,
    name: String,
    mode: &'static str,
    /// (netns, IPv4 address) of pods a (n1), b (n2) and c (n1).
    a: (String, String),
    b: (String, String),
    c: (String, String),
    /// Where n1's programs are pinned, for their time per run.
    n1_pins: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Status {
    nodes: Vec<NodeStatus>,
}

#[derive(Deserialize)]
struct NodeStatus {
    name: String,
    netns: String,
    pods: Vec<PodStatus>,
}

#[derive(Deserialize)]
struct PodStatus {
    name: String,
    netns: String,
    ipv4: String,
}

/// The lab's file: mode tc within the nodes, addresses from RFC 2544's
/// range, apart per lab so no two labs ever share one.
fn lab_file(name: &str, mode: &str, index: usize) -> String {
    format!(
        "name = \"{name}\"\nmode = \"tc\"\ncross_node = \"{mode}\"\n\
         cluster_cidr = \"198.19.{}.0/20\"\nnode_prefix_len = 24\n\n\
         [underlay]\ncidr = \"198.18.{}.0/24\"\n\n\
         [[nodes]]\nname = \"n1\"\n[[nodes.pods]]\nname = \"a\"\n[[nodes.pods]]\nname = \"c\"\n\n\
         [[nodes]]\nname = \"n2\"\n[[nodes.pods]]\nname = \"b\"\n",
        128 + 16 * index,
        248 + index,
    )
}

impl Lab {
    fn up(vethctl: &Path, dir: &Path, name: &str, mode: &'static str, index: usize) -> Result<Lab> {
        let switch = Path::new("/run/netns").join(format!("{name}_underlay"));
        if switch.exists() {
            bail!(
                "lab {name:?} is already up ({} exists): take it down with `vethctl down -n {name}`",
                switch.display()
            );
        }
        let file = dir.join(format!("{name}.toml"));
        fs::write(&file, lab_file(name, mode, index))?;
        let none = || (String::new(), String::new());
        // From here on, Drop takes it down whatever happens.
        let mut lab = Lab {
            vethctl: vethctl.to_path_buf(),
            file,
            name: name.to_string(),
            mode,
            a: none(),
            b: none(),
            c: none(),
            n1_pins: None,
        };
        cmd::output(Command::new(vethctl).arg("up").arg("-t").arg(&lab.file))
            .with_context(|| format!("bringing up the {mode} lab {name}"))?;
        let status: Status = serde_json::from_str(&cmd::output(
            Command::new(vethctl).args(["status", "--json", "-n", name]),
        )?)
        .with_context(|| format!("reading `vethctl status --json -n {name}`"))?;
        let pod = |node: &str, pod: &str| -> Result<(String, String)> {
            status
                .nodes
                .iter()
                .filter(|n| n.name == node)
                .flat_map(|n| &n.pods)
                .find(|p| p.name == pod)
                .map(|p| (p.netns.clone(), p.ipv4.clone()))
                .with_context(|| format!("status of lab {name} lacks pod {pod} on node {node}"))
        };
        lab.a = pod("n1", "a")?;
        lab.b = pod("n2", "b")?;
        lab.c = pod("n1", "c")?;
        let n1 = status.nodes.iter().find(|n| n.name == "n1");
        lab.n1_pins = n1.and_then(|n| node_pin_dir(&n.netns, name));
        Ok(lab)
    }

    /// Pod a on n1 to pod b on n2.
    fn target(&self) -> Target {
        self.to(self.mode, &self.b)
    }

    /// Pod a to pod c, both on n1.
    fn same_node_target(&self) -> Target {
        self.to(SAME_NODE, &self.c)
    }

    fn to(&self, path: &str, server: &(String, String)) -> Target {
        let pin = self.n1_pins.as_ref().map(|d| d.join("from_pod"));
        Target {
            path: path.to_string(),
            client_netns: self.a.0.clone(),
            server_netns: server.0.clone(),
            server_ip: server.1.clone(),
            program: pin.map(|pin| pin_probe(pin.display().to_string())),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.vethctl)
            .args(["down", "-n", &self.name])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.file);
    }
}

/// The pin directory of network `name` on the node whose namespace is
/// `netns`: the node's state directory names its namespace in `netns`.
fn node_pin_dir(netns: &str, name: &str) -> Option<PathBuf> {
    let nodes = fs::read_dir("/run/vethctl/_nodes").ok()?;
    let dir = nodes
        .flatten()
        .find(|d| fs::read_to_string(d.path().join("netns")).is_ok_and(|n| n.trim() == netns))?;
    let pins = Path::new("/sys/fs/bpf/vethctl/_nodes")
        .join(dir.file_name())
        .join(name);
    pins.exists().then_some(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str, workload: Workload, round: usize, value: f64) -> Sample {
        Sample {
            value,
            ..Sample::new(path, workload, round)
        }
    }

    /// Rounds where the whole machine slows down by 10×: paired ratios
    /// stay put where the ratio of medians would not.
    fn noisy_rounds(path: &str, twin: &str, ratios: &[f64]) -> Vec<Sample> {
        let mut samples = Vec::new();
        for (round, r) in ratios.iter().enumerate() {
            let base = if round % 2 == 0 { 1000.0 } else { 100.0 };
            for workload in [Workload::TcpRrSameCpu, Workload::UdpRate] {
                samples.push(sample(twin, workload, round, base));
                samples.push(sample(path, workload, round, base * r));
            }
        }
        samples
    }

    #[test]
    fn a_goal_is_met_on_the_median_of_paired_ratios() {
        let samples = noisy_rounds("ebpf", "host-gw", &[1.2, 1.05, 1.15]);
        let v = verdicts(&samples, &GOALS[..2]);
        let (m, lo, hi) = v[0].ratio.unwrap();
        assert!((m - 1.15).abs() < 1e-9 && (lo - 1.05).abs() < 1e-9 && (hi - 1.2).abs() < 1e-9);
        assert!(v.iter().all(Verdict::met));
        assert!(v[0].line().contains(
            "`ebpf` ÷ `host-gw` on `tcp_rr_same_cpu` (target ≥ 1.10): 1.15 (1.05–1.20), met"
        ));
    }

    #[test]
    fn a_median_under_the_target_misses_even_with_a_good_round() {
        let samples = noisy_rounds("ebpf-vxlan", "vxlan", &[0.9, 1.3, 0.95]);
        let v = verdicts(&samples, &GOALS[2..]);
        assert!(v.iter().all(|v| !v.met()));
        assert!(v[0].line().ends_with("0.95 (0.90–1.30), MISSED"));
    }

    #[test]
    fn a_goal_without_both_paths_is_not_measured_and_not_met() {
        let samples = noisy_rounds("ebpf", "host-gw", &[1.5]);
        let v = verdicts(&samples, &GOALS[2..3]);
        assert_eq!(v[0].ratio, None);
        assert!(!v[0].met());
        assert!(v[0].line().ends_with("not measured"));
    }

    #[test]
    fn labs_get_ranges_of_their_own() {
        let files: Vec<String> = (0..MODES.len())
            .map(|i| lab_file(&format!("bx1{i}"), MODES[i], i))
            .collect();
        for (i, f) in files.iter().enumerate() {
            assert!(f.contains(&format!("cross_node = \"{}\"", MODES[i])));
            let cidr = f.lines().find(|l| l.starts_with("cluster_cidr")).unwrap();
            let underlay = f.lines().find(|l| l.starts_with("cidr")).unwrap();
            for other in &files[i + 1..] {
                assert!(!other.contains(cidr) && !other.contains(underlay));
            }
        }
    }
}
