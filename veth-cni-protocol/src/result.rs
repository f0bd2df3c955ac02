//! The ADD result, typed, rendered in each version and parsed back from any.
//!
//! Field by field (spec section 5 and the 0.3.1/0.4.0/1.0.0 specs):
//!
//! | field                                   | 0.3.1 / 0.4.0 | 1.0.0 | 1.1.0 |
//! |-----------------------------------------|:-------------:|:-----:|:-----:|
//! | `cniVersion`                            | ✓ | ✓ | ✓ |
//! | `interfaces[].name`, `mac`, `sandbox`   | ✓ | ✓ | ✓ |
//! | `interfaces[].mtu`, `socketPath`, `pciID` |   |   | ✓ |
//! | `ips[].version` (`"4"`/`"6"`)           | ✓ |   |   |
//! | `ips[].address`, `gateway`, `interface` | ✓ | ✓ | ✓ |
//! | `routes[].dst`, `gw`                    | ✓ | ✓ | ✓ |
//! | `routes[].mtu`, `advmss`, `priority`, `table`, `scope` | | | ✓ |
//! | `dns.nameservers`, `domain`, `search`, `options` | ✓ | ✓ | ✓ |
//!
//! Rendering writes exactly a version's fields (libcni's Go types write the
//! 1.1.0 ones into 1.0.0 and 0.4.0 results too; we do not). Empty lists,
//! unset optional fields and an empty `dns` are left out, as libcni does.
//! Parsing is lenient the way libcni's is (unknown keys ignored, `null` lists
//! empty, a missing `cniVersion` taken from the configuration) so that a
//! `prevResult` written by any plugin of any of our versions reads back.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::version::CniVersion;

/// An interface the attachment created (`interfaces[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    /// The namespace path for interfaces inside the pod (`CNI_NETNS`), `None`
    /// for host-side ones.
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    pub pci_id: Option<String>,
}

/// An address (`ips[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// Address and prefix length, host bits kept (`10.1.0.5/16`).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route (`routes[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// 1.1.0 only, as the four below.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    /// global (0), link (253), host (254).
    pub scope: Option<u8>,
}

impl Route {
    /// A plain route to `dst`, via `gw` when given.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings (`dns`, and the configuration's well-known `dns` key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        put_list(&mut m, "nameservers", &self.nameservers);
        if let Some(d) = &self.domain {
            m.insert("domain".into(), d.clone().into());
        }
        put_list(&mut m, "search", &self.search);
        put_list(&mut m, "options", &self.options);
        Value::Object(m)
    }

    /// Parse the spec's DNS dictionary (`what` names it in errors).
    pub fn from_value(value: &Value, what: &str) -> Result<Self, CniError> {
        if !value.is_object() {
            return Err(CniError::invalid_config(
                what,
                "invalid type: expected an object",
            ));
        }
        let raw: RawDns = serde_json::from_value(value.clone())
            .map_err(|e| CniError::invalid_config(what, e.to_string()))?;
        Ok(raw.into())
    }
}

/// The result of an ADD: what the attachment created, version-neutral.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn put_list(m: &mut Map<String, Value>, key: &str, list: &[String]) {
    if !list.is_empty() {
        m.insert(key.into(), list.iter().cloned().map(Value::from).collect());
    }
}

fn put_str(m: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
        m.insert(key.into(), v.clone().into());
    }
}

fn put_num(m: &mut Map<String, Value>, key: &str, value: Option<u64>) {
    if let Some(v) = value {
        m.insert(key.into(), v.into());
    }
}

