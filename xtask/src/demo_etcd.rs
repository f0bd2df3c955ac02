//! `cargo xtask demo --etcd [--nodes N] [--cross-node MODE]`: a cluster
//! kept in etcd, on this machine, started the way it is on real nodes: a
//! private etcd (Debian's `etcd-server`, its data and a unix socket in
//! `target/demo-etcd`, which every node namespace reaches through the file
//! system), `vethctl cluster init`, N node namespaces on a switch, in each
//! an agent told only the etcd endpoint and its node's name, and a pod per
//! node added through `veth-cni` with the list its agent wrote. Pings
//! across nodes, then leaves it running with hints of where to look.
//! `cargo xtask demo --etcd --down` takes all of it away (also done when
//! bringing it up fails).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{cmd, setup};

const CLUSTER: &str = "etcdlab";
const SWITCH: &str = "etcdlab-sw";
const ETCD: &str = "/usr/bin/etcd";
/// etcd 3.4 listens on `unix://HOST:PORT` as the file `HOST:PORT` in its
/// working directory.
const SOCKET: &str = "etcd.sock:0";
const CROSS_NODE: [&str; 4] = ["host-gw", "vxlan", "ebpf", "ebpf-vxlan"];

/// What `--down` needs to find again, written as soon as it exists.
#[derive(Default, Serialize, Deserialize)]
struct Lab {
    etcd_pid: Option<u32>,
    switch: bool,
    nodes: Vec<LabNode>,
}

#[derive(Serialize, Deserialize)]
struct LabNode {
    /// The node's name in the cluster (`n1`); its namespace is `etcdlab-n1`.
    name: String,
    agent_pid: Option<u32>,
    pod: Option<LabPod>,
}

#[derive(Serialize, Deserialize)]
struct LabPod {
    netns: String,
    container_id: String,
    ipv4: Option<String>,
}

fn dir() -> PathBuf {
    cmd::target_dir().join("demo-etcd")
}

fn lab_file() -> PathBuf {
    dir().join("lab.json")
}

fn endpoints() -> String {
    format!("unix://{}", dir().join(SOCKET).display())
}

fn netns(node: &str) -> String {
    format!("{CLUSTER}-{node}")
}

impl Lab {
    fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(lab_file(), text)
            .with_context(|| format!("writing {}", lab_file().display()))
    }
}

pub fn run(nodes: u32, cross_node: &str) -> Result<()> {
    if !(2..=20).contains(&nodes) {
        bail!("--nodes: use 2 to 20 nodes with --etcd");
    }
    if !CROSS_NODE.contains(&cross_node) {
        bail!(
            "--cross-node: {cross_node:?} is not a cross-node mode; use one of {}",
            CROSS_NODE.join(", ")
        );
    }
    setup::run(setup::Needs::Demo)?;
    setup::ensure_etcd()?;
    cmd::run(cmd::cargo().args(["build", "-p", "veth-userspace"]))?;
    claim()?;
    let mut lab = Lab::default();
    lab.save()?;
    match bring_up(&mut lab, nodes, cross_node) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("bringing the demo up failed: {e:#}\ntaking it away");
            if let Err(down) = take_down(lab) {
                eprintln!("taking it away failed too: {down:#}");
            }
            Err(e)
        }
    }
}

/// The demo's record, made only if none exists: a second demo started
/// meanwhile stops here, before it touches (or takes away) the first's.
fn claim() -> Result<()> {
    std::fs::create_dir_all(dir()).with_context(|| format!("creating {}", dir().display()))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(lab_file())
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "an etcd demo is up already ({}): `cargo xtask demo --etcd --down` takes it away",
            lab_file().display()
        ),
        Err(e) => Err(e).with_context(|| format!("creating {}", lab_file().display())),
    }
}

