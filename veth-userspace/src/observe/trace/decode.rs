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
const IPPROTO_FRAGMENT: u8 = 44;
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
