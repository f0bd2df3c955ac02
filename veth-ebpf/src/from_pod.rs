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
use network_types::eth::EthHdr;
use veth_common::{hook, ipv4_key, DropReason, Endpoint, PodIdentity};

use crate::{
    counters::{count, Direction, Verdict},
    maps::{ENDPOINTS, ENDPOINTS6, PODS},
    packet::{checksum_after_ttl_decrement, is_group_mac, is_link_local_or_unspecified, parse, L3},
    trace::maybe_emit,
};

/// Verdict that lets the frame continue: to the next TCX program if any,
/// else to the host stack. Unlike `TC_ACT_OK` it does not hide the frame
/// from other TC programs a user runs on the same device.
const CONTINUE: i32 = TC_ACT_UNSPEC;

/// What to do with a frame after the checks.
enum Decision {
    Redirect(Endpoint),
    Pass,
    Drop(DropReason),
}

#[classifier]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
pub fn from_pod(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ingress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = u64::from(ctx.len());
    let (verdict, peer_ifindex, action) = match decide(&ctx, ingress_ifindex) {
        Decision::Redirect(target) => {
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
        Decision::Pass => (Verdict::Passed, 0, CONTINUE),
        Decision::Drop(reason) => (Verdict::Dropped(reason), 0, TC_ACT_SHOT as i32),
    };
    count(ingress_ifindex, Direction::FromPod, verdict, bytes);
    maybe_emit(&ctx, hook::FROM_POD, ingress_ifindex, peer_ifindex, verdict);
    action
}

/// 1 in mode tc; 0 in the kernel-path modes (bridge, routed, pair), where
/// this program only counts. Set at load time, folded by the verifier.
#[unsafe(no_mangle)]
static REDIRECT_ENABLED: u8 = 1;

#[inline(always)]
fn decide(ctx: &TcContext, ingress_ifindex: u32) -> Decision {
    // SAFETY: a plain read of a static; volatile so the loader's value counts.
    if unsafe { core::ptr::read_volatile(&REDIRECT_ENABLED) } == 0 {
        return Decision::Pass;
    }
    // Not one of our pairs (or mid-`up`): not ours to judge.
    // SAFETY: a read-only map lookup.
    let Some(me) = (unsafe { PODS.get(ingress_ifindex) }) else {
        return Decision::Pass;
    };
    let Some((eth, l3)) = parse(ctx) else {
        return Decision::Pass;
    };
    // SAFETY: `parse` bounds-checked the headers it returns; the program is
    // the only writer of the frame at this hook.
    unsafe {
        if (*eth).src_addr != me.mac {
            return Decision::Drop(DropReason::SpoofedMac);
        }
        let unicast = !is_group_mac((*eth).dst_addr);
        match l3 {
            L3::Ipv4(ip) => {
                if (*ip).src_addr != me.ipv4 {
                    return Decision::Drop(DropReason::SpoofedIpv4);
                }
                if !unicast {
                    return Decision::Pass;
                }
                let dst = (*ip).dst_addr;
                let Some(endpoint) = ENDPOINTS.get(ipv4_key(dst)) else {
                    return Decision::Pass;
                };
                // TTL 1 must expire here, with an ICMP error from the host stack.
                if (*ip).ttl <= 1 || !still_owned(endpoint, |p| p.ipv4 == dst) {
                    return Decision::Pass;
                }
                rewrite_macs(eth, endpoint);
                (*ip).check = checksum_after_ttl_decrement((*ip).check);
                (*ip).ttl -= 1;
                Decision::Redirect(*endpoint)
            }
            L3::Ipv6(ip) => {
                let src = (*ip).src_addr;
                let own = src == me.ipv6 && me.ipv6 != [0; 16];
                if !own && !is_link_local_or_unspecified(&src) {
                    return Decision::Drop(DropReason::SpoofedIpv6);
                }
                if !own || !unicast {
                    return Decision::Pass;
                }
                let dst = (*ip).dst_addr;
                let Some(endpoint) = ENDPOINTS6.get(dst) else {
                    return Decision::Pass;
                };
                if (*ip).hop_limit <= 1 || !still_owned(endpoint, |p| p.ipv6 == dst) {
                    return Decision::Pass;
                }
                rewrite_macs(eth, endpoint);
                (*ip).hop_limit -= 1;
                Decision::Redirect(*endpoint)
            }
            L3::Arp(sender) => {
                if sender != me.ipv4 && sender != [0; 4] {
                    return Decision::Drop(DropReason::SpoofedArp);
                }
                Decision::Pass
            }
            L3::Other => Decision::Pass,
        }
    }
}

/// The endpoint's ifindex still belongs to the pod that owns the address:
/// never redirect to an interface that merely reuses an old ifindex.
#[inline(always)]
fn still_owned(endpoint: &Endpoint, owns: impl Fn(&PodIdentity) -> bool) -> bool {
    // SAFETY: a read-only map lookup.
    match unsafe { PODS.get(endpoint.host_ifindex) } {
        Some(pod) => owns(pod),
        None => false,
    }
}

/// Source: the destination pod's gateway; destination: the pod.
#[inline(always)]
unsafe fn rewrite_macs(eth: *mut EthHdr, endpoint: &Endpoint) {
    // SAFETY: the caller passes a bounds-checked header.
    unsafe {
        (*eth).src_addr = endpoint.gateway_mac;
        (*eth).dst_addr = endpoint.pod_mac;
    }
}
