//! The network configuration on stdin.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0",
//!   "cniVersions": ["1.0.0", "1.1.0"],
//!   "name": "pods",
//!   "type": "veth-cni",
//!   "mode": "tc",
//!   "mtu": 1500,
//!   "ipam": {"type": "veth-builtin", "subnet": "10.244.1.0/24", "subnet6": "fd00:10:244:1::/64"},
//!   "capabilities": {"portMappings": true, "bandwidth": true}
//! }
//! ```
//!
//! Our keys:
//! - `mode`: `"tc"` (default), `"xdp"`, `"routed"` or `"bridge"`. `"pair"` is
//!   refused: it joins two named pods of a topology file with a second veth
//!   pair, and a CNI ADD attaches one pod at a time.
//! - `logFile`, `logLevel`: the plugin's log (see [`crate::logging`]).
//! - `mtu`: of the pod's veth pair, 1280 (the IPv6 minimum) to 65535 — the
//!   bounds `vethctl` applies to topology files.
//! - `ipam`, one of:
//!   - `{"type": "veth-builtin", "subnet": "<IPv4 CIDR>", "subnet6": "<IPv6 CIDR>"}`
//!     (either subnet or both): our own allocator, addresses kept per
//!     endpoint. Exactly these keys: a typo (`"subnet4"`) or a host-local
//!     option (`"ranges"`) is an error rather than silently ignored.
//!   - any other `type` (`"host-local"`, `"static"`, …): a delegated IPAM
//!     plugin, run from `CNI_PATH` with this whole configuration on stdin
//!     (spec section 4), its object kept verbatim in [`DelegatedIpam::config`].
//!     The type must be a plain file name (no `/`, no `..`) and not our own
//!     `type`, which would call itself.
//!   - absent: [`NetConf::ipam`] is `None` and the plugin decides.
//!
//! The spec's keys: `cniVersion`/`cniVersions` (see [`crate::version`]),
//! `name` (required: the spec's characters, it names the node network and our
//! records), `type`, `dns` (well-known), `runtimeConfig` (`portMappings`,
//! `bandwidth` and `dns` typed — with Go's capitalised field names from
//! containerd or the conventions' lower case, matched case-insensitively as
//! Go's `encoding/json` does — the others kept in [`RuntimeConfig::other`]),
//! `prevResult` (any of our versions), and for GC
//! `cni.dev/valid-attachments` (or `cni.dev/attachments`, the name libcni
//! also injects, its issue #1101).
//!
//! Every other key is kept in [`NetConf::other`]: configurations carry other
//! plugins' keys, `capabilities`, `args`, `ipMasq`, and the runtime's own.
//!
//! Errors are code 6 when stdin is not a JSON object, code 1 for versions
//! and code 7 for a key with a wrong type or value, naming the key. DEL and
//! GC are best-effort: past `cniVersion` and `name`, a DEL or GC with a bad
//! key goes ahead without that key and notes it in [`NetConf::warnings`]
//! (except GC's attachment list, which is strict: misreading it would remove
//! pods that are still in use).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

use crate::env::{is_cni_name, Command};
use crate::error::CniError;
use crate::logging::{parse_log_file, parse_log_level, LogConfig, LOG_FILE_KEY, LOG_LEVEL_KEY};
use crate::result::{CniResult, Dns};
use crate::version::{negotiate, CniVersion};

/// The dataplane mode of the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// TCX programs redirect pod-to-pod frames with `bpf_redirect_peer`.
    #[default]
    Tc,
    /// XDP programs redirect through a DEVMAP.
    Xdp,
    /// Calico-style routing through the host stack.
    Routed,
    /// flannel-style Linux bridge.
    Bridge,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Tc, Mode::Xdp, Mode::Routed, Mode::Bridge];

    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
            Mode::Routed => "routed",
            Mode::Bridge => "bridge",
        }
    }
}

/// The `type` of our built-in IPAM.
pub const BUILTIN_IPAM_TYPE: &str = "veth-builtin";

/// The smallest MTU accepted (the IPv6 minimum).
pub const MTU_MIN: u32 = 1280;
/// The largest MTU accepted.
pub const MTU_MAX: u32 = 65535;

/// `ipam`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipam {
    /// `{"type": "veth-builtin", ...}`.
    Builtin(BuiltinIpam),
    /// Any other `type`.
    Delegated(DelegatedIpam),
}

/// Our allocator's pools; at least one is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltinIpam {
    pub subnet: Option<Ipv4Net>,
    pub subnet6: Option<Ipv6Net>,
}

/// A delegated IPAM plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegatedIpam {
    /// The binary to find in `CNI_PATH` (`host-local`).
    pub plugin: String,
    /// The `ipam` object as given.
    pub config: Map<String, Value>,
}

/// `runtimeConfig.portMappings[].protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One `runtimeConfig.portMappings` entry (a Kubernetes hostPort).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` when absent or empty.
    pub protocol: Protocol,
    /// `None` when absent or empty (all host addresses).
    pub host_ip: Option<IpAddr>,
}

/// `runtimeConfig.bandwidth`: rates in bits per second, bursts in bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_rate: Option<u64>,
    pub ingress_burst: Option<u64>,
    pub egress_rate: Option<u64>,
    pub egress_burst: Option<u64>,
}

/// `runtimeConfig.dns` (the runtime's view: `servers`, `searches`, `options`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeDns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// `runtimeConfig`: what the runtime passes for the capabilities the
/// configuration declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<RuntimeDns>,
    /// Every other capability (`ips`, `mac`, `aliases`, `cgroupPath`, …).
    pub other: Map<String, Value>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GcAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// The parsed network configuration of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// The version this request is answered in (see [`crate::version`]).
    pub cni_version: CniVersion,
    /// `cniVersion` as given (absent or empty: `None`).
    pub requested_version: Option<String>,
    /// `cniVersions` as given.
    pub cni_versions: Vec<String>,
    pub name: String,
    /// `type` (empty only after a best-effort DEL or GC went ahead without it).
    pub plugin_type: String,
    pub mode: Mode,
    pub mtu: Option<u32>,
    pub ipam: Option<Ipam>,
    /// The well-known `dns` key.
    pub dns: Option<Dns>,
    pub runtime_config: RuntimeConfig,
    /// Always `Some` for CHECK.
    pub prev_result: Option<CniResult>,
    /// `Some` exactly for GC.
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// Every key not listed above, as given.
    pub other: Map<String, Value>,
    /// What a best-effort DEL or GC went ahead without.
    pub warnings: Vec<String>,
    /// `logFile` and `logLevel` (see [`crate::logging`]).
    pub log: LogConfig,
}

