//! The node network a CNI configuration describes, as a topology without
//! pods (pure): its name, mode, pod ranges, node address, MTU and
//! masquerade. `up` makes it once; ADD and DEL then only do endpoint work.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use veth_cni_protocol::{CniError, Ipam, Mode as CniMode, NetConf};

use crate::model::{validate_topology_name, Mode, TcAttach, Topology};

/// The configuration key that turns masquerade off (`"ipMasq": false`, the
/// reference bridge plugin's name for it); on by default, as in topology
/// files.
pub const MASQUERADE_KEY: &str = "ipMasq";

/// The pod ranges of a network and its node (gateway) addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
}

fn bad(field: &str, reason: impl Into<String>) -> CniError {
    CniError::invalid_config(field, reason)
}

/// The ranges of `ipam`: the built-in's `subnet`/`subnet6`, or a delegated
/// `host-local`'s `ranges` (or its older single `subnet`/`gateway`).
pub fn ranges(ipam: Option<&Ipam>) -> Result<Ranges, CniError> {
    let (mut v4, mut v6, mut gateway4, mut gateway6) = (None, None, None, None);
    match ipam {
        None => {
            return Err(bad(
                "ipam",
                "missing: add {\"type\": \"veth-builtin\", \"subnet\": \"<pod CIDR>\"} or a \
                 delegated IPAM such as {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \
                 \"<pod CIDR>\"}]]}",
            ))
        }
        Some(Ipam::Builtin(b)) => {
            v4 = b.subnet;
            v6 = b.subnet6;
        }
        Some(Ipam::Delegated(d)) => {
            let mut found = Vec::new();
            if let Some(subnet) = d.config.get("subnet") {
                found.push(("ipam.subnet".to_string(), subnet, d.config.get("gateway")));
            }
            if let Some(ranges) = d.config.get("ranges").and_then(Value::as_array) {
                for (i, set) in ranges.iter().enumerate() {
                    for (j, range) in set.as_array().into_iter().flatten().enumerate() {
                        let Some(range) = range.as_object() else {
                            continue;
                        };
                        if let Some(subnet) = range.get("subnet") {
                            found.push((
                                format!("ipam.ranges[{i}][{j}].subnet"),
                                subnet,
                                range.get("gateway"),
                            ));
                        }
                    }
                }
            }
            for (field, subnet, gateway) in found {
                let net: IpNet = subnet
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&field, format!("{subnet} is not a CIDR")))?;
                let gateway: Option<IpAddr> = gateway.and_then(|g| g.as_str()?.parse().ok());
                match net {
                    IpNet::V4(n) if v4.is_none() => {
                        v4 = Some(n.trunc());
                        gateway4 = gateway.and_then(|g| match g {
                            IpAddr::V4(g) => Some(g),
                            _ => None,
                        });
                    }
                    IpNet::V6(n) if v6.is_none() => {
                        v6 = Some(n.trunc());
                        gateway6 = gateway.and_then(|g| match g {
                            IpAddr::V6(g) => Some(g),
                            _ => None,
                        });
                    }
                    // A second range of one family: the first names the
                    // network (its unreachable route, its masquerade).
                    _ => {}
                }
            }
        }
    }
    let Some(v4) = v4 else {
        return Err(bad(
            "ipam",
            "no IPv4 pod range found: vethctl networks are IPv4 or dual stack; give an IPv4 \
             subnet (ipam.subnet, or ipam.ranges[0][0].subnet for host-local)",
        ));
    };
    Ok(Ranges {
        v4,
        v6,
        gateway4,
        gateway6,
    })
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
    let mode = match config.mode {
        CniMode::Tc => Mode::Tc,
        CniMode::Xdp => Mode::Xdp,
        CniMode::Routed => Mode::Routed,
        CniMode::Bridge => Mode::Bridge,
    };
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
    let topology = Topology::from_toml(&source).map_err(|e| {
        let field = match e.field.as_str() {
            "pod_cidr" | "pod_cidr6" => "ipam",
            "mtu" => "mtu",
            "host_address" | "host_address6" => "ipam",
            _ => "configuration",
        };
        bad(field, format!("{}: {}", e.field, e.message))
    })?;
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
        assert!(e.to_string().starts_with("ipam:"), "{e}");
        let e = err(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "veth-cni",
            "ipMasq": "yes", "ipam": {"type": "veth-builtin", "subnet": "10.1.0.0/24"}}),
        );
        assert!(e.to_string().starts_with("ipMasq:"), "{e}");
    }
}
