//! The node network a CNI configuration describes, as a topology without
//! pods (pure): its name, mode, pod ranges, node address, MTU and
//! masquerade. `up` makes it once; ADD and DEL then only do endpoint work.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use veth_cni_protocol::{CniError, Ipam, Mode as CniMode, NetConf};

use crate::model::{validate_topology_name, Mode, ModelError, TcAttach, Topology};

/// The configuration key that turns masquerade off (`"ipMasq": false`, the
/// reference bridge plugin's name for it); on by default, as in topology
/// files.
pub const MASQUERADE_KEY: &str = "ipMasq";

/// The pod ranges of a network and its node (gateway) addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Where the configuration gave each of them.
    pub keys: Keys,
}

/// The configuration's keys for the values of its network, so that an
/// error about a value names the key the user wrote (`ipam.subnet`,
/// `ipam.ranges[1][0].gateway`), not the topology field vethctl made of it
/// (`pod_cidr`, `host_address6`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    v4: Option<String>,
    v6: Option<String>,
    gateway4: Option<String>,
    gateway6: Option<String>,
}

impl Keys {
    /// The topology fields a configuration's values become, each with the
    /// configuration's key; longer names first, as they are replaced in
    /// messages (`pod_cidr6` before `pod_cidr`).
    fn fields(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("pod_cidr6", self.v6.as_deref()),
            ("pod_cidr", self.v4.as_deref()),
            ("host_address6", self.gateway6.as_deref()),
            ("host_address", self.gateway4.as_deref()),
            ("mtu", Some("mtu")),
            ("mode", Some("mode")),
        ]
    }

    /// The configuration's key for topology field `field`: `ipam` for one
    /// the configuration did not write.
    pub fn key(&self, field: &str) -> &str {
        self.fields()
            .into_iter()
            .find(|(name, _)| *name == field)
            .map_or("ipam", |(_, key)| key.unwrap_or("ipam"))
    }

    /// `e`, about the topology made of the configuration, in the
    /// configuration's words: its field and the fields its message names
    /// are the configuration's keys.
    pub fn error(&self, e: &ModelError) -> CniError {
        let mut message = e.message.clone();
        for (field, key) in self.fields() {
            if let Some(key) = key.filter(|k| *k != field) {
                message = replace_word(&message, field, key);
            }
        }
        bad(self.key(&e.field), message)
    }
}

/// `text` with `word` replaced by `with` where it stands alone (not inside
/// a longer name: `pod_cidr` is not replaced in `pod_cidr6`).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let (before, after) = (&rest[..at], &rest[at + word.len()..]);
        let alone = !before.ends_with(is_name) && !after.starts_with(is_name);
        out += before;
        out += if alone { with } else { word };
        rest = after;
    }
    out + rest
}

fn bad(field: &str, reason: impl Into<String>) -> CniError {
    CniError::invalid_config(field, reason)
}

/// A subnet a delegated IPAM's configuration gives: its key, its value and
/// its gateway's.
struct Written<'a> {
    key: String,
    subnet: &'a Value,
    gateway: Option<&'a Value>,
}

/// The subnets of a delegated IPAM's configuration, in order: the older
/// single `subnet` (with `gateway`), then each of `ranges`.
fn written_subnets(config: &Map<String, Value>) -> Vec<Written<'_>> {
    let mut found = Vec::new();
    if let Some(subnet) = config.get("subnet") {
        found.push(Written {
            key: "ipam.subnet".to_string(),
            subnet,
            gateway: config.get("gateway"),
        });
    }
    let ranges = config.get("ranges").and_then(Value::as_array);
    for (i, set) in ranges.into_iter().flatten().enumerate() {
        let set = set.as_array().into_iter().flatten();
        for (j, range) in set
            .enumerate()
            .filter_map(|(j, r)| Some((j, r.as_object()?)))
        {
            if let Some(subnet) = range.get("subnet") {
                found.push(Written {
                    key: format!("ipam.ranges[{i}][{j}].subnet"),
                    subnet,
                    gateway: range.get("gateway"),
                });
            }
        }
    }
    found
}