impl CniResult {
    /// The result as `version` writes it.
    pub fn to_value(&self, version: CniVersion) -> Value {
        let mut top = Map::new();
        top.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let list = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("name".into(), i.name.clone().into());
                    put_str(&mut m, "mac", &i.mac);
                    put_str(&mut m, "sandbox", &i.sandbox);
                    if version.has_1_1_fields() {
                        put_num(&mut m, "mtu", i.mtu.filter(|&m| m > 0).map(u64::from));
                        put_str(&mut m, "socketPath", &i.socket_path);
                        put_str(&mut m, "pciID", &i.pci_id);
                    }
                    Value::Object(m)
                })
                .collect();
            top.insert("interfaces".into(), Value::Array(list));
        }
        if !self.ips.is_empty() {
            let list = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    if version.ips_have_version() {
                        let family = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        m.insert("version".into(), family.into());
                    }
                    m.insert("address".into(), ip.address.to_string().into());
                    if let Some(gw) = ip.gateway {
                        m.insert("gateway".into(), gw.to_string().into());
                    }
                    put_num(&mut m, "interface", ip.interface.map(|i| i as u64));
                    Value::Object(m)
                })
                .collect();
            top.insert("ips".into(), Value::Array(list));
        }
        if !self.routes.is_empty() {
            let list = self
                .routes
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    m.insert("dst".into(), r.dst.to_string().into());
                    if let Some(gw) = r.gw {
                        m.insert("gw".into(), gw.to_string().into());
                    }
                    if version.has_1_1_fields() {
                        put_num(&mut m, "mtu", r.mtu.map(u64::from));
                        put_num(&mut m, "advmss", r.advmss.map(u64::from));
                        put_num(&mut m, "priority", r.priority.map(u64::from));
                        put_num(&mut m, "table", r.table.map(u64::from));
                        put_num(&mut m, "scope", r.scope.map(u64::from));
                    }
                    Value::Object(m)
                })
                .collect();
            top.insert("routes".into(), Value::Array(list));
        }
        if !self.dns.is_empty() {
            top.insert("dns".into(), self.dns.to_value());
        }
        Value::Object(top)
    }

    /// The JSON bytes for stdout (with a final newline).
    pub fn render(&self, version: CniVersion) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.to_value(version)).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parse a result (a `prevResult`, or a delegated IPAM plugin's
    /// abbreviated result) of any version we speak. A result without
    /// `cniVersion` is read as `default_version` (libcni's
    /// `ParsePrevResult` does the same). `what` names the document in errors.
    pub fn from_value(
        value: &Value,
        default_version: CniVersion,
        what: &str,
    ) -> Result<Self, CniError> {
        let bad = |reason: String| CniError::decode(what, reason);
        // serde would also take a list for a struct.
        if !value.is_object() {
            return Err(bad(format!(
                "invalid type: expected an object, found {value}"
            )));
        }
        let raw: RawResult =
            serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        let version = match raw.cni_version.as_deref().filter(|v| !v.is_empty()) {
            None => default_version,
            Some(v) => CniVersion::parse(v).ok_or_else(|| {
                bad(format!(
                    "cniVersion {v:?} is not one of 0.3.1, 0.4.0, 1.0.0, 1.1.0"
                ))
            })?,
        };
        let interfaces = raw
            .interfaces
            .unwrap_or_default()
            .into_iter()
            .map(Interface::from)
            .collect();
        let mut ips = Vec::new();
        for (n, ip) in raw.ips.unwrap_or_default().into_iter().enumerate() {
            let address = parse_cidr(&ip.address).ok_or_else(|| {
                bad(format!(
                    "ips[{n}].address {:?} is not an address in CIDR form",
                    ip.address
                ))
            })?;
            // Only 0.3.x/0.4.0 have it; libcni does not check it, we check
            // that it agrees with the address when it is there.
            if let (true, Some(family)) = (version.ips_have_version(), ip.version.as_deref()) {
                let want = if address.addr().is_ipv4() { "4" } else { "6" };
                if family != want {
                    return Err(bad(format!(
                        "ips[{n}].version {family:?} does not match address {address}"
                    )));
                }
            }
            ips.push(IpConfig {
                address,
                gateway: parse_ip(ip.gateway.as_deref(), || format!("ips[{n}].gateway"))
                    .map_err(bad)?,
                interface: ip.interface,
            });
        }
        let mut routes = Vec::new();
        for (n, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
            let dst = parse_cidr(&r.dst)
                .ok_or_else(|| bad(format!("routes[{n}].dst {:?} is not a CIDR", r.dst)))?;
            routes.push(Route {
                dst,
                gw: parse_ip(r.gw.as_deref(), || format!("routes[{n}].gw")).map_err(bad)?,
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope,
            });
        }
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns: raw.dns.map(Dns::from).unwrap_or_default(),
        })
    }

    /// [`CniResult::from_value`] from bytes.
    pub fn parse(bytes: &[u8], default_version: CniVersion, what: &str) -> Result<Self, CniError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| CniError::decode(what, e.to_string()))?;
        CniResult::from_value(&value, default_version, what)
    }

    /// Check what a runtime relies on: every `ips[].interface` points into
    /// `interfaces` (containerd fails the pod otherwise).
    pub fn validate(&self) -> Result<(), CniError> {
        for (n, ip) in self.ips.iter().enumerate() {
            if let Some(i) = ip.interface.filter(|&i| i >= self.interfaces.len()) {
                return Err(CniError::internal(format!(
                    "result: ips[{n}].interface is {i} but there are {} interfaces",
                    self.interfaces.len()
                )));
            }
        }
        Ok(())
    }
}

