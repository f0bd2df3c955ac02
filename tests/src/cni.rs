//! Harness for the CNI tests (tests/tests/cni.rs): the `veth-cni` plugin
//! run the way a container runtime runs it (a clean environment, the
//! `CNI_*` variables, the configuration on stdin), pod namespaces made the
//! way containerd makes them (an nsfs file bind-mounted at a path the
//! runtime chooses), and a network that is taken down when dropped, also
//! when a test panics.
//!
//! Every network has a unique name and its own /24 (and /64) of the test
//! address blocks, so tests run in parallel with each other and with the
//! other test binaries.

use std::{
    collections::BTreeSet,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use veth_userspace::{
    dataplane::Pins,
    endpoint::host_veth_name,
    netlink::netns,
    state::{link_mark, StateDir},
};

use crate::{require_root, unique_name, AddressBlock, TempDir};

/// Where the reference plugins are (Debian's containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The plugin built in this package (same code as `veth-cni`), next to
/// the integration tests' `deps/` directory.
pub fn plugin_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("veth-cni-test");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with cargo",
        bin.display()
    );
    bin
}

/// What one run of the plugin said.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The exit code (`None`: killed by a signal).
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed (`Null` when empty).
    pub json: Value,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.exit == Some(0)
    }

    /// The result, which must be a success.
    pub fn expect_ok(&self, what: &str) -> &Value {
        assert!(self.is_ok(), "{what} failed: {self}");
        &self.json
    }

    /// An error result with `code` whose message mentions every one of
    /// `mentions`; returns the message.
    pub fn expect_error(&self, code: u64, mentions: &[&str], what: &str) -> String {
        assert!(
            !self.is_ok() && self.exit.is_some(),
            "{what} must fail: {self}"
        );
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "{what}: error code: {self}"
        );
        let msg = self.json["msg"].as_str().unwrap_or_default().to_string();
        for m in mentions {
            assert!(
                msg.contains(m),
                "{what}: the message must name {m:?}: {self}"
            );
        }
        assert!(
            self.json["cniVersion"].is_string(),
            "{what}: an error result has cniVersion: {self}"
        );
        msg
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.exit,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// How long one plugin run may take before the test gives up on it (a
/// loaded 2-CPU machine may take seconds for the first ADD, which loads
/// the programs).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the plugin with exactly `vars` (plus a PATH) and `stdin`, as a
/// runtime that starts it with a clean environment does.
pub fn exec(vars: &[(&str, &str)], stdin: &[u8]) -> Reply {
    exec_with(Command::new(plugin_bin()), vars, stdin)
}

/// [`exec`] of a prepared command (e.g. the plugin started through
/// `ip netns exec`).
pub fn exec_with(mut cmd: Command, vars: &[(&str, &str)], stdin: &[u8]) -> Reply {
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting the plugin");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    // Written on a thread: a plugin that answers before reading must not
    // block the test on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(out) => out.expect("waiting for the plugin"),
        Err(_) => {
            // SAFETY: kill has no memory preconditions; the child is not
            // reaped (the waiting thread has not returned).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("the plugin ({vars:?}) did not finish within {PLUGIN_TIMEOUT:?}");
        }
    };
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("the plugin wrote something that is not JSON ({e}): {stdout:?}")
        })
    };
    Reply {
        exit: out.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}

fn counter() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A network namespace the "runtime" owns: an nsfs file bind-mounted at a
/// path of the runtime's choosing, like containerd's
/// `/var/run/netns/cni-<uuid>` or a file in a directory of its own.
/// Removed (unmounted and deleted) when dropped.
pub struct Netns {
    path: PathBuf,
    dir: Option<TempDir>,
    gone: bool,
}

impl Netns {
    /// `/run/netns/vct<pid><n>` (what `ip netns` and containerd use).
    pub fn named() -> Netns {
        require_root();
        let path = PathBuf::from(format!(
            "/run/netns/vct{:04x}x{}",
            std::process::id() & 0xffff,
            counter()
        ));
        Netns::create(path, None)
    }

