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
    Passed,
    Dropped,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Redirected, Verdict::Passed, Verdict::Dropped];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Redirected => "redirected",
            Verdict::Passed => "passed",
            Verdict::Dropped => "dropped",
        }
    }

    /// The verdict of a [`TraceEvent::verdict`] code.
    pub fn from_code(code: u8) -> Verdict {
        match code {
            verdict::REDIRECTED => Verdict::Redirected,
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
