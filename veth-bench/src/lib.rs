//! The workloads `vethctl bench` and `cargo xtask bench` measure, run with
//! established tools from Debian's packages (sockperf, iperf3) inside the
//! pods' network namespaces, client and server pinned to different CPUs.

pub mod crr;
pub mod disruption;
pub mod interrupt;
pub mod workloads;

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;

/// A workload. Request/response and connection rate come twice: with
/// client and server on different CPUs (what an application sees: every
/// transaction wakes the other CPU, which on a VM costs tens of µs and
/// hides the path) and on the same CPU (no cross-CPU wake-up: what the
/// path itself costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    TcpRr,
    TcpRrSameCpu,
    UdpRr,
    UdpRrSameCpu,
    TcpCrr,
    TcpCrrSameCpu,
    TcpBulk,
    TcpBulkPerCpu,
    UdpRate,
}

/// The CPU the server runs on when client and server are apart.
pub const SERVER_CPU: u32 = 0;
/// The client's CPU, and both ends' in the same-CPU workloads.
pub const CLIENT_CPU: u32 = 1;

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::TcpRr,
        Workload::TcpRrSameCpu,
        Workload::UdpRr,
        Workload::UdpRrSameCpu,
        Workload::TcpCrr,
        Workload::TcpCrrSameCpu,
        Workload::TcpBulk,
        Workload::TcpBulkPerCpu,
        Workload::UdpRate,
    ];

    /// The workload called `name` (as [`Workload::name`] prints it).
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::TcpRr => "tcp_rr",
            Workload::TcpRrSameCpu => "tcp_rr_same_cpu",
            Workload::UdpRr => "udp_rr",
            Workload::UdpRrSameCpu => "udp_rr_same_cpu",
            Workload::TcpCrr => "tcp_crr",
            Workload::TcpCrrSameCpu => "tcp_crr_same_cpu",
            Workload::TcpBulk => "tcp_bulk",
            Workload::TcpBulkPerCpu => "tcp_bulk_per_cpu",
            Workload::UdpRate => "udp_64b_rate",
        }
    }

    /// What it measures and where its ends run, for legends.
    pub fn description(self) -> &'static str {
        match self {
            Workload::TcpRr => "TCP request/response, 64 B, client CPU 1, server CPU 0 (cross-CPU wake-ups included)",
            Workload::TcpRrSameCpu => "TCP request/response, 64 B, client and server both on CPU 1 (the path's cost)",
            Workload::UdpRr => "UDP request/response, 64 B, client CPU 1, server CPU 0 (cross-CPU wake-ups included)",
            Workload::UdpRrSameCpu => "UDP request/response, 64 B, client and server both on CPU 1 (the path's cost)",
            Workload::TcpCrr => "TCP connect, 1-byte request, 1-byte response, close; client CPU 1, server CPU 0",
            Workload::TcpCrrSameCpu => "TCP connect, 1-byte request, 1-byte response, close; both on CPU 1",
            Workload::TcpBulk => "iperf3 bulk TCP, one stream, client CPU 1, server CPU 0",
            Workload::TcpBulkPerCpu => "iperf3 bulk TCP, one stream per CPU, left to the scheduler",
            Workload::UdpRate => "iperf3 64-byte UDP flood, client CPU 1, server CPU 0: datagrams received",
        }
    }

    /// (client CPU, server CPU) the ends are pinned to; `None` for the
    /// multi-stream workload, which the scheduler places.
    pub fn cpus(self) -> Option<(u32, u32)> {
        match self {
            Workload::TcpRrSameCpu | Workload::UdpRrSameCpu | Workload::TcpCrrSameCpu => {
                Some((CLIENT_CPU, CLIENT_CPU))
            }
            Workload::TcpBulkPerCpu => None,
            _ => Some((CLIENT_CPU, SERVER_CPU)),
        }
    }

    /// A request/response workload, whose latency percentiles matter.
    pub fn is_rr(self) -> bool {
        matches!(
            self,
            Workload::TcpRr | Workload::TcpRrSameCpu | Workload::UdpRr | Workload::UdpRrSameCpu
        )
    }

    /// Unit of the headline value (higher is better for all of them).
    pub fn unit(self) -> &'static str {
        match self {
            Workload::TcpRr | Workload::TcpRrSameCpu | Workload::UdpRr | Workload::UdpRrSameCpu => {
                "transactions/s"
            }
            Workload::TcpCrr | Workload::TcpCrrSameCpu => "connections/s",
            Workload::TcpBulk | Workload::TcpBulkPerCpu => "Gbit/s",
            Workload::UdpRate => "packets/s received",
        }
    }

    /// What CPU time is divided by.
    pub fn cpu_unit(self) -> &'static str {
        match self {
            Workload::TcpRr | Workload::TcpRrSameCpu | Workload::UdpRr | Workload::UdpRrSameCpu => {
                "ns/transaction"
            }
            Workload::TcpCrr | Workload::TcpCrrSameCpu => "ns/connection",
            Workload::TcpBulk | Workload::TcpBulkPerCpu => "ns/1500B",
            Workload::UdpRate => "ns/packet",
        }
    }
}

