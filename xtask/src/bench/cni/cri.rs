//! The containerd half of `bench cni`: RunPodSandbox and StopPodSandbox +
//! RemovePodSandbox through containerd's CRI (the path kubelet takes), for
//! veth-cni (tc; built-in IPAM and host-local) and the reference bridge
//! plugin (host-local).
//!
//! The measuring program is `cri-pod-start` in the tests package: it drives
//! the containerd harness of the integration tests (tests/src/runtime: a
//! private containerd per network, a local pause image, a CRI client), which
//! xtask must not depend on. xtask builds it (release), runs it in a process
//! group of its own (Ctrl-C reaches xtask only, which asks it to stop with
//! SIGTERM: it stops between pods and removes everything), reads the JSON it
//! prints, and turns the samples into rows and targets here (pure).

use std::{
    fmt::Write as _,
    io::Read as _,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::summary::{
    medians_by_round, paired_ratio, percentile, Row, Target, BRIDGE, VETH_BUILTIN, VETH_HOST_LOCAL,
};
use crate::cmd;

/// Builds `cri-pod-start` (release, like the veth-cni it starts pods with)
/// and returns its path.
pub fn build() -> Result<PathBuf> {
    cmd::build_tests_bin("cri-pod-start")
}

/// How to run it.
pub struct Run<'a> {
    pub program: &'a Path,
    pub veth_cni: &'a Path,
    pub vethctl: &'a Path,
    pub pods: usize,
    pub rounds: usize,
    pub parallel: usize,
    pub quick: bool,
}

/// Runs `cri-pod-start` to the end and returns what it printed. `stop` is
/// the benchmark's Ctrl-C flag: once set, the program gets SIGTERM (and
/// then this fails with "interrupted").
pub fn measure(run: &Run, stop: &AtomicBool) -> Result<Output> {
    let mut command = Command::new(run.program);
    command
        .arg("--veth-cni")
        .arg(run.veth_cni)
        .arg("--vethctl")
        .arg(run.vethctl)
        .args(["--pods", &run.pods.to_string()])
        .args(["--rounds", &run.rounds.to_string()])
        .args(["--parallel", &run.parallel.to_string()])
        .args(run.quick.then_some("--quick"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", cmd::display(&command)))?;
    let mut stdout = child.stdout.take().context("cri-pod-start's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let mut signalled = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if stop.load(Ordering::SeqCst) && !signalled {
            // SAFETY: kill has no memory preconditions; the child is not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted; cri-pod-start removed what it made ({status})");
    }
    if !status.success() {
        bail!(
            "`{}` failed ({status}); its reason is above",
            cmd::display(&command)
        );
    }
    serde_json::from_str(&text).with_context(|| {
        format!(
            "cri-pod-start printed no JSON: {}",
            text.chars().take(300).collect::<String>()
        )
    })
}

/// One pod's lifecycle through CRI. `net_ms`: the network set-up inside
/// its RunPodSandbox by containerd's own timer
/// (`containerd_cri_sandbox_create_network_seconds`: loopback's and the
/// network's CNI ADD, run concurrently); `stop_net_ms`, `remove_net_ms`:
/// the teardowns (CNI DELs) inside Stop and Remove. Only for pods started
/// one at a time.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Sample {
    pub variant: String,
    pub parallel: usize,
    pub round: usize,
    pub pod: usize,
    pub run_ms: f64,
    pub stop_ms: f64,
    pub remove_ms: f64,
    pub net_ms: Option<f64>,
    pub stop_net_ms: Option<f64>,
    pub remove_net_ms: Option<f64>,
}

/// One batch; the `*_mean_ms` are containerd's network timers over the
/// batch, per pod.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Batch {
    pub variant: String,
    pub parallel: usize,
    pub round: usize,
    pub pods: usize,
    pub run_wall_s: f64,
    pub delete_wall_s: f64,
    pub net_mean_ms: f64,
    pub delete_net_mean_ms: f64,
}

