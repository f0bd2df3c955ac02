//! A trace event as printed: pod names, wall-clock time and the decoded
//! flow, as one text line or one JSON object.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use veth_common::{hook, DropReason, TraceEvent};

use super::{
    super::super::model::Topology,
    clock::{rfc3339_micros, WallClock},
    decode::{Decoded, Transport, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
    filter::{Protocol, Verdict},
};

/// One event, resolved to pod names, as printed. The field names are
/// stable; fields that do not apply are `null`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FlowEvent {
    /// Wall-clock time, RFC 3339 in UTC with microseconds.
    pub time: String,
    /// The programs' stamp (CLOCK_MONOTONIC), to order events exactly.
    pub monotonic_ns: u64,
    pub topology: String,
    /// The node whose programs saw the frame (a cluster's node; `null` on
    /// a one-node network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `from_pod` (host-side ingress) or `to_pod` (host-side egress).
    pub hook: &'static str,
    pub pod: String,
    /// Destination pod of a redirect.
    pub peer_pod: Option<String>,
    /// For `remote`: the node whose pod range holds the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_node: Option<String>,
    /// `redirected`, `remote`, `passed` or `dropped`.
    pub verdict: &'static str,
    pub drop_reason: Option<&'static str>,
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `other` (see `ip_protocol`).
    pub protocol: Option<&'static str>,
    /// IP protocol number (IPv6: after the extension headers).
    pub ip_protocol: Option<u8>,
    /// Address, with `:port` for TCP/UDP (`[addr]:port` for IPv6).
    pub src: Option<String>,
    pub dst: Option<String>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// For a fragment: its offset in bytes, and whether more follow.
    pub fragment_offset: Option<u16>,
    pub more_fragments: Option<bool>,
    pub len: u32,
}

/// Resolves ifindexes to pod names, the stamp to wall-clock time, and
/// fills the decoded flow in.
pub fn resolve(
    topology: &Topology,
    event: &TraceEvent,
    decoded: &Decoded,
    pods: &BTreeMap<u32, String>,
    clock: &WallClock,
) -> FlowEvent {
    let name = |ifindex: u32| {
        pods.get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    };
    let verdict = Verdict::from_code(event.verdict);
    let flow = decoded.ip.as_ref();
    let ports = flow.and_then(|f| match f.transport {
        Transport::Ports { src, dst } => Some((src, dst)),
        _ => None,
    });
    let icmp = flow.and_then(|f| match f.transport {
        Transport::Icmp { icmp_type, code } => Some((icmp_type, code)),
        _ => None,
    });
    FlowEvent {
        time: rfc3339_micros(clock.unix_ns(event.timestamp_ns)),
        monotonic_ns: event.timestamp_ns,
        topology: topology.name.clone(),
        node: topology.node.as_ref().map(|n| n.name.clone()),
        hook: if event.hook == hook::TO_POD {
            "to_pod"
        } else {
            "from_pod"
        },
        pod: name(event.ifindex),
        peer_pod: (event.peer_ifindex != 0).then(|| name(event.peer_ifindex)),
        remote_node: flow
            .filter(|_| verdict == Verdict::Remote)
            .and_then(|f| node_of(topology, f.dst)),
        verdict: verdict.name(),
        drop_reason: (verdict == Verdict::Dropped).then(|| {
            DropReason::from_code(u32::from(event.reason)).map_or("unknown", |r| r.name())
        }),
        ethertype: ethertype_name(decoded.ethertype),
        protocol: flow.map(|f| Protocol::from_number(f.protocol).map_or("other", |p| p.name())),
        ip_protocol: flow.map(|f| f.protocol),
        src: flow.map(|f| endpoint(f.src, ports.map(|p| p.0))),
        dst: flow.map(|f| endpoint(f.dst, ports.map(|p| p.1))),
        src_ip: flow.map(|f| f.src),
        dst_ip: flow.map(|f| f.dst),
        src_port: ports.map(|p| p.0),
        dst_port: ports.map(|p| p.1),
        icmp_type: icmp.map(|i| i.0),
        icmp_code: icmp.map(|i| i.1),
        fragment_offset: flow.and_then(|f| f.fragment).map(|f| f.offset),
        more_fragments: flow.and_then(|f| f.fragment).map(|f| f.more),
        len: event.len,
    }
}