/// One measurement of one path in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub path: String,
    pub workload: Workload,
    pub round: usize,
    /// The headline value, in [`Workload::unit`].
    pub value: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub retransmits: Option<u64>,
    pub loss_percent: Option<f64>,
    /// Busy CPU time of the machine per transaction / packet.
    pub cpu_ns_per_unit: Option<f64>,
    /// Time per run of the path's eBPF program over the measurement, from
    /// the kernel's BPF statistics (when the target has a probe and the
    /// program ran).
    pub program_ns_per_run: Option<f64>,
}

impl Sample {
    pub fn new(path: &str, workload: Workload, round: usize) -> Sample {
        Sample {
            path: path.to_string(),
            workload,
            round,
            value: 0.0,
            p50_us: None,
            p99_us: None,
            retransmits: None,
            loss_percent: None,
            cpu_ns_per_unit: None,
            program_ns_per_run: None,
        }
    }
}

/// One workload's samples on one path: the headline value's median with
/// min–max, and the median of each side figure the samples carry.
#[derive(Clone, Debug, Serialize)]
pub struct Spread {
    pub workload: Workload,
    pub unit: &'static str,
    pub rounds: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Median per measurement.
    pub retransmits: Option<f64>,
    pub loss_percent: Option<f64>,
    pub cpu_ns_per_unit: Option<f64>,
    pub program_ns_per_run: Option<f64>,
}

impl Spread {
    /// `samples`: the measurements of `workload` on one path.
    pub fn of(workload: Workload, samples: &[&Sample]) -> Spread {
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        let side = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(|s| f(s)).collect();
            (!v.is_empty()).then(|| median(&v))
        };
        Spread {
            workload,
            unit: workload.unit(),
            rounds: samples.len(),
            median: median(&values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            p50_us: side(|s| s.p50_us),
            p99_us: side(|s| s.p99_us),
            retransmits: side(|s| s.retransmits.map(|r| r as f64)),
            loss_percent: side(|s| s.loss_percent),
            cpu_ns_per_unit: side(|s| s.cpu_ns_per_unit),
            program_ns_per_run: side(|s| s.program_ns_per_run),
        }
    }
}

/// Reads (run time in ns, run count) of the eBPF program a path's frames
/// pass, from the kernel's BPF statistics; `None` if it cannot be read.
pub type ProgramProbe = Arc<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// Where a path's client and server are.
#[derive(Clone)]
pub struct Target {
    pub path: String,
    pub client_netns: String,
    pub server_netns: String,
    pub server_ip: String,
    /// The program whose time per run goes into each sample, if any.
    pub program: Option<ProgramProbe>,
}