const KNOWN_KEYS: [&str; 14] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "mode",
    "mtu",
    "ipam",
    "dns",
    "runtimeConfig",
    "prevResult",
    VALID_ATTACHMENTS,
    LEGACY_ATTACHMENTS,
    LOG_FILE_KEY,
    LOG_LEVEL_KEY,
];

const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
const LEGACY_ATTACHMENTS: &str = "cni.dev/attachments";

/// A short, bounded rendering of a JSON value for messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let mut end = 77;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> CniError {
    CniError::invalid_config(field, reason)
}

/// The value of `name` in `obj`, by its exact name or else any spelling that
/// differs only in case (Go's `encoding/json` rule).
fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A string, or `None` for absent/null.
fn opt_str<'a>(v: Option<&'a Value>, field: &str) -> Result<Option<&'a str>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(
            field,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

/// A list of strings; absent/null is empty.
fn str_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(
                    format!("{field}[{i}]"),
                    format!("expected a string, found {}", type_name(other)),
                )),
            })
            .collect(),
        Some(other) => Err(bad(
            field,
            format!("expected a list of strings, found {}", type_name(other)),
        )),
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, CniError> {
    v.as_object()
        .ok_or_else(|| bad(field, format!("expected an object, found {}", type_name(v))))
}

fn parse_mode(v: &Value) -> Result<Mode, CniError> {
    const CHOICES: &str = "use \"tc\" (the default), \"xdp\", \"routed\" or \"bridge\"";
    let Some(s) = v.as_str() else {
        return Err(bad(
            "mode",
            format!("{} is not a mode name; {CHOICES}", show(v)),
        ));
    };
    if let Some(mode) = Mode::ALL.into_iter().find(|m| m.as_str() == s) {
        return Ok(mode);
    }
    if s == "pair" {
        return Err(bad(
            "mode",
            format!(
                "\"pair\" cannot be used by a CNI plugin: pair mode joins two named pods of a \
                 topology file with a second veth pair, and a CNI ADD attaches one pod at a \
                 time; {CHOICES}"
            ),
        ));
    }
    Err(bad("mode", format!("{s:?} is not a mode; {CHOICES}")))
}

fn parse_mtu(v: &Value) -> Result<u32, CniError> {
    match v.as_u64() {
        Some(m) if (u64::from(MTU_MIN)..=u64::from(MTU_MAX)).contains(&m) => Ok(m as u32),
        _ => Err(bad(
            "mtu",
            format!(
                "{} is out of range; use {MTU_MIN} (the IPv6 minimum) to {MTU_MAX}",
                show(v)
            ),
        )),
    }
}

fn parse_subnet<N>(
    obj: &Map<String, Value>,
    key: &str,
    family: &str,
    other_key: &str,
    max_prefix: u8,
    trunc: impl Fn(&N) -> N,
    prefix: impl Fn(&N) -> u8,
) -> Result<Option<N>, CniError>
where
    N: std::str::FromStr + PartialEq + std::fmt::Display,
{
    let field = format!("ipam.{key}");
    let Some(s) = opt_str(obj.get(key), &field)? else {
        return Ok(None);
    };
    let net: N = match s.parse() {
        Ok(net) => net,
        Err(_) => {
            let reason = if s.parse::<IpNet>().is_ok() {
                format!("{s:?} is not {family}; put it in {other_key:?}")
            } else {
                format!(
                    "{s:?} is not an {family} CIDR (like {})",
                    if family == "IPv4" {
                        "\"10.244.1.0/24\""
                    } else {
                        "\"fd00:10:244:1::/64\""
                    }
                )
            };
            return Err(bad(field, reason));
        }
    };
    let canonical = trunc(&net);
    if canonical != net {
        return Err(bad(
            field,
            format!("{s:?} has host bits set; did you mean \"{canonical}\"?"),
        ));
    }
    if prefix(&net) > max_prefix {
        return Err(bad(
            field,
            format!("{s:?} is too small to allocate from; use a /{max_prefix} or larger"),
        ));
    }
    Ok(Some(net))
}

fn parse_ipam(v: &Value, plugin_type: &str) -> Result<Ipam, CniError> {
    let obj = object(v, "ipam")?;
    let Some(ty) = opt_str(obj.get("type"), "ipam.type")? else {
        return Err(bad(
            "ipam.type",
            format!(
                "missing; name a delegated IPAM plugin (\"host-local\") or \
                 {BUILTIN_IPAM_TYPE:?} for the built-in allocator"
            ),
        ));
    };
    if ty == BUILTIN_IPAM_TYPE {
        if let Some(key) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "type" | "subnet" | "subnet6"))
        {
            return Err(bad(
                format!("ipam.{key}"),
                "not a key of the built-in IPAM, which takes \"subnet\" and \"subnet6\"; \
                     remove it, or use a delegated plugin (\"type\": \"host-local\") for its options"
                .to_string(),
            ));
        }
        let subnet = parse_subnet::<Ipv4Net>(
            obj,
            "subnet",
            "IPv4",
            "subnet6",
            30,
            Ipv4Net::trunc,
            Ipv4Net::prefix_len,
        )?;
        let subnet6 = parse_subnet::<Ipv6Net>(
            obj,
            "subnet6",
            "IPv6",
            "subnet",
            126,
            Ipv6Net::trunc,
            Ipv6Net::prefix_len,
        )?;
        if subnet.is_none() && subnet6.is_none() {
            return Err(bad(
                "ipam",
                "the built-in IPAM needs \"subnet\" (an IPv4 CIDR), \"subnet6\" (an IPv6 CIDR) or both",
            ));
        }
        return Ok(Ipam::Builtin(BuiltinIpam { subnet, subnet6 }));
    }
    if !is_cni_name(ty) {
        return Err(bad(
            "ipam.type",
            format!(
                "{ty:?} is not a plugin name (a file name in CNI_PATH: a letter or digit, then \
                 letters, digits, '_', '.' or '-')"
            ),
        ));
    }
    if ty == plugin_type {
        return Err(bad(
            "ipam.type",
            format!(
                "{ty:?} is this plugin itself; use {BUILTIN_IPAM_TYPE:?} for the built-in \
                 allocator or an IPAM plugin such as \"host-local\""
            ),
        ));
    }
    Ok(Ipam::Delegated(DelegatedIpam {
        plugin: ty.to_string(),
        config: obj.clone(),
    }))
}