/// The other node of `topology`'s cluster whose pod range holds `ip`.
fn node_of(topology: &Topology, ip: IpAddr) -> Option<String> {
    let peers = &topology.node.as_ref()?.peers;
    let peer = peers.iter().find(|p| match ip {
        IpAddr::V4(v4) => p.pod_cidr.contains(&v4),
        IpAddr::V6(v6) => p.pod_cidr6.is_some_and(|c| c.contains(&v6)),
    })?;
    Some(peer.name.clone())
}

fn ethertype_name(ethertype: u16) -> String {
    match ethertype {
        ETH_P_IP => "ipv4".to_string(),
        ETH_P_ARP => "arp".to_string(),
        ETH_P_IPV6 => "ipv6".to_string(),
        other => format!("0x{other:04x}"),
    }
}

/// `10.0.0.2:80`, `[fd00::2]:80`, or the bare address without a port.
fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
        (ip, Some(port)) => format!("{ip}:{port}"),
        (ip, None) => ip.to_string(),
    }
}

/// Names of the ICMP and ICMPv6 types people look for.
fn icmp_type_name(protocol: u8, icmp_type: u8) -> Option<&'static str> {
    let name = match (Protocol::from_number(protocol)?, icmp_type) {
        (Protocol::Icmp, 0) | (Protocol::Icmpv6, 129) => "echo-reply",
        (Protocol::Icmp, 8) | (Protocol::Icmpv6, 128) => "echo-request",
        (Protocol::Icmp, 3) | (Protocol::Icmpv6, 1) => "destination-unreachable",
        (Protocol::Icmp, 11) | (Protocol::Icmpv6, 3) => "time-exceeded",
        (Protocol::Icmp, 5) | (Protocol::Icmpv6, 137) => "redirect",
        (Protocol::Icmpv6, 2) => "packet-too-big",
        (Protocol::Icmpv6, 133) => "router-solicitation",
        (Protocol::Icmpv6, 134) => "router-advertisement",
        (Protocol::Icmpv6, 135) => "neighbour-solicitation",
        (Protocol::Icmpv6, 136) => "neighbour-advertisement",
        (Protocol::Icmpv6, 143) => "mldv2-report",
        _ => return None,
    };
    Some(name)
}

impl FlowEvent {
    /// One line: `2026-12-06T20:37:15.123456Z demo web -> api redirected
    /// tcp 10.200.0.2:4321 -> 10.200.0.3:80 len 74`.
    pub fn to_line(&self) -> String {
        let who = match (&self.peer_pod, self.hook) {
            (Some(peer), _) => format!("{} -> {peer}", self.pod),
            (None, _) if self.verdict == "remote" => {
                let node = self.remote_node.as_deref().unwrap_or("?");
                format!("{} -> node {node}", self.pod)
            }
            (None, "to_pod") => format!("host -> {}", self.pod),
            (None, _) => format!("{} -> host", self.pod),
        };
        let verdict = match self.drop_reason {
            Some(reason) => format!("dropped({reason})"),
            None => self.verdict.to_string(),
        };
        let place = match &self.node {
            Some(node) => format!("{} {node}", self.topology),
            None => self.topology.clone(),
        };
        format!(
            "{} {place} {who} {verdict} {} len {}",
            self.time,
            self.flow_text(),
            self.len
        )
    }

