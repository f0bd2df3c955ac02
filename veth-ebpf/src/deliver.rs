//! What the TC and XDP programs do with a frame a pod sent: check it (fail
//! closed: anything that cannot be checked is dropped), then, in the
//! redirect modes, for a unicast IPv4/IPv6 packet to another pod of the
//! topology, the rewrite a router would do (MACs, TTL / hop limit).
//!
//! The checks, in order (the first that fails names the drop reason):
//! 1. an Ethernet header (`truncated`);
//! 2. no VLAN tag (`vlan_tagged`);
//! 3. the pod's own source MAC (`spoofed_mac`);
//! 4. IPv4, IPv6 or ARP (`unsupported_ethertype`);
//! 5. a well-formed network header (`malformed_ipv4`/`_ipv6`/`_arp`);
//! 6. the pod's own sender address (`spoofed_ipv4`/`_ipv6`/`_arp`; an IPv6
//!    source may also be the pod's own link-local address, and `::` on
//!    duplicate address detection and MLD reports; ARP may announce
//!    0.0.0.0 for duplicate detection);
//! 7. no router messages, no neighbour advertisement for another's address,
//!    no neighbour discovery behind a Fragment header, no IPv4 source
//!    route (`router_message`, `spoofed_neighbour`, `ipv4_source_route`;
//!    see [`crate::control`]);
//! 8. a GSO packet's segments fit the pod's MTU (`oversized_gso`).
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{ipv4_key, DropReason, Endpoint, PodIdentity};

use crate::{
    control, cross_node,
    maps::{DEVMAP, ENDPOINTS, ENDPOINTS6, PODS, SLOTS},
    packet::{
        arp_well_formed, checksum_after_ttl_decrement, copy_mac, ipv4_well_formed,
        ipv6_well_formed, is_group_mac, is_own_link_local, is_unspecified, is_vlan, network_header,
        ptr_at, Frame, L3,
    },
};

/// 1 in vethctl. Only the checks benchmark loads a private copy of the
/// programs with 0 (never attached) to measure what checking costs.
#[unsafe(no_mangle)]
static CHECKS_ENABLED: u8 = 1;

/// What to do with a frame after the checks.
pub enum Decision {
    /// Rewritten for this endpoint: hand it over.
    Redirect(Endpoint),
    /// For another node's pod range: send it there (TC; XDP passes it).
    Remote(cross_node::Hop),
    Pass,
    Drop(DropReason),
}

/// The slot of the pod behind a host-side veth; `None` for a veth that is
/// not (or no longer) one of our pairs.
#[inline(always)]
pub fn slot_of(host_ifindex: u32) -> Option<u32> {
    // SAFETY: a read-only map lookup.
    unsafe { SLOTS.get(host_ifindex) }.copied()
}