fn port(v: Option<&Value>, field: String) -> Result<u16, CniError> {
    match v.and_then(Value::as_u64) {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(bad(
            field,
            format!(
                "{} is not a port (1-65535)",
                v.map(show).unwrap_or_else(|| "missing".into())
            ),
        )),
    }
}

fn parse_port_mappings(v: &Value) -> Result<Vec<PortMapping>, CniError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(bad(
                "runtimeConfig.portMappings",
                format!("expected a list, found {}", type_name(other)),
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| format!("runtimeConfig.portMappings[{i}].{k}");
        let obj = object(item, &format!("runtimeConfig.portMappings[{i}]"))?;
        let host_port = port(get_ci(obj, "hostPort"), field("hostPort"))?;
        let container_port = port(get_ci(obj, "containerPort"), field("containerPort"))?;
        let protocol = match opt_str(get_ci(obj, "protocol"), &field("protocol"))? {
            None | Some("") => Protocol::Tcp,
            Some(p) => match p.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => {
                    return Err(bad(
                        field("protocol"),
                        format!("{p:?} is not \"tcp\", \"udp\" or \"sctp\""),
                    ))
                }
            },
        };
        let host_ip = match opt_str(get_ci(obj, "hostIP"), &field("hostIP"))? {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| bad(field("hostIP"), format!("{ip:?} is not an IP address")))?,
            ),
        };
        out.push(PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        });
    }
    Ok(out)
}

fn parse_bandwidth(v: &Value) -> Result<Option<Bandwidth>, CniError> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = object(v, "runtimeConfig.bandwidth")?;
    let num = |key: &str| -> Result<Option<u64>, CniError> {
        match get_ci(obj, key) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n.as_u64().map(Some).ok_or_else(|| {
                bad(
                    format!("runtimeConfig.bandwidth.{key}"),
                    format!("{} is not a non-negative whole number", show(n)),
                )
            }),
        }
    };
    Ok(Some(Bandwidth {
        ingress_rate: num("ingressRate")?,
        ingress_burst: num("ingressBurst")?,
        egress_rate: num("egressRate")?,
        egress_burst: num("egressBurst")?,
    }))
}

fn parse_runtime_dns(v: &Value) -> Result<Option<RuntimeDns>, CniError> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = object(v, "runtimeConfig.dns")?;
    Ok(Some(RuntimeDns {
        servers: str_list(get_ci(obj, "servers"), "runtimeConfig.dns.servers")?,
        searches: str_list(get_ci(obj, "searches"), "runtimeConfig.dns.searches")?,
        options: str_list(get_ci(obj, "options"), "runtimeConfig.dns.options")?,
    }))
}

