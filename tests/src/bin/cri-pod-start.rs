//! How long a pod takes to start and go through containerd's CRI, the path
//! kubelet takes: `RunPodSandbox`, then `StopPodSandbox` and
//! `RemovePodSandbox`, timed as a CRI client sees them, for three networks:
//! veth-cni (mode tc) with its built-in IPAM, veth-cni with Debian's
//! `host-local`, and Debian's reference `bridge` with `host-local`.
//!
//! `cargo xtask bench cni` runs this (release build) and reads the JSON it
//! prints on stdout; progress goes to stderr. Usage:
//!
//! ```text
//! cri-pod-start --veth-cni PATH --vethctl PATH [--pods N] [--rounds R]
//!               [--parallel P] [--quick]
//! ```
//!
//! One private containerd per network (the harness in src/runtime: own
//! config, state, socket, runc root, CNI bin and conf dirs, a local pause
//! image), all three started before the first measurement and stopped after
//! the last. Not one containerd switching conflists: containerd picks up a
//! conf dir change asynchronously (a file watcher), so a pod started right
//! after a switch could still get the old network, and it tears pods down
//! with the network configured *now*, so every pod would have to be gone
//! before a switch; three instances idle in between cost nothing measurable.
//!
//! Interleaving: `N` pods per network in `R` rounds. In every round each
//! network (the order rotating from round to round) starts the round's pods
//! one at a time — RunPodSandbox, then (not timed) PodSandboxStatus to check
//! the pod is ready with an address of its network — and then stops and
//! removes them one at a time; then the same `P` at a time. Each network
//! first starts and removes one pod that is not counted (veth-cni's first
//! ADD brings its network up, bridge's makes the bridge, and containerd's
//! first sandbox warms its caches). After every batch nothing of the pods
//! may be left: no sandbox, shim, netns or cached result, no address
//! allocated, no veth-cni endpoint.
//!
//! Where the time goes: containerd's own timers of the network work, from
//! its Prometheus metrics (`containerd_cri_sandbox_create_network_seconds`:
//! the CNI ADDs — loopback's and the network's, concurrently — inside
//! RunPodSandbox; `…_delete_network_seconds`: the DELs inside Stop and
//! Remove), read before and after every call when the pods go one at a
//! time (outside the timed calls), and per batch otherwise.
//!
//! The conflists hold one plugin each, as the direct-exec part of the
//! benchmark runs them: `ipMasq` off, no chained `portmap`/`bandwidth`
//! (they would add the same iptables work to every network). Addresses: a
//! /24 per network out of the tests' reserved 198.18.0.0/15 blocks.
//! Everything is removed at the end, also on failure and on SIGINT/SIGTERM
//! (checked between pods): the pods through CRI, the containerds, veth-cni's
//! networks (`vethctl down -n NAME` with the given vethctl), the bridge.

use std::{
    panic::AssertUnwindSafe,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use veth_bench::interrupt;
use veth_tests::runtime::{
    cni::{CniBinDir, CniConfDir, TestNetwork},
    containerd::{Containerd, ContainerdOptions},
    cri::PodSpec,
};

fn interrupted() -> Result<()> {
    interrupt::check("removing every pod and network made")
}

struct Args {
    veth_cni: PathBuf,
    vethctl: PathBuf,
    pods: usize,
    rounds: usize,
    parallel: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        veth_cni: PathBuf::new(),
        vethctl: PathBuf::new(),
        pods: 200,
        rounds: 5,
        parallel: 8,
    };
    let mut quick = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--veth-cni" => args.veth_cni = value()?.into(),
            "--vethctl" => args.vethctl = value()?.into(),
            "--pods" => args.pods = value()?.parse().context("--pods")?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
            "--parallel" => args.parallel = value()?.parse().context("--parallel")?,
            "--quick" => quick = true,
            other => bail!(
                "unknown argument {other:?}; usage: cri-pod-start --veth-cni PATH --vethctl PATH \
                 [--pods N] [--rounds R] [--parallel P] [--quick]"
            ),
        }
    }
    if quick {
        args.pods = args.pods.min(10);
        args.rounds = 1;
    }
    if args.veth_cni.as_os_str().is_empty() || args.vethctl.as_os_str().is_empty() {
        bail!("--veth-cni and --vethctl are required");
    }
    if args.pods == 0 || args.rounds == 0 || args.parallel == 0 {
        bail!("--pods, --rounds and --parallel must each be at least 1");
    }
    args.rounds = args.rounds.min(args.pods);
    if args.pods.div_ceil(args.rounds) > 250 {
        bail!("at most 250 pods per round (one /24 per network)");
    }
    Ok(args)
}

