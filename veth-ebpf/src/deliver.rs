//! Local delivery, shared by the TC and XDP programs: anti-spoofing of what
//! a pod sends, and for a unicast IPv4/IPv6 packet to another pod of the
//! topology, the rewrite a router would do (MACs, TTL / hop limit).
use network_types::eth::EthHdr;
use veth_common::{ipv4_key, DropReason, Endpoint, PodIdentity};

use crate::{
    maps::{ENDPOINTS, ENDPOINTS6, PODS, SLOTS},
    packet::{
        checksum_after_ttl_decrement, is_group_mac, is_link_local_or_unspecified, parse, Frame, L3,
    },
};

/// What to do with a frame after the checks.
pub enum Decision {
    /// Rewritten for this endpoint: hand it over.
    Redirect(Endpoint),
    Pass,
    Drop(DropReason),
}

/// The slot of the pod behind a host-side veth; `None` for a veth that is
/// not one of our pairs (or mid-`up`): not ours to judge or count.
#[inline(always)]
pub fn slot_of(host_ifindex: u32) -> Option<u32> {
    // SAFETY: a read-only map lookup.
    unsafe { SLOTS.get(host_ifindex) }.copied()
}

#[inline(always)]
pub fn decide<F: Frame>(ctx: &F, slot: u32) -> Decision {
    let Some(me) = PODS.get(slot) else {
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

/// The endpoint's slot still belongs to its ifindex and to the pod that
/// owns the address: never redirect to an interface that merely reuses an
/// old ifindex, or through a slot given to another pod.
#[inline(always)]
fn still_owned(endpoint: &Endpoint, owns: impl Fn(&PodIdentity) -> bool) -> bool {
    match PODS.get(endpoint.slot) {
        Some(pod) => pod.host_ifindex == endpoint.host_ifindex && owns(pod),
        None => false,
    }
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

/// Byte by byte: a plain array assignment between a map value and the
/// packet compiles to a call of a BPF `memmove` (the compiler cannot rule
/// out overlap), which showed up in profiles.
#[inline(always)]
unsafe fn copy_mac(dst: *mut [u8; 6], src: &[u8; 6]) {
    let dst = dst.cast::<u8>();
    // SAFETY: `dst` is a bounds-checked 6-byte field.
    unsafe {
        core::ptr::write_volatile(dst, src[0]);
        core::ptr::write_volatile(dst.add(1), src[1]);
        core::ptr::write_volatile(dst.add(2), src[2]);
        core::ptr::write_volatile(dst.add(3), src[3]);
        core::ptr::write_volatile(dst.add(4), src[4]);
        core::ptr::write_volatile(dst.add(5), src[5]);
    }
}
