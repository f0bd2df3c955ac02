//! Topology descriptions: the TOML file format, the built-in default, and
//! validation into a [`Topology`] whose every name and address is decided.
//! Pure: no syscalls, so everything here is unit-tested.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use veth_common::GATEWAY_MAC;

pub mod cluster;
pub mod file_pods;
pub mod live;
pub mod node;
pub mod registry;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest topology name: it prefixes every interface, so keep it short.
pub const TOPOLOGY_NAME_MAX: usize = 10;
/// Largest veth MTU that native XDP accepts with 4 KiB pages: a page minus
/// XDP headroom (256), `skb_shared_info` (320) and the Ethernet header.
pub const XDP_MAX_MTU: u32 = 4096 - 256 - 320 - 14;
/// Suffix of the default bridge name (`<topology>-br`).
pub const BRIDGE_SUFFIX: &str = "br";
/// The pods' default gateway, as in Calico: link-local, never on the wire as
/// a source; pods resolve it to the host-side veth's MAC.
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Largest topology description accepted (files and recorded state): far
/// more than thousands of pods need, small enough that a wrong path (say
/// `/dev/zero`) fails at once instead of filling memory.
pub const MAX_TOPOLOGY_BYTES: usize = 1 << 20;
/// Most pods a topology can have: one counter slot each, the last slot is
/// the dataplane's own (frames from veths without a pod).
pub const MAX_PODS: usize = veth_common::UNKNOWN_VETH_SLOT as usize;

/// The topology `vethctl up` brings up when given no file.
pub const DEFAULT_TOPOLOGY: &str = r#"# Built-in default topology: three pods wired by the eBPF redirect path.
name = "demo"
mode = "tc"
pod_cidr = "10.200.0.0/24"
pod_cidr6 = "fd00:10:200::/64"

[[pods]]
name = "web"

[[pods]]
name = "api"

[[pods]]
name = "db"
"#;

/// How pods are wired. Every mode keeps each pod's `eth0`, addresses and
/// host reachability; modes differ in the path pod-to-pod traffic takes.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The two pods of the topology also get a veth pair between them
    /// (`eth1`), and talk over it: the best any veth path can do.
    Pair,
    /// flannel/CNI-bridge style: host-side veths enslaved to a bridge that
    /// is the pods' gateway; pods share a subnet and talk at layer 2.
    Bridge,
    /// Calico style: pod /32 (/128), gateway 169.254.1.1 (and the veth's
    /// link-local address) answered by the host side, a host route per pod,
    /// pod-to-pod routed by the host stack.
    Routed,
    /// Routed addressing, but TCX programs on the host-side veths redirect
    /// pod-to-pod frames with `bpf_redirect_peer`, bypassing the host stack.
    #[default]
    Tc,
    /// Routed addressing, with XDP programs on the host-side veths
    /// redirecting pod-to-pod frames through a DEVMAP.
    Xdp,
}

/// How the TC programs (mode tc's redirect, every mode's counting) are
/// attached to a host-side veth.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// A TCX link per hook, pinned under the topology's `links/<veth>/`:
    /// listed by `bpftool net`, replaced atomically, and each attach or
    /// detach waits for an RCU grace period under RTNL (~10 ms here). A
    /// topology file's pods use it, and records of endpoints made before
    /// `Clsact` existed say nothing and mean it.
    #[default]
    Tcx,
    /// A direct-action `cls_bpf` filter under the veth's `clsact` qdisc
    /// (the legacy attach Calico and older Cilium use): attached without
    /// a grace period, so it keeps pod start fast; the filter lives as
    /// long as the veth. The runtime's endpoints use it, except where a
    /// chained `bandwidth` plugin needs the `ingress` qdisc, which
    /// `clsact` excludes.
    Clsact,
}

impl TcAttach {
    pub fn name(self) -> &'static str {
        match self {
            TcAttach::Tcx => "tcx",
            TcAttach::Clsact => "clsact",
        }
    }
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Pair, Mode::Bridge, Mode::Routed, Mode::Tc, Mode::Xdp];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Pair => "pair",
            Mode::Bridge => "bridge",
            Mode::Routed => "routed",
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Mode, ModelError> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                invalid(
                    "mode",
                    format!("unknown mode {s:?}; use one of {}", names.join(", ")),
                )
            })
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
    /// IPv6 prefix of the pods; dual stack when set.
    pub pod_cidr6: Option<Ipv6Net>,
    /// Node address pods reach the host on; default: first address of
    /// `pod_cidr`.
    pub host_address: Option<Ipv4Addr>,
    /// IPv6 node address; default: `::1` of `pod_cidr6`.
    pub host_address6: Option<Ipv6Addr>,
    /// MTU of every pod's veth pair unless the pod sets its own.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Per-pair counters in the programs; `false` compiles them out (see
    /// docs/benchmarks.md for what counting costs).
    #[serde(default = "yes")]
    pub counters: bool,
    /// Receive packet steering on the host-side veths: each flow's frames
    /// queue on one CPU, so a TCP flow is never reordered between CPUs'
    /// backlogs (no spurious retransmissions), at the price of a
    /// cross-CPU hand-off for some flows. See BENCHMARKS.md.
    #[serde(default)]
    pub rps: bool,
    /// How pods reach the world beyond the node.
    #[serde(default)]
    pub uplink: UplinkFile,
    /// Name of the bridge in mode bridge (flannel calls it `cni0`); default
    /// `<name>-br`, so several topologies can be bridged side by side.
    pub bridge: Option<String>,
    #[serde(default)]
    pub pods: Vec<PodFile>,
    /// This network is one node's part of a cluster (derived from a
    /// cluster file by `up --node`, see [`cluster`]).
    pub node: Option<node::NodeFile>,
}

fn yes() -> bool {
    true
}

/// The MTU of pods when nothing says otherwise.
pub const DEFAULT_MTU: u32 = 1500;

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkFile {
    /// Source-NAT pod traffic that leaves the node (masquerade).
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Only masquerade traffic leaving through this interface; default:
    /// any interface that is not one of the topology's.
    pub interface: Option<String>,
}

