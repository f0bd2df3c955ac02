//! Benchmarks. Every one brings up its own topologies (addresses from
//! 198.18.0.0/15, RFC 2544's benchmarking range), sends traffic only between
//! their namespaces, and brings them down again, also when it fails.

pub mod checks;
pub mod cluster_scale;
pub mod cni;
pub mod control;
pub mod counting;
pub mod cross_node;
pub mod disruption;
pub mod disruption_nodes;
mod limit;
pub mod mode_set;
pub mod paths;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{cmd, setup};

/// Set-up, a build of vethctl, and the directory results go to.
pub fn prepare() -> Result<(PathBuf, PathBuf)> {
    setup::run(setup::Needs::Everything)?;
    // Release: control-plane timings are what users run.
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "veth-userspace"]))?;
    let dir = cmd::target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    Ok((cmd::target_dir().join("release/vethctl"), dir))
}

/// What a benchmark topology looks like.
pub struct Spec<'a> {
    pub name: &'a str,
    pub mode: &'a str,
    pub cidr: &'a str,
    pub counters: bool,
    /// Receive packet steering on the host-side veths (`rps = true`).
    pub rps: bool,
    /// Extra pods besides the client `a` and the server `b`.
    pub extra_pods: usize,
}

/// A two-pod (plus extras) topology, brought down when dropped.
pub struct UpTopology {
    vethctl: PathBuf,
    file: PathBuf,
    pub name: String,
    pub client_netns: String,
    pub server_netns: String,
    pub server_ip: String,
}

impl UpTopology {
    pub fn up(vethctl: &Path, dir: &Path, spec: &Spec) -> Result<UpTopology> {
        // Benchmark topologies have fixed names and addresses: a second
        // benchmark on the same machine (another checkout's `cargo xtask
        // test` ends with `bench paths --quick`) would adopt this one's
        // topology and take it down under it. Refuse instead.
        let client = Path::new("/run/netns").join(format!("{}-a", spec.name));
        if client.exists() {
            anyhow::bail!(
                "topology {:?} is already up ({} exists): is another benchmark running on this machine? \
                 Wait for it, or take it down with `vethctl down --name {}`",
                spec.name,
                client.display(),
                spec.name
            );
        }
        let file = dir.join(format!("{}.toml", spec.name));
        let mut text = format!(
            "name = \"{}\"\nmode = \"{}\"\npod_cidr = \"{}\"\ncounters = {}\nrps = {}\n\n[[pods]]\nname = \"a\"\n\n[[pods]]\nname = \"b\"\n",
            spec.name, spec.mode, spec.cidr, spec.counters, spec.rps
        );
        for i in 0..spec.extra_pods {
            text += &format!("\n[[pods]]\nname = \"x{i}\"\n");
        }
        fs::write(&file, text)?;
        // From here on, Drop brings it down whatever happens.
        let mut topology = UpTopology {
            vethctl: vethctl.to_path_buf(),
            file,
            name: spec.name.to_string(),
            client_netns: String::new(),
            server_netns: String::new(),
            server_ip: String::new(),
        };
        cmd::output(
            Command::new(vethctl)
                .arg("up")
                .arg("--topology")
                .arg(&topology.file),
        )?;
        let status: Value = serde_json::from_str(&cmd::output(
            Command::new(vethctl).args(["status", "--json", "--name", spec.name]),
        )?)?;
        let pod = |i: usize, field: &str| -> Result<String> {
            status["topologies"][0]["pods"][i][field]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("status of {} lacks pods[{i}].{field}", spec.name))
        };
        topology.client_netns = pod(0, "netns")?;
        topology.server_netns = pod(1, "netns")?;
        topology.server_ip = pod(1, "ipv4")?;
        Ok(topology)
    }
}

impl Drop for UpTopology {
    fn drop(&mut self) {
        let _ = Command::new(&self.vethctl)
            .args(["down", "--name", &self.name])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.file);
    }
}

pub use veth_bench::median;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on the kernel's BPF run-time statistics, restoring the previous
/// setting when dropped.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// (run_time_ns, run_cnt) of the program pinned at `pin`.
pub fn program_stats(pin: &str) -> Result<(u64, u64)> {
    bpftool_program_stats(&["pinned", pin])
}

/// The same for a program bpftool finds by `which` (`pinned PATH`, `id N`).
fn bpftool_program_stats(which: &[&str]) -> Result<(u64, u64)> {
    let info: Value = serde_json::from_str(&cmd::output(
        Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .args(which),
    )?)?;
    Ok((
        info["run_time_ns"].as_u64().unwrap_or(0),
        info["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// A probe for `veth_bench::measure`: the program the frames of
/// topology `name` in `mode` pass first from the client's pod
/// (`xdp_from_pod` in mode xdp, else `from_pod`).
pub fn program_probe(name: &str, mode: &str) -> veth_bench::ProgramProbe {
    let program = if mode == "xdp" {
        "xdp_from_pod"
    } else {
        "from_pod"
    };
    pin_probe(format!("/sys/fs/bpf/vethctl/{name}/{program}"))
}

/// A probe for the program pinned at `pin`.
pub fn pin_probe(pin: String) -> veth_bench::ProgramProbe {
    std::sync::Arc::new(move || program_stats(&pin).ok())
}

/// A probe for the (unpinned) program with kernel id `id`.
pub fn program_probe_by_id(id: u32) -> veth_bench::ProgramProbe {
    let id = id.to_string();
    std::sync::Arc::new(move || bpftool_program_stats(&["id", &id]).ok())
}
