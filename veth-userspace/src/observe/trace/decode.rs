//! Decodes the first bytes of a traced frame: Ethernet (and VLAN tags, so
//! a `vlan_tagged` drop still shows its flow), IPv4, IPv6 with its
//! extension headers, TCP/UDP ports and ICMP/ICMPv6 types. Pure: bytes in,
//! fields out; whatever lies beyond the captured bytes stays unknown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use veth_common::{TraceEvent, TRACE_HEADER_BYTES};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// More tags than this and the frame is not worth decoding further.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up; RFC 8200 recommends
/// each at most once (destination options twice), so a longer chain is a
/// crafted one.
const MAX_EXTENSION_HEADERS: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// What the first bytes of a frame say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The EtherType after any VLAN tags; 0 when the frame is too short.
    pub ethertype: u16,
    pub ip: Option<IpFlow>,
}

/// An IPv4 or IPv6 packet's flow fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpFlow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol: IPv4's protocol, or IPv6's last next header
    /// after the extension headers (or where the walk stopped).
    pub protocol: u8,
    pub transport: Transport,
    /// Set when the packet is a fragment (first or later).
    pub fragment: Option<Fragment>,
}

/// Transport fields, when the captured bytes hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ports {
        src: u16,
        dst: u16,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
    },
    /// Another protocol, a later fragment, or headers beyond the capture.
    Unknown,
}

/// Where a fragment sits in its packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data in bytes.
    pub offset: u16,
    pub more: bool,
}

/// The frame bytes an event carries (never more than its array, whatever
/// `captured` says).
pub fn captured(event: &TraceEvent) -> &[u8] {
    &event.headers[..usize::from(event.captured).min(TRACE_HEADER_BYTES)]
}

/// Decodes `frame`, the first bytes of a frame from the Ethernet header on.
pub fn decode(frame: &[u8]) -> Decoded {
    let Some((ethertype, l3)) = ethertype_and_offset(frame) else {
        return Decoded::default();
    };
    let packet = &frame[l3..];
    let ip = match ethertype {
        ETH_P_IP => ipv4(packet),
        ETH_P_IPV6 => ipv6(packet),
        _ => None,
    };
    Decoded { ethertype, ip }
}

/// The EtherType after at most [`MAX_VLAN_TAGS`] tags, and where the
/// network header starts.
fn ethertype_and_offset(frame: &[u8]) -> Option<(u16, usize)> {
    let mut offset = 12;
    let mut ethertype = be16(frame, offset)?;
    for _ in 0..MAX_VLAN_TAGS {
        if !VLAN_TPIDS.contains(&ethertype) {
            break;
        }
        offset += 4;
        ethertype = be16(frame, offset)?;
    }
    Some((ethertype, offset + 2))
}

fn ipv4(packet: &[u8]) -> Option<IpFlow> {
    let header: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let protocol = header[9];
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let more = flags_offset & 0x2000 != 0;
    let offset = (flags_offset & 0x1fff) * 8;
    let fragment = (more || offset != 0).then_some(Fragment { offset, more });
    // Only the first fragment (and only a sane header) carries the
    // transport header.
    let transport = if offset == 0 && header_len >= 20 {
        transport(protocol, packet.get(header_len..).unwrap_or(&[]))
    } else {
        Transport::Unknown
    };
    Some(IpFlow {
        src: IpAddr::V4(Ipv4Addr::new(
            header[12], header[13], header[14], header[15],
        )),
        dst: IpAddr::V4(Ipv4Addr::new(
            header[16], header[17], header[18], header[19],
        )),
        protocol,
        transport,
        fragment,
    })
}