impl Written<'_> {
    /// The key of the gateway beside this subnet.
    fn gateway_key(&self) -> String {
        self.key.replace(".subnet", ".gateway")
    }
}

/// A written subnet's network and gateway, checked.
fn parse_written(w: &Written) -> Result<(IpNet, Option<IpAddr>), CniError> {
    let net: IpNet = w
        .subnet
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&w.key, format!("{} is not a CIDR", w.subnet)))?;
    let Some(gateway) = w.gateway else {
        return Ok((net, None));
    };
    let parsed: Option<IpAddr> = gateway.as_str().and_then(|g| g.parse().ok());
    match parsed {
        Some(g) if g.is_ipv4() == net.addr().is_ipv4() => Ok((net, Some(g))),
        _ => Err(bad(
            &w.gateway_key(),
            format!(
                "{gateway} is not an address of {}'s family; give the node's address in {net}, \
                 or leave the gateway out (the first address of the subnet)",
                w.key
            ),
        )),
    }
}

/// The ranges of a delegated IPAM: the first subnet of each family names
/// the network (its unreachable route, its masquerade).
fn delegated_ranges(config: &Map<String, Value>) -> Result<Ranges, CniError> {
    let mut ranges = Ranges::default();
    for written in written_subnets(config) {
        let (net, gateway) = parse_written(&written)?;
        let gateway_key = Some(written.gateway_key()).filter(|_| gateway.is_some());
        // parse_written checked that a gateway is of its subnet's family.
        match (net, gateway) {
            (IpNet::V4(n), gateway) if ranges.keys.v4.is_none() => {
                ranges.v4 = n.trunc();
                ranges.gateway4 = gateway.and_then(|g| match g {
                    IpAddr::V4(g) => Some(g),
                    IpAddr::V6(_) => None,
                });
                (ranges.keys.v4, ranges.keys.gateway4) = (Some(written.key), gateway_key);
            }
            (IpNet::V6(n), gateway) if ranges.keys.v6.is_none() => {
                ranges.v6 = Some(n.trunc());
                ranges.gateway6 = gateway.and_then(|g| match g {
                    IpAddr::V6(g) => Some(g),
                    IpAddr::V4(_) => None,
                });
                (ranges.keys.v6, ranges.keys.gateway6) = (Some(written.key), gateway_key);
            }
            // A second range of one family: the first names the network.
            _ => {}
        }
    }
    Ok(ranges)
}

/// The ranges of `ipam`: the built-in's `subnet`/`subnet6`, or a delegated
/// `host-local`'s `ranges` (or its older single `subnet`/`gateway`).
pub fn ranges(ipam: Option<&Ipam>) -> Result<Ranges, CniError> {
    let ranges = match ipam {
        None => {
            return Err(bad(
                "ipam",
                "missing: add {\"type\": \"veth-builtin\", \"subnet\": \"<pod CIDR>\"} or a \
                 delegated IPAM such as {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \
                 \"<pod CIDR>\"}]]}",
            ))
        }
        Some(Ipam::Builtin(b)) => Ranges {
            v4: b.subnet.unwrap_or_default(),
            v6: b.subnet6,
            keys: Keys {
                v4: b.subnet.map(|_| "ipam.subnet".to_string()),
                v6: b.subnet6.map(|_| "ipam.subnet6".to_string()),
                ..Keys::default()
            },
            ..Ranges::default()
        },
        Some(Ipam::Delegated(d)) => delegated_ranges(&d.config)?,
    };
    if ranges.keys.v4.is_none() {
        return Err(bad(
            "ipam",
            "no IPv4 pod range found: vethctl networks are IPv4 or dual stack; give an IPv4 \
             subnet (ipam.subnet, or ipam.ranges[0][0].subnet for host-local)",
        ));
    }
    Ok(ranges)
}

/// The configuration key saying how an endpoint's TC programs are attached.
const TC_ATTACH_KEY: &str = "tcAttach";