fn parse_runtime_config(v: &Value) -> Result<RuntimeConfig, CniError> {
    if v.is_null() {
        return Ok(RuntimeConfig::default());
    }
    let obj = object(v, "runtimeConfig")?;
    let mut rc = RuntimeConfig::default();
    for (key, value) in obj {
        match key.to_ascii_lowercase().as_str() {
            "portmappings" => rc.port_mappings = parse_port_mappings(value)?,
            "bandwidth" => rc.bandwidth = parse_bandwidth(value)?,
            "dns" => rc.dns = parse_runtime_dns(value)?,
            _ => {
                rc.other.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(rc)
}

fn parse_valid_attachments(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<Vec<GcAttachment>, CniError> {
    let (key, v) = match (obj.get(VALID_ATTACHMENTS), obj.get(LEGACY_ATTACHMENTS)) {
        (Some(v), _) => (VALID_ATTACHMENTS, v),
        (None, Some(v)) => (LEGACY_ATTACHMENTS, v),
        (None, None) => {
            return Err(bad(
                VALID_ATTACHMENTS,
                format!(
                    "missing; GC without the list of attachments still in use would remove \
                     every pod of network {name:?}, so nothing was removed"
                ),
            ))
        }
    };
    // Go writes an empty list as null: no attachment is valid any more.
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(bad(
                key,
                format!("expected a list, found {}", type_name(other)),
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let entry = format!("{key}[{i}]");
            let obj = object(item, &entry)?;
            let field = |k: &str| -> Result<String, CniError> {
                match opt_str(get_ci(obj, k), &format!("{entry}.{k}"))? {
                    Some(s) if !s.is_empty() => Ok(s.to_string()),
                    _ => Err(bad(format!("{entry}.{k}"), "missing")),
                }
            };
            Ok(GcAttachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// Best-effort bookkeeping: in DEL and GC a failed key is noted and skipped.
struct Leniency {
    command: Command,
    warnings: Vec<String>,
}

impl Leniency {
    fn take<T>(&mut self, r: Result<T, CniError>, fallback: T) -> Result<T, CniError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) if self.command.is_best_effort() => {
                self.warnings
                    .push(format!("{e}; {} goes ahead without it", self.command));
                Ok(fallback)
            }
            Err(e) => Err(e),
        }
    }
}

fn parse_log_config(obj: &Map<String, Value>) -> Result<LogConfig, CniError> {
    let present = |key| obj.get(key).filter(|v: &&Value| !v.is_null());
    Ok(LogConfig {
        file: present(LOG_FILE_KEY).map(parse_log_file).transpose()?,
        level: present(LOG_LEVEL_KEY)
            .map(parse_log_level)
            .transpose()?
            .unwrap_or_default(),
    })
}

/// The value of `key`, parsed, unless absent or `null`.
fn optional<T>(
    obj: &Map<String, Value>,
    key: &str,
    parse: impl FnOnce(&Value) -> Result<T, CniError>,
) -> Result<Option<T>, CniError> {
    obj.get(key).filter(|v| !v.is_null()).map(parse).transpose()
}

/// The JSON object on stdin.
fn decode_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    const WHAT: &str = "the network configuration on stdin";
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::decode(
            WHAT,
            "stdin is empty; the runtime passes the network configuration as JSON",
        ));
    }
    let value: Value =
        serde_json::from_slice(stdin).map_err(|e| CniError::decode(WHAT, e.to_string()))?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(CniError::decode(
            WHAT,
            format!("expected a JSON object, found {}", type_name(&value)),
        )),
    }
}

/// The version asked for (`cniVersion`), the versions listed
/// (`cniVersions`) and the one the answer is in, which must have `command`.
fn parse_versions(
    obj: &Map<String, Value>,
    command: Command,
) -> Result<(Option<String>, Vec<String>, CniVersion), CniError> {
    let requested = opt_str(obj.get("cniVersion"), "cniVersion")?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let cni_versions = str_list(obj.get("cniVersions"), "cniVersions")?;
    let cni_version = negotiate(requested.as_deref(), &cni_versions)?;
    let needs = match command {
        Command::Check if !cni_version.has_check() => Some(CniVersion::V0_4_0),
        Command::Status | Command::Gc if !cni_version.has_status_and_gc() => {
            Some(CniVersion::V1_1_0)
        }
        _ => None,
    };
    if let Some(needs) = needs {
        return Err(CniError::IncompatibleVersion {
            message: format!(
                "{command} needs cniVersion {needs} or later, and this configuration is answered in {cni_version}"
            ),
            details: format!("{command} does not exist before CNI {needs}"),
        });
    }
    Ok((requested, cni_versions, cni_version))
}

/// `name`: required, and a valid network name.
fn parse_name(obj: &Map<String, Value>) -> Result<String, CniError> {
    match opt_str(obj.get("name"), "name")? {
        Some(n) if is_cni_name(n) => Ok(n.to_string()),
        Some(n) => Err(bad(
            "name",
            format!(
                "{n:?} is not a network name (a letter or digit, then letters, digits, \
                 '_', '.' or '-')"
            ),
        )),
        None => Err(bad(
            "name",
            "missing; the runtime injects the network's name",
        )),
    }
}

/// `type`: required, the plugin's binary.
fn parse_type(obj: &Map<String, Value>) -> Result<String, CniError> {
    match opt_str(obj.get("type"), "type")? {
        Some(t) if !t.is_empty() => Ok(t.to_string()),
        _ => Err(bad("type", "missing; it names this plugin's binary")),
    }
}

impl NetConf {
    /// Parse the configuration `command` received on stdin.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
        let mut obj = decode_object(stdin)?;
        let (requested, cni_versions, cni_version) = parse_versions(&obj, command)?;
        let name = parse_name(&obj)?;
        // What DEL and GC can go without, they do (with a warning).
        let mut lenient = Leniency {
            command,
            warnings: Vec::new(),
        };
        let plugin_type = lenient.take(parse_type(&obj), String::new())?;
        let mode = lenient.take(optional(&obj, "mode", parse_mode), None)?;
        let log = lenient.take(parse_log_config(&obj), LogConfig::default())?;
        let mtu = lenient.take(optional(&obj, "mtu", parse_mtu), None)?;
        let ipam = optional(&obj, "ipam", |v| parse_ipam(v, &plugin_type));
        let ipam = lenient.take(ipam, None)?;
        let dns = lenient.take(optional(&obj, "dns", |v| Dns::from_value(v, "dns")), None)?;
        let runtime_config = obj
            .get("runtimeConfig")
            .map(parse_runtime_config)
            .unwrap_or_else(|| Ok(RuntimeConfig::default()));
        let runtime_config = lenient.take(runtime_config, RuntimeConfig::default())?;
        let prev_result = optional(&obj, "prevResult", |v| {
            CniResult::from_value(v, cni_version, "prevResult")
        });
        let prev_result = lenient.take(prev_result, None)?;
        if command == Command::Check && prev_result.is_none() {
            return Err(bad(
                "prevResult",
                "missing; CHECK compares against the ADD's result, which the runtime passes as prevResult",
            ));
        }
        let valid_attachments = match command {
            Command::Gc => Some(parse_valid_attachments(&obj, &name)?),
            _ => None,
        };
        for key in KNOWN_KEYS {
            obj.remove(key);
        }
        Ok(NetConf {
            cni_version,
            requested_version: requested,
            cni_versions,
            name,
            plugin_type,
            mode: mode.unwrap_or_default(),
            mtu,
            ipam,
            dns,
            runtime_config,
            prev_result,
            valid_attachments,
            other: obj,
            warnings: lenient.warnings,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::LogLevel;
    use serde_json::json;

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "pods", "type": "veth-cni"})
    }

    fn with(patch: Value) -> Value {
        let mut v = base();
        for (k, x) in patch.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        v
    }

    fn parse(v: &Value, command: Command) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes(), command)
    }

    fn err(v: &Value, command: Command) -> (u32, String) {
        let e = parse(v, command).expect_err(&v.to_string());
        (e.code(), e.to_string())
    }

    #[test]
    fn minimal_config_defaults() {
        let c = parse(&base(), Command::Add).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.requested_version.as_deref(), Some("1.0.0"));
        assert_eq!(c.name, "pods");
        assert_eq!(c.plugin_type, "veth-cni");
        assert_eq!(c.mode, Mode::Tc);
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam, None);
        assert_eq!(c.dns, None);
        assert_eq!(c.runtime_config, RuntimeConfig::default());
        assert_eq!(c.prev_result, None);
        assert_eq!(c.valid_attachments, None);
        assert!(c.other.is_empty());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn stdin_that_is_not_a_json_object() {
        let table: &[&[u8]] = &[
            b"",
            b"  \n",
            b"{",
            b"not json",
            b"[]",
            b"\"x\"",
            b"null",
            b"1",
            b"{\"name\": }",
            &[0xff, 0xfe],
        ];
        for input in table {
            let e = NetConf::parse(input, Command::Add).unwrap_err();
            assert_eq!(e.code(), 6, "{input:?}");
            assert!(
                e.to_string()
                    .starts_with("cannot decode the network configuration on stdin: "),
                "{e}"
            );
        }
    }

    #[test]
    fn versions_in_configs() {
        let table: Vec<(Value, Result<CniVersion, u32>)> = vec![
            (with(json!({"cniVersion": "0.3.1"})), Ok(CniVersion::V0_3_1)),
            (with(json!({"cniVersion": "0.4.0"})), Ok(CniVersion::V0_4_0)),
            (with(json!({"cniVersion": "1.1.0"})), Ok(CniVersion::V1_1_0)),
            // install-cni's pair of keys, as containerd 1.6 passes them on.
            (
                with(json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"]})),
                Ok(CniVersion::V1_0_0),
            ),
            (
                with(json!({"cniVersion": null, "cniVersions": ["0.4.0", "1.1.0"]})),
                Ok(CniVersion::V1_1_0),
            ),
            (
                with(json!({"cniVersion": "1.3.0", "cniVersions": ["1.1.0", "1.3.0"]})),
                Ok(CniVersion::V1_1_0),
            ),
            (with(json!({"cniVersion": "0.2.0"})), Err(1)),
            (with(json!({"cniVersion": null})), Err(1)),
            (with(json!({"cniVersion": ""})), Err(1)),
            (with(json!({"cniVersion": 1})), Err(7)),
            (with(json!({"cniVersions": "1.0.0"})), Err(7)),
            (with(json!({"cniVersions": [1]})), Err(7)),
        ];
        for (input, want) in table {
            let got = parse(&input, Command::Add)
                .map(|c| c.cni_version)
                .map_err(|e| e.code());
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn verbs_that_need_newer_versions() {
        // (verb, cniVersion, ok)
        let table = [
            (Command::Check, "0.3.1", false),
            (Command::Check, "0.4.0", true),
            (Command::Check, "1.0.0", true),
            (Command::Status, "1.0.0", false),
            (Command::Status, "1.1.0", true),
            (Command::Gc, "1.0.0", false),
            (Command::Gc, "1.1.0", true),
            (Command::Add, "0.3.1", true),
            (Command::Del, "0.3.1", true),
        ];
        for (verb, version, ok) in table {
            let v = with(json!({
                "cniVersion": version,
                "prevResult": {"cniVersion": version},
                "cni.dev/valid-attachments": []
            }));
            match parse(&v, verb) {
                Ok(_) => assert!(ok, "{verb} {version}"),
                Err(e) => {
                    assert!(!ok, "{verb} {version}: {e}");
                    assert_eq!(e.code(), 1);
                    assert!(
                        e.to_string()
                            .starts_with(&format!("{verb} needs cniVersion")),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn names() {
        let table = [
            (json!("pods"), true),
            (json!("k8s-pod-network"), true),
            (json!("a.b_c-1"), true),
            (json!("../etc"), false),
            (json!("a/b"), false),
            (json!(""), false),
            (json!("-x"), false),
            (json!(7), false),
            (Value::Null, false),
        ];
        for (name, ok) in table {
            let v = with(json!({ "name": name.clone() }));
            let v = if name.is_null() {
                with(json!({"name": null}))
            } else {
                v
            };
            for verb in [Command::Add, Command::Del] {
                let got = parse(&v, verb);
                assert_eq!(got.is_ok(), ok, "{verb} {name}");
                if !ok {
                    let e = got.unwrap_err();
                    assert_eq!(e.code(), 7);
                    assert!(e.to_string().starts_with("name: "), "{e}");
                }
            }
        }
    }

    #[test]
    fn modes() {
        for mode in Mode::ALL {
            let c = parse(&with(json!({"mode": mode.as_str()})), Command::Add).unwrap();
            assert_eq!(c.mode, mode);
        }
        assert_eq!(
            parse(&with(json!({"mode": null})), Command::Add)
                .unwrap()
                .mode,
            Mode::Tc
        );
        let (code, msg) = err(&with(json!({"mode": "pair"})), Command::Add);
        assert_eq!(code, 7);
        assert!(
            msg.starts_with(
                "mode: \"pair\" cannot be used by a CNI plugin: pair mode joins two named pods"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("use \"tc\" (the default), \"xdp\", \"routed\" or \"bridge\""),
            "{msg}"
        );
        for bad in [
            json!("TC"),
            json!("tcx"),
            json!(""),
            json!(1),
            json!(["tc"]),
        ] {
            let (code, msg) = err(&with(json!({ "mode": bad })), Command::Add);
            assert_eq!(code, 7);
            assert!(msg.starts_with("mode: "), "{msg}");
        }
    }

    #[test]
    fn mtus() {
        let table = [
            (json!(1500), Some(1500)),
            (json!(1280), Some(1280)),
            (json!(65535), Some(65535)),
            (json!(9000), Some(9000)),
            (json!(1279), None),
            (json!(65536), None),
            (json!(0), None),
            (json!(-1), None),
            (json!(1500.5), None),
            (json!("1500"), None),
        ];
        for (mtu, want) in table {
            let got = parse(&with(json!({ "mtu": mtu.clone() })), Command::Add);
            match want {
                Some(m) => assert_eq!(got.unwrap().mtu, Some(m)),
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(e.code(), 7);
                    assert_eq!(
                        e.to_string(),
                        format!("mtu: {mtu} is out of range; use 1280 (the IPv6 minimum) to 65535")
                    );
                }
            }
        }
    }

    #[test]
    fn ipam_shapes() {
        let host_local = json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.1.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "/var/lib/cni/networks"
        });
        let c = parse(&with(json!({ "ipam": host_local.clone() })), Command::Add).unwrap();
        assert_eq!(
            c.ipam,
            Some(Ipam::Delegated(DelegatedIpam {
                plugin: "host-local".into(),
                config: host_local.as_object().unwrap().clone(),
            }))
        );

        let builtin =
            |v: Value| parse(&with(json!({ "ipam": v })), Command::Add).map(|c| c.ipam.unwrap());
        assert_eq!(
            builtin(json!({"type": "veth-builtin", "subnet": "10.244.1.0/24", "subnet6": "fd00:10:244:1::/64"})).unwrap(),
            Ipam::Builtin(BuiltinIpam {
                subnet: Some("10.244.1.0/24".parse().unwrap()),
                subnet6: Some("fd00:10:244:1::/64".parse().unwrap()),
            })
        );
        assert_eq!(
            builtin(json!({"type": "veth-builtin", "subnet6": "fd00::/120"})).unwrap(),
            Ipam::Builtin(BuiltinIpam {
                subnet: None,
                subnet6: Some("fd00::/120".parse().unwrap()),
            })
        );

        // (ipam, field named, fragment)
        let table = [
            (json!("host-local"), "ipam", "expected an object"),
            (json!({}), "ipam.type", "missing"),
            (json!({"subnet": "10.0.0.0/24"}), "ipam.type", "missing"),
            (json!({"type": 7}), "ipam.type", "expected a string"),
            (
                json!({"type": "../../bin/sh"}),
                "ipam.type",
                "is not a plugin name",
            ),
            (
                json!({"type": "/usr/bin/host-local"}),
                "ipam.type",
                "is not a plugin name",
            ),
            (
                json!({"type": "veth-cni"}),
                "ipam.type",
                "is this plugin itself",
            ),
            (json!({"type": "veth-builtin"}), "ipam", "needs \"subnet\""),
            (
                json!({"type": "veth-builtin", "subnet": null}),
                "ipam",
                "needs \"subnet\"",
            ),
            (
                json!({"type": "veth-builtin", "subnet4": "10.0.0.0/24"}),
                "ipam.subnet4",
                "not a key of the built-in IPAM",
            ),
            (
                json!({"type": "veth-builtin", "subnet": "10.0.0.0/24", "ranges": []}),
                "ipam.ranges",
                "not a key",
            ),
            (
                json!({"type": "veth-builtin", "subnet": "10.0.0.0"}),
                "ipam.subnet",
                "not an IPv4 CIDR",
            ),
            (
                json!({"type": "veth-builtin", "subnet": "fd00::/64"}),
                "ipam.subnet",
                "is not IPv4; put it in \"subnet6\"",
            ),
            (
                json!({"type": "veth-builtin", "subnet6": "10.0.0.0/24"}),
                "ipam.subnet6",
                "is not IPv6; put it in \"subnet\"",
            ),
            (
                json!({"type": "veth-builtin", "subnet": "10.244.1.7/24"}),
                "ipam.subnet",
                "did you mean \"10.244.1.0/24\"?",
            ),
            (
                json!({"type": "veth-builtin", "subnet": "10.0.0.0/31"}),
                "ipam.subnet",
                "too small to allocate from; use a /30 or larger",
            ),
            (
                json!({"type": "veth-builtin", "subnet6": "fd00::/127"}),
                "ipam.subnet6",
                "too small",
            ),
            (
                json!({"type": "veth-builtin", "subnet": 10}),
                "ipam.subnet",
                "expected a string",
            ),
        ];
        for (ipam, field, fragment) in table {
            let (code, msg) = err(&with(json!({ "ipam": ipam.clone() })), Command::Add);
            assert_eq!(code, 7, "{ipam}");
            assert!(msg.starts_with(&format!("{field}: ")), "{ipam}: {msg}");
            assert!(msg.contains(fragment), "{ipam}: {msg}");
        }
    }

    #[test]
    fn runtime_config_both_capitalisations() {
        // containerd 1.6: Go's field names.
        let containerd = json!({
            "portMappings": [{"HostPort": 18080, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}],
            "bandwidth": {"IngressRate": 1000000, "IngressBurst": 2000000, "EgressRate": 3000000, "EgressBurst": 4000000},
            "dns": {"Servers": null, "Searches": ["default.svc.cluster.local"], "Options": ["ndots:5"]}
        });
        // The conventions' spelling.
        let conventions = json!({
            "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}],
            "bandwidth": {"ingressRate": 1000000, "ingressBurst": 2000000, "egressRate": 3000000, "egressBurst": 4000000},
            "dns": {"servers": [], "searches": ["default.svc.cluster.local"], "options": ["ndots:5"]}
        });
        let want = RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 18080,
                container_port: 8080,
                protocol: Protocol::Tcp,
                host_ip: None,
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: Some(1_000_000),
                ingress_burst: Some(2_000_000),
                egress_rate: Some(3_000_000),
                egress_burst: Some(4_000_000),
            }),
            dns: Some(RuntimeDns {
                servers: vec![],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            other: Map::new(),
        };
        for rc in [containerd, conventions] {
            let c = parse(&with(json!({ "runtimeConfig": rc.clone() })), Command::Add).unwrap();
            assert_eq!(c.runtime_config, want, "{rc}");
        }
        // Mixed spellings, other protocols, a host address, other capabilities.
        let c = parse(
            &with(json!({"runtimeConfig": {
                "portMappings": [
                    {"hostPort": 53, "containerPort": 5353, "Protocol": "UDP", "hostIp": "127.0.0.1"},
                    {"HostPort": 9, "containerPort": 9, "protocol": "sctp", "HostIP": "::1"},
                    {"hostPort": 80, "containerPort": 80}
                ],
                "mac": "c2:11:22:33:44:55",
                "ips": ["10.0.0.9/24"]
            }})),
            Command::Add,
        )
        .unwrap();
        let pm = &c.runtime_config.port_mappings;
        assert_eq!(
            (pm[0].protocol, pm[0].host_ip),
            (Protocol::Udp, Some("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            (pm[1].protocol, pm[1].host_ip),
            (Protocol::Sctp, Some("::1".parse().unwrap()))
        );
        assert_eq!((pm[2].protocol, pm[2].host_ip), (Protocol::Tcp, None));
        assert_eq!(c.runtime_config.other.len(), 2);
        assert_eq!(c.runtime_config.other["mac"], json!("c2:11:22:33:44:55"));

        let nulls = parse(
            &with(json!({"runtimeConfig": {"portMappings": null, "bandwidth": null, "dns": null}})),
            Command::Add,
        )
        .unwrap();
        assert_eq!(nulls.runtime_config, RuntimeConfig::default());
        assert_eq!(
            parse(&with(json!({"runtimeConfig": null})), Command::Add)
                .unwrap()
                .runtime_config,
            RuntimeConfig::default()
        );
        let partial = parse(
            &with(json!({"runtimeConfig": {"bandwidth": {"ingressRate": 8}}})),
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            partial.runtime_config.bandwidth,
            Some(Bandwidth {
                ingress_rate: Some(8),
                ..Default::default()
            })
        );
    }

    #[test]
    fn runtime_config_errors_name_the_field() {
        let table = [
            (json!([]), "runtimeConfig: expected an object"),
            (
                json!({"portMappings": {}}),
                "runtimeConfig.portMappings: expected a list",
            ),
            (
                json!({"portMappings": [7]}),
                "runtimeConfig.portMappings[0]: expected an object",
            ),
            (
                json!({"portMappings": [{"containerPort": 80}]}),
                "runtimeConfig.portMappings[0].hostPort: missing is not a port (1-65535)",
            ),
            (
                json!({"portMappings": [{"HostPort": 0, "ContainerPort": 80}]}),
                "runtimeConfig.portMappings[0].hostPort: 0 is not a port",
            ),
            (
                json!({"portMappings": [{"hostPort": 80, "containerPort": 65536}]}),
                "runtimeConfig.portMappings[0].containerPort: 65536 is not a port",
            ),
            (
                json!({"portMappings": [{"hostPort": "80", "containerPort": 80}]}),
                "hostPort: \"80\" is not a port",
            ),
            (
                json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}),
                "runtimeConfig.portMappings[0].protocol: \"icmp\" is not",
            ),
            (
                json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "localhost"}]}),
                "runtimeConfig.portMappings[0].hostIP: \"localhost\" is not an IP address",
            ),
            (
                json!({"bandwidth": {"IngressRate": -1}}),
                "runtimeConfig.bandwidth.ingressRate: -1 is not a non-negative whole number",
            ),
            (
                json!({"bandwidth": {"egressBurst": 1.5}}),
                "runtimeConfig.bandwidth.egressBurst: 1.5 is not",
            ),
            (
                json!({"bandwidth": 5}),
                "runtimeConfig.bandwidth: expected an object",
            ),
            (
                json!({"dns": {"Searches": "x"}}),
                "runtimeConfig.dns.searches: expected a list of strings",
            ),
            (
                json!({"dns": {"servers": [1]}}),
                "runtimeConfig.dns.servers[0]: expected a string",
            ),
        ];
        for (rc, want) in table {
            let (code, msg) = err(&with(json!({ "runtimeConfig": rc.clone() })), Command::Add);
            assert_eq!(code, 7, "{rc}");
            assert!(msg.contains(want), "{rc}: {msg}");
        }
    }

    #[test]
    fn well_known_dns() {
        let c = parse(
            &with(json!({"dns": {"nameservers": ["10.1.0.1"], "search": ["x"]}})),
            Command::Add,
        )
        .unwrap();
        let dns = c.dns.unwrap();
        assert_eq!(dns.nameservers, vec!["10.1.0.1".to_string()]);
        assert_eq!(dns.search, vec!["x".to_string()]);
        let (code, msg) = err(&with(json!({"dns": ["10.1.0.1"]})), Command::Add);
        assert_eq!(code, 7);
        assert!(msg.starts_with("dns: "), "{msg}");
    }

    #[test]
    fn prev_results_of_every_version() {
        for version in CniVersion::ALL {
            let mut ip =
                json!({"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0});
            if version.ips_have_version() {
                ip["version"] = json!("4");
            }
            let prev = json!({
                "cniVersion": version.as_str(),
                "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
                "ips": [ip],
            });
            // The configuration may be newer than the prevResult (libcni
            // would refuse that; we read it).
            for conf_version in CniVersion::ALL.into_iter().filter(|v| v.has_check()) {
                let c = parse(
                    &with(json!({"cniVersion": conf_version.as_str(), "prevResult": prev.clone()})),
                    Command::Check,
                )
                .unwrap();
                let r = c.prev_result.unwrap();
                assert_eq!(r.interfaces[0].name, "eth0");
                assert_eq!(r.ips[0].address.to_string(), "10.244.1.5/24");
            }
        }
        // Without cniVersion: the configuration's.
        let c = parse(&with(json!({"cniVersion": "0.4.0", "prevResult": {"ips": [{"version": "4", "address": "10.0.0.2/8"}]}})), Command::Add).unwrap();
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
        // Broken ones: code 6 for ADD and CHECK.
        let broken = with(json!({"prevResult": {"ips": [{"address": "nope"}]}}));
        for verb in [Command::Add, Command::Check] {
            let (code, msg) = err(&broken, verb);
            assert_eq!(code, 6);
            assert!(msg.starts_with("cannot decode prevResult: "), "{msg}");
        }
        // CHECK needs one.
        let (code, msg) = err(&base(), Command::Check);
        assert_eq!(code, 7);
        assert!(msg.starts_with("prevResult: missing"), "{msg}");
        let (code, _) = err(&with(json!({"prevResult": null})), Command::Check);
        assert_eq!(code, 7);
    }

    #[test]
    fn del_and_gc_go_ahead_without_bad_keys() {
        let broken = with(json!({
            "type": null,
            "mode": "pair",
            "mtu": 1,
            "ipam": {"type": "../x"},
            "dns": 5,
            "runtimeConfig": {"portMappings": "x"},
            "prevResult": {"cniVersion": "0.2.0"},
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }));
        for verb in [Command::Add, Command::Check, Command::Status] {
            assert_eq!(
                err(
                    &with(json!({"cniVersion": "1.1.0", "mode": "pair", "prevResult": {}})),
                    verb
                )
                .0,
                7,
                "{verb}"
            );
        }
        for verb in [Command::Del, Command::Gc] {
            let mut v = broken.clone();
            v["cniVersion"] = json!("1.1.0");
            let c = parse(&v, verb).unwrap();
            assert_eq!(c.name, "pods");
            assert_eq!(c.plugin_type, "");
            assert_eq!(c.mode, Mode::Tc);
            assert_eq!(
                (c.mtu, &c.ipam, &c.dns, &c.prev_result),
                (None, &None, &None, &None)
            );
            assert_eq!(c.runtime_config, RuntimeConfig::default());
            assert_eq!(c.warnings.len(), 7, "{:?}", c.warnings);
            assert!(
                c.warnings
                    .iter()
                    .all(|w| w.ends_with(&format!("; {verb} goes ahead without it"))),
                "{:?}",
                c.warnings
            );
        }
        // What a DEL cannot do without: a version and the network's name.
        for bad in [
            json!({"cniVersion": "9.0.0"}),
            json!({"name": "../x"}),
            json!({"name": null}),
        ] {
            assert!(parse(&with(bad.clone()), Command::Del).is_err(), "{bad}");
        }
    }

    #[test]
    fn containerd_second_del_has_no_prev_result() {
        let c = parse(
            &with(json!({"ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}})),
            Command::Del,
        )
        .unwrap();
        assert_eq!(c.prev_result, None);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn gc_attachments() {
        let gc = |v: Value| parse(&with(v), Command::Gc);
        let v11 = |extra: Value| {
            let mut v = json!({"cniVersion": "1.1.0"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let c = gc(v11(json!({"cni.dev/valid-attachments": [
            {"containerID": "abc", "ifname": "eth0"},
            {"containerID": "def", "ifname": "net1"}
        ]})))
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![
                GcAttachment {
                    container_id: "abc".into(),
                    ifname: "eth0".into()
                },
                GcAttachment {
                    container_id: "def".into(),
                    ifname: "net1".into()
                },
            ]
        );
        assert!(!c.other.contains_key(VALID_ATTACHMENTS));
        // libcni also injects the old name; either works, the new one wins.
        let c = gc(v11(
            json!({"cni.dev/attachments": [{"containerID": "old", "ifname": "eth0"}]}),
        ))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "old");
        let c = gc(v11(json!({
            "cni.dev/valid-attachments": [{"containerID": "new", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "old", "ifname": "eth0"}]
        })))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "new");
        // Empty list and Go's null: nothing is valid any more.
        assert_eq!(
            gc(v11(json!({"cni.dev/valid-attachments": []})))
                .unwrap()
                .valid_attachments,
            Some(vec![])
        );
        let null = json!({"cniVersion": "1.1.0", "name": "pods", "type": "veth-cni", "cni.dev/valid-attachments": null});
        assert_eq!(
            parse(&null, Command::Gc).unwrap().valid_attachments,
            Some(vec![])
        );
        // Strict, even for GC.
        let table = [
            (
                json!({}),
                "cni.dev/valid-attachments: missing; GC without the list",
            ),
            (json!({"cni.dev/valid-attachments": {}}), "expected a list"),
            (
                json!({"cni.dev/valid-attachments": ["abc"]}),
                "cni.dev/valid-attachments[0]: expected an object",
            ),
            (
                json!({"cni.dev/valid-attachments": [{"ifname": "eth0"}]}),
                "cni.dev/valid-attachments[0].containerID: missing",
            ),
            (
                json!({"cni.dev/valid-attachments": [{"containerID": "a"}]}),
                "cni.dev/valid-attachments[0].ifname: missing",
            ),
            (
                json!({"cni.dev/valid-attachments": [{"containerID": 1, "ifname": "eth0"}]}),
                "expected a string",
            ),
        ];
        for (extra, want) in table {
            let e = gc(v11(extra.clone())).unwrap_err();
            assert_eq!(e.code(), 7, "{extra}");
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
        // Other verbs ignore the list.
        let c = parse(
            &with(json!({"cni.dev/valid-attachments": "garbage"})),
            Command::Add,
        )
        .unwrap();
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn log_keys_are_ours_strict_in_add_lenient_in_del() {
        let c = parse(
            &with(json!({"logFile": "/var/log/vethctl/cni.log", "logLevel": "Debug"})),
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            c.log.file.as_deref(),
            Some(std::path::Path::new("/var/log/vethctl/cni.log"))
        );
        assert_eq!(c.log.level, LogLevel::Debug);
        assert!(c.other.is_empty(), "{:?}", c.other);
        assert_eq!(
            parse(&base(), Command::Add).unwrap().log,
            LogConfig::default()
        );

        let bad = with(json!({"logLevel": "loud"}));
        let (code, msg) = err(&bad, Command::Add);
        assert_eq!(code, 7);
        assert!(
            msg.contains("logLevel") && msg.contains("error, warn, info or debug"),
            "{msg}"
        );
        let del = parse(&bad, Command::Del).unwrap();
        assert_eq!(del.log, LogConfig::default());
        assert!(del.warnings[0].contains("logLevel"), "{:?}", del.warnings);
    }

    #[test]
    fn unknown_keys_are_kept() {
        let c = parse(
            &with(json!({
                "bridge": "cni0",
                "keyA": ["some more", "plugin specific", "configuration"],
                "capabilities": {"portMappings": true},
                "ipMasq": true,
                "args": {"cni": {"labels": []}},
                "cni.dev/future": 1
            })),
            Command::Add,
        )
        .unwrap();
        let keys: Vec<&str> = c.other.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        for k in [
            "bridge",
            "keyA",
            "capabilities",
            "ipMasq",
            "args",
            "cni.dev/future",
        ] {
            assert!(c.other.contains_key(k), "{k}");
        }
        assert_eq!(c.other["ipMasq"], json!(true));
    }

    #[test]
    fn type_is_required_outside_del_and_gc() {
        let (code, msg) = err(&with(json!({"type": null})), Command::Add);
        assert_eq!(code, 7);
        assert!(msg.starts_with("type: missing"), "{msg}");
        assert_eq!(err(&with(json!({"type": ""})), Command::Add).0, 7);
        assert_eq!(err(&with(json!({"type": 3})), Command::Add).0, 7);
    }

    #[test]
    fn messages_are_bounded() {
        let long = "x".repeat(10_000);
        let (_, msg) = err(&with(json!({ "mtu": [long] })), Command::Add);
        assert!(msg.len() < 200, "{}", msg.len());
        // Multi-byte characters are cut on a boundary.
        let wide = "é".repeat(100);
        let (_, msg) = err(&with(json!({ "mtu": [wide] })), Command::Add);
        assert!(msg.contains("..."), "{msg}");
    }
}