/// `10.1.0.5/16`, host bits kept. A bare address is not accepted: the spec
/// says CIDR notation.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse().ok()
}

/// An optional address; empty is unset (Go's `net.IP` reads `""` as nil).
fn parse_ip(s: Option<&str>, field: impl Fn() -> String) -> Result<Option<IpAddr>, String> {
    match s.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{} {s:?} is not an IP address", field())),
    }
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Option<Vec<RawInterface>>,
    #[serde(default)]
    ips: Option<Vec<RawIp>>,
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    dns: Option<RawDns>,
}

#[derive(Deserialize)]
struct RawInterface {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(rename = "socketPath", default)]
    socket_path: Option<String>,
    #[serde(rename = "pciID", default)]
    pci_id: Option<String>,
}

/// Empty strings and a zero MTU read as absent.
impl From<RawInterface> for Interface {
    fn from(i: RawInterface) -> Interface {
        Interface {
            name: i.name.unwrap_or_default(),
            mac: i.mac.filter(|s| !s.is_empty()),
            mtu: i.mtu.filter(|&m| m > 0),
            sandbox: i.sandbox.filter(|s| !s.is_empty()),
            socket_path: i.socket_path.filter(|s| !s.is_empty()),
            pci_id: i.pci_id.filter(|s| !s.is_empty()),
        }
    }
}

#[derive(Deserialize)]
struct RawIp {
    #[serde(default)]
    version: Option<String>,
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u8>,
}

#[derive(Deserialize)]
struct RawDns {
    #[serde(default)]
    nameservers: Option<Vec<String>>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Option<Vec<String>>,
    #[serde(default)]
    options: Option<Vec<String>>,
}