/// What `cri-pod-start` prints.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Output {
    pub pods: usize,
    pub rounds: usize,
    pub parallel: Vec<usize>,
    pub veth_cni: String,
    pub vethctl: String,
    pub containerd: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// Per network: name, subnet, conflist, and its uncounted first pod.
    pub variants: Vec<Value>,
    pub samples: Vec<Sample>,
    pub batches: Vec<Batch>,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Lowest and highest per-round median.
    pub round_p50_min_ms: f64,
    pub round_p50_max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CriRow {
    pub variant: String,
    pub parallel: usize,
    pub run: Latency,
    /// containerd's timer of the network set-up inside RunPodSandbox: p50
    /// over the pods (one at a time), mean over the batches (any).
    pub net_p50_ms: Option<f64>,
    pub net_mean_ms: f64,
    /// RunPodSandbox less its network set-up, per pod, p50 (one at a time).
    pub run_rest_p50_ms: Option<f64>,
    /// The same for the teardowns inside Stop + Remove.
    pub delete_net_p50_ms: Option<f64>,
    pub delete_net_mean_ms: f64,
    pub stop_p50_ms: f64,
    pub remove_p50_ms: f64,
    /// StopPodSandbox + RemovePodSandbox of one pod.
    pub stop_remove: Latency,
    /// The batches' wall times added up: all RunPodSandbox calls, all
    /// Stop+Remove calls.
    pub run_total_s: f64,
    pub stop_remove_total_s: f64,
    /// Median over rounds of the round medians' ratio to bridge's.
    pub run_vs_bridge: Option<f64>,
    pub stop_remove_vs_bridge: Option<f64>,
}

fn values<'a>(
    samples: &'a [Sample],
    variant: &'a str,
    parallel: usize,
    f: fn(&Sample) -> f64,
) -> impl Iterator<Item = (usize, f64)> + 'a {
    samples
        .iter()
        .filter(move |s| s.variant == variant && s.parallel == parallel)
        .map(move |s| (s.round, f(s)))
}

fn round_medians(
    samples: &[Sample],
    variant: &str,
    parallel: usize,
    f: fn(&Sample) -> f64,
) -> Vec<(usize, f64)> {
    medians_by_round(values(samples, variant, parallel, f))
}

fn latency(samples: &[Sample], variant: &str, parallel: usize, f: fn(&Sample) -> f64) -> Latency {
    let all: Vec<f64> = values(samples, variant, parallel, f)
        .map(|(_, v)| v)
        .collect();
    let rounds: Vec<f64> = round_medians(samples, variant, parallel, f)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    Latency {
        n: all.len(),
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: percentile(&all, 100.0),
        round_p50_min_ms: rounds.iter().copied().fold(f64::INFINITY, f64::min),
        round_p50_max_ms: rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn paired(
    samples: &[Sample],
    variant: &str,
    parallel: usize,
    f: fn(&Sample) -> f64,
) -> Option<f64> {
    if variant == BRIDGE {
        return None;
    }
    paired_ratio(
        &round_medians(samples, variant, parallel, f),
        &round_medians(samples, BRIDGE, parallel, f),
    )
}

fn run_ms(s: &Sample) -> f64 {
    s.run_ms
}

fn stop_remove_ms(s: &Sample) -> f64 {
    s.stop_ms + s.remove_ms
}

/// The variants in table order.
pub const VARIANTS: [&str; 3] = [VETH_BUILTIN, VETH_HOST_LOCAL, BRIDGE];

pub fn rows(out: &Output) -> Vec<CriRow> {
    let mut rows = Vec::new();
    for &parallel in &out.parallel {
        for variant in VARIANTS {
            let total = |f: fn(&Batch) -> f64| {
                out.batches
                    .iter()
                    .filter(|b| b.variant == variant && b.parallel == parallel)
                    .map(f)
                    .sum()
            };
            let s = &out.samples;
            let pods: usize = out
                .batches
                .iter()
                .filter(|b| b.variant == variant && b.parallel == parallel)
                .map(|b| b.pods)
                .sum();
            let mean = |f: fn(&Batch) -> f64| {
                let weighted: f64 = out
                    .batches
                    .iter()
                    .filter(|b| b.variant == variant && b.parallel == parallel)
                    .map(|b| f(b) * b.pods as f64)
                    .sum();
                weighted / pods as f64
            };
            let p50_of = |f: fn(&Sample) -> Option<f64>| {
                let v: Vec<f64> = s
                    .iter()
                    .filter(|s| s.variant == variant && s.parallel == parallel)
                    .filter_map(f)
                    .collect();
                (!v.is_empty()).then(|| percentile(&v, 50.0))
            };
            rows.push(CriRow {
                variant: variant.to_string(),
                parallel,
                run: latency(s, variant, parallel, run_ms),
                net_p50_ms: p50_of(|s| s.net_ms),
                net_mean_ms: mean(|b| b.net_mean_ms),
                run_rest_p50_ms: p50_of(|s| s.net_ms.map(|n| s.run_ms - n)),
                delete_net_p50_ms: p50_of(|s| Some(s.stop_net_ms? + s.remove_net_ms?)),
                delete_net_mean_ms: mean(|b| b.delete_net_mean_ms),
                stop_p50_ms: latency(s, variant, parallel, |s| s.stop_ms).p50_ms,
                remove_p50_ms: latency(s, variant, parallel, |s| s.remove_ms).p50_ms,
                stop_remove: latency(s, variant, parallel, stop_remove_ms),
                run_total_s: total(|b| b.run_wall_s),
                stop_remove_total_s: total(|b| b.delete_wall_s),
                run_vs_bridge: paired(s, variant, parallel, run_ms),
                stop_remove_vs_bridge: paired(s, variant, parallel, stop_remove_ms),
            });
        }
    }
    rows
}

fn how(parallel: usize) -> String {
    if parallel == 1 {
        "one at a time".into()
    } else {
        format!("{parallel} at a time")
    }
}

fn row<'a>(rows: &'a [CriRow], variant: &str, parallel: usize) -> Option<&'a CriRow> {
    rows.iter()
        .find(|r| r.variant == variant && r.parallel == parallel)
}

