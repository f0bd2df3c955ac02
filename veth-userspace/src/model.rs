//! Topology descriptions: the TOML file format, the built-in default, and
//! validation into a [`Topology`] whose every name and address is decided.
//! Pure: no syscalls, so everything here is unit-tested.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Deserialize;
use veth_common::GATEWAY_MAC;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest topology name: it prefixes every interface, so keep it short.
pub const TOPOLOGY_NAME_MAX: usize = 10;
/// The pods' default gateway, as in Calico: link-local, never on the wire as
/// a source; pods resolve it to the host-side veth's MAC.
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The topology `vethctl up` brings up when given no file.
pub const DEFAULT_TOPOLOGY: &str = r#"# Built-in default topology: three pods wired by the eBPF redirect path.
name = "demo"
mode = "tc"
pod_cidr = "10.200.0.0/24"

[[pods]]
name = "web"

[[pods]]
name = "api"

[[pods]]
name = "db"
"#;

/// How pods are wired. Only the eBPF redirect path exists so far.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TCX programs on the host-side veths redirect pod-to-pod frames with
    /// `bpf_redirect_peer`; everything else goes through the host stack.
    #[default]
    Tc,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Tc => f.write_str("tc"),
        }
    }
}

/// The file as written by the user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    pub pod_cidr: Ipv4Net,
    /// Node address pods reach the host on; default: first address of
    /// `pod_cidr`.
    pub host_address: Option<Ipv4Addr>,
    /// Per-pair counters in the programs; `false` compiles them out (see
    /// the README for what counting costs).
    #[serde(default = "yes")]
    pub counters: bool,
    #[serde(default)]
    pub pods: Vec<PodFile>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodFile {
    pub name: String,
    /// Fixed address; assigned from `pod_cidr` when absent.
    pub ipv4: Option<Ipv4Addr>,
}

/// A validated topology: every name and address decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub name: String,
    pub mode: Mode,
    pub pod_cidr: Ipv4Net,
    pub host_address: Ipv4Addr,
    /// Label of `host_address` on the host's loopback (`lo:<name>`), by
    /// which `down` finds it again.
    pub host_address_label: String,
    pub counters: bool,
    pub pods: Vec<Pod>,
}

/// One pod: a network namespace with `eth0`, whose peer is `host_veth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub host_veth: String,
    pub ipv4: Ipv4Addr,
    /// MAC of the pod's `eth0`, derived from its address (0a:58 + IPv4, as
    /// the CNI bridge plugin does) so it is known before the pod exists.
    pub mac: [u8; 6],
    /// MAC of the host-side veth: the pod's gateway.
    pub gateway_mac: [u8; 6],
}

/// A description the tool refuses, naming the field and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ModelError {
    /// Where in the file: `name`, `pods[2].ipv4`, or `line 4, column 1`.
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ModelError {
    ModelError {
        field: field.into(),
        message: message.into(),
    }
}

impl Topology {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Topology, ModelError> {
        let file: TopologyFile = toml::from_str(text).map_err(|e| {
            let field = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}")
                }
                None => "topology file".to_string(),
            };
            invalid(field, e.message().trim_end().to_string())
        })?;
        file.validate()
    }

    /// The built-in default topology.
    pub fn default_topology() -> Topology {
        Topology::from_toml(DEFAULT_TOPOLOGY).expect("the built-in topology is valid")
    }

    /// Prefix of every kernel object name of this topology (netns, links).
    /// Topology names cannot contain '-', so `demo-` never matches objects
    /// of a topology `demo2` or `demo-x`.
    pub fn object_prefix(&self) -> String {
        object_prefix(&self.name)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }
}

/// See [`Topology::object_prefix`].
pub fn object_prefix(topology: &str) -> String {
    format!("{topology}-")
}

/// Label of a topology's node address on the host's loopback. Linux labels
/// start with the device name; `lo:` + a 10-character name fits IFNAMSIZ.
pub fn host_address_label(topology: &str) -> String {
    format!("lo:{topology}")
}

/// 1-based line and column of a byte offset, for error messages.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Checks a topology name: it prefixes every object, so it must be short and
/// free of '-' (the separator).
pub fn validate_topology_name(name: &str) -> Result<(), ModelError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if name.is_empty() || name.len() > TOPOLOGY_NAME_MAX || !ok_chars || !starts_with_letter {
        return Err(invalid(
            "name",
            format!(
                "topology name {name:?} is not allowed; use 1 to {TOPOLOGY_NAME_MAX} lowercase \
                 letters and digits, starting with a letter (it prefixes every interface and \
                 namespace the topology creates)"
            ),
        ));
    }
    Ok(())
}

