//! Frames from other nodes: TC ingress of the node's underlay interface
//! (cross-node `ebpf`) and of its collect-metadata VXLAN device
//! (`ebpf-vxlan`).
//!
//! A frame for a local pod is handed to the pod with `bpf_redirect_peer`,
//! rewritten as local delivery does (`deliver`), only if it comes from a
//! known node; anything else for a pod range is dropped and counted
//! (`unknown_node`, `wrong_vni`), in the destination pod's counters or, for
//! no pod, in `UNDERLAY_COUNTERS`. The node's own traffic passes untouched.
//!
//! "From a known node": at the underlay, native routing has no outer
//! header, so the source address must be a known node's underlay address
//! or lie in a remote node's pod range; through the tunnel, the outer
//! source (the tunnel key's) must be a known node and the VNI ours.
//!
//! In the kernel's cross-node modes (`host-gw`, `vxlan`) the same program
//! only checks: a frame for a pod range from a known node goes on to the
//! host stack, which routes it as without the program; with the kernel's
//! VXLAN device, a UDP frame to the network's VXLAN port must also come
//! from a known node's underlay address and carry our VNI.
use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_TUNINFO_IPV6, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_redirect_peer, bpf_skb_change_type, bpf_skb_get_tunnel_key},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{
    cross_node_mode, ipv4_key, node_key_v4, route_kind, CrossNodeConfig, DropReason, Endpoint,
};

use crate::{
    counters::{count, count_underlay, Direction, Verdict},
    deliver::{deliver_ipv4_to, deliver_ipv6_to, Decision},
    maps::{CROSS_NODE, ENDPOINTS, ENDPOINTS6, NODES, REMOTE_ROUTES},
    packet::{ptr_at, ETH_P_IPV6_BE, ETH_P_IP_BE},
};

/// Lets the frame continue to the host stack (and other TC programs).
const CONTINUE: i32 = TC_ACT_UNSPEC;

/// UDP, as IPv4's protocol and IPv6's next header.
const IPPROTO_UDP: u8 = 17;
/// UDP header, then the VXLAN header's flags and reserved bytes before
/// the VNI.
const UDP_LEN: usize = 8;
const VNI_AT: usize = UDP_LEN + 4;

#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    let Some(config) = CROSS_NODE.get(0) else {
        return CONTINUE;
    };
    match network(&ctx) {
        Some(Network::V4(eth, ip)) => underlay_ipv4(&ctx, eth, ip, config),
        Some(Network::V6(eth, ip)) => underlay_ipv6(&ctx, eth, ip, config),
        None => CONTINUE,
    }
}

#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    let from = tunnel_source(&ctx);
    match network(&ctx) {
        Some(Network::V4(eth, ip)) => {
            // SAFETY: bounds-checked by `network`; a read-only map lookup.
            let endpoint = unsafe { ENDPOINTS.get(ipv4_key((*ip).dst_addr)) };
            match from {
                Ok(()) => as_ours(
                    &ctx,
                    hand_over(&ctx, endpoint.map(|e| deliver_ipv4_to(&ctx, eth, ip, e))),
                ),
                Err(reason) => refuse(&ctx, endpoint, reason),
            }
        }
        Some(Network::V6(eth, ip)) => {
            // SAFETY: bounds-checked by `network`; a read-only map lookup.
            let endpoint = unsafe { ENDPOINTS6.get((*ip).dst_addr) };
            match from {
                Ok(()) => as_ours(
                    &ctx,
                    hand_over(&ctx, endpoint.map(|e| deliver_ipv6_to(&ctx, eth, ip, e))),
                ),
                Err(reason) => refuse(&ctx, endpoint, reason),
            }
        }
        // Only IP is ever sent through the tunnel.
        None => match from {
            Ok(()) => CONTINUE,
            Err(reason) => refuse(&ctx, None, reason),
        },
    }
}

/// A checked frame from the tunnel that goes on to the node's stack is
/// the node's: its inner destination is the node's VTEP MAC (see
/// `encapsulate`), not the tunnel device's, which left it marked for
/// another host, and the stack would drop it.
#[inline(always)]
fn as_ours(ctx: &TcContext, verdict: i32) -> i32 {
    if verdict == CONTINUE {
        // SAFETY: plain helper call on a live context; PACKET_HOST is 0.
        unsafe { bpf_skb_change_type(ctx.skb.skb, 0) };
    }
    verdict
}

