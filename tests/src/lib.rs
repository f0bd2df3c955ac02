//! Harness for the integration tests: uniquely named topologies that are
//! removed when dropped (also when a test panics), traffic between their
//! pods, and looks at the kernel from outside (ip, bpffs, /proc).
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmarking
//! network devices), one /24 per topology reserved across test processes;
//! every packet stays between namespaces a test made.

pub mod attack;
pub mod cni;
pub mod daemonset;
pub mod etcd;
pub mod etcd_lab;
pub mod frames;
pub mod node;
pub mod outside;
pub mod runtime;
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use veth_userspace::{
    dataplane::Pins,
    model::{Mode, Pod, Topology},
    netlink::netns,
    state::StateDir,
};

/// The vethctl binary built in this package (same code as `vethctl`).
/// Cargo builds it for this package's integration tests and puts it next to
/// their `deps/` directory.
pub fn vethctl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("vethctl-test");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with cargo",
        bin.display()
    );
    bin
}

/// Fails the test early, with the fix, when not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests create namespaces, veths and BPF programs: run them as root \
         (`sudo cargo xtask test`)"
    );
}

/// A unique topology name per test: pid and a counter, so parallel tests
/// and concurrent test binaries never share objects.
pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{:04x}{:02x}", std::process::id() & 0xffff, n & 0xff)
}

/// A /24 out of 198.18.0.0/15, reserved across every test process on the
/// machine (two topologies with the same addresses would fight over the
/// host routes). The reservation is a file holding the owner's pid; one
/// whose owner died is taken over. A block the host already uses (a
/// topology someone brought up by hand, say) is skipped.
///
/// Each block has an IPv6 /64 of its own derived from it, inside fd00::/8:
/// 198.18.5.0/24 goes with fd00:198:18:5::/64.
pub struct AddressBlock {
    pub cidr: String,
    pub cidr6: String,
    file: PathBuf,
}

const BLOCKS_DIR: &str = "/run/vethctl-tests/blocks";
const BLOCKS: u32 = 512;