fn validate_pod_name(index: usize, name: &str) -> Result<(), ModelError> {
    let field = format!("pods[{index}].name");
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            field,
            format!(
                "pod name {name:?} is not allowed; use lowercase letters, digits and '-' (not at \
                 either end)"
            ),
        ));
    }
    Ok(())
}

impl TopologyFile {
    pub fn validate(self) -> Result<Topology, ModelError> {
        validate_topology_name(&self.name)?;
        let prefix = object_prefix(&self.name);

        let cidr = self.pod_cidr.trunc();
        if cidr != self.pod_cidr {
            return Err(invalid(
                "pod_cidr",
                format!(
                    "{} has host bits set; write the network address: {cidr}",
                    self.pod_cidr
                ),
            ));
        }
        if cidr.prefix_len() > 30 {
            return Err(invalid(
                "pod_cidr",
                format!("{cidr} is too small for a host address and pods; use a /30 or larger"),
            ));
        }
        let usable = |addr: Ipv4Addr| {
            cidr.contains(&addr) && addr != cidr.network() && addr != cidr.broadcast()
        };

        let host_address = match self.host_address {
            Some(addr) if !usable(addr) => {
                return Err(invalid(
                    "host_address",
                    format!("{addr} is not a usable address of pod_cidr {cidr}; pick one inside it or omit host_address"),
                ))
            }
            Some(addr) => addr,
            None => cidr.hosts().next().expect("a /30 or larger has hosts"),
        };
        let host_address_label = host_address_label(&self.name);

        // Names first, so address errors can name the pods involved.
        let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            validate_pod_name(i, &pod.name)?;
            if let Some(first) = seen_names.insert(&pod.name, i) {
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!(
                        "pod name {:?} is already used by pods[{first}]; pod names must be unique",
                        pod.name
                    ),
                ));
            }
            let ifname = format!("{prefix}{}", pod.name);
            if ifname.len() > IFNAME_MAX {
                let room = IFNAME_MAX - prefix.len();
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!(
                        "host interface name {ifname:?} would be {} characters, Linux allows \
                         {IFNAME_MAX}; shorten the pod name to at most {room} characters (or the \
                         topology name)",
                        ifname.len()
                    ),
                ));
            }
        }

        // Fixed addresses claim their place before automatic ones are handed out.
        let mut owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        owner.insert(host_address, "host_address".to_string());
        for (i, pod) in self.pods.iter().enumerate() {
            let Some(addr) = pod.ipv4 else { continue };
            let field = format!("pods[{i}].ipv4");
            if !usable(addr) {
                return Err(invalid(
                    field,
                    format!(
                        "{addr} is not a usable address of pod_cidr {cidr}; pick one inside it \
                         (not its network or broadcast address) or omit ipv4 to assign one"
                    ),
                ));
            }
            if let Some(other) = owner.insert(addr, format!("pods[{i}] ({:?})", pod.name)) {
                return Err(invalid(
                    field,
                    format!(
                        "{addr} is already used by {other}; pick another address or omit ipv4 \
                         to assign one automatically"
                    ),
                ));
            }
        }
        let mut free = cidr.hosts().filter(|a| !owner.contains_key(a));
        let mut pods = Vec::with_capacity(self.pods.len());
        for (i, pod) in self.pods.into_iter().enumerate() {
            let ipv4 = match pod.ipv4 {
                Some(addr) => addr,
                None => free.next().ok_or_else(|| {
                    invalid(
                        format!("pods[{i}].ipv4"),
                        format!("pod_cidr {cidr} has no free address left; use a larger pod_cidr"),
                    )
                })?,
            };
            let name_in_kernel = format!("{prefix}{}", pod.name);
            pods.push(Pod {
                netns: name_in_kernel.clone(),
                host_veth: name_in_kernel,
                mac: pod_mac(ipv4),
                gateway_mac: GATEWAY_MAC,
                ipv4,
                name: pod.name,
            });
        }

        Ok(Topology {
            name: self.name,
            mode: self.mode,
            pod_cidr: cidr,
            host_address,
            host_address_label,
            counters: self.counters,
            pods,
        })
    }
}

