//! Sampled flow events for `vethctl trace`, through a ring buffer.
//!
//! Off unless a listener has set a sampling rate and keeps renewing its
//! deadline; off, the cost is one array lookup and a compare per frame.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use veth_common::TraceEvent;

use crate::{
    counters::Verdict,
    maps::{TRACE_CONFIG, TRACE_EVENTS},
    packet::{ptr_at, Frame},
};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Emits an event for this frame if tracing is on and it is sampled.
#[inline(always)]
pub fn maybe_emit<F: Frame>(ctx: &F, hook: u8, ifindex: u32, peer_ifindex: u32, verdict: Verdict) {
    let Some(config) = TRACE_CONFIG.get(0) else {
        return;
    };
    if config.sample_every == 0 {
        return;
    }
    emit_sampled(
        ctx,
        config.sample_every,
        config.ifindex,
        config.until_ns,
        hook,
        ifindex,
        peer_ifindex,
        verdict,
    );
}

// Inlined: BPF calls take at most five arguments. Nothing here runs while
// tracing is off.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_sampled<F: Frame>(
    ctx: &F,
    sample_every: u32,
    only_ifindex: u32,
    until_ns: u64,
    hook: u8,
    ifindex: u32,
    peer_ifindex: u32,
    verdict: Verdict,
) {
    if only_ifindex != 0 && only_ifindex != ifindex && only_ifindex != peer_ifindex {
        return;
    }
    // SAFETY: plain helper calls.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > until_ns {
        return;
    }
    if sample_every > 1 && unsafe { bpf_get_prandom_u32() } % sample_every != 0 {
        return;
    }
    let (verdict, reason) = verdict.code();
    let mut event = TraceEvent {
        timestamp_ns: now,
        ifindex,
        peer_ifindex,
        len: ctx.len(),
        hook,
        verdict,
        reason,
        ..TraceEvent::default()
    };
    fill_flow(ctx, &mut event);
    let _ = TRACE_EVENTS.output(event, 0);
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
