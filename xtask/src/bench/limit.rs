//! The limit as a path of its own: two pods of the benchmark's own making
//! (namespaces `<name>-a`/`<name>-b`, veths `<name>-a`/`<name>-b` on the
//! host), with a benchmark reference program (`limit`: only
//! `bpf_redirect_peer`; `limit+map`: plus one lookup and one counter;
//! `limit+rewrite`: plus the MAC and TTL rewrite and the `DEVMAP` proof) at
//! TCX ingress of both host-side veths, held by a `bench-reference` child
//! process. The pods know each other's MAC (permanent neighbours), so no
//! frame needs the host: every frame one pod sends goes into the other.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::report::{LIMIT, LIMIT_MAP, LIMIT_REWRITE};
use crate::cmd;

/// A reference path: its name in the report, its topology, its /24.
pub struct LimitSpec {
    pub path: &'static str,
    pub name: &'static str,
    /// The third octet in 198.18.0.0/15's 198.18.x.0/24.
    pub subnet: u8,
}

pub const LIMITS: [LimitSpec; 3] = [
    LimitSpec {
        path: LIMIT,
        name: "blimit",
        subnet: 243,
    },
    LimitSpec {
        path: LIMIT_MAP,
        name: "blimitm",
        subnet: 244,
    },
    LimitSpec {
        path: LIMIT_REWRITE,
        name: "blimitr",
        subnet: 245,
    },
];

/// The program that loads and holds a reference program (tests package).
const HOLDER: &str = "bench-reference";

/// Builds the program holder (the eBPF object comes with veth-userspace).
pub fn build() -> Result<()> {
    cmd::build_tests_bin(HOLDER).map(drop)
}

/// The two pods and the program, taken down when dropped.
pub struct LimitTopology {
    /// Namespaces this made (deleting one deletes its veth pair).
    made: Vec<String>,
    holder: Option<Child>,
    pub client_netns: String,
    pub server_netns: String,
    pub server_ip: String,
    /// The reference program's id, for its run-time statistics.
    pub program_id: u32,
}

impl LimitTopology {
    pub fn up(spec: &LimitSpec) -> Result<LimitTopology> {
        let pods = [format!("{}-a", spec.name), format!("{}-b", spec.name)];
        for pod in &pods {
            if Path::new("/run/netns").join(pod).exists()
                || Path::new("/sys/class/net").join(pod).exists()
            {
                bail!(
                    "{pod} already exists (netns or link): is another benchmark running on this machine? \
                     Wait for it, or remove it if it is a leftover of one"
                );
            }
        }
        let mut topology = LimitTopology {
            made: Vec::new(),
            holder: None,
            client_netns: pods[0].clone(),
            server_netns: pods[1].clone(),
            server_ip: format!("198.18.{}.3", spec.subnet),
            program_id: 0,
        };
        let ips = [
            format!("198.18.{}.2", spec.subnet),
            topology.server_ip.clone(),
        ];
        for (pod, address) in pods.iter().zip(&ips) {
            ip(&["netns", "add", pod])?;
            topology.made.push(pod.clone());
            ip(&[
                "link", "add", pod, "type", "veth", "peer", "name", "eth0", "netns", pod,
            ])?;
            ip(&["link", "set", pod, "up"])?;
            in_pod(pod, &["link", "set", "lo", "up"])?;
            in_pod(
                pod,
                &["addr", "add", &format!("{address}/32"), "dev", "eth0"],
            )?;
            in_pod(pod, &["link", "set", "eth0", "up"])?;
        }
        let macs = [pod_mac(&pods[0])?, pod_mac(&pods[1])?];
        for (i, pod) in pods.iter().enumerate() {
            let (other_ip, mac) = (&ips[1 - i], &macs[1 - i]);
            in_pod(pod, &["route", "add", other_ip, "dev", "eth0"])?;
            in_pod(
                pod,
                &[
                    "neigh",
                    "replace",
                    other_ip,
                    "lladdr",
                    mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            )?;
        }
        let mut holder = Command::new(cmd::target_dir().join("release").join(HOLDER))
            .args([spec.path, &pods[0], &pods[1], &macs[0], &macs[1]])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting bench-reference")?;
        let stdout = holder.stdout.take().context("bench-reference stdout")?;
        topology.holder = Some(holder);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        topology.program_id = line
            .strip_prefix("id ")
            .and_then(|id| id.trim().parse().ok())
            .with_context(|| {
                format!(
                    "bench-reference did not attach {} (said {line:?})",
                    spec.path
                )
            })?;
        Ok(topology)
    }
}

impl Drop for LimitTopology {
    fn drop(&mut self) {
        if let Some(mut holder) = self.holder.take() {
            // Closing its stdin ends it; its links detach with it.
            drop(holder.stdin.take());
            let _ = holder.wait();
        }
        for pod in self.made.drain(..) {
            let _ = ip(&["netns", "del", &pod]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::output(Command::new("ip").args(args)).map(drop)
}

fn in_pod(pod: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", pod];
    all.extend_from_slice(args);
    ip(&all)
}

fn pod_mac(pod: &str) -> Result<String> {
    let out = cmd::output(Command::new("ip").args(["-n", pod, "-br", "link", "show", "eth0"]))?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .with_context(|| format!("no MAC for eth0 of {pod} in {out:?}"))
}
