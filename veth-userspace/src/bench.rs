//! `vethctl bench`: the workloads of `cargo xtask bench` between two pods of
//! a topology that is up, in whatever mode it is in, with what the dataplane
//! counted meanwhile: the proof of which path the traffic took.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use veth_bench::{measure, Sample, Spread, Target, Workload};
use veth_common::PairCounters;

use crate::{
    dataplane,
    model::{Pod, Topology},
    netlink::{netns, Host},
    observe::table::{render, row, wrap, Width},
};

pub struct BenchOptions {
    pub client: String,
    pub server: String,
    pub workloads: Vec<Workload>,
    pub rounds: usize,
    pub seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub topology: String,
    pub mode: String,
    pub client: String,
    pub server: String,
    pub rounds: usize,
    pub seconds: u64,
    pub results: Vec<Spread>,
    /// What the client's pair counted over the whole run.
    pub client_frames: PathCounts,
    pub samples: Vec<Sample>,
}

/// Frames the client sent during the run, by what the programs did.
#[derive(Debug, Default, Serialize)]
pub struct PathCounts {
    pub redirected: u64,
    pub passed: u64,
    pub dropped: u64,
}

pub async fn run(topology: &Topology, options: &BenchOptions) -> Result<BenchReport> {
    if options.rounds == 0 || options.seconds == 0 || options.workloads.is_empty() {
        bail!("--rounds, --seconds and --workloads need at least 1");
    }
    let (client, server) = client_and_server(topology, options)?;
    // The program the client's frames pass first, timed by the kernel's
    // BPF statistics for as long as `_stats` is open. Mode pair's direct
    // link has no program.
    let program = match topology.mode.to_string().as_str() {
        "pair" => None,
        "xdp" => Some(veth_common::names::PROG_XDP_FROM_POD),
        _ => Some(veth_common::names::PROG_FROM_POD),
    };
    let _stats = match program {
        Some(_) => Some(dataplane::enable_bpf_stats()?),
        None => None,
    };
    let target = target(topology, client, server, program);
    let ifindex = Host::connect()?
        .link(&client.host_veth)
        .await?
        .with_context(|| format!("host-side veth {:?} is missing", client.host_veth))?
        .ifindex;
    let before = dataplane::read_counters(&topology.name)?;
    let samples = run_rounds(target, options, &client.name, &server.name).await?;
    let after = dataplane::read_counters(&topology.name)?;
    Ok(BenchReport {
        topology: topology.name.clone(),
        mode: topology.mode.to_string(),
        client: client.name.clone(),
        server: server.name.clone(),
        rounds: options.rounds,
        seconds: options.seconds,
        results: options
            .workloads
            .iter()
            .map(|&w| {
                let of: Vec<&Sample> = samples.iter().filter(|s| s.workload == w).collect();
                Spread::of(w, &of)
            })
            .collect(),
        client_frames: PathCounts::between(&before, &after, ifindex),
        samples,
    })
}

/// The two pods `options` names, distinct and up.
fn client_and_server<'a>(
    topology: &'a Topology,
    options: &BenchOptions,
) -> Result<(&'a Pod, &'a Pod)> {
    let pod = |name: &str, flag: &str| {
        topology.pod_named(name).with_context(|| {
            let names: Vec<String> = topology.pods.iter().map(|p| p.display_name()).collect();
            format!(
                "{flag}: topology {:?} has no pod {name:?} (pods: {})",
                topology.name,
                names.join(", ")
            )
        })
    };
    let (client, server) = (
        pod(&options.client, "--client")?,
        pod(&options.server, "--server")?,
    );
    if client.name == server.name {
        bail!("--client and --server name the same pod: pick two");
    }
    for p in [client, server] {
        if !netns::exists(&p.netns) {
            bail!(
                "pod {:?} has no namespace {:?}: is topology {:?} up? (`vethctl up`)",
                p.name,
                p.netns,
                topology.name
            );
        }
    }
    Ok((client, server))
}

/// What the workloads run against: the pods' namespaces, the server's
/// address and, if the path has one, a probe of `program`'s run time.
fn target(
    topology: &Topology,
    client: &Pod,
    server: &Pod,
    program: Option<&'static str>,
) -> Target {
    Target {
        path: topology.mode.to_string(),
        client_netns: client.netns.clone(),
        server_netns: server.netns.clone(),
        server_ip: server.ipv4.to_string(),
        program: program.map(|program| {
            let topology = topology.name.clone();
            let probe: veth_bench::ProgramProbe = std::sync::Arc::new(move || {
                dataplane::pinned_program_stats(&topology, program)
                    .map(|s| (s.run_time_ns, s.run_count))
            });
            probe
        }),
    }
}

/// Every workload once per round, interleaved round by round as in `cargo
/// xtask bench`, off the runtime (the tools run for minutes).
async fn run_rounds(
    target: Target,
    options: &BenchOptions,
    client: &str,
    server: &str,
) -> Result<Vec<Sample>> {
    let (workloads, rounds, seconds) = (options.workloads.clone(), options.rounds, options.seconds);
    let (client, server) = (client.to_string(), server.to_string());
    tokio::task::spawn_blocking(move || -> Result<Vec<Sample>> {
        let mut samples = Vec::new();
        for round in 0..rounds {
            for &workload in &workloads {
                eprintln!(
                    "round {}/{rounds}: {} from {client} to {server}",
                    round + 1,
                    workload.name(),
                );
                samples.push(
                    measure(workload, &target, round, seconds)
                        .with_context(|| format!("{} in round {}", workload.name(), round + 1))?,
                );
            }
        }
        Ok(samples)
    })
    .await
    .context("benchmark task panicked")?
}