/// One network under test and the containerd that runs it. Fields drop in
/// order: the containerd (every pod removed through CRI, so the plugin gets
/// its DELs), then veth-cni's network, then the test network (bridge,
/// cached results, host-local store, address block).
struct Variant {
    name: &'static str,
    containerd: Option<Containerd>,
    _down: Option<NetworkDown>,
    net: TestNetwork,
    conflist: Value,
    /// veth-cni's network: its endpoints are counted after every batch.
    veth: bool,
    vethctl: PathBuf,
}

/// `vethctl down -n NAME` when dropped.
struct NetworkDown {
    vethctl: PathBuf,
    name: String,
}

impl Drop for NetworkDown {
    fn drop(&mut self) {
        match Command::new(&self.vethctl)
            .args(["down", "-n", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: vethctl down -n {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: running {}: {e}", self.vethctl.display()),
        }
    }
}

const VETH_BUILTIN: &str = "veth-cni builtin";
const VETH_HOST_LOCAL: &str = "veth-cni host-local";
const BRIDGE: &str = "bridge host-local";

impl Variant {
    fn start(name: &'static str, args: &Args) -> Result<Variant> {
        let net = TestNetwork::reserve();
        let veth = name != BRIDGE;
        let plugin = match name {
            VETH_BUILTIN => json!({
                "type": "veth-cni", "mode": "tc", "ipMasq": false,
                "ipam": {"type": "veth-builtin", "subnet": net.subnet},
            }),
            VETH_HOST_LOCAL => json!({
                "type": "veth-cni", "mode": "tc", "ipMasq": false,
                "ipam": net.host_local_ipam(),
            }),
            _ => json!({
                "type": "bridge", "bridge": net.bridge, "isGateway": true, "ipMasq": false,
                "ipam": net.host_local_ipam(),
            }),
        };
        let conflist = net.conflist(vec![plugin]);
        let mut variant = Variant {
            name,
            containerd: None,
            _down: veth.then(|| NetworkDown {
                vethctl: args.vethctl.clone(),
                name: net.name.clone(),
            }),
            net,
            conflist,
            veth,
            vethctl: args.vethctl.clone(),
        };
        let bin = CniBinDir::with_reference_plugins()?;
        if veth {
            bin.add_as("veth-cni", &args.veth_cni)?;
        }
        let conf = CniConfDir::new();
        conf.write("10-bench.conflist", &variant.conflist)?;
        let options = ContainerdOptions {
            metrics_address: Some((std::net::Ipv4Addr::LOCALHOST, veth_tests::free_port()).into()),
            ..ContainerdOptions::default()
        };
        variant.containerd = Some(
            Containerd::start_with(&bin, &conf, options)
                .with_context(|| format!("starting containerd for {name}"))?,
        );
        Ok(variant)
    }

    fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("started")
    }

    /// containerd's own timers of the pods' network set-up and teardown
    /// (the CNI ADDs inside RunPodSandbox, the DELs inside Stop and
    /// Remove), from its metrics.
    fn timers(&self) -> Result<NetTimers> {
        let text = self.containerd().metrics()?;
        let value = |name: &str| -> Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .with_context(|| format!("containerd's metrics lack {name}"))
        };
        Ok(NetTimers {
            create_s: value("containerd_cri_sandbox_create_network_seconds_sum")?,
            create_n: value("containerd_cri_sandbox_create_network_seconds_count")?,
            delete_s: value("containerd_cri_sandbox_delete_network_seconds_sum")?,
        })
    }

