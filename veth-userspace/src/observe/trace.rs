//! `vethctl trace`: follows the programs' sampled flow events.

use std::{
    collections::BTreeMap,
    io::Write,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use veth_common::{hook, verdict, DropReason, TraceConfig, TraceEvent};

use crate::{dataplane::TraceSession, model::Topology};

/// How long a trace switch stays on without being renewed.
const LEASE: Duration = Duration::from_secs(3);

/// What to trace.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    /// Only this pod's pair (either end of a redirect).
    pub pod: Option<String>,
    /// About one event per this many frames (1 = every frame).
    pub sample_every: u32,
    /// Stop after this many events.
    pub count: Option<u64>,
    pub json: bool,
}

/// One event, resolved to pod names, as printed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FlowEvent {
    /// Monotonic clock, seconds.
    pub time: f64,
    pub topology: String,
    /// `from_pod` (host-side ingress) or `to_pod` (host-side egress).
    pub hook: &'static str,
    pub pod: String,
    /// Destination pod of a redirect.
    pub peer_pod: Option<String>,
    pub verdict: &'static str,
    pub drop_reason: Option<&'static str>,
    pub ethertype: String,
    pub protocol: Option<&'static str>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub len: u32,
}

/// Resolves ifindexes to pod names and decodes the fields.
pub fn resolve(topology: &str, event: &TraceEvent, pods: &BTreeMap<u32, String>) -> FlowEvent {
    let name = |ifindex: u32| {
        pods.get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    };
    let is_ipv4 = event.ethertype == 0x0800;
    let endpoint = |ip: [u8; 4], port: u16| {
        let ip = Ipv4Addr::from(ip);
        if matches!(event.protocol, 6 | 17) {
            format!("{ip}:{port}")
        } else {
            ip.to_string()
        }
    };
    FlowEvent {
        time: event.timestamp_ns as f64 / 1e9,
        topology: topology.to_string(),
        hook: if event.hook == hook::TO_POD {
            "to_pod"
        } else {
            "from_pod"
        },
        pod: name(event.ifindex),
        peer_pod: (event.peer_ifindex != 0).then(|| name(event.peer_ifindex)),
        verdict: match event.verdict {
            verdict::REDIRECTED => "redirected",
            verdict::DROPPED => "dropped",
            _ => "passed",
        },
        drop_reason: (event.verdict == verdict::DROPPED).then(|| {
            DropReason::from_code(u32::from(event.reason)).map_or("unknown", |r| r.name())
        }),
        ethertype: match event.ethertype {
            0x0800 => "ipv4".to_string(),
            0x0806 => "arp".to_string(),
            0x86dd => "ipv6".to_string(),
            other => format!("0x{other:04x}"),
        },
        protocol: is_ipv4.then_some(match event.protocol {
            1 => "icmp",
            6 => "tcp",
            17 => "udp",
            _ => "other",
        }),
        src: is_ipv4.then(|| endpoint(event.src_ipv4, event.src_port)),
        dst: is_ipv4.then(|| endpoint(event.dst_ipv4, event.dst_port)),
        len: event.len,
    }
}

impl FlowEvent {
    /// One line: `12.345678 web -> api redirected tcp 10.200.0.2:4321 -> 10.200.0.3:80 len 74`.
    pub fn to_line(&self) -> String {
        let who = match (&self.peer_pod, self.hook) {
            (Some(peer), _) => format!("{} -> {peer}", self.pod),
            (None, "to_pod") => format!("host -> {}", self.pod),
            (None, _) => format!("{} -> host", self.pod),
        };
        let verdict = match self.drop_reason {
            Some(reason) => format!("dropped({reason})"),
            None => self.verdict.to_string(),
        };
        let flow = match (&self.protocol, &self.src, &self.dst) {
            (Some(proto), Some(src), Some(dst)) => format!("{proto} {src} -> {dst}"),
            _ => self.ethertype.clone(),
        };
        format!(
            "{:.6} {} {who} {verdict} {flow} len {}",
            self.time, self.topology, self.len
        )
    }
}

