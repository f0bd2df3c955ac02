//! `cargo xtask bench mode-set`: how long `vethctl mode set` holds a CNI
//! network (its exclusive lock: every ADD and DEL waits meanwhile) with
//! `--pods` endpoints attached through the real `veth-cni`, for each
//! transition of the soak's mode walk (tc → xdp → routed → tc → bridge →
//! tc). Each `mode set` runs with `--timings`; the report gives its wall
//! time and the steps that took the most. The pods' namespaces are the
//! benchmark's own (under `/run/vethctl-bench-mode-set/netns/`), its
//! addresses a reserved range of 198.18.0.0/15; no traffic is sent.
//! Everything is removed at the end, also on failure and on Ctrl-C.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use veth_bench::interrupt;

use super::cni::{exec, reserve_range, run_lock};

const NETWORK: &str = "vmodeset";
const RUN_DIR: &str = "/run/vethctl-bench-mode-set";
const LOCK_FILE: &str = "/run/vethctl-bench-mode-set.lock";
/// The transitions measured: the soak's walk.
const WALK: [&str; 5] = ["xdp", "routed", "tc", "bridge", "tc"];

/// One `mode set` and where its time went.
#[derive(Debug, Serialize)]
pub struct Transition {
    pub from: String,
    pub to: String,
    pub ms: f64,
    /// The `--timings` steps, slowest first (at most five).
    pub slowest_steps: Vec<(String, f64)>,
}

/// What the benchmark made, taken away when dropped.
struct Made {
    vethctl: PathBuf,
    blocks: Vec<PathBuf>,
    _lock: fs::File,
}

impl Made {
    fn netns_dir() -> PathBuf {
        Path::new(RUN_DIR).join("netns")
    }

    fn remove(&self) {
        if Path::new("/run/vethctl").join(NETWORK).exists() {
            if let Err(e) =
                crate::cmd::output(Command::new(&self.vethctl).args(["down", "--name", NETWORK]))
            {
                eprintln!("cleanup: vethctl down: {e:#}");
            }
        }
        for entry in fs::read_dir(Self::netns_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            exec::remove_netns(&entry.path());
        }
        let _ = fs::remove_dir_all(RUN_DIR);
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        self.remove();
        for block in &self.blocks {
            let _ = fs::remove_file(block);
        }
    }
}

pub fn run(pods: usize, parallel: usize, json_out: bool, bin_dir: Option<PathBuf>) -> Result<()> {
    if !(1..=1000).contains(&pods) || !(1..=64).contains(&parallel) {
        bail!("--pods takes 1 to 1000 and --parallel 1 to 64");
    }
    let (built, out_dir) = super::prepare()?;
    let vethctl = match bin_dir {
        Some(dir) => {
            let vethctl = dir.join("vethctl");
            if !vethctl.exists() || !dir.join("veth-cni").exists() {
                bail!("--bin-dir {}: no vethctl and veth-cni there", dir.display());
            }
            vethctl
        }
        None => built,
    };
    let lock = run_lock(LOCK_FILE, "cargo xtask bench mode-set")?;
    // A /22: 1,022 addresses.
    let (subnet, blocks) = reserve_range(4)?;
    let made_vethctl = vethctl.clone();
    let made = Made {
        vethctl,
        blocks,
        _lock: lock,
    };
    made.remove();
    interrupt::catch();
    let result = measure(&made, pods, parallel, (subnet, 22));
    drop(made);
    interrupt::release();
    let transitions = result?;
    let text = table(pods, &made_by(&made_vethctl), &transitions);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&transitions)?);
    } else {
        print!("{text}");
    }
    fs::write(
        out_dir.join("mode-set.json"),
        serde_json::to_string_pretty(&transitions)?,
    )?;
    fs::write(out_dir.join("mode-set.txt"), &text)?;
    Ok(())
}