impl AddressBlock {
    pub fn reserve(name: &str) -> AddressBlock {
        std::fs::create_dir_all(BLOCKS_DIR).expect("creating the address block directory");
        let start = name.bytes().fold(2166136261u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16777619)
        });
        for i in 0..BLOCKS {
            let block = (start + i) % BLOCKS;
            if let Some(reserved) = Self::claim(block) {
                return reserved;
            }
        }
        panic!("all {BLOCKS} test address blocks in {BLOCKS_DIR} are taken");
    }

    /// The block of `cidr` itself (a /24 of 198.18.0.0/15), for text that
    /// names its addresses, such as the README's runnable blocks; waits up
    /// to `wait` while another test process holds it.
    pub fn reserve_exact(cidr: &str, wait: Duration) -> AddressBlock {
        let octets: Vec<u32> = cidr
            .split(['.', '/'])
            .map(|o| o.parse().expect("a dotted IPv4 prefix"))
            .collect();
        assert!(
            octets.len() == 5 && octets[0] == 198 && (18..=19).contains(&octets[1]),
            "{cidr} is not a /24 of 198.18.0.0/15"
        );
        let block = (octets[1] - 18) * 256 + octets[2];
        std::fs::create_dir_all(BLOCKS_DIR).expect("creating the address block directory");
        let deadline = Instant::now() + wait;
        loop {
            if let Some(reserved) = Self::claim(block) {
                return reserved;
            }
            assert!(
                Instant::now() < deadline,
                "{cidr} stayed taken for {wait:?} (by a live test in {BLOCKS_DIR}, or in use on the host)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Takes block number `block` if no live process holds it and the host
    /// does not use its addresses.
    fn claim(block: u32) -> Option<AddressBlock> {
        let file = Path::new(BLOCKS_DIR).join(block.to_string());
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file);
        let mine = match created {
            Ok(mut f) => f
                .write_all(std::process::id().to_string().as_bytes())
                .is_ok(),
            Err(_) => {
                let owner = std::fs::read_to_string(&file).unwrap_or_default();
                let alive =
                    Path::new("/proc").join(owner.trim()).exists() && !owner.trim().is_empty();
                !alive && std::fs::write(&file, std::process::id().to_string()).is_ok()
            }
        };
        if !mine {
            return None;
        }
        let (second, third) = (18 + block / 256, block % 256);
        let cidr = format!("198.{second}.{third}.0/24");
        let cidr6 = format!("fd00:198:{second}:{third}::/64");
        if block_in_use(&cidr, &cidr6) {
            let _ = std::fs::remove_file(&file);
            return None;
        }
        Some(AddressBlock { cidr, cidr6, file })
    }
}

/// Whether the host has a route or an address inside `cidr` or `cidr6`, or
/// a topology that is up (a benchmark's, say) covers them.
fn block_in_use(cidr: &str, cidr6: &str) -> bool {
    if recorded_ranges_overlap(cidr, cidr6) {
        return true;
    }
    let nonempty = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    nonempty(&["-o", "-4", "route", "show", "table", "all", "root", cidr])
        || nonempty(&["-o", "-4", "addr", "show", "to", cidr])
        || nonempty(&["-o", "-6", "route", "show", "table", "all", "root", cidr6])
        || nonempty(&["-o", "-6", "addr", "show", "to", cidr6])
}

impl Drop for AddressBlock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A recorded topology's pod ranges overlap `cidr` or `cidr6`.
fn recorded_ranges_overlap(cidr: &str, cidr6: &str) -> bool {
    let split = |c: &str| -> Option<(String, u32)> {
        let (net, len) = c.split_once('/')?;
        Some((net.to_string(), len.parse().ok()?))
    };
    let (Some((v4, len4)), Some((v6, len6))) = (split(cidr), split(cidr6)) else {
        return false;
    };
    let (Ok(v4), Ok(v6)) = (v4.parse::<Ipv4Addr>(), v6.parse::<Ipv6Addr>()) else {
        return false;
    };
    // Two prefixes overlap when they agree on the shorter one's bits.
    let same4 = |a: Ipv4Addr, b: Ipv4Addr, len: u32| {
        let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
        u32::from(a) & mask == u32::from(b) & mask
    };
    let same6 = |a: Ipv6Addr, b: Ipv6Addr, len: u32| {
        let mask = u128::MAX.checked_shl(128 - len.min(128)).unwrap_or(0);
        u128::from(a) & mask == u128::from(b) & mask
    };
    let names = veth_userspace::state::recorded_topologies().unwrap_or_default();
    names.iter().any(|name| {
        let Ok(Some(t)) = StateDir::new(name).load() else {
            return false;
        };
        let p4 = t.pod_cidr;
        let overlaps4 = same4(p4.network(), v4, u32::from(p4.prefix_len()).min(len4));
        let overlaps6 = t
            .pod_cidr6
            .is_some_and(|p6| same6(p6.network(), v6, u32::from(p6.prefix_len()).min(len6)));
        overlaps4 || overlaps6
    })
}

/// A topology under test. Dropping it runs `vethctl down` and checks that
/// nothing is left.
pub struct TestTopology {
    pub topology: Topology,
    pub file: PathBuf,
    down_on_drop: bool,
    /// Released after the topology is down (fields drop after `drop`).
    _block: Option<AddressBlock>,
}

impl TestTopology {
    /// A topology with the given pods (names of at most 7 characters).
    pub fn new(pods: &[&str]) -> TestTopology {
        let name = unique_name();
        let block = AddressBlock::reserve(&name);
        let mut text = format!(
            "name = \"{name}\"\nmode = \"tc\"\npod_cidr = \"{}\"\n",
            block.cidr
        );
        for pod in pods {
            text += &format!("\n[[pods]]\nname = \"{pod}\"\n");
        }
        let mut t = TestTopology::from_text(&text);
        t._block = Some(block);
        t
    }

    /// A dual-stack topology in `mode` ("tc", "routed", "bridge") with the
    /// given pods (names of at most 7 characters): IPv4 from a reserved
    /// block, IPv6 from the /64 derived from it.
    pub fn dual_stack(mode: &str, pods: &[&str]) -> TestTopology {
        TestTopology::reserved(|name, block| {
            let mut text = format!(
                "name = \"{name}\"\nmode = \"{mode}\"\npod_cidr = \"{}\"\npod_cidr6 = \"{}\"\n",
                block.cidr, block.cidr6
            );
            for pod in pods {
                text += &format!("\n[[pods]]\nname = \"{pod}\"\n");
            }
            text
        })
    }

    /// A topology whose text `make(name, block)` writes, with a unique name
    /// and a reserved address block (held until the topology is dropped).
    pub fn reserved(make: impl FnOnce(&str, &AddressBlock) -> String) -> TestTopology {
        let name = unique_name();
        let block = AddressBlock::reserve(&name);
        let mut t = TestTopology::from_text(&make(&name, &block));
        t._block = Some(block);
        t
    }

    /// A topology from TOML text (which must be valid).
    pub fn from_text(text: &str) -> TestTopology {
        require_root();
        let topology = Topology::from_toml(text).expect("test topology is valid");
        let file = std::env::temp_dir().join(format!("vethctl-{}.toml", topology.name));
        std::fs::write(&file, text).expect("writing the topology file");
        TestTopology {
            topology,
            file,
            down_on_drop: true,
            _block: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.topology.name
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.topology.pod(name).expect("pod in topology")
    }

    /// Runs vethctl with `args` followed by `--topology <file>`.
    pub fn vethctl(&self, args: &[&str]) -> Output {
        vethctl(args, &[], Some(&self.file))
    }

    /// Starts vethctl with `args` followed by `--topology <file>` as a
    /// child with stdout and stderr piped; killed when dropped.
    pub fn spawn_vethctl(&self, args: &[&str]) -> ChildGuard {
        ChildGuard::spawn(
            &format!("vethctl {}", args.join(" ")),
            Command::new(vethctl_bin())
                .args(args)
                .arg("--topology")
                .arg(&self.file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }

    /// `vethctl up`, which must succeed.
    pub fn up(&self) {
        expect_success(&self.vethctl(&["up"]), "vethctl up");
    }

    /// `vethctl up --repair`, which must succeed.
    pub fn up_repair(&self) {
        expect_success(&self.vethctl(&["up", "--repair"]), "vethctl up --repair");
    }

    /// `text` as the next `up` will address it: pods that are up keep their
    /// addresses (vethctl records them).
    fn parse_keeping(&self, text: &str) -> Topology {
        let recorded = StateDir::new(&self.topology.name)
            .load_addresses()
            .unwrap_or_default();
        Topology::from_toml_keeping(text, &recorded).expect("a valid topology")
    }

    /// Replaces the description, file and parsed topology (e.g. to add a
    /// pod); the name must stay.
    pub fn rewrite(&mut self, text: &str) {
        let topology = self.parse_keeping(text);
        assert_eq!(
            topology.name, self.topology.name,
            "a rewrite keeps the name"
        );
        std::fs::write(&self.file, text).expect("writing the topology file");
        self.topology = topology;
    }

    /// `vethctl down`, which must succeed.
    pub fn down(&self) {
        expect_success(&self.vethctl(&["down"]), "vethctl down");
    }

    /// `vethctl mode set MODE`, which must succeed. The test's file follows
    /// (as `mode set` leaves the user's file alone), so a later `up` keeps
    /// the mode.
    pub fn mode_set(&mut self, mode: &str) {
        expect_success(
            &self.vethctl(&["mode", "set", mode]),
            &format!("vethctl mode set {mode}"),
        );
        let mode: Mode = mode.parse().expect("a mode name");
        let text = std::fs::read_to_string(&self.file).expect("reading the topology file");
        let (_, text) =
            veth_userspace::model::with_mode(&text, mode).expect("the file with the new mode");
        std::fs::write(&self.file, &text).expect("writing the topology file");
        self.topology = self.parse_keeping(&text);
    }

    /// `vethctl stats --json` of this topology: pod name -> pair object.
    pub fn stats(&self) -> std::collections::BTreeMap<String, Value> {
        pairs_by_pod(&self.vethctl(&["stats", "--json"]))
    }

    /// `vethctl status --json` of this topology.
    pub fn status(&self) -> Value {
        let out = self.vethctl(&["status", "--json"]);
        expect_success(&out, "vethctl status --json");
        let json: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        json["topologies"][0].clone()
    }

    /// Everything of this topology still in the kernel or on disk.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers(&self.topology)
    }

    /// Keeps the topology when dropped (for tests that remove it themselves).
    pub fn keep_on_drop(&mut self) {
        self.down_on_drop = false;
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        if self.down_on_drop {
            let out = vethctl(&["down"], &[], Some(&self.file));
            if !out.status.success() {
                eprintln!(
                    "cleanup: vethctl down failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                force_cleanup(&self.topology);
            }
        }
        let _ = std::fs::remove_file(&self.file);
        let left = leftovers(&self.topology);
        if !left.is_empty() {
            force_cleanup(&self.topology);
            if !std::thread::panicking() {
                panic!(
                    "topology {} left objects behind: {left:?}",
                    self.topology.name
                );
            }
        }
    }
}

/// Runs vethctl with extra environment, optionally with `--topology FILE`.
pub fn vethctl(args: &[&str], env: &[(&str, &str)], topology: Option<&Path>) -> Output {
    let mut cmd = Command::new(vethctl_bin());
    cmd.args(args);
    if let Some(file) = topology {
        cmd.arg("--topology").arg(file);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running vethctl")
}

pub fn expect_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Names of every object of `topology` that exists: namespaces, host links,
/// the node address on lo, pins and state.
pub fn leftovers(topology: &Topology) -> Vec<String> {
    let prefix = topology.object_prefix();
    let mut left: Vec<String> = netns::list(&prefix)
        .unwrap_or_default()
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    let links = run("ip", &["-o", "link", "show"]);
    for line in links.lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&prefix) {
                left.push(format!("link {name}"));
            }
        }
    }
    let lock = Path::new(veth_userspace::state::STATE_ROOT)
        .join(".locks")
        .join(&topology.name);
    if lock.exists() {
        left.push(format!("lock file {}", lock.display()));
    }
    // The bridge of mode bridge: found above when it has the prefix.
    if !topology.bridge.starts_with(&prefix) && link_exists(&topology.bridge) {
        left.push(format!("bridge {}", topology.bridge));
    }
    let addrs = run("ip", &["-o", "-4", "addr", "show", "dev", "lo"]);
    for line in addrs.lines() {
        if line.contains(&format!(" {}", topology.host_address_label)) {
            left.push(format!("address {line}"));
        }
    }
    // The IPv6 node address carries no label: found by value.
    if let Some(v6) = topology.host_address6 {
        let addrs = run("ip", &["-o", "-6", "addr", "show", "dev", "lo"]);
        for line in addrs.lines() {
            if line.contains(&format!(" {v6}/")) {
                left.push(format!("address {line}"));
            }
        }
    }
    let pins = Pins::new(&topology.name);
    if pins.exist() {
        left.push(format!("pins {}", pins.root().display()));
    }
    let state = StateDir::new(&topology.name);
    if state.exists() {
        left.push(format!("state {}", state.path().display()));
    }
    left
}

/// Last resort after a failed `down`, so one broken test does not leak
/// into the machine: removes by name with the standard tools.
fn force_cleanup(topology: &Topology) {
    let prefix = topology.object_prefix();
    for ns in netns::list(&prefix).unwrap_or_default() {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    for pod in &topology.pods {
        let _ = Command::new("ip")
            .args(["link", "del", &pod.host_veth])
            .output();
    }
    let _ = Command::new("ip")
        .args(["link", "del", &topology.bridge])
        .output();
    let _ = Command::new("ip")
        .args([
            "addr",
            "del",
            &format!("{}/32", topology.host_address),
            "dev",
            "lo",
        ])
        .output();
    if let Some(v6) = topology.host_address6 {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{v6}/128"), "dev", "lo"])
            .output();
    }
    let _ = std::fs::remove_dir_all(Pins::new(&topology.name).root());
    let _ = std::fs::remove_dir_all(StateDir::new(&topology.name).path());
}

/// The pairs of the first topology of `vethctl stats --json`'s output,
/// which must have succeeded: pod name -> pair object.
pub fn pairs_by_pod(out: &Output) -> std::collections::BTreeMap<String, Value> {
    expect_success(out, "vethctl stats --json");
    let json: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    json["topologies"][0]["pairs"]
        .as_array()
        .expect("pairs[]")
        .iter()
        .map(|p| (p["pod"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

/// Output of a command that must succeed.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    expect_success(&out, &format!("{program} {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a link called `name` exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pings `dst` (IPv4 or IPv6) from inside `netns`; returns the number of
/// replies.
pub fn ping(netns: &str, dst: impl Into<IpAddr>, count: u32) -> u32 {
    ping_with(netns, &[], dst, count)
}

/// Like [`ping`], with extra ping options (e.g. `["-I", src]`,
/// `["-s", "8000", "-M", "do"]`).
pub fn ping_with(netns: &str, options: &[&str], dst: impl Into<IpAddr>, count: u32) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-n", "-q", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.05", "-W", "1"])
        .args(options)
        .arg(dst.into().to_string())
        .output()
        .expect("running ping (install iputils-ping)");
    pings_received(&out.stdout)
}

/// The number of replies in `ping -q`'s summary (0 if it has none).
pub fn pings_received(stdout: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(stdout);
    // "5 packets transmitted, 5 received, 0% packet loss"
    text.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 10 s) until one ping from `netns` to `dst` is answered,
/// then expects `count` more to be answered, all of them.
pub fn expect_pings(netns: &str, dst: impl Into<IpAddr>, count: u32, what: &str) {
    let dst = dst.into();
    wait_until(
        Duration::from_secs(10),
        &format!("{what}: a first ping answered"),
        || ping(netns, dst, 1) == 1,
    );
    assert_eq!(
        ping(netns, dst, count),
        count,
        "{what}: {count} pings from {netns} to {dst}"
    );
}

/// Sets `net.ipv4.conf.<ifname>.forwarding` in the host namespace. With it
/// off, the host stack cannot forward what arrives on that interface, so
/// traffic that still flows took another path.
pub fn set_forwarding(ifname: &str, on: bool) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::write(&path, if on { "1" } else { "0" }).unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// Listens on `addr` inside `server_netns` (returning once it listens),
/// accepts one connection and fingerprints everything it receives.
fn fingerprint_receiver(
    server_netns: &str,
    addr: SocketAddr,
    read_timeout: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Fingerprint>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = netns::on_thread(server_netns, move || {
        let listener = TcpListener::bind(addr)?;
        ready_tx.send(()).ok();
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(read_timeout))?;
        let mut fp = Fingerprint {
            bytes: 0,
            hash: FNV_OFFSET,
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(fp);
            }
            fingerprint_update(&mut fp, &buf[..n]);
        }
    })
    .expect("server thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server listening");
    receiver
}

/// FNV-1a over a byte stream: a cheap fingerprint to compare what was sent
/// with what arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub bytes: u64,
    pub hash: u64,
}

fn fingerprint_update(fp: &mut Fingerprint, data: &[u8]) {
    for &b in data {
        fp.hash = (fp.hash ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    fp.bytes += data.len() as u64;
}

const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// Sends `size` bytes of a pseudo-random pattern over TCP from a socket in
/// `client_netns` to a listener on `server.ipv4` in `server.netns`.
/// Returns (sent, received) fingerprints.
pub fn tcp_transfer(client_netns: &str, server: &Pod, size: u64) -> (Fingerprint, Fingerprint) {
    tcp_transfer_to(client_netns, &server.netns, server.ipv4, size)
}

/// [`tcp_transfer`] to `server_ip` (IPv4 or IPv6) in `server_netns`.
pub fn tcp_transfer_to(
    client_netns: &str,
    server_netns: &str,
    server_ip: impl Into<IpAddr>,
    size: u64,
) -> (Fingerprint, Fingerprint) {
    let addr = SocketAddr::new(server_ip.into(), 5201);
    let receiver = fingerprint_receiver(server_netns, addr, Duration::from_secs(20));
    let sender = netns::on_thread(client_netns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        conn.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut fp = Fingerprint {
            bytes: 0,
            hash: FNV_OFFSET,
        };
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut left = size;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            for chunk in buf[..n].chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let bytes = state.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            conn.write_all(&buf[..n])?;
            fingerprint_update(&mut fp, &buf[..n]);
            left -= n as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(fp)
    })
    .expect("client thread");
    let sent = sender.join().expect("client thread").expect("sending");
    let received = receiver.join().expect("server thread").expect("receiving");
    (sent, received)
}

/// True if a TCP connection from `client_netns` to `server` (listening
/// there for the duration) is established within `timeout`.
pub fn tcp_connects(client_netns: &str, server: &Pod, timeout: Duration) -> bool {
    tcp_connects_to(client_netns, &server.netns, server.ipv4, timeout)
}

/// [`tcp_connects`] to `server_ip` (IPv4 or IPv6) in `server_netns`.
pub fn tcp_connects_to(
    client_netns: &str,
    server_netns: &str,
    server_ip: impl Into<IpAddr>,
    timeout: Duration,
) -> bool {
    let addr = SocketAddr::new(server_ip.into(), 5202);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let listener = netns::on_thread(server_netns, move || {
        let listener = TcpListener::bind(addr)?;
        ready_tx.send(()).ok();
        // Keep listening until the client has its answer.
        let _ = done_rx.recv();
        drop(listener);
        Ok(())
    })
    .expect("listener thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listening");
    let connected = netns::on_thread(client_netns, move || {
        Ok(TcpStream::connect_timeout(&addr, timeout).is_ok())
    })
    .expect("client thread")
    .join()
    .expect("client thread")
    .expect("client");
    done_tx.send(()).ok();
    listener.join().expect("listener thread").expect("listener");
    connected
}

/// What a namespace's IP stack forwarded: (`IpForwDatagrams`,
/// `Ip6OutForwDatagrams`).
pub fn forwarded(netns: &str) -> (u64, u64) {
    let snmp = run("ip", &["netns", "exec", netns, "cat", "/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .expect("IpForwDatagrams");
    let snmp6 = run("ip", &["netns", "exec", netns, "cat", "/proc/net/snmp6"]);
    let v6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Ip6OutForwDatagrams");
    (v4, v6)
}

/// A counter of a pair from `stats --json`, e.g. `("from_pod", "redirected_packets")`.
pub fn counter(pair: &Value, direction: &str, field: &str) -> u64 {
    let value = if direction.is_empty() {
        &pair[field]
    } else {
        &pair[direction][field]
    };
    value
        .as_u64()
        .unwrap_or_else(|| panic!("counter {direction}.{field} missing in {pair}"))
}

/// A drop counter of a pair from `stats --json`, by reason (e.g.
/// `"spoofed_ipv4"`).
pub fn drops(pair: &Value, reason: &str) -> u64 {
    pair["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("drops.{reason} missing in {pair}"))
}

/// Inode of a named network namespace: the same inode means the same
/// namespace (not one recreated under the same name).
pub fn netns_inode(netns: &str) -> u64 {
    let out = run("stat", &["-L", "-c", "%i", &format!("/run/netns/{netns}")]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("inode of {netns}: {out:?}"))
}

/// The global addresses of `ifname` inside `netns`, without prefix
/// lengths, sorted (e.g. `["198.18.5.2", "fd00:198:18:5::2"]`).
pub fn global_addresses(netns: &str, ifname: &str) -> Vec<String> {
    let out = run(
        "ip",
        &[
            "-n", netns, "-o", "addr", "show", "dev", ifname, "scope", "global",
        ],
    );
    let mut addrs: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            let cidr = words.next()?;
            Some(cidr.split('/').next()?.to_string())
        })
        .collect();
    addrs.sort();
    addrs
}

/// A field of `/proc/net/dev_snmp6/<ifname>` in the host namespace, e.g.
/// `Ip6OutForwDatagrams`: IPv6 packets the host stack forwarded out of
/// that interface.
pub fn snmp6(ifname: &str, field: &str) -> u64 {
    let path = format!("/proc/net/dev_snmp6/{ifname}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(field)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{field} missing in {path}"))
}

/// A TCP connection kept open across whatever the test does meanwhile:
/// a client socket made in one namespace, a server reading (and
/// fingerprinting) in another until the client closes.
pub struct TcpSession {
    conn: TcpStream,
    sent: Fingerprint,
    pattern: u64,
    receiver: std::thread::JoinHandle<anyhow::Result<Fingerprint>>,
}

impl TcpSession {
    /// Connects from `client_netns` to a listener on `server_ip` port 5203
    /// in `server_netns`. Reads on the server wait up to `read_timeout`
    /// for more data (room for retransmissions while the path changes).
    pub fn open(
        client_netns: &str,
        server_netns: &str,
        server_ip: impl Into<IpAddr>,
        read_timeout: Duration,
    ) -> TcpSession {
        let addr = SocketAddr::new(server_ip.into(), 5203);
        let receiver = fingerprint_receiver(server_netns, addr, read_timeout);
        // A socket keeps the namespace it was made in: made on a thread in
        // the client's namespace, it can be used from this one.
        let conn = netns::on_thread(client_netns, move || {
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            conn.set_write_timeout(Some(read_timeout))?;
            Ok(conn)
        })
        .expect("client thread")
        .join()
        .expect("client thread")
        .expect("connecting");
        TcpSession {
            conn,
            sent: Fingerprint {
                bytes: 0,
                hash: FNV_OFFSET,
            },
            pattern: 0x2545f4914f6cdd1d,
            receiver,
        }
    }

    /// Sends `size` more bytes of a pseudo-random pattern.
    pub fn send(&mut self, size: usize) {
        self.try_send(size)
            .unwrap_or_else(|e| panic!("sending {size} bytes after {}: {e}", self.sent.bytes));
    }

    /// [`TcpSession::send`], returning the error (for a test that wants
    /// to say more about a failure).
    pub fn try_send(&mut self, size: usize) -> std::io::Result<()> {
        let mut buf = vec![0u8; size];
        for chunk in buf.chunks_mut(8) {
            self.pattern ^= self.pattern << 13;
            self.pattern ^= self.pattern >> 7;
            self.pattern ^= self.pattern << 17;
            let bytes = self.pattern.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        self.conn.write_all(&buf)?;
        fingerprint_update(&mut self.sent, &buf);
        Ok(())
    }

    /// Bytes sent so far.
    pub fn sent_bytes(&self) -> u64 {
        self.sent.bytes
    }

    /// Closes the sending side; returns (sent, received) fingerprints once
    /// the server has read everything.
    pub fn finish(self) -> (Fingerprint, Fingerprint) {
        self.conn
            .shutdown(std::net::Shutdown::Write)
            .expect("closing the connection");
        let received = self
            .receiver
            .join()
            .expect("server thread")
            .expect("receiving");
        (self.sent, received)
    }
}

// ---------------------------------------------------------------------------
// Child processes, HTTP, metrics and maps: for the observability tests.

/// Polls `condition` every 20 ms until it holds; panics with `what` after
/// `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, also
/// when a test panics, so no test leaves processes behind.
pub struct ChildGuard {
    child: Child,
    what: String,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd`; `what` names it in messages.
    pub fn spawn(what: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        ChildGuard {
            child,
            what: what.to_string(),
            exited: None,
        }
    }

    /// vethctl (the test build) with `args`, stdin closed.
    pub fn vethctl(args: &[&str], stdout: Stdio, stderr: Stdio) -> ChildGuard {
        ChildGuard::spawn(
            &format!("vethctl {}", args.join(" ")),
            Command::new(vethctl_bin())
                .args(args)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr),
        )
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's piped stdout.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout is piped")
    }

    /// Takes the child's piped stderr.
    pub fn take_stderr(&mut self) -> ChildStderr {
        self.child.stderr.take().expect("stderr is piped")
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) unless the child was reaped.
    pub fn signal(&mut self, signal: i32) {
        if self.exited.is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory preconditions; the child is not reaped
        // yet, so the pid is still ours.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) of {}: {}",
            self.what,
            std::io::Error::last_os_error()
        );
    }

    /// The exit status if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("waiting for a child");
        }
        self.exited
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the child to exit; panics if it does not.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_timeout(timeout)
            .unwrap_or_else(|| panic!("{} still running after {timeout:?}", self.what))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of `reader` as they come, read on a thread of their own (which
/// ends at end of file), so a test can wait for a line with a timeout.
/// The thread keeps draining after the receiver is dropped, so a child
/// never blocks writing to its pipe.
pub fn lines_of(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// A loopback port that was free a moment ago (bound and released); a
/// caller that loses a race for it retries with another.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A plain HTTP/1.1 GET of `path` from `addr` (host:port); returns the
/// status code and the body (de-chunked).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| bad("bad content-length"))?;
            body = body.get(..len).ok_or_else(|| bad("short body"))?;
        }
    }
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size = String::from_utf8_lossy(&rest[..eol]);
            let size = size.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| bad("short chunk"))?);
            rest = rest.get(size + 2..).ok_or_else(|| bad("short chunk"))?;
        }
        out
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for
/// a query string value.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One sample of a Prometheus/OpenMetrics text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(name, value)` of `labels` is among this sample's.
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Every sample of a text exposition; comments and blank lines skipped.
/// Panics on a line it cannot parse (the exposition is under test).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable metric line {l:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            // key="value" pairs separated by commas, up to '}'.
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = after[start..].find('=')? + start;
            let key = after[start..eq].trim().to_string();
            while chars.next()?.0 < eq {}
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the one series `name` with (at least) `labels` in `text`;
/// None if there is none. Panics if several series match.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<Sample> = parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .collect();
    assert!(
        matching.len() <= 1,
        "several series {name}{labels:?}: {matching:?}"
    );
    matching.first().map(|s| s.value)
}

/// `vethctl agent` on a free loopback port, killed when dropped, with a
/// lock file of its own (tests run agents side by side; one per node is
/// tested apart).
pub struct Agent {
    pub addr: SocketAddr,
    child: ChildGuard,
    // Dropped after the child (fields drop in order).
    _lock_dir: TempDir,
}

impl Agent {
    /// Starts an agent on a free loopback port (retrying with another
    /// port if one was taken meanwhile) and waits until it serves.
    pub fn start() -> Agent {
        Agent::for_networks(&[])
    }

    /// [`Agent::start`] with `vethctl agent --network` for each of
    /// `networks` (none: every network), so that it acts on the test's own
    /// networks only and never on those of tests running beside it.
    pub fn for_networks(networks: &[&str]) -> Agent {
        let more: Vec<&str> = networks.iter().flat_map(|n| ["--network", n]).collect();
        let mut last = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            match Agent::start_with(addr, &more) {
                Ok(agent) => return agent,
                Err(e) => last = e,
            }
        }
        panic!("could not start an agent: {last}");
    }

    /// Starts an agent on `addr` and waits until it says it is serving;
    /// `Err` with its output if it exits instead.
    pub fn start_on(addr: SocketAddr) -> Result<Agent, String> {
        Agent::start_with(addr, &[])
    }

    /// [`Agent::start_on`] with more arguments for `vethctl agent`.
    pub fn start_with(addr: SocketAddr, more: &[&str]) -> Result<Agent, String> {
        let listen = addr.to_string();
        let lock_dir = TempDir::new("vethctl-agent-lock");
        let lock = Agent::lock_file_in(&lock_dir);
        let mut args = vec!["agent", "--listen", &listen, "--lock-file", &lock];
        args.extend_from_slice(more);
        let child = ChildGuard::vethctl(&args, Stdio::null(), Stdio::piped());
        let child = serving(child).map_err(|said| format!("agent on {addr}: {said}"))?;
        Ok(Agent {
            addr,
            child,
            _lock_dir: lock_dir,
        })
    }

    /// Where an agent given `dir` keeps its lock.
    pub fn lock_file_in(dir: &TempDir) -> String {
        dir.path().join("agent.lock").display().to_string()
    }

    /// GET /metrics, which must answer 200.
    pub fn scrape(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics")
            .unwrap_or_else(|e| panic!("scraping the agent on {}: {e}", self.addr));
        assert_eq!(status, 200, "agent /metrics: {body}");
        body
    }

    /// The child process, e.g. to signal it.
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

/// Waits (up to 30 s) until `child`, an agent started with its stderr
/// piped, says it is serving; `Err` with what it said if it exits or
/// stays silent instead.
pub fn serving(mut child: ChildGuard) -> Result<ChildGuard, String> {
    let stderr = lines_of(child.take_stderr());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = Vec::new();
    loop {
        match stderr.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("serving") => return Ok(child),
            Ok(line) => said.push(line),
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                let status = child.wait_timeout(Duration::from_secs(5));
                return Err(format!("did not start ({status:?}): {}", said.join("\n")));
            }
        }
    }
}

/// A directory under the system temp dir, removed (with its contents)
/// when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `bpftool -j map dump pinned PATH`: each entry in its BTF-formatted form
/// (`{"key": .., "value": ..}` or, per CPU, `{"key": .., "values": [..]}`).
pub fn bpftool_map_dump(pin: &Path) -> Vec<Value> {
    let text = run(
        "bpftool",
        &["-j", "map", "dump", "pinned", &pin.to_string_lossy()],
    );
    let entries: Vec<Value> = serde_json::from_str(&text).expect("bpftool JSON");
    entries.into_iter().map(btf_formatted).collect()
}

/// bpftool's BTF-formatted form of an entry, if the map has BTF.
fn btf_formatted(entry: Value) -> Value {
    match entry.get("formatted") {
        Some(formatted) => formatted.clone(),
        None => entry,
    }
}

/// `bpftool map lookup` of a u32 key in a pinned map, as JSON (the
/// `formatted` form when the map has BTF).
pub fn bpftool_map_lookup(pin: &Path, key: u32) -> Value {
    let bytes: Vec<String> = key.to_ne_bytes().iter().map(|b| b.to_string()).collect();
    let mut args = vec!["-j", "map", "lookup", "pinned"];
    let pin = pin.to_string_lossy();
    args.push(&pin);
    args.push("key");
    args.extend(bytes.iter().map(String::as_str));
    btf_formatted(serde_json::from_str(&run("bpftool", &args)).expect("bpftool JSON"))
}

// ---------------------------------------------------------------------------
// Ownership tests (tests/tests/ownership.rs): objects that stand for someone
// else's, and looks at the kernel in JSON.

/// `ip -j ARGS` parsed; an empty list when ip prints nothing.
pub fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = run("ip", &full);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {text}"))
}