fn ipv6(packet: &[u8]) -> Option<IpFlow> {
    let header: &[u8; 40] = packet.get(..40)?.try_into().ok()?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let address = |at: usize| {
        let bytes: [u8; 16] = header[at..at + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    let walk = walk_extension_headers(header[6], packet, 40);
    let transport = match walk.transport_at {
        Some(at) => transport(walk.protocol, packet.get(at..).unwrap_or(&[])),
        None => Transport::Unknown,
    };
    Some(IpFlow {
        src: address(8),
        dst: address(24),
        protocol: walk.protocol,
        transport,
        fragment: walk.fragment,
    })
}

/// Where IPv6's chain of extension headers ended.
struct Walk {
    /// The last next-header value seen.
    protocol: u8,
    /// Offset of the transport header, if the walk reached it.
    transport_at: Option<usize>,
    fragment: Option<Fragment>,
}

/// Follows next headers from `offset` over at most
/// [`MAX_EXTENSION_HEADERS`] extension headers, within `packet`.
fn walk_extension_headers(mut next: u8, packet: &[u8], mut offset: usize) -> Walk {
    let mut fragment = None;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let length = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                packet.get(offset + 1).map(|&l| (usize::from(l) + 1) * 8)
            }
            IPPROTO_AH => packet.get(offset + 1).map(|&l| (usize::from(l) + 2) * 4),
            IPPROTO_FRAGMENT => Some(8),
            // Not an extension header: the transport header (or ESP,
            // no next header, something unknown) starts here.
            _ => {
                let later_fragment = fragment.is_some_and(|f: Fragment| f.offset != 0);
                return Walk {
                    protocol: next,
                    transport_at: (!later_fragment).then_some(offset),
                    fragment,
                };
            }
        };
        let Some(&following) = packet.get(offset) else {
            break;
        };
        if next == IPPROTO_FRAGMENT {
            let Some(field) = be16(packet, offset + 2) else {
                break;
            };
            fragment = Some(Fragment {
                offset: field & 0xfff8,
                more: field & 1 != 0,
            });
        }
        match length {
            Some(length) if offset + length <= packet.len() => {
                next = following;
                offset += length;
            }
            _ => break,
        }
    }
    Walk {
        protocol: next,
        transport_at: None,
        fragment,
    }
}