/// Switches tracing on for `topology`, prints events until `count` is
/// reached or Ctrl-C, and switches it off again (also if killed: the
/// switch expires by itself after a few seconds).
pub async fn follow(
    topology: &Topology,
    pods_by_ifindex: BTreeMap<u32, String>,
    request: &TraceRequest,
    out: &mut impl Write,
) -> Result<u64> {
    let only_ifindex = match &request.pod {
        Some(pod) => {
            *pods_by_ifindex
                .iter()
                .find(|(_, name)| *name == pod)
                .with_context(|| format!("pod {pod:?} is not up in topology {:?}", topology.name))?
                .0
        }
        None => 0,
    };
    let claim = crate::state::claim_trace_session(&topology.name)?;
    let mut session = TraceSession::open(&topology.name, claim.index)?;
    let config = |now: Duration| TraceConfig {
        sample_every: request.sample_every.max(1),
        ifindex: only_ifindex,
        until_ns: u64::try_from((now + LEASE).as_nanos()).unwrap_or(u64::MAX),
    };
    session.set(config(monotonic_now()?))?;
    let mut renewed = Instant::now();
    let mut printed = 0u64;
    // SAFETY: the session owns the ring buffer's fd and keeps it open, and
    // nothing replaces it while the AsyncFd holds the session.
    let mut ring =
        unsafe { AsyncFd::register(session) }.context("watching the trace ring buffer")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    loop {
        if renewed.elapsed() > LEASE / 3 {
            ring.get_mut().set(config(monotonic_now()?))?;
            renewed = Instant::now();
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(LEASE / 3) => continue,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let session = guard.get_inner_mut();
                while let Some(item) = session.events.next() {
                    if item.len() < std::mem::size_of::<TraceEvent>() {
                        continue;
                    }
                    // SAFETY: the programs write whole TraceEvents; read unaligned.
                    let event: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    let flow = resolve(&topology.name, &event, &pods_by_ifindex);
                    if request.json {
                        writeln!(out, "{}", serde_json::to_string(&flow)?)?;
                    } else {
                        writeln!(out, "{}", flow.to_line())?;
                    }
                    printed += 1;
                    if request.count.is_some_and(|c| printed >= c) {
                        out.flush()?;
                        return Ok(printed);
                    }
                }
                out.flush()?;
                guard.clear_ready();
            }
        }
    }
    Ok(printed)
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_now() -> Result<Duration> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_resolve_to_pods_and_flows() {
        let pods = BTreeMap::from([(7, "web".to_string()), (8, "api".to_string())]);
        let event = TraceEvent {
            timestamp_ns: 1_500_000_000,
            ifindex: 7,
            peer_ifindex: 8,
            len: 74,
            hook: hook::FROM_POD,
            verdict: verdict::REDIRECTED,
            reason: 0,
            protocol: 6,
            ethertype: 0x0800,
            src_port: 4321,
            dst_port: 80,
            _pad: 0,
            src_ipv4: [10, 200, 0, 2],
            dst_ipv4: [10, 200, 0, 3],
        };
        let flow = resolve("demo", &event, &pods);
        assert_eq!(
            flow.to_line(),
            "1.500000 demo web -> api redirected tcp 10.200.0.2:4321 -> 10.200.0.3:80 len 74"
        );
        let to_host = TraceEvent {
            peer_ifindex: 0,
            verdict: verdict::PASSED,
            protocol: 1,
            ..event
        };
        assert_eq!(
            resolve("demo", &to_host, &pods).to_line(),
            "1.500000 demo web -> host passed icmp 10.200.0.2 -> 10.200.0.3 len 74"
        );
        let arp = TraceEvent {
            hook: hook::TO_POD,
            ethertype: 0x0806,
            verdict: verdict::PASSED,
            peer_ifindex: 0,
            ..event
        };
        assert_eq!(
            resolve("demo", &arp, &pods).to_line(),
            "1.500000 demo host -> web passed arp len 74"
        );
        let dropped = TraceEvent {
            verdict: verdict::DROPPED,
            ..event
        };
        assert_eq!(
            resolve("demo", &dropped, &pods).drop_reason,
            Some("redirect_failed")
        );
    }
}
