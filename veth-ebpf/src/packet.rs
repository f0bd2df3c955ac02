//! Bounds-checked direct packet access and the header rewrites of local
//! delivery (Cilium's `local_delivery.h` does the same: MACs, then TTL).
use core::mem;

use aya_ebpf::{
    bindings::{bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, xdp_action::XDP_PASS},
    cty::c_void,
    helpers::generated::bpf_check_mtu,
    programs::{TcContext, XdpContext},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use veth_common::{DropReason, PodIdentity};

use crate::maps::DEVMAP;

/// EtherTypes as they sit in the frame (network order).
pub const ETH_P_IP_BE: u16 = 0x0800_u16.to_be();
pub const ETH_P_IPV6_BE: u16 = 0x86dd_u16.to_be();
pub const ETH_P_ARP_BE: u16 = 0x0806_u16.to_be();

/// A frame a program can read and write directly: TC's skb or XDP's buffer.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole frame.
    fn len(&self) -> u32;
    /// The program context, for helpers that take it.
    fn raw(&self) -> *mut c_void;

    /// True if the frame fits `mtu`, the MTU of the destination pod's
    /// `eth0` (for a GSO skb: each of its segments fits the MTU of the
    /// device `ifindex`), so a redirect never hands a pod more than it
    /// accepts; larger packets are left to the host stack, which answers
    /// with "fragmentation needed" / "packet too big". Only GSO frames
    /// cost a helper call.
    #[inline(always)]
    fn fits_mtu_of(&self, ifindex: u32, mtu: u32) -> bool {
        if !self.is_gso() {
            return self.len() <= mtu + EthHdr::LEN as u32;
        }
        self.segments_fit_mtu_of(ifindex)
    }

    /// True unless the frame is a GSO skb with a segment larger than the
    /// MTU of device `ifindex` (0: the device it arrived on). Without
    /// `BPF_MTU_CHK_SEGS` the kernel passes every GSO skb.
    #[inline(always)]
    fn segments_fit_mtu_of(&self, ifindex: u32) -> bool {
        if !self.is_gso() {
            return true;
        }
        let mut mtu_len: u32 = 0;
        // SAFETY: valid context, a live out-parameter (0: check the skb's
        // own length, as BPF_MTU_CHK_SEGS requires).
        unsafe {
            bpf_check_mtu(
                self.raw(),
                ifindex,
                &mut mtu_len,
                0,
                u64::from(BPF_MTU_CHK_SEGS),
            ) == 0
        }
    }

    /// A GSO skb, whose length is the sum of its segments.
    fn is_gso(&self) -> bool;

    /// Takes the device `ifindex` as this frame's redirect target if the
    /// DEVMAP still holds it: the proof that it is the device `up` wired
    /// (the kernel deletes a device's entries when the device goes, and
    /// only `up` adds them), so that nothing is redirected to a device
    /// that merely reuses an old ifindex. Checked last, just before the
    /// rewrite: in XDP it is the redirect itself.
    fn claim_target(&self, ifindex: u32) -> bool;
}

impl Frame for TcContext {
    /// A DEVMAP lookup: `bpf_redirect_peer` names its target by ifindex
    /// alone.
    #[inline(always)]
    fn claim_target(&self, ifindex: u32) -> bool {
        DEVMAP.get(ifindex).is_some()
    }
    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { (*self.skb.skb).gso_size != 0 }
    }
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb.cast()
    }
}

impl Frame for XdpContext {
    /// `bpf_redirect_map` through the DEVMAP, with the host stack as the
    /// fallback of a missing entry: its own lookup is the proof, so XDP
    /// needs no second one. (The redirect takes effect only if the program
    /// returns `XDP_REDIRECT`, which it does once this is true.)
    #[inline(always)]
    fn claim_target(&self, ifindex: u32) -> bool {
        DEVMAP.redirect(ifindex, u64::from(XDP_PASS)).is_ok()
    }
    /// XDP frames are single segments (and, without fragment support,
    /// single buffers: `len` is the whole frame).
    #[inline(always)]
    fn is_gso(&self) -> bool {
        false
    }
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }
}