/// Checks a frame from the pod in `slot`; with `redirect`, also delivers
/// it locally when it is for another pod.
#[inline(always)]
pub fn decide<F: Frame>(ctx: &F, slot: u32, redirect: bool) -> Decision {
    let Some(me) = PODS.get(slot) else {
        return Decision::Drop(DropReason::UnknownVeth);
    };
    let Some(eth) = ptr_at::<F, EthHdr>(ctx, 0) else {
        return Decision::Drop(DropReason::Truncated);
    };
    // SAFETY: `ptr_at` bounds-checked the header.
    let (ether_type, src_mac, dst_mac) =
        unsafe { ((*eth).ether_type, (*eth).src_addr, (*eth).dst_addr) };
    if is_vlan(ether_type) {
        return Decision::Drop(DropReason::VlanTagged);
    }
    // SAFETY: a plain read of a static; volatile so the loader's value counts.
    let checks = unsafe { core::ptr::read_volatile(&CHECKS_ENABLED) } != 0;
    if checks && src_mac != me.mac {
        return Decision::Drop(DropReason::SpoofedMac);
    }
    let l3 = match network_header(ctx, ether_type) {
        Ok(l3) => l3,
        Err(reason) => return Decision::Drop(reason),
    };
    // Once per frame: the check and the delivery both need it.
    let own_ipv6 = match l3 {
        // SAFETY: `network_header` bounds-checked the header.
        L3::Ipv6(ip) => owns_ipv6(me, unsafe { &(*ip).src_addr }),
        _ => false,
    };
    if checks {
        // The bytes after the Ethernet header, non-linear ones included.
        let l3_len = ctx.len().saturating_sub(EthHdr::LEN as u32);
        let unspecified = match check_sender(&l3, me, l3_len, own_ipv6) {
            Ok(unspecified) => unspecified,
            Err(reason) => return Decision::Drop(reason),
        };
        let control = match l3 {
            L3::Ipv4(ip) => control::check_ipv4(ctx, ip),
            L3::Ipv6(ip) => control::check_ipv6(ctx, ip, me, unspecified),
            L3::Arp(_) => Ok(()),
        };
        if let Err(reason) = control {
            return Decision::Drop(reason);
        }
        // The host-side veth has the pod's MTU. (A pod's own stack never
        // makes larger segments; the kernel would forward them whole.)
        if !ctx.segments_fit_mtu_of(0) {
            return Decision::Drop(DropReason::OversizedGso);
        }
    }
    if !redirect || me.host_path != 0 || is_group_mac(dst_mac) {
        return Decision::Pass;
    }
    match l3 {
        L3::Ipv4(ip) => deliver_ipv4(ctx, eth, ip),
        // Only the pod's own global address is routed here: link-local
        // sources stay on the link, with the host.
        L3::Ipv6(ip) if own_ipv6 => deliver_ipv6(ctx, eth, ip),
        L3::Ipv6(_) | L3::Arp(_) => Decision::Pass,
    }
}

/// Steps 5 and 6: the network header is well formed and its sender is the
/// pod (`own_ipv6`: an IPv6 source is the pod's global address). True for
/// an IPv6 source `::`, which only some control messages may have.
#[inline(always)]
fn check_sender(
    l3: &L3,
    me: &PodIdentity,
    l3_len: u32,
    own_ipv6: bool,
) -> Result<bool, DropReason> {
    // SAFETY: `network_header` bounds-checked the fixed part of each header.
    unsafe {
        match *l3 {
            L3::Ipv4(ip) => {
                if !ipv4_well_formed((*ip).vihl, (*ip).tot_len, l3_len) {
                    return Err(DropReason::MalformedIpv4);
                }
                if (*ip).src_addr != me.ipv4 {
                    return Err(DropReason::SpoofedIpv4);
                }
            }
            L3::Ipv6(ip) => {
                if !ipv6_well_formed((*ip).vcf[0], (*ip).payload_len, l3_len) {
                    return Err(DropReason::MalformedIpv6);
                }
                let src = &(*ip).src_addr;
                if own_ipv6 || is_own_link_local(me, src) {
                    return Ok(false);
                }
                if is_unspecified(src) {
                    return Ok(true);
                }
                return Err(DropReason::SpoofedIpv6);
            }
            L3::Arp(arp) => {
                if !arp_well_formed((*arp).htype, (*arp).ptype, (*arp).hlen, (*arp).plen) {
                    return Err(DropReason::MalformedArp);
                }
                let spa = (*arp).spa;
                if (*arp).sha != me.mac || (spa != me.ipv4 && spa != [0; 4]) {
                    return Err(DropReason::SpoofedArp);
                }
            }
        }
    }
    Ok(false)
}

/// `addr` is the pod's own (global) IPv6 address.
#[inline(always)]
pub fn owns_ipv6(me: &PodIdentity, addr: &[u8; 16]) -> bool {
    me.has_ipv6 != 0 && *addr == me.ipv6
}

