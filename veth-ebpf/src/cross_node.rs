//! Frames from a pod for another node (cross-node `ebpf` and `ebpf-vxlan`).
//!
//! `deliver` asks here only when the destination is not a local endpoint:
//! the local path pays nothing more. One lookup of the remote-route trie
//! (Cilium's ipcache) then says whether the destination is another node's
//! pod range (send it there), this node's own range (the host stack's),
//! the cluster range outside every node (drop: `no_remote_route`), or
//! none of these (the host stack's).
//!
//! Sending, at TC only: the TTL or hop limit is decremented as a router
//! would, then
//! - native routing: `bpf_redirect_neigh` out of the underlay interface
//!   towards the remote node's underlay address (the kernel fills in the
//!   MACs from its neighbour table), never through the node's forwarding;
//!   an IPv6 frame to a node without an IPv6 underlay address goes by a FIB
//!   lookup of the node's IPv4 address and `bpf_redirect`;
//! - VXLAN: `bpf_skb_set_tunnel_key` (remote node, VNI) and `bpf_redirect`
//!   to the collect-metadata VXLAN device, which encapsulates.
//!
//! XDP cannot set a tunnel key or resolve neighbours: `xdp_from_pod` passes
//! frames for other nodes to the host stack (see docs/cluster.md, "Across nodes with the programs").
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibLookup, bpf_redir_neigh, bpf_tunnel_key, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_F_TUNINFO_IPV6, BPF_F_ZERO_CSUM_TX, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_set_tunnel_key,
    },
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{
    cross_node_mode, route_kind, vtep_mac, CrossNodeConfig, DropReason, RemoteRoute, GATEWAY_MAC,
    TUNNEL_MAC,
};

use crate::{
    counters::Verdict,
    deliver::Decision,
    maps::{CROSS_NODE, REMOTE_ROUTES, REMOTE_ROUTES6},
    packet::{self, copy_mac, load32, ptr_at, ETH_P_IP_BE},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Outer TTL / hop limit of encapsulated frames.
const TUNNEL_TTL: u8 = 64;

/// Where a frame for another node goes: that node, and how.
#[derive(Clone, Copy)]
pub struct Hop {
    pub route: RemoteRoute,
    pub config: CrossNodeConfig,
}

/// This node's cross-node configuration, if the programs send frames to
/// other nodes at all (else the kernel does).
#[inline(always)]
fn config() -> Option<&'static CrossNodeConfig> {
    CROSS_NODE
        .get(0)
        .filter(|c| c.mode == cross_node_mode::NATIVE || c.mode == cross_node_mode::TUNNEL)
}

/// An IPv4 destination that is no local endpoint (`ttl`: the packet's).
#[inline(always)]
pub fn route_ipv4(dst: [u8; 4], ttl: u8) -> Decision {
    let Some(config) = config() else {
        return Decision::Pass;
    };
    decide(REMOTE_ROUTES.get(&Key::new(32, dst)), config, ttl)
}

/// An IPv6 destination that is no local endpoint.
#[inline(always)]
pub fn route_ipv6(dst: &[u8; 16], hop_limit: u8) -> Decision {
    let Some(config) = config() else {
        return Decision::Pass;
    };
    decide(remote_route6(dst), config, hop_limit)
}

/// The remote-route entry of a whole IPv6 address. The key is built with
/// four word copies: aya's `Key` is packed (alignment 1), which LLVM fills
/// byte by byte (32 loads and stores per lookup).
#[inline(always)]
pub fn remote_route6(addr: &[u8; 16]) -> Option<&'static RemoteRoute> {
    #[repr(C)]
    struct Key6 {
        prefix_len: u32,
        data: [u32; 4],
    }
    let p = addr.as_ptr();
    // SAFETY: `addr` is 16 bytes.
    let key = Key6 {
        prefix_len: 128,
        data: unsafe {
            [
                load32(p),
                load32(p.add(4)),
                load32(p.add(8)),
                load32(p.add(12)),
            ]
        },
    };
    // SAFETY: the same 20 bytes as a `Key<[u8; 16]>` (no padding in
    // either); the lookup reads them only.
    let key: &Key<[u8; 16]> = unsafe { &*(&raw const key).cast() };
    REMOTE_ROUTES6.get(key)
}