/// One measurement of `workload` through `t`, with the machine's busy CPU
/// time per transaction, connection, packet or 1500 bytes, and the time
/// per run of the path's program.
pub fn measure(workload: Workload, t: &Target, round: usize, seconds: u64) -> Result<Sample> {
    let program_before = t.program.as_ref().and_then(|p| p());
    let busy_before = workloads::busy_ns()?;
    let mut sample = Sample::new(&t.path, workload, round);
    let (client, server, ip) = (&t.client_netns, &t.server_netns, &t.server_ip);
    let (client_cpu, server_cpu) = workload.cpus().unwrap_or((CLIENT_CPU, SERVER_CPU));
    let units = match workload {
        Workload::TcpRr | Workload::TcpRrSameCpu | Workload::UdpRr | Workload::UdpRrSameCpu => {
            let udp = matches!(workload, Workload::UdpRr | Workload::UdpRrSameCpu);
            let ends = workloads::Ends {
                client,
                server,
                ip,
                client_cpu,
                server_cpu,
            };
            let r = workloads::request_response(&ends, udp, seconds)?;
            sample.value = r.transactions_per_second;
            sample.p50_us = Some(r.p50_us);
            sample.p99_us = Some(r.p99_us);
            r.transactions_per_second * seconds as f64
        }
        Workload::TcpCrr | Workload::TcpCrrSameCpu => {
            let r = crr::connection_rate(
                client,
                server,
                ip,
                (client_cpu, server_cpu),
                Duration::from_secs(seconds),
            )?;
            sample.value = r.connections_per_second;
            sample.p50_us = Some(r.p50_us);
            sample.p99_us = Some(r.p99_us);
            r.connections as f64
        }
        Workload::TcpBulk | Workload::TcpBulkPerCpu => {
            let streams = if workload == Workload::TcpBulk {
                1
            } else {
                cpus()
            };
            let r = workloads::tcp_bulk(client, server, ip, streams, seconds)?;
            sample.value = r.gbit_per_second;
            sample.retransmits = Some(r.retransmits);
            r.gbit_per_second * 1e9 / 8.0 / 1500.0 * seconds as f64
        }
        Workload::UdpRate => {
            let r = workloads::udp_rate(client, server, ip, seconds)?;
            sample.value = r.packets_per_second;
            sample.loss_percent = Some(r.loss_percent);
            r.packets_per_second * seconds as f64
        }
    };
    let busy = workloads::busy_ns()?.saturating_sub(busy_before);
    if units > 0.0 {
        sample.cpu_ns_per_unit = Some(busy as f64 / units);
    }
    if let (Some((time0, runs0)), Some((time1, runs1))) =
        (program_before, t.program.as_ref().and_then(|p| p()))
    {
        let runs = runs1.saturating_sub(runs0);
        if runs > 0 {
            sample.program_ns_per_run = Some(time1.saturating_sub(time0) as f64 / runs as f64);
        }
    }
    // Let queues drain between measurements.
    std::thread::sleep(Duration::from_millis(100));
    Ok(sample)
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Where network namespace `netns` is: `/run/netns/NETNS` for a name, the
/// path itself for a runtime's namespace given by absolute path.
pub fn netns_path(netns: &str) -> String {
    if netns.starts_with('/') {
        netns.to_string()
    } else {
        format!("/run/netns/{netns}")
    }
}

/// `program` run inside network namespace `netns` (see [`netns_path`]),
/// pinned to `cpu` if given. The child joins the namespace itself between
/// fork and exec, so nothing else (no `ip netns exec`) is run.
pub fn netns_command(netns: &str, cpu: Option<u32>, program: &str) -> Result<Command> {
    let path = netns_path(netns);
    // Opened close-on-exec: the program never sees it.
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    let mut command = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe syscalls run
    // (setns, sched_setaffinity) on memory owned by the closure.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu as usize, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(command)
}

/// A server process, killed when dropped.
pub struct ServerGuard(pub Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_non_finite() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 1.0]), 1.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn spread_gives_medians_and_range() {
        let sample = |round, value, retransmits| Sample {
            value,
            retransmits: Some(retransmits),
            ..Sample::new("tc", Workload::TcpBulk, round)
        };
        let samples = [sample(0, 3.0, 10), sample(1, 1.0, 30), sample(2, 2.0, 20)];
        let refs: Vec<&Sample> = samples.iter().collect();
        let s = Spread::of(Workload::TcpBulk, &refs);
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.retransmits, Some(20.0));
        assert_eq!(s.p50_us, None, "bulk has no latency");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = netns_command("vethctl-no-such-netns", None, "true").unwrap_err();
        assert!(format!("{err:#}").contains("/run/netns/vethctl-no-such-netns"));
    }
}
