//! A cluster kept in etcd, in the lab: a private etcd ([`TestEtcd`]), a
//! scratch directory for settings files and the agents' CNI lists, a
//! block of underlay addresses of the test's own, and node namespaces
//! whose agents (`ip netns exec NODE vethctl agent --cluster …
//! --cluster-node …`) reach etcd through its unix socket, which lives in
//! the file system every namespace shares; and ways to look at what the
//! agents did: routes, `/metrics` (fetched inside the node, where the
//! agent listens on its loopback), `status`, and keys written straight
//! into etcd with `etcdctl`, as a writer other than an agent would.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    cni::{exec_with, plugin_bin, Pod as CniPod, REFERENCE_PLUGINS},
    etcd::TestEtcd,
    expect_success,
    node::TestNode,
    require_root, run, unique_name, vethctl, wait_until, AddressBlock, ChildGuard, TempDir,
};

pub struct EtcdLab {
    pub etcd: TestEtcd,
    pub dir: TempDir,
    /// The underlay block's first three octets: node `i` is `{base}.{i}`.
    pub base: String,
    _block: AddressBlock,
}

impl EtcdLab {
    /// A lab around an etcd on a unix socket.
    pub fn start() -> EtcdLab {
        EtcdLab::with(TestEtcd::start())
    }

    pub fn with(etcd: TestEtcd) -> EtcdLab {
        require_root();
        let block = AddressBlock::reserve(&unique_name());
        EtcdLab {
            etcd,
            dir: TempDir::new("vethctl-etcd-test"),
            base: block.cidr.trim_end_matches(".0/24").to_string(),
            _block: block,
        }
    }

    /// A settings file named `name`: `cluster_cidr` with room for `ranges`
    /// IPv4 node ranges (/24 each).
    pub fn settings(&self, name: &str, cross_node: &str, ranges: u32) -> PathBuf {
        let len = 24 - ranges.trailing_zeros();
        let text = format!(
            "# kept in etcd\nname = \"{name}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
             cluster_cidr = \"10.251.0.0/{len}\"\ncluster_cidr6 = \"fd00:10:251::/56\"\n\
             [underlay]\ncidr6 = \"fd00:198:251::/64\"\n"
        );
        let path = self.dir.path().join(format!("{name}-{cross_node}.toml"));
        std::fs::write(&path, text).expect("writing the settings");
        path
    }

    /// `vethctl cluster ARGS` against this etcd (with the client
    /// certificate, if TLS, when `with_cert`).
    pub fn cluster(&self, with_cert: bool, args: &[&str]) -> Output {
        let mut full: Vec<String> = vec!["cluster".into()];
        full.extend(args.iter().map(|a| a.to_string()));
        full.extend(self.etcd.args(with_cert));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        vethctl(&full, &[], None)
    }

    pub fn init(&self, file: &Path) -> Output {
        self.cluster(true, &["init", "-t", file.to_str().unwrap()])
    }

    /// A cluster of a unique name stored (see [`EtcdLab::settings`]); its
    /// name.
    pub fn init_ok(&self, cross_node: &str, ranges: u32) -> String {
        let name = unique_name();
        let file = self.settings(&name, cross_node, ranges);
        expect_success(&self.init(&file), "cluster init");
        name
    }

