//! `cargo xtask demo`: brings up the default topology and pushes ping and TCP
//! traffic between its pods, then leaves it running for the user to explore.

use std::env;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{cmd, setup};

/// The topology `vethctl up` creates when given no file.
const TOPOLOGY: &str = "demo";
const IPERF_PORT: u16 = 5201;

/// The part of `vethctl status --json` the demo needs; other fields are ignored.
#[derive(Deserialize)]
struct Status {
    topologies: Vec<Topology>,
}

#[derive(Deserialize)]
struct Topology {
    name: String,
    pods: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    name: String,
    netns: String,
    ipv4: Ipv4Addr,
    /// Absent or null for IPv4-only topologies.
    #[serde(default)]
    ipv6: Option<Ipv6Addr>,
}

pub fn run() -> Result<()> {
    setup::run(setup::Needs::Demo)?;
    cmd::run(cmd::cargo().args(["build", "-p", "veth-userspace"]))?;
    let vethctl = cmd::target_dir().join("debug/vethctl");

    shell(Command::new(&vethctl).arg("up"))?;
    shell(Command::new(&vethctl).arg("status"))?;
    let topology = demo_topology(&vethctl)?;
    let Some((client, peers)) = topology.pods.split_first().filter(|(_, p)| !p.is_empty()) else {
        bail!("topology `{TOPOLOGY}` needs at least two pods for the demo");
    };

    for peer in peers {
        println!("\n==> ping {} -> {}", client.name, peer.name);
        shell(
            in_netns(client, "ping")
                .args(["-c", "5", "-i", "0.2", "-W", "2"])
                .arg(peer.ipv4.to_string()),
        )?;
    }
    if let Some(ipv6) = peers[0].ipv6 {
        println!("\n==> ping {} -> {} over IPv6", client.name, peers[0].name);
        shell(
            in_netns(client, "ping")
                .args(["-c", "3", "-i", "0.2", "-W", "2"])
                .arg(ipv6.to_string()),
        )?;
    }
    tcp_transfer(client, &peers[0])?;

    println!();
    shell(Command::new(&vethctl).arg("stats"))?;
    print_hints(&vethctl, client, &peers[0]);
    Ok(())
}

/// Echoes a command before running it, so the demo doubles as a walkthrough.
fn shell(cmd: &mut Command) -> Result<()> {
    println!("$ {}", cmd::display(cmd));
    cmd::run(cmd)
}

fn in_netns(pod: &Pod, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns, program]);
    cmd
}

fn demo_topology(vethctl: &Path) -> Result<Topology> {
    let json = cmd::output(Command::new(vethctl).args(["status", "--json"]))?;
    let status: Status = serde_json::from_str(&json).context("parsing `vethctl status --json`")?;
    status
        .topologies
        .into_iter()
        .find(|topology| topology.name == TOPOLOGY)
        .with_context(|| format!("`vethctl status --json` does not list topology `{TOPOLOGY}`"))
}

fn tcp_transfer(client: &Pod, server: &Pod) -> Result<()> {
    println!("\n==> TCP {} -> {} (iperf3, 3 s)", client.name, server.name);
    let server_ip = server.ipv4.to_string();
    // `-1`: the server exits after one test; the guard covers the error paths.
    let mut iperf_server = ServerGuard(
        in_netns(server, "iperf3")
            .args(["-s", "-1", "-B", &server_ip])
            .stdout(Stdio::null())
            .spawn()
            .context("could not start the iperf3 server")?,
    );
    wait_until_listening(server, &mut iperf_server.0)?;
    let report = cmd::output(in_netns(client, "iperf3").args(["-c", &server_ip, "-t", "3"]))?;
    print_iperf_summary(&report);
    Ok(())
}

/// Stops the background iperf3 server however the transfer ends, so a failed
/// demo leaves no process behind holding the port.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn wait_until_listening(pod: &Pod, server: &mut Child) -> Result<()> {
    let address = format!("{}:{IPERF_PORT}", pod.ipv4);
    for _ in 0..50 {
        if let Some(status) = server.try_wait()? {
            bail!("the iperf3 server in {} exited early ({status})", pod.netns);
        }
        let sockets = cmd::probe(in_netns(pod, "ss").arg("-Hltn")).unwrap_or_default();
        if sockets.contains(&address) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the iperf3 server in {} did not listen on {address} within 5 s",
        pod.netns
    )
}

/// The per-second lines are noise here; the totals follow iperf3's "- - -" rule.
fn print_iperf_summary(report: &str) {
    let summary = report
        .split_once("- - -")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map_or(report, |(_, totals)| totals);
    for line in summary.lines() {
        if !line.trim().is_empty() && line != "iperf Done." {
            println!("{line}");
        }
    }
}

fn print_hints(vethctl: &Path, client: &Pod, peer: &Pod) {
    let vethctl = shown_path(vethctl);
    println!("\nThe `{TOPOLOGY}` topology is still up. To look around:");
    println!("  {vethctl} status");
    println!("  {vethctl} stats");
    println!("  ip netns exec {} ping {}", client.netns, peer.ipv4);
    println!("  bpftool map dump pinned /sys/fs/bpf/vethctl/{TOPOLOGY}/PAIR_COUNTERS");
    println!("To remove everything:");
    println!("  {vethctl} down");
}

/// Relative to the current directory when possible, to keep the hints short.
fn shown_path(path: &Path) -> String {
    let relative: Option<PathBuf> = env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative.as_deref().unwrap_or(path).display().to_string()
}