/// Locally administered unicast MAC derived from the pod address.
pub fn pod_mac(ipv4: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ipv4.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology, ModelError> {
        Topology::from_toml(text)
    }

    const BASE: &str = "name = \"t1\"\npod_cidr = \"10.9.0.0/24\"\n";

    #[test]
    fn default_topology_has_three_pods_with_distinct_addresses() {
        let t = Topology::default_topology();
        assert_eq!(t.name, "demo");
        assert_eq!(t.mode, Mode::Tc);
        assert_eq!(t.host_address, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(t.host_address_label, "lo:demo");
        let addrs: Vec<_> = t.pods.iter().map(|p| p.ipv4.to_string()).collect();
        assert_eq!(addrs, ["10.200.0.2", "10.200.0.3", "10.200.0.4"]);
        assert_eq!(t.pods[0].host_veth, "demo-web");
        assert_eq!(t.pods[0].netns, "demo-web");
        assert_eq!(t.pods[0].mac, [0x0a, 0x58, 10, 200, 0, 2]);
        assert_eq!(t.pods[0].gateway_mac, [0xee; 6]);
    }

    #[test]
    fn fixed_addresses_are_kept_and_automatic_ones_skip_them() {
        let t = parse(&format!(
            "{BASE}[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\nipv4 = \"10.9.0.2\"\n"
        ))
        .unwrap();
        assert_eq!(t.pod("b").unwrap().ipv4, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(t.pod("a").unwrap().ipv4, Ipv4Addr::new(10, 9, 0, 3));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = parse(&format!("{BASE}[[pods]]\nname = \"a\"\nipv5 = \"x\"\n")).unwrap_err();
        assert_eq!(err.field, "line 5, column 1");
        assert!(err.message.contains("unknown field `ipv5`"), "{err}");
        assert!(
            err.message.contains("ipv4"),
            "lists the valid fields: {err}"
        );
    }

    #[test]
    fn unknown_mode_lists_the_valid_ones() {
        let err =
            parse("name = \"t1\"\nmode = \"warp\"\npod_cidr = \"10.9.0.0/24\"\n").unwrap_err();
        assert_eq!(err.field, "line 2, column 8");
        assert!(err.message.contains("`tc`"), "{err}");
    }

    #[test]
    fn overlapping_addresses_name_both_pods() {
        let err = parse(&format!(
            "{BASE}[[pods]]\nname = \"a\"\nipv4 = \"10.9.0.5\"\n[[pods]]\nname = \"b\"\nipv4 = \"10.9.0.5\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "pods[1].ipv4");
        assert!(
            err.message.contains("already used by pods[0] (\"a\")"),
            "{err}"
        );
    }

    #[test]
    fn pod_address_may_not_be_the_host_address() {
        let err = parse(&format!(
            "{BASE}[[pods]]\nname = \"a\"\nipv4 = \"10.9.0.1\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "pods[0].ipv4");
        assert!(err.message.contains("host_address"), "{err}");
    }

    #[test]
    fn addresses_outside_the_cidr_are_refused() {
        for bad in ["10.9.1.5", "10.9.0.0", "10.9.0.255"] {
            let err =
                parse(&format!("{BASE}[[pods]]\nname = \"a\"\nipv4 = \"{bad}\"\n")).unwrap_err();
            assert_eq!(err.field, "pods[0].ipv4", "{bad}");
        }
    }

    #[test]
    fn too_long_interface_name_says_how_much_room_there_is() {
        let err = parse(&format!("{BASE}[[pods]]\nname = \"averyverylongpod\"\n")).unwrap_err();
        assert_eq!(err.field, "pods[0].name");
        assert!(err.message.contains("\"t1-averyverylongpod\""), "{err}");
        assert!(err.message.contains("at most 12 characters"), "{err}");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["Demo", "de-mo", "", "1abc", "abcdefghijk"] {
            let err =
                parse(&format!("name = \"{bad}\"\npod_cidr = \"10.9.0.0/24\"\n")).unwrap_err();
            assert_eq!(err.field, "name", "{bad:?}");
        }
        for bad in ["A", "-a", "a-", "a_b"] {
            let err = parse(&format!("{BASE}[[pods]]\nname = \"{bad}\"\n")).unwrap_err();
            assert_eq!(err.field, "pods[0].name", "{bad:?}");
        }
    }

    #[test]
    fn duplicate_pod_names_are_refused() {
        let err = parse(&format!(
            "{BASE}[[pods]]\nname = \"a\"\n[[pods]]\nname = \"a\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "pods[1].name");
    }

    #[test]
    fn cidr_with_host_bits_or_too_small_is_refused() {
        let err = parse("name = \"t1\"\npod_cidr = \"10.9.0.7/24\"\n").unwrap_err();
        assert_eq!(err.field, "pod_cidr");
        assert!(err.message.contains("10.9.0.0/24"), "{err}");
        let err = parse("name = \"t1\"\npod_cidr = \"10.9.0.0/31\"\n").unwrap_err();
        assert_eq!(err.field, "pod_cidr");
    }

    #[test]
    fn running_out_of_addresses_is_reported() {
        let err = parse("name = \"t1\"\npod_cidr = \"10.9.0.0/30\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n")
            .unwrap_err();
        assert_eq!(err.field, "pods[1].ipv4");
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(
            format_mac(&pod_mac(Ipv4Addr::new(10, 200, 0, 2))),
            "0a:58:0a:c8:00:02"
        );
    }
}