fn measure(
    made: &Made,
    pods: usize,
    parallel: usize,
    subnet: (Ipv4Addr, u8),
) -> Result<Vec<Transition>> {
    let config = json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "veth-cni", "mode": "tc",
        "ipMasq": false,
        "ipam": {"type": "veth-builtin", "subnet": format!("{}/{}", subnet.0, subnet.1)},
    });
    fs::create_dir_all(Made::netns_dir())?;
    let veth_cni = made.vethctl.with_file_name("veth-cni");
    let started = Instant::now();
    add_pods(&veth_cni, &config, pods, parallel)?;
    eprintln!(
        "bench mode-set: {pods} endpoints attached in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut from = "tc".to_string();
    let mut transitions = Vec::new();
    for to in WALK {
        interrupt::check("everything the benchmark made is being removed")?;
        let t = mode_set(&made.vethctl, &from, to)?;
        eprintln!("bench mode-set: {from} -> {to}: {:.0} ms", t.ms);
        transitions.push(t);
        from = to.to_string();
    }
    Ok(transitions)
}

/// ADDs `pods` endpoints, `parallel` at a time.
fn add_pods(veth_cni: &Path, config: &Value, pods: usize, parallel: usize) -> Result<()> {
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pods || interrupt::is_set() {
                            return Ok(());
                        }
                        let a = exec::Attachment {
                            container_id: format!("{:08x}6d53{i:052x}", std::process::id()),
                            netns: Made::netns_dir().join(format!("p{i}")),
                            pod_name: format!("p{i}"),
                        };
                        exec::make_netns(&a.netns)?;
                        exec::run(veth_cni, "ADD", &a, config)
                            .with_context(|| format!("ADD of pod {i}"))?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("a worker panicked")))
            .collect::<Result<Vec<()>>>()
    })?;
    interrupt::check("everything the benchmark made is being removed")
}

fn mode_set(vethctl: &Path, from: &str, to: &str) -> Result<Transition> {
    let started = Instant::now();
    let out = Command::new(vethctl)
        .args(["mode", "set", to, "--name", NETWORK, "--timings"])
        .output()
        .context("starting vethctl mode set")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("vethctl mode set {to}: {}", stderr.trim());
    }
    let mut steps = timed_steps(&stderr);
    steps.sort_by(|a, b| b.1.total_cmp(&a.1));
    steps.truncate(5);
    Ok(Transition {
        from: from.into(),
        to: to.into(),
        ms,
        slowest_steps: steps,
    })
}

/// `--timings` lines (`   12.34 ms  what`): (what, ms).
fn timed_steps(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let (ms, what) = l.trim_start().split_once(" ms  ")?;
            Some((what.to_string(), ms.trim().parse().ok()?))
        })
        .collect()
}

/// Which vethctl ran: its path and `--version`.
fn made_by(vethctl: &Path) -> String {
    let version = crate::cmd::output(Command::new(vethctl).arg("--version")).unwrap_or_default();
    let version: Vec<&str> = version.lines().take(2).collect();
    format!("{} ({})", vethctl.display(), version.join(", "))
}

fn table(pods: usize, by: &str, transitions: &[Transition]) -> String {
    use std::fmt::Write as _;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut s = format!(
        "vethctl mode set on a CNI network with {pods} endpoints (the network's lock is held \
         but while its endpoints are rewired), by {by}; load average {}:\n\n| transition | ms | slowest steps (ms) \
         |\n|---|--:|---|\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for t in transitions {
        let steps: Vec<String> = t
            .slowest_steps
            .iter()
            .map(|(what, ms)| format!("{what} {ms:.0}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} → {} | {:.0} | {} |",
            t.from,
            t.to,
            t.ms,
            steps.join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_lines_are_read_and_others_skipped() {
        let stderr = "     0.00 ms  start (CLOCK_MONOTONIC 1.2 s)\n  1234.50 ms  rewire the \
                      runtime's endpoints\nnetwork \"x\" is now in mode tc\n";
        assert_eq!(
            timed_steps(stderr),
            [
                ("start (CLOCK_MONOTONIC 1.2 s)".to_string(), 0.0),
                ("rewire the runtime's endpoints".to_string(), 1234.5)
            ]
        );
    }
}
