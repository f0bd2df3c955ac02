//! Which decoded events `vethctl trace` prints: by verdict, drop reason,
//! address, port and protocol. Different criteria must all hold; values
//! repeated for one criterion are alternatives (`--port 53 --port 80`).
//!
//! Only the pod is selected in the kernel (`TraceConfig::ifindex`); the
//! rest is decided here on each sampled event, so `--sample N` thins the
//! frames before these filters see them.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use veth_common::{verdict, DropReason, TraceEvent};

use super::decode::{
    Decoded, IpFlow, Transport, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// What the programs decided, in the words trace, stats and metrics use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Redirected,
    /// Sent to another node by the programs.
    Remote,
    Passed,
    Dropped,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Redirected,
        Verdict::Remote,
        Verdict::Passed,
        Verdict::Dropped,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Redirected => "redirected",
            Verdict::Remote => "remote",
            Verdict::Passed => "passed",
            Verdict::Dropped => "dropped",
        }
    }

    /// The verdict of a [`TraceEvent::verdict`] code.
    pub fn from_code(code: u8) -> Verdict {
        match code {
            verdict::REDIRECTED => Verdict::Redirected,
            verdict::REMOTE => Verdict::Remote,
            verdict::DROPPED => Verdict::Dropped,
            _ => Verdict::Passed,
        }
    }
}

/// Transport protocols a trace can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Icmp,
        Protocol::Icmpv6,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Icmp => IPPROTO_ICMP,
            Protocol::Icmpv6 => IPPROTO_ICMPV6,
        }
    }

    /// The protocol with this IP protocol number, if it is one of ours.
    pub fn from_number(number: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == number)
    }
}

/// `name` among `choices`, or an error listing them.
fn one_of<T: Copy>(
    value: &str,
    what: &str,
    choices: impl IntoIterator<Item = T> + Clone,
    name: impl Fn(T) -> &'static str,
) -> Result<T, String> {
    let wanted = value.trim().to_ascii_lowercase();
    if let Some(found) = choices.clone().into_iter().find(|c| name(*c) == wanted) {
        return Ok(found);
    }
    let names: Vec<&str> = choices.into_iter().map(name).collect();
    Err(format!(
        "{value:?} is not a {what}; use one of: {}",
        names.join(", ")
    ))
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        one_of(s, "verdict", Verdict::ALL, Verdict::name)
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        one_of(s, "protocol", Protocol::ALL, Protocol::name)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A drop reason by its name in counters and metrics (`spoofed_ipv4`).
pub fn parse_drop_reason(s: &str) -> Result<DropReason, String> {
    one_of(s, "drop reason", DropReason::ALL, DropReason::name)
}

/// An address (one host) or a CIDR; host bits of a CIDR are ignored.
pub fn parse_address(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "{s:?} is neither an IP address nor a CIDR; write one like 10.200.0.5, \
             fd00::5, 10.200.0.0/24 or fd00::/64"
        )
    })
}

/// A TCP/UDP port, 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{s:?} is not a port; use a number from 1 to 65535")),
    }
}

/// The criteria; an empty list does not restrict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub verdicts: Vec<Verdict>,
    /// Only dropped frames, for one of these reasons.
    pub drop_reasons: Vec<DropReason>,
    /// Source or destination in one of these.
    pub addresses: Vec<IpNet>,
    pub src_addresses: Vec<IpNet>,
    pub dst_addresses: Vec<IpNet>,
    /// Source or destination port (TCP and UDP).
    pub ports: Vec<u16>,
    pub src_ports: Vec<u16>,
    pub dst_ports: Vec<u16>,
    pub protocols: Vec<Protocol>,
}

/// True if `wanted` is empty or `test` holds for one of its values.
fn any_of<T>(wanted: &[T], test: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(test)
}