enum Network {
    V4(*mut EthHdr, *mut Ipv4Hdr),
    V6(*mut EthHdr, *mut Ipv6Hdr),
}

/// The frame's Ethernet and fixed IP headers, for IPv4 and IPv6 only.
#[inline(always)]
fn network(ctx: &TcContext) -> Option<Network> {
    let eth = ptr_at::<TcContext, EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*eth).ether_type } {
        ETH_P_IP_BE => Some(Network::V4(eth, ptr_at(ctx, EthHdr::LEN)?)),
        ETH_P_IPV6_BE => Some(Network::V6(eth, ptr_at(ctx, EthHdr::LEN)?)),
        _ => None,
    }
}

#[inline(always)]
fn underlay_ipv4(
    ctx: &TcContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    config: &CrossNodeConfig,
) -> i32 {
    // SAFETY: bounds-checked by `network`.
    let (src, dst, proto, vihl, frags) = unsafe {
        let ip = &*ip;
        (ip.src_addr, ip.dst_addr, ip.proto, ip.vihl, ip.frags)
    };
    // SAFETY: read-only map lookups (also below).
    let endpoint = unsafe { ENDPOINTS.get(ipv4_key(dst)) };
    if endpoint.is_none() && REMOTE_ROUTES.get(&Key::new(32, dst)).is_none() {
        // Only a first fragment (offset 0) starts with the UDP header; a
        // later one joins a datagram only after its checked first part.
        let first_fragment = frags[0] & 0x1f == 0 && frags[1] == 0;
        if proto != IPPROTO_UDP || !first_fragment {
            return CONTINUE;
        }
        // At most 14 + 60: the IHL is four bits.
        let udp_at = EthHdr::LEN + usize::from(vihl & 0x0f) * 4;
        return check_vxlan(ctx, config, udp_at, node_key_v4(src));
    }
    let remote_pod = REMOTE_ROUTES
        .get(&Key::new(32, src))
        .is_some_and(|r| r.kind == route_kind::REMOTE);
    if !remote_pod && unsafe { NODES.get(node_key_v4(src)) }.is_none() {
        return refuse(ctx, endpoint, DropReason::UnknownNode);
    }
    if checks_only(config) {
        return CONTINUE;
    }
    hand_over(ctx, endpoint.map(|e| deliver_ipv4_to(ctx, eth, ip, e)))
}

#[inline(always)]
fn underlay_ipv6(
    ctx: &TcContext,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    config: &CrossNodeConfig,
) -> i32 {
    // SAFETY: bounds-checked by `network`.
    let (src, dst, next_header) = unsafe { ((*ip).src_addr, (*ip).dst_addr, (*ip).next_hdr) };
    // SAFETY: read-only map lookups (also below).
    let endpoint = unsafe { ENDPOINTS6.get(dst) };
    if endpoint.is_none() && crate::cross_node::remote_route6(&dst).is_none() {
        // The kernel's VXLAN device here listens on IPv4 only: an IPv6
        // datagram reaches it with no extension header, if at all.
        if next_header != IPPROTO_UDP {
            return CONTINUE;
        }
        return check_vxlan(ctx, config, EthHdr::LEN + Ipv6Hdr::LEN, src);
    }
    let remote_pod =
        crate::cross_node::remote_route6(&src).is_some_and(|r| r.kind == route_kind::REMOTE);
    if !remote_pod && unsafe { NODES.get(src) }.is_none() {
        return refuse(ctx, endpoint, DropReason::UnknownNode);
    }
    if checks_only(config) {
        return CONTINUE;
    }
    hand_over(ctx, endpoint.map(|e| deliver_ipv6_to(ctx, eth, ip, e)))
}

/// The kernel's cross-node modes: a known node's frame goes on to the
/// host stack, which routes it to the pod.
#[inline(always)]
fn checks_only(config: &CrossNodeConfig) -> bool {
    config.mode == cross_node_mode::GUARD || config.mode == cross_node_mode::GUARD_VXLAN
}