/// A checked IPv4 packet: redirected if it is for a ready pod, fits its
/// MTU and has TTL to spare; else the host stack decides (and answers).
#[inline(always)]
fn deliver_ipv4<F: Frame>(ctx: &F, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Decision {
    // SAFETY: bounds-checked headers; the program is the only writer of
    // the frame at this hook.
    unsafe {
        let dst = (*ip).dst_addr;
        let Some(endpoint) = ENDPOINTS.get(ipv4_key(dst)) else {
            return cross_node::route_ipv4(dst, (*ip).ttl);
        };
        deliver_ipv4_to(ctx, eth, ip, endpoint)
    }
}

/// Hands a checked IPv4 packet to the local `endpoint` if it can take it
/// (ready, its MTU, TTL to spare), rewritten as the node would route it;
/// else leaves it to the host stack. Also for frames from other nodes.
#[inline(always)]
pub fn deliver_ipv4_to<F: Frame>(
    ctx: &F,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    endpoint: &Endpoint,
) -> Decision {
    // SAFETY: as in `deliver_ipv4`.
    unsafe {
        let dst = (*ip).dst_addr;
        // TTL 1 must expire here, with an ICMP error from the host stack.
        if (*ip).ttl <= 1
            || !still_owned(endpoint, |p| p.ipv4 == dst)
            || !ctx.fits_mtu_of(endpoint.host_ifindex, endpoint.mtu)
        {
            return Decision::Pass;
        }
        rewrite_macs(eth, endpoint);
        (*ip).check = checksum_after_ttl_decrement((*ip).check);
        (*ip).ttl -= 1;
        Decision::Redirect(*endpoint)
    }
}

/// IPv6 likewise, for a packet from the pod's own global address.
#[inline(always)]
fn deliver_ipv6<F: Frame>(ctx: &F, eth: *mut EthHdr, ip: *mut Ipv6Hdr) -> Decision {
    // SAFETY: as in `deliver_ipv4`.
    unsafe {
        let dst = (*ip).dst_addr;
        let Some(endpoint) = ENDPOINTS6.get(dst) else {
            return cross_node::route_ipv6(dst, (*ip).hop_limit);
        };
        deliver_ipv6_to(ctx, eth, ip, endpoint)
    }
}

/// IPv6 likewise.
#[inline(always)]
pub fn deliver_ipv6_to<F: Frame>(
    ctx: &F,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    endpoint: &Endpoint,
) -> Decision {
    // SAFETY: as in `deliver_ipv4`.
    unsafe {
        let dst = (*ip).dst_addr;
        if (*ip).hop_limit <= 1
            || !still_owned(endpoint, |p| p.ipv6 == dst)
            || !ctx.fits_mtu_of(endpoint.host_ifindex, endpoint.mtu)
        {
            return Decision::Pass;
        }
        rewrite_macs(eth, endpoint);
        (*ip).hop_limit -= 1;
        Decision::Redirect(*endpoint)
    }
}

/// The endpoint's slot still belongs to its ifindex and to the pod that
/// owns the address, that pod is ready (its veth up) and not kept on the
/// host path (`PodIdentity::host_path`), and its veth is
/// still the device userspace put in the DEVMAP: never redirect to an
/// interface that merely reuses an old ifindex, through a slot given to
/// another pod, or into a pod whose veth is down or gone.
///
/// The DEVMAP test needs no userspace: the kernel deletes a device's
/// DEVMAP entries when the device is unregistered, and a new device with
/// the same ifindex is never added back by anyone but `up`.
#[inline(always)]
fn still_owned(endpoint: &Endpoint, owns: impl Fn(&PodIdentity) -> bool) -> bool {
    let owned = match PODS.get(endpoint.slot) {
        Some(pod) => {
            pod.ready != 0
                && pod.host_path == 0
                && pod.host_ifindex == endpoint.host_ifindex
                && owns(pod)
        }
        None => false,
    };
    owned && DEVMAP.get(endpoint.host_ifindex).is_some()
}

/// Source: the destination pod's gateway; destination: the pod.
#[inline(always)]
unsafe fn rewrite_macs(eth: *mut EthHdr, endpoint: &Endpoint) {
    // SAFETY: the caller passes a bounds-checked header.
    unsafe {
        copy_mac(&raw mut (*eth).src_addr, &endpoint.gateway_mac);
        copy_mac(&raw mut (*eth).dst_addr, &endpoint.pod_mac);
    }
}