/// How the configuration has endpoints' TC programs attached: `"clsact"`
/// (the default: no RCU grace period per attach, so pods start fast) or
/// `"tcx"` (pinned links bpftool lists; what a chained plugin that needs
/// the host interface's `ingress` qdisc requires).
pub fn tc_attach(config: &NetConf) -> Result<TcAttach, CniError> {
    match config.other.get(TC_ATTACH_KEY) {
        None | Some(Value::Null) => Ok(TcAttach::Clsact),
        Some(Value::String(s)) if s == TcAttach::Clsact.name() => Ok(TcAttach::Clsact),
        Some(Value::String(s)) if s == TcAttach::Tcx.name() => Ok(TcAttach::Tcx),
        Some(other) => Err(bad(
            TC_ATTACH_KEY,
            format!(
                "expected \"clsact\" (the default) or \"tcx\", found {other}; use \"tcx\" when \
                 a plugin chained after veth-cni adds an ingress qdisc to the host interface \
                 (bandwidth with an egressRate in its own configuration)"
            ),
        )),
    }
}

/// How the description of a network made by veth-cni starts.
const DESCRIPTION_HEADER: &str = "# The node network of CNI configuration ";

/// Whether a recorded description (`/run/vethctl/<name>/topology.toml`)
/// is one [`network`] wrote, not a topology file's.
pub fn made_by_cni(recorded: &str) -> bool {
    recorded.starts_with(DESCRIPTION_HEADER)
}

/// The configuration's keys for the values of its network (see [`Keys`]).
pub fn keys(config: &NetConf) -> Keys {
    ranges(config.ipam.as_ref())
        .map(|r| r.keys)
        .unwrap_or_default()
}

/// The mode `config` asks for.
pub fn mode(config: &NetConf) -> Mode {
    match config.mode {
        CniMode::Tc => Mode::Tc,
        CniMode::Xdp => Mode::Xdp,
        CniMode::Routed => Mode::Routed,
        CniMode::Bridge => Mode::Bridge,
    }
}