/// Marks the path it is on as rarely taken, so that LLVM lays the frequent
/// path out straight. Emits no instruction. (The host build, only for
/// clippy and the unit tests, may predate the hint.)
#[inline(always)]
pub fn cold() {
    #[cfg(target_arch = "bpf")]
    core::hint::cold_path();
}

/// Returns a pointer to a `T` at `offset` if the linear data holds it; the
/// explicit check against `data_end` is what lets the verifier accept it.
#[inline(always)]
pub fn ptr_at<F: Frame, T>(ctx: &F, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// EtherTypes of VLAN tags: 802.1Q, 802.1ad and the old pre-standard QinQ.
pub const ETH_P_8021Q_BE: u16 = 0x8100_u16.to_be();
pub const ETH_P_8021AD_BE: u16 = 0x88a8_u16.to_be();
pub const ETH_P_QINQ1_BE: u16 = 0x9100_u16.to_be();

/// Header bytes the checks read: Ethernet plus the longest fixed network
/// header they look at (IPv6). At TC, frames whose linear part is shorter
/// get this much pulled in first.
pub const CHECKED_HEADER_BYTES: u32 = (EthHdr::LEN + Ipv6Hdr::LEN) as u32;

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[repr(C)]
pub struct ArpIpv4 {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The network layer of a frame, as far as the programs care.
pub enum L3 {
    Ipv4(*mut Ipv4Hdr),
    Ipv6(*mut Ipv6Hdr),
    Arp(*const ArpIpv4),
}

/// True for the EtherTypes of VLAN tags.
#[inline(always)]
pub fn is_vlan(ether_type_be: u16) -> bool {
    ether_type_be == ETH_P_8021Q_BE
        || ether_type_be == ETH_P_8021AD_BE
        || ether_type_be == ETH_P_QINQ1_BE
}

/// The network header after the Ethernet header, if the frame holds all of
/// its fixed part; which EtherTypes exist at all is the caller's check.
#[inline(always)]
pub fn network_header<F: Frame>(ctx: &F, ether_type_be: u16) -> Result<L3, DropReason> {
    match ether_type_be {
        ETH_P_IP_BE => ptr_at(ctx, EthHdr::LEN)
            .map(L3::Ipv4)
            .ok_or(DropReason::MalformedIpv4),
        ETH_P_IPV6_BE => ptr_at(ctx, EthHdr::LEN)
            .map(L3::Ipv6)
            .ok_or(DropReason::MalformedIpv6),
        ETH_P_ARP_BE => ptr_at(ctx, EthHdr::LEN)
            .map(|arp: *mut ArpIpv4| L3::Arp(arp))
            .ok_or(DropReason::MalformedArp),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

/// An IPv4 header is well formed: version 4, at least 20 bytes, and a
/// total length that covers the header and fits in `l3_len`, the bytes
/// the frame has after its Ethernet header. (A total length shorter than
/// the frame is padding, which the kernel trims.)
#[inline(always)]
pub fn ipv4_well_formed(vihl: u8, tot_len: [u8; 2], l3_len: u32) -> bool {
    let header_len = u32::from(vihl & 0x0f) * 4;
    let total = u32::from(u16::from_be_bytes(tot_len));
    vihl >> 4 == 4 && header_len >= 20 && total >= header_len && total <= l3_len
}

/// An IPv6 header is well formed: version 6 and a payload length that fits
/// in `l3_len` (a payload length of 0 with more data is a jumbogram or
/// BIG TCP packet, which the kernel judges).
#[inline(always)]
pub fn ipv6_well_formed(vcf0: u8, payload_len: [u8; 2], l3_len: u32) -> bool {
    let payload = u32::from(u16::from_be_bytes(payload_len));
    vcf0 >> 4 == 6 && payload + Ipv6Hdr::LEN as u32 <= l3_len
}

/// An ARP packet is Ethernet/IPv4 ARP, the only kind a pod has a use for.
#[inline(always)]
pub fn arp_well_formed(htype: [u8; 2], ptype: [u8; 2], hlen: u8, plen: u8) -> bool {
    htype == [0, 1] && ptype == [0x08, 0x00] && hlen == 6 && plen == 4
}

/// Multicast and broadcast frames are never routed traffic.
#[inline(always)]
pub fn is_group_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 1
}

/// `addr` is the link-local address the pod's kernel gave its `eth0`:
/// fe80::/64 with the EUI-64 interface id of the pod's MAC.
#[inline(always)]
pub fn is_own_link_local(me: &PodIdentity, addr: &[u8; 16]) -> bool {
    // fe80::/64, then the interface id, compared as two little-endian
    // double-words (the same on any host): the id built from the MAC's
    // word and half-word rather than byte by byte.
    const PREFIX: u64 = u64::from_le_bytes([0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
    // SAFETY: a 16-byte array and a 6-byte field.
    let (prefix, id, (word, half)) = unsafe {
        (
            u64::from_le(load64(addr.as_ptr())),
            u64::from_le(load64(addr.as_ptr().add(8))),
            load_mac(&me.mac),
        )
    };
    let (word, half) = (u64::from(u32::from_le(word)), u64::from(u16::from_le(half)));
    // a^2 b c ff fe d e f, from the MAC a b c d e f.
    let own =
        ((word & 0x00ff_ffff) ^ 0x02) | 0xff << 24 | 0xfe << 32 | (word >> 24) << 40 | half << 48;
    prefix == PREFIX && id == own
}

/// `::`, the source of duplicate address detection.
#[inline(always)]
pub fn is_unspecified(addr: &[u8; 16]) -> bool {
    // SAFETY: a 16-byte array.
    unsafe { load64(addr.as_ptr()) | load64(addr.as_ptr().add(8)) == 0 }
}

// Wide loads and stores. The header and map value types hold their
// addresses as byte arrays (alignment 1), for which LLVM's BPF backend
// emits one load per byte plus the shifts and ORs that join them: about a
// seventh of `from_pod` was that. These read and write whole words
// instead. The words may be unaligned in the frame (where a header starts
// depends on the driver) and in a map value (a MAC at offset 10): the
// verifier accepts unaligned packet and map value access unless asked for
// strict alignment, which only architectures without efficient unaligned
// access get (x86-64 and arm64 have it), and the JIT emits plain moves.
// Words keep the byte order of memory: only compared or copied, never
// taken as numbers.

/// Four bytes (an IPv4 address, a MAC's first part) in one load.
///
/// # Safety
/// `p` must be valid for 4 bytes of reads.
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    // SAFETY: the caller vouches for the bytes; see above for alignment.
    unsafe { load(p.cast::<u32>()) }
}

/// One load of a `T`. For BPF, a volatile load of the whole word (an
/// unaligned read would be split into bytes); on the host, where only the
/// unit tests run this, an unaligned read (the word may well be unaligned
/// there too, which Rust checks in debug builds).
///
/// # Safety
/// `p` must be valid for `size_of::<T>()` bytes of reads.
#[inline(always)]
unsafe fn load<T: Copy>(p: *const T) -> T {
    // SAFETY: the caller vouches for the bytes.
    #[cfg(target_arch = "bpf")]
    unsafe {
        p.read_volatile()
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        p.read_unaligned()
    }
}

/// Two bytes in one load.
///
/// # Safety
/// `p` must be valid for 2 bytes of reads.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    // SAFETY: as in `load32`.
    unsafe { load(p.cast::<u16>()) }
}

/// Eight bytes in one load.
///
/// # Safety
/// `p` must be valid for 8 bytes of reads.
#[inline(always)]
pub unsafe fn load64(p: *const u8) -> u64 {
    // SAFETY: as in `load32`.
    unsafe { load(p.cast::<u64>()) }
}

/// A MAC as a word and a half-word, in two loads.
///
/// # Safety
/// `p` must be valid for 6 bytes of reads.
#[inline(always)]
pub unsafe fn load_mac(p: *const [u8; 6]) -> (u32, u16) {
    let p = p.cast::<u8>();
    // SAFETY: the caller vouches for the 6 bytes.
    unsafe { (load32(p), load16(p.add(4))) }
}

/// Two MACs (from [`load_mac`]) are equal; one test, no branch between
/// the halves.
#[inline(always)]
pub fn mac_eq(a: (u32, u16), b: (u32, u16)) -> bool {
    (a.0 ^ b.0) | u32::from(a.1 ^ b.1) == 0
}

/// Writes a MAC from [`load_mac`] in two stores. Volatile so that LLVM
/// keeps them two stores: a plain array assignment between a map value
/// and the packet compiled to a call of a BPF `memmove`.
///
/// # Safety
/// `p` must be valid for 6 bytes of writes.
#[inline(always)]
pub unsafe fn store_mac(p: *mut [u8; 6], (word, half): (u32, u16)) {
    let p = p.cast::<u8>();
    // SAFETY: the caller vouches for the 6 bytes; see above for alignment.
    unsafe {
        p.cast::<u32>().write_volatile(word);
        p.add(4).cast::<u16>().write_volatile(half);
    }
}

/// Two IPv6 addresses are equal, in four loads and one test: an array
/// comparison compiled to a byte-by-byte `bcmp` subprogram.
///
/// # Safety
/// Both must be valid for 16 bytes of reads.
#[inline(always)]
pub unsafe fn eq16(a: *const [u8; 16], b: *const [u8; 16]) -> bool {
    let (a, b) = (a.cast::<u8>(), b.cast::<u8>());
    // SAFETY: the caller vouches for both.
    unsafe { (load64(a) ^ load64(b)) | (load64(a.add(8)) ^ load64(b.add(8))) == 0 }
}

/// The IPv4 header checksum after decrementing TTL by one, updated
/// incrementally (RFC 1624) exactly as the kernel's `ip_decrease_ttl`:
/// on the field as it sits in memory (`raw`, loaded with [`load16`]), to
/// which the TTL's step adds `htons(0x0100)`.
#[inline(always)]
pub fn checksum_after_ttl_decrement(raw: u16) -> u16 {
    let sum = u32::from(raw) + u32::from(0x0100_u16.to_be());
    (sum + u32::from(sum >= 0xffff)) as u16
}

/// Sets the TTL-decremented checksum and TTL of the IPv4 header at `ip`:
/// one 16-bit load and store for the checksum, one byte for the TTL.
///
/// # Safety
/// `ip` must be a bounds-checked, writable IPv4 header.
#[inline(always)]
pub unsafe fn decrement_ttl(ip: *mut Ipv4Hdr, ttl: u8) {
    // SAFETY: the caller vouches for the header.
    unsafe {
        let check = (&raw mut (*ip).check).cast::<u16>();
        check.write_volatile(checksum_after_ttl_decrement(check.read_volatile()));
        (*ip).ttl = ttl - 1;
    }
}

/// Writes the constant `mac` (a gateway or tunnel MAC) at `dst`.
///
/// # Safety
/// `dst` must be valid for 6 bytes of writes.
#[inline(always)]
pub unsafe fn copy_mac(dst: *mut [u8; 6], src: &[u8; 6]) {
    // SAFETY: `src` is a 6-byte array; the caller vouches for `dst`.
    unsafe { store_mac(dst, load_mac(src)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full RFC 1071 checksum of a 20-byte header, for cross-checking.
    fn full_checksum(h: &[u8; 20]) -> [u8; 2] {
        let mut sum: u32 = 0;
        for i in (0..20).step_by(2) {
            if i == 10 {
                continue;
            }
            sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (!(sum as u16)).to_be_bytes()
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        for ttl in 2..=255u8 {
            for seed in [0u8, 1, 0x7f, 0xfe, 0xff] {
                let mut h = [
                    0x45, 0, 0, 84, seed, seed, 0x40, 0, ttl, 1, 0, 0, 10, 200, 0, seed, 10, 200,
                    0xff, seed,
                ];
                let c = full_checksum(&h);
                h[10] = c[0];
                h[11] = c[1];
                let updated = checksum_after_ttl_decrement(u16::from_ne_bytes(c)).to_ne_bytes();
                h[8] = ttl - 1;
                let expect = full_checksum(&h);
                // 0x0000 and 0xffff are the same value in one's complement.
                let norm = |x: [u8; 2]| if x == [0xff, 0xff] { [0, 0] } else { x };
                assert_eq!(norm(updated), norm(expect), "ttl {ttl} seed {seed}");
            }
        }
    }

    #[test]
    fn ipv4_headers_are_judged() {
        assert!(ipv4_well_formed(0x45, 84u16.to_be_bytes(), 84));
        assert!(ipv4_well_formed(0x45, 84u16.to_be_bytes(), 100), "padding");
        assert!(ipv4_well_formed(0x4f, 60u16.to_be_bytes(), 60), "options");
        assert!(!ipv4_well_formed(0x43, 84u16.to_be_bytes(), 84), "IHL 3");
        assert!(
            !ipv4_well_formed(0x65, 84u16.to_be_bytes(), 84),
            "version 6"
        );
        assert!(
            !ipv4_well_formed(0x45, 9000u16.to_be_bytes(), 36),
            "too long"
        );
        assert!(
            !ipv4_well_formed(0x46, 20u16.to_be_bytes(), 84),
            "shorter than IHL"
        );
        assert!(!ipv4_well_formed(0x45, [0, 0], 84), "zero total length");
    }

    #[test]
    fn ipv6_headers_are_judged() {
        assert!(ipv6_well_formed(0x60, 64u16.to_be_bytes(), 104));
        assert!(ipv6_well_formed(0x6f, 0u16.to_be_bytes(), 40));
        assert!(
            !ipv6_well_formed(0x40, 64u16.to_be_bytes(), 104),
            "version 4"
        );
        assert!(
            !ipv6_well_formed(0x60, 65u16.to_be_bytes(), 104),
            "too long"
        );
    }

    #[test]
    fn only_ethernet_ipv4_arp_is_well_formed() {
        assert!(arp_well_formed([0, 1], [8, 0], 6, 4));
        assert!(!arp_well_formed([0, 6], [8, 0], 6, 4));
        assert!(!arp_well_formed([0, 1], [0x86, 0xdd], 6, 4));
        assert!(!arp_well_formed([0, 1], [8, 0], 8, 4));
        assert!(!arp_well_formed([0, 1], [8, 0], 6, 16));
    }

    #[test]
    fn vlan_ethertypes() {
        for t in [0x8100u16, 0x88a8, 0x9100] {
            assert!(is_vlan(t.to_be()));
        }
        assert!(!is_vlan(0x0800u16.to_be()));
    }

    #[test]
    fn group_bit_marks_broadcast_and_multicast() {
        assert!(is_group_mac([0xff; 6]));
        assert!(is_group_mac([0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_group_mac([0xee; 6]));
        assert!(!is_group_mac([0x0a, 0x58, 10, 200, 0, 10]));
    }

    #[test]
    fn only_the_pods_own_link_local_address_is_its_own() {
        let me = PodIdentity {
            mac: [0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02],
            ..PodIdentity::default()
        };
        let own = [
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x08, 0x58, 0xc6, 0xff, 0xfe, 0x12, 0x00, 0x02,
        ];
        assert!(is_own_link_local(&me, &own));
        for (byte, flip) in [(1, 0x01), (7, 0x01), (8, 0x02), (11, 0x01), (15, 0x01)] {
            let mut other = own;
            other[byte] ^= flip;
            assert!(!is_own_link_local(&me, &other), "byte {byte}");
        }
        // The word-wise comparison agrees with the byte-wise address.
        for mac in [
            [0x02, 0, 0, 0, 0, 0],
            [0xff; 6],
            [0x0a, 0x58, 10, 200, 0, 10],
        ] {
            let me = PodIdentity {
                mac,
                ..PodIdentity::default()
            };
            assert!(is_own_link_local(&me, &veth_common::eui64_link_local(mac)));
        }
        assert!(is_unspecified(&[0; 16]));
        assert!(!is_unspecified(&own));
    }
}
