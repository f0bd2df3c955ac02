//! `cargo xtask bench paths`: every path side by side, in one run.
//!
//! One topology per mode, all up at once (so switching never happens
//! between measurements), plus loopback inside one pod as the ceiling
//! without veth. Rounds interleave the paths (ABCDEF, then BCDEFA, ...),
//! and the report gives medians with min–max and per-round paired ratios.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use veth_bench::{interrupt, measure, Sample, Target, Workload};

use super::{
    limit::{self, LimitTopology},
    prepare, program_probe, program_probe_by_id,
    report::{self, Compare},
    BpfStats, Spec, UpTopology,
};

/// A path: its name in the report, the mode, the benchmark topology and
/// whether it steers flows (`rps = true`).
struct PathSpec {
    path: &'static str,
    mode: &'static str,
    topology: &'static str,
    cidr: &'static str,
    rps: bool,
}

/// One topology per path; loopback rides on the tc one. The redirect modes
/// get a /22: room for `--endpoints` pods.
const PATHS: [PathSpec; 6] = [
    PathSpec {
        path: "pair",
        mode: "pair",
        topology: "bpair",
        cidr: "198.18.240.0/24",
        rps: false,
    },
    PathSpec {
        path: "bridge",
        mode: "bridge",
        topology: "bbridge",
        cidr: "198.18.241.0/24",
        rps: false,
    },
    PathSpec {
        path: "routed",
        mode: "routed",
        topology: "brouted",
        cidr: "198.18.242.0/24",
        rps: false,
    },
    PathSpec {
        path: "tc",
        mode: "tc",
        topology: "btc",
        cidr: "198.19.200.0/22",
        rps: false,
    },
    PathSpec {
        path: "tc-rps",
        mode: "tc",
        topology: "btcrps",
        cidr: "198.19.208.0/22",
        rps: true,
    },
    PathSpec {
        path: "xdp",
        mode: "xdp",
        topology: "bxdp",
        cidr: "198.19.204.0/22",
        rps: false,
    },
];

/// Most pods a redirect topology's /22 holds.
const MAX_ENDPOINTS: usize = 1000;

pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    /// Pods (and so endpoints in the maps) of the tc and xdp topologies;
    /// the client and server are two of them.
    pub endpoints: usize,
    /// Only these workloads; all when empty.
    pub workloads: Vec<Workload>,
    /// A few seconds per path: checks that every path carries traffic
    /// and fails only when one does not, never on a timing.
    pub quick: bool,
}

pub fn run(options: &Options) -> Result<()> {
    let (rounds, seconds) = if options.quick {
        (1, 1)
    } else {
        (options.rounds, options.seconds)
    };
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    let endpoints = if options.quick { 2 } else { options.endpoints };
    if !(2..=MAX_ENDPOINTS).contains(&endpoints) {
        bail!("--endpoints takes 2 to {MAX_ENDPOINTS} pods");
    }
    let (vethctl, dir) = prepare()?;
    limit::build()?;
    // For the program's time per run in every sample. It costs every
    // program run two clock reads, on every path that runs a program
    // (all but pair and loopback).
    let _stats = BpfStats::enable()?;
    // Ctrl-C or SIGTERM stops the run between steps; the topologies made
    // so far are taken down as they are dropped.
    interrupt::catch();
    let limits = limit_targets()?;
    let mut topologies = Vec::new();
    for p in &PATHS {
        interrupt::check("the topologies made so far are being removed")?;
        let redirects = matches!(p.mode, "tc" | "xdp");
        let spec = Spec {
            name: p.topology,
            mode: p.mode,
            cidr: p.cidr,
            counters: true,
            rps: p.rps,
            extra_pods: if redirects { endpoints - 2 } else { 0 },
        };
        topologies.push((p, UpTopology::up(&vethctl, &dir, &spec)?));
    }
    let mut targets: Vec<Target> = topologies
        .iter()
        .map(|(p, t)| Target {
            path: p.path.to_string(),
            client_netns: t.client_netns.clone(),
            server_netns: t.server_netns.clone(),
            server_ip: t.server_ip.clone(),
            // The direct pair's frames never pass a program.
            program: (p.mode != "pair").then(|| program_probe(&t.name, p.mode)),
        })
        .collect();
    let tc = &topologies
        .iter()
        .find(|(p, _)| p.path == "tc")
        .expect("a tc path")
        .1;
    targets.insert(
        0,
        Target {
            path: "loopback".into(),
            client_netns: tc.client_netns.clone(),
            server_netns: tc.client_netns.clone(),
            server_ip: "127.0.0.1".into(),
            program: None,
        },
    );
    targets.extend(limits.iter().map(|(t, _)| t.clone()));

    let workloads = match options.workloads.as_slice() {
        [] => &Workload::ALL[..],
        some => some,
    };
    let samples = run_rounds(&targets, workloads, rounds, seconds)?;
    interrupt::release();
    let summary = report::summarize(&samples, Compare::Paths);
    println!(
        "{}",
        report::table(&summary, rounds, seconds, Compare::Paths)
    );
    report::write_files(&dir, "paths", &summary, &samples, Compare::Paths)?;
    println!(
        "results: {0}/paths.json, {0}/paths.csv, {0}/paths.svg",
        dir.display()
    );
    if options.quick {
        report::check_every_path_carried_traffic(&samples)?;
        println!("quick check: every path carried traffic in every workload");
    }
    drop(topologies);
    drop(limits);
    Ok(())
}