impl From<RawDns> for Dns {
    fn from(raw: RawDns) -> Self {
        Dns {
            nameservers: raw.nameservers.unwrap_or_default(),
            domain: raw.domain.filter(|d| !d.is_empty()),
            search: raw.search.unwrap_or_default(),
            options: raw.options.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use CniVersion::*;

    const NETNS: &str = "/var/run/netns/cni-1c5e1f4a";

    /// What veth-cni's ADD returns for a dual-stack pod, 1.1.0 extras set.
    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vc1a2b3c4d5e6f7".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:42:0a:f4:01:05".into()),
                    mtu: Some(1500),
                    sandbox: Some(NETNS.into()),
                    socket_path: None,
                    pci_id: None,
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:10:244:1::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.244.1.1".parse().unwrap()),
                ),
                Route {
                    mtu: Some(1400),
                    advmss: Some(1360),
                    priority: Some(10),
                    table: Some(0),
                    scope: Some(253),
                    ..Route::new("::/0".parse().unwrap(), None)
                },
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: None,
                search: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    fn expected(version: CniVersion) -> Value {
        let v11 = version == V1_1_0;
        let v0 = version < V1_0_0;
        let mut host = json!({"name": "vc1a2b3c4d5e6f7", "mac": "ee:ee:ee:ee:ee:ee"});
        let mut pod = json!({"name": "eth0", "mac": "02:42:0a:f4:01:05", "sandbox": NETNS});
        let mut ip4 = json!({"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1});
        let mut ip6 = json!({"address": "fd00:10:244:1::5/64", "interface": 1});
        let mut r6 = json!({"dst": "::/0"});
        if v11 {
            host["mtu"] = json!(1500);
            pod["mtu"] = json!(1500);
            r6 = json!({"dst": "::/0", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 0, "scope": 253});
        }
        if v0 {
            ip4["version"] = json!("4");
            ip6["version"] = json!("6");
        }
        json!({
            "cniVersion": version.as_str(),
            "interfaces": [host, pod],
            "ips": [ip4, ip6],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, r6],
            "dns": {
                "nameservers": ["10.96.0.10"],
                "search": ["default.svc.cluster.local"],
                "options": ["ndots:5"]
            }
        })
    }

    #[test]
    fn renders_each_version_field_by_field() {
        for version in CniVersion::ALL {
            let got: Value = serde_json::from_slice(&sample().render(version)).unwrap();
            assert_eq!(got, expected(version), "{version}");
        }
    }

    /// What a version can carry of the sample.
    fn representable(version: CniVersion) -> CniResult {
        let mut r = sample();
        if !version.has_1_1_fields() {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for route in &mut r.routes {
                *route = Route::new(route.dst, route.gw);
            }
        }
        r
    }

    #[test]
    fn parses_back_what_each_version_renders() {
        for version in CniVersion::ALL {
            let bytes = sample().render(version);
            let back = CniResult::parse(&bytes, V1_0_0, "prevResult").unwrap();
            assert_eq!(back, representable(version), "{version}");
            // And renders the same again.
            assert_eq!(back.render(version), bytes, "{version}");
        }
    }

    #[test]
    fn empty_parts_are_left_out() {
        for version in CniVersion::ALL {
            let v: Value = serde_json::from_slice(&CniResult::default().render(version)).unwrap();
            assert_eq!(v, json!({"cniVersion": version.as_str()}));
        }
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some(String::new()),
                mtu: Some(0),
                sandbox: Some(String::new()),
                socket_path: Some(String::new()),
                pci_id: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            r.to_value(V1_1_0),
            json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0"}]})
        );
    }