/// Whether `ip ARGS` succeeds (output discarded).
pub fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether process `pid` is waiting for an flock (a "->" line of
/// /proc/locks), e.g. vethctl's lock held by the test.
pub fn blocked_on_flock(pid: u32) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let mut words = l.split_whitespace().skip(1);
        words.next() == Some("->")
            && words.next() == Some("FLOCK")
            && words.nth(2) == Some(pid.to_string().as_str())
    })
}

/// `ip` commands run (errors ignored) when dropped, in reverse order: the
/// clean-up of objects a test made to stand for someone else's.
#[derive(Default)]
pub struct Undo {
    commands: Vec<Vec<String>>,
}

impl Undo {
    pub fn ip(&mut self, args: &[&str]) {
        self.commands
            .push(args.iter().map(|a| a.to_string()).collect());
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for args in self.commands.iter().rev() {
            let _ = Command::new("ip").args(args).output();
        }
    }
}

// ---------------------------------------------------------------------------
// Robustness tests (tests/tests/robustness.rs): damaged state, closed pipes,
// endless input.

/// A file with something appended, restored to what it was when dropped
/// (also when a test panics).
pub struct DamagedFile {
    path: PathBuf,
    original: Vec<u8>,
}

impl DamagedFile {
    pub fn append(path: &Path, garbage: &str) -> DamagedFile {
        let original = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut damaged = original.clone();
        damaged.extend_from_slice(garbage.as_bytes());
        std::fs::write(path, &damaged).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        DamagedFile {
            path: path.to_path_buf(),
            original,
        }
    }
}

