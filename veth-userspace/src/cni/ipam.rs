//! Where an ADD's addresses come from, and giving them back: the pool of
//! [`crate::ipam`] (`"type": "veth-builtin"`), or a delegated IPAM plugin
//! (`host-local`) run from `CNI_PATH` as the spec's section 4 says — with
//! our own variables and exactly the configuration we were given — and
//! given back on DEL, on a failed ADD, and on GC.

use std::{
    collections::BTreeSet,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use veth_cni_protocol::{CniError, CniResult, CniVersion, ErrorReply, Ipam, Request};

use crate::{
    endpoint::AddressSource,
    ipam::{Pool, Ranges},
    model::Topology,
    state::StateDir,
};

/// An endpoint's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::internal(format!("{what}: {e:#}"))
}

/// The network's own pool: its ranges less the node addresses and the
/// addresses of its topology file's pods (a cluster node's part has both
/// the file's pods and the runtime's).
pub(crate) fn pool(network: &Topology) -> Pool {
    Pool::new(
        StateDir::new(&network.name).path(),
        Ranges {
            v4: network.pod_cidr,
            v6: network.pod_cidr6,
            reserved: reserved(network),
        },
    )
}

/// Host offsets no endpoint may get: the node's and each file pod's, in
/// either family (an endpoint gets one offset in both).
fn reserved(network: &Topology) -> BTreeSet<u32> {
    let offset4 = |a: Ipv4Addr| u32::from(a).checked_sub(u32::from(network.pod_cidr.network()));
    let offset6 = |a: Ipv6Addr| {
        let base = u128::from(network.pod_cidr6?.network());
        u32::try_from(u128::from(a).checked_sub(base)?).ok()
    };
    let v4 = std::iter::once(network.host_address)
        .chain(network.pods.iter().map(|p| p.ipv4))
        .filter_map(offset4);
    let v6 = network
        .host_address6
        .into_iter()
        .chain(network.pods.iter().filter_map(|p| p.ipv6))
        .filter_map(offset6);
    v4.chain(v6).collect()
}

/// The addresses of attachment `key`: from the pool, or from the delegated
/// plugin's ADD.
pub fn allocate(
    req: &Request,
    network: &Topology,
    key: &str,
) -> Result<(Addresses, AddressSource), CniError> {
    match req.config.ipam.as_ref() {
        Some(Ipam::Delegated(d)) => {
            let out = exec(req, &d.plugin, "ADD", &[])?;
            let result = CniResult::parse(&out, req.version(), &format!("{}'s result", d.plugin))?;
            let pick4 = result.ips.iter().find_map(|ip| match ip.address.addr() {
                IpAddr::V4(a) => Some(a),
                _ => None,
            });
            let pick6 = result.ips.iter().find_map(|ip| match ip.address.addr() {
                IpAddr::V6(a) => Some(a),
                _ => None,
            });
            let source = AddressSource::Delegated {
                plugin: d.plugin.clone(),
            };
            let Some(ipv4) = pick4 else {
                let _ = release(req, &network.name, key, &source);
                return Err(CniError::invalid_config(
                    "ipam",
                    format!("{} gave no IPv4 address; configure an IPv4 range", d.plugin),
                ));
            };
            if let Some(why) = unusable(network, ipv4, pick6) {
                let _ = release(req, &network.name, key, &source);
                return Err(CniError::invalid_config(
                    "ipam",
                    format!("{} gave {why}", d.plugin),
                ));
            }
            Ok((
                Addresses {
                    ipv4,
                    ipv6: pick6.filter(|_| network.pod_cidr6.is_some()),
                },
                source,
            ))
        }
        _ => {
            let a = pool(network)
                .allocate(key)
                .map_err(|e| internal("allocating addresses", e))?;
            Ok((
                Addresses {
                    ipv4: a.ipv4,
                    ipv6: a.ipv6,
                },
                AddressSource::Builtin,
            ))
        }
    }
}

