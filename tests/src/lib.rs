//! Harness for the integration tests: uniquely named topologies that are
//! removed when dropped (also when a test panics), traffic between their
//! pods, and looks at the kernel from outside (ip, bpffs, /proc).
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmarking
//! network devices); every packet stays between namespaces a test made.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::Value;
use veth_userspace::{
    dataplane::Pins,
    model::{Pod, Topology},
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

/// A /24 out of 198.18.0.0/15 for this topology, derived from its name.
fn unique_cidr(name: &str) -> String {
    let hash = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    let block = hash % 512;
    format!("198.{}.{}.0/24", 18 + block / 256, block % 256)
}

/// A topology under test. Dropping it runs `vethctl down` and checks that
/// nothing is left.
pub struct TestTopology {
    pub topology: Topology,
    pub file: PathBuf,
    down_on_drop: bool,
}

impl TestTopology {
    /// A topology with the given pods (names of at most 7 characters).
    pub fn new(pods: &[&str]) -> TestTopology {
        let name = unique_name();
        let mut text = format!(
            "name = \"{name}\"\nmode = \"tc\"\npod_cidr = \"{}\"\n",
            unique_cidr(&name)
        );
        for pod in pods {
            text += &format!("\n[[pods]]\nname = \"{pod}\"\n");
        }
        TestTopology::from_text(&text)
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

    /// `vethctl up`, which must succeed.
    pub fn up(&self) {
        expect_success(&self.vethctl(&["up"]), "vethctl up");
    }

    /// `vethctl down`, which must succeed.
    pub fn down(&self) {
        expect_success(&self.vethctl(&["down"]), "vethctl down");
    }

    /// `vethctl stats --json` of this topology: pod name -> pair object.
    pub fn stats(&self) -> std::collections::BTreeMap<String, Value> {
        let out = self.vethctl(&["stats", "--json"]);
        expect_success(&out, "vethctl stats --json");
        let json: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        json["topologies"][0]["pairs"]
            .as_array()
            .expect("pairs[]")
            .iter()
            .map(|p| (p["pod"].as_str().unwrap().to_string(), p.clone()))
            .collect()
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
    let addrs = run("ip", &["-o", "-4", "addr", "show", "dev", "lo"]);
    for line in addrs.lines() {
        if line.contains(&format!(" {}", topology.host_address_label)) {
            left.push(format!("address {line}"));
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
        .args([
            "addr",
            "del",
            &format!("{}/32", topology.host_address),
            "dev",
            "lo",
        ])
        .output();
    let _ = std::fs::remove_dir_all(Pins::new(&topology.name).root());
    let _ = std::fs::remove_dir_all(StateDir::new(&topology.name).path());
}

/// Output of a command that must succeed.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    expect_success(&out, &format!("{program} {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pings `dst` from inside `netns`; returns the number of replies.
pub fn ping(netns: &str, dst: Ipv4Addr, count: u32) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-n", "-q", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.05", "-W", "1"])
        .arg(dst.to_string())
        .output()
        .expect("running ping (install iputils-ping)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "5 packets transmitted, 5 received, 0% packet loss"
    text.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sets `net.ipv4.conf.<ifname>.forwarding` in the host namespace. With it
/// off, the host stack cannot forward what arrives on that interface, so
/// traffic that still flows took another path.
pub fn set_forwarding(ifname: &str, on: bool) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::write(&path, if on { "1" } else { "0" }).unwrap_or_else(|e| panic!("{path}: {e}"));
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
    let addr = SocketAddrV4::new(server.ipv4, 5201);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = netns::on_thread(&server.netns, move || {
        let listener = TcpListener::bind(addr)?;
        ready_tx.send(()).ok();
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
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
    let sender = netns::on_thread(client_netns, move || {
        let mut conn = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
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
    let addr = SocketAddrV4::new(server.ipv4, 5202);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let listener = netns::on_thread(&server.netns, move || {
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
        Ok(TcpStream::connect_timeout(&addr.into(), timeout).is_ok())
    })
    .expect("client thread")
    .join()
    .expect("client thread")
    .expect("client");
    done_tx.send(()).ok();
    listener.join().expect("listener thread").expect("listener");
    connected
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
