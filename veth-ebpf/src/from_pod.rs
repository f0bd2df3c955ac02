//! TC ingress of the host-side veth: every frame a pod sends.
//!
//! First the checks of [`crate::deliver`], on headers wherever they are
//! (a frame whose headers are not in the linear part gets them pulled in
//! first), and for a tag the kernel already took out of the frame (it
//! does so before TC for the outer 802.1Q tag). Anything that fails is
//! dropped and counted with its reason, in every mode the program runs.
//!
//! Then, in mode tc, local delivery: a unicast IPv4 or IPv6 packet for
//! another pod of the topology is rewritten as if the node had routed it
//! (MACs, TTL/hop limit) and handed with `bpf_redirect_peer` straight to
//! the destination pod's `eth0`, skipping the host's IP stack and any
//! bridge. With cross-node `ebpf` or `ebpf-vxlan`, a packet for another
//! node's pod range is sent there by [`crate::cross_node`]. Everything else
//! continues to the host stack untouched.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use veth_common::{hook, DropReason, UNKNOWN_VETH_SLOT};

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    control::{may_carry_control, CONTROL_HEADER_BYTES},
    counters::{count, Direction, Verdict},
    cross_node,
    deliver::{decide, pod_of, Decision},
    packet::{ptr_at, CHECKED_HEADER_BYTES, ETH_P_IPV6_BE, ETH_P_IP_BE},
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
    let (ingress_ifindex, vlan_present) =
        unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).vlan_present) };
    let bytes = u64::from(ctx.len());
    // SAFETY: a plain read of a static; volatile so the loader's value counts.
    let redirect = unsafe { core::ptr::read_volatile(&REDIRECT_ENABLED) } != 0;
    let (slot, decision) = match pod_of(ingress_ifindex) {
        None => (UNKNOWN_VETH_SLOT, Decision::Drop(DropReason::UnknownVeth)),
        Some((slot, _)) if vlan_present != 0 => (slot, Decision::Drop(DropReason::VlanTagged)),
        Some((slot, me)) => {
            pull_headers(&ctx);
            (slot, decide(&ctx, me, redirect))
        }
    };
    let (verdict, peer_ifindex, action) = match decision {
        Decision::Redirect(target) => {
            // SAFETY: plain helper call; flags must be 0.
            let rc = unsafe { bpf_redirect_peer(target.host_ifindex, 0) };
            if rc == i64::from(TC_ACT_REDIRECT) {
                // The local redirect, most frames of a busy node: counted
                // here with its verdict known, as straight-line code.
                let into_pod = Verdict::Redirected;
                count(target.slot, Direction::ToPod, into_pod, bytes);
                count(slot, Direction::FromPod, into_pod, bytes);
                let peer = target.host_ifindex;
                maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer, into_pod);
                return TC_ACT_REDIRECT as i32;
            }
            let dropped = Verdict::Dropped(DropReason::RedirectFailed);
            (dropped, target.host_ifindex, TC_ACT_SHOT as i32)
        }
        Decision::Remote(hop) => {
            let (verdict, action) = cross_node::send(&ctx, &hop);
            (verdict, 0, action)
        }
        Decision::Pass => (Verdict::Passed, 0, CONTINUE),
        Decision::Drop(reason) => (Verdict::Dropped(reason), 0, TC_ACT_SHOT as i32),
    };
    count(slot, Direction::FromPod, verdict, bytes);
    maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer_ifindex, verdict);
    action
}

/// Makes the headers the checks read linear, for frames that carry them in
/// paged data (an AF_PACKET TX ring, or a large `send()`, puts only the
/// Ethernet header in the linear part): the fixed headers, and for a frame
/// that may be a control message, what follows them. Costs nothing for
/// frames that are linear. If a pull fails, the checks find the headers
/// missing and drop the frame.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let len = ctx.len();
    if linear_len(ctx) >= len {
        return;
    }
    if linear_len(ctx) < CHECKED_HEADER_BYTES {
        let _ = ctx.pull_data(len.min(CHECKED_HEADER_BYTES));
    }
    if linear_len(ctx) < CONTROL_HEADER_BYTES && len > linear_len(ctx) && carries_control(ctx) {
        let _ = ctx.pull_data(len.min(CONTROL_HEADER_BYTES));
    }
}

#[inline(always)]
fn linear_len(ctx: &TcContext) -> u32 {
    (ctx.data_end() - ctx.data()) as u32
}

/// The IPv4 protocol or IPv6 next header says "maybe a control message",
/// or the IPv4 header has options.
#[inline(always)]
fn carries_control(ctx: &TcContext) -> bool {
    let Some(eth) = ptr_at::<TcContext, EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked by `ptr_at` (each closure reads its header).
    match unsafe { (*eth).ether_type } {
        // IPv4 options too: they may reach past the fixed headers.
        ETH_P_IP_BE => ptr_at::<TcContext, Ipv4Hdr>(ctx, EthHdr::LEN)
            .is_some_and(|ip| unsafe { may_carry_control((*ip).proto) || (*ip).vihl & 0x0f != 5 }),
        ETH_P_IPV6_BE => ptr_at::<TcContext, Ipv6Hdr>(ctx, EthHdr::LEN)
            .is_some_and(|ip| unsafe { may_carry_control((*ip).next_hdr) }),
        _ => false,
    }
}

/// 1 in mode tc; 0 in the kernel-path modes (bridge, routed, pair), where
/// this program checks and counts, then leaves frames to the kernel. Set
/// at load time, folded by the verifier.
#[unsafe(no_mangle)]
static REDIRECT_ENABLED: u8 = 1;
