//! Control messages and header contents a pod must not send: ICMPv6 router
//! advertisements and redirects and ICMP redirects (pods are not routers;
//! on a shared bridge, such a message from one pod reroutes the others),
//! IPv6 neighbour advertisements for an address that is not the pod's own
//! (global or its own link-local), which would poison neighbour caches,
//! neighbour discovery behind a Fragment header (RFC 6980: never valid; a
//! bridge's defragmenter would strip the header and the victim take it as
//! plain), `::` sources on anything but duplicate address detection and
//! MLD reports, and IPv4 source routes.
//!
//! Fail closed: a chain of IPv6 extension headers too long (or cut too
//! short) to see past, and IPv4 options that run past their header, are
//! dropped as malformed. Fragments after the first carry no upper-layer
//! header: their data is never read as one.
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{DropReason, PodIdentity};

use crate::{
    deliver::owns_ipv6,
    packet::{is_own_link_local, ptr_at, Frame},
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers that may come before an ICMPv6 message.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (and dropping).
const MAX_EXTENSION_HEADERS: usize = 3;
/// Offsets past this are not looked at (the frame is dropped as
/// malformed); a bound the verifier can see.
const MAX_OFFSET: usize = 1023;

const ICMP_REDIRECT: u8 = 5;
const ICMPV6_MLD_REPORT: u8 = 131;
const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const ICMPV6_REDIRECT: u8 = 137;
const ICMPV6_MLDV2_REPORT: u8 = 143;

/// IPv4 options (RFC 791): end of the list, no-operation, and the two
/// source routes.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
/// Where the longest IPv4 header (IHL 15) ends in the frame.
const MAX_IPV4_HEADER_END: usize = EthHdr::LEN + 60;
/// Options in at most 40 bytes, each one byte or more.
const MAX_IPV4_OPTIONS: usize = 40;

/// Header bytes (after the Ethernet header's start) within which the
/// control checks must find what they read; at TC, frames that may carry a
/// control message or IPv4 options get this much pulled into the linear
/// part.
pub const CONTROL_HEADER_BYTES: u32 = (EthHdr::LEN + Ipv6Hdr::LEN + 64) as u32;

/// True if `next_header` (IPv6) or `protocol` (IPv4) may carry what this
/// module judges: only such frames need more than the fixed headers.
#[inline(always)]
pub fn may_carry_control(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_ICMP
            | IPPROTO_ICMPV6
            | NEXTHDR_HOP
            | NEXTHDR_ROUTING
            | NEXTHDR_FRAGMENT
            | NEXTHDR_DEST
    )
}