impl Default for UplinkFile {
    fn default() -> Self {
        UplinkFile {
            masquerade: true,
            interface: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodFile {
    pub name: String,
    /// Fixed address; assigned from `pod_cidr` when absent.
    pub ipv4: Option<Ipv4Addr>,
    /// Fixed IPv6 address; assigned from `pod_cidr6` when absent.
    pub ipv6: Option<Ipv6Addr>,
    /// MTU of this pod's veth pair; default: the topology's `mtu`.
    pub mtu: Option<u32>,
}

/// A validated topology: every name and address decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub name: String,
    pub mode: Mode,
    pub pod_cidr: Ipv4Net,
    pub pod_cidr6: Option<Ipv6Net>,
    pub host_address: Ipv4Addr,
    pub host_address6: Option<Ipv6Addr>,
    /// Label of `host_address` on the host's loopback (`lo:<name>`), by
    /// which `down` finds it again.
    pub host_address_label: String,
    pub counters: bool,
    pub rps: bool,
    pub uplink: Uplink,
    /// The bridge of mode bridge (made only in that mode).
    pub bridge: String,
    pub pods: Vec<Pod>,
    /// The node's part of a cluster, when this network is one.
    pub node: Option<node::NodePart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub masquerade: bool,
    pub interface: Option<String>,
}

/// One endpoint: a network namespace with `ifname`, whose peer is
/// `host_veth`. A topology file's pods and a CNI ADD's pods are both pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name in its topology file, or `<container id>/<ifname>`
    /// shortened for a runtime's pod (see [`crate::endpoint`]).
    pub name: String,
    /// A namespace name under /run/netns (ours: made and deleted by
    /// vethctl), or an absolute path (the runtime's: never made or deleted
    /// by vethctl), see [`Pod::netns_is_ours`].
    pub netns: String,
    /// The pod's interface inside `netns` (`eth0` for a topology file's pods).
    pub ifname: String,
    pub host_veth: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// MAC of the pod's `eth0`, derived from its address (0a:58 + IPv4, as
    /// the CNI bridge plugin does) so it is known before the pod exists.
    pub mac: [u8; 6],
    /// MAC of the host-side veth: the pod's gateway.
    pub gateway_mac: [u8; 6],
    /// The Kubernetes pod behind a runtime's endpoint, when the runtime said.
    pub k8s: Option<K8sPod>,
    /// Frames from the pod never take a redirect (a runtime's pod with
    /// hostPorts: see `veth_common::PodIdentity::host_path`).
    pub host_path: bool,
}

/// Name of a pod's interface inside the namespaces vethctl makes.
pub const POD_IFNAME: &str = "eth0";

/// A Kubernetes pod as the runtime names it in `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct K8sPod {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`): names a
/// runtime gave are shown in tables, metrics and traces, where an escape
/// sequence or a newline would rewrite what a terminal or a scraper sees.
/// ADD refuses such names; records of older versions may hold them.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = match c.is_control() {
                true => c.escape_default().collect(),
                false => vec![c],
            };
            escaped
        })
        .collect()
}

impl fmt::Display for K8sPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = printable(&self.name);
        if self.namespace.is_empty() {
            write!(f, "{name}")
        } else {
            write!(f, "{}/{name}", printable(&self.namespace))
        }
    }
}

impl Pod {
    /// True if vethctl made the pod's namespace (and so may delete it); a
    /// runtime's namespace, given by path, is never ours.
    pub fn netns_is_ours(&self) -> bool {
        !self.netns.starts_with('/')
    }

    /// How people know this pod: `namespace/name` for a Kubernetes pod,
    /// else its name.
    pub fn display_name(&self) -> String {
        match &self.k8s {
            Some(k8s) => k8s.to_string(),
            None => self.name.clone(),
        }
    }
}

/// The IPv6 link-local address of an interface with this MAC (EUI-64).
pub fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from(veth_common::eui64_link_local(mac))
}

impl Topology {
    /// The field and message if this topology's addresses overlap `other`'s
    /// (two topologies up at once must not fight over host routes).
    pub fn address_clash(&self, other: &Topology) -> Option<ModelError> {
        let v4 = self.pod_cidr.contains(&other.pod_cidr.network())
            || other.pod_cidr.contains(&self.pod_cidr.network());
        if v4 {
            return Some(invalid(
                "pod_cidr",
                format!(
                    "{} overlaps {} of topology {:?}, which is up; pick another pod_cidr or bring {:?} down",
                    self.pod_cidr, other.pod_cidr, other.name, other.name
                ),
            ));
        }
        if let (Some(mine), Some(theirs)) = (self.pod_cidr6, other.pod_cidr6) {
            if mine.contains(&theirs.network()) || theirs.contains(&mine.network()) {
                return Some(invalid(
                    "pod_cidr6",
                    format!(
                        "{mine} overlaps {theirs} of topology {:?}, which is up; pick another pod_cidr6 or bring {:?} down",
                        other.name, other.name
                    ),
                ));
            }
        }
        None
    }

    /// MAC of the bridge: fixed, so it never follows whichever port the
    /// kernel would pick, and derived from the node address.
    pub fn bridge_mac(&self) -> [u8; 6] {
        pod_mac(self.host_address)
    }
}

/// The IPv6 gateway of routed pods: the host-side veth's own link-local
/// address (its MAC is [`GATEWAY_MAC`]), as in Calico.
pub fn gateway_ipv6() -> Ipv6Addr {
    eui64_link_local(GATEWAY_MAC)
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

/// The addresses each pod was given, by pod name: what [`Topology::from_toml_keeping`]
/// keeps so that a pod never moves when another comes or goes.
pub type Assigned = BTreeMap<String, (Ipv4Addr, Option<Ipv6Addr>)>;

impl Topology {
    /// Parses and validates TOML text; pods without fixed addresses get the
    /// lowest free ones.
    pub fn from_toml(text: &str) -> Result<Topology, ModelError> {
        Topology::from_toml_keeping(text, &Assigned::new())
    }

    /// Like [`Topology::from_toml`], but a pod without a fixed address keeps
    /// the one it had in `previous` while that is still usable and not
    /// fixed for another pod (the allocator is keyed by pod name: removing
    /// pod `a` never renumbers `b`).
    pub fn from_toml_keeping(text: &str, previous: &Assigned) -> Result<Topology, ModelError> {
        if text.len() > MAX_TOPOLOGY_BYTES {
            return Err(too_large(text.len() as u64));
        }
        let file: TopologyFile =
            toml::from_str(text).map_err(|e| toml_error(text, &e, "topology file"))?;
        file.validate_keeping(previous)
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

    /// The pod people call `name`: its own name, or for a runtime's pod
    /// its `namespace/name` as `status` shows it.
    pub fn pod_named(&self, name: &str) -> Option<&Pod> {
        self.pod(name)
            .or_else(|| self.pods.iter().find(|p| p.display_name() == name))
    }

    /// Every pod's addresses, to keep them next time.
    pub fn assigned(&self) -> Assigned {
        self.pods
            .iter()
            .map(|p| (p.name.clone(), (p.ipv4, p.ipv6)))
            .collect()
    }
}

/// The description `text` with its mode set to `mode`, everything else
/// (comments included) as written; validated.
pub fn with_mode(text: &str, mode: Mode) -> Result<(Topology, String), ModelError> {
    Topology::from_toml(text)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| invalid("topology file", format!("{e}")))?;
    doc["mode"] = toml_edit::value(mode.name());
    let text = doc.to_string();
    Ok((Topology::from_toml(&text)?, text))
}

/// The error for a description larger than [`MAX_TOPOLOGY_BYTES`] (`size`
/// is what was read, at least one byte more than allowed).
pub fn too_large(size: u64) -> ModelError {
    invalid(
        "topology file",
        format!(
            "larger than {MAX_TOPOLOGY_BYTES} bytes (stopped after reading {size}); a \
             topology description is a small TOML file: check the path"
        ),
    )
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

/// A file that TOML or its fields refused, named by line and column
/// (`what` when the parser gives no place).
fn toml_error(text: &str, e: &toml::de::Error, what: &str) -> ModelError {
    let field = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}")
        }
        None => what.to_string(),
    };
    invalid(field, e.message().trim_end().to_string())
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

