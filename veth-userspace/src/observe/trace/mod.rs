//! `vethctl trace`: follows the programs' sampled flow events, decodes
//! the frame bytes they carry, filters and prints them.

pub mod clock;
pub mod decode;
pub mod event;
pub mod filter;

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::io::unix::AsyncFd;
use veth_common::{TraceConfig, TraceEvent};

use self::clock::WallClock;
pub use self::{
    event::{resolve, FlowEvent},
    filter::Filter,
};
use super::node_streams::NodeStreams;
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
    /// Stop after this many events (that pass `filter`).
    pub count: Option<u64>,
    /// What to print of the sampled events.
    pub filter: Filter,
    pub json: bool,
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
    let mut clock = WallClock::now()?;
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
            clock = WallClock::now()?;
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
                    if !show(&item, topology, &pods_by_ifindex, &clock, request, out)? {
                        continue;
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

/// `vethctl trace` of labs from their machine: every node's own trace
/// (`node_args` for the lab, run on the node), its lines printed as they
/// come, up to `count` in all. A node that cannot trace (e.g. `--pod`
/// names a pod it does not have) is said on stderr; an error only when no
/// node could.
pub async fn follow_labs(
    labs: &[String],
    node_args: impl Fn(&str) -> Vec<String>,
    count: Option<u64>,
    out: &mut impl Write,
) -> Result<u64> {
    let mut nodes = NodeStreams::start(labs, node_args)?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let mut printed = 0u64;
    while count.is_none_or(|c| printed < c) {
        let next = tokio::select! {
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
            next = nodes.next_line() => next,
        };
        let Some((_, line)) = next else { break };
        writeln!(out, "{line}")?;
        out.flush()?;
        printed += 1;
    }
    nodes.finish().await?;
    Ok(printed)
}

/// Decodes one ring record and prints it if it passes the request's
/// filter; true if it was printed.
fn show(
    item: &[u8],
    topology: &Topology,
    pods_by_ifindex: &BTreeMap<u32, String>,
    clock: &WallClock,
    request: &TraceRequest,
    out: &mut impl Write,
) -> Result<bool> {
    // Records of another size come from programs another vethctl loaded
    // (an upgrade not yet followed by `up`): nothing in them can be read.
    if item.len() != std::mem::size_of::<TraceEvent>() {
        bail!(
            "topology {:?}: its programs send trace events of {} bytes, this vethctl reads \
             {}: they were loaded by another vethctl version; `vethctl up` reloads them",
            topology.name,
            item.len(),
            std::mem::size_of::<TraceEvent>()
        );
    }
    // SAFETY: the programs write whole TraceEvents; read unaligned.
    let event: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    let decoded = decode::decode(decode::captured(&event));
    if !request.filter.matches(&event, &decoded) {
        return Ok(false);
    }
    let flow = resolve(topology, &event, &decoded, pods_by_ifindex, clock);
    if request.json {
        writeln!(out, "{}", serde_json::to_string(&flow)?)?;
    } else {
        writeln!(out, "{}", flow.to_line())?;
    }
    Ok(true)
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_now() -> Result<Duration> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TraceRequest {
        TraceRequest {
            pod: None,
            sample_every: 1,
            count: None,
            filter: Filter::default(),
            json: false,
        }
    }

    #[test]
    fn records_of_older_programs_are_an_error_that_says_what_to_do() {
        let topology = Topology::default_topology();
        let clock = WallClock::from_readings(0, 0);
        let mut out = Vec::new();
        // A TraceEvent before events carried frame bytes was 40 bytes.
        let err = show(
            &[0; 40],
            &topology,
            &BTreeMap::new(),
            &clock,
            &request(),
            &mut out,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("events of 40 bytes") && err.contains("`vethctl up` reloads them"),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_record_is_printed_only_if_it_passes_the_filter() {
        let topology = Topology::default_topology();
        let clock = WallClock::from_readings(0, 0);
        let event = TraceEvent {
            len: 60,
            verdict: veth_common::verdict::PASSED,
            ..TraceEvent::default()
        };
        // SAFETY: TraceEvent is plain old data without padding holes.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(
                (&event as *const TraceEvent).cast(),
                std::mem::size_of::<TraceEvent>(),
            )
        };
        let mut out = Vec::new();
        let mut udp_only = request();
        udp_only.filter.protocols = vec![filter::Protocol::Udp];
        assert!(!show(
            bytes,
            &topology,
            &BTreeMap::new(),
            &clock,
            &udp_only,
            &mut out
        )
        .unwrap());
        assert!(out.is_empty());
        assert!(show(
            bytes,
            &topology,
            &BTreeMap::new(),
            &clock,
            &request(),
            &mut out
        )
        .unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000Z demo if0 -> host passed 0x0000 len 60\n"
        );
    }
}