fn bring_up(lab: &mut Lab, nodes: u32, cross_node: &str) -> Result<()> {
    lab.etcd_pid = Some(start_etcd()?);
    lab.save()?;
    let settings = dir().join("settings.toml");
    std::fs::write(&settings, settings_text(cross_node))?;
    println!(
        "$ cat {}\n{}",
        settings.display(),
        settings_text(cross_node)
    );
    init(&settings)?;
    ip(&["netns", "add", SWITCH])?;
    lab.switch = true;
    lab.save()?;
    ip(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", SWITCH, "link", "set", "br0", "up"])?;
    for i in 1..=nodes {
        let name = format!("n{i}");
        // Recorded (so taken away) only once made here: a namespace of
        // that name that is not the demo's makes `ip` fail first.
        ip(&["netns", "add", &netns(&name)])?;
        lab.nodes.push(LabNode {
            name: name.clone(),
            agent_pid: None,
            pod: None,
        });
        lab.save()?;
        plug_node(&name, i)?;
        let pid = start_agent(&name)?;
        lab.nodes.last_mut().expect("just pushed").agent_pid = Some(pid);
        lab.save()?;
    }
    wait_for_lists(lab)?;
    shell(Command::new(vethctl()).args(["cluster", "status", "--cluster", &endpoints()]))?;
    for i in 0..lab.nodes.len() {
        let name = lab.nodes[i].name.clone();
        lab.nodes[i].pod = Some(new_pod(&name)?);
        lab.save()?;
        add_pod(&name, lab.nodes[i].pod.as_mut().expect("just set"))?;
    }
    lab.save()?;
    ping_across(lab)?;
    print_hints(lab);
    Ok(())
}

/// The cluster's settings: pods redirected within a node, `cross_node`
/// between nodes, a /24 and a /64 per node.
fn settings_text(cross_node: &str) -> String {
    format!(
        "name = \"{CLUSTER}\"\nmode = \"tc\"\ncross_node = \"{cross_node}\"\n\
         cluster_cidr = \"10.245.0.0/16\"\ncluster_cidr6 = \"fd00:10:245::/56\"\n\
         [underlay]\ninterface = \"eth0\"\ncidr6 = \"fd00:198:245::/64\"\n"
    )
}

/// etcd in the background, in its own process group so that it outlives
/// this command, on the unix socket and on loopback ports for its peer
/// and metrics listeners.
fn start_etcd() -> Result<u32> {
    let log = std::fs::File::create(dir().join("etcd.log"))?;
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let mut etcd = Command::new(ETCD);
    etcd.args(["--name", CLUSTER, "--data-dir", "data"])
        .args(["--listen-client-urls", &format!("unix://{SOCKET}")])
        .args(["--advertise-client-urls", &format!("unix://{SOCKET}")])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{CLUSTER}={peer}")])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .current_dir(dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    println!("$ {} &   # in {}", cmd::display(&etcd), dir().display());
    let child = etcd
        .spawn()
        .with_context(|| format!("starting {ETCD} (package etcd-server)"))?;
    Ok(child.id())
}

/// `vethctl cluster init`, retried while etcd is still starting (exit
/// status 4: not reachable yet).
fn init(settings: &Path) -> Result<()> {
    let mut init = Command::new(vethctl());
    init.args(["cluster", "init", "--cluster", &endpoints(), "-t"])
        .arg(settings);
    println!("$ {}", cmd::display(&init));
    let started = Instant::now();
    loop {
        let out = init.output().context("running vethctl cluster init")?;
        if out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            return Ok(());
        }
        if out.status.code() != Some(4) || started.elapsed() > Duration::from_secs(20) {
            bail!(
                "`vethctl cluster init` failed: {}\n(etcd's log: {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                dir().join("etcd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node `i`'s namespace, made by the caller: its `eth0` plugged into the
/// switch.
fn plug_node(name: &str, i: u32) -> Result<()> {
    let ns = netns(name);
    let port = format!("p{i}");
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", SWITCH, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", SWITCH, "link", "set", &port, "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("192.168.245.{i}/24"),
        "dev",
        "eth0",
    ])?;
    let v6 = format!("fd00:198:245::{i}/64");
    ip(&["-n", &ns, "addr", "add", &v6, "dev", "eth0", "nodad"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])
}

/// The node's agent, told the etcd endpoint and its name only; its log in
/// `target/demo-etcd/NODE.log`.
fn start_agent(name: &str) -> Result<u32> {
    let log = std::fs::File::create(dir().join(format!("{name}.log")))?;
    let mut agent = Command::new("ip");
    agent
        .args(["netns", "exec", &netns(name)])
        .arg(vethctl())
        .args(["agent", "--cluster", &endpoints(), "--cluster-node", name])
        .arg("--cni-conf-dir")
        .arg(dir().join(name))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    println!("$ {} &", cmd::display(&agent));
    Ok(agent.spawn().context("starting the agent")?.id())
}

fn conflist(node: &str) -> PathBuf {
    dir().join(node).join("10-vethctl.conflist")
}

/// Until every agent holds its ranges and wrote its list.
fn wait_for_lists(lab: &Lab) -> Result<()> {
    let started = Instant::now();
    while let Some(node) = lab.nodes.iter().find(|n| !conflist(&n.name).exists()) {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "node {} wrote no CNI list within 30 s; its agent's log: {}",
                node.name,
                dir().join(format!("{}.log", node.name)).display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// What a runtime does for a new pod, first: its namespace.
fn new_pod(node: &str) -> Result<LabPod> {
    let pod = LabPod {
        netns: format!("{}-pod", netns(node)),
        container_id: format!("{CLUSTER}-{node}-pod"),
        ipv4: None,
    };
    ip(&["netns", "add", &pod.netns])?;
    Ok(pod)
}

/// Then `veth-cni` ADD with the plugin configuration of the list the
/// node's agent wrote: the pod's IPv4 address.
fn add_pod(node: &str, pod: &mut LabPod) -> Result<()> {
    println!(
        "$ CNI_COMMAND=ADD … veth-cni   # pod {} on node {node}",
        pod.netns
    );
    let reply = cni(node, pod, "ADD")?;
    let result: serde_json::Value = serde_json::from_str(&reply).context("veth-cni's result")?;
    let ipv4 = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .map(str::to_string);
    println!(
        "  {} got {}",
        pod.netns,
        ipv4.as_deref().unwrap_or("no IPv4")
    );
    pod.ipv4 = ipv4;
    Ok(())
}

/// Runs `veth-cni` in the node's namespace as a runtime would.
fn cni(node: &str, pod: &LabPod, command: &str) -> Result<String> {
    let text = std::fs::read_to_string(conflist(node))?;
    let list: serde_json::Value = serde_json::from_str(&text)?;
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let mut plugin = Command::new("ip");
    plugin
        .args(["netns", "exec", &netns(node)])
        .arg(cmd::target_dir().join("debug/veth-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = plugin.spawn().context("starting veth-cni")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("veth-cni's stdin")?;
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "veth-cni {command} for {} on node {node} failed: {}{}",
            pod.netns,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// The first node's pod pings every other node's pod (after waiting for
/// the nodes to be wired to each other).
fn ping_across(lab: &Lab) -> Result<()> {
    let Some((first, others)) = lab.nodes.split_first() else {
        bail!("no nodes");
    };
    let from = first.pod.as_ref().context("the first node has no pod")?;
    for node in others {
        let Some(to) = node.pod.as_ref().and_then(|p| p.ipv4.as_deref()) else {
            continue;
        };
        let ping = |count: &str| {
            let mut ping = Command::new("ip");
            ping.args(["netns", "exec", &from.netns, "ping", "-c", count])
                .args(["-i", "0.2", "-W", "1", to]);
            ping
        };
        let started = Instant::now();
        while cmd::probe(&mut ping("1")).is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "{} cannot reach {to} on node {} within 20 s",
                    from.netns,
                    node.name
                );
            }
        }
        println!("\n==> ping {}/pod -> {}/pod", first.name, node.name);
        shell(&mut ping("3"))?;
    }
    Ok(())
}

fn print_hints(lab: &Lab) {
    let vethctl = vethctl();
    let vethctl = vethctl.display();
    let e = endpoints();
    let n1 = netns("n1");
    println!("\nCluster `{CLUSTER}` (kept in etcd) is still up. To look around:");
    println!("  {vethctl} cluster status --cluster {e}");
    println!("  ip netns exec {n1} {vethctl} status        # node n1: its part, its pods");
    println!("  ip netns exec {n1} ip route                # routes to the other nodes' ranges");
    println!("  ip netns exec {n1} curl -s 127.0.0.1:9435/metrics   # n1's agent");
    println!(
        "  less {}                  # n1's agent log",
        dir().join("n1.log").display()
    );
    let last = lab.nodes.last().map(|n| n.name.as_str()).unwrap_or("n2");
    let pid = lab.nodes.last().and_then(|n| n.agent_pid).unwrap_or(0);
    println!(
        "  kill -STOP {pid}; sleep 12; {vethctl} cluster status --cluster {e}   # node {last}'s agent frozen: its liveness lease (10 s) ends, the others unwire it"
    );
    println!(
        "  kill -CONT {pid}              # it registers again and is wired again within seconds"
    );
    println!("To remove everything:\n  cargo xtask demo --etcd --down");
}

/// `--down`: everything the demo recorded, in reverse; what is already
/// gone is skipped.
pub fn down() -> Result<()> {
    let text = match std::fs::read_to_string(lab_file()) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no etcd demo is up ({} is missing)", lab_file().display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", lab_file().display())),
    };
    let lab: Lab = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the demo's record", lab_file().display()))?;
    take_down(lab)
}

fn take_down(lab: Lab) -> Result<()> {
    for node in &lab.nodes {
        if let Some(pod) = &node.pod {
            if let Err(e) = cni(&node.name, pod, "DEL") {
                eprintln!("warning: {e:#}");
            }
            let _ = ip(&["netns", "del", &pod.netns]);
        }
    }
    for node in &lab.nodes {
        if let Some(pid) = node.agent_pid {
            stop(pid, "vethctl")?;
        }
    }
    for node in &lab.nodes {
        let ns = netns(&node.name);
        if Path::new("/run/netns").join(&ns).exists() {
            let mut down = Command::new("ip");
            down.args(["netns", "exec", &ns])
                .arg(vethctl())
                .args(["down", "-n", CLUSTER]);
            shell(&mut down)?;
            ip(&["netns", "del", &ns])?;
        }
    }
    if lab.switch {
        ip(&["netns", "del", SWITCH])?;
    }
    if let Some(pid) = lab.etcd_pid {
        stop(pid, "etcd")?;
    }
    std::fs::remove_dir_all(dir()).with_context(|| format!("removing {}", dir().display()))?;
    println!("the etcd demo is gone");
    Ok(())
}

/// SIGTERM to `pid` if it still runs `program` (a recorded PID may have
/// been reused), then waits up to 10 s for it to end.
fn stop(pid: u32, program: &str) -> Result<()> {
    let runs = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(program))
    };
    if !runs(pid) {
        return Ok(());
    }
    println!("$ kill {pid}   # {program}");
    // SAFETY: a plain kill(2) on a PID checked just above to run `program`.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let started = Instant::now();
    while runs(pid) && !zombie(pid) {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{program} (PID {pid}) did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A child of this very command that ended but was not waited for.
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn vethctl() -> PathBuf {
    cmd::target_dir().join("debug/vethctl")
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("ip").args(args))
}

fn shell(cmd: &mut Command) -> Result<()> {
    println!("$ {}", cmd::display(cmd));
    cmd::run(cmd)
}
