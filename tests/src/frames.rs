//! Crafting Ethernet frames byte by byte for the single-packet tests of the
//! programs (`BPF_PROG_TEST_RUN`): Ethernet, VLAN tags, IPv4 with a correct
//! header checksum, IPv6, ARP, and the checksum check the tests apply to
//! what the programs rewrote.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of an Ethernet header (two MACs and the EtherType).
pub const ETH_HLEN: usize = 14;
/// Length of an option-less IPv4 header.
pub const IPV4_HLEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_QINQ1: u16 = 0x9100;
pub const ETH_P_LLDP: u16 = 0x88cc;
pub const ETH_P_MPLS_UC: u16 = 0x8847;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// Offset of the IPv4 TTL in a frame (after an untagged Ethernet header).
pub const IPV4_TTL_AT: usize = ETH_HLEN + 8;
/// Offset of the IPv4 header checksum in a frame.
pub const IPV4_CHECKSUM_AT: usize = ETH_HLEN + 10;
/// Offset of the IPv6 hop limit in a frame.
pub const IPV6_HOP_LIMIT_AT: usize = ETH_HLEN + 7;

/// An Ethernet frame: `dst`, `src`, `ethertype`, then `payload`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `frame` with a VLAN tag (`tpid`, priority 0, `vid`) inserted after the
/// MACs, the way a tagging host sends it. Apply twice for a double tag
/// (the second call adds the outer one).
pub fn with_vlan_tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    assert!(frame.len() >= 12, "a frame has two MACs");
    let mut tagged = Vec::with_capacity(frame.len() + 4);
    tagged.extend_from_slice(&frame[..12]);
    tagged.extend_from_slice(&tpid.to_be_bytes());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An IPv4 packet with an option-less header, total length covering
/// `payload`, DF set, and a correct header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, protocol: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with_options(src, dst, ttl, protocol, &[], payload)
}

/// Like [`ipv4`], with `options` (a multiple of 4 bytes, at most 40)
/// after the fixed header; IHL counts them.
pub fn ipv4_with_options(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    protocol: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "IPv4 options"
    );
    let header_len = IPV4_HLEN + options.len();
    let total = u16::try_from(header_len + payload.len()).expect("IPv4 total length");
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.push(0x40 | (header_len / 4) as u8);
    packet.push(0); // DSCP/ECN
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
    packet.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    packet.push(ttl);
    packet.push(protocol);
    packet.extend_from_slice(&[0, 0]); // checksum, below
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(options);
    let check = ipv4_header_checksum(&packet[..header_len]);
    packet[10..12].copy_from_slice(&check.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The IPv4 header checksum of `header` (RFC 1071), computed afresh over
/// every 16-bit word except the checksum field itself.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    assert!(
        header.len() >= IPV4_HLEN && header.len().is_multiple_of(4),
        "an IPv4 header"
    );
    internet_checksum(&[&header[..10], &[0, 0], &header[12..]])
}

/// The Internet checksum (RFC 1071) of `chunks` taken as one byte string.
pub fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &b in *chunk {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// True if `header` (IHL * 4 bytes) carries a correct checksum: all its
/// words, the checksum included, add up to 0xffff in one's complement.
pub fn ipv4_checksum_is_valid(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// An IPv6 packet: fixed header (payload length covering `payload`) and
/// `payload`.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next_header: u8,
    payload: &[u8],
) -> Vec<u8> {
    let payload_len = u16::try_from(payload.len()).expect("IPv6 payload length");
    let mut packet = Vec::with_capacity(IPV6_HLEN + payload.len());
    packet.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class/flow
    packet.extend_from_slice(&payload_len.to_be_bytes());
    packet.push(next_header);
    packet.push(hop_limit);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}

/// ARP operation: request.
pub const ARP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const ARP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet (RFC 826): sender and target hardware and
/// protocol addresses.
pub fn arp(oper: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut packet = Vec::with_capacity(ARP_LEN);
    packet.extend_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    packet.extend_from_slice(&ETH_P_IP.to_be_bytes()); // ptype IPv4
    packet.push(6); // hlen
    packet.push(4); // plen
    packet.extend_from_slice(&oper.to_be_bytes());
    packet.extend_from_slice(&sha);
    packet.extend_from_slice(&spa.octets());
    packet.extend_from_slice(&tha);
    packet.extend_from_slice(&tpa.octets());
    packet
}

/// A UDP datagram (checksum 0: the programs never look at it).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("UDP length");
    let mut datagram = Vec::with_capacity(usize::from(len));
    datagram.extend_from_slice(&src_port.to_be_bytes());
    datagram.extend_from_slice(&dst_port.to_be_bytes());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// `payload_len` bytes of a recognisable pattern.
pub fn pattern(payload_len: usize) -> Vec<u8> {
    (0..payload_len).map(|i| (i % 251) as u8).collect()
}

/// The multicast MAC an IPv4 group maps to (RFC 1112).
pub fn ipv4_multicast_mac(group: Ipv4Addr) -> [u8; 6] {
    let o = group.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

/// The multicast MAC an IPv6 group maps to (RFC 2464).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Hex dump of a frame, 16 bytes a line, for assertion messages.
pub fn hex(frame: &[u8]) -> String {
    frame
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checksum_matches_a_known_header() {
        // The example header of RFC 1071's usual illustration (Wikipedia's
        // "IPv4 header checksum"): checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&header), 0xb861);
        let mut with = header;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(ipv4_checksum_is_valid(&with));
        with[8] -= 1;
        assert!(!ipv4_checksum_is_valid(&with));
    }

    #[test]
    fn crafted_packets_have_the_right_shape() {
        let a = Ipv4Addr::new(198, 18, 0, 2);
        let b = Ipv4Addr::new(198, 18, 0, 3);
        let p = ipv4(a, b, 64, IPPROTO_UDP, &udp(1, 2, &pattern(10)));
        assert_eq!(p.len(), 38);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 38);
        assert!(ipv4_checksum_is_valid(&p[..20]));
        let o = ipv4_with_options(a, b, 64, IPPROTO_UDP, &[1, 1, 1, 0], &[]);
        assert_eq!(o[0], 0x46);
        assert!(ipv4_checksum_is_valid(&o[..24]));
        let v6 = ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 17, &[0; 8]);
        assert_eq!((v6.len(), v6[0] >> 4, v6[5]), (48, 6, 8));
        assert_eq!(arp(ARP_REQUEST, [1; 6], a, [0; 6], b).len(), ARP_LEN);
        let f = ethernet(BROADCAST_MAC, [2; 6], ETH_P_IP, &p);
        let t = with_vlan_tag(&f, ETH_P_8021Q, 5);
        assert_eq!(&t[12..18], &[0x81, 0x00, 0x00, 0x05, 0x08, 0x00]);
    }
}
