//! CNI directories for a runtime under test: a bin dir holding the reference
//! plugins (and any plugin of ours), a conf dir the runtime reads conflists
//! from, and a uniquely named network (bridge, address block, IPAM store)
//! with the reference `bridge` + `host-local` conflist.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{link_exists, unique_name, AddressBlock, TempDir};

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
pub const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The reference plugins every bin dir gets: containerd needs `loopback`
/// (it runs it for every pod) and the others are what conflists delegate to.
pub const REFERENCE_PLUGINS: &[&str] = &[
    "loopback",
    "host-local",
    "portmap",
    "bandwidth",
    "bridge",
    "ptp",
];

/// A unique temporary CNI bin dir (`CNI_PATH`, containerd's `bin_dir`,
/// podman's `cni_plugin_dirs`). Clones share the directory; it is removed
/// when the last clone goes, so a runtime holding one keeps its plugins
/// until it has run its last DEL.
#[derive(Clone)]
pub struct CniBinDir {
    dir: Arc<TempDir>,
}

impl CniBinDir {
    /// An empty bin dir (for an installer to fill, as on a fresh node).
    pub fn empty() -> CniBinDir {
        CniBinDir {
            dir: Arc::new(TempDir::new("vethctl-cni-bin")),
        }
    }

    /// A bin dir with symlinks to the [`REFERENCE_PLUGINS`] of
    /// [`DEBIAN_PLUGIN_DIR`].
    pub fn with_reference_plugins() -> Result<CniBinDir> {
        let bin = CniBinDir::empty();
        for name in REFERENCE_PLUGINS {
            let plugin = Path::new(DEBIAN_PLUGIN_DIR).join(name);
            if !plugin.exists() {
                bail!(
                    "{} is missing: install Debian's containernetworking-plugins \
                     (`cargo xtask setup`)",
                    plugin.display()
                );
            }
            bin.add_as(name, &plugin)?;
        }
        Ok(bin)
    }

    /// Adds the plugin at `binary` under its own file name (e.g.
    /// `target/debug/veth-cni` becomes type `veth-cni`).
    pub fn add(&self, binary: &Path) -> Result<PathBuf> {
        let name = binary
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: no file name", binary.display()))?;
        self.add_as(name, binary)
    }

