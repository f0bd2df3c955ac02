//! `vethctl install-cni`: puts the plugin where the runtime looks for
//! plugins and a network configuration list where it looks for networks,
//! as Cilium's and Calico's installers do. Both files are written whole or
//! not at all (temporary file, then rename), so a runtime watching the
//! directory (containerd does) never reads half of one.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use veth_cni_protocol::{Command, NetConf};

/// The plugin's file name in the runtime's bin directory (its `type`).
pub const PLUGIN_TYPE: &str = "veth-cni";

/// What to install.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub plugin: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_file: String,
    pub name: String,
    pub mode: String,
    /// `veth-builtin` or the name of a delegated IPAM plugin (`host-local`).
    pub ipam: String,
    pub subnet: String,
    pub subnet6: Option<String>,
    pub mtu: Option<u32>,
    /// Plugins to chain after ours (`portmap`, `bandwidth`).
    pub chain: Vec<String>,
    /// The plugin's `logFile` and `logLevel` (checked as the plugin does).
    pub log_file: Option<String>,
    pub log_level: Option<String>,
    /// Where to copy the other plugins the list needs from when `bin_dir`
    /// lacks them (an image's own copies; see [`needed_plugins`]).
    pub plugins_from: Option<PathBuf>,
    /// The cluster and node whose lease the list is for (the agent's
    /// list only; see [`super::node_lease`]).
    pub cluster: Option<super::node_lease::Mark>,
}

/// The plugins besides ours that the runtime runs for this list:
/// `loopback` (containerd runs it for every pod and finds it only in its
/// one bin dir), the chained ones and a delegated IPAM.
pub fn needed_plugins(o: &InstallOptions) -> Vec<String> {
    let mut names = vec!["loopback".to_string()];
    names.extend(o.chain.iter().cloned());
    if o.ipam != veth_cni_protocol::BUILTIN_IPAM_TYPE {
        names.push(o.ipam.clone());
    }
    names.dedup();
    names
}

/// Copies each of `names` that `bin_dir` lacks from `from`, as Calico's
/// installer does from its image. A plugin already there is the node's
/// (its package's, another network's): never replaced. All are read before
/// any is written, so a missing one leaves the bin dir as it was. Returns
/// what was copied.
fn copy_missing_plugins(from: &Path, bin_dir: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for name in names.iter().filter(|n| !bin_dir.join(n).exists()) {
        let source = from.join(name);
        let binary = fs::read(&source).with_context(|| {
            format!(
                "--plugins-from {}: reading {} (the list needs it and {} has none)",
                from.display(),
                source.display(),
                bin_dir.display()
            )
        })?;
        missing.push((name, binary));
    }
    missing
        .into_iter()
        .map(|(name, binary)| write_whole(bin_dir, name, &binary, 0o755))
        .collect()
}