    /// `<tmp>/veth-cni-ns-<pid>-<n>/net`: a path outside /run/netns.
    pub fn in_dir() -> Netns {
        require_root();
        let dir = TempDir::new("veth-cni-ns");
        let path = dir.path().join("net");
        Netns::create(path, Some(dir))
    }

    fn create(path: PathBuf, dir: Option<TempDir>) -> Netns {
        let text = path.to_str().expect("a UTF-8 path");
        let _ = netns::delete(text);
        netns::create(text).unwrap_or_else(|e| panic!("creating netns {text}: {e:#}"));
        Netns {
            path,
            dir,
            gone: false,
        }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 path")
    }

    /// Removes the namespace, as a runtime does when a sandbox goes.
    pub fn delete(&mut self) {
        netns::delete(self.path()).unwrap_or_else(|e| panic!("deleting {}: {e:#}", self.path()));
        self.gone = true;
    }

    /// A command run inside the namespace (`nsenter --net=PATH`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Output of `ip ARGS` inside the namespace, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = self.command("ip").args(args).output().expect("running ip");
        crate::expect_success(&out, &format!("ip {} in {}", args.join(" "), self.path()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {text}"))
    }

    /// The link `ifname` inside the namespace, if there is one.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        let out = self
            .command("ip")
            .args(["-j", "link", "show", "dev", ifname])
            .output()
            .expect("running ip");
        if !out.status.success() {
            return None;
        }
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        links.into_iter().next()
    }

    /// `(address, prefix length)` of every global address on `ifname`.
    pub fn addresses(&self, ifname: &str) -> BTreeSet<(IpAddr, u8)> {
        self.ip_json(&["addr", "show", "dev", ifname, "scope", "global"])
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| {
                let ip = a["local"].as_str()?.parse().ok()?;
                Some((ip, a["prefixlen"].as_u64()? as u8))
            })
            .collect()
    }

    /// Pings `dst` `count` times (0.05 s apart, 1 s timeout each); the
    /// number of replies.
    pub fn ping(&self, dst: impl Into<IpAddr>, count: u32) -> u32 {
        let out = self
            .command("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
            ])
            .arg(dst.into().to_string())
            .output()
            .expect("running ping (install iputils-ping)");
        replies(&String::from_utf8_lossy(&out.stdout))
    }

    /// Waits (up to 10 s) for a first reply from `dst`, then expects all
    /// of `count` more.
    pub fn expect_pings(&self, dst: impl Into<IpAddr>, count: u32, what: &str) {
        let dst = dst.into();
        crate::wait_until(
            Duration::from_secs(10),
            &format!("{what}: a first ping from {} to {dst}", self.path()),
            || self.ping(dst, 1) == 1,
        );
        assert_eq!(
            self.ping(dst, count),
            count,
            "{what}: {count} pings from {} to {dst}",
            self.path()
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.gone {
            let _ = netns::delete(self.path());
        }
        drop(self.dir.take());
    }
}

