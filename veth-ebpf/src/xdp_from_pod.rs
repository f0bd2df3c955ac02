//! Mode xdp: XDP at the host-side veth, the earliest hook a frame from a pod
//! reaches. Same checks and rewrite as the TC program (`deliver`), with
//! `bpf_redirect_map` through the DEVMAP to the destination pod's host-side
//! veth, whose transmit hands the frame to the pod's `eth0` (which needs
//! NAPI: `vethctl` turns GRO on there). The redirect's own DEVMAP lookup is
//! the proof that the target is still the device `up` wired: a frame whose
//! target has no entry is left to the host stack, unchanged.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    macros::xdp,
    programs::XdpContext,
};
use veth_common::{hook, DropReason, UNKNOWN_VETH_SLOT};

use crate::{
    counters::{count, Direction, Verdict},
    deliver::{decide, pod_of, Decision},
    packet::Frame,
    trace::maybe_emit,
};

#[xdp]
pub fn xdp_from_pod(ctx: XdpContext) -> u32 {
    let ingress_ifindex = ctx.ingress_ifindex() as u32;
    let bytes = u64::from(ctx.len());
    // The veth hands XDP the whole frame in one buffer (the program does
    // not take fragments), so every header is in reach.
    let (slot, decision) = match pod_of(ingress_ifindex) {
        None => (UNKNOWN_VETH_SLOT, Decision::Drop(DropReason::UnknownVeth)),
        Some((slot, me)) => (slot, decide(&ctx, me, true)),
    };
    let (verdict, peer_ifindex, action) = match decision {
        // `bpf_redirect_map` already took the target (see
        // `Frame::claim_target`): the frame goes there on XDP_REDIRECT.
        // Counted here with its verdict known, as straight-line code.
        Decision::Redirect(target) => {
            let into_pod = Verdict::Redirected;
            count(target.slot, Direction::ToPod, into_pod, bytes);
            count(slot, Direction::FromPod, into_pod, bytes);
            let peer = target.host_ifindex;
            maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer, into_pod);
            return XDP_REDIRECT;
        }
        // XDP can neither set a tunnel key nor resolve the next hop's MAC:
        // frames for other nodes take the host stack's path (see
        // `cross_node`).
        Decision::Remote(_) | Decision::Pass => (Verdict::Passed, 0, XDP_PASS),
        Decision::Drop(reason) => (Verdict::Dropped(reason), 0, XDP_DROP),
    };
    count(slot, Direction::FromPod, verdict, bytes);
    maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer_ifindex, verdict);
    action
}