/// Issue 11 section 4: RunPodSandbox through containerd at most the bridge
/// plugin's (p50), for both of veth-cni's IPAMs and every concurrency.
pub fn targets(rows: &[CriRow], parallels: &[usize]) -> Vec<Target> {
    let mut out = Vec::new();
    for &parallel in parallels {
        let Some(bridge) = row(rows, BRIDGE, parallel) else {
            continue;
        };
        for ours in [VETH_BUILTIN, VETH_HOST_LOCAL] {
            let Some(r) = row(rows, ours, parallel) else {
                continue;
            };
            let (a, b) = (r.run.p50_ms, bridge.run.p50_ms);
            out.push(Target {
                what: format!(
                    "RunPodSandbox p50 through containerd: {ours} ≤ {BRIDGE} ({})",
                    how(parallel)
                ),
                verdict: if a <= b { "PASS" } else { "MISS" },
                measured: format!(
                    "{a:.1} ms vs {b:.1} ms (× {:.2}; paired by round × {})",
                    a / b,
                    r.run_vs_bridge
                        .map_or_else(|| "-".into(), |v| format!("{v:.2}"))
                ),
            });
        }
    }
    out
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

pub fn table(rows: &[CriRow]) -> String {
    let mut out = String::from(
        "| network (containerd) | at once | RunPodSandbox p50 ms (rounds) | p99 ms | of it network set-up ms | Stop p50 ms | Remove p50 ms | Stop+Remove p50 ms (rounds) | p99 ms | of it network teardown ms | all Runs s | all Stop+Removes s | Run × bridge | Stop+Remove × bridge |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}–{}) | {} | {} | {} | {} | {} ({}–{}) | {} | {} | {:.2} | {:.2} | {} | {} |",
            r.variant,
            r.parallel,
            ms(r.run.p50_ms),
            ms(r.run.round_p50_min_ms),
            ms(r.run.round_p50_max_ms),
            ms(r.run.p99_ms),
            share(r.net_p50_ms, r.net_mean_ms),
            ms(r.stop_p50_ms),
            ms(r.remove_p50_ms),
            ms(r.stop_remove.p50_ms),
            ms(r.stop_remove.round_p50_min_ms),
            ms(r.stop_remove.round_p50_max_ms),
            ms(r.stop_remove.p99_ms),
            share(r.delete_net_p50_ms, r.delete_net_mean_ms),
            r.run_total_s,
            r.stop_remove_total_s,
            ratio(r.run_vs_bridge),
            ratio(r.stop_remove_vs_bridge),
        );
    }
    out += "\n(network set-up / teardown: containerd's own timers of the CNI ADDs inside \
            RunPodSandbox and the DELs inside Stop and Remove, from its metrics; p50 one at a \
            time, ≈ mean per pod when concurrent)\n";
    out
}

/// A network share: the p50 if there is one, else `≈ mean`.
fn share(p50: Option<f64>, mean: f64) -> String {
    match p50 {
        Some(v) => ms(v),
        None if mean.is_finite() => format!("≈ {mean:.1}"),
        None => "-".into(),
    }
}

