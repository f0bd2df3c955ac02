//! TC ingress of the host-side veth: every frame a pod sends.
//!
//! A unicast IPv4 frame for another local pod is rewritten as if the node had
//! routed it (MACs, TTL) and handed with `bpf_redirect_peer` straight to the
//! destination pod's `eth0`, skipping the host's IP stack and any bridge.
//! Everything else continues to the host stack untouched.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use veth_common::{hook, ipv4_key, DropReason, Endpoint};

use crate::{
    counters::{count, Direction, Verdict},
    maps::ENDPOINTS,
    packet::{checksum_after_ttl_decrement, unicast_ipv4},
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
    let (verdict, peer_ifindex, action) = match redirect_target(&ctx) {
        Some(target) => {
            // SAFETY: plain helper call; flags must be 0.
            let rc = unsafe { bpf_redirect_peer(target.host_ifindex, 0) };
            if rc == i64::from(TC_ACT_REDIRECT) {
                let into_pod = Verdict::Redirected;
                count(target.host_ifindex, Direction::ToPod, into_pod, bytes);
                (into_pod, target.host_ifindex, TC_ACT_REDIRECT as i32)
            } else {
                let dropped = Verdict::Dropped(DropReason::RedirectFailed);
                (dropped, target.host_ifindex, TC_ACT_SHOT as i32)
            }
        }
        None => (Verdict::Passed, 0, CONTINUE),
    };
    count(ingress_ifindex, Direction::FromPod, verdict, bytes);
    maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer_ifindex, verdict);
    action
}

/// The endpoint to redirect to, with the frame already rewritten for it; or
/// `None` (frame untouched) when the host stack should have it.
#[inline(always)]
fn redirect_target(ctx: &TcContext) -> Option<Endpoint> {
    let (eth, ip) = unicast_ipv4(ctx)?;
    // SAFETY: `unicast_ipv4` bounds-checked both headers; the program is the
    // only writer of the frame at this hook.
    unsafe {
        let endpoint = *ENDPOINTS.get(ipv4_key((*ip).dst_addr))?;
        // TTL 1 must expire here, with an ICMP error from the host stack.
        if (*ip).ttl <= 1 {
            return None;
        }
        (*eth).src_addr = endpoint.gateway_mac;
        (*eth).dst_addr = endpoint.pod_mac;
        (*ip).check = checksum_after_ttl_decrement((*ip).check);
        (*ip).ttl -= 1;
        Some(endpoint)
    }
}
