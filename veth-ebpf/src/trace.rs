//! Sampled flow events for `vethctl trace`, through ring buffers: each
//! trace session has its own selection (`TRACE_CONFIG[i]`) and its own ring
//! (`TRACE_EVENTS_i`), so concurrent sessions never see each other's events.
//!
//! A session is off unless its listener has set a sampling rate and keeps
//! renewing its deadline; with every session off, the cost is one array
//! lookup and a compare per session and frame.
use aya_ebpf::{
    btf_maps::RingBuf,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use veth_common::{TraceConfig, TraceEvent, TRACE_RING_BYTES};

use crate::{
    counters::Verdict,
    maps::{TRACE_CONFIG, TRACE_EVENTS_0, TRACE_EVENTS_1, TRACE_EVENTS_2, TRACE_EVENTS_3},
    packet::{ptr_at, Frame},
};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

type Ring = RingBuf<TraceEvent, TRACE_RING_BYTES>;

/// Emits an event for this frame to every session that wants it.
#[inline(always)]
pub fn maybe_emit<F: Frame>(ctx: &F, hook: u8, ifindex: u32, peer_ifindex: u32, verdict: Verdict) {
    let event = Seen {
        hook,
        ifindex,
        peer_ifindex,
        verdict,
    };
    session(ctx, 0, &TRACE_EVENTS_0, &event);
    session(ctx, 1, &TRACE_EVENTS_1, &event);
    session(ctx, 2, &TRACE_EVENTS_2, &event);
    session(ctx, 3, &TRACE_EVENTS_3, &event);
}

/// What the program saw and decided.
struct Seen {
    hook: u8,
    ifindex: u32,
    peer_ifindex: u32,
    verdict: Verdict,
}

// Inlined: BPF calls take at most five arguments, and the ring must be a
// constant for the verifier. Nothing past the first test runs while the
// session is off.
#[inline(always)]
fn session<F: Frame>(ctx: &F, index: u32, ring: &Ring, seen: &Seen) {
    let Some(config) = TRACE_CONFIG.get(index) else {
        return;
    };
    if config.sample_every == 0 || !selects(config, seen) {
        return;
    }
    // SAFETY: plain helper calls.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > config.until_ns {
        return;
    }
    let sample_every = config.sample_every;
    if sample_every > 1 && unsafe { bpf_get_prandom_u32() } % sample_every != 0 {
        return;
    }
    let (verdict, reason) = seen.verdict.code();
    let mut event = TraceEvent {
        timestamp_ns: now,
        ifindex: seen.ifindex,
        peer_ifindex: seen.peer_ifindex,
        len: ctx.len(),
        hook: seen.hook,
        verdict,
        reason,
        ..TraceEvent::default()
    };
    fill_flow(ctx, &mut event);
    let _ = ring.output(event, 0);
}

/// The session traces every pair, or the pair at either end of this frame.
#[inline(always)]
fn selects(config: &TraceConfig, seen: &Seen) -> bool {
    config.ifindex == 0 || config.ifindex == seen.ifindex || config.ifindex == seen.peer_ifindex
}

/// Ethertype, and for IPv4 the addresses, protocol and TCP/UDP ports.
#[inline(always)]
fn fill_flow<F: Frame>(ctx: &F, event: &mut TraceEvent) {
    let Some(eth) = ptr_at::<F, EthHdr>(ctx, 0) else {
        return;
    };
    // SAFETY: every pointer below comes bounds-checked from `ptr_at`.
    unsafe {
        event.ethertype = u16::from_be((*eth).ether_type);
        if event.ethertype != ETH_P_IP {
            return;
        }
        let Some(ip) = ptr_at::<F, Ipv4Hdr>(ctx, EthHdr::LEN) else {
            return;
        };
        event.src_ipv4 = (*ip).src_addr;
        event.dst_ipv4 = (*ip).dst_addr;
        event.protocol = (*ip).proto;
        // Ports only after an option-less header: a constant offset keeps
        // the verifier simple, and options are rare in pod traffic.
        if (event.protocol == IPPROTO_TCP || event.protocol == IPPROTO_UDP) && (*ip).vihl == 0x45 {
            if let Some(ports) = ptr_at::<F, [u8; 4]>(ctx, EthHdr::LEN + Ipv4Hdr::LEN) {
                let ports = *ports;
                event.src_port = u16::from_be_bytes([ports[0], ports[1]]);
                event.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            }
        }
    }
}
