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
use veth_common::{slot_hint_index, DropReason, Endpoint, PodIdentity};

use crate::{
    control, cross_node,
    maps::{ENDPOINTS, ENDPOINTS6, ENDPOINT_HINTS, PODS, SLOTS, SLOT_HINTS},
    packet::{
        arp_well_formed, cold, decrement_ttl, eq16, ipv4_well_formed, ipv6_well_formed,
        is_group_mac, is_own_link_local, is_unspecified, is_vlan, load16, load32, load_mac, mac_eq,
        network_header, ptr_at, store_mac, Frame, ETH_P_IP_BE, L3,
    },
};

/// 1 in vethctl. Only the checks benchmark loads a private copy of the
/// programs with 0 (never attached) to measure what checking costs.
#[unsafe(no_mangle)]
static CHECKS_ENABLED: u8 = 1;

/// What to do with a frame after the checks.
pub enum Decision {
    /// Rewritten for this endpoint: hand it over.
    Redirect(Target),
    /// For another node's pod range: send it there (TC; XDP passes it).
    Remote(cross_node::Hop),
    Pass,
    Drop(DropReason),
}

/// Where a checked frame goes: what is left of its endpoint once the frame
/// is rewritten (two words, not the whole value: less to keep on the
/// stack, and nothing read twice from a value userspace may replace).
#[derive(Clone, Copy)]
pub struct Target {
    /// The destination pod's host-side veth.
    pub host_ifindex: u32,
    /// The destination pod's slot.
    pub slot: u32,
}

/// What a redirect needs of its destination: where the frame goes, and
/// what it is rewritten with. An [`Endpoint`] found in `ENDPOINTS`/
/// `ENDPOINTS6`, or a [`Hinted`] slot, whose identity carries the same.
pub trait Destination {
    fn target(&self) -> Target;
    fn mtu(&self) -> u32;
    fn pod_mac(&self) -> *const [u8; 6];
    fn gateway_mac(&self) -> *const [u8; 6];
}

impl Destination for Endpoint {
    #[inline(always)]
    fn target(&self) -> Target {
        Target {
            host_ifindex: self.host_ifindex,
            slot: self.slot,
        }
    }
    #[inline(always)]
    fn mtu(&self) -> u32 {
        self.mtu
    }
    #[inline(always)]
    fn pod_mac(&self) -> *const [u8; 6] {
        &self.pod_mac
    }
    #[inline(always)]
    fn gateway_mac(&self) -> *const [u8; 6] {
        &self.gateway_mac
    }
}

/// A destination found by its address's hint: its slot and the slot's
/// identity, one array entry (see [`hinted_pod`]).
pub struct Hinted {
    slot: u32,
    pod: &'static PodIdentity,
}

impl Destination for Hinted {
    #[inline(always)]
    fn target(&self) -> Target {
        Target {
            host_ifindex: self.pod.host_ifindex,
            slot: self.slot,
        }
    }
    #[inline(always)]
    fn mtu(&self) -> u32 {
        self.pod.mtu
    }
    #[inline(always)]
    fn pod_mac(&self) -> *const [u8; 6] {
        &self.pod.mac
    }
    #[inline(always)]
    fn gateway_mac(&self) -> *const [u8; 6] {
        &self.pod.gateway_mac
    }
}

/// The slot of the pod behind a host-side veth; `None` for a veth that is
/// not (or no longer) one of our pairs.
///
/// First the slot hint, an array entry (which the verifier inlines into a
/// bounds check and an add, where `SLOTS` costs a hash lookup): taken only
/// if that slot's identity names this veth. Userspace writes a hint after
/// the veth's `SLOTS` entry and clears it with the slot's identity, so a
/// hint that passes is what `SLOTS` says; a missing, colliding or stale
/// hint falls back to `SLOTS`, and a veth in neither is unknown (dropped).
#[inline(always)]
pub fn slot_of(host_ifindex: u32) -> Option<u32> {
    pod_of(host_ifindex).map(|(slot, _)| slot)
}