impl Filter {
    /// Whether an event (and what its bytes decode to) passes every criterion.
    pub fn matches(&self, event: &TraceEvent, decoded: &Decoded) -> bool {
        let verdict = Verdict::from_code(event.verdict);
        let reason = DropReason::from_code(u32::from(event.reason));
        any_of(&self.verdicts, |v| *v == verdict)
            && any_of(&self.drop_reasons, |r| {
                verdict == Verdict::Dropped && Some(*r) == reason
            })
            && self.matches_flow(decoded.ip.as_ref())
    }

    fn matches_flow(&self, flow: Option<&IpFlow>) -> bool {
        let ends = flow.map(|f| (f.src, f.dst));
        let ports = match flow.map(|f| f.transport) {
            Some(Transport::Ports { src, dst }) => Some((src, dst)),
            _ => None,
        };
        let either = |a, b, want| a == want || b == want;
        any_of(&self.addresses, |net| {
            ends.is_some_and(|(s, d)| net.contains(&s) || net.contains(&d))
        }) && any_of(&self.src_addresses, |net| {
            ends.is_some_and(|(s, _)| net.contains(&s))
        }) && any_of(&self.dst_addresses, |net| {
            ends.is_some_and(|(_, d)| net.contains(&d))
        }) && any_of(&self.ports, |p| {
            ports.is_some_and(|(s, d)| either(s, d, *p))
        }) && any_of(&self.src_ports, |p| ports.is_some_and(|(s, _)| s == *p))
            && any_of(&self.dst_ports, |p| ports.is_some_and(|(_, d)| d == *p))
            && any_of(&self.protocols, |p| {
                flow.is_some_and(|f| f.protocol == p.number())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::decode::{decode, tests::*, IPPROTO_FRAGMENT},
        *,
    };

    fn event(verdict: u8, reason: u8) -> TraceEvent {
        TraceEvent {
            verdict,
            reason,
            ..TraceEvent::default()
        }
    }

    fn passes(filter: &Filter, event: &TraceEvent, frame: &[u8]) -> bool {
        filter.matches(event, &decode(frame))
    }

    #[test]
    fn bad_values_name_what_is_accepted() {
        assert_eq!(
            "redirect".parse::<Verdict>().unwrap_err(),
            "\"redirect\" is not a verdict; use one of: redirected, remote, passed, dropped"
        );
        assert_eq!("Dropped".parse::<Verdict>(), Ok(Verdict::Dropped));
        assert_eq!(
            "sctp".parse::<Protocol>().unwrap_err(),
            "\"sctp\" is not a protocol; use one of: tcp, udp, icmp, icmpv6"
        );
        let reason = parse_drop_reason("spoofed").unwrap_err();
        assert!(reason.starts_with("\"spoofed\" is not a drop reason; use one of: "));
        for r in DropReason::ALL {
            assert!(reason.contains(r.name()), "{reason}");
            assert_eq!(parse_drop_reason(r.name()), Ok(r));
        }
        assert!(parse_address("10.0.0.256").unwrap_err().contains("neither"));
        assert!(parse_address("fd00::/129").is_err());
        assert_eq!(
            parse_address("10.200.0.7/24").unwrap().to_string(),
            "10.200.0.0/24"
        );
        assert_eq!(parse_address("fd00::5").unwrap().to_string(), "fd00::5/128");
        for bad in ["0", "65536", "http", "-1"] {
            assert!(parse_port(bad).unwrap_err().contains("1 to 65535"), "{bad}");
        }
        assert_eq!(parse_port("53"), Ok(53));
    }

    #[test]
    fn verdicts_and_drop_reasons() {
        let frame = ipv4(17, 0, &[], &udp(1, 2));
        let redirected = event(veth_common::verdict::REDIRECTED, 0);
        let spoofed = event(veth_common::verdict::DROPPED, DropReason::SpoofedIpv4 as u8);
        let only_dropped = Filter {
            verdicts: vec![Verdict::Dropped],
            ..Filter::default()
        };
        assert!(!passes(&only_dropped, &redirected, &frame));
        assert!(passes(&only_dropped, &spoofed, &frame));
        let either = Filter {
            verdicts: vec![Verdict::Dropped, Verdict::Redirected],
            ..Filter::default()
        };
        assert!(passes(&either, &redirected, &frame));
        let by_reason = |r| Filter {
            drop_reasons: vec![r],
            ..Filter::default()
        };
        assert!(passes(
            &by_reason(DropReason::SpoofedIpv4),
            &spoofed,
            &frame
        ));
        assert!(!passes(
            &by_reason(DropReason::SpoofedMac),
            &spoofed,
            &frame
        ));
        // Reason code 0 of a frame that was not dropped is no reason.
        assert!(!passes(
            &by_reason(DropReason::RedirectFailed),
            &redirected,
            &frame
        ));
        assert!(passes(&Filter::default(), &redirected, &frame));
    }

    #[test]
    fn addresses_either_way_or_one_side() {
        let e = event(0, 0);
        let v4 = ipv4(17, 0, &[], &udp(1, 2));
        let v6 = ipv6(17, &udp(1, 2));
        let arp = ethernet(0x0806, &[0; 28]);
        let ip = |s: &str| Filter {
            addresses: vec![parse_address(s).unwrap()],
            ..Filter::default()
        };
        assert!(passes(&ip("10.200.0.3"), &e, &v4), "destination");
        assert!(passes(&ip("10.200.0.2"), &e, &v4), "source");
        assert!(passes(&ip("10.200.0.0/24"), &e, &v4));
        assert!(!passes(&ip("10.201.0.0/24"), &e, &v4));
        assert!(!passes(&ip("10.200.0.0/24"), &e, &v6), "other family");
        assert!(passes(&ip("fd00:c8::/64"), &e, &v6));
        assert!(!passes(&ip("10.200.0.0/16"), &e, &arp), "no addresses");
        let src = Filter {
            src_addresses: vec![parse_address(A6).unwrap()],
            ..Filter::default()
        };
        let dst = Filter {
            dst_addresses: vec![parse_address(A6).unwrap()],
            ..Filter::default()
        };
        assert!(passes(&src, &e, &v6));
        assert!(!passes(&dst, &e, &v6));
    }

    #[test]
    fn ports_and_protocols() {
        let e = event(0, 0);
        let dns = ipv6(17, &udp(5353, 53));
        let icmp6 = ipv6(58, &[128, 0, 0, 0]);
        let mut later = fragment_header(17, 1232, false);
        later.extend(udp(5353, 53));
        let fragment = ipv6(IPPROTO_FRAGMENT, &later);
        let port = |p| Filter {
            ports: vec![p],
            ..Filter::default()
        };
        assert!(passes(&port(53), &e, &dns));
        assert!(passes(&port(5353), &e, &dns));
        assert!(!passes(&port(80), &e, &dns));
        assert!(!passes(&port(53), &e, &icmp6));
        assert!(
            !passes(&port(53), &e, &fragment),
            "no ports in a later fragment"
        );
        let dst_53 = Filter {
            dst_ports: vec![53],
            ..Filter::default()
        };
        let src_53 = Filter {
            src_ports: vec![53],
            ..Filter::default()
        };
        assert!(passes(&dst_53, &e, &dns));
        assert!(!passes(&src_53, &e, &dns));
        let proto = |p| Filter {
            protocols: vec![p],
            ..Filter::default()
        };
        assert!(passes(&proto(Protocol::Icmpv6), &e, &icmp6));
        assert!(!passes(&proto(Protocol::Icmp), &e, &icmp6));
        assert!(passes(&proto(Protocol::Udp), &e, &fragment));
        // Every criterion must hold.
        let udp_to_80 = Filter {
            protocols: vec![Protocol::Udp],
            dst_ports: vec![80],
            ..Filter::default()
        };
        assert!(!passes(&udp_to_80, &e, &dns));
    }
}