/// The configuration list: `cniVersion` 1.0.0 with `cniVersions` listing
/// 1.1.0, so runtimes on libcni 1.1 (containerd 1.6, podman 4) and newer
/// ones (STATUS, GC) both use it.
pub fn conflist(o: &InstallOptions) -> Value {
    let ipam = if o.ipam == veth_cni_protocol::BUILTIN_IPAM_TYPE {
        let mut ipam = json!({"type": o.ipam, "subnet": o.subnet});
        if let Some(v6) = &o.subnet6 {
            ipam["subnet6"] = json!(v6);
        }
        ipam
    } else {
        let mut ranges = vec![json!([{"subnet": o.subnet}])];
        ranges.extend(o.subnet6.iter().map(|v6| json!([{"subnet": v6}])));
        json!({"type": o.ipam, "ranges": ranges})
    };
    let mut ours = json!({"type": PLUGIN_TYPE, "mode": o.mode, "ipam": ipam});
    if let Some(mtu) = o.mtu {
        ours["mtu"] = json!(mtu);
    }
    if let Some(file) = &o.log_file {
        ours[veth_cni_protocol::logging::LOG_FILE_KEY] = json!(file);
    }
    if let Some(level) = &o.log_level {
        ours[veth_cni_protocol::logging::LOG_LEVEL_KEY] = json!(level);
    }
    if let Some(mark) = &o.cluster {
        ours[super::node_lease::CLUSTER_KEY] = json!(mark);
    }
    // So the runtime tells us too which pods have hostPorts or bandwidth
    // limits: they take the host stack (see `Record::host_path`).
    let mut capabilities = serde_json::Map::new();
    if o.chain.iter().any(|c| c == "portmap") {
        capabilities.insert("portMappings".into(), json!(true));
    }
    if o.chain.iter().any(|c| c == "bandwidth") {
        capabilities.insert("bandwidth".into(), json!(true));
    }
    if !capabilities.is_empty() {
        ours["capabilities"] = capabilities.into();
    }
    let mut plugins = vec![ours];
    for chained in &o.chain {
        plugins.push(match chained.as_str() {
            "portmap" => json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            "bandwidth" => json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            other => json!({"type": other}),
        });
    }
    json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": o.name,
        "plugins": plugins,
    })
}

/// Our plugin's configuration out of a list, as the runtime passes it
/// (`name` and `cniVersion` injected).
pub fn plugin_config(list: &Value) -> Result<Vec<u8>> {
    let ours = list["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == PLUGIN_TYPE))
        .with_context(|| format!("the list has no plugin of type {PLUGIN_TYPE:?}"))?;
    let mut conf = ours.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if !list["cniVersions"].is_null() {
        conf["cniVersions"] = list["cniVersions"].clone();
    }
    Ok(serde_json::to_vec(&conf)?)
}

/// Parses our plugin's entry of `list` as an ADD would: the same errors.
pub fn validate(list: &Value) -> Result<NetConf> {
    let bytes = plugin_config(list)?;
    let conf = NetConf::parse(&bytes, Command::Add).map_err(|e| anyhow::anyhow!("{e}"))?;
    super::network::network(&conf).map_err(|e| anyhow::anyhow!("{e}"))?;
    super::cluster_node::check(&conf).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(conf)
}

fn write_whole(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, &target).with_context(|| format!("installing {}", target.display()))?;
    Ok(target)
}

/// What [`install`] wrote.
#[derive(Debug)]
pub struct Installed {
    pub plugin: PathBuf,
    pub conf: PathBuf,
    /// Plugins copied from `plugins_from` (those the bin dir lacked).
    pub copied: Vec<PathBuf>,
}

/// Installs the plugin and the list. The list is validated first (nothing
/// is written for a bad one); the chained plugins are copied from
/// `plugins_from` if given and missing, and must then be in the bin
/// directory (the runtime would fail every pod).
pub fn install(o: &InstallOptions) -> Result<Installed> {
    let list = conflist(o);
    validate(&list).context("the configuration would be refused by the plugin")?;
    let copied = match &o.plugins_from {
        Some(from) => copy_missing_plugins(from, &o.bin_dir, &needed_plugins(o))?,
        None => Vec::new(),
    };
    for chained in &o.chain {
        if !o.bin_dir.join(chained).is_file() {
            bail!(
                "--chain {chained}: {} has no {chained} plugin; install the reference plugins \
                 there (Debian: containernetworking-plugins, in /usr/lib/cni) or drop it from \
                 --chain",
                o.bin_dir.display()
            );
        }
    }
    if !o.ipam.eq(veth_cni_protocol::BUILTIN_IPAM_TYPE) && !o.bin_dir.join(&o.ipam).is_file() {
        bail!(
            "--ipam {}: {} has no such plugin; install it there or use --ipam {}",
            o.ipam,
            o.bin_dir.display(),
            veth_cni_protocol::BUILTIN_IPAM_TYPE
        );
    }
    let binary = fs::read(&o.plugin)
        .with_context(|| format!("reading the plugin {}", o.plugin.display()))?;
    let plugin = write_whole(&o.bin_dir, PLUGIN_TYPE, &binary, 0o755)?;
    let conf = write_conf(o, &list)?;
    Ok(Installed {
        plugin,
        conf,
        copied,
    })
}