/// The same with the slot's identity, which the checks read next: the
/// hint's test already found it, and a second lookup would cost as much
/// again.
#[inline(always)]
pub fn pod_of(host_ifindex: u32) -> Option<(u32, &'static PodIdentity)> {
    if let Some(&hint) = SLOT_HINTS.get(slot_hint_index(host_ifindex)) {
        let slot = hint.wrapping_sub(1);
        if let Some(pod) = PODS.get(slot) {
            if pod.host_ifindex == host_ifindex {
                return Some((slot, pod));
            }
        }
    }
    // SAFETY: a read-only map lookup.
    let slot = *unsafe { SLOTS.get(host_ifindex) }?;
    PODS.get(slot).map(|pod| (slot, pod))
}

/// Checks a frame from the pod `me` (its identity, from [`pod_of`]); with
/// `redirect`, also delivers it locally when it is for another pod.
#[inline(always)]
pub fn decide<F: Frame>(ctx: &F, me: &PodIdentity, redirect: bool) -> Decision {
    let Some(eth) = ptr_at::<F, EthHdr>(ctx, 0) else {
        return dropped(DropReason::Truncated);
    };
    // SAFETY: `ptr_at` bounds-checked the header.
    let (ether_type, src_mac, group) = unsafe {
        (
            (*eth).ether_type,
            load_mac(&raw const (*eth).src_addr),
            is_group_mac((*eth).dst_addr),
        )
    };
    // IPv4, the most frequent, with one test.
    if ether_type != ETH_P_IP_BE && is_vlan(ether_type) {
        return dropped(DropReason::VlanTagged);
    }
    // SAFETY: a plain read of a static; volatile so the loader's value counts.
    let checks = unsafe { core::ptr::read_volatile(&CHECKS_ENABLED) } != 0;
    // SAFETY: a 6-byte field of the map value.
    if checks && !mac_eq(src_mac, unsafe { load_mac(&me.mac) }) {
        return dropped(DropReason::SpoofedMac);
    }
    let l3 = match network_header(ctx, ether_type) {
        Ok(l3) => l3,
        Err(reason) => return dropped(reason),
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
            Err(reason) => return dropped(reason),
        };
        let control = match l3 {
            L3::Ipv4(ip) => control::check_ipv4(ctx, ip),
            L3::Ipv6(ip) => control::check_ipv6(ctx, ip, me, unspecified),
            L3::Arp(_) => Ok(()),
        };
        if let Err(reason) = control {
            return dropped(reason);
        }
        // The host-side veth has the pod's MTU. (A pod's own stack never
        // makes larger segments; the kernel would forward them whole.)
        if !ctx.segments_fit_mtu_of(0) {
            return dropped(DropReason::OversizedGso);
        }
    }
    if !redirect || me.host_path != 0 || group {
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

/// A frame that failed a check. Rare (a pod's own stack sends none), so
/// marked cold: LLVM then lays the path of a frame that passes out
/// straight, in fewer instruction cache lines with fewer taken jumps.
#[inline(always)]
fn dropped(reason: DropReason) -> Decision {
    cold();
    Decision::Drop(reason)
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
                let tot_len = load16((*ip).tot_len.as_ptr()).to_ne_bytes();
                if !ipv4_well_formed((*ip).vihl, tot_len, l3_len) {
                    return Err(DropReason::MalformedIpv4);
                }
                if load32((*ip).src_addr.as_ptr()) != load32(me.ipv4.as_ptr()) {
                    return Err(DropReason::SpoofedIpv4);
                }
            }
            L3::Ipv6(ip) => {
                let payload_len = load16((*ip).payload_len.as_ptr()).to_ne_bytes();
                if !ipv6_well_formed((*ip).vcf[0], payload_len, l3_len) {
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
                let spa = load32((*arp).spa.as_ptr());
                let own_mac = mac_eq(load_mac(&raw const (*arp).sha), load_mac(&me.mac));
                if !own_mac || (spa != load32(me.ipv4.as_ptr()) && spa != 0) {
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
    // SAFETY: two 16-byte arrays.
    me.has_ipv6 != 0 && unsafe { eq16(addr, &me.ipv6) }
}

/// A checked IPv4 packet: redirected if it is for a ready pod, fits its
/// MTU and has TTL to spare; else the host stack decides (and answers).
#[inline(always)]
fn deliver_ipv4<F: Frame>(ctx: &F, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Decision {
    // SAFETY: bounds-checked headers; the program is the only writer of
    // the frame at this hook.
    unsafe {
        let dst = load32((*ip).dst_addr.as_ptr());
        let ttl = (*ip).ttl;
        // The hint: the low 16 bits of the address in network order.
        let hint = u32::from_be(dst) & 0xffff;
        if let Some(hinted) = hinted_pod(hint, |p| load32(p.ipv4.as_ptr()) == dst) {
            if !takes_redirects(hinted.pod) {
                return Decision::Pass;
            }
            return redirect_ipv4(ctx, eth, ip, &hinted, ttl);
        }
        match ENDPOINTS.get(dst) {
            Some(endpoint) => deliver_ipv4_to(ctx, eth, ip, endpoint),
            None => cross_node::route_ipv4(dst.to_ne_bytes(), ttl),
        }
    }
}

/// The destination by its address's hint, an array entry (the verifier
/// inlines it; `ENDPOINTS` costs a hash lookup): taken only if the hinted
/// slot is a pod's (it names a veth) and its identity `owns` the address.
/// Userspace writes the identity (with the MACs and MTU a redirect needs)
/// and the address's `ENDPOINTS` entry before the hint, and clears the
/// identity first when a pod goes, so a hint that passes finds the pod
/// `ENDPOINTS` holds; a missing, colliding or stale one falls back to
/// `ENDPOINTS`.
///
/// What `still_owned` would look up again is proven here (the slot
/// belongs to its veth and to the pod that owns the address), so the
/// caller only asks [`takes_redirects`], then checks the frame against
/// the destination (`claim_target` included) like any other.
#[inline(always)]
fn hinted_pod(hint: u32, owns: impl Fn(&PodIdentity) -> bool) -> Option<Hinted> {
    let slot = ENDPOINT_HINTS.get(hint)?.wrapping_sub(1);
    let pod = PODS.get(slot)?;
    if pod.host_ifindex == 0 || !owns(pod) {
        return None;
    }
    Some(Hinted { slot, pod })
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
        let dst = load32((*ip).dst_addr.as_ptr());
        if !still_owned(endpoint.target(), |p| load32(p.ipv4.as_ptr()) == dst) {
            return Decision::Pass;
        }
        redirect_ipv4(ctx, eth, ip, endpoint, (*ip).ttl)
    }
}

/// The checks every redirect of an IPv4 packet to a pod that may take it
/// ends with (TTL, MTU, `claim_target`), then the rewrite.
#[inline(always)]
fn redirect_ipv4<F: Frame, D: Destination>(
    ctx: &F,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    destination: &D,
    ttl: u8,
) -> Decision {
    let target = destination.target();
    // TTL 1 must expire here, with an ICMP error from the host stack.
    if ttl <= 1
        || !ctx.fits_mtu_of(target.host_ifindex, destination.mtu())
        || !ctx.claim_target(target.host_ifindex)
    {
        return Decision::Pass;
    }
    // SAFETY: as in `deliver_ipv4`.
    unsafe {
        rewrite_macs(eth, destination);
        decrement_ttl(ip, ttl);
    }
    Decision::Redirect(target)
}

/// IPv6 likewise, for a packet from the pod's own global address.
#[inline(always)]
fn deliver_ipv6<F: Frame>(ctx: &F, eth: *mut EthHdr, ip: *mut Ipv6Hdr) -> Decision {
    // SAFETY: as in `deliver_ipv4`.
    unsafe {
        // The key straight from the frame (the verifier takes a bounds-
        // checked packet pointer as a key): no copy to the stack.
        let dst: &[u8; 16] = &(*ip).dst_addr;
        let hop_limit = (*ip).hop_limit;
        let hint = 1 << 16 | u32::from(u16::from_be(load16(dst.as_ptr().add(14))));
        let owns = |p: &PodIdentity| p.has_ipv6 != 0 && eq16(&p.ipv6, dst);
        if let Some(hinted) = hinted_pod(hint, owns) {
            if !takes_redirects(hinted.pod) {
                return Decision::Pass;
            }
            return redirect_ipv6(ctx, eth, ip, &hinted, hop_limit);
        }
        match ENDPOINTS6.get(dst) {
            Some(endpoint) => deliver_ipv6_to(ctx, eth, ip, endpoint),
            None => cross_node::route_ipv6(dst, hop_limit),
        }
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
        let dst = &raw const (*ip).dst_addr;
        if !still_owned(endpoint.target(), |p| eq16(&p.ipv6, dst)) {
            return Decision::Pass;
        }
        redirect_ipv6(ctx, eth, ip, endpoint, (*ip).hop_limit)
    }
}

/// IPv6 likewise (hop limit, MTU, `claim_target`, rewrite).
#[inline(always)]
fn redirect_ipv6<F: Frame, D: Destination>(
    ctx: &F,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    destination: &D,
    hop_limit: u8,
) -> Decision {
    let target = destination.target();
    if hop_limit <= 1
        || !ctx.fits_mtu_of(target.host_ifindex, destination.mtu())
        || !ctx.claim_target(target.host_ifindex)
    {
        return Decision::Pass;
    }
    // SAFETY: as in `deliver_ipv4`.
    unsafe {
        rewrite_macs(eth, destination);
        (*ip).hop_limit = hop_limit - 1;
    }
    Decision::Redirect(target)
}

/// The endpoint's slot still belongs to its ifindex and to the pod that
/// owns the address, and that pod [`takes_redirects`]: never redirect
/// through a slot given to another pod. That the veth is still the device
/// userspace put in the DEVMAP (never redirect to an interface that merely
/// reuses an old ifindex, or into a pod whose veth is gone) is
/// [`Frame::claim_target`]'s test, which needs no userspace: the kernel
/// deletes a device's DEVMAP entries when the device is unregistered, and
/// a new device with the same ifindex is never added back by anyone but
/// `up`.
#[inline(always)]
fn still_owned(target: Target, owns: impl Fn(&PodIdentity) -> bool) -> bool {
    match PODS.get(target.slot) {
        Some(pod) => pod.host_ifindex == target.host_ifindex && owns(pod) && takes_redirects(pod),
        None => false,
    }
}

/// The pod is ready (its veth up) and not kept on the host path
/// (`PodIdentity::host_path`): never redirect into a pod whose veth is
/// down, or past the qdiscs and conntrack its host path has.
#[inline(always)]
fn takes_redirects(pod: &PodIdentity) -> bool {
    pod.ready != 0 && pod.host_path == 0
}

/// Source: the destination pod's gateway; destination: the pod.
#[inline(always)]
unsafe fn rewrite_macs<D: Destination>(eth: *mut EthHdr, destination: &D) {
    // SAFETY: the caller passes a bounds-checked header; the MACs are
    // 6-byte fields of the map value.
    unsafe {
        store_mac(
            &raw mut (*eth).src_addr,
            load_mac(destination.gateway_mac()),
        );
        store_mac(&raw mut (*eth).dst_addr, load_mac(destination.pod_mac()));
    }
}
