//! Nodes on one machine: a uniquely named network namespace (`ip netns
//! add`) that plays a node, and the built `vethctl` / `veth-cni` run for it
//! the way an operator runs them on that node, under `ip netns exec`.
//! Dropping it (also when a test panics) takes down every network the node
//! recorded, deletes the namespace, and removes whatever the node left on
//! the host's side: its pod namespaces (`/run/netns/<node>-…`), its state
//! root and its pins (both keyed by the namespace's cookie).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{expect_success, require_root, run, unique_name, vethctl_bin, ChildGuard};

/// Where nodes keep their state and pins on the host (see
/// `veth_userspace::node`).
const STATE_NODES: &str = "/run/vethctl/_nodes";
const PINS_NODES: &str = "/sys/fs/bpf/vethctl/_nodes";

pub struct TestNode {
    pub name: String,
}

impl TestNode {
    /// A fresh node namespace with its loopback up.
    pub fn new() -> TestNode {
        require_root();
        let name = format!("{}n", unique_name());
        run("ip", &["netns", "add", &name]);
        let node = TestNode { name };
        run("ip", &["-n", &node.name, "link", "set", "lo", "up"]);
        node
    }

    /// `program args…` run inside the node as its operator would:
    /// `ip netns exec NODE program args…`.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The built vethctl run for this node.
    pub fn vethctl(&self, args: &[&str]) -> Output {
        self.command(&vethctl_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running vethctl under ip netns exec")
    }

    /// [`TestNode::vethctl`], which must succeed; its stdout.
    pub fn vethctl_ok(&self, args: &[&str]) -> String {
        let out = self.vethctl(args);
        expect_success(
            &out,
            &format!("vethctl {} in node {}", args.join(" "), self.name),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vethctl ARGS --json` for this node, parsed.
    pub fn vethctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.push("--json");
        serde_json::from_str(&self.vethctl_ok(&full)).expect("vethctl JSON")
    }

    /// vethctl started for this node (stdout and stderr piped), killed
    /// when dropped.
    pub fn spawn_vethctl(&self, args: &[&str]) -> ChildGuard {
        ChildGuard::spawn(
            &format!("vethctl {} in node {}", args.join(" "), self.name),
            self.command(&vethctl_bin())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }

    /// Output of `ip ARGS` in the node's own namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// The node's state root on the host, found by the name it records
    /// (`None` before vethctl first ran there, or after it forgot it).
    pub fn state_root(&self) -> Option<PathBuf> {
        std::fs::read_dir(STATE_NODES)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|dir| {
                std::fs::read_to_string(dir.join("netns")).is_ok_and(|n| n.trim() == self.name)
            })
    }

    /// The node's pins on the host's bpffs: `<PINS_NODES>/<boot>-<cookie>`.
    pub fn pins_root(&self) -> Option<PathBuf> {
        let cookie = self.state_root()?.file_name()?.to_owned();
        Some(Path::new(PINS_NODES).join(cookie))
    }

    /// Names under /run/netns this node's vethctl made (`<node>-…`).
    pub fn pod_namespaces(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Networks recorded in the node's state root.
    fn recorded_networks(&self) -> Vec<String> {
        let Some(root) = self.state_root() else {
            return Vec::new();
        };
        std::fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join("topology.toml").exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for TestNode {
    fn default() -> Self {
        TestNode::new()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        for network in self.recorded_networks() {
            let out = self.vethctl(&["down", "-n", &network]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: vethctl down -n {network} in node {} failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // What a failed `down` (or the code under test) left: all of it
        // this test's own, by the node's unique name and cookie.
        for netns in self.pod_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        }
        if let Some(pins) = self.pins_root() {
            let _ = std::fs::remove_dir_all(pins);
        }
        if let Some(root) = self.state_root() {
            let _ = std::fs::remove_dir_all(root);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