    /// RunPodSandbox of a new pod, timed; then its status (not timed): ready,
    /// with an address of this network. With `scrape`, also the network
    /// set-up's share by containerd's timer (ms).
    fn run_pod(&self, pod: &str, scrape: bool) -> Result<(String, f64, Option<f64>)> {
        let containerd = self.containerd();
        let spec = PodSpec::new(pod).namespace("bench");
        let before = scrape.then(|| self.timers()).transpose()?;
        let started = Instant::now();
        let id = containerd
            .cri()
            .run_pod_sandbox(spec.to_config(containerd.cgroup_parent()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: RunPodSandbox {pod}: {}\ncontainerd's log ends:\n{}",
                    self.name,
                    e.message(),
                    containerd.log_tail(20)
                )
            })?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let net_ms = match before {
            Some(before) => {
                let after = self.timers()?;
                if after.create_n - before.create_n != 1.0 {
                    bail!(
                        "{}: containerd set up {} networks for one pod",
                        self.name,
                        after.create_n - before.create_n
                    );
                }
                Some((after.create_s - before.create_s) * 1e3)
            }
            None => None,
        };
        let status = containerd.pod_status(&id).map_err(|e| {
            anyhow::anyhow!("{}: PodSandboxStatus {pod}: {}", self.name, e.message())
        })?;
        let prefix = self.net.subnet.trim_end_matches("0/24");
        let ip = status.ip.map(|ip| ip.to_string()).unwrap_or_default();
        if !status.ready || !ip.starts_with(prefix) {
            bail!(
                "{}: pod {pod} is {} with address {ip:?}, expected ready in {}",
                self.name,
                if status.ready { "ready" } else { "not ready" },
                self.net.subnet
            );
        }
        Ok((id, ms, net_ms))
    }

    /// StopPodSandbox and RemovePodSandbox, each timed; with `scrape`, also
    /// their network teardowns' shares by containerd's timer (ms).
    fn delete_pod(&self, id: &str, scrape: bool) -> Result<Deleted> {
        let containerd = self.containerd();
        let fail = |what: &str, e: veth_tests::runtime::cri::Status| {
            anyhow::anyhow!(
                "{}: {what} {id}: {}\ncontainerd's log ends:\n{}",
                self.name,
                e.message(),
                containerd.log_tail(20)
            )
        };
        let t0 = scrape.then(|| self.timers()).transpose()?;
        let started = Instant::now();
        containerd
            .stop_pod(id)
            .map_err(|e| fail("StopPodSandbox", e))?;
        let stop_ms = started.elapsed().as_secs_f64() * 1e3;
        let t1 = scrape.then(|| self.timers()).transpose()?;
        let started = Instant::now();
        containerd
            .remove_pod(id)
            .map_err(|e| fail("RemovePodSandbox", e))?;
        let remove_ms = started.elapsed().as_secs_f64() * 1e3;
        let t2 = scrape.then(|| self.timers()).transpose()?;
        let delta =
            |a: Option<NetTimers>, b: Option<NetTimers>| Some((b?.delete_s - a?.delete_s) * 1e3);
        Ok(Deleted {
            stop_ms,
            remove_ms,
            stop_net_ms: delta(t0, t1),
            remove_net_ms: delta(t1, t2),
        })
    }

    /// Nothing of removed pods is left: sandboxes, shims, netns, cached
    /// results, host-local allocations, veth-cni endpoints.
    fn check_empty(&self) -> Result<()> {
        let containerd = self.containerd();
        let pods = containerd
            .cri()
            .list_pod_sandbox()
            .map_err(|e| anyhow::anyhow!("ListPodSandbox: {}", e.message()))?;
        let mut left = containerd.leftovers();
        if !pods.is_empty() {
            left.push(format!("{} sandbox(es)", pods.len()));
        }
        let cached = self.net.cached_results();
        if !cached.is_empty() {
            left.push(format!("cached CNI results {cached:?}"));
        }
        let allocated = self.net.allocated_addresses();
        if !allocated.is_empty() {
            left.push(format!("host-local allocations {allocated:?}"));
        }
        if self.veth {
            let out = Command::new(&self.vethctl)
                .args(["status", "--json", "-n", &self.net.name])
                .output()
                .context("running vethctl status")?;
            if !out.status.success() {
                bail!(
                    "vethctl status -n {}: {}",
                    self.net.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let status: Value = serde_json::from_slice(&out.stdout)?;
            let endpoints = status["topologies"][0]["pods"]
                .as_array()
                .map_or(0, Vec::len);
            if endpoints != 0 {
                left.push(format!("{endpoints} veth-cni endpoint(s)"));
            }
        }
        if !left.is_empty() {
            bail!("{}: after Stop+Remove, left: {left:?}", self.name);
        }
        Ok(())
    }
}

/// Sums (seconds) and counts of containerd's network timers.
#[derive(Clone, Copy)]
struct NetTimers {
    create_s: f64,
    create_n: f64,
    delete_s: f64,
}

struct Deleted {
    stop_ms: f64,
    remove_ms: f64,
    stop_net_ms: Option<f64>,
    remove_net_ms: Option<f64>,
}

/// One pod's lifecycle. The `*_net_ms` (containerd's timers of the network
/// set-up inside RunPodSandbox and of the teardowns inside Stop and
/// Remove) only when the pods went one at a time.
struct Sample {
    variant: &'static str,
    parallel: usize,
    round: usize,
    pod: usize,
    run_ms: f64,
    stop_ms: f64,
    remove_ms: f64,
    net_ms: Option<f64>,
    stop_net_ms: Option<f64>,
    remove_net_ms: Option<f64>,
}

/// One batch: wall times of its two phases, and containerd's network
/// timers over each phase, per pod (means).
struct BatchTimes {
    run_wall_s: f64,
    delete_wall_s: f64,
    net_mean_ms: f64,
    delete_net_mean_ms: f64,
}

/// `n` pods of `variant`, `parallel` at a time: all started, then all
/// stopped and removed. Returns the samples and the two phases' wall times.
fn batch(
    variant: &Variant,
    parallel: usize,
    round: usize,
    n: usize,
) -> Result<(Vec<Sample>, BatchTimes)> {
    type Started = (String, f64, Option<f64>);
    let ids: Mutex<Vec<Option<Started>>> = Mutex::new(vec![None; n]);
    let scrape = parallel == 1;
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let workers = parallel.min(n);
    let phase = |work: &(dyn Fn(usize) -> Result<()> + Sync)| -> f64 {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    if interrupt::is_set() || failure.lock().unwrap().is_some() {
                        return;
                    }
                    let pod = next.fetch_add(1, Ordering::SeqCst);
                    if pod >= n {
                        return;
                    }
                    if let Err(e) = work(pod) {
                        failure.lock().unwrap().get_or_insert(e);
                    }
                });
            }
        });
        started.elapsed().as_secs_f64()
    };
    let tag = format!("r{round}p{parallel}");
    let t0 = variant.timers()?;
    let run_wall = phase(&|pod| {
        let started = variant.run_pod(&format!("{tag}-{pod}"), scrape)?;
        ids.lock().unwrap()[pod] = Some(started);
        Ok(())
    });
    // Pods started before a failure are removed by the containerd's drop.
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e);
    }
    interrupted()?;
    let t1 = variant.timers()?;
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let delete_wall = phase(&|pod| {
        let (id, run_ms, net_ms) = ids.lock().unwrap()[pod].clone().context("no sandbox id")?;
        let d = variant.delete_pod(&id, scrape)?;
        samples.lock().unwrap().push(Sample {
            variant: variant.name,
            parallel,
            round,
            pod,
            run_ms,
            stop_ms: d.stop_ms,
            remove_ms: d.remove_ms,
            net_ms,
            stop_net_ms: d.stop_net_ms,
            remove_net_ms: d.remove_net_ms,
        });
        Ok(())
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    interrupted()?;
    let t2 = variant.timers()?;
    let mut samples = samples.into_inner().unwrap();
    samples.sort_by_key(|s| s.pod);
    let times = BatchTimes {
        run_wall_s: run_wall,
        delete_wall_s: delete_wall,
        net_mean_ms: (t1.create_s - t0.create_s) * 1e3 / n as f64,
        delete_net_mean_ms: (t2.delete_s - t1.delete_s) * 1e3 / n as f64,
    };
    Ok((samples, times))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn measure(args: &Args, variants: &mut Vec<Variant>) -> Result<Value> {
    let started = Instant::now();
    for name in [VETH_BUILTIN, VETH_HOST_LOCAL, BRIDGE] {
        interrupted()?;
        let t = Instant::now();
        variants.push(Variant::start(name, args)?);
        eprintln!(
            "containerd for {name} ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let containerd_version = variants[0]
        .containerd()
        .cri()
        .version()
        .map(|v| format!("{} {}", v.runtime_name, v.runtime_version))
        .unwrap_or_default();

    // Not counted: each network's first pod.
    let mut first = Vec::new();
    for v in variants.iter() {
        interrupted()?;
        let (id, run_ms, net_ms) = v.run_pod("warm-up", true)?;
        let d = v.delete_pod(&id, true)?;
        v.check_empty()?;
        first.push(json!({
            "variant": v.name, "network": v.net.name, "subnet": v.net.subnet,
            "conflist": v.conflist,
            "first_run_ms": run_ms, "first_stop_ms": d.stop_ms, "first_remove_ms": d.remove_ms,
            "first_net_ms": net_ms,
            "first_delete_net_ms": d.stop_net_ms.zip(d.remove_net_ms).map(|(a, b)| a + b),
        }));
    }

    let parallels: Vec<usize> = if args.parallel == 1 {
        vec![1]
    } else {
        vec![1, args.parallel]
    };
    let per_round = args.pods.div_ceil(args.rounds);
    let mut samples = Vec::new();
    let mut batches = Vec::new();
    let loadavg_start = loadavg();
    for round in 0..args.rounds {
        let n = per_round.min(args.pods - round * per_round);
        if n == 0 {
            break;
        }
        let t = Instant::now();
        let mut modes = parallels.clone();
        if round % 2 == 1 {
            modes.reverse();
        }
        let mut round_samples = Vec::new();
        for &parallel in &modes {
            for k in 0..variants.len() {
                let v = &variants[(round + k) % variants.len()];
                let (s, t) = batch(v, parallel, round, n)?;
                v.check_empty()?;
                batches.push(json!({
                    "variant": v.name, "parallel": parallel, "round": round, "pods": n,
                    "run_wall_s": t.run_wall_s, "delete_wall_s": t.delete_wall_s,
                    "net_mean_ms": t.net_mean_ms, "delete_net_mean_ms": t.delete_net_mean_ms,
                }));
                round_samples.extend(s);
            }
        }
        let p50 = |name: &str, f: fn(&Sample) -> f64| {
            median(
                &round_samples
                    .iter()
                    .filter(|s| s.variant == name && s.parallel == 1)
                    .map(f)
                    .collect::<Vec<_>>(),
            )
        };
        eprintln!(
            "containerd round {}/{}: {n} pods, {:.1} s; p50 one at a time, RunPodSandbox (its \
             network set-up) / Stop+Remove: {}; load {}",
            round + 1,
            args.rounds,
            t.elapsed().as_secs_f64(),
            variants
                .iter()
                .map(|v| format!(
                    "{} {:.0} ({:.0}) / {:.0} ms",
                    v.name,
                    p50(v.name, |s| s.run_ms),
                    p50(v.name, |s| s.net_ms.unwrap_or(f64::NAN)),
                    p50(v.name, |s| s.stop_ms + s.remove_ms)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            loadavg()
        );
        samples.extend(round_samples);
    }
    Ok(json!({
        "pods": args.pods,
        "rounds": args.rounds,
        "parallel": parallels,
        "veth_cni": args.veth_cni,
        "vethctl": args.vethctl,
        "containerd": containerd_version,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "variants": first,
        "samples": samples.iter().map(|s| json!({
            "variant": s.variant, "parallel": s.parallel, "round": s.round, "pod": s.pod,
            "run_ms": s.run_ms, "stop_ms": s.stop_ms, "remove_ms": s.remove_ms,
            "net_ms": s.net_ms, "stop_net_ms": s.stop_net_ms, "remove_net_ms": s.remove_net_ms,
        })).collect::<Vec<_>>(),
        "batches": batches,
        "wall_s": started.elapsed().as_secs_f64(),
    }))
}

fn main() {
    interrupt::catch();
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cri-pod-start: {e:#}");
            std::process::exit(2);
        }
    };
    let mut variants = Vec::new();
    let result = measure(&args, &mut variants);
    // Clean up before printing: the harness's drops panic when something
    // stays behind, and that must fail the run.
    let mut clean = true;
    while let Some(v) = variants.pop() {
        let name = v.name;
        let t = Instant::now();
        if std::panic::catch_unwind(AssertUnwindSafe(|| drop(v))).is_err() {
            eprintln!("cri-pod-start: cleaning up {name} failed (above)");
            clean = false;
        } else {
            eprintln!(
                "containerd for {name} removed in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    match result {
        Ok(out) if clean => println!("{out}"),
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("cri-pod-start: {e:#}");
            std::process::exit(1);
        }
    }
}