/// Checks that `name` is a plain interface name the kernel accepts: 1 to
/// 15 bytes of ASCII letters, digits, '-', '_' and '.', and neither "." nor
/// "..". The kernel itself refuses '/', ':', whitespace and those two; the
/// rest (quotes, ';', control characters, non-ASCII) would be legal in the
/// kernel yet is never a real interface name, and only makes names that
/// other tools mis-print or mis-parse.
pub fn validate_ifname(field: &str, name: &str) -> Result<(), ModelError> {
    let fix = format!(
        "use 1 to {IFNAME_MAX} ASCII letters, digits, '-', '_' or '.' (not \".\" or \"..\"), \
         as `ip link` shows the interface"
    );
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(invalid(
            field,
            format!(
                "{name:?} is {} bytes long, and Linux interface names are 1 to {IFNAME_MAX}; {fix}",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(
            field,
            format!("{name:?} is not an interface name Linux accepts; {fix}"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            field,
            format!("{name:?} is not a plain interface name (it contains {bad:?}); {fix}"),
        ));
    }
    Ok(())
}

/// IPv4 ranges pods cannot be given: the kernel or every host treats them
/// specially, so pod addresses there would be unreachable or would take
/// over the host's own traffic.
const RESERVED_V4: [(&str, &str); 5] = [
    (
        "0.0.0.0/8",
        "\"this network\" (0.0.0.0 is the unspecified address)",
    ),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local (169.254.1.1 is the pods' own gateway)",
    ),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (255.255.255.255 is broadcast)"),
];

/// The IPv6 counterparts of [`RESERVED_V4`].
const RESERVED_V6: [(&str, &str); 5] = [
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped addresses"),
    (
        "fe80::/10",
        "link-local (fe80::ecee:eeff:feee:eeee is the pods' own gateway)",
    ),
    ("ff00::/8", "multicast"),
];

/// The reserved range `net` overlaps (contains or lies in), if any.
fn reserved_overlap<N: Copy + PartialEq + std::str::FromStr>(
    reserved: &[(&'static str, &'static str)],
    overlaps: impl Fn(N, N) -> bool,
    net: N,
) -> Option<(&'static str, &'static str)>
where
    N::Err: fmt::Debug,
{
    reserved.iter().copied().find(|(range, _)| {
        let range: N = range.parse().expect("the reserved ranges are valid");
        overlaps(net, range)
    })
}

/// Whether two IPv4 prefixes share an address.
pub fn overlaps4(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether two IPv6 prefixes share an address.
pub fn overlaps6(a: Ipv6Net, b: Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether no two of `nets` share an address, in n log n: sorted by
/// network address (the shorter of two equal ones first), a prefix that
/// meets a later one meets the one right after it. Lets the pairwise
/// loops that name a clash run only when there is one (a cluster of 1,000
/// nodes made them a million comparisons per part).
pub fn disjoint4(nets: impl IntoIterator<Item = Ipv4Net>) -> bool {
    let mut nets: Vec<Ipv4Net> = nets.into_iter().map(|n| n.trunc()).collect();
    nets.sort_unstable_by_key(|n| (n.network(), n.prefix_len()));
    nets.windows(2).all(|w| !overlaps4(w[0], w[1]))
}

/// [`disjoint4`] for IPv6.
pub fn disjoint6(nets: impl IntoIterator<Item = Ipv6Net>) -> bool {
    let mut nets: Vec<Ipv6Net> = nets.into_iter().map(|n| n.trunc()).collect();
    nets.sort_unstable_by_key(|n| (n.network(), n.prefix_len()));
    nets.windows(2).all(|w| !overlaps6(w[0], w[1]))
}

fn refuse_reserved4(cidr: Ipv4Net) -> Result<(), ModelError> {
    match reserved_overlap(&RESERVED_V4, overlaps4, cidr) {
        Some((range, what)) => Err(invalid(
            "pod_cidr",
            format!(
                "{cidr} overlaps {range}, {what}, which pods cannot use; pick a private range \
                 (RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), e.g. \"10.201.0.0/24\""
            ),
        )),
        None => Ok(()),
    }
}

fn refuse_reserved6(cidr: Ipv6Net) -> Result<(), ModelError> {
    match reserved_overlap(&RESERVED_V6, overlaps6, cidr) {
        Some((range, what)) => Err(invalid(
            "pod_cidr6",
            format!(
                "{cidr} overlaps {range}, {what}, which pods cannot use; pick a unique local \
                 range (fd00::/8), e.g. \"fd00:10:201::/64\""
            ),
        )),
        None => Ok(()),
    }
}

impl TopologyFile {
    pub fn validate(self) -> Result<Topology, ModelError> {
        self.validate_keeping(&Assigned::new())
    }

    /// Validates, keeping the addresses of `previous` (see
    /// [`Topology::from_toml_keeping`]).
    pub fn validate_keeping(self, previous: &Assigned) -> Result<Topology, ModelError> {
        validate_topology_name(&self.name)?;
        let prefix = object_prefix(&self.name);
        let cidr = validate_pod_cidr(self.pod_cidr)?;
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
        validate_pod_names(&self.pods, &prefix)?;
        let ipv4s = assign_addresses(
            "ipv4",
            &format!("pod_cidr {cidr}"),
            host_address,
            self.pods
                .iter()
                .map(|p| (p.ipv4, p.name.as_str()))
                .collect(),
            |name| previous.get(name).map(|a| a.0),
            usable,
            cidr.hosts(),
        )?;
        let (host_address6, ipv6s) = self.ipv6_addresses(previous)?;
        self.validate_mode_and_mtus()?;
        if let Some(ifname) = &self.uplink.interface {
            validate_uplink_interface(ifname, &prefix)?;
        }
        let bridge = validate_bridge(self.bridge, &prefix, &self.pods)?;
        let node = match self.node {
            Some(node) => Some(validate_node(
                node,
                &prefix,
                cidr,
                self.pod_cidr6,
                &self.pods,
            )?),
            None => None,
        };
        let pods = pods_in_kernel(self.pods, &prefix, self.mtu, ipv4s, ipv6s);
        Ok(Topology {
            name: self.name,
            mode: self.mode,
            pod_cidr: cidr,
            pod_cidr6: self.pod_cidr6.map(|c| c.trunc()),
            host_address,
            host_address6,
            host_address_label,
            counters: self.counters,
            rps: self.rps,
            uplink: Uplink {
                masquerade: self.uplink.masquerade,
                interface: self.uplink.interface,
            },
            bridge,
            pods,
            node,
        })
    }

    /// The node's and each pod's IPv6 address, all `None` without
    /// `pod_cidr6` (where asking for one is an error).
    fn ipv6_addresses(
        &self,
        previous: &Assigned,
    ) -> Result<(Option<Ipv6Addr>, Vec<Option<Ipv6Addr>>), ModelError> {
        let Some(cidr6) = self.pod_cidr6 else {
            if let Some(i) = self.pods.iter().position(|p| p.ipv6.is_some()) {
                return Err(invalid(
                    format!("pods[{i}].ipv6"),
                    "an IPv6 address needs pod_cidr6; add pod_cidr6 (e.g. \"fd00:10:200::/64\") or remove ipv6",
                ));
            }
            if self.host_address6.is_some() {
                return Err(invalid(
                    "host_address6",
                    "host_address6 needs pod_cidr6; add pod_cidr6 or remove host_address6",
                ));
            }
            return Ok((None, vec![None; self.pods.len()]));
        };
        let cidr6_net = validate_pod_cidr6(cidr6)?;
        let usable6 = |addr: Ipv6Addr| cidr6_net.contains(&addr) && addr != cidr6_net.network();
        let host6 = match self.host_address6 {
            Some(addr) if !usable6(addr) => {
                return Err(invalid(
                    "host_address6",
                    format!("{addr} is not a usable address of pod_cidr6 {cidr6_net}; pick one inside it or omit host_address6"),
                ))
            }
            Some(addr) => addr,
            None => nth_address6(cidr6_net, 1),
        };
        let ipv6s = assign_addresses(
            "ipv6",
            &format!("pod_cidr6 {cidr6_net}"),
            host6,
            self.pods
                .iter()
                .map(|p| (p.ipv6, p.name.as_str()))
                .collect(),
            |name| previous.get(name).and_then(|a| a.1),
            usable6,
            (1u128..)
                .map(|n| nth_address6(cidr6_net, n))
                .take_while(|a| cidr6_net.contains(a)),
        )?;
        Ok((Some(host6), ipv6s.into_iter().map(Some).collect()))
    }

    /// MTUs in the kernel's range, two pods for mode pair, and MTUs XDP
    /// on veth can carry for mode xdp.
    fn validate_mode_and_mtus(&self) -> Result<(), ModelError> {
        validate_mtu("mtu", self.mtu)?;
        for (i, pod) in self.pods.iter().enumerate() {
            if let Some(mtu) = pod.mtu {
                validate_mtu(&format!("pods[{i}].mtu"), mtu)?;
            }
        }
        if self.mode == Mode::Pair && self.pods.len() != 2 {
            return Err(invalid(
                "mode",
                format!(
                    "mode \"pair\" joins exactly two pods with one veth pair, and this topology has {}; \
                     use two pods or another mode",
                    self.pods.len()
                ),
            ));
        }
        if self.mode != Mode::Xdp {
            return Ok(());
        }
        let too_big = std::iter::once(("mtu".to_string(), self.mtu)).chain(
            self.pods
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((format!("pods[{i}].mtu"), p.mtu?))),
        );
        for (field, mtu) in too_big {
            if mtu > XDP_MAX_MTU {
                return Err(invalid(
                    field,
                    format!(
                        "MTU {mtu} is too large for XDP on veth (at most {XDP_MAX_MTU} with 4 KiB \
                         pages); lower it or use mode tc"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `pod_cidr` as a network address, outside reserved ranges, with room for
/// the node and pods.
fn validate_pod_cidr(pod_cidr: Ipv4Net) -> Result<Ipv4Net, ModelError> {
    let cidr = pod_cidr.trunc();
    if cidr != pod_cidr {
        return Err(invalid(
            "pod_cidr",
            format!("{pod_cidr} has host bits set; write the network address: {cidr}"),
        ));
    }
    refuse_reserved4(cidr)?;
    if cidr.prefix_len() > 30 {
        return Err(invalid(
            "pod_cidr",
            format!("{cidr} is too small for a host address and pods; use a /30 or larger"),
        ));
    }
    Ok(cidr)
}

/// `pod_cidr6` as a network address, outside reserved ranges, /120 or
/// larger.
fn validate_pod_cidr6(cidr6: Ipv6Net) -> Result<Ipv6Net, ModelError> {
    let cidr6_net = cidr6.trunc();
    if cidr6_net != cidr6 {
        return Err(invalid(
            "pod_cidr6",
            format!("{cidr6} has host bits set; write the network address: {cidr6_net}"),
        ));
    }
    refuse_reserved6(cidr6_net)?;
    if cidr6_net.prefix_len() > 120 {
        return Err(invalid(
            "pod_cidr6",
            format!("{cidr6_net} is too small; use a /120 or larger (a /64 is usual)"),
        ));
    }
    Ok(cidr6_net)
}

/// At most [`MAX_PODS`] pods, each with a valid, unique name whose host
/// interface name fits Linux's limit.
fn validate_pod_names(pods: &[PodFile], prefix: &str) -> Result<(), ModelError> {
    if pods.len() > MAX_PODS {
        return Err(invalid(
            "pods",
            format!(
                "{} pods are more than the {MAX_PODS} a topology can have (one counter slot \
                 each); split them over several topologies",
                pods.len()
            ),
        ));
    }
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
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
    Ok(())
}

/// The uplink is a valid interface name and none of the topology's own.
fn validate_uplink_interface(ifname: &str, prefix: &str) -> Result<(), ModelError> {
    validate_ifname("uplink.interface", ifname).map_err(|e| ModelError {
        message: format!(
            "{}; name the host interface traffic leaves the node by (e.g. \"eth0\")",
            e.message
        ),
        ..e
    })?;
    if ifname.starts_with(prefix) {
        return Err(invalid(
            "uplink.interface",
            format!("{ifname:?} is one of this topology's own interfaces; name the host interface traffic leaves the node by (e.g. \"eth0\")"),
        ));
    }
    Ok(())
}

/// The bridge's name (given or derived), valid and no pod's host interface.
fn validate_bridge(
    bridge: Option<String>,
    prefix: &str,
    pods: &[PodFile],
) -> Result<String, ModelError> {
    let bridge = bridge.unwrap_or_else(|| format!("{prefix}{BRIDGE_SUFFIX}"));
    validate_ifname("bridge", &bridge)?;
    if let Some(i) = pods
        .iter()
        .position(|p| format!("{prefix}{}", p.name) == bridge)
    {
        return Err(invalid(
            format!("pods[{i}].name"),
            format!("pod {:?} would share its host interface name with the bridge {bridge:?}; rename the pod or set `bridge`", pods[i].name),
        ));
    }
    Ok(bridge)
}

/// The node's part, whose VXLAN device is no pod's host interface.
fn validate_node(
    node: node::NodeFile,
    prefix: &str,
    cidr: Ipv4Net,
    cidr6: Option<Ipv6Net>,
    pods: &[PodFile],
) -> Result<node::NodePart, ModelError> {
    let part = node.validate(prefix, cidr, cidr6.map(|c| c.trunc()))?;
    if let Some(i) = pods
        .iter()
        .position(|p| format!("{prefix}{}", p.name) == part.vxlan_device)
    {
        return Err(invalid(
            format!("pods[{i}].name"),
            format!(
                "pod {:?} would share its host interface name with the VXLAN device {:?}; rename the pod",
                pods[i].name, part.vxlan_device
            ),
        ));
    }
    Ok(part)
}

/// The validated pods with their kernel names and assigned addresses.
fn pods_in_kernel(
    pods: Vec<PodFile>,
    prefix: &str,
    mtu: u32,
    ipv4s: Vec<Ipv4Addr>,
    ipv6s: Vec<Option<Ipv6Addr>>,
) -> Vec<Pod> {
    pods.into_iter()
        .zip(ipv4s)
        .zip(ipv6s)
        .map(|((pod, ipv4), ipv6)| {
            let name_in_kernel = format!("{prefix}{}", pod.name);
            Pod {
                netns: name_in_kernel.clone(),
                ifname: POD_IFNAME.to_string(),
                host_veth: name_in_kernel,
                k8s: None,
                host_path: false,
                mac: pod_mac(ipv4),
                gateway_mac: GATEWAY_MAC,
                ipv4,
                ipv6,
                mtu: pod.mtu.unwrap_or(mtu),
                name: pod.name,
            }
        })
        .collect()
}

/// The `n`th address of an IPv6 prefix.
fn nth_address6(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

/// Linux refuses a veth MTU outside 68..=65535.
fn validate_mtu(field: &str, mtu: u32) -> Result<(), ModelError> {
    if !(1280..=65535).contains(&mtu) {
        return Err(invalid(
            field,
            format!("MTU {mtu} is out of range; use 1280 (the IPv6 minimum) to 65535"),
        ));
    }
    Ok(())
}

/// Hands out addresses: fixed ones are checked and claimed first (in file
/// order), then pods without one keep their `previous` address where it is
/// still usable and free, then the others get the lowest free candidates.
fn assign_addresses<A: Ord + Copy + fmt::Display>(
    family: &str,
    cidr: &str,
    host: A,
    fixed: Vec<(Option<A>, &str)>,
    previous: impl Fn(&str) -> Option<A>,
    usable: impl Fn(A) -> bool,
    candidates: impl Iterator<Item = A>,
) -> Result<Vec<A>, ModelError> {
    let host_field = if family == "ipv4" {
        "host_address"
    } else {
        "host_address6"
    };
    let mut owner: BTreeMap<A, String> = BTreeMap::from([(host, host_field.to_string())]);
    for (i, (addr, name)) in fixed.iter().enumerate() {
        let Some(addr) = *addr else { continue };
        let field = format!("pods[{i}].{family}");
        if !usable(addr) {
            return Err(invalid(
                field,
                format!(
                    "{addr} is not a usable address of {cidr}; pick one inside it (not its \
                     network or broadcast address) or omit {family} to assign one"
                ),
            ));
        }
        if let Some(other) = owner.insert(addr, format!("pods[{i}] ({name:?})")) {
            return Err(invalid(
                field,
                format!(
                    "{addr} is already used by {other}; pick another address or omit {family} \
                     to assign one automatically"
                ),
            ));
        }
    }
    let kept: Vec<Option<A>> = fixed
        .iter()
        .map(|(addr, name)| match addr {
            Some(_) => None,
            None => previous(name)
                .filter(|a| usable(*a) && !owner.contains_key(a))
                .inspect(|a| {
                    owner.insert(*a, name.to_string());
                }),
        })
        .collect();
    let mut free = candidates.filter(|a| usable(*a) && !owner.contains_key(a));
    fixed
        .into_iter()
        .zip(kept)
        .enumerate()
        .map(|(i, ((addr, _), kept))| match addr.or(kept) {
            Some(addr) => Ok(addr),
            None => free.next().ok_or_else(|| {
                invalid(
                    format!("pods[{i}].{family}"),
                    format!("{cidr} has no free address left; use a larger prefix"),
                )
            }),
        })
        .collect()
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
    #[test]
    fn runtime_names_are_shown_with_control_characters_escaped() {
        let pod = super::K8sPod {
            namespace: "ns\n".into(),
            name: "web\u{1b}[2J\u{7f}-ü".into(),
            uid: String::new(),
        };
        assert_eq!(pod.to_string(), "ns\\n/web\\u{1b}[2J\\u{7f}-ü");
        assert_eq!(super::printable("web-0"), "web-0");
    }

    use super::*;

    fn parse(text: &str) -> Result<Topology, ModelError> {
        Topology::from_toml(text)
    }

    const BASE: &str = "name = \"t1\"\npod_cidr = \"10.9.0.0/24\"\n";

    #[test]
    fn recorded_pods_keep_their_addresses() {
        let dual = "name = \"t1\"\npod_cidr = \"10.9.0.0/24\"\npod_cidr6 = \"fd00:9::/64\"\n";
        let pods = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("[[pods]]\nname = \"{n}\"\n"))
                .collect::<String>()
        };
        let addrs = |t: &Topology| -> Vec<String> {
            t.pods
                .iter()
                .map(|p| format!("{}={},{}", p.name, p.ipv4, p.ipv6.unwrap()))
                .collect()
        };
        let first = parse(&format!("{dual}{}", pods(&["a", "b", "c"]))).unwrap();
        assert_eq!(
            addrs(&first),
            [
                "a=10.9.0.2,fd00:9::2",
                "b=10.9.0.3,fd00:9::3",
                "c=10.9.0.4,fd00:9::4"
            ]
        );
        // Without the record, removing a renumbers b and c (the bug).
        let forgetful = parse(&format!("{dual}{}", pods(&["b", "c"]))).unwrap();
        assert_eq!(
            addrs(&forgetful),
            ["b=10.9.0.2,fd00:9::2", "c=10.9.0.3,fd00:9::3"]
        );
        // With it, b and c stay; a new pod gets the lowest free address.
        let kept = Topology::from_toml_keeping(
            &format!("{dual}{}", pods(&["b", "c", "d"])),
            &first.assigned(),
        )
        .unwrap();
        assert_eq!(
            addrs(&kept),
            [
                "b=10.9.0.3,fd00:9::3",
                "c=10.9.0.4,fd00:9::4",
                "d=10.9.0.2,fd00:9::2"
            ]
        );
        // A fixed address wins over a kept one; the pod that had it moves.
        let fixed =
            format!("{dual}[[pods]]\nname = \"b\"\n[[pods]]\nname = \"e\"\nipv4 = \"10.9.0.3\"\n");
        let t = Topology::from_toml_keeping(&fixed, &first.assigned()).unwrap();
        assert_eq!(t.pods[0].ipv4, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(t.pods[1].ipv4, Ipv4Addr::new(10, 9, 0, 3));
        // A recorded address outside a changed range is not kept.
        let moved = "name = \"t1\"\npod_cidr = \"10.8.0.0/24\"\n[[pods]]\nname = \"b\"\n";
        let t = Topology::from_toml_keeping(moved, &first.assigned()).unwrap();
        assert_eq!(t.pods[0].ipv4, Ipv4Addr::new(10, 8, 0, 2));
    }

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
    fn mode_can_be_changed_keeping_the_rest() {
        let text =
            "# my lab\nname = \"t1\"\npod_cidr = \"10.9.0.0/24\" # pods\n[[pods]]\nname = \"a\"\n";
        let (t, new) = with_mode(text, Mode::Bridge).unwrap();
        assert_eq!(t.mode, Mode::Bridge);
        assert!(new.contains("# my lab") && new.contains("# pods"), "{new}");
        let (t, _) = with_mode(&new, Mode::Routed).unwrap();
        assert_eq!(t.mode, Mode::Routed);
        assert_eq!("xdp".parse::<Mode>().unwrap(), Mode::Xdp);
        assert!("warp"
            .parse::<Mode>()
            .unwrap_err()
            .message
            .contains("pair, bridge, routed, tc, xdp"));
    }

    #[test]
    fn dual_stack_addresses_are_assigned_in_both_families() {
        let t = parse(&format!(
            "{BASE}pod_cidr6 = \"fd00:9::/64\"\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\nipv6 = \"fd00:9::2\"\nmtu = 9000\n"
        ))
        .unwrap();
        assert_eq!(t.host_address6, Some("fd00:9::1".parse().unwrap()));
        assert_eq!(t.pod("b").unwrap().ipv6, Some("fd00:9::2".parse().unwrap()));
        assert_eq!(t.pod("a").unwrap().ipv6, Some("fd00:9::3".parse().unwrap()));
        assert_eq!(t.pod("a").unwrap().mtu, 1500);
        assert_eq!(t.pod("b").unwrap().mtu, 9000);
    }

    #[test]
    fn ipv6_needs_a_prefix_and_fits_it() {
        let err = parse(&format!(
            "{BASE}[[pods]]\nname = \"a\"\nipv6 = \"fd00::5\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "pods[0].ipv6");
        assert!(err.message.contains("pod_cidr6"), "{err}");
        let err = parse(&format!(
            "{BASE}pod_cidr6 = \"fd00:9::/64\"\n[[pods]]\nname = \"a\"\nipv6 = \"fd00:8::5\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "pods[0].ipv6");
    }

    #[test]
    fn pair_mode_needs_two_pods_and_mtu_is_bounded() {
        let err = parse(
            "name = \"t1\"\nmode = \"pair\"\npod_cidr = \"10.9.0.0/24\"\n[[pods]]\nname = \"a\"\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "mode");
        let err = parse(&format!("{BASE}[[pods]]\nname = \"a\"\nmtu = 100\n")).unwrap_err();
        assert_eq!(err.field, "pods[0].mtu");
    }

    #[test]
    fn link_local_gateway_is_the_eui64_of_the_gateway_mac() {
        assert_eq!(
            gateway_ipv6(),
            "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn bridge_name_defaults_to_the_prefix_and_may_not_clash_with_a_pod() {
        let t = parse(BASE).unwrap();
        assert_eq!(t.bridge, "t1-br");
        let err = parse(&format!("{BASE}[[pods]]\nname = \"br\"\n")).unwrap_err();
        assert_eq!(err.field, "pods[0].name");
    }

    #[test]
    fn overlapping_topologies_clash() {
        let a = parse("name = \"ta\"\npod_cidr = \"10.9.0.0/24\"\n").unwrap();
        let b = parse("name = \"tb\"\npod_cidr = \"10.9.0.128/25\"\n").unwrap();
        let c = parse("name = \"tc\"\npod_cidr = \"10.10.0.0/24\"\n").unwrap();
        let err = a.address_clash(&b).unwrap();
        assert_eq!(err.field, "pod_cidr");
        assert!(err.message.contains("topology \"tb\""), "{err}");
        assert!(b.address_clash(&a).is_some());
        assert!(a.address_clash(&c).is_none());
        let a6 = parse("name = \"ta\"\npod_cidr = \"10.9.0.0/24\"\npod_cidr6 = \"fd00:9::/64\"\n")
            .unwrap();
        let c6 = parse("name = \"tc\"\npod_cidr = \"10.10.0.0/24\"\npod_cidr6 = \"fd00:9::/48\"\n")
            .unwrap();
        assert_eq!(a6.address_clash(&c6).unwrap().field, "pod_cidr6");
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(
            format_mac(&pod_mac(Ipv4Addr::new(10, 200, 0, 2))),
            "0a:58:0a:c8:00:02"
        );
    }

    #[test]
    fn reserved_pod_ranges_are_refused_with_the_reason_and_a_fix() {
        for (cidr, why) in [
            ("0.0.0.0/0", "unspecified"),
            ("0.0.0.0/8", "this network"),
            ("127.0.0.0/24", "loopback"),
            ("224.0.0.0/24", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("169.254.1.0/24", "pods' own gateway"),
            ("169.254.0.0/16", "link-local"),
            ("240.0.0.0/24", "reserved"),
            ("255.255.255.252/30", "broadcast"),
            ("0.0.0.0/1", "unspecified"),
            ("96.0.0.0/3", "loopback"),
        ] {
            let err = parse(&format!("name = \"t1\"\npod_cidr = \"{cidr}\"\n")).unwrap_err();
            assert_eq!(err.field, "pod_cidr", "{cidr}: {err}");
            assert!(err.message.contains(why), "{cidr}: {err}");
            assert!(
                err.message.contains("pick a private range"),
                "{cidr}: {err}"
            );
        }
        for (cidr6, why) in [
            ("::/64", "unspecified"),
            ("::/0", "unspecified"),
            ("::1/128", "loopback"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("fe80::/64", "link-local"),
            ("fe80::/10", "pods' own gateway"),
            ("ff00::/8", "multicast"),
            ("ff02::/120", "multicast"),
            ("8000::/1", "link-local"),
        ] {
            let err = parse(&format!("{BASE}pod_cidr6 = \"{cidr6}\"\n")).unwrap_err();
            assert_eq!(err.field, "pod_cidr6", "{cidr6}: {err}");
            assert!(err.message.contains(why), "{cidr6}: {err}");
            assert!(err.message.contains("unique local"), "{cidr6}: {err}");
        }
        // Ordinary ranges stay allowed, RFC 2544's benchmarking range too.
        for cidr in [
            "10.0.0.0/8",
            "192.168.7.0/24",
            "198.18.4.0/24",
            "100.64.0.0/24",
        ] {
            parse(&format!("name = \"t1\"\npod_cidr = \"{cidr}\"\n")).unwrap();
        }
        for cidr6 in ["fd00::/64", "2001:db8::/64", "fd00:10:200::/120"] {
            parse(&format!("{BASE}pod_cidr6 = \"{cidr6}\"\n")).unwrap();
        }
    }

    #[test]
    fn interface_names_the_kernel_would_refuse_are_named() {
        for bad in [
            "..",
            ".",
            "",
            "a\nb",
            "a b",
            "a\tb",
            "a/b",
            "a:b",
            "sixteen-chars-xx",
            "eth0; drop",
            "eth0\"",
            "eth*",
            "ethé",
            "a\u{0}b",
        ] {
            let quoted = toml::Value::String(bad.to_string()).to_string();
            let err = parse(&format!("{BASE}bridge = {quoted}\n")).unwrap_err();
            assert_eq!(err.field, "bridge", "{bad:?}: {err}");
            assert!(
                err.message.contains("ASCII letters, digits"),
                "{bad:?}: {err}"
            );
            let err = parse(&format!("{BASE}[uplink]\ninterface = {quoted}\n")).unwrap_err();
            assert_eq!(err.field, "uplink.interface", "{bad:?}: {err}");
            assert!(err.message.contains("e.g. \"eth0\""), "{bad:?}: {err}");
        }
        let err = parse(&format!("{BASE}[uplink]\ninterface = \"eth0; drop\"\n")).unwrap_err();
        assert!(err.message.contains("';'"), "names the character: {err}");
        let err = parse(&format!("{BASE}[uplink]\ninterface = \"t1-x\"\n")).unwrap_err();
        assert_eq!(err.field, "uplink.interface");
        for good in [
            "eth0",
            "enp0s31f6",
            "eth0.100",
            "flannel.1",
            "lxc_health",
            "br-0123456789a",
            "fifteen-chars-x",
        ] {
            let t = parse(&format!(
                "{BASE}bridge = \"{good}\"\n[uplink]\ninterface = \"{good}\"\n"
            ))
            .unwrap();
            assert_eq!(t.bridge, good);
        }
    }

    #[test]
    fn descriptions_are_bounded_in_size_and_pods() {
        let mut text = BASE.to_string();
        while text.len() <= MAX_TOPOLOGY_BYTES {
            text += "# padding padding padding padding padding padding padding\n";
        }
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "topology file");
        assert!(err.message.contains("larger than 1048576 bytes"), "{err}");

        let mut text = "name = \"t1\"\npod_cidr = \"10.0.0.0/8\"\n".to_string();
        for i in 0..=MAX_PODS {
            text += &format!("[[pods]]\nname = \"p{i}\"\n");
        }
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "pods");
        assert!(err.message.contains("16383"), "{err}");
    }

    #[test]
    fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
        for open in ["[", "{a=", "[{a="] {
            let text = format!("x = {}", open.repeat(MAX_TOPOLOGY_BYTES / open.len() - 8));
            let err = parse(&text).unwrap_err();
            assert!(!err.field.is_empty() && !err.message.is_empty());
        }
    }

    /// Whether `field` is a place a [`ModelError`] may name.
    fn known_field(field: &str) -> bool {
        const TOP: [&str; 11] = [
            "name",
            "mode",
            "pod_cidr",
            "pod_cidr6",
            "host_address",
            "host_address6",
            "mtu",
            "bridge",
            "uplink.interface",
            "pods",
            "topology file",
        ];
        if TOP.contains(&field) {
            return true;
        }
        if let Some(rest) = field.strip_prefix("line ") {
            let mut parts = rest.split(", column ");
            return parts.next().is_some_and(|l| l.parse::<usize>().is_ok())
                && parts.next().is_some_and(|c| c.parse::<usize>().is_ok());
        }
        field
            .strip_prefix("pods[")
            .and_then(|r| r.split_once("]."))
            .is_some_and(|(i, f)| {
                i.parse::<usize>().is_ok() && ["name", "ipv4", "ipv6", "mtu"].contains(&f)
            })
    }

    /// What every accepted topology guarantees, whatever the file said.
    fn check_accepted(t: &Topology) {
        validate_topology_name(&t.name).unwrap();
        assert_eq!(t.pod_cidr, t.pod_cidr.trunc());
        assert!(refuse_reserved4(t.pod_cidr).is_ok(), "{}", t.pod_cidr);
        assert!(t.pod_cidr.contains(&t.host_address));
        if let Some(c6) = t.pod_cidr6 {
            assert!(refuse_reserved6(c6).is_ok(), "{c6}");
            assert!(c6.contains(&t.host_address6.unwrap()));
        }
        validate_ifname("bridge", &t.bridge).unwrap();
        if let Some(i) = &t.uplink.interface {
            validate_ifname("uplink.interface", i).unwrap();
        }
        assert!(t.pods.len() <= MAX_PODS);
        let mut v4 = std::collections::BTreeSet::from([t.host_address]);
        let mut v6 = std::collections::BTreeSet::new();
        v6.extend(t.host_address6);
        let mut names = std::collections::BTreeSet::new();
        for p in &t.pods {
            assert!(names.insert(&p.name), "pod names are unique");
            validate_ifname("pod", &p.host_veth).unwrap();
            assert_eq!(p.netns, p.host_veth);
            assert!(p.host_veth.starts_with(&t.object_prefix()));
            assert_ne!(p.host_veth, t.bridge);
            assert!(
                t.pod_cidr.contains(&p.ipv4)
                    && p.ipv4 != t.pod_cidr.network()
                    && p.ipv4 != t.pod_cidr.broadcast()
            );
            assert!(v4.insert(p.ipv4), "IPv4 addresses are unique");
            assert_eq!(p.ipv6.is_some(), t.pod_cidr6.is_some());
            if let (Some(a), Some(c6)) = (p.ipv6, t.pod_cidr6) {
                assert!(c6.contains(&a) && a != c6.network());
                assert!(v6.insert(a), "IPv6 addresses are unique");
            }
            assert!((1280..=65535).contains(&p.mtu));
            if t.mode == Mode::Xdp {
                assert!(p.mtu <= XDP_MAX_MTU);
            }
        }
        if t.mode == Mode::Pair {
            assert_eq!(t.pods.len(), 2);
        }
    }

    /// What every refusal guarantees: it names a known place and says
    /// something about it.
    fn check_refused(err: &ModelError) {
        assert!(known_field(&err.field), "unknown field in {err:?}");
        assert!(err.message.trim().len() >= 10, "a bare message: {err:?}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{}: ", err.field)), "{shown}");
    }

    fn check(text: &str) {
        match Topology::from_toml(text) {
            Ok(t) => {
                check_accepted(&t);
                // What `mode set` does to an accepted description.
                for mode in Mode::ALL {
                    match with_mode(text, mode) {
                        Ok((t, _)) => check_accepted(&t),
                        Err(e) => check_refused(&e),
                    }
                }
            }
            Err(e) => check_refused(&e),
        }
    }

    mod fuzz {
        //! The parser and validation under proptest: random text, random
        //! edits of valid files, and files built from random fields. No
        //! input may panic; every acceptance keeps the invariants of
        //! [`check_accepted`], every refusal names a field (`check_refused`).
        //! `PROPTEST_CASES=100000 cargo test -p veth-userspace --lib fuzz`
        //! runs more cases; a failure prints the smallest input found. The
        //! seed corpus of the cargo-fuzz target (`fuzz/`, for a nightly
        //! toolchain) is replayed here too.

        use proptest::prelude::*;

        use super::*;

        /// Cases per property; raised with PROPTEST_CASES.
        fn config(default_cases: u32) -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(default_cases);
            ProptestConfig {
                cases,
                // Much cheaper than the default ChaCha in a debug build.
                rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Strings matching `regex`, compiled once (a `&str` strategy
        /// parses its regex again for every value).
        fn re(regex: &str) -> proptest::string::RegexGeneratorStrategy<String> {
            proptest::string::string_regex(regex).expect("a valid regex")
        }

        fn quoted(s: &str) -> String {
            toml::Value::String(s.to_string()).to_string()
        }

        /// A name: usually plausible, sometimes anything.
        fn name_like() -> impl Strategy<Value = String> {
            prop_oneof![
                12 => re("[a-z][a-z0-9]{0,10}"),
                2 => re("[a-z0-9-]{0,14}"),
                1 => re("[ -~]{0,20}"),
                1 => any::<String>(),
                1 => prop::sample::select(vec![
                    "", ".", "..", "eth0; drop", "a\nb", "lo", "eth0", "cni0", "x/y", "a:b",
                ])
                .prop_map(str::to_string),
            ]
        }

        fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
            prop_oneof![
                1 => any::<u32>().prop_map(Ipv4Addr::from),
                4 => (0u8..8).prop_map(|d| Ipv4Addr::new(10, 9, 0, d)),
                4 => (0u8..=255).prop_map(|d| Ipv4Addr::new(10, 9, 0, d)),
            ]
        }

        fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
            prop_oneof![
                1 => any::<u128>().prop_map(Ipv6Addr::from),
                8 => (0u128..8).prop_map(|n| Ipv6Addr::from((0xfd00_0009u128 << 96) + n)),
                1 => prop::sample::select(vec![Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST]),
            ]
        }

        fn cidr4() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop::sample::select(vec![24u8, 28, 29, 30])
                    .prop_map(|len| format!("10.9.0.0/{len}")),
                1 => (0u8..4).prop_map(|x| format!("10.9.{x}.0/24")),
                2 => (ipv4(), 0u8..=33).prop_map(|(a, len)| format!("{a}/{len}")),
                1 => prop::sample::select(vec![
                    "0.0.0.0/0", "127.0.0.0/24", "224.0.0.0/24", "169.254.1.0/24",
                    "10.9.0.0", "10.9.0.0/", "x",
                ])
                .prop_map(str::to_string),
            ]
        }

        fn cidr6() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => (prop::sample::select(vec![64u8, 112, 120, 126]))
                    .prop_map(|len| format!("fd00:9::/{len}")),
                2 => (ipv6(), 0u8..=129).prop_map(|(a, len)| format!("{a}/{len}")),
                1 => prop::sample::select(vec!["::/64", "::1/128", "fe80::/64", "ff00::/8", "fd00::"])
                    .prop_map(str::to_string),
            ]
        }

        fn mtu() -> impl Strategy<Value = i64> {
            prop_oneof![
                8 => prop::sample::select(vec![1500i64, 1280, 3506, 9000]),
                2 => prop::sample::select(vec![0i64, 67, 1279, 1280, 3506, 3507, 9000, 65535, 65536, -1]),
                1 => any::<i64>(),
            ]
        }

        #[derive(Debug, Clone)]
        struct PodSpec {
            name: String,
            ipv4: Option<Ipv4Addr>,
            ipv6: Option<Ipv6Addr>,
            mtu: Option<i64>,
        }

        fn pod() -> impl Strategy<Value = PodSpec> {
            (
                prop_oneof![12 => re("[a-z][a-z0-9]{0,5}"), 1 => name_like()],
                prop::option::weighted(0.2, ipv4()),
                prop::option::weighted(0.1, ipv6()),
                prop::option::weighted(0.2, mtu()),
            )
                .prop_map(|(name, ipv4, ipv6, mtu)| PodSpec {
                    name,
                    ipv4,
                    ipv6,
                    mtu,
                })
        }

        /// A topology file assembled from random (often valid) fields.
        fn topology_text() -> impl Strategy<Value = String> {
            (
                (
                    name_like(),
                    prop::option::weighted(
                        0.7,
                        prop_oneof![
                            12 => prop::sample::select(vec!["pair", "bridge", "routed", "tc", "xdp"])
                                .prop_map(str::to_string),
                            1 => name_like(),
                        ],
                    ),
                    cidr4(),
                    prop::option::weighted(0.5, cidr6()),
                    prop::option::weighted(0.2, ipv4()),
                    prop::option::weighted(0.2, ipv6()),
                ),
                (
                    prop::option::weighted(0.3, mtu()),
                    prop::option::weighted(0.3, name_like()),
                    prop::option::weighted(0.3, (any::<bool>(), prop::option::of(name_like()))),
                    prop::option::weighted(0.2, (any::<bool>(), any::<bool>())),
                    prop::collection::vec(pod(), 0..5),
                ),
            )
                .prop_map(
                    |((name, mode, cidr, cidr6, host, host6), (mtu, bridge, uplink, flags, pods))| {
                        let mut t = format!("name = {}\npod_cidr = {}\n", quoted(&name), quoted(&cidr));
                        if let Some(mode) = mode {
                            t += &format!("mode = {}\n", quoted(&mode));
                        }
                        if let Some(c6) = cidr6 {
                            t += &format!("pod_cidr6 = {}\n", quoted(&c6));
                        }
                        if let Some(h) = host {
                            t += &format!("host_address = \"{h}\"\n");
                        }
                        if let Some(h) = host6 {
                            t += &format!("host_address6 = \"{h}\"\n");
                        }
                        if let Some(m) = mtu {
                            t += &format!("mtu = {m}\n");
                        }
                        if let Some(b) = bridge {
                            t += &format!("bridge = {}\n", quoted(&b));
                        }
                        if let Some((counters, rps)) = flags {
                            t += &format!("counters = {counters}\nrps = {rps}\n");
                        }
                        // Tables last: keys after a table header belong to it.
                        if let Some((masquerade, interface)) = uplink {
                            t += &format!("[uplink]\nmasquerade = {masquerade}\n");
                            if let Some(i) = interface {
                                t += &format!("interface = {}\n", quoted(&i));
                            }
                        }
                        for p in pods {
                            t += &format!("[[pods]]\nname = {}\n", quoted(&p.name));
                            if let Some(a) = p.ipv4 {
                                t += &format!("ipv4 = \"{a}\"\n");
                            }
                            if let Some(a) = p.ipv6 {
                                t += &format!("ipv6 = \"{a}\"\n");
                            }
                            if let Some(m) = p.mtu {
                                t += &format!("mtu = {m}\n");
                            }
                        }
                        t
                    },
                )
        }

        /// A valid description with random bytes replaced, inserted or cut.
        fn mutated() -> impl Strategy<Value = String> {
            let base = format!(
                "{DEFAULT_TOPOLOGY}pod_cidr6 = \"fd00:10:200::/64\"\nbridge = \"cni0\"\n\
                 [uplink]\ninterface = \"eth0\"\n[[pods]]\nname = \"x\"\nipv4 = \"10.200.0.9\"\nmtu = 9000\n"
            );
            prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
                .prop_map(move |edits| {
                    let mut bytes = base.clone().into_bytes();
                    for (at, kind, byte) in edits {
                        let i = at.index(bytes.len().max(1));
                        match kind {
                            0 if !bytes.is_empty() => bytes[i] = byte,
                            1 => bytes.insert(i.min(bytes.len()), byte),
                            _ if !bytes.is_empty() => {
                                bytes.remove(i);
                            }
                            _ => {}
                        }
                    }
                    String::from_utf8_lossy(&bytes).into_owned()
                })
        }

        proptest! {
            #![proptest_config(config(20_000))]

            #[test]
            fn built_files_are_accepted_whole_or_refused_with_a_field(text in topology_text()) {
                check(&text);
            }

            #[test]
            fn edited_files_never_panic(text in mutated()) {
                check(&text);
            }
        }

        proptest! {
            #![proptest_config(config(5_000))]

            #[test]
            fn any_text_never_panics(text in prop_oneof![
                any::<String>(),
                re("[ -~\n\\[\\]{}=\".]{0,200}"),
            ]) {
                check(&text);
            }
        }

        /// The cargo-fuzz seed corpus (`fuzz/corpus/topology`), replayed
        /// on stable: each file is checked, and so are random edits of it.
        fn corpus() -> Vec<(String, String)> {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/topology");
            let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{dir}: {e}"))
                .map(|e| {
                    let path = e.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (
                        name,
                        String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
                    )
                })
                .collect();
            files.sort();
            files
        }

        #[test]
        fn the_seed_corpus_is_accepted_or_refused_as_labelled() {
            let corpus = corpus();
            assert!(corpus.len() >= 10, "{corpus:?}");
            for (name, text) in &corpus {
                check(text);
                let accepted = Topology::from_toml(text).is_ok();
                let good =
                    ["default.toml", "every-field.toml", "pair.toml"].contains(&name.as_str());
                assert_eq!(accepted, good, "{name}");
            }
        }

        proptest! {
            #![proptest_config(config(5_000))]

            #[test]
            fn edited_corpus_files_never_panic(
                file in prop::sample::select(corpus()),
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            ) {
                let mut bytes = file.1.into_bytes();
                for (at, byte) in edits {
                    let i = at.index(bytes.len() + 1);
                    if byte % 2 == 0 && i < bytes.len() {
                        bytes[i] = byte;
                    } else {
                        bytes.insert(i, byte);
                    }
                }
                check(&String::from_utf8_lossy(&bytes));
            }
        }

        #[test]
        fn the_generator_reaches_acceptance_and_refusal() {
            use proptest::strategy::ValueTree;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..2_000 {
                let text = topology_text().new_tree(&mut runner).unwrap().current();
                match Topology::from_toml(&text) {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            assert!(
                ok > 100 && refused > 100,
                "accepted {ok}, refused {refused}"
            );
        }
    }
}