/// With the kernel's VXLAN device, a UDP datagram (header at `udp_at`) to
/// the network's VXLAN port passes only from a known node (`node`: its
/// key in `NODES`) with our VNI: the device would hand anything it takes
/// to the pods. One too short to show its VNI cannot be checked: dropped.
#[inline(always)]
fn check_vxlan(ctx: &TcContext, config: &CrossNodeConfig, udp_at: usize, node: [u8; 16]) -> i32 {
    if config.mode != cross_node_mode::GUARD_VXLAN {
        return CONTINUE;
    }
    // Source and destination port; too short for them, the kernel drops it.
    let Some(ports) = ptr_at::<TcContext, [u8; 4]>(ctx, udp_at) else {
        return CONTINUE;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let [_, _, p0, p1] = unsafe { *ports };
    if u32::from(u16::from_be_bytes([p0, p1])) != config.port {
        return CONTINUE;
    }
    // SAFETY: a read-only map lookup.
    if unsafe { NODES.get(node) }.is_none() {
        return refuse(ctx, None, DropReason::UnknownNode);
    }
    // The VNI's three bytes and the reserved one after them.
    let Some(vni) = ptr_at::<TcContext, [u8; 4]>(ctx, udp_at + VNI_AT) else {
        return refuse(ctx, None, DropReason::Truncated);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let [v0, v1, v2, _] = unsafe { *vni };
    if u32::from_be_bytes([0, v0, v1, v2]) != config.vni {
        return refuse(ctx, None, DropReason::WrongVni);
    }
    CONTINUE
}

/// The tunnel key names a known node and our VNI.
#[inline(always)]
fn tunnel_source(ctx: &TcContext) -> Result<(), DropReason> {
    // SAFETY: an all-zero key is valid for the helper to fill in.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: valid context, a live key of `size` bytes. The helper fails
    // (-EPROTO) when the flag does not name the tunnel's family.
    let node = unsafe {
        if bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, 0) == 0 {
            node_key_v4(key.__bindgen_anon_1.remote_ipv4.to_be_bytes())
        } else if bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, u64::from(BPF_F_TUNINFO_IPV6))
            == 0
        {
            bytes(key.__bindgen_anon_1.remote_ipv6)
        } else {
            // No tunnel metadata: not from the tunnel at all.
            return Err(DropReason::UnknownNode);
        }
    };
    // SAFETY: a read-only map lookup.
    if unsafe { NODES.get(node) }.is_none() {
        return Err(DropReason::UnknownNode);
    }
    match CROSS_NODE.get(0) {
        Some(config) if config.vni == key.tunnel_id => Ok(()),
        _ => Err(DropReason::WrongVni),
    }
}

/// Bytes in packet order of the kernel's `__u32[4]` (which holds them so).
#[inline(always)]
fn bytes(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// A frame from a known node: to its local pod if `deliver` rewrote it
/// for one, else (no endpoint, or one that cannot take it now) to the host
/// stack.
#[inline(always)]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
fn hand_over(ctx: &TcContext, decision: Option<Decision>) -> i32 {
    let Some(Decision::Redirect(target)) = decision else {
        return CONTINUE;
    };
    let bytes = u64::from(ctx.len());
    // SAFETY: plain helper call; flags must be 0.
    let rc = unsafe { bpf_redirect_peer(target.host_ifindex, 0) };
    if rc == i64::from(TC_ACT_REDIRECT) {
        count(target.slot, Direction::ToPod, Verdict::Remote, bytes);
        TC_ACT_REDIRECT as i32
    } else {
        let dropped = Verdict::Dropped(DropReason::RedirectFailed);
        count(target.slot, Direction::ToPod, dropped, bytes);
        TC_ACT_SHOT as i32
    }
}

/// Drops a frame for a pod range, counted for its pod if it has one.
#[inline(always)]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
fn refuse(ctx: &TcContext, endpoint: Option<&Endpoint>, reason: DropReason) -> i32 {
    let bytes = u64::from(ctx.len());
    match endpoint {
        Some(e) => count(e.slot, Direction::ToPod, Verdict::Dropped(reason), bytes),
        None => count_underlay(Verdict::Dropped(reason), bytes),
    }
    TC_ACT_SHOT as i32
}
