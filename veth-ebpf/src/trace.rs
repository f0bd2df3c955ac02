//! Sampled flow events for `vethctl trace`, through ring buffers: each
//! trace session has its own selection (`TRACE_CONFIG[i]`) and its own ring
//! (`TRACE_EVENTS_i`), so concurrent sessions never see each other's events.
//!
//! A session is off unless its listener has set a sampling rate and keeps
//! renewing its deadline. `TRACE_IDLE` says that no session is on: while
//! it is set (no `vethctl trace` running), the cost per frame is that one
//! array lookup and a test; only when it is clear does a frame look at
//! each session's switch. Clear is the safe default (a map made afresh,
//! programs loaded by a test): every switch is then looked at.
//!
//! An event carries the frame's first bytes rather than fields parsed
//! here: `vethctl trace` decodes them (IPv4, IPv6 with its extension
//! headers, ports, ICMP types), so the programs stay free of a second
//! parser the verifier would have to follow.
use aya_ebpf::{
    btf_maps::RingBuf,
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    programs::{TcContext, XdpContext},
};
use veth_common::{TraceConfig, TraceEvent, TRACE_HEADER_BYTES, TRACE_RING_BYTES};

use crate::{
    counters::Verdict,
    maps::{
        TRACE_CONFIG, TRACE_EVENTS_0, TRACE_EVENTS_1, TRACE_EVENTS_2, TRACE_EVENTS_3, TRACE_IDLE,
    },
    packet::Frame,
};

type Ring = RingBuf<TraceEvent, TRACE_RING_BYTES>;

/// A frame whose first bytes can be copied out, linear or not.
pub trait Capture: Frame {
    /// Copies the frame's first `len` bytes (1..=[`TRACE_HEADER_BYTES`])
    /// to `dst`; false if the kernel refused.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes.
    unsafe fn copy_head(&self, dst: *mut u8, len: u32) -> bool;
}

impl Capture for TcContext {
    #[inline(always)]
    unsafe fn copy_head(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: valid context; the caller vouches for `dst`.
        unsafe { bpf_skb_load_bytes(self.raw(), 0, dst.cast(), len) == 0 }
    }
}

impl Capture for XdpContext {
    #[inline(always)]
    unsafe fn copy_head(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: valid context; the caller vouches for `dst`.
        unsafe { bpf_xdp_load_bytes(self.raw().cast(), 0, dst.cast(), len) == 0 }
    }
}

/// Emits an event for this frame to every session that wants it.
#[inline(always)]
pub fn maybe_emit<F: Capture>(
    ctx: &F,
    hook: u8,
    ifindex: u32,
    peer_ifindex: u32,
    verdict: Verdict,
) {
    if !any_session() {
        return;
    }
    let event = Seen {
        hook,
        ifindex,
        peer_ifindex,
        verdict,
    };
    emit(ctx, &event);
}

/// The sessions, as a BPF subprogram: the programs reach this from each of
/// their verdicts, and inlined the four sessions were copied into every
/// one of them (a third of `from_pod`'s instructions). Only called while
/// some session may be on.
#[inline(never)]
fn emit<F: Capture>(ctx: &F, event: &Seen) {
    session(ctx, 0, &TRACE_EVENTS_0, event);
    session(ctx, 1, &TRACE_EVENTS_1, event);
    session(ctx, 2, &TRACE_EVENTS_2, event);
    session(ctx, 3, &TRACE_EVENTS_3, event);
}

/// Some session may be on. (A session that was killed leaves the flag
/// clear: then frames look at every session's switch, as before there was
/// this flag, until the next session that ends, or the next program load,
/// finds all of them off.)
#[inline(always)]
fn any_session() -> bool {
    TRACE_IDLE.get(0).is_none_or(|idle| *idle == 0)
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
fn session<F: Capture>(ctx: &F, index: u32, ring: &Ring, seen: &Seen) {
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
    // Reserved in the ring and filled in place: the event is too large for
    // the 512-byte stack beside the programs' own frames.
    let Some(mut entry) = ring.reserve(0) else {
        return;
    };
    let event: *mut TraceEvent = entry.as_mut_ptr();
    let (verdict, reason) = seen.verdict.code();
    let len = ctx.len();
    // SAFETY: `event` points to a whole reserved TraceEvent; every field
    // before `headers` is written, so no stale ring bytes reach userspace.
    unsafe {
        (*event).timestamp_ns = now;
        (*event).ifindex = seen.ifindex;
        (*event).peer_ifindex = seen.peer_ifindex;
        (*event).len = len;
        (*event).hook = seen.hook;
        (*event).verdict = verdict;
        (*event).reason = reason;
        (*event)._pad = 0;
        (*event)._pad2 = 0;
        (*event)._pad3 = 0;
        (*event).captured = capture(ctx, len, (*event).headers.as_mut_ptr());
    }
    entry.submit(0);
}

/// Copies up to [`TRACE_HEADER_BYTES`] of the frame to `dst`; returns how
/// many (0 if none could be read).
#[inline(always)]
fn capture<F: Capture>(ctx: &F, len: u32, dst: *mut u8) -> u16 {
    const MAX: u32 = TRACE_HEADER_BYTES as u32;
    if len == 0 {
        return 0;
    }
    // min(len, MAX), written so that the verifier sees 1..=MAX whatever
    // the compiler does with the comparison: a mask bounds it (MAX is a
    // power of two).
    let want = ((if len > MAX { MAX } else { len } - 1) & (MAX - 1)) + 1;
    // SAFETY: `dst` is the event's `headers`, MAX bytes.
    if unsafe { ctx.copy_head(dst, want) } {
        want as u16
    } else {
        0
    }
}

/// The session traces every pair, or the pair at either end of this frame.
#[inline(always)]
fn selects(config: &TraceConfig, seen: &Seen) -> bool {
    config.ifindex == 0 || config.ifindex == seen.ifindex || config.ifindex == seen.peer_ifindex
}