/// The reference paths ("limit", "limit+map", "limit+rewrite"), each up on its own two pods
/// and held until the returned topologies are dropped.
fn limit_targets() -> Result<Vec<(Target, LimitTopology)>> {
    limit::LIMITS
        .iter()
        .map(|spec| {
            let t = LimitTopology::up(spec)?;
            let target = Target {
                path: spec.path.to_string(),
                client_netns: t.client_netns.clone(),
                server_netns: t.server_netns.clone(),
                server_ip: t.server_ip.clone(),
                program: Some(program_probe_by_id(t.program_id)),
            };
            Ok((target, t))
        })
        .collect()
}

/// The same latency and packet-rate figures for the redirect path with
/// more pods present: one tc topology per size, all up at once, measured
/// in interleaved rounds between pods `a` and `b`; the ratio column is
/// against the smallest size, so a flat cost reads as 1.00.
pub fn scale(sizes: &[usize], rounds: usize, seconds: u64) -> Result<()> {
    if sizes.is_empty()
        || sizes.iter().any(|&n| !(2..=1000).contains(&n))
        || rounds == 0
        || seconds == 0
    {
        bail!("--sizes takes 2 to 1000 pods each; --rounds and --seconds at least 1");
    }
    let (vethctl, dir) = prepare()?;
    limit::build()?;
    let _stats = BpfStats::enable()?;
    // As in `run`: a signal stops the run and the topologies go down.
    interrupt::catch();
    let limits = limit_targets()?;
    let mut topologies = Vec::new();
    let mut targets = Vec::new();
    for (i, &pods) in sizes.iter().enumerate() {
        interrupt::check("the topologies made so far are being removed")?;
        let name = format!("bscale{i}");
        // A /22 each, 1,022 addresses, from 198.19.224.0 on.
        let cidr = format!("198.19.{}.0/22", 224 + 4 * i);
        let spec = Spec {
            name: &name,
            mode: "tc",
            cidr: &cidr,
            counters: true,
            rps: false,
            extra_pods: pods - 2,
        };
        let t = UpTopology::up(&vethctl, &dir, &spec)?;
        targets.push(Target {
            path: format!("tc-{pods}pods"),
            client_netns: t.client_netns.clone(),
            server_netns: t.server_netns.clone(),
            server_ip: t.server_ip.clone(),
            program: Some(program_probe(&t.name, "tc")),
        });
        topologies.push(t);
    }
    // After the sizes: the first target is the ratio's baseline.
    targets.extend(limits.iter().map(|(t, _)| t.clone()));
    let workloads = [
        Workload::TcpRr,
        Workload::TcpRrSameCpu,
        Workload::UdpRr,
        Workload::UdpRrSameCpu,
        Workload::TcpCrr,
        Workload::TcpCrrSameCpu,
        Workload::UdpRate,
    ];
    let samples = run_rounds(&targets, &workloads, rounds, seconds)?;
    interrupt::release();
    let baseline = targets[0].path.clone();
    let compare = Compare::Baseline(&baseline);
    let summary = report::summarize(&samples, compare);
    println!("{}", report::table(&summary, rounds, seconds, compare));
    report::write_files(&dir, "scale", &summary, &samples, compare)?;
    println!("results: {0}/scale.json, {0}/scale.csv", dir.display());
    drop(topologies);
    drop(limits);
    Ok(())
}

/// Every workload on every target, round after round, the target order
/// rotating each round so no path always goes first.
pub(super) fn run_rounds(
    targets: &[Target],
    workloads: &[Workload],
    rounds: usize,
    seconds: u64,
) -> Result<Vec<Sample>> {
    let total = (rounds * workloads.len() * targets.len()) as u64;
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut samples = Vec::new();
    for round in 0..rounds {
        for &workload in workloads {
            for i in 0..targets.len() {
                let target = &targets[(i + round) % targets.len()];
                progress.set_message(format!(
                    "round {} {} {}",
                    round + 1,
                    workload.name(),
                    target.path
                ));
                // Only a run that catches signals sees one here.
                veth_bench::interrupt::check("what the benchmark made is being removed")?;
                let sample = measure(workload, target, round, seconds)
                    .with_context(|| format!("{} through {}", workload.name(), target.path))?;
                samples.push(sample);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    Ok(samples)
}