/// The network `config` describes: a topology named like the configuration
/// with no pods, and its description's text (what `up` records, and what
/// tells an ADD whether the network is still as configured).
pub fn network(config: &NetConf) -> Result<(Topology, String), CniError> {
    validate_topology_name(&config.name).map_err(|e| {
        bad(
            "name",
            format!(
                "{}; vethctl names its objects after the network (as in `vethctl status -n \
                 NAME`), so the configuration's name must be a valid topology name",
                e.message
            ),
        )
    })?;
    let ranges = ranges(config.ipam.as_ref())?;
    let mode = mode(config);
    let masquerade = match config.other.get(MASQUERADE_KEY) {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(
                MASQUERADE_KEY,
                format!("expected true or false, found {other}"),
            ))
        }
    };
    let mut doc = Map::new();
    doc.insert("name".into(), config.name.clone().into());
    doc.insert("mode".into(), mode.name().into());
    doc.insert("pod_cidr".into(), ranges.v4.to_string().into());
    if let Some(v6) = ranges.v6 {
        doc.insert("pod_cidr6".into(), v6.to_string().into());
    }
    if let Some(g) = ranges.gateway4 {
        doc.insert("host_address".into(), g.to_string().into());
    }
    if let Some(g) = ranges.gateway6.filter(|_| ranges.v6.is_some()) {
        doc.insert("host_address6".into(), g.to_string().into());
    }
    if let Some(mtu) = config.mtu {
        doc.insert("mtu".into(), mtu.into());
    }
    let mut uplink = Map::new();
    uplink.insert("masquerade".into(), masquerade.into());
    doc.insert("uplink".into(), uplink.into());
    let body = toml::to_string(&Value::Object(doc))
        .map_err(|e| CniError::internal(format!("writing the network description: {e}")))?;
    let source = format!(
        "{DESCRIPTION_HEADER}{:?}, written by veth-cni; its pods\n\
         # are the runtime's endpoints (`vethctl status -n {}`).\n{body}",
        config.name, config.name
    );
    let topology = Topology::from_toml(&source).map_err(|e| ranges.keys.error(&e))?;
    Ok((topology, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use veth_cni_protocol::Command;

    fn conf(v: serde_json::Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes(), Command::Add).unwrap()
    }

    #[test]
    fn builtin_network() {
        let (t, source) = network(&conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "pods", "type": "veth-cni", "mode": "xdp", "mtu": 1400,
            "ipam": {"type": "veth-builtin", "subnet": "10.244.1.0/24", "subnet6": "fd00:244:1::/64"}
        })))
        .unwrap();
        assert_eq!(t.name, "pods");
        assert_eq!(t.mode, Mode::Xdp);
        assert_eq!(t.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(t.host_address, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(t.pod_cidr6.unwrap().to_string(), "fd00:244:1::/64");
        assert!(t.pods.is_empty());
        assert!(t.uplink.masquerade);
        assert_eq!(Topology::from_toml(&source).unwrap(), t);
        assert!(made_by_cni(&source));
        assert!(!made_by_cni(
            "name = \"pods\"\npod_cidr = \"10.244.1.0/24\"\n"
        ));
    }

    #[test]
    fn host_local_ranges_and_gateway() {
        let (t, _) = network(&conf(serde_json::json!({
            "cniVersion": "0.4.0", "name": "k8s", "type": "veth-cni", "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [
                [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.254"}],
                [{"subnet": "fd88::/64"}]
            ]}
        })))
        .unwrap();
        assert_eq!(t.mode, Mode::Tc);
        assert_eq!(t.pod_cidr.to_string(), "10.88.0.0/16");
        assert_eq!(t.host_address, Ipv4Addr::new(10, 88, 0, 254));
        assert_eq!(t.pod_cidr6.unwrap().to_string(), "fd88::/64");
        assert!(!t.uplink.masquerade);
        let (old_style, _) = network(&conf(serde_json::json!({
            "cniVersion": "0.3.1", "name": "k8s", "type": "veth-cni",
            "ipam": {"type": "host-local", "subnet": "10.89.0.0/24"}
        })))
        .unwrap();
        assert_eq!(old_style.pod_cidr.to_string(), "10.89.0.0/24");
    }

    #[test]
    fn refusals_name_the_field() {
        let err = |v: serde_json::Value| network(&conf(v)).unwrap_err();
        let e = err(
            serde_json::json!({"cniVersion": "1.0.0", "name": "a-very-long-name",
            "type": "veth-cni", "ipam": {"type": "veth-builtin", "subnet": "10.1.0.0/24"}}),
        );
        assert!(e.to_string().starts_with("name:"), "{e}");
        let e = err(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "veth-cni"}));
        assert!(e.to_string().starts_with("ipam:"), "{e}");
        let e = err(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "veth-cni",
            "ipam": {"type": "veth-builtin", "subnet6": "fd00::/64"}}),
        );
        assert!(e.to_string().contains("no IPv4 pod range"), "{e}");
        let e = err(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "veth-cni",
            "ipam": {"type": "veth-builtin", "subnet": "127.0.0.0/24"}}),
        );
        assert!(e.to_string().starts_with("ipam.subnet:"), "{e}");
        let e = err(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "veth-cni",
            "ipMasq": "yes", "ipam": {"type": "veth-builtin", "subnet": "10.1.0.0/24"}}),
        );
        assert!(e.to_string().starts_with("ipMasq:"), "{e}");
    }

    /// Every refusal of a value the configuration gives names the key the
    /// user wrote and never a topology field (`pod_cidr`, `host_address`).
    #[test]
    fn refusals_speak_the_configurations_words() {
        let builtin = |ipam: serde_json::Value| serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "veth-cni", "ipam": ipam});
        let host_local = |ranges: serde_json::Value| {
            builtin(serde_json::json!({"type": "host-local", "ranges": ranges}))
        };
        let cases = [
            (
                builtin(serde_json::json!({"type": "veth-builtin", "subnet": "127.0.0.0/24"})),
                "ipam.subnet: 127.0.0.0/24 overlaps",
            ),
            (
                builtin(
                    serde_json::json!({"type": "veth-builtin", "subnet": "10.1.0.0/24",
                    "subnet6": "fd00::/124"}),
                ),
                "ipam.subnet6: fd00::/124 is too small",
            ),
            (
                builtin(
                    serde_json::json!({"type": "veth-builtin", "subnet": "10.1.0.0/24",
                    "subnet6": "ff02::/64"}),
                ),
                "ipam.subnet6: ff02::/64 overlaps",
            ),
            (
                host_local(
                    serde_json::json!([[{"subnet": "10.88.0.0/16", "gateway": "10.9.9.9"}]]),
                ),
                "ipam.ranges[0][0].gateway: 10.9.9.9 is not a usable address of \
                 ipam.ranges[0][0].subnet 10.88.0.0/16; pick one inside it or omit \
                 ipam.ranges[0][0].gateway",
            ),
            (
                host_local(serde_json::json!([[{"subnet": "10.88.0.0/16"}],
                    [{"subnet": "fd88::/64", "gateway": "fd99::1"}]])),
                "ipam.ranges[1][0].gateway: fd99::1 is not a usable address of \
                 ipam.ranges[1][0].subnet fd88::/64",
            ),
            (
                host_local(serde_json::json!([[{"subnet": "10.88.0.0/16", "gateway": "fd00::1"}]])),
                "ipam.ranges[0][0].gateway: \"fd00::1\" is not an address of \
                 ipam.ranges[0][0].subnet's family",
            ),
            (
                builtin(
                    serde_json::json!({"type": "host-local", "subnet": "10.88.0.0/16",
                    "gateway": "10.88.0"}),
                ),
                "ipam.gateway: \"10.88.0\" is not an address",
            ),
            (
                host_local(serde_json::json!([[{"subnet": "10.88.0.0/33"}]])),
                "ipam.ranges[0][0].subnet: \"10.88.0.0/33\" is not a CIDR",
            ),
            (
                host_local(serde_json::json!([[{"subnet": "169.254.9.0/24"}]])),
                "ipam.ranges[0][0].subnet: 169.254.9.0/24 overlaps",
            ),
        ];
        for (config, expected) in cases {
            let e = network(&conf(config.clone())).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{config}:\n{e}\nnot {expected}");
            for vethctl_word in ["pod_cidr", "host_address", "topology"] {
                assert!(!e.contains(vethctl_word), "{config}: {e}");
            }
        }
        // The MTU of mode xdp: the key is the configuration's own.
        let e = network(&conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n",
            "type": "veth-cni", "mode": "xdp", "mtu": 9000,
            "ipam": {"type": "veth-builtin", "subnet": "10.1.0.0/24"}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("mtu: MTU 9000 is too large for XDP"), "{e}");
    }

    /// A range that clashes with the host (found by the preflight check,
    /// in the topology's words) is reported with the configuration's key.
    #[test]
    fn a_clash_is_named_by_the_key_that_gave_the_range() {
        let config = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n",
            "type": "veth-cni", "ipam": {"type": "host-local", "ranges": [
                [{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]]}}));
        let clash = ModelError {
            field: "pod_cidr6".into(),
            message: "fd88::/64 overlaps the route `fd88::/48 dev wg0`; pick a pod_cidr6 the \
                      host does not use"
                .into(),
        };
        let e = keys(&config).error(&clash).to_string();
        assert_eq!(
            e,
            "ipam.ranges[1][0].subnet: fd88::/64 overlaps the route `fd88::/48 dev wg0`; pick \
             a ipam.ranges[1][0].subnet the host does not use"
        );
        assert_eq!(
            replace_word("pod_cidr6 pod_cidr x_pod_cidr", "pod_cidr", "K"),
            "pod_cidr6 K x_pod_cidr"
        );
    }
}