/// Replies counted in ping's summary ("5 packets transmitted, 5 received").
pub fn replies(ping_output: &str) -> u32 {
    ping_output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A pod as the runtime sees it: a sandbox id (64 hex digits, as
/// containerd's), the interface name to create, and its namespace.
pub struct Pod {
    pub id: String,
    pub ifname: String,
    pub netns: Netns,
}

impl Pod {
    /// A pod with a fresh id, `eth0`, in a namespace under /run/netns.
    pub fn new() -> Pod {
        Pod::with(Netns::named())
    }

    /// A pod with a fresh id and `eth0` in `netns`.
    pub fn with(netns: Netns) -> Pod {
        Pod {
            id: container_id(),
            ifname: "eth0".into(),
            netns,
        }
    }

    /// The pod's addresses as the pod's namespace has them on `ifname`.
    pub fn addresses(&self) -> BTreeSet<(IpAddr, u8)> {
        self.netns.addresses(&self.ifname)
    }

    /// The pod's IPv4 address (the only one on its interface).
    pub fn ipv4(&self) -> Ipv4Addr {
        let v4: Vec<Ipv4Addr> = self
            .addresses()
            .into_iter()
            .filter_map(|(ip, _)| match ip {
                IpAddr::V4(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(v4.len(), 1, "one IPv4 address on {}: {v4:?}", self.ifname);
        v4[0]
    }
}

impl Default for Pod {
    fn default() -> Self {
        Pod::new()
    }
}

/// 64 hex digits, unique per call and process (pid, counter, clock).
pub fn container_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{}-{}-{nanos}", std::process::id(), counter());
    let mut out = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0u8..4 {
        for b in seed.bytes().chain([round]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        out += &format!("{h:016x}");
    }
    out
}

/// The IPAM a test network uses.
pub enum Ipam {
    /// `veth-builtin` with the block's IPv4 /24.
    Builtin,
    /// `veth-builtin` with the /24 and the block's IPv6 /64.
    BuiltinDual,
    /// Debian's `host-local` with the /24, its state in a directory of
    /// the test's own (never /var/lib/cni).
    HostLocal(TempDir),
}

/// A CNI network under test: a unique name (which is its `vethctl`
/// topology name), a reserved address block, and every attachment the
/// test ever asked for. Dropping it DELs them all, runs `vethctl down -n
/// NAME` and checks that nothing of it is left: no state, pins, marked
/// links, node address, records or address allocations (host-local's
/// too).
pub struct CniNet {
    pub name: String,
    pub mode: String,
    pub block: AddressBlock,
    pub ipam: Ipam,
    attachments: Mutex<BTreeSet<(String, String)>>,
}

impl CniNet {
    /// A network in `mode` with the built-in IPAM, IPv4 only.
    pub fn builtin(mode: &str) -> CniNet {
        CniNet::new(mode, |_| Ipam::Builtin)
    }

    /// A dual-stack network in `mode` with the built-in IPAM.
    pub fn dual(mode: &str) -> CniNet {
        CniNet::new(mode, |_| Ipam::BuiltinDual)
    }

    /// A network in `mode` whose addresses come from `host-local`.
    pub fn host_local(mode: &str) -> CniNet {
        CniNet::new(mode, |_| {
            Ipam::HostLocal(TempDir::new("veth-cni-host-local"))
        })
    }

    fn new(mode: &str, ipam: impl FnOnce(&str) -> Ipam) -> CniNet {
        require_root();
        let name = unique_name();
        let block = AddressBlock::reserve(&name);
        CniNet {
            ipam: ipam(&name),
            name,
            mode: mode.into(),
            block,
            attachments: Mutex::new(BTreeSet::new()),
        }
    }

    /// The `ipam` object of the configuration.
    pub fn ipam_conf(&self) -> Value {
        match &self.ipam {
            Ipam::Builtin => json!({"type": "veth-builtin", "subnet": self.block.cidr}),
            Ipam::BuiltinDual => json!({
                "type": "veth-builtin", "subnet": self.block.cidr, "subnet6": self.block.cidr6
            }),
            Ipam::HostLocal(dir) => json!({
                "type": "host-local",
                "ranges": [[{"subnet": self.block.cidr}]],
                "dataDir": dir.path(),
            }),
        }
    }

    /// The configuration as a runtime hands it to the plugin, with
    /// `cniVersion` = `version`.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "veth-cni",
            "mode": self.mode,
            "mtu": 1500,
            "ipam": self.ipam_conf(),
        })
    }

    /// The block's IPv4 address with host part `host`.
    pub fn v4(&self, host: u8) -> Ipv4Addr {
        let net: Ipv4Addr = self
            .block
            .cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("an IPv4 block");
        let [a, b, c, _] = net.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// The block's IPv6 address with host part `host`.
    pub fn v6(&self, host: u16) -> Ipv6Addr {
        let net: Ipv6Addr = self
            .block
            .cidr6
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("an IPv6 block");
        Ipv6Addr::from(u128::from(net) + u128::from(host))
    }

    /// The node's address in the network (the first of the range).
    pub fn node(&self) -> Ipv4Addr {
        self.v4(1)
    }

    /// Brings the network up (its programs loaded and pinned, its node
    /// address made) with an ADD and a DEL of a throwaway pod, so that the
    /// ADDs that follow only do endpoint work (under the shared lock).
    pub fn bring_up(&self) {
        let pod = Pod::new();
        self.add(&pod);
        self.del(&pod, None);
    }

    /// Holds vethctl's global change lock shared until dropped: ADD and DEL
    /// still run (they take only their network's lock), while an agent of
    /// an older build on this machine, which takes the global lock
    /// exclusively before it acts and does not know CNI endpoints (it would
    /// forget their map entries within seconds), leaves the maps alone.
    /// This build's agent knows them and is not held off.
    /// The network must be up already ([`CniNet::bring_up`]): an ADD that
    /// has to bring it up waits for the exclusive lock. Never held across
    /// GC or `vethctl up`/`down` (exclusive too).
    pub fn quiet(&self) -> Quiet {
        use std::os::fd::AsRawFd;
        // vethctl's global change lock (`state::lock`), which agents of
        // older builds take exclusively before they touch any map.
        let path = std::path::Path::new(veth_userspace::state::STATE_ROOT).join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("opening the change lock");
        // SAFETY: flock on an fd we own.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) };
        assert_eq!(locked, 0, "taking the change lock shared");
        Quiet(file)
    }

    /// The CNI variables of `command` for `pod`.
    pub fn vars<'a>(&self, command: &'a str, pod: &'a Pod) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_NETNS", pod.netns.path()),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ]
    }

    /// Runs the plugin with `vars` and `conf`, remembering the attachment
    /// (`CNI_CONTAINERID`, `CNI_IFNAME`) of an ADD so the drop DELs it.
    pub fn run(&self, vars: &[(&str, &str)], conf: &Value) -> Reply {
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        if get("CNI_COMMAND").as_deref() == Some("ADD") {
            if let (Some(id), Some(ifname)) = (get("CNI_CONTAINERID"), get("CNI_IFNAME")) {
                self.attachments
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((id, ifname));
            }
        }
        exec(vars, conf.to_string().as_bytes())
    }

    /// Remembers `pod`'s attachment for the drop's DEL (for an ADD run
    /// by other means than [`CniNet::run`]).
    pub fn remember(&self, pod: &Pod) {
        self.attachments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pod.id.clone(), pod.ifname.clone()));
    }

    /// ADD of `pod` with a 1.0.0 configuration, which must succeed; the
    /// result.
    pub fn add(&self, pod: &Pod) -> Value {
        self.add_with(pod, &self.conf("1.0.0"), &[])
    }

    /// ADD of `pod` with `conf` and extra variables, which must succeed.
    pub fn add_with(&self, pod: &Pod, conf: &Value, extra: &[(&str, &str)]) -> Value {
        let mut vars = self.vars("ADD", pod);
        vars.extend_from_slice(extra);
        self.run(&vars, conf)
            .expect_ok(&format!("ADD of {} to {}", pod.id, self.name))
            .clone()
    }

    /// DEL of `pod` the first way containerd sends it (namespace and
    /// `prevResult`), which must succeed.
    pub fn del(&self, pod: &Pod, prev_result: Option<&Value>) {
        let mut conf = self.conf("1.0.0");
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        self.run(&self.vars("DEL", pod), &conf)
            .expect_ok(&format!("DEL of {} from {}", pod.id, self.name));
    }

    /// DEL of `pod` the second way containerd sends it: `CNI_NETNS=""` and
    /// no `prevResult`.
    pub fn del_without_netns(&self, pod: &Pod) -> Reply {
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ];
        self.run(&vars, &self.conf("1.0.0"))
    }

    /// GC (1.1.0) with `cni.dev/valid-attachments` listing `valid`.
    pub fn gc(&self, valid: &[&Pod]) -> Reply {
        let mut conf = self.conf("1.1.0");
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|p| json!({"containerID": p.id, "ifname": p.ifname}))
            .collect();
        let vars = [("CNI_COMMAND", "GC"), ("CNI_PATH", REFERENCE_PLUGINS)];
        exec(&vars, conf.to_string().as_bytes())
    }

    /// STATUS (1.1.0).
    pub fn status(&self) -> Reply {
        let vars = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", REFERENCE_PLUGINS)];
        exec(&vars, self.conf("1.1.0").to_string().as_bytes())
    }

    /// The host-side veth the plugin names for `pod`.
    pub fn host_veth(&self, pod: &Pod) -> String {
        host_veth_name(&self.name, &pod.id, &pod.ifname)
    }

    /// `vethctl stats -n NAME --json`: the pairs by host-side veth.
    pub fn stats(&self) -> std::collections::BTreeMap<String, Value> {
        let out = crate::vethctl(&["stats", "-n", &self.name, "--json"], &[], None);
        crate::expect_success(&out, "vethctl stats --json");
        let json: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        json["topologies"][0]["pairs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p["host_veth"].as_str().unwrap_or_default().to_string(), p))
            .collect()
    }

    /// `vethctl status -n NAME --json`: the network.
    pub fn vethctl_status(&self) -> Value {
        let out = crate::vethctl(&["status", "-n", &self.name, "--json"], &[], None);
        crate::expect_success(&out, "vethctl status --json");
        let json: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        json["topologies"][0].clone()
    }

    /// `vethctl status -n NAME` pods by host-side veth.
    pub fn status_pods(&self) -> std::collections::BTreeMap<String, Value> {
        self.vethctl_status()["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p["host_veth"].as_str().unwrap_or_default().to_string(), p))
            .collect()
    }

    /// The state directory, `/run/vethctl/NAME`.
    pub fn state_dir(&self) -> PathBuf {
        StateDir::new(&self.name).path().to_path_buf()
    }

    /// The endpoint records' file names.
    pub fn records(&self) -> BTreeSet<String> {
        files_in(&self.state_dir().join("endpoints"))
            .into_iter()
            .filter(|f| f.ends_with(".json"))
            .collect()
    }

    /// The record file of `pod`'s attachment.
    pub fn record_of(&self, pod: &Pod) -> String {
        format!("{}@{}.json", pod.ifname, pod.id)
    }

    /// Every address allocation: the built-in pool's keys, or host-local's
    /// reservations (its files named by address).
    pub fn allocations(&self) -> BTreeSet<String> {
        match &self.ipam {
            Ipam::HostLocal(dir) => files_in(&dir.path().join(&self.name))
                .into_iter()
                .filter(|f| f.parse::<IpAddr>().is_ok())
                .collect(),
            _ => {
                let path = self.state_dir().join("addresses.json");
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return BTreeSet::new();
                };
                let pool: Value = serde_json::from_str(&text).expect("addresses.json");
                pool["offsets"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default()
            }
        }
    }

    /// Host links carrying this network's mark (the alias `vethctl:NAME`).
    pub fn marked_links(&self) -> Vec<String> {
        let mark = link_mark(&self.name);
        crate::ip_json(&["link", "show"])
            .into_iter()
            .filter(|l| l["ifalias"].as_str() == Some(mark.as_str()))
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// Everything of the network still in the kernel or on disk.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .marked_links()
            .into_iter()
            .map(|l| format!("link {l}"))
            .collect();
        if self.state_dir().exists() {
            left.push(format!("state {}", self.state_dir().display()));
        }
        let pins = Pins::new(&self.name);
        if pins.exist() {
            left.push(format!("pins {}", pins.root().display()));
        }
        let node = format!(" {}/32 ", self.node());
        for line in crate::run("ip", &["-o", "-4", "addr", "show", "dev", "lo"]).lines() {
            if line.contains(&node) {
                left.push(format!("address {}", line.trim()));
            }
        }
        if let Ipam::HostLocal(_) = self.ipam {
            left.extend(
                self.allocations()
                    .into_iter()
                    .map(|a| format!("host-local reservation {a}")),
            );
        }
        left
    }

    /// Last resort after a failed clean-up: our marked links, pins, state.
    fn force_cleanup(&self) {
        for link in self.marked_links() {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
        }
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.node()), "dev", "lo"])
            .output();
        let _ = std::fs::remove_dir_all(Pins::new(&self.name).root());
        let _ = std::fs::remove_dir_all(self.state_dir());
        if let Ipam::HostLocal(dir) = &self.ipam {
            let _ = std::fs::remove_dir_all(dir.path().join(&self.name));
        }
    }
}