/// An IPv4 packet from the pod has no source route option and is not an
/// ICMP redirect.
#[inline(always)]
pub fn check_ipv4<F: Frame>(ctx: &F, ip: *const Ipv4Hdr) -> Result<(), DropReason> {
    // SAFETY: the caller bounds-checked the fixed header.
    let (proto, vihl, frags) = unsafe { ((*ip).proto, (*ip).vihl, (*ip).frags) };
    // At most 14 + 60: the IHL is four bits.
    let header_end = EthHdr::LEN + usize::from(vihl & 0x0f) * 4;
    if header_end > EthHdr::LEN + Ipv4Hdr::LEN {
        check_ipv4_options(ctx, header_end)?;
    }
    // Only a first fragment (offset 0) starts with the ICMP header.
    let first_fragment = frags[0] & 0x1f == 0 && frags[1] == 0;
    if proto != IPPROTO_ICMP || !first_fragment {
        return Ok(());
    }
    // Type and code: two bytes, because LLVM turns a one-byte bounds check
    // into `ptr >= end`, which the verifier does not take as proof.
    let Some(icmp) = ptr_at::<F, [u8; 2]>(ctx, header_end) else {
        return Err(DropReason::MalformedIpv4);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if unsafe { (*icmp)[0] } == ICMP_REDIRECT {
        return Err(DropReason::RouterMessage);
    }
    Ok(())
}

/// The options between the fixed IPv4 header and `header_end` hold no
/// source route, and each one fits the header (as the kernel's
/// `ip_options_compile` demands). After an end-of-options byte the rest
/// is padding, which the kernel ignores too. Each option is read with the
/// byte after it, so a header that ends the frame with a one-byte option
/// is dropped as malformed (no packet a pod needs looks like that).
#[inline(always)]
fn check_ipv4_options<F: Frame>(ctx: &F, header_end: usize) -> Result<(), DropReason> {
    let mut at = EthHdr::LEN + Ipv4Hdr::LEN;
    for _ in 0..MAX_IPV4_OPTIONS {
        if at >= header_end {
            break;
        }
        if at >= MAX_IPV4_HEADER_END {
            return Err(DropReason::MalformedIpv4);
        }
        // Type and length (of a multi-byte option).
        let Some(option) = ptr_at::<F, [u8; 2]>(ctx, at) else {
            return Err(DropReason::MalformedIpv4);
        };
        // SAFETY: bounds-checked by `ptr_at`.
        let [kind, length] = unsafe { *option };
        match kind {
            IPOPT_END => break,
            IPOPT_LSRR | IPOPT_SSRR => return Err(DropReason::Ipv4SourceRoute),
            _ => {}
        }
        let length = option_length(kind, length);
        if length == 0 || at + length > header_end {
            return Err(DropReason::MalformedIpv4);
        }
        at += length;
    }
    Ok(())
}

/// The length of an option: 1 for a no-operation, else its length byte
/// (0 if that is below 2, the least a multi-byte option takes). Computed
/// without a branch, so that the verifier walks one path per option
/// rather than one per mix of no-operations and others.
#[inline(always)]
fn option_length(kind: u8, length: u8) -> usize {
    // 0 for a no-operation, 1 for anything else.
    let multi = (usize::from(kind ^ IPOPT_NOOP) + 0xff) >> 8;
    // SAFETY: a plain stack read; volatile so that LLVM cannot turn the
    // arithmetic back into a branch.
    let multi = unsafe { core::ptr::read_volatile(&multi) };
    // 0 for a length byte of 0 or 1, else the byte.
    let long_enough = (usize::from(length) + 0xfe) >> 8;
    multi * usize::from(length) * long_enough + (1 - multi)
}

/// An IPv6 packet from the pod is neither a router message, nor a
/// neighbour advertisement for someone else's address, nor neighbour
/// discovery behind a Fragment header; from `::` (`unspecified`), it is a
/// duplicate address detection solicitation or an MLD report.
#[inline(always)]
pub fn check_ipv6<F: Frame>(
    ctx: &F,
    ip: *const Ipv6Hdr,
    me: &PodIdentity,
    unspecified: bool,
) -> Result<(), DropReason> {
    // SAFETY: the caller bounds-checked the fixed header.
    let mut next = unsafe { (*ip).next_hdr };
    let not_from_unspecified = if unspecified {
        Err(DropReason::SpoofedIpv6)
    } else {
        Ok(())
    };
    if !may_carry_control(next) {
        return not_from_unspecified;
    }
    let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
    let mut fragmented = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if !matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST
        ) {
            break;
        }
        if offset > MAX_OFFSET {
            return Err(DropReason::MalformedIpv6);
        }
        // Next header and length, then (in a Fragment header) the offset.
        let Some(header) = ptr_at::<F, [u8; 4]>(ctx, offset) else {
            return Err(DropReason::MalformedIpv6);
        };
        // SAFETY: bounds-checked by `ptr_at`.
        let [following, length, offset_high, offset_low] = unsafe { *header };
        if next == NEXTHDR_FRAGMENT {
            // A later fragment's data is not a header: leave it to
            // reassembly, whose first fragment was judged here.
            if offset_high != 0 || offset_low & 0xf8 != 0 {
                return not_from_unspecified;
            }
            fragmented = true;
            offset += 8;
        } else {
            offset += (usize::from(length) + 1) * 8;
        }
        next = following;
    }
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST => {
            Err(DropReason::MalformedIpv6)
        }
        IPPROTO_ICMPV6 if offset > MAX_OFFSET => Err(DropReason::MalformedIpv6),
        IPPROTO_ICMPV6 => check_icmpv6(ctx, offset, me, unspecified, fragmented),
        _ => not_from_unspecified,
    }
}

#[inline(always)]
fn check_icmpv6<F: Frame>(
    ctx: &F,
    offset: usize,
    me: &PodIdentity,
    unspecified: bool,
    fragmented: bool,
) -> Result<(), DropReason> {
    // Type and code (two bytes: see `check_ipv4`).
    let Some(icmp) = ptr_at::<F, [u8; 2]>(ctx, offset) else {
        return Err(DropReason::MalformedIpv6);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*icmp)[0] } {
        ICMPV6_ROUTER_ADVERTISEMENT | ICMPV6_REDIRECT => Err(DropReason::RouterMessage),
        ICMPV6_ROUTER_SOLICITATION if fragmented => Err(DropReason::RouterMessage),
        ICMPV6_NEIGHBOUR_SOLICITATION | ICMPV6_NEIGHBOUR_ADVERTISEMENT if fragmented => {
            Err(DropReason::SpoofedNeighbour)
        }
        // An advertisement, or a duplicate address detection solicitation
        // (from `::`), claims its target address.
        ICMPV6_NEIGHBOUR_ADVERTISEMENT if !unspecified => target_is_own(ctx, offset, me),
        ICMPV6_NEIGHBOUR_SOLICITATION if unspecified => target_is_own(ctx, offset, me),
        ICMPV6_MLD_REPORT | ICMPV6_MLDV2_REPORT => Ok(()),
        _ if unspecified => Err(DropReason::SpoofedIpv6),
        _ => Ok(()),
    }
}

/// The target of the neighbour message at `offset` is the pod's global or
/// own link-local address.
#[inline(always)]
fn target_is_own<F: Frame>(ctx: &F, offset: usize, me: &PodIdentity) -> Result<(), DropReason> {
    // Type, code, checksum, flags or reserved (8 bytes), then the target.
    let Some(target) = ptr_at::<F, [u8; 16]>(ctx, offset + 8) else {
        return Err(DropReason::MalformedIpv6);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let target = unsafe { &*target };
    if owns_ipv6(me, target) || is_own_link_local(me, target) {
        Ok(())
    } else {
        Err(DropReason::SpoofedNeighbour)
    }
}
