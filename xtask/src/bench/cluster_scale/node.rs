//! The one real node of the simulation: a uniquely named network
//! namespace with an underlay `eth0` (one end of a veth pair whose both
//! ends are in it: nothing is sent), its agent run as an operator runs it
//! (`ip netns exec NODE vethctl agent …`), and what the benchmark sees of
//! it from outside: the routes (`ip -n NODE monitor route`, each line
//! stamped when it arrives, and route dumps), the agent's memory and CPU
//! (`/proc/PID`). Dropping it stops the agent, takes the network down and
//! removes the namespace and whatever the node left on the host (its
//! state root and pins, found by the namespace's name).

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd;

const STATE_NODES: &str = "/run/vethctl/_nodes";
const PINS_NODES: &str = "/sys/fs/bpf/vethctl/_nodes";

pub struct Node {
    pub name: String,
    vethctl: PathBuf,
    network: String,
    agent: Option<Child>,
    monitor: Option<Child>,
    events: Option<Receiver<RouteEvent>>,
}

/// A route added or deleted, as `ip monitor` saw it, and when.
#[derive(Clone, Debug)]
pub struct RouteEvent {
    pub at: Instant,
    pub dst: String,
    pub added: bool,
}

/// Memory and CPU of a process, from /proc.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// utime + stime.
    pub cpu_seconds: f64,
}

impl Node {
    /// A fresh namespace whose `eth0` has `address` (with its length);
    /// `network` is the cluster's (what the agent brings up).
    pub fn new(vethctl: &Path, name: &str, address: &str, network: &str) -> Result<Node> {
        cmd::run(Command::new("ip").args(["netns", "add", name]))?;
        let node = Node {
            name: name.to_string(),
            vethctl: vethctl.to_path_buf(),
            network: network.to_string(),
            agent: None,
            monitor: None,
            events: None,
        };
        node.ip(&["link", "set", "lo", "up"])?;
        node.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        node.ip(&["addr", "add", address, "dev", "eth0"])?;
        node.ip(&["link", "set", "eth0", "up"])?;
        Ok(node)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        cmd::output(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Starts watching the node's IPv4 routes (before anything is made).
    pub fn monitor_routes(&mut self) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-4", "monitor", "route"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ip monitor route")?;
        let stdout = child.stdout.take().context("ip monitor's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                let (added, rest) = match line.strip_prefix("Deleted ") {
                    Some(rest) => (false, rest),
                    None => (true, line.as_str()),
                };
                let dst = rest.split_whitespace().next().unwrap_or("").to_string();
                if tx.send(RouteEvent { at, dst, added }).is_err() {
                    break;
                }
            }
        });
        self.monitor = Some(child);
        self.events = Some(rx);
        Ok(())
    }

    /// Waits up to `timeout` for `dst` to be added (or deleted) at or after
    /// `since`: when it was.
    pub fn wait_route(
        &self,
        dst: &str,
        added: bool,
        since: Instant,
        timeout: Duration,
    ) -> Result<Instant> {
        let events = self.events.as_ref().context("routes are not monitored")?;
        let deadline = since + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(e) if e.dst == dst && e.added == added && e.at >= since => return Ok(e.at),
                Ok(_) => continue,
                Err(_) => bail!(
                    "node {}: route {dst} not {} within {} s",
                    self.name,
                    if added { "added" } else { "deleted" },
                    timeout.as_secs()
                ),
            }
        }
    }

    /// Drops the route events seen so far.
    pub fn forget_events(&self) {
        if let Some(events) = &self.events {
            while events.try_recv().is_ok() {}
        }
    }

    /// The destinations of the node's IPv4 routes now (one dump).
    pub fn routes(&self) -> Result<HashSet<String>> {
        let dump = self.ip(&["-4", "route", "show"])?;
        Ok(dump
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect())
    }

    /// Starts the agent for node `member` of the cluster at `endpoints`;
    /// its log goes to `log`.
    pub fn start_agent(&mut self, endpoints: &str, member: &str, dir: &Path) -> Result<u32> {
        let log = std::fs::File::create(dir.join(format!("agent-{}.log", self.name)))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(&self.vethctl)
            .args(["agent", "--cluster", endpoints, "--cluster-node", member])
            .arg("--cni-conf-dir")
            .arg(dir.join(format!("cni-{}", self.name)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        // `ip netns exec` execs the program: the PID is the agent's.
        let pid = child.id();
        self.agent = Some(child);
        Ok(pid)
    }

    /// Fails if the agent has exited.
    pub fn check_agent(&mut self) -> Result<()> {
        if let Some(status) = self
            .agent
            .as_mut()
            .map(Child::try_wait)
            .transpose()?
            .flatten()
        {
            bail!(
                "the agent of node {} exited ({status}); see its log",
                self.name
            );
        }
        Ok(())
    }

    pub fn agent_usage(&self) -> Result<Usage> {
        let pid = self.agent.as_ref().context("no agent")?.id();
        usage(pid)
    }

    fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // SIGTERM: the agent revokes its lease and stops as it should.
            let _ = nix_kill(agent.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(agent.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// The node's state root on the host, by the name it records.
    fn state_root(&self) -> Option<PathBuf> {
        std::fs::read_dir(STATE_NODES)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|dir| {
                std::fs::read_to_string(dir.join("netns")).is_ok_and(|n| n.trim() == self.name)
            })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent();
        if let Some(mut monitor) = self.monitor.take() {
            let _ = monitor.kill();
            let _ = monitor.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(&self.vethctl)
            .args(["down", "-n", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(root) = self.state_root() {
            if let Some(cookie) = root.file_name() {
                let _ = std::fs::remove_dir_all(Path::new(PINS_NODES).join(cookie));
            }
            let _ = std::fs::remove_dir_all(root);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn nix_kill(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) on a child of ours, not yet reaped.
    match unsafe { libc::kill(pid as libc::pid_t, signal) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// VmRSS, VmHWM and utime + stime of process `pid`.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces): state is the 3rd.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: fields 14 and 15 of proc(5), 11 and 12 counted
    // from 0 after the command.
    let hz = 100.0; // USER_HZ on Linux.
    Ok(Usage {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_seconds: (ticks(11) + ticks(12)) as f64 / hz,
    })
}