#[inline(always)]
fn decide(route: Option<&RemoteRoute>, config: &CrossNodeConfig, ttl: u8) -> Decision {
    match route {
        Some(route) if route.kind == route_kind::REMOTE => {
            // TTL 1 must expire here, with an ICMP error from the host stack.
            if ttl <= 1 {
                return Decision::Pass;
            }
            Decision::Remote(Hop {
                route: *route,
                config: *config,
            })
        }
        Some(route) if route.kind == route_kind::UNROUTABLE => {
            Decision::Drop(DropReason::NoRemoteRoute)
        }
        _ => Decision::Pass,
    }
}

/// Sends a checked frame to the node of `hop`: the verdict to count for
/// the sending pod and the program's return code.
#[inline(always)]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
pub fn send(ctx: &TcContext, hop: &Hop) -> (Verdict, i32) {
    let Some(ipv4) = decrement_ttl(ctx) else {
        return dropped(DropReason::RedirectFailed);
    };
    let rc = match hop.config.mode {
        cross_node_mode::TUNNEL => encapsulate(ctx, hop),
        _ if ipv4 => neigh_v4_packet(hop),
        _ => match neigh_v6_packet(ctx, hop) {
            Ok(rc) => rc,
            Err(reason) => return dropped(reason),
        },
    };
    if rc == i64::from(TC_ACT_REDIRECT) {
        (Verdict::Remote, TC_ACT_REDIRECT as i32)
    } else {
        dropped(DropReason::RedirectFailed)
    }
}

#[inline(always)]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
fn dropped(reason: DropReason) -> (Verdict, i32) {
    (Verdict::Dropped(reason), TC_ACT_SHOT as i32)
}

