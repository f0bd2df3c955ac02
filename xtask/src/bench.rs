//! `cargo xtask bench counting`: what the per-pair counters cost per packet.
//!
//! Two topologies side by side, one with counting compiled in and one with
//! it compiled out (`counters = false`), each carrying the same 64-byte UDP
//! flood from pod a to pod b through the redirect path, in interleaved
//! rounds (ABBA). The kernel's BPF statistics give the time spent in the
//! `from_pod` program per packet; the difference is the cost of counting.
//! Traffic stays between the benchmark's own namespaces.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{cmd, setup};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

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

pub fn counting(rounds: usize, seconds: u64) -> Result<()> {
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    setup::run()?;
    cmd::run(cmd::cargo().args(["build", "-p", "veth-userspace"]))?;
    let vethctl = cmd::target_dir().join("debug/vethctl");
    let dir = cmd::target_dir().join("bench");
    fs::create_dir_all(&dir)?;

    let _stats = BpfStats::enable()?;
    let topologies: Vec<UpTopology> = VARIANTS
        .iter()
        .map(|v| UpTopology::up(&vethctl, &dir, v))
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
            let sample = topologies[i].flood(seconds)?;
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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Turns on the kernel's BPF run-time statistics, restoring the previous
/// setting when dropped.
struct BpfStats {
    previous: String,
}

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// A benchmark topology, brought down when dropped.
struct UpTopology {
    vethctl: PathBuf,
    file: PathBuf,
    name: &'static str,
    client_netns: String,
    server_netns: String,
    server_ip: String,
}

impl UpTopology {
    fn up(vethctl: &Path, dir: &Path, v: &Variant) -> Result<UpTopology> {
        let file = dir.join(format!("{}.toml", v.name));
        fs::write(
            &file,
            format!(
                "name = \"{}\"\nmode = \"tc\"\npod_cidr = \"{}\"\ncounters = {}\n\n[[pods]]\nname = \"a\"\n\n[[pods]]\nname = \"b\"\n",
                v.name, v.cidr, v.counters
            ),
        )?;
        cmd::run(Command::new(vethctl).arg("up").arg("--topology").arg(&file))?;
        let status: Value = serde_json::from_str(&cmd::output(
            Command::new(vethctl).args(["status", "--json", "--name", v.name]),
        )?)?;
        let pod = |i: usize, field: &str| -> Result<String> {
            status["topologies"][0]["pods"][i][field]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("status of {} lacks pods[{i}].{field}", v.name))
        };
        Ok(UpTopology {
            vethctl: vethctl.to_path_buf(),
            file,
            name: v.name,
            client_netns: pod(0, "netns")?,
            server_netns: pod(1, "netns")?,
            server_ip: pod(1, "ipv4")?,
        })
    }

    /// One flood of `seconds`: the from_pod program's time per packet.
    fn flood(&self, seconds: u64) -> Result<Sample> {
        let mut server = ServerGuard(
            Command::new("ip")
                .args(["netns", "exec", &self.server_netns, "taskset", "-c", "0"])
                .args(["iperf3", "-s", "-1", "-B", &self.server_ip])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 server")?,
        );
        thread::sleep(Duration::from_millis(300));
        let before = self.program_stats()?;
        cmd::output(
            Command::new("ip")
                .args(["netns", "exec", &self.client_netns, "taskset", "-c", "1"])
                .args(["iperf3", "-c", &self.server_ip, "-u", "-b", "0", "-l", "64"])
                .arg("-t")
                .arg(seconds.to_string()),
        )?;
        let after = self.program_stats()?;
        let _ = server.0.wait();
        let runs = after.1.saturating_sub(before.1);
        if runs == 0 {
            bail!(
                "{}: from_pod saw no packets: is the redirect path broken?",
                self.name
            );
        }
        Ok(Sample {
            ns_per_packet: after.0.saturating_sub(before.0) as f64 / runs as f64,
            packets_per_second: runs as f64 / seconds as f64,
        })
    }

    /// (run_time_ns, run_cnt) of the pinned from_pod program.
    fn program_stats(&self) -> Result<(u64, u64)> {
        let pin = format!("/sys/fs/bpf/vethctl/{}/from_pod", self.name);
        let info: Value = serde_json::from_str(&cmd::output(
            Command::new("bpftool").args(["-j", "prog", "show", "pinned", &pin]),
        )?)?;
        Ok((
            info["run_time_ns"].as_u64().unwrap_or(0),
            info["run_cnt"].as_u64().unwrap_or(0),
        ))
    }
}

impl Drop for UpTopology {
    fn drop(&mut self) {
        let _ = Command::new(&self.vethctl)
            .args(["down", "--name", self.name])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.file);
    }
}

struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