impl PathCounts {
    /// What the pair of host ifindex `ifindex` counted from its pod between
    /// two reads of the counters.
    fn between(
        before: &BTreeMap<u32, PairCounters>,
        after: &BTreeMap<u32, PairCounters>,
        ifindex: u32,
    ) -> PathCounts {
        let delta = |f: fn(&veth_common::Verdicts) -> u64| {
            let get =
                |m: &BTreeMap<u32, PairCounters>| m.get(&ifindex).map_or(0, |c| f(&c.from_pod));
            get(after).saturating_sub(get(before))
        };
        PathCounts {
            redirected: delta(|v| v.redirected_packets),
            passed: delta(|v| v.passed_packets),
            dropped: delta(|v| v.dropped_packets),
        }
    }
}

/// The report as a table: fitting 80 columns, the median with its range
/// and unit, p99 latency and the program's time per run; wide, also p50,
/// retransmits, loss and CPU time per unit.
pub fn table(report: &BenchReport, width: Width) -> String {
    let mut out = format!(
        "topology {} (mode {}): {} -> {}, {} round(s) of {} s, medians (min-max)\n",
        report.topology, report.mode, report.client, report.server, report.rounds, report.seconds
    );
    let mut rows = vec![match width {
        Width::Fit => row(["WORKLOAD", "MEDIAN (MIN-MAX)", "UNIT", "P99 US", "PROG NS"]),
        Width::Wide => row([
            "WORKLOAD",
            "MEDIAN (MIN-MAX)",
            "UNIT",
            "P50 US",
            "P99 US",
            "RETRANS",
            "LOSS %",
            "CPU",
            "PROG NS",
        ]),
    }];
    rows.extend(report.results.iter().map(|r| result_row(r, width)));
    out += &render(&rows);
    let mut notes = String::from(
        "PROG NS: time per run of the program the frames pass (kernel BPF statistics, on \
         during the run)\n",
    );
    for r in &report.results {
        notes += &format!("{}: {}\n", r.workload.name(), r.workload.description());
    }
    let c = &report.client_frames;
    let total = (c.redirected + c.passed + c.dropped).max(1);
    notes += &format!(
        "frames from {}: {} redirected ({:.1}%), {} passed to the host stack, {} dropped\n",
        report.client,
        c.redirected,
        100.0 * c.redirected as f64 / total as f64,
        c.passed,
        c.dropped
    );
    out + &wrap(&notes, width)
}

/// One workload's row of [`table`].
fn result_row(r: &Spread, width: Width) -> Vec<String> {
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let median = format!("{} ({}-{})", short(r.median), short(r.min), short(r.max));
    let program = r
        .program_ns_per_run
        .map_or("-".into(), |v| format!("{v:.0}"));
    match width {
        Width::Fit => row([r.workload.name(), &median, r.unit, &num(r.p99_us), &program]),
        Width::Wide => row([
            r.workload.name(),
            &median,
            r.unit,
            &num(r.p50_us),
            &num(r.p99_us),
            &r.retransmits.map_or("-".into(), |v| format!("{v:.0}")),
            &num(r.loss_percent),
            &r.cpu_ns_per_unit
                .map_or("-".into(), |v| format!("{v:.0} {}", r.workload.cpu_unit())),
            &program,
        ]),
    }
}

/// 12.3k, 4.56 — compact numbers for the table.
fn short(v: f64) -> String {
    if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::table::{widest_line, FIT};

    /// Every workload with the widest figures a run gives: the default
    /// table fits 80 columns, `-o wide` has the side figures.
    #[test]
    fn the_table_fits_80_columns_and_wide_has_the_side_figures() {
        let results = Workload::ALL
            .iter()
            .map(|&workload| Spread {
                workload,
                unit: workload.unit(),
                rounds: 3,
                median: 112_200.0,
                min: 104_900.0,
                max: 998_100.0,
                p50_us: Some(2376.0),
                p99_us: Some(12_376.0),
                retransmits: Some(388.0),
                loss_percent: Some(52.5),
                cpu_ns_per_unit: Some(546_785.0),
                program_ns_per_run: Some(1947.0),
            })
            .collect();
        let report = BenchReport {
            topology: "lab".into(),
            mode: "tc".into(),
            client: "client".into(),
            server: "server".into(),
            rounds: 3,
            seconds: 5,
            results,
            client_frames: PathCounts {
                redirected: 342_554_000,
                passed: 4,
                dropped: 0,
            },
            samples: Vec::new(),
        };
        let fit = table(&report, Width::Fit);
        assert!(widest_line(&fit) <= FIT, "{fit}");
        assert!(fit.contains("112.2k (104.9k-998.1k)"), "{fit}");
        assert!(
            !fit.contains("ns/transaction") && !fit.contains("RETRANS"),
            "{fit}"
        );
        let wide = table(&report, Width::Wide);
        for side in ["P50 US", "RETRANS", "LOSS %", "546785 ns/transaction"] {
            assert!(wide.contains(side), "{side}: {wide}");
        }
    }
}
