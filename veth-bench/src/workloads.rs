//! The workloads, run with established tools from Debian's packages:
//! sockperf (request/response latency) and iperf3 (bulk TCP, UDP packet
//! rate). Client and server are pinned to CPUs (different ones, or the same
//! one for the same-CPU workloads). Parsers are pure and unit-tested.

use std::{fs, process::Stdio, thread, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{netns_command, ServerGuard, CLIENT_CPU, SERVER_CPU};
const SOCKPERF_PORT: &str = "11111";
/// Request/response message size.
const RR_BYTES: &str = "64";

/// Request/response over TCP or UDP: sockperf ping-pong, full round trips.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RrResult {
    pub transactions_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BulkResult {
    pub gbit_per_second: f64,
    pub retransmits: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RateResult {
    /// 64-byte UDP datagrams received per second.
    pub packets_per_second: f64,
    pub loss_percent: f64,
}

/// The two ends of a measurement: namespaces, the server's address, CPUs.
pub struct Ends<'a> {
    pub client: &'a str,
    pub server: &'a str,
    pub ip: &'a str,
    pub client_cpu: u32,
    pub server_cpu: u32,
}

pub fn request_response(ends: &Ends, udp: bool, seconds: u64) -> Result<RrResult> {
    let (client, server, ip) = (ends.client, ends.server, ends.ip);
    let transport: &[&str] = if udp { &[] } else { &["--tcp"] };
    let _server = ServerGuard(
        netns_command(server, Some(ends.server_cpu), "sockperf")?
            .arg("sr")
            .args(transport)
            .args(["-i", ip, "-p", SOCKPERF_PORT])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sockperf server")?,
    );
    // sockperf's client fails at once if nobody listens yet: retry briefly.
    let mut last = None;
    for _ in 0..20 {
        let out = netns_command(client, Some(ends.client_cpu), "sockperf")?
            .arg("pp")
            .args(transport)
            .args(["-i", ip, "-p", SOCKPERF_PORT, "-m", RR_BYTES, "--full-rtt"])
            .arg("-t")
            .arg(seconds.to_string())
            .output()
            .context("running sockperf")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        match parse_sockperf(&text) {
            Ok(result) if out.status.success() => return Ok(result),
            Ok(_) | Err(_) => last = Some(text),
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "sockperf to {ip} gave no result:\n{}",
        last.unwrap_or_default()
    )
}

/// Transactions/s from the valid-duration line, p50 and p99 from the
/// percentile lines (microseconds, full round trip with --full-rtt).
pub fn parse_sockperf(text: &str) -> Result<RrResult> {
    let valid = text
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .context("no [Valid Duration] line")?;
    let field = |name: &str| -> Result<f64> {
        let start = valid
            .find(name)
            .with_context(|| format!("no {name} in {valid:?}"))?
            + name.len();
        let rest = &valid[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        Ok(rest[..end].parse()?)
    };
    let runtime = field("RunTime=")?;
    let received = field("ReceivedMessages=")?;
    let percentile = |p: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .with_context(|| format!("no percentile {p}"))?;
        Ok(line.rsplit('=').next().unwrap_or("").trim().parse()?)
    };
    if runtime <= 0.0 || received <= 0.0 {
        bail!("sockperf completed no transaction");
    }
    Ok(RrResult {
        transactions_per_second: received / runtime,
        p50_us: percentile("50.000")?,
        p99_us: percentile("99.000")?,
    })
}

/// Bulk TCP with iperf3: one stream pinned, or `streams` unpinned.
pub fn tcp_bulk(
    client: &str,
    server: &str,
    ip: &str,
    streams: u32,
    seconds: u64,
) -> Result<BulkResult> {
    let json = iperf3(client, server, ip, streams, &[], seconds)?;
    parse_iperf3_tcp(&json)
}

pub fn parse_iperf3_tcp(json: &Value) -> Result<BulkResult> {
    let end = &json["end"];
    let bits = end["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!(
                "iperf3 JSON lacks end.sum_received.bits_per_second: {}",
                json["error"]
            )
        })?;
    Ok(BulkResult {
        gbit_per_second: bits / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// 64-byte UDP as fast as the sender can: what arrives per second.
pub fn udp_rate(client: &str, server: &str, ip: &str, seconds: u64) -> Result<RateResult> {
    let json = iperf3(
        client,
        server,
        ip,
        1,
        &["-u", "-b", "0", "-l", "64"],
        seconds,
    )?;
    parse_iperf3_udp(&json, seconds)
}

pub fn parse_iperf3_udp(json: &Value, seconds: u64) -> Result<RateResult> {
    let sum = &json["end"]["sum"];
    let packets = sum["packets"]
        .as_f64()
        .context("iperf3 JSON lacks end.sum.packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    Ok(RateResult {
        packets_per_second: (packets - lost).max(0.0) / seconds as f64,
        loss_percent: sum["lost_percent"].as_f64().unwrap_or(0.0),
    })
}

fn iperf3(
    client: &str,
    server: &str,
    ip: &str,
    streams: u32,
    extra: &[&str],
    seconds: u64,
) -> Result<Value> {
    // One stream: pinned apart. Several: one per CPU, left to the scheduler.
    let pin = |netns: &str, cpu: u32| netns_command(netns, (streams == 1).then_some(cpu), "iperf3");
    let _server = ServerGuard(
        pin(server, SERVER_CPU)?
            .args(["-s", "-1", "-B", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 server")?,
    );
    let mut last = String::new();
    for _ in 0..20 {
        let out = pin(client, CLIENT_CPU)?
            .args([
                "-c",
                ip,
                "-J",
                "-P",
                &streams.to_string(),
                "-t",
                &seconds.to_string(),
            ])
            .args(extra)
            .output()
            .context("running iperf3")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // A server not listening yet shows as an "error" in the JSON.
        if let Ok(json) = serde_json::from_str::<Value>(&text) {
            if out.status.success() && json.get("error").is_none() {
                return Ok(json);
            }
        }
        last = text;
        thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 to {ip} failed: {last}")
}

/// Busy CPU time of the whole machine (all CPUs), from /proc/stat.
pub fn busy_ns() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    parse_busy_ns(line)
}

/// user + nice + system + irq + softirq + steal, in ns (USER_HZ is 100).
pub fn parse_busy_ns(cpu_line: &str) -> Result<u64> {
    let fields: Vec<u64> = cpu_line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if fields.len() < 8 {
        bail!("unexpected /proc/stat line {cpu_line:?}");
    }
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    Ok(busy * 10_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKPERF: &str = "sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=41111; ReceivedMessages=41110
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.549 sec; SentMessages=20432; ReceivedMessages=20432
sockperf: ---> percentile 99.000 =   23.418
sockperf: ---> percentile 90.000 =   11.341
sockperf: ---> percentile 50.000 =    9.422
";

    #[test]
    fn sockperf_output_is_parsed() {
        let r = parse_sockperf(SOCKPERF).unwrap();
        assert!((r.transactions_per_second - 20432.0 / 0.549).abs() < 1e-6);
        assert_eq!(r.p50_us, 9.422);
        assert_eq!(r.p99_us, 23.418);
        assert!(parse_sockperf("sockperf: nothing").is_err());
    }

    #[test]
    fn iperf3_json_is_parsed() {
        let tcp = serde_json::json!({"end": {"sum_received": {"bits_per_second": 2.5e10}, "sum_sent": {"retransmits": 7}}});
        let r = parse_iperf3_tcp(&tcp).unwrap();
        assert_eq!(r.gbit_per_second, 25.0);
        assert_eq!(r.retransmits, 7);
        let udp = serde_json::json!({"end": {"sum": {"packets": 1000, "lost_packets": 100, "lost_percent": 10.0}}});
        let r = parse_iperf3_udp(&udp, 2).unwrap();
        assert_eq!(r.packets_per_second, 450.0);
        assert_eq!(r.loss_percent, 10.0);
    }

    #[test]
    fn proc_stat_busy_time() {
        let ns = parse_busy_ns("cpu  100 5 50 1000 20 3 2 1 0 0").unwrap();
        assert_eq!(ns, (100 + 5 + 50 + 3 + 2 + 1) * 10_000_000);
    }
}