/// Installs only the plugin, and from `plugins_from` the loopback plugin
/// where `bin_dir` lacks it: on a node of a cluster kept in etcd, whose
/// agent writes the list (no chained plugins, built-in IPAM) for the
/// ranges it leases.
pub fn install_plugin(
    plugin: &Path,
    bin_dir: &Path,
    plugins_from: Option<&Path>,
) -> Result<(PathBuf, Vec<PathBuf>)> {
    let binary =
        fs::read(plugin).with_context(|| format!("reading the plugin {}", plugin.display()))?;
    let copied = match plugins_from {
        Some(from) => copy_missing_plugins(from, bin_dir, &["loopback".to_string()])?,
        None => Vec::new(),
    };
    Ok((write_whole(bin_dir, PLUGIN_TYPE, &binary, 0o755)?, copied))
}

/// Writes only the list, validated first: what the agent of a node of a
/// cluster kept in etcd writes for the range it leased.
pub fn write_list(o: &InstallOptions) -> Result<PathBuf> {
    let list = conflist(o);
    validate(&list).context("the configuration would be refused by the plugin")?;
    write_conf(o, &list)
}

fn write_conf(o: &InstallOptions, list: &Value) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(list)? + "\n";
    write_whole(&o.conf_dir, &o.conf_file, text.as_bytes(), 0o644)
}