/// Ports or ICMP type and code from the start of the transport header.
fn transport(protocol: u8, header: &[u8]) -> Transport {
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => match (be16(header, 0), be16(header, 2)) {
            (Some(src), Some(dst)) => Transport::Ports { src, dst },
            _ => Transport::Unknown,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match header {
            [icmp_type, code, ..] => Transport::Icmp {
                icmp_type: *icmp_type,
                code: *code,
            },
            _ => Transport::Unknown,
        },
        _ => Transport::Unknown,
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub const A4: [u8; 4] = [10, 200, 0, 2];
    pub const B4: [u8; 4] = [10, 200, 0, 3];
    pub const A6: &str = "fd00:c8::2";
    pub const B6: &str = "fd00:c8::3";

    pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        frame
    }

    /// An IPv4 packet; `flags_offset` is the raw flags/fragment-offset field.
    pub fn ipv4(protocol: u8, flags_offset: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + options.len() / 4;
        let total = (ihl * 4 + payload.len()) as u16;
        let mut p = vec![0x40 | ihl as u8, 0];
        p.extend(total.to_be_bytes());
        p.extend([0, 1]);
        p.extend(flags_offset.to_be_bytes());
        p.extend([64, protocol, 0, 0]);
        p.extend(A4);
        p.extend(B4);
        p.extend(options);
        p.extend(payload);
        ethernet(ETH_P_IP, &p)
    }

    pub fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend((payload.len() as u16).to_be_bytes());
        p.extend([next_header, 64]);
        p.extend(A6.parse::<Ipv6Addr>().unwrap().octets());
        p.extend(B6.parse::<Ipv6Addr>().unwrap().octets());
        p.extend(payload);
        ethernet(ETH_P_IPV6, &p)
    }

    /// An options-style extension header (hop-by-hop, destination
    /// options, routing) of `8 * (units + 1)` bytes.
    pub fn extension(next: u8, units: u8) -> Vec<u8> {
        let mut h = vec![next, units];
        h.resize(8 * (usize::from(units) + 1), 0);
        h
    }

    pub fn fragment_header(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let field = offset & 0xfff8 | u16::from(more);
        let mut h = vec![next, 0];
        h.extend(field.to_be_bytes());
        h.extend([0, 0, 0, 7]);
        h
    }

    pub fn udp(src: u16, dst: u16) -> Vec<u8> {
        let mut h = src.to_be_bytes().to_vec();
        h.extend(dst.to_be_bytes());
        h.extend([0, 8, 0, 0]);
        h
    }

    fn flow(frame: &[u8]) -> IpFlow {
        decode(frame).ip.expect("an IP flow")
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn ipv4_tcp_ports_and_icmp_type() {
        let tcp = ipv4(IPPROTO_TCP, 0, &[], &udp(4321, 80));
        assert_eq!(
            flow(&tcp),
            IpFlow {
                src: IpAddr::V4(A4.into()),
                dst: IpAddr::V4(B4.into()),
                protocol: IPPROTO_TCP,
                transport: Transport::Ports { src: 4321, dst: 80 },
                fragment: None,
            }
        );
        let echo = ipv4(IPPROTO_ICMP, 0, &[], &[8, 0, 0, 0]);
        assert_eq!(
            flow(&echo).transport,
            Transport::Icmp {
                icmp_type: 8,
                code: 0
            }
        );
    }

    #[test]
    fn ipv4_options_move_the_ports() {
        let options = [1, 1, 1, 0, 1, 1, 1, 0];
        let frame = ipv4(IPPROTO_UDP, 0, &options, &udp(53, 5353));
        assert_eq!(
            flow(&frame).transport,
            Transport::Ports { src: 53, dst: 5353 }
        );
    }

    #[test]
    fn ipv4_fragments_have_ports_only_in_the_first() {
        let first = flow(&ipv4(IPPROTO_UDP, 0x2000, &[], &udp(1, 2)));
        assert_eq!(first.transport, Transport::Ports { src: 1, dst: 2 });
        assert_eq!(
            first.fragment,
            Some(Fragment {
                offset: 0,
                more: true
            })
        );
        // Offset 185 * 8 = 1480: the payload is the middle of a datagram.
        let later = flow(&ipv4(IPPROTO_UDP, 185, &[], &udp(1, 2)));
        assert_eq!(later.transport, Transport::Unknown);
        assert_eq!(
            later.fragment,
            Some(Fragment {
                offset: 1480,
                more: false
            })
        );
    }

    #[test]
    fn ipv6_udp_and_icmpv6() {
        let frame = ipv6(IPPROTO_UDP, &udp(5353, 53));
        let f = flow(&frame);
        assert_eq!((f.src, f.dst), (v6(A6), v6(B6)));
        assert_eq!(f.protocol, IPPROTO_UDP);
        assert_eq!(f.transport, Transport::Ports { src: 5353, dst: 53 });
        assert_eq!(decode(&frame).ethertype, ETH_P_IPV6);
        let solicit = flow(&ipv6(IPPROTO_ICMPV6, &[135, 0, 0, 0]));
        assert_eq!(
            solicit.transport,
            Transport::Icmp {
                icmp_type: 135,
                code: 0
            }
        );
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        // MLD report: hop-by-hop (router alert), then ICMPv6 143.
        let mut payload = extension(IPPROTO_ICMPV6, 0);
        payload.extend([143, 0, 0, 0]);
        let mld = flow(&ipv6(IPPROTO_HOPOPTS, &payload));
        assert_eq!(mld.protocol, IPPROTO_ICMPV6);
        assert_eq!(
            mld.transport,
            Transport::Icmp {
                icmp_type: 143,
                code: 0
            }
        );
        // Hop-by-hop, routing (24 bytes), destination options, then TCP.
        let mut payload = extension(IPPROTO_ROUTING, 0);
        payload.extend(extension(IPPROTO_DSTOPTS, 2));
        payload.extend(extension(IPPROTO_TCP, 0));
        payload.extend(udp(40000, 443));
        let f = flow(&ipv6(IPPROTO_HOPOPTS, &payload));
        assert_eq!(f.protocol, IPPROTO_TCP);
        assert_eq!(
            f.transport,
            Transport::Ports {
                src: 40000,
                dst: 443
            }
        );
        // AH counts its length in 4-byte units, minus 2.
        let mut ah = vec![IPPROTO_UDP, 4];
        ah.resize(24, 0);
        ah.extend(udp(7, 9));
        let f = flow(&ipv6(IPPROTO_AH, &ah));
        assert_eq!(f.transport, Transport::Ports { src: 7, dst: 9 });
    }

    #[test]
    fn ipv6_fragments() {
        let mut first = fragment_header(IPPROTO_UDP, 0, true);
        first.extend(udp(1000, 2000));
        let f = flow(&ipv6(IPPROTO_FRAGMENT, &first));
        assert_eq!(f.protocol, IPPROTO_UDP);
        assert_eq!(
            f.transport,
            Transport::Ports {
                src: 1000,
                dst: 2000
            }
        );
        assert_eq!(
            f.fragment,
            Some(Fragment {
                offset: 0,
                more: true
            })
        );
        let mut later = extension(IPPROTO_FRAGMENT, 0);
        later.extend(fragment_header(IPPROTO_UDP, 1232, false));
        later.extend(udp(1000, 2000));
        let f = flow(&ipv6(IPPROTO_HOPOPTS, &later));
        assert_eq!(f.protocol, IPPROTO_UDP);
        assert_eq!(
            f.transport,
            Transport::Unknown,
            "no ports in a later fragment"
        );
        assert_eq!(
            f.fragment,
            Some(Fragment {
                offset: 1232,
                more: false
            })
        );
    }

    #[test]
    fn extension_header_walk_is_bounded() {
        // A chain longer than the walk may follow ends unknown, not in a loop.
        let mut payload = Vec::new();
        for _ in 0..MAX_EXTENSION_HEADERS {
            payload.extend(extension(IPPROTO_DSTOPTS, 0));
        }
        payload.extend(udp(1, 2));
        let f = flow(&ipv6(IPPROTO_DSTOPTS, &payload));
        assert_eq!(f.protocol, IPPROTO_DSTOPTS);
        assert_eq!(f.transport, Transport::Unknown);
        // One fewer and the walk reaches UDP.
        let mut payload = Vec::new();
        for _ in 1..MAX_EXTENSION_HEADERS - 1 {
            payload.extend(extension(IPPROTO_DSTOPTS, 0));
        }
        payload.extend(extension(IPPROTO_UDP, 0));
        payload.extend(udp(1, 2));
        let f = flow(&ipv6(IPPROTO_DSTOPTS, &payload));
        assert_eq!(f.transport, Transport::Ports { src: 1, dst: 2 });
    }

    #[test]
    fn headers_beyond_the_capture_stay_unknown() {
        let mut payload = extension(IPPROTO_UDP, 20);
        payload.extend(udp(1, 2));
        let frame = ipv6(IPPROTO_HOPOPTS, &payload);
        let cut = &frame[..TRACE_HEADER_BYTES];
        let f = flow(cut);
        assert_eq!((f.src, f.dst), (v6(A6), v6(B6)));
        assert_eq!(f.transport, Transport::Unknown);
        // Every prefix decodes without panicking.
        for end in 0..frame.len() {
            let _ = decode(&frame[..end]);
        }
        assert_eq!(decode(&frame[..20]).ip, None, "IPv6 header cut short");
    }

    #[test]
    fn vlan_tags_and_other_ethertypes() {
        let inner = ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2));
        let mut tagged = inner[..12].to_vec();
        tagged.extend([0x81, 0x00, 0x00, 0x05]);
        tagged.extend(&inner[12..]);
        let d = decode(&tagged);
        assert_eq!(d.ethertype, ETH_P_IP);
        assert_eq!(d.ip.unwrap().transport, Transport::Ports { src: 1, dst: 2 });
        let arp = ethernet(ETH_P_ARP, &[0; 28]);
        assert_eq!(
            decode(&arp),
            Decoded {
                ethertype: ETH_P_ARP,
                ip: None
            }
        );
        assert_eq!(decode(&[0; 5]), Decoded::default());
        // Version 6 in an IPv4 EtherType is not decoded as IPv4.
        let mut wrong = inner.clone();
        wrong[14] = 0x65;
        assert_eq!(decode(&wrong).ip, None);
    }
}