    #[test]
    fn parses_the_specs_examples() {
        // The bridge result of the spec's ADD example (no cniVersion: it is
        // the configuration's).
        let bridge = json!({
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let r = CniResult::from_value(&bridge, V1_1_0, "prevResult").unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(
            r.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/16");
        assert_eq!(
            r.routes,
            vec![Route::new("0.0.0.0/0".parse().unwrap(), None)]
        );
        assert_eq!(r.dns.nameservers, vec!["10.1.0.1".to_string()]);
        r.validate().unwrap();

        // host-local's abbreviated result, 0.4.0 style.
        let ipam = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1"}],
            "dns": {}
        });
        let r = CniResult::from_value(&ipam, V1_0_0, "host-local result").unwrap();
        assert!(r.interfaces.is_empty());
        assert_eq!(r.ips[0].interface, None);
        assert!(r.dns.is_empty());
    }

    #[test]
    fn parse_table() {
        // (input, ok or error fragment)
        let table: Vec<(Value, Result<(), &str>)> = vec![
            (json!({}), Ok(())),
            (
                json!({"cniVersion": "0.3.1", "interfaces": null, "ips": null, "routes": null, "dns": null}),
                Ok(()),
            ),
            (json!({"cniVersion": ""}), Ok(())),
            (
                json!({"cniVersion": "1.0.0", "unknownKey": [1, 2], "ips": [{"address": "10.0.0.2/24", "extra": true}]}),
                Ok(()),
            ),
            // 1.0.0 results have no version in ips, one that is there is ignored.
            (
                json!({"cniVersion": "1.0.0", "ips": [{"version": "6", "address": "10.0.0.2/24"}]}),
                Ok(()),
            ),
            (
                json!({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.2/24"}]}),
                Err("ips[0].version \"6\" does not match"),
            ),
            (
                json!({"cniVersion": "0.4.0", "ips": [{"address": "10.0.0.2/24"}]}),
                Ok(()),
            ),
            (
                json!({"cniVersion": "0.4.0", "ips": [{"address": "10.0.0.2/24", "gateway": ""}]}),
                Ok(()),
            ),
            (
                json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}),
                Err("cniVersion \"0.2.0\" is not one of"),
            ),
            (json!({"cniVersion": 1}), Err("invalid type")),
            (
                json!({"ips": [{"address": "10.0.0.2"}]}),
                Err("ips[0].address \"10.0.0.2\" is not an address in CIDR form"),
            ),
            (
                json!({"ips": [{"address": "10.0.0.2/33"}]}),
                Err("not an address in CIDR form"),
            ),
            (
                json!({"ips": [{"gateway": "10.0.0.1"}]}),
                Err("missing field `address`"),
            ),
            (
                json!({"ips": [{"address": "10.0.0.2/24", "gateway": "gw"}]}),
                Err("ips[0].gateway \"gw\" is not an IP address"),
            ),
            (
                json!({"ips": [{"address": "10.0.0.2/24", "interface": -1}]}),
                Err("invalid value"),
            ),
            (
                json!({"routes": [{"dst": "default"}]}),
                Err("routes[0].dst \"default\" is not a CIDR"),
            ),
            (
                json!({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}),
                Err("routes[0].gw \"x\" is not an IP address"),
            ),
            (
                json!({"routes": [{"dst": "0.0.0.0/0", "scope": 256}]}),
                Err("invalid value"),
            ),
            (
                json!({"interfaces": [{"name": "eth0", "mtu": "1500"}]}),
                Err("invalid type"),
            ),
            (json!([]), Err("invalid type")),
            (json!("result"), Err("invalid type")),
        ];
        for (input, want) in table {
            let got = CniResult::from_value(&input, V0_4_0, "prevResult");
            match want {
                Ok(()) => assert!(got.is_ok(), "{input}: {got:?}"),
                Err(fragment) => {
                    let e = got.expect_err(&input.to_string());
                    assert_eq!(e.code(), 6);
                    let msg = e.to_string();
                    assert!(msg.starts_with("cannot decode prevResult: "), "{msg}");
                    assert!(msg.contains(fragment), "{input}: {msg}");
                }
            }
        }
        assert_eq!(CniResult::parse(b"{", V1_0_0, "x").unwrap_err().code(), 6);
    }

    #[test]
    fn missing_version_is_the_configurations() {
        // No cniVersion, default 0.4.0: a mismatched ips[].version is caught.
        let v = json!({"ips": [{"version": "4", "address": "fd00::2/64"}]});
        assert!(CniResult::from_value(&v, V0_4_0, "prevResult").is_err());
        // Default 1.0.0: version is not a 1.0.0 field, ignored.
        assert!(CniResult::from_value(&v, V1_0_0, "prevResult").is_ok());
    }

    #[test]
    fn validate_checks_interface_indexes() {
        let mut r = sample();
        r.validate().unwrap();
        r.ips[1].interface = Some(2);
        let e = r.validate().unwrap_err();
        assert_eq!(e.code(), 999);
        assert!(e
            .to_string()
            .contains("ips[1].interface is 2 but there are 2 interfaces"));
        // IPAM-style results point nowhere: fine.
        r.ips[1].interface = None;
        r.validate().unwrap();
    }

    #[test]
    fn dns_from_config() {
        let d = Dns::from_value(
            &json!({"nameservers": ["10.1.0.1"], "domain": "x", "search": null}),
            "dns",
        )
        .unwrap();
        assert_eq!(d.domain.as_deref(), Some("x"));
        assert!(d.search.is_empty());
        let e = Dns::from_value(&json!({"nameservers": "10.1.0.1"}), "dns").unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().starts_with("dns: invalid type"), "{e}");
    }
}