/// What a router does to the packet; `Some(true)` for IPv4, `Some(false)`
/// for IPv6. (`deliver` checked the headers and the TTL before.)
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> Option<bool> {
    let eth = ptr_at::<TcContext, EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`; this program is the frame's only
    // writer at this hook.
    unsafe {
        if (*eth).ether_type == ETH_P_IP_BE {
            let ip = ptr_at::<TcContext, Ipv4Hdr>(ctx, EthHdr::LEN)?;
            packet::decrement_ttl(ip, (*ip).ttl);
            Some(true)
        } else {
            let ip = ptr_at::<TcContext, Ipv6Hdr>(ctx, EthHdr::LEN)?;
            (*ip).hop_limit -= 1;
            Some(false)
        }
    }
}

/// An IPv4 packet: out of the underlay to the node's IPv4 address (or, on
/// an IPv6-only underlay, its IPv6 one: RFC 5549 next hop).
#[inline(always)]
fn neigh_v4_packet(hop: &Hop) -> i64 {
    if hop.route.node_ipv4 != [0; 4] {
        redirect_neigh_v4(hop)
    } else {
        redirect_neigh_v6(hop)
    }
}

/// An IPv6 packet: to the node's IPv6 underlay address, or, without one,
/// by the FIB's route and neighbour for its IPv4 address.
#[inline(always)]
fn neigh_v6_packet(ctx: &TcContext, hop: &Hop) -> Result<i64, DropReason> {
    if hop.route.node_ipv6 != [0; 16] {
        return Ok(redirect_neigh_v6(hop));
    }
    let (ifindex, smac, dmac) = fib_v4(ctx, hop)?;
    let eth = ptr_at::<TcContext, EthHdr>(ctx, 0).ok_or(DropReason::RedirectFailed)?;
    // SAFETY: bounds-checked header.
    unsafe {
        copy_mac(&raw mut (*eth).src_addr, &smac);
        copy_mac(&raw mut (*eth).dst_addr, &dmac);
    }
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) })
}

#[inline(always)]
fn redirect_neigh_v4(hop: &Hop) -> i64 {
    // SAFETY: an all-zero `bpf_redir_neigh` is valid; the union member
    // written is the one `nh_family` names.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = u32::from(AF_INET);
    nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(hop.route.node_ipv4);
    redirect_neigh(hop, &mut nh)
}

#[inline(always)]
fn redirect_neigh_v6(hop: &Hop) -> i64 {
    // SAFETY: as in `redirect_neigh_v4`.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = u32::from(AF_INET6);
    nh.__bindgen_anon_1.ipv6_nh = words(hop.route.node_ipv6);
    redirect_neigh(hop, &mut nh)
}

#[inline(always)]
fn redirect_neigh(hop: &Hop, nh: &mut bpf_redir_neigh) -> i64 {
    let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
    // SAFETY: `nh` is a live `bpf_redir_neigh` of `size` bytes; flags 0.
    unsafe { bpf_redirect_neigh(hop.config.underlay_ifindex, nh, size, 0) }
}

/// The underlay route and neighbour towards the node's IPv4 address:
/// (ifindex, source MAC, destination MAC).
#[inline(always)]
fn fib_v4(ctx: &TcContext, hop: &Hop) -> Result<(u32, [u8; 6], [u8; 6]), DropReason> {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid request to fill in.
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = hop.config.underlay_ifindex;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(hop.route.node_ipv4);
    let size = core::mem::size_of::<FibLookup>() as i32;
    // SAFETY: valid context and a live request of `size` bytes.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), &mut fib, size, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || hop.route.node_ipv4 == [0; 4] {
        return Err(DropReason::NoUnderlayRoute);
    }
    Ok((fib.ifindex, fib.smac, fib.dmac))
}

/// VXLAN: the tunnel key names the node and the VNI; the inner MACs are
/// the ones every node's tunnel device takes as its own.
#[inline(always)]
fn encapsulate(ctx: &TcContext, hop: &Hop) -> i64 {
    // SAFETY: an all-zero `bpf_tunnel_key` is valid; the union member
    // written is the one the flags name.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = hop.config.vni;
    key.tunnel_ttl = TUNNEL_TTL;
    let flags = if hop.route.node_ipv4 != [0; 4] {
        // The kernel wants this one in host order.
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(hop.route.node_ipv4);
        // As the kernel's VXLAN does over IPv4: no outer UDP checksum.
        u64::from(BPF_F_ZERO_CSUM_TX)
    } else {
        key.__bindgen_anon_1.remote_ipv6 = words(hop.route.node_ipv6);
        u64::from(BPF_F_TUNINFO_IPV6)
    };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: valid context, a live key of `size` bytes.
    if unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size, flags) } != 0 {
        return i64::from(TC_ACT_SHOT);
    }
    let Some(eth) = ptr_at::<TcContext, EthHdr>(ctx, 0) else {
        return i64::from(TC_ACT_SHOT);
    };
    // The remote node's VTEP MAC when it has an IPv4 underlay address: a
    // node still on the kernel's VXLAN device (mid `vxlan` -> `ebpf-vxlan`)
    // takes only that one as its own, and `from_tunnel` takes any.
    let dst = if hop.route.node_ipv4 != [0; 4] {
        vtep_mac(hop.route.node_ipv4)
    } else {
        TUNNEL_MAC
    };
    // SAFETY: bounds-checked header.
    unsafe {
        copy_mac(&raw mut (*eth).dst_addr, &dst);
        copy_mac(&raw mut (*eth).src_addr, &GATEWAY_MAC);
        bpf_redirect(hop.config.tunnel_ifindex, 0)
    }
}

/// An address as the kernel's `__u32[4]` holds it (bytes in packet order).
#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(addr) }
}
