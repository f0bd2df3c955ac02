//! `cargo xtask bench counting`: what the per-pair counters cost per packet.
//!
//! Two topologies side by side, one with counting compiled in and one with
//! it compiled out (`counters = false`), each carrying the same 64-byte UDP
//! flood from pod a to pod b through the redirect path, in interleaved
//! rounds (ABBA). The kernel's BPF statistics give the time spent in the
//! `from_pod` program per packet; the difference is the cost of counting.
//! Traffic stays between the benchmark's own namespaces.

use std::fs;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{median, prepare, program_stats, BpfStats, Spec, UpTopology};
use veth_bench::workloads;

/// One side of the comparison.
struct Variant {
    name: &'static str,
    counters: bool,
    cidr: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        name: "bcnton",
        counters: true,
        cidr: "198.18.250.0/24",
    },
    Variant {
        name: "bcntoff",
        counters: false,
        cidr: "198.18.251.0/24",
    },
];

/// Program cost of one variant in one round.
#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    ns_per_packet: f64,
    packets_per_second: f64,
}

#[derive(Serialize)]
struct Summary {
    variant: &'static str,
    counters: bool,
    rounds: usize,
    ns_per_packet_median: f64,
    ns_per_packet_min: f64,
    ns_per_packet_max: f64,
    packets_per_second_median: f64,
    samples: Vec<Sample>,
}

pub fn run(rounds: usize, seconds: u64) -> Result<()> {
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    let (vethctl, dir) = prepare()?;

    let _stats = BpfStats::enable()?;
    let topologies: Vec<UpTopology> = VARIANTS
        .iter()
        .map(|v| {
            let spec = Spec {
                name: v.name,
                mode: "tc",
                cidr: v.cidr,
                counters: v.counters,
                rps: false,
                extra_pods: 0,
            };
            UpTopology::up(&vethctl, &dir, &spec)
        })
        .collect::<Result<_>>()?;

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        // ABBA: neither variant always runs first.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let sample = flood(&topologies[i], seconds)?;
            println!(
                "round {:>2} {:<8} {:>7.1} ns/packet in from_pod, {:>9.0} packets/s",
                round + 1,
                VARIANTS[i].name,
                sample.ns_per_packet,
                sample.packets_per_second
            );
            samples[i].push(sample);
        }
    }

    let summaries: Vec<Summary> = VARIANTS
        .iter()
        .zip(samples)
        .map(|(v, s)| summarize(v, s))
        .collect();
    let on = &summaries[0];
    let off = &summaries[1];
    println!("\ncost of per-pair counting (64-byte UDP, redirect path, {rounds} interleaved rounds of {seconds} s)");
    for s in &summaries {
        println!(
            "  counters {:<3}  from_pod {:>6.1} ns/packet median (min {:.1}, max {:.1}), {:.0} packets/s median",
            if s.counters { "on" } else { "off" },
            s.ns_per_packet_median,
            s.ns_per_packet_min,
            s.ns_per_packet_max,
            s.packets_per_second_median
        );
    }
    println!(
        "  counting costs {:.1} ns per packet (median on - median off), BPF stats on for both",
        on.ns_per_packet_median - off.ns_per_packet_median
    );
    let out = dir.join("counting.json");
    fs::write(&out, serde_json::to_string_pretty(&summaries)?)?;
    println!("  raw samples: {}", out.display());
    Ok(())
}

fn summarize(variant: &Variant, samples: Vec<Sample>) -> Summary {
    let ns: Vec<f64> = samples.iter().map(|s| s.ns_per_packet).collect();
    let pps: Vec<f64> = samples.iter().map(|s| s.packets_per_second).collect();
    Summary {
        variant: variant.name,
        counters: variant.counters,
        rounds: samples.len(),
        ns_per_packet_median: median(&ns),
        ns_per_packet_min: ns.iter().copied().fold(f64::INFINITY, f64::min),
        ns_per_packet_max: ns.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        packets_per_second_median: median(&pps),
        samples,
    }
}

/// Program cost of one flood of `seconds` through `t`.
fn flood(t: &UpTopology, seconds: u64) -> Result<Sample> {
    let pin = format!("/sys/fs/bpf/vethctl/{}/from_pod", t.name);
    let before = program_stats(&pin)?;
    workloads::udp_rate(&t.client_netns, &t.server_netns, &t.server_ip, seconds)?;
    let after = program_stats(&pin)?;
    let runs = after.1.saturating_sub(before.1);
    if runs == 0 {
        bail!(
            "{}: from_pod saw no packets: is the redirect path broken?",
            t.name
        );
    }
    Ok(Sample {
        ns_per_packet: after.0.saturating_sub(before.0) as f64 / runs as f64,
        packets_per_second: runs as f64 / seconds as f64,
    })
}