/// Why a delegated IPAM's addresses cannot be a pod's in `network`: one
/// outside the network's range of its family (named, IPv4 or IPv6), or
/// the range's network or broadcast address (`static` hands out whatever
/// it is given; a pod there took the subnet's broadcast traffic, or the
/// subnet-router anycast address).
fn unusable(network: &Topology, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> Option<String> {
    let v4 = network.pod_cidr;
    const FIX: &str = "give every range of one family the same subnet, and host addresses of it";
    if !v4.contains(&ipv4) {
        return Some(format!(
            "IPv4 address {ipv4}, outside the network's IPv4 range {v4}; {FIX}"
        ));
    }
    if v4.prefix_len() < 31 && (ipv4 == v4.network() || ipv4 == v4.broadcast()) {
        let which = if ipv4 == v4.network() {
            "network"
        } else {
            "broadcast"
        };
        return Some(format!(
            "IPv4 address {ipv4}, the {which} address of {v4}, which no pod can have; {FIX}"
        ));
    }
    let ipv6 = ipv6?;
    let Some(v6) = network.pod_cidr6 else {
        return Some(format!(
            "IPv6 address {ipv6}, but the network has no IPv6 range; add an IPv6 subnet to the \
             IPAM configuration's ranges, or leave the IPv6 address out"
        ));
    };
    if !v6.contains(&ipv6) {
        return Some(format!(
            "IPv6 address {ipv6}, outside the network's IPv6 range {v6}; {FIX}"
        ));
    }
    if v6.prefix_len() < 127 && ipv6 == v6.network() {
        return Some(format!(
            "IPv6 address {ipv6}, the subnet-router anycast address of {v6}, which no pod can \
             have; {FIX}"
        ));
    }
    None
}

/// Gives attachment `key`'s addresses back (fine if it has none).
pub fn release(
    req: &Request,
    network: &str,
    key: &str,
    source: &AddressSource,
) -> Result<(), CniError> {
    match source {
        AddressSource::Builtin => release_builtin(network, |k| k != key).map(|_| ()),
        AddressSource::Delegated { plugin } => exec(req, plugin, "DEL", &[]).map(|_| ()),
    }
}

/// Frees every pool allocation `keep` says no to; returns their keys.
pub fn release_builtin(
    network: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, CniError> {
    let dir = StateDir::new(network);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    // Releasing needs no ranges: any will do.
    let pool = Pool::new(
        dir.path(),
        Ranges {
            v4: ipnet::Ipv4Net::default(),
            v6: None,
            reserved: Default::default(),
        },
    );
    pool.retain(keep)
        .map_err(|e| internal("releasing addresses", e))
}

/// Where `plugin` is in `CNI_PATH`.
fn find(req: &Request, plugin: &str) -> Result<PathBuf, CniError> {
    let path = req.env.require_path()?;
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::invalid_config(
                "ipam.type",
                format!(
                    "IPAM plugin {plugin:?} is not in CNI_PATH ({}); install it there or use \
                     \"veth-builtin\"",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Runs `plugin` for `command` with our stdin and our variables, `CNI_COMMAND`
/// and `vars` replaced; its stdout, or its error passed through.
///
/// A plugin older than the configuration refuses it (code 1): Debian's
/// host-local 1.1.1 speaks up to 1.0.0, and a runtime that negotiated
/// 1.1.0 — every GC — sends 1.1.0. It is then run again with the same
/// configuration in the newest version it speaks, as if it had been
/// written so; without that, GC never freed a host-local reservation.
pub fn exec(
    req: &Request,
    plugin: &str,
    command: &str,
    vars: &[(&str, &str)],
) -> Result<Vec<u8>, CniError> {
    let binary = find(req, plugin)?;
    match run(&binary, plugin, command, vars, &req.stdin) {
        Err(e @ CniError::Delegated { code: 1, .. }) => match older_stdin(&binary, plugin, req) {
            Some(stdin) => run(&binary, plugin, command, vars, &stdin),
            None => Err(e),
        },
        other => other,
    }
}

/// The versions `plugin` says it speaks (its VERSION answer).
pub fn supported_versions(req: &Request, plugin: &str) -> Result<Vec<String>, CniError> {
    let binary = find(req, plugin)?;
    versions_of(&binary, plugin, req)
}

fn versions_of(binary: &Path, plugin: &str, req: &Request) -> Result<Vec<String>, CniError> {
    let out = run(binary, plugin, "VERSION", &[], &req.stdin)?;
    let answer: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| CniError::decode(format!("{plugin}'s VERSION answer"), e.to_string()))?;
    Ok(answer["supportedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// `req`'s configuration with `cniVersion` the newest version older than
/// the request's that `plugin` speaks (`None` if there is none).
fn older_stdin(binary: &Path, plugin: &str, req: &Request) -> Option<Vec<u8>> {
    let supported = versions_of(binary, plugin, req).ok()?;
    let older = CniVersion::ALL
        .into_iter()
        .rev()
        .filter(|v| *v < req.version())
        .find(|v| supported.iter().any(|s| s == v.as_str()))?;
    let mut conf: serde_json::Value = serde_json::from_slice(&req.stdin).ok()?;
    let obj = conf.as_object_mut()?;
    obj.insert("cniVersion".into(), older.as_str().into());
    obj.remove("cniVersions");
    serde_json::to_vec(&conf).ok()
}

fn run(
    binary: &Path,
    plugin: &str,
    command: &str,
    vars: &[(&str, &str)],
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let mut cmd = Command::new(binary);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| internal(&format!("starting {}", binary.display()), e))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading is judged by its output.
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| internal(&format!("running {plugin}"), e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    match ErrorReply::parse(&out.stdout) {
        Ok(reply) => Err(CniError::from_delegated(plugin, reply)),
        Err(_) => Err(CniError::internal(format!(
            "{plugin} {command} failed ({}) without an error result: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(v6: bool) -> Topology {
        let mut text = "name = \"n\"\npod_cidr = \"10.1.0.0/24\"\n".to_string();
        if v6 {
            text += "pod_cidr6 = \"fd00:1::/64\"\n";
        }
        Topology::from_toml(&text).unwrap()
    }

    #[test]
    fn the_pool_leaves_out_the_node_and_the_file_pods_addresses() {
        let text = "name = \"n\"\npod_cidr = \"10.1.0.0/24\"\npod_cidr6 = \"fd00:1::/64\"\n\
                    [[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\nipv4 = \"10.1.0.9\"\n";
        let topology = Topology::from_toml(text).unwrap();
        let mut wanted: BTreeSet<u32> = [topology.host_address, topology.pods[0].ipv4]
            .iter()
            .map(|a| u32::from(*a) - u32::from(topology.pod_cidr.network()))
            .collect();
        wanted.insert(9);
        assert!(wanted.len() >= 3, "{wanted:?}");
        assert!(
            wanted.is_subset(&reserved(&topology)),
            "{:?}",
            reserved(&topology)
        );
        assert_eq!(reserved(&network(true)).len(), 1, "only the node's offset");
    }

    #[test]
    fn delegated_addresses_must_be_host_addresses_of_their_family_range() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            unusable(&network(true), v4("10.1.0.9"), v6("fd00:1::9")),
            None
        );
        assert_eq!(unusable(&network(false), v4("10.1.0.254"), None), None);
        for (net, ipv4, ipv6, fragment) in [
            (
                network(false),
                v4("10.1.0.0"),
                None,
                "IPv4 address 10.1.0.0, the network address",
            ),
            (
                network(false),
                v4("10.1.0.255"),
                None,
                "the broadcast address of 10.1.0.0/24",
            ),
            (
                network(false),
                v4("10.2.0.9"),
                None,
                "outside the network's IPv4 range",
            ),
            (
                network(false),
                v4("10.1.0.9"),
                v6("fd00:1::9"),
                "IPv6 address fd00:1::9, but",
            ),
            (
                network(true),
                v4("10.1.0.9"),
                v6("fd00:2::9"),
                "outside the network's IPv6 range",
            ),
            (
                network(true),
                v4("10.1.0.9"),
                v6("fd00:1::"),
                "subnet-router anycast",
            ),
        ] {
            let why = unusable(&net, ipv4, ipv6).expect(fragment);
            assert!(why.contains(fragment), "{why}");
        }
    }
}