    /// Adds the plugin at `binary` as type `name` (a symlink to its absolute
    /// path, so a rebuilt binary is picked up by the next call). Replaces a
    /// plugin of that name.
    pub fn add_as(&self, name: &str, binary: &Path) -> Result<PathBuf> {
        let target = binary
            .canonicalize()
            .with_context(|| format!("CNI plugin {}", binary.display()))?;
        let link = self.path().join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
        Ok(link)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The reference `portmap` plugin entry, chained after the main plugin:
/// it gets the pod's hostPorts (`runtimeConfig.portMappings`) because it
/// declares the capability. It leaves its shared chains (`CNI-HOSTPORT-*`
/// in iptables' nat table) behind, as on any node that uses it.
pub fn portmap() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

/// A binary cargo built in this workspace's target directory next to the
/// test executable's `deps/` (e.g. `target/debug/veth-cni`); panics with
/// the command that builds it when it is missing.
pub fn target_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// A unique temporary CNI conf dir (containerd's `conf_dir`, podman's
/// `network_config_dir`). Clones share it, as for [`CniBinDir`].
#[derive(Clone)]
pub struct CniConfDir {
    dir: Arc<TempDir>,
}

impl CniConfDir {
    pub fn new() -> CniConfDir {
        CniConfDir {
            dir: Arc::new(TempDir::new("vethctl-cni-conf")),
        }
    }

    /// Writes `conflist` as `file_name` (e.g. `10-net.conflist`); containerd
    /// takes the first file by name (`max_conf_num = 1`) and watches the
    /// directory, so a later write is picked up live. The file is written
    /// next to its place and renamed into it, so a watcher never reads half
    /// of it.
    pub fn write(&self, file_name: &str, conflist: &Value) -> Result<PathBuf> {
        let path = self.path().join(file_name);
        let tmp = self.path().join(format!(".{file_name}.tmp"));
        let text = serde_json::to_string_pretty(conflist)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn remove(&self, file_name: &str) -> Result<()> {
        let path = self.path().join(file_name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for CniConfDir {
    fn default() -> Self {
        CniConfDir::new()
    }
}

/// A network for one test: a unique name (also the conflist's `name`, so
/// libcni's cache files `/var/lib/cni/results/<name>-…` are ours), a unique
/// bridge name, a /24 out of 198.18.0.0/15 reserved across test processes
/// (see [`AddressBlock`]) and a private host-local store. Dropping it
/// removes the bridge the `bridge` plugin made (the plugin never does), the
/// cache files under its name and the IPAM store; drop it after the runtime
/// (declare it first).
pub struct TestNetwork {
    /// The network name, e.g. `t1a2b03n`.
    pub name: String,
    /// The bridge name for the reference `bridge` plugin, e.g. `t1a2b03br`.
    pub bridge: String,
    /// e.g. `198.18.5.0/24`.
    pub subnet: String,
    /// The first address of the subnet (the bridge's address with the
    /// reference plugins), e.g. `198.18.5.1`.
    pub gateway: Ipv4Addr,
    ipam_dir: TempDir,
    _block: AddressBlock,
}

/// Where libcni (containerd 1.6 and podman 4.3 alike) caches ADD results,
/// whatever the runtimes' configuration says.
pub const CNI_RESULTS_DIR: &str = "/var/lib/cni/results";

impl TestNetwork {
    pub fn reserve() -> TestNetwork {
        let base = unique_name();
        let block = AddressBlock::reserve(&base);
        let network: Ipv4Addr = block
            .cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("an IPv4 block");
        TestNetwork {
            name: format!("{base}n"),
            bridge: format!("{base}br"),
            subnet: block.cidr.clone(),
            gateway: Ipv4Addr::from(u32::from(network) + 1),
            ipam_dir: TempDir::new("vethctl-cni-ipam"),
            _block: block,
        }
    }

    /// The `host-local` IPAM section for this network: the whole subnet,
    /// the store in a private directory (not `/var/lib/cni/networks`).
    pub fn host_local_ipam(&self) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": self.subnet, "gateway": self.gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": self.ipam_dir.path(),
        })
    }

    /// A conflist of this network holding `plugins`, with `cniVersion`
    /// 1.0.0: what containerd 1.6 and podman 4.3 need (see RUNTIMES.md).
    /// Add `"cniVersions"` to the value for runtimes of spec 1.1.0.
    pub fn conflist(&self, plugins: Vec<Value>) -> Value {
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
    }

    /// The reference conflist: `bridge` (on [`Self::bridge`], the gateway
    /// address on it, no masquerade: traffic stays between our namespaces)
    /// with `host-local`, then [`portmap`] for hostPorts.
    pub fn bridge_conflist(&self) -> Value {
        self.conflist(vec![
            json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": self.host_local_ipam(),
            }),
            portmap(),
        ])
    }

    /// libcni's cached results of this network still on disk (one per
    /// attachment ADDed and not yet DELeted).
    pub fn cached_results(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir(CNI_RESULTS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    /// Addresses host-local still has allocated in this network's store.
    pub fn allocated_addresses(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir.path().join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Host interfaces enslaved to this network's bridge (the host ends of
    /// the pods' veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        if !link_exists(&self.bridge) {
            return Vec::new();
        }
        crate::ip_json(&["link", "show", "master", &self.bridge])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if link_exists(&self.bridge) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.bridge])
                .output();
        }
        for file in self.cached_results() {
            let _ = std::fs::remove_file(file);
        }
    }
}
