//! `cargo xtask demo --nodes N`: a cluster of N nodes on this machine (one
//! namespace each, on a switch namespace), two pods per node bridged as
//! flannel bridges them and joined across nodes by VXLAN as flannel joins
//! them; pings from the first node's pod to every other node's pods, then
//! leaves it running with hints of where to look.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{cmd, setup};

const CLUSTER: &str = "cluster";

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    name: String,
    netns: String,
    pods: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    name: String,
    netns: String,
    ipv4: String,
    #[serde(default)]
    ipv6: Option<String>,
}

/// The cluster file: `nodes` nodes with pods web and api each.
fn cluster_file(nodes: u32) -> String {
    let mut text = format!(
        "name = \"{CLUSTER}\"\nmode = \"bridge\"         # within a node: flannel's cni0\n\
         cross_node = \"vxlan\"    # between nodes: flannel's flannel.1\n\
         cluster_cidr = \"10.244.0.0/16\"\ncluster_cidr6 = \"fd00:10:244::/56\"\n"
    );
    for n in 1..=nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"n{n}\"\n[[nodes.pods]]\nname = \"web\"\n[[nodes.pods]]\nname = \"api\"\n"
        ));
    }
    text
}

pub fn run(nodes: u32) -> Result<()> {
    if !(2..=50).contains(&nodes) {
        bail!("--nodes: use 2 to 50 nodes");
    }
    setup::run(setup::Needs::Demo)?;
    cmd::run(cmd::cargo().args(["build", "-p", "veth-userspace"]))?;
    let vethctl = cmd::target_dir().join("debug/vethctl");
    let file = cmd::target_dir().join("demo-cluster.toml");
    std::fs::write(&file, cluster_file(nodes))
        .with_context(|| format!("writing {}", file.display()))?;
    println!("$ cat {}\n{}", file.display(), cluster_file(nodes));
    shell(Command::new(&vethctl).arg("up").arg("-t").arg(&file))?;
    shell(Command::new(&vethctl).arg("status"))?;
    let json = cmd::output(Command::new(&vethctl).args(["status", "--json", "-n", CLUSTER]))?;
    let status: Status = serde_json::from_str(&json).context("parsing `vethctl status --json`")?;
    let Some((first, others)) = status.nodes.split_first() else {
        bail!("`vethctl status --json -n {CLUSTER}` lists no nodes");
    };
    let client = first.pods.first().context("the first node has no pods")?;
    for node in others {
        for pod in &node.pods {
            println!(
                "\n==> ping {}/{} -> {}/{}",
                first.name, client.name, node.name, pod.name
            );
            shell(&mut ping(client, &pod.ipv4))?;
            if let Some(ipv6) = &pod.ipv6 {
                shell(&mut ping(client, ipv6))?;
            }
        }
    }
    print_hints(&vethctl, &file, first, client);
    Ok(())
}

fn ping(from: &Pod, to: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &from.netns,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        to,
    ]);
    cmd
}

fn shell(cmd: &mut Command) -> Result<()> {
    println!("$ {}", cmd::display(cmd));
    cmd::run(cmd)
}

fn print_hints(vethctl: &Path, file: &Path, node: &Node, pod: &Pod) {
    let vethctl = vethctl.display();
    let ns = &node.netns;
    println!("\nCluster `{CLUSTER}` is still up. To look around:");
    println!("  {vethctl} status                            # every node, its pods");
    println!("  ip netns exec {ns} ip route               # routes to the other nodes");
    println!("  ip netns exec {ns} bridge fdb show dev {CLUSTER}-vx   # one VTEP per node");
    println!("  ip netns exec {CLUSTER}_underlay tcpdump -ni n2 udp port 8472   # the encapsulated frames");
    println!("  {vethctl} --node {ns} stats              # the node's counters");
    println!("  ip netns exec {} ping <a pod on another node>", pod.netns);
    println!("Switch to plain routes live: set cross_node = \"host-gw\" in {} (add [underlay] cidr6 = \"fd00:198:18::/64\" for IPv6) and run `{vethctl} up -t` it again.", file.display());
    println!("To remove everything:\n  {vethctl} down -n {CLUSTER}");
}