    /// `vethctl cluster status --json`.
    pub fn status(&self) -> Value {
        let out = self.cluster(true, &["status", "--json"]);
        expect_success(&out, "vethctl cluster status");
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Node `name` as `cluster status` shows it.
    pub fn status_of(&self, name: &str) -> Option<Value> {
        self.status()["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    }

    /// Waits until node `name` is alive with an IPv4 range; that range.
    pub fn wait_alive(&self, name: &str) -> String {
        let mut range = String::new();
        wait_until(
            Duration::from_secs(15),
            &format!("node {name} alive"),
            || match self.status_of(name) {
                Some(n) if n["alive"] == true && n["pod_cidr"].is_string() => {
                    range = n["pod_cidr"].as_str().unwrap().to_string();
                    true
                }
                _ => false,
            },
        );
        range
    }

    /// Where the agent of node `name` writes its CNI list.
    pub fn conf_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent of node `name` in `node` (its CNI list into
    /// [`EtcdLab::conf_dir`]), with `more` arguments.
    pub fn agent(&self, node: &TestNode, name: &str, more: &[&str]) -> ChildGuard {
        self.agent_in(node, name, &self.conf_dir(name), more)
    }

    /// [`EtcdLab::agent`] writing its CNI list into `conf`.
    pub fn agent_in(&self, node: &TestNode, name: &str, conf: &Path, more: &[&str]) -> ChildGuard {
        let mut args: Vec<String> = vec!["agent".into(), "--cluster-node".into(), name.into()];
        args.extend(["--cni-conf-dir".into(), conf.display().to_string()]);
        args.extend(more.iter().map(|a| a.to_string()));
        args.extend(self.etcd.args(true));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.spawn_vethctl(&args)
    }

    /// Puts `key` = `value` into etcd with etcdctl, no lease.
    pub fn put(&self, key: &str, value: &str) {
        let endpoints = format!("--endpoints={}", self.etcd.endpoints);
        run("etcdctl", &[&endpoints, "put", key, value]);
    }

    /// Node `i` (1-based) with an underlay interface `eth0` at
    /// `{base}.{i}/24`: one end of a veth pair whose both ends are in the
    /// node (nothing is sent through it; this kernel has no dummy links).
    pub fn node_with_underlay(&self, i: u32) -> TestNode {
        let node = TestNode::new();
        node.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        node.ip(&[
            "addr",
            "add",
            &format!("{}.{i}/24", self.base),
            "dev",
            "eth0",
        ]);
        node.ip(&["link", "set", "eth0", "up"]);
        node
    }

    /// Node `i` (1-based) plugged into `switch` by its `eth0`, at
    /// `{base}.{i}/24` and `fd00:198:251::{i}/64`.
    pub fn plug(&self, switch: &Switch, i: u32) -> TestNode {
        switch.plug(
            i,
            &format!("{}.{i}/24", self.base),
            &format!("fd00:198:251::{i}/64"),
        )
    }

    /// The agent of `node`, plugged in as node `i` (`n{i}`), started with
    /// a liveness TTL of [`TTL`] and `more` arguments, once it is alive.
    pub fn start_member(&self, node: TestNode, i: u32, more: &[&str]) -> Member {
        let name = format!("n{i}");
        let ttl = TTL.as_secs().to_string();
        let mut args = vec!["--liveness-ttl", &ttl];
        args.extend(more);
        let agent = self.agent(&node, &name, &args);
        let range = self.wait_alive(&name);
        Member {
            agent,
            node,
            conf: self.conf_dir(&name),
            range,
            address: format!("{}.{i}", self.base),
        }
    }

    /// Node `i` plugged into `switch` and its agent alive.
    pub fn member(&self, switch: &Switch, i: u32, more: &[&str]) -> Member {
        self.start_member(self.plug(switch, i), i, more)
    }
}

/// The liveness TTL of [`EtcdLab::member`]'s agents.
pub const TTL: Duration = Duration::from_secs(3);

/// The IPv4 range of the CNI list in `conf_dir`.
pub fn conf_range(conf_dir: &Path) -> String {
    conflist(conf_dir)["plugins"][0]["ipam"]["subnet"]
        .as_str()
        .unwrap()
        .to_string()
}

fn conflist(conf_dir: &Path) -> Value {
    let text = std::fs::read_to_string(conf_dir.join("10-vethctl.conflist")).expect("the list");
    serde_json::from_str(&text).expect("the list is JSON")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A switch for node namespaces: a bridge in a namespace of its own.
pub struct Switch(TestNode);

impl Switch {
    pub fn new() -> Switch {
        let switch = TestNode::new();
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        Switch(switch)
    }

    /// A node plugged in by its `eth0` on port `i`, at `address` and
    /// `address6`.
    fn plug(&self, i: u32, address: &str, address6: &str) -> TestNode {
        let (switch, node) = (&self.0, TestNode::new());
        let port = format!("{}p{i}", switch.name);
        let pair = format!(
            "link add {port} netns {} type veth peer name eth0 netns {}",
            switch.name, node.name
        );
        run("ip", &pair.split(' ').collect::<Vec<_>>());
        switch.ip(&["link", "set", &port, "master", "br0", "up"]);
        node.ip(&["addr", "add", address, "dev", "eth0"]);
        node.ip(&["addr", "add", address6, "dev", "eth0", "nodad"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node
    }
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new()
    }
}

/// A node of a lab on a switch: its agent, range and underlay address.
/// Fields drop in order: the agent stops before its node goes down.
pub struct Member {
    pub agent: ChildGuard,
    pub node: TestNode,
    pub conf: PathBuf,
    pub range: String,
    pub address: String,
}

impl Member {
    /// Whether the node routes `range` (host-gw: through the other node).
    pub fn routes(&self, range: &str) -> bool {
        !self.route(range).is_empty()
    }

    /// The route to `range` in this node (empty: none).
    pub fn route(&self, range: &str) -> String {
        self.node.ip(&["route", "show", range]).trim().to_string()
    }

    /// The agent's `/metrics` (text format), fetched inside the node.
    pub fn metrics(&self) -> String {
        let out = self
            .node
            .command(Path::new("curl"))
            .args(["-sf", "--max-time", "10", "http://127.0.0.1:9435/metrics"])
            .stdin(Stdio::null())
            .output()
            .expect("running curl in the node");
        expect_success(&out, "curl /metrics in the node");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vethctl status --json` of the node.
    pub fn status(&self) -> Value {
        self.node.vethctl_json(&["status"])
    }

    /// A CNI pod on the node, added with the plugin configuration of the
    /// list its agent wrote: its IPv4 address.
    pub fn cni_pod(&self, pod: &CniPod) -> IpAddr {
        let list = conflist(&self.conf);
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_NETNS", pod.netns.path()),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ];
        let reply = exec_with(
            self.node.command(&plugin_bin()),
            &vars,
            conf.to_string().as_bytes(),
        );
        let result = reply.expect_ok("CNI ADD");
        let ip = result["ips"][0]["address"].as_str().expect("an address");
        ip.split('/').next().unwrap().parse().expect("an IP")
    }

    /// The pins of the node's network `network` (the cluster's name).
    pub fn pins(&self, network: &str) -> PathBuf {
        self.node
            .pins_root()
            .expect("the node's pins")
            .join(network)
    }
}

/// The name under /run/netns of a CNI pod's namespace.
pub fn netns_name(pod: &CniPod) -> String {
    Path::new(pod.netns.path())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The value of the series `series` (name and labels as exposed; a
/// series without labels may be exposed with `{}`) in `metrics`, if it is
/// there.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