    /// `udp [fd00::2]:5353 -> [fd00::3]:53`, `icmpv6 fd00::2 -> fd00::3
    /// echo-request`, or the EtherType of a frame that is not IP.
    fn flow_text(&self) -> String {
        let (Some(src), Some(dst), Some(number)) = (&self.src, &self.dst, self.ip_protocol) else {
            return self.ethertype.clone();
        };
        let protocol = match self.protocol {
            Some("other") | None => format!("proto {number}"),
            Some(name) => name.to_string(),
        };
        let mut text = format!("{protocol} {src} -> {dst}");
        if let (Some(icmp_type), Some(code)) = (self.icmp_type, self.icmp_code) {
            match icmp_type_name(number, icmp_type) {
                Some(name) => text += &format!(" {name}"),
                None => text += &format!(" type {icmp_type}"),
            }
            if code != 0 {
                text += &format!(" code {code}");
            }
        }
        if let Some(offset) = self.fragment_offset {
            text += &format!(" fragment offset {offset}");
            if self.more_fragments == Some(true) {
                text += " more";
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use veth_common::{verdict, TRACE_HEADER_BYTES};

    use super::{
        super::decode::{decode, tests::*, IPPROTO_FRAGMENT, IPPROTO_ICMPV6, IPPROTO_TCP},
        *,
    };

    /// 2026-12-06T20:37:15Z at monotonic 1.5 s.
    fn clock() -> WallClock {
        WallClock::from_readings(1_796_589_435_000_000_000, 1_500_000_000)
    }

    fn event_of(frame: &[u8]) -> TraceEvent {
        let mut event = TraceEvent {
            timestamp_ns: 1_500_250_000,
            ifindex: 7,
            peer_ifindex: 8,
            len: frame.len() as u32,
            hook: hook::FROM_POD,
            verdict: verdict::REDIRECTED,
            ..TraceEvent::default()
        };
        let n = frame.len().min(TRACE_HEADER_BYTES);
        event.headers[..n].copy_from_slice(&frame[..n]);
        event.captured = n as u16;
        event
    }

    fn line(event: &TraceEvent) -> String {
        flow_event(event).to_line()
    }

    fn flow_event(event: &TraceEvent) -> FlowEvent {
        let pods = BTreeMap::from([(7, "web".to_string()), (8, "api".to_string())]);
        let decoded = decode(super::super::decode::captured(event));
        resolve(
            &Topology::default_topology(),
            event,
            &decoded,
            &pods,
            &clock(),
        )
    }

    /// A frame pod `web` of node n1 sent to pod 10.244.1.3, on node n2.
    #[test]
    fn a_frame_sent_to_another_node_names_both_nodes() {
        let cluster = crate::model::cluster::Cluster::from_toml(
            "name = \"lab\"\nmode = \"tc\"\ncross_node = \"ebpf\"\n\
             cluster_cidr = \"10.244.0.0/16\"\n\
             [[nodes]]\nname = \"n1\"\n[[nodes.pods]]\nname = \"web\"\n\
             [[nodes]]\nname = \"n2\"\n[[nodes.pods]]\nname = \"db\"\n",
        )
        .unwrap();
        let mut frame = ipv4(IPPROTO_TCP, 0, &[], &udp(4321, 80));
        // Destination 10.244.1.3: bytes 30..34 of the frame.
        frame[30..34].copy_from_slice(&[10, 244, 1, 3]);
        let event = TraceEvent {
            peer_ifindex: 0,
            verdict: verdict::REMOTE,
            ..event_of(&frame)
        };
        let pods = BTreeMap::from([(7, "web".to_string())]);
        let decoded = decode(super::super::decode::captured(&event));
        let flow = resolve(&cluster.parts[0], &event, &decoded, &pods, &clock());
        assert_eq!(flow.node.as_deref(), Some("n1"));
        assert_eq!(flow.remote_node.as_deref(), Some("n2"));
        assert_eq!(
            flow.to_line(),
            "2026-12-06T20:37:15.000250Z lab n1 web -> node n2 remote \
             tcp 10.200.0.2:4321 -> 10.244.1.3:80 len 42"
        );
    }

    #[test]
    fn ipv4_events_resolve_to_pods_and_flows() {
        let event = event_of(&ipv4(IPPROTO_TCP, 0, &[], &udp(4321, 80)));
        assert_eq!(
            line(&event),
            "2026-12-06T20:37:15.000250Z demo web -> api redirected \
             tcp 10.200.0.2:4321 -> 10.200.0.3:80 len 42"
        );
        let to_host = TraceEvent {
            peer_ifindex: 0,
            verdict: verdict::PASSED,
            ..event_of(&ipv4(1, 0, &[], &[8, 0, 0, 0, 0, 1, 0, 1]))
        };
        assert_eq!(
            line(&to_host),
            "2026-12-06T20:37:15.000250Z demo web -> host passed \
             icmp 10.200.0.2 -> 10.200.0.3 echo-request len 42"
        );
        let arp = TraceEvent {
            hook: hook::TO_POD,
            verdict: verdict::PASSED,
            peer_ifindex: 0,
            ..event_of(&ethernet(0x0806, &[0; 28]))
        };
        assert_eq!(
            line(&arp),
            "2026-12-06T20:37:15.000250Z demo host -> web passed arp len 42"
        );
        let dropped = TraceEvent {
            verdict: verdict::DROPPED,
            reason: 2,
            ..event
        };
        assert_eq!(flow_event(&dropped).drop_reason, Some("spoofed_ipv4"));
        assert!(line(&dropped).contains(" dropped(spoofed_ipv4) "));
    }

    #[test]
    fn ipv6_events_show_addresses_ports_and_icmpv6_types() {
        let udp6 = event_of(&ipv6(17, &udp(5353, 53)));
        assert_eq!(
            line(&udp6),
            "2026-12-06T20:37:15.000250Z demo web -> api redirected \
             udp [fd00:c8::2]:5353 -> [fd00:c8::3]:53 len 62"
        );
        let unreachable = event_of(&ipv6(IPPROTO_ICMPV6, &[1, 4, 0, 0]));
        assert!(
            line(&unreachable)
                .contains(" icmpv6 fd00:c8::2 -> fd00:c8::3 destination-unreachable code 4 "),
            "{}",
            line(&unreachable)
        );
        let mut later = fragment_header(17, 1232, true);
        later.extend([0; 8]);
        let fragment = event_of(&ipv6(IPPROTO_FRAGMENT, &later));
        assert!(
            line(&fragment).contains(" udp fd00:c8::2 -> fd00:c8::3 fragment offset 1232 more "),
            "{}",
            line(&fragment)
        );
        let esp = event_of(&ipv6(50, &[0; 8]));
        assert!(line(&esp).contains(" proto 50 fd00:c8::2 -> fd00:c8::3 "));
    }

    #[test]
    fn json_fields() {
        let event = event_of(&ipv6(17, &udp(5353, 53)));
        let json = serde_json::to_value(flow_event(&event)).unwrap();
        let expected = serde_json::json!({
            "time": "2026-12-06T20:37:15.000250Z",
            "monotonic_ns": 1_500_250_000u64,
            "topology": "demo",
            "hook": "from_pod",
            "pod": "web",
            "peer_pod": "api",
            "verdict": "redirected",
            "drop_reason": null,
            "ethertype": "ipv6",
            "protocol": "udp",
            "ip_protocol": 17,
            "src": "[fd00:c8::2]:5353",
            "dst": "[fd00:c8::3]:53",
            "src_ip": "fd00:c8::2",
            "dst_ip": "fd00:c8::3",
            "src_port": 5353,
            "dst_port": 53,
            "icmp_type": null,
            "icmp_code": null,
            "fragment_offset": null,
            "more_fragments": null,
            "len": 62,
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn an_event_without_bytes_shows_what_the_programs_decided() {
        let event = TraceEvent {
            captured: 0,
            ..event_of(&ipv6(17, &udp(5353, 53)))
        };
        assert_eq!(
            line(&event),
            "2026-12-06T20:37:15.000250Z demo web -> api redirected 0x0000 len 62"
        );
    }
}
