//! Control messages a pod must not send: ICMPv6 router advertisements and
//! redirects and ICMP redirects (pods are not routers; on a shared bridge,
//! such a message from one pod reroutes the others), and IPv6 neighbour
//! advertisements for an address that is not the pod's own (global or
//! link-local), which would poison neighbour caches. Fail closed: a chain of
//! IPv6 extension headers too long (or cut too short) to see past is
//! dropped as malformed.
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{DropReason, PodIdentity};

use crate::{
    deliver::owns_ipv6,
    packet::{is_link_local, ptr_at, Frame},
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers that may come before an ICMPv6 message.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (and dropping).
const MAX_EXTENSION_HEADERS: usize = 3;
/// Offsets past this are not looked at (the frame is dropped as
/// malformed); a bound the verifier can see.
const MAX_OFFSET: usize = 1023;

const ICMP_REDIRECT: u8 = 5;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const ICMPV6_REDIRECT: u8 = 137;

/// Header bytes (after the Ethernet header's start) within which the
/// control checks must find what they read; at TC, frames that may carry a
/// control message get this much pulled into the linear part.
pub const CONTROL_HEADER_BYTES: u32 = (EthHdr::LEN + Ipv6Hdr::LEN + 64) as u32;

/// True if `next_header` (IPv6) or `protocol` (IPv4) may carry what this
/// module judges: only such frames need more than the fixed headers.
#[inline(always)]
pub fn may_carry_control(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_ICMP | IPPROTO_ICMPV6 | NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST
    )
}

/// An IPv4 packet from the pod is not an ICMP redirect.
#[inline(always)]
pub fn check_ipv4<F: Frame>(ctx: &F, ip: *const Ipv4Hdr) -> Result<(), DropReason> {
    // SAFETY: the caller bounds-checked the fixed header.
    let (proto, vihl) = unsafe { ((*ip).proto, (*ip).vihl) };
    if proto != IPPROTO_ICMP {
        return Ok(());
    }
    // At most 14 + 60: the IHL is four bits.
    let offset = EthHdr::LEN + usize::from(vihl & 0x0f) * 4;
    // Type and code: two bytes, because LLVM turns a one-byte bounds check
    // into `ptr >= end`, which the verifier does not take as proof.
    let Some(icmp) = ptr_at::<F, [u8; 2]>(ctx, offset) else {
        return Err(DropReason::MalformedIpv4);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if unsafe { (*icmp)[0] } == ICMP_REDIRECT {
        return Err(DropReason::RouterMessage);
    }
    Ok(())
}

/// An IPv6 packet from the pod is neither a router message nor a
/// neighbour advertisement for someone else's address.
#[inline(always)]
pub fn check_ipv6<F: Frame>(
    ctx: &F,
    ip: *const Ipv6Hdr,
    me: &PodIdentity,
) -> Result<(), DropReason> {
    // SAFETY: the caller bounds-checked the fixed header.
    let mut next = unsafe { (*ip).next_hdr };
    if !may_carry_control(next) {
        return Ok(());
    }
    let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if !matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST) {
            break;
        }
        if offset > MAX_OFFSET {
            return Err(DropReason::MalformedIpv6);
        }
        let Some(header) = ptr_at::<F, [u8; 2]>(ctx, offset) else {
            return Err(DropReason::MalformedIpv6);
        };
        // SAFETY: bounds-checked by `ptr_at`.
        let [following, length] = unsafe { *header };
        next = following;
        offset += (usize::from(length) + 1) * 8;
    }
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => Err(DropReason::MalformedIpv6),
        IPPROTO_ICMPV6 if offset > MAX_OFFSET => Err(DropReason::MalformedIpv6),
        IPPROTO_ICMPV6 => check_icmpv6(ctx, offset, me),
        _ => Ok(()),
    }
}

#[inline(always)]
fn check_icmpv6<F: Frame>(ctx: &F, offset: usize, me: &PodIdentity) -> Result<(), DropReason> {
    // Type and code (two bytes: see `check_ipv4`).
    let Some(icmp) = ptr_at::<F, [u8; 2]>(ctx, offset) else {
        return Err(DropReason::MalformedIpv6);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*icmp)[0] } {
        ICMPV6_ROUTER_ADVERTISEMENT | ICMPV6_REDIRECT => Err(DropReason::RouterMessage),
        ICMPV6_NEIGHBOUR_ADVERTISEMENT => {
            // Type, code, checksum, flags (8 bytes), then the target.
            let Some(target) = ptr_at::<F, [u8; 16]>(ctx, offset + 8) else {
                return Err(DropReason::MalformedIpv6);
            };
            // SAFETY: bounds-checked by `ptr_at`.
            let target = unsafe { &*target };
            if owns_ipv6(me, target) || is_link_local(target) {
                Ok(())
            } else {
                Err(DropReason::SpoofedNeighbour)
            }
        }
        _ => Ok(()),
    }
}