impl Drop for DamagedFile {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.original);
    }
}

/// Runs vethctl with `args` whose standard output is a pipe nobody reads
/// any more (closed before vethctl writes, as `| head -1` does once it has
/// its line); stdout of the result is empty.
pub fn vethctl_into_closed_pipe(args: &[&str]) -> Output {
    let mut child = Command::new(vethctl_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting vethctl");
    drop(child.stdout.take());
    child.wait_with_output().expect("waiting for vethctl")
}

/// vethctl with `args`, limited to `memory` bytes of address space and
/// killed after `timeout`; `None` if it was still running then.
pub fn vethctl_bounded(args: &[&str], memory: u64, timeout: Duration) -> Option<Output> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(vethctl_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the
    // parent.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: memory,
                rlim_max: memory,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildGuard::spawn(&format!("vethctl {}", args.join(" ")), &mut cmd);
    let stdout = lines_of(child.take_stdout());
    let stderr = lines_of(child.take_stderr());
    let status = child.wait_timeout(timeout)?;
    let collect = |rx: Receiver<String>| {
        let mut text = String::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            text += &line;
            text.push('\n');
        }
        text.into_bytes()
    };
    Some(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Runs its closure when dropped, also when the test panics: the clean-up
/// of something no other guard owns.
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_parsed() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"u\\\\o\"} 12\nx_total{a=\"2\"} 3.5 1700000000\ny 7\n# EOF\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels["b"], "q\"u\\o");
        assert_eq!(metric_value(text, "x_total", &[("a", "1")]), Some(12.0));
        assert_eq!(metric_value(text, "x_total", &[("a", "2")]), Some(3.5));
        assert_eq!(metric_value(text, "y", &[]), Some(7.0));
        assert_eq!(metric_value(text, "x_total", &[("a", "3")]), None);
    }

    #[test]
    fn http_responses_are_parsed() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_http_response(plain).unwrap(), (200, "hello".into()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), (404, "abcde".into()));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode("a_b{c=\"d\"} 1"), "a_b%7Bc%3D%22d%22%7D%201");
    }
}