/// Where a missed RunPodSandbox target's difference comes from, one at a
/// time: containerd's own timer splits every RunPodSandbox into the
/// network set-up (the CNI ADDs) and the rest (sandbox container, shim,
/// pause process); the direct-exec ADDs of the same run (`exec`) are set
/// beside it.
pub fn limits(rows: &[CriRow], exec: &[Row]) -> String {
    let exec_row = |variant: &str| exec.iter().find(|r| r.plugin == variant && r.parallel == 1);
    let Some(bridge) = row(rows, BRIDGE, 1) else {
        return String::new();
    };
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1}", a - b),
        _ => "-".into(),
    };
    let mut out = String::from(
        "What limits RunPodSandbox through containerd (one at a time, p50 ms; network set-up by \
         containerd's own timer, the rest = RunPodSandbox less it, per pod; direct ADD from the \
         table above, same run):\n",
    );
    for variant in VARIANTS {
        let Some(r) = row(rows, variant, 1) else {
            continue;
        };
        let add = exec_row(variant).map(|e| e.add.p50_ms);
        let del = exec_row(variant).map(|e| e.del.p50_ms);
        let _ = write!(
            out,
            "- {variant}: RunPodSandbox {:.1} = network set-up {} + rest {}; direct ADD {}. \
             Stop+Remove {:.1}, of it network teardown {}; direct DEL {}",
            r.run.p50_ms,
            opt(r.net_p50_ms),
            opt(r.run_rest_p50_ms),
            opt(add),
            r.stop_remove.p50_ms,
            opt(r.delete_net_p50_ms),
            opt(del),
        );
        if variant != BRIDGE {
            let _ = write!(
                out,
                ". Against bridge: RunPodSandbox {}, network set-up {}, rest {}, direct ADD {}",
                diff(Some(r.run.p50_ms), Some(bridge.run.p50_ms)),
                diff(r.net_p50_ms, bridge.net_p50_ms),
                diff(r.run_rest_p50_ms, bridge.run_rest_p50_ms),
                diff(add, exec_row(BRIDGE).map(|e| e.add.p50_ms)),
            );
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(variant: &str, round: usize, run_ms: f64) -> Sample {
        Sample {
            variant: variant.into(),
            parallel: 1,
            round,
            pod: 0,
            run_ms,
            stop_ms: run_ms / 2.0,
            remove_ms: 10.0,
            net_ms: Some(run_ms / 4.0),
            stop_net_ms: Some(5.0),
            remove_net_ms: Some(1.0),
        }
    }

    #[test]
    fn rows_pair_rounds_and_the_target_judges_p50() {
        let mut samples = Vec::new();
        for (round, k) in [(0, 1.0), (1, 2.0)] {
            samples.push(s(VETH_BUILTIN, round, 90.0 * k));
            samples.push(s(VETH_HOST_LOCAL, round, 110.0 * k));
            samples.push(s(BRIDGE, round, 100.0 * k));
        }
        let out = Output {
            pods: 2,
            rounds: 2,
            parallel: vec![1],
            veth_cni: String::new(),
            vethctl: String::new(),
            containerd: String::new(),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            variants: Vec::new(),
            samples,
            batches: vec![Batch {
                variant: BRIDGE.into(),
                parallel: 1,
                round: 0,
                pods: 1,
                run_wall_s: 0.1,
                delete_wall_s: 0.06,
                net_mean_ms: 30.0,
                delete_net_mean_ms: 6.0,
            }],
            wall_s: 1.0,
        };
        let rows = rows(&out);
        let veth = row(&rows, VETH_BUILTIN, 1).unwrap();
        assert_eq!(veth.run_vs_bridge, Some(0.9));
        assert_eq!(veth.stop_remove.n, 2);
        let bridge = row(&rows, BRIDGE, 1).unwrap();
        assert_eq!(bridge.run_total_s, 0.1);
        assert_eq!(bridge.net_mean_ms, 30.0);
        assert_eq!(veth.net_p50_ms, Some(22.5));
        assert_eq!(veth.run_rest_p50_ms, Some(67.5));
        assert_eq!(veth.delete_net_p50_ms, Some(6.0));
        let targets = targets(&rows, &[1]);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].verdict, "PASS", "{:?}", targets[0]);
        assert_eq!(targets[1].verdict, "MISS", "{:?}", targets[1]);
        assert!(
            table(&rows).contains("| veth-cni builtin | 1 | 90.0 (90.0–180.0) | 180.0 | 22.5 |")
        );
        assert!(limits(&rows, &[]).contains("network set-up -2.5"));
    }
}