/// Reads a configuration list file and returns our plugin's configuration.
pub fn read_list(path: &Path) -> Result<Value> {
    use std::io::Read;
    let max = crate::model::MAX_TOPOLOGY_BYTES;
    let mut bytes = Vec::new();
    // Read no more than the limit allows (and a byte to tell a larger file).
    fs::File::open(path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > max {
        bail!(
            "{} is larger than {max} bytes; a configuration list is a small JSON file: check \
             the path",
            path.display()
        );
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> InstallOptions {
        InstallOptions {
            plugin: PathBuf::from("/nonexistent"),
            bin_dir: PathBuf::from("/opt/cni/bin"),
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            conf_file: "10-vethctl.conflist".into(),
            name: "vethnet".into(),
            mode: "tc".into(),
            ipam: "veth-builtin".into(),
            subnet: "10.244.0.0/24".into(),
            subnet6: Some("fd00:10:244::/64".into()),
            mtu: None,
            chain: vec!["portmap".into()],
            log_file: None,
            log_level: None,
            plugins_from: None,
            cluster: None,
        }
    }

    #[test]
    fn the_list_serves_old_and_new_runtimes_and_validates() {
        let list = conflist(&options());
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["cniVersions"], json!(["1.0.0", "1.1.0"]));
        assert_eq!(list["plugins"][0]["ipam"]["subnet6"], "fd00:10:244::/64");
        assert_eq!(list["plugins"][1]["capabilities"]["portMappings"], true);
        let conf = validate(&list).unwrap();
        assert_eq!(conf.name, "vethnet");
        let mut host_local = options();
        host_local.ipam = "host-local".into();
        let list = conflist(&host_local);
        assert_eq!(
            list["plugins"][0]["ipam"]["ranges"][1][0]["subnet"],
            "fd00:10:244::/64"
        );
        validate(&list).unwrap();
    }

    #[test]
    fn bad_settings_are_refused_before_anything_is_written() {
        let mut o = options();
        o.mode = "pair".into();
        assert!(format!("{:#}", install(&o).unwrap_err()).contains("pair"));
        let mut o = options();
        o.name = "much-too-long-name".into();
        assert!(format!("{:#}", install(&o).unwrap_err()).contains("name"));
        let mut o = options();
        o.log_level = Some("loud".into());
        let e = format!("{:#}", install(&o).unwrap_err());
        assert!(
            e.contains("logLevel") && e.contains("error, warn, info or debug"),
            "{e}"
        );
        let mut o = options();
        o.log_file = Some("cni.log".into());
        assert!(format!("{:#}", install(&o).unwrap_err()).contains("logFile"));
    }

    #[test]
    fn the_agents_list_names_its_cluster_node_and_validates() {
        let mut o = options();
        o.cluster = Some(super::super::node_lease::Mark {
            name: "lab".into(),
            node: "n1".into(),
        });
        let list = conflist(&o);
        assert_eq!(
            list["plugins"][0]["cluster"],
            json!({"name": "lab", "node": "n1"})
        );
        let conf = validate(&list).unwrap();
        assert_eq!(super::super::node_lease::mark_of(&conf).unwrap(), o.cluster);
        assert!(conflist(&options())["plugins"][0].get("cluster").is_none());
    }

    #[test]
    fn log_settings_go_into_our_entry() {
        let mut o = options();
        o.log_file = Some("/var/log/vethctl/cni.log".into());
        o.log_level = Some("info".into());
        let list = conflist(&o);
        assert_eq!(list["plugins"][0]["logFile"], "/var/log/vethctl/cni.log");
        assert_eq!(list["plugins"][0]["logLevel"], "info");
        let conf = validate(&list).unwrap();
        assert_eq!(conf.log.level, veth_cni_protocol::LogLevel::Info);
        assert!(conf.other.get("logFile").is_none());
    }

    /// A temporary directory for the file-writing tests.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vethctl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn plugins_from_fills_in_only_what_the_bin_dir_lacks() {
        let root = scratch("plugins-from");
        let (from, bin, conf) = (root.join("image"), root.join("bin"), root.join("conf"));
        fs::create_dir_all(&from).unwrap();
        fs::create_dir_all(&bin).unwrap();
        for name in ["veth-cni", "loopback", "portmap", "bandwidth", "host-local"] {
            fs::write(from.join(name), format!("image's {name}")).unwrap();
        }
        fs::write(bin.join("portmap"), "node's portmap").unwrap();
        let mut o = options();
        o.plugin = from.join("veth-cni");
        o.bin_dir = bin.clone();
        o.conf_dir = conf;
        o.chain = vec!["portmap".into(), "bandwidth".into()];
        o.plugins_from = Some(from);
        let installed = install(&o).unwrap();
        let mut copied: Vec<_> = installed
            .copied
            .iter()
            .map(|p| p.file_name().unwrap())
            .collect();
        copied.sort();
        assert_eq!(copied, ["bandwidth", "loopback"]);
        assert_eq!(
            fs::read_to_string(bin.join("portmap")).unwrap(),
            "node's portmap"
        );
        assert_eq!(
            fs::read_to_string(bin.join("loopback")).unwrap(),
            "image's loopback"
        );
        assert!(
            !bin.join("host-local").exists(),
            "not needed: built-in IPAM"
        );
        let mode = fs::metadata(bin.join("bandwidth"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn plugins_from_without_a_needed_plugin_names_it_and_writes_no_list() {
        let root = scratch("plugins-from-missing");
        let (from, bin, conf) = (root.join("image"), root.join("bin"), root.join("conf"));
        fs::create_dir_all(&from).unwrap();
        fs::write(from.join("loopback"), "x").unwrap();
        let mut o = options();
        o.bin_dir = bin.clone();
        o.conf_dir = conf.clone();
        o.plugins_from = Some(from);
        let e = format!("{:#}", install(&o).unwrap_err());
        assert!(e.contains("--plugins-from") && e.contains("portmap"), "{e}");
        assert!(!conf.join("10-vethctl.conflist").exists());
        assert!(!bin.join("loopback").exists(), "nothing copied either");
        fs::remove_dir_all(root).unwrap();
    }
}
