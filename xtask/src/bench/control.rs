//! `cargo xtask bench control`: how long the control plane takes — bringing
//! up and tearing down topologies of 10, 100 and 500 pods, and adding one pod
//! to a running topology (the latency a new pod waits for its network).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Result;
use serde::Serialize;

use super::{median, prepare};
use crate::cmd;

const NAME: &str = "bctl";
/// 2,046 addresses in 198.19.248.0/21 (RFC 2544 range), enough for 500 pods.
const CIDR: &str = "198.19.248.0/21";

#[derive(Serialize)]
struct Row {
    pods: usize,
    up_seconds: f64,
    down_seconds: f64,
}

#[derive(Serialize)]
struct AddOne {
    existing_pods: usize,
    samples_ms: Vec<f64>,
    p50_ms: f64,
    max_ms: f64,
}

pub fn run(sizes: &[usize], adds: usize) -> Result<()> {
    if sizes.is_empty() || sizes.contains(&0) {
        anyhow::bail!("--sizes needs at least one topology size, each at least 1 pod");
    }
    let (vethctl, dir) = prepare()?;
    let file = dir.join(format!("{NAME}.toml"));
    let _cleanup = Down(&vethctl, &file);
    let mut rows = Vec::new();
    for &pods in sizes {
        write_topology(&file, pods, 0)?;
        let up = timed_up(&vethctl, &file)?;
        let started = Instant::now();
        cmd::output(Command::new(&vethctl).args(["down", "--name", NAME]))?;
        let down = started.elapsed().as_secs_f64();
        println!("{pods:>5} pods: up {up:>7.2} s, down {down:>6.2} s");
        rows.push(Row {
            pods,
            up_seconds: up,
            down_seconds: down,
        });
    }

    let existing = sizes
        .iter()
        .copied()
        .find(|&n| n >= 100)
        .unwrap_or(sizes[0]);
    write_topology(&file, existing, 0)?;
    timed_up(&vethctl, &file)?;
    let mut samples = Vec::new();
    for extra in 1..=adds {
        write_topology(&file, existing, extra)?;
        samples.push(timed_up(&vethctl, &file)? * 1e3);
    }
    cmd::output(Command::new(&vethctl).args(["down", "--name", NAME]))?;
    let add = AddOne {
        existing_pods: existing,
        p50_ms: median(&samples),
        max_ms: samples.iter().copied().fold(0.0, f64::max),
        samples_ms: samples,
    };
    println!(
        "adding one pod to {} running pods: p50 {:.0} ms, max {:.0} ms ({} adds)",
        add.existing_pods,
        add.p50_ms,
        add.max_ms,
        add.samples_ms.len()
    );
    let out = dir.join("control.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({"sizes": rows, "add_one": add}))?,
    )?;
    println!("results: {}", out.display());
    Ok(())
}

/// Seconds `vethctl up --topology FILE` took.
fn timed_up(vethctl: &Path, file: &Path) -> Result<f64> {
    let started = Instant::now();
    cmd::output(Command::new(vethctl).arg("up").arg("--topology").arg(file))?;
    Ok(started.elapsed().as_secs_f64())
}

/// `pods` pods p0.., plus `extra` pods n0.. added later.
fn write_topology(file: &Path, pods: usize, extra: usize) -> Result<()> {
    let mut text = format!("name = \"{NAME}\"\nmode = \"tc\"\npod_cidr = \"{CIDR}\"\n");
    for i in 0..pods {
        text += &format!("[[pods]]\nname = \"p{i}\"\n");
    }
    for i in 0..extra {
        text += &format!("[[pods]]\nname = \"n{i}\"\n");
    }
    fs::write(file, text)?;
    Ok(())
}

/// Brings the benchmark topology down however the run ends.
struct Down<'a>(&'a Path, &'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .args(["down", "--name", NAME])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(self.1);
    }
}
