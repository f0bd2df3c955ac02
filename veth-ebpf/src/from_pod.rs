//! TC ingress of the host-side veth: every frame a pod sends.
//!
//! First, anti-spoofing: a frame must carry the pod's own MAC, and its IPv4,
//! IPv6 or ARP sender address must be the pod's (IPv6 link-local and
//! unspecified sources are allowed for neighbour discovery); anything else
//! is dropped and counted with its reason.
//!
//! Then local delivery: a unicast IPv4 or IPv6 packet for another pod of the
//! topology is rewritten as if the node had routed it (MACs, TTL/hop limit)
//! and handed with `bpf_redirect_peer` straight to the destination pod's
//! `eth0`, skipping the host's IP stack and any bridge. Everything else
//! continues to the host stack untouched.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use veth_common::{hook, DropReason};

use crate::{
    counters::{count, Direction, Verdict},
    deliver::{decide, slot_of, Decision},
    trace::maybe_emit,
};

/// Verdict that lets the frame continue: to the next TCX program if any,
/// else to the host stack. Unlike `TC_ACT_OK` it does not hide the frame
/// from other TC programs a user runs on the same device.
const CONTINUE: i32 = TC_ACT_UNSPEC;

#[classifier]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
pub fn from_pod(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ingress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = u64::from(ctx.len());
    // SAFETY: a plain read of a static; volatile so the loader's value counts.
    let redirect = unsafe { core::ptr::read_volatile(&REDIRECT_ENABLED) } != 0;
    let Some(slot) = slot_of(ingress_ifindex) else {
        return CONTINUE;
    };
    let decision = if redirect {
        decide(&ctx, slot)
    } else {
        Decision::Pass
    };
    let (verdict, peer_ifindex, action) = match decision {
        Decision::Redirect(target) => {
            // SAFETY: plain helper call; flags must be 0.
            let rc = unsafe { bpf_redirect_peer(target.host_ifindex, 0) };
            if rc == i64::from(TC_ACT_REDIRECT) {
                let into_pod = Verdict::Redirected;
                count(target.slot, Direction::ToPod, into_pod, bytes);
                (into_pod, target.host_ifindex, TC_ACT_REDIRECT as i32)
            } else {
                let dropped = Verdict::Dropped(DropReason::RedirectFailed);
                (dropped, target.host_ifindex, TC_ACT_SHOT as i32)
            }
        }
        Decision::Pass => (Verdict::Passed, 0, CONTINUE),
        Decision::Drop(reason) => (Verdict::Dropped(reason), 0, TC_ACT_SHOT as i32),
    };
    count(slot, Direction::FromPod, verdict, bytes);
    maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer_ifindex, verdict);
    action
}

/// 1 in mode tc; 0 in the kernel-path modes (bridge, routed, pair), where
/// this program only counts. Set at load time, folded by the verifier.
#[unsafe(no_mangle)]
static REDIRECT_ENABLED: u8 = 1;