impl Drop for CniNet {
    fn drop(&mut self) {
        let attachments =
            std::mem::take(&mut *self.attachments.lock().unwrap_or_else(|e| e.into_inner()));
        let conf = self.conf("1.0.0").to_string();
        let mut failed = Vec::new();
        for (id, ifname) in &attachments {
            let vars = [
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id.as_str()),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", ifname.as_str()),
                ("CNI_PATH", REFERENCE_PLUGINS),
            ];
            let reply = exec(&vars, conf.as_bytes());
            // An attachment the plugin refused (a bad id or name) was never
            // made: code 4 is its DEL's answer too.
            if !reply.is_ok() && reply.json["code"].as_u64() != Some(4) {
                failed.push(format!("DEL {ifname}@{id}: {reply}"));
            }
        }
        let out = crate::vethctl(&["down", "-n", &self.name], &[], None);
        if !out.status.success() {
            failed.push(format!(
                "vethctl down -n {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let left = self.leftovers();
        if !left.is_empty() {
            self.force_cleanup();
        }
        if (!failed.is_empty() || !left.is_empty()) && !std::thread::panicking() {
            panic!(
                "network {} was not cleaned up: {failed:?}; left behind: {left:?}",
                self.name
            );
        }
    }
}

/// See [`CniNet::quiet`].
pub struct Quiet(#[allow(dead_code)] std::fs::File);

/// File names in `dir` (none if it does not exist).
pub fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A file renamed for the duration of a test and renamed back when
/// dropped (also on panic): e.g. a program's pin, to simulate a dataplane
/// whose programs are gone without destroying them.
pub struct Renamed {
    from: PathBuf,
    to: PathBuf,
}

impl Renamed {
    pub fn new(from: &Path) -> Renamed {
        let mut to = from.as_os_str().to_owned();
        // bpffs refuses names with dots.
        to.push("_moved_by_test");
        let to = PathBuf::from(to);
        std::fs::rename(from, &to).unwrap_or_else(|e| panic!("renaming {}: {e}", from.display()));
        Renamed {
            from: from.to_path_buf(),
            to,
        }
    }
}

impl Renamed {
    /// Removes the renamed file instead of restoring it (something new
    /// took its place meanwhile).
    pub fn discard(mut self) {
        let _ = std::fs::remove_file(&self.to);
        self.to = PathBuf::new();
    }
}

impl Drop for Renamed {
    fn drop(&mut self) {
        if !self.to.as_os_str().is_empty() {
            let _ = std::fs::rename(&self.to, &self.from);
        }
    }
}

/// A link in the host namespace made by the test to stand for someone
/// else's (no alias), deleted when dropped.
pub struct ForeignLink {
    pub name: String,
}

impl ForeignLink {
    /// A bridge called `name` (the `dummy` module may be missing; a bridge
    /// needs nothing), optionally with an alias.
    pub fn bridge(name: &str, alias: Option<&str>) -> ForeignLink {
        crate::run("ip", &["link", "add", name, "type", "bridge"]);
        if let Some(alias) = alias {
            crate::run("ip", &["link", "set", "dev", name, "alias", alias]);
        }
        ForeignLink { name: name.into() }
    }

    pub fn ifindex(&self) -> Option<u64> {
        crate::ip_json(&["link", "show", "dev", &self.name])
            .first()
            .and_then(|l| l["ifindex"].as_u64())
    }
}

impl Drop for ForeignLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A child process (a long ping, say) killed when dropped.
pub struct Child(Option<std::process::Child>);

impl Child {
    pub fn new(child: std::process::Child) -> Child {
        Child(Some(child))
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits up to `timeout` for it to exit; its stdout.
    pub fn wait(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while self.running() {
            assert!(Instant::now() < deadline, "still running after {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = self.0.take().expect("a child");
        let out = child.wait_with_output().expect("its output");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `condition` holds (up to `timeout`), for what the kernel
/// finishes in the background (a namespace's links going with it).
pub fn eventually(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
