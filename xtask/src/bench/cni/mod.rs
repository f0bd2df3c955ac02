//! `cargo xtask bench cni`: how long a pod waits for its network — CNI ADD
//! and DEL latency of `veth-cni` (mode tc, with its built-in IPAM and with
//! Debian's `host-local`) beside Debian's reference `bridge` and `ptp`
//! plugins (both with `host-local`), in one run (issue 11, section 4).
//!
//! Each plugin is executed as a container runtime executes it: a fresh
//! process with a clean environment, the `CNI_*` variables (containerd's
//! `CNI_ARGS`) and the configuration on stdin; DEL gets the ADD's result as
//! `prevResult`, as containerd's first DEL does. The pods' network
//! namespaces are the benchmark's own, bind-mounted nsfs files under
//! `/run/vethctl-bench-cni/netns/` like a runtime's `/var/run/netns/cni-…`,
//! made before and removed after the measurements (a namespace's teardown
//! runs in the kernel's background, so none happens during a round); each
//! is empty again after every DEL, which is checked.
//!
//! Interleaving: the pods are measured in rounds of `--batch` pods. In
//! every round, every plugin, one at a time and `--parallel` at a time (the
//! order rotating from round to round), ADDs the round's pods and then
//! DELs them. So every plugin sees the same machine, and a busy spell
//! shows in every plugin's figures of that round rather than in one
//! plugin's. Before the rounds, each plugin does one ADD and DEL that is
//! not counted: veth-cni's first ADD brings its node network up (programs
//! loaded and pinned), bridge's makes the bridge; both are reported apart.
//! VERSION is timed too (a few per plugin per round): process start and
//! exit, the floor under every call.
//!
//! Addresses: 198.19.216.0/24 to 198.19.219.0/24 (RFC 2544), one /24 per
//! plugin, reserved through the integration tests' block files so that no
//! test picks them meanwhile; no traffic is sent. Everything is removed at
//! the end, also on failure and on Ctrl-C (which stops between executions,
//! never in the middle of one: the plugins run in their own process
//! group).
//!
//! Then the same through containerd (cri.rs): RunPodSandbox and
//! StopPodSandbox + RemovePodSandbox over CRI, as kubelet calls them, for
//! veth-cni (builtin and host-local; the same release binary as above) and
//! bridge (host-local), one private containerd per network, interleaved
//! rounds of the same size, one at a time and `--parallel` at a time. The
//! program doing it is `cri-pod-start` of the tests package (their
//! containerd harness); xtask builds it in release and judges its figures.

mod cri;
pub mod exec;
mod profile;
pub mod summary;

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use super::{median, prepare};
use crate::cmd;
use exec::Attachment;
use summary::{Batch, Sample, Verb, BRIDGE, PTP, VETH_BUILTIN, VETH_HOST_LOCAL};
use veth_bench::interrupt;

pub struct Options {
    pub pods: usize,
    pub parallel: usize,
    pub batch: usize,
    pub quick: bool,
    pub profile: bool,
}

const RUN_DIR: &str = "/run/vethctl-bench-cni";
const LOCK_FILE: &str = "/run/vethctl-bench-cni.lock";
/// The integration tests' address block reservations (tests/src/lib.rs,
/// `AddressBlock`): block `b` is 198.(18 + b / 256).(b % 256).0/24.
const BLOCKS_DIR: &str = "/run/vethctl-tests/blocks";
/// Third octets of the plugins' /24s in 198.19.0.0/16, in plugin order.
const SUBNETS: [u32; 4] = [216, 217, 218, 219];
/// veth-cni's networks (≤ 10 characters) and the reference bridge.
const NET_BUILTIN: &str = "bcnivb";
const NET_HOST_LOCAL: &str = "bcnivh";
const BRIDGE_NAME: &str = "bcnibr0";
/// `membarrier(MEMBARRIER_CMD_GLOBAL)`: synchronize_rcu() when more than
/// one CPU is online.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
/// VERSION executions per plugin per round.
const VERSIONS_PER_ROUND: usize = 5;

fn interrupted() -> Result<()> {
    interrupt::check("everything the benchmark made is being removed")
}

/// One plugin under test.
pub struct Plugin {
    pub name: &'static str,
    pub binary: PathBuf,
    pub config: Value,
}

fn plugins(veth_cni: &Path) -> Vec<Plugin> {
    let host_local = |octet: u32| {
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": format!("198.19.{octet}.0/24")}]],
            "dataDir": format!("{RUN_DIR}/host-local"),
        })
    };
    let reference = |name: &str| Path::new(exec::CNI_PATH).join(name);
    vec![
        Plugin {
            name: VETH_BUILTIN,
            binary: veth_cni.to_path_buf(),
            config: json!({
                "cniVersion": "1.0.0", "name": NET_BUILTIN, "type": "veth-cni", "mode": "tc",
                "ipMasq": false,
                "ipam": {"type": "veth-builtin", "subnet": format!("198.19.{}.0/24", SUBNETS[0])},
            }),
        },
        Plugin {
            name: VETH_HOST_LOCAL,
            binary: veth_cni.to_path_buf(),
            config: json!({
                "cniVersion": "1.0.0", "name": NET_HOST_LOCAL, "type": "veth-cni", "mode": "tc",
                "ipMasq": false, "ipam": host_local(SUBNETS[1]),
            }),
        },
        Plugin {
            name: BRIDGE,
            binary: reference("bridge"),
            config: json!({
                "cniVersion": "1.0.0", "name": "bcnibr", "type": "bridge", "bridge": BRIDGE_NAME,
                "isGateway": true, "ipMasq": false, "ipam": host_local(SUBNETS[2]),
            }),
        },
        Plugin {
            name: PTP,
            binary: reference("ptp"),
            config: json!({
                "cniVersion": "1.0.0", "name": "bcniptp", "type": "ptp", "ipMasq": false,
                "ipam": host_local(SUBNETS[3]),
            }),
        },
    ]
}

/// Everything the run made, taken away when dropped: attachments still
/// added (DEL as containerd's second DEL: no `prevResult`), veth-cni's
/// networks, the bridge, the namespaces, the host-local data, the address
/// block reservations and the run lock.
struct Run {
    vethctl: PathBuf,
    plugins: Vec<Plugin>,
    namespaces: Vec<PathBuf>,
    /// container id → (plugin, attachment) of every ADD not yet undone.
    live: Mutex<BTreeMap<String, (usize, Attachment)>>,
    blocks: Vec<PathBuf>,
    _lock: fs::File,
}

impl Run {
    fn netns(&self, pod: usize) -> &Path {
        &self.namespaces[pod]
    }

    /// Removes what an earlier run that died left (this one holds the
    /// lock, so nothing here belongs to a live run).
    fn remove_leftovers(&self) {
        for name in [NET_BUILTIN, NET_HOST_LOCAL] {
            let _ = Command::new(&self.vethctl)
                .args(["down", "--name", name])
                .stdout(Stdio::null())
                .status();
        }
        if Path::new("/sys/class/net").join(BRIDGE_NAME).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", BRIDGE_NAME])
                .status();
        }
        if let Ok(entries) = fs::read_dir(Path::new(RUN_DIR).join("netns")) {
            for entry in entries.flatten() {
                exec::remove_netns(&entry.path());
            }
        }
        let _ = fs::remove_dir_all(RUN_DIR);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()));
        if !live.is_empty() {
            eprintln!("removing {} pod attachment(s) still added", live.len());
        }
        for (_, (plugin, attachment)) in live {
            let plugin = &self.plugins[plugin];
            if let Err(e) = exec::run(&plugin.binary, "DEL", &attachment, &plugin.config) {
                eprintln!("cleanup: {e:#}");
            }
        }
        self.remove_leftovers();
        for block in &self.blocks {
            let _ = fs::remove_file(block);
        }
    }
}

/// Takes the lock at `path` that lets one `task` run at a time on the
/// machine, or says who holds it.
pub fn run_lock(path: &str, task: &str) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another `{task}` is running on this machine ({path} is locked); wait for it");
    }
    Ok(file)
}

/// Reserves the integration tests' address blocks `blocks` (block `b` is
/// 198.(18 + b / 256).(b % 256).0/24) the way the tests reserve theirs (a
/// file holding the owner's pid; a dead owner's is taken over), so that no
/// test picks them meanwhile.
pub fn reserve_blocks(blocks: &[u32]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(BLOCKS_DIR).with_context(|| format!("creating {BLOCKS_DIR}"))?;
    let mut taken = Vec::new();
    for &block in blocks {
        let file = Path::new(BLOCKS_DIR).join(block.to_string());
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file);
        let mine = match created {
            Ok(mut f) => f
                .write_all(std::process::id().to_string().as_bytes())
                .is_ok(),
            Err(_) => {
                let owner = fs::read_to_string(&file).unwrap_or_default();
                let alive =
                    !owner.trim().is_empty() && Path::new("/proc").join(owner.trim()).exists();
                !alive && fs::write(&file, std::process::id().to_string()).is_ok()
            }
        };
        if !mine {
            for f in &taken {
                let _ = fs::remove_file(f);
            }
            bail!(
                "198.{}.{}.0/24 is reserved by a running test ({} holds pid {}); run again when \
                 it is done",
                18 + block / 256,
                block % 256,
                file.display(),
                fs::read_to_string(&file).unwrap_or_default().trim()
            );
        }
        taken.push(file);
    }
    Ok(taken)
}

/// CPU time (user + system) of this process and its reaped children.
fn own_cpu() -> Duration {
    let of = |who| {
        // SAFETY: getrusage fills the struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// vethctl's global change lock: `up`, `down` and `mode set` of any
/// topology on the machine hold it exclusively. Since locks are per
/// network, a veth-cni ADD waits for it only to bring its network up (the
/// first ADD, not counted); ADD and DEL take only their network's lock.
const VETHCTL_LOCK: &str = "/run/vethctl/.lock";

/// How much of the time another vethctl held its change lock exclusively
/// (so veth-cni's ADDs and DELs had to wait): sampled every 5 ms with a
/// shared try-lock, released at once.
struct LockWatch {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<(u64, u64)>>,
}

impl LockWatch {
    fn start(path: &'static str) -> LockWatch {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let (mut samples, mut held) = (0u64, 0u64);
            let Ok(file) = fs::OpenOptions::new().read(true).open(path) else {
                return (0, 0);
            };
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: flock on an fd we own.
                let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
                samples += 1;
                if r == 0 {
                    // SAFETY: as above.
                    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
                } else {
                    held += 1;
                }
                thread::sleep(Duration::from_millis(5));
            }
            (samples, held)
        });
        LockWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Percent of the samples that found the lock held exclusively.
    fn stop(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, held) = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((0, 0));
        if samples == 0 {
            0.0
        } else {
            100.0 * held as f64 / samples as f64
        }
    }
}

/// How busy the machine was with work other than this benchmark's.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// CPUs busy on average with anything but this process and the
    /// plugins it ran (kernel work those caused in background threads —
    /// RCU callbacks, namespace teardown — counts here too).
    pub other_busy_cpus: f64,
    pub busy: bool,
    pub wall_s: f64,
    /// Percent of the rounds during which another vethctl held its change
    /// lock exclusively, holding up veth-cni's ADDs and DELs (and no
    /// reference plugin's).
    pub vethctl_lock_held_by_others_percent: f64,
}

struct LoadMeter {
    started: Instant,
    busy_ns: u64,
    own: Duration,
    loadavg: String,
}

impl LoadMeter {
    fn start() -> Result<LoadMeter> {
        Ok(LoadMeter {
            started: Instant::now(),
            busy_ns: veth_bench::workloads::busy_ns()?,
            own: own_cpu(),
            loadavg: loadavg(),
        })
    }

    fn stop(self) -> Result<Machine> {
        let wall = self.started.elapsed();
        let busy = veth_bench::workloads::busy_ns()?.saturating_sub(self.busy_ns) as f64;
        let own = (own_cpu() - self.own).as_nanos() as f64;
        let other = ((busy - own) / wall.as_nanos() as f64).max(0.0);
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Machine {
            cpus,
            loadavg_start: self.loadavg,
            loadavg_end: loadavg(),
            other_busy_cpus: other,
            busy: other > 0.2,
            wall_s: wall.as_secs_f64(),
            vethctl_lock_held_by_others_percent: 0.0,
        })
    }
}

/// One RCU grace period as the kernel's writers wait for it (TCX attach
/// and detach call synchronize_rcu, and so does this), in ms.
fn grace_period_ms() -> Result<f64> {
    let started = Instant::now();
    // SAFETY: a plain syscall without pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// Figures outside the rounds, per plugin.
#[derive(Clone, Debug, Serialize)]
struct PluginFacts {
    plugin: &'static str,
    binary: String,
    config: Value,
    /// The uncounted first ADD (veth-cni: the network comes up; bridge:
    /// the bridge is made) and its DEL.
    first_add_ms: f64,
    first_del_ms: f64,
    /// VERSION: process start, argument parsing, exit.
    version_p50_ms: f64,
    version_samples_ms: Vec<f64>,
}

/// Everything measured.
struct Measured {
    samples: Vec<Sample>,
    batches: Vec<Batch>,
    /// RCU grace periods, one before every batch pair.
    grace_ms: Vec<f64>,
}

pub fn run(options: &Options) -> Result<()> {
    let (pods, batch) = if options.quick {
        (options.pods.min(20), options.batch.min(10))
    } else {
        (options.pods, options.batch)
    };
    if pods == 0 || options.parallel == 0 || batch == 0 {
        bail!("--pods, --parallel and --batch must each be at least 1");
    }
    if batch > 250 {
        bail!("--batch is at most 250 (each plugin has one /24 for the pods of a round)");
    }
    let batch = batch.min(pods);
    let parallels: Vec<usize> = if options.parallel == 1 {
        vec![1]
    } else {
        vec![1, options.parallel]
    };
    for plugin in ["bridge", "ptp", "host-local"] {
        if !Path::new(exec::CNI_PATH).join(plugin).is_file() {
            bail!(
                "{}/{plugin} is missing: install Debian's containernetworking-plugins",
                exec::CNI_PATH
            );
        }
    }
    let (vethctl, out_dir) = prepare()?;
    let veth_cni = vethctl.with_file_name("veth-cni");
    // The containerd part's program, built now so that a build failure
    // stops the benchmark before it starts.
    let cri_program = cri::build()?;
    let lock = run_lock(LOCK_FILE, "cargo xtask bench cni")?;
    let blocks = reserve_blocks(&SUBNETS.map(|octet| 256 + octet))?;
    let run = Run {
        vethctl,
        plugins: plugins(&veth_cni),
        namespaces: Vec::new(),
        live: Mutex::new(BTreeMap::new()),
        blocks,
        _lock: lock,
    };
    run.remove_leftovers();
    interrupt::catch();
    let result = measure(
        run,
        options,
        pods,
        batch,
        &parallels,
        &out_dir,
        &cri_program,
    );
    interrupt::release();
    result
}

/// How a run is laid out: `pods` per plugin in `rounds` of up to `batch`,
/// each at every parallelism of `parallels`.
struct Shape<'a> {
    pods: usize,
    batch: usize,
    rounds: usize,
    parallels: &'a [usize],
    /// Part of every container id, so that leftovers of a run are its own.
    run_id: u32,
}

fn measure(
    mut run: Run,
    options: &Options,
    pods: usize,
    batch: usize,
    parallels: &[usize],
    out_dir: &Path,
    cri_program: &Path,
) -> Result<()> {
    make_namespaces(&mut run, batch)?;
    let shape = Shape {
        pods,
        batch,
        rounds: pods.div_ceil(batch),
        parallels,
        run_id: std::process::id(),
    };
    announce(&run, &shape);
    let meter = LoadMeter::start()?;
    let mut facts = warm_up(&run, shape.run_id)?;
    let lock_watch = LockWatch::start(VETHCTL_LOCK);
    let mut measured = Measured {
        samples: Vec::new(),
        batches: Vec::new(),
        grace_ms: Vec::new(),
    };
    for round in 0..shape.rounds {
        run_round(&run, &shape, round, &mut measured, &mut facts)?;
    }
    for f in &mut facts {
        f.version_p50_ms = median(&f.version_samples_ms);
    }
    let mut machine = meter.stop()?;
    machine.vethctl_lock_held_by_others_percent = lock_watch.stop();
    check_nothing_left(&run)?;

    let names: Vec<&str> = run.plugins.iter().map(|p| p.name).collect();
    let rows = summary::rows(&measured.samples, &measured.batches, &names, parallels);
    let mut targets = summary::targets(&rows, parallels);
    interrupted()?;
    let containerd = containerd_part(&cri::Run {
        program: cri_program,
        veth_cni: &run.plugins[0].binary,
        vethctl: &run.vethctl,
        pods,
        rounds: shape.rounds,
        parallel: options.parallel,
        quick: options.quick,
    })?;
    targets.extend(containerd.targets());
    let missed = targets.iter().any(|t| t.verdict == "MISS");
    let profile = if options.profile || (missed && !options.quick) {
        interrupted()?;
        eprintln!("profiling where the time goes (strace -f -T, not counted above) ...");
        Some(profile::run(&run, shape.run_id)?)
    } else {
        None
    };
    let results = Results {
        shape: &shape,
        machine: &machine,
        rows: &rows,
        targets: &targets,
        facts: &facts,
        measured: &measured,
        containerd: &containerd,
        profile: profile.as_ref(),
    };
    results.write(out_dir)?;
    if containerd.output.is_none() {
        bail!("the containerd part failed: {}", containerd.reason);
    }
    Ok(())
}

/// One network namespace per pod of a batch, reused by every round.
fn make_namespaces(run: &mut Run, batch: usize) -> Result<()> {
    let netns_dir = Path::new(RUN_DIR).join("netns");
    fs::create_dir_all(&netns_dir)?;
    for i in 0..batch {
        let path = netns_dir.join(format!("pod-{i}"));
        exec::make_netns(&path)?;
        run.namespaces.push(path);
    }
    Ok(())
}

/// What the run is about to do.
fn announce(run: &Run, shape: &Shape) {
    let Shape {
        pods,
        batch,
        rounds,
        parallels,
        ..
    } = shape;
    println!(
        "bench cni: {pods} pods per plugin, one at a time{}, in {rounds} round(s) of up to {batch}; plugins: {}",
        parallels
            .iter()
            .skip(1)
            .map(|p| format!(" and {p} at a time"))
            .collect::<String>(),
        run.plugins.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
    );
}

/// The first ADD and DEL of each plugin, not counted with the others.
fn warm_up(run: &Run, run_id: u32) -> Result<Vec<PluginFacts>> {
    let mut facts = Vec::new();
    for (index, plugin) in run.plugins.iter().enumerate() {
        interrupted()?;
        let attachment = Attachment {
            container_id: exec::container_id(run_id, index, 0, 0, 0),
            netns: run.netns(0).to_path_buf(),
            pod_name: "warm-up".into(),
        };
        let (add, del) = add_del(run, index, &attachment)?;
        facts.push(PluginFacts {
            plugin: plugin.name,
            binary: plugin.binary.display().to_string(),
            config: plugin.config.clone(),
            first_add_ms: add,
            first_del_ms: del,
            version_p50_ms: f64::NAN,
            version_samples_ms: Vec::new(),
        });
        check_empty(run, plugin.name, 1)?;
    }
    Ok(facts)
}

/// (plugin, parallelism) in the order round `round` runs them: plugins
/// rotate from round to round and the parallelisms alternate, so that no
/// plugin is always first or always after the same one.
fn round_order(round: usize, plugins: usize, parallels: &[usize]) -> Vec<(usize, usize)> {
    let mut modes: Vec<usize> = parallels.to_vec();
    if round % 2 == 1 {
        modes.reverse();
    }
    modes
        .iter()
        .flat_map(|&parallel| (0..plugins).map(move |k| ((round + k) % plugins, parallel)))
        .collect()
}

/// One round: a batch of ADDs then DELs per plugin and parallelism, then
/// each plugin's VERSION, and a line on stderr.
fn run_round(
    run: &Run,
    shape: &Shape,
    round: usize,
    measured: &mut Measured,
    facts: &mut [PluginFacts],
) -> Result<()> {
    let n = shape.batch.min(shape.pods - round * shape.batch);
    let started = Instant::now();
    for (plugin, parallel) in round_order(round, run.plugins.len(), shape.parallels) {
        measured.grace_ms.push(grace_period_ms()?);
        run_batch(run, measured, plugin, parallel, round, n, Verb::Add)?;
        run_batch(run, measured, plugin, parallel, round, n, Verb::Del)?;
        check_empty(run, run.plugins[plugin].name, n)?;
    }
    for (index, plugin) in run.plugins.iter().enumerate() {
        for _ in 0..VERSIONS_PER_ROUND {
            interrupted()?;
            let attachment = Attachment {
                container_id: exec::container_id(shape.run_id, index, 0, round, 0),
                netns: run.netns(0).to_path_buf(),
                pod_name: "version".into(),
            };
            let out = exec::run(&plugin.binary, "VERSION", &attachment, &plugin.config)?;
            facts[index]
                .version_samples_ms
                .push(out.elapsed.as_secs_f64() * 1e3);
        }
    }
    let p50 = |plugin: &str, verb: Verb| {
        median(
            &measured
                .samples
                .iter()
                .filter(|s| {
                    s.round == round && s.plugin == plugin && s.verb == verb && s.parallel == 1
                })
                .map(|s| s.ms)
                .collect::<Vec<_>>(),
        )
    };
    eprintln!(
        "round {}/{}: {n} pods, {:.1} s; ADD/DEL p50 one at a time: {}; load {}",
        round + 1,
        shape.rounds,
        started.elapsed().as_secs_f64(),
        run.plugins
            .iter()
            .map(|p| format!(
                "{} {:.0}/{:.0} ms",
                p.name,
                p50(p.name, Verb::Add),
                p50(p.name, Verb::Del)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        loadavg()
    );
    Ok(())
}

/// Everything a run found, for its report (cni.txt) and its record
/// (cni.json).
struct Results<'a> {
    shape: &'a Shape<'a>,
    machine: &'a Machine,
    rows: &'a [summary::Row],
    targets: &'a [summary::Target],
    facts: &'a [PluginFacts],
    measured: &'a Measured,
    containerd: &'a ContainerdPart,
    profile: Option<&'a profile::Profile>,
}

impl Results<'_> {
    /// Prints the report and writes it with the record to `out_dir`.
    fn write(&self, out_dir: &Path) -> Result<()> {
        let text = self.text();
        print!("{text}");
        let json_path = out_dir.join("cni.json");
        fs::write(&json_path, serde_json::to_string_pretty(&self.json())?)?;
        fs::write(out_dir.join("cni.txt"), &text)?;
        println!("results: {} (and cni.txt)", json_path.display());
        Ok(())
    }

    fn text(&self) -> String {
        let Shape {
            pods,
            batch,
            rounds,
            ..
        } = self.shape;
        let machine = self.machine;
        let mut text = format!(
            "bench cni: {pods} pods per plugin in {rounds} interleaved round(s) of up to {batch}; \
             p50/p99 over every execution, (rounds) = lowest–highest round median, × = median over \
             rounds of the round medians' ratio\n"
        );
        text += &format!(
            "machine: {} CPUs, load average {} at start and {} at end, {:.2} CPUs busy with other \
             work on average over {:.0} s; another vethctl held the global change lock (which only a \
             network's first ADD waits for) {:.1} % of the time{}\n\n",
            machine.cpus,
            machine.loadavg_start,
            machine.loadavg_end,
            machine.other_busy_cpus,
            machine.wall_s,
            machine.vethctl_lock_held_by_others_percent,
            if machine.busy {
                " — THE MACHINE WAS BUSY: absolute figures are inflated and spread; read the paired ratios"
            } else {
                ""
            }
        );
        text += &summary::table(self.rows, self.targets);
        if self.targets.iter().any(|t| t.verdict == "MISS") {
            text += "\n";
            text += &summary::limits(
                self.rows,
                &self.measured.grace_ms,
                self.shape.parallels,
                machine.vethctl_lock_held_by_others_percent,
            );
        }
        text += &self.containerd.text(self.rows, self.containerd.missed());
        text += "\nnot counted above (per plugin): first ADD / its DEL; VERSION p50 (process start and exit)\n";
        for f in self.facts {
            text += &format!(
                "- {}: first ADD {:.1} ms / DEL {:.1} ms; VERSION {:.1} ms\n",
                f.plugin, f.first_add_ms, f.first_del_ms, f.version_p50_ms
            );
        }
        if let Some(profile) = self.profile {
            text += "\n";
            text += &profile.text;
        }
        text
    }

    fn json(&self) -> Value {
        let measured = self.measured;
        json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "pods": self.shape.pods,
            "batch": self.shape.batch,
            "rounds": self.shape.rounds,
            "parallel": self.shape.parallels,
            "machine": self.machine,
            "rows": self.rows,
            "targets": self.targets,
            "plugins": self.facts,
            "containerd": self.containerd,
            "profile": self.profile,
            "rcu_grace_period_ms": {
                "p50": median(&measured.grace_ms),
                "p99": summary::percentile(&measured.grace_ms, 99.0),
                "samples": measured.grace_ms,
            },
            "samples": measured.samples,
            "batches": measured.batches,
        })
    }
}

/// One ADD and its DEL of `attachment`, in ms (for the uncounted runs).
fn add_del(run: &Run, plugin: usize, attachment: &Attachment) -> Result<(f64, f64)> {
    let p = &run.plugins[plugin];
    lock_live(run).insert(
        attachment.container_id.clone(),
        (plugin, attachment.clone()),
    );
    let add = exec::run(&p.binary, "ADD", attachment, &p.config)?;
    let del_config = exec::with_prev_result(&p.config, &add.stdout)?;
    let del = exec::run(&p.binary, "DEL", attachment, &del_config)?;
    lock_live(run).remove(&attachment.container_id);
    Ok((
        add.elapsed.as_secs_f64() * 1e3,
        del.elapsed.as_secs_f64() * 1e3,
    ))
}

fn lock_live(run: &Run) -> std::sync::MutexGuard<'_, BTreeMap<String, (usize, Attachment)>> {
    run.live.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` executions of `verb` for the round's pods, `parallel` at a time.
/// The ADD results, for the DELs' prevResult.
static RESULTS: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

/// One ADD (its result kept for the DEL) or DEL (with the ADD's result as
/// prevResult) of `a` by `plugin`, the attachment tracked as live between
/// them so that an interrupted run removes it.
fn add_or_del(run: &Run, plugin: usize, verb: Verb, a: &Attachment) -> Result<exec::Outcome> {
    let p = &run.plugins[plugin];
    match verb {
        Verb::Add => {
            lock_live(run).insert(a.container_id.clone(), (plugin, a.clone()));
            exec::run(&p.binary, "ADD", a, &p.config).inspect(|out| {
                RESULTS
                    .lock()
                    .unwrap()
                    .insert(a.container_id.clone(), out.stdout.clone());
            })
        }
        Verb::Del => {
            let prev = RESULTS.lock().unwrap().remove(&a.container_id);
            prev.context("no ADD result to pass as prevResult")
                .and_then(|prev| exec::with_prev_result(&p.config, &prev))
                .and_then(|config| exec::run(&p.binary, "DEL", a, &config))
                .inspect(|_| {
                    lock_live(run).remove(&a.container_id);
                })
        }
    }
}

fn run_batch(
    run: &Run,
    measured: &mut Measured,
    plugin: usize,
    parallel: usize,
    round: usize,
    n: usize,
    verb: Verb,
) -> Result<()> {
    interrupted()?;
    let p = &run.plugins[plugin];
    let attachment = |pod: usize| Attachment {
        container_id: exec::container_id(std::process::id(), plugin, parallel, round, pod + 1),
        netns: run.netns(pod).to_path_buf(),
        pod_name: format!("pod-{pod}"),
    };
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..parallel.min(n) {
            scope.spawn(|| loop {
                if interrupt::is_set() || failure.lock().unwrap().is_some() {
                    return;
                }
                let pod = next.fetch_add(1, Ordering::SeqCst);
                if pod >= n {
                    return;
                }
                let outcome = add_or_del(run, plugin, verb, &attachment(pod));
                match outcome {
                    Ok(out) => samples.lock().unwrap().push(Sample {
                        plugin: p.name.to_string(),
                        parallel,
                        round,
                        verb,
                        pod,
                        ms: out.elapsed.as_secs_f64() * 1e3,
                        cpu_ms: out.cpu.as_secs_f64() * 1e3,
                    }),
                    Err(e) => {
                        failure.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e.context(format!("{} {} ({parallel} at a time)", p.name, verb.name())));
    }
    interrupted()?;
    measured.samples.extend(samples.into_inner().unwrap());
    measured.batches.push(Batch {
        plugin: p.name.to_string(),
        parallel,
        round,
        verb,
        pods: n,
        wall_s: wall.as_secs_f64(),
    });
    Ok(())
}

/// Every pod namespace of the round holds `lo` alone again.
fn check_empty(run: &Run, plugin: &str, n: usize) -> Result<()> {
    for netns in &run.namespaces[..n] {
        let left = exec::interfaces_besides_lo(netns)?;
        if !left.is_empty() {
            bail!(
                "{plugin}'s DEL left {} in {}",
                left.join(", "),
                netns.display()
            );
        }
    }
    Ok(())
}

/// After the rounds: veth-cni's networks have no endpoint recorded, and
/// host-local holds no allocation.
fn check_nothing_left(run: &Run) -> Result<()> {
    for name in [NET_BUILTIN, NET_HOST_LOCAL] {
        let status: Value = serde_json::from_str(&cmd::output(
            Command::new(&run.vethctl).args(["status", "--json", "--name", name]),
        )?)?;
        let pods = status["topologies"][0]["pods"]
            .as_array()
            .map_or(0, Vec::len);
        if pods != 0 {
            bail!("veth-cni network {name} still lists {pods} endpoint(s) after every DEL");
        }
    }
    let data = Path::new(RUN_DIR).join("host-local");
    for entry in fs::read_dir(&data).into_iter().flatten().flatten() {
        let kept: Vec<String> = fs::read_dir(entry.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        if !kept.is_empty() {
            bail!(
                "host-local still holds {} in {} after every DEL",
                kept.join(", "),
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// The containerd half of the benchmark: RunPodSandbox and
/// StopPodSandbox + RemovePodSandbox through CRI, veth-cni against bridge
/// (see cri.rs and tests/src/bin/cri-pod-start.rs).
#[derive(Clone, Debug, Serialize)]
struct ContainerdPart {
    /// `measured` or `failed`.
    status: &'static str,
    reason: String,
    /// CPUs busy on average while it ran (everything on the machine: this
    /// part's containerds, shims and plugins too), and its wall time.
    busy_cpus: f64,
    wall_s: f64,
    rows: Vec<cri::CriRow>,
    /// What cri-pod-start printed (every pod's timings).
    output: Option<cri::Output>,
}

impl ContainerdPart {
    /// Its section of the printed text: the table, and what limits it when
    /// a target was missed (against the direct ADDs of the same run).
    /// The containerd part's targets, or one NOT RUN target saying why.
    fn targets(&self) -> Vec<summary::Target> {
        match &self.output {
            Some(out) => cri::targets(&self.rows, &out.parallel),
            None => vec![summary::Target {
                what: "RunPodSandbox p50 through containerd: veth-cni ≤ bridge".into(),
                verdict: "NOT RUN",
                measured: self.reason.clone(),
            }],
        }
    }

    /// Whether a target of the containerd part was missed.
    fn missed(&self) -> bool {
        self.targets().iter().any(|t| t.verdict == "MISS")
    }

    fn text(&self, exec_rows: &[summary::Row], missed: bool) -> String {
        let Some(out) = &self.output else {
            return format!(
                "\ncontainerd (RunPodSandbox, Stop+Remove): {}\n",
                self.reason
            );
        };
        let mut text = format!(
            "\ncontainerd ({}, one private instance per network; veth-cni {}): RunPodSandbox \
             and StopPodSandbox + RemovePodSandbox through CRI, {} pods per network in {} \
             interleaved round(s), {:.0} s; load average {} at start and {} at end, {:.2} CPUs \
             busy on average (everything, this part's containerds and pods included)\n\n",
            out.containerd,
            out.veth_cni,
            out.pods,
            out.rounds,
            self.wall_s,
            out.loadavg_start,
            out.loadavg_end,
            self.busy_cpus,
        );
        text += &cri::table(&self.rows);
        text +=
            "\nnot counted above (per network): the first pod's RunPodSandbox / Stop / Remove\n";
        for v in &out.variants {
            text += &format!(
                "- {}: {:.1} / {:.1} / {:.1} ms\n",
                v["variant"].as_str().unwrap_or("?"),
                v["first_run_ms"].as_f64().unwrap_or(f64::NAN),
                v["first_stop_ms"].as_f64().unwrap_or(f64::NAN),
                v["first_remove_ms"].as_f64().unwrap_or(f64::NAN),
            );
        }
        if missed {
            text += "\n";
            text += &cri::limits(&self.rows, exec_rows);
        }
        text
    }
}

/// Runs the containerd part. Its failure is reported (and fails the
/// benchmark after the results are written); an interruption stops here.
fn containerd_part(run: &cri::Run) -> Result<ContainerdPart> {
    eprintln!(
        "containerd part: RunPodSandbox and Stop+Remove through CRI ({} pods per network{}) ...",
        if run.quick {
            run.pods.min(10)
        } else {
            run.pods
        },
        if run.quick { ", --quick" } else { "" }
    );
    let started = Instant::now();
    let busy = veth_bench::workloads::busy_ns()?;
    let measured = cri::measure(run, &interrupt::INTERRUPTED);
    interrupted()?;
    let wall = started.elapsed();
    let busy_cpus =
        veth_bench::workloads::busy_ns()?.saturating_sub(busy) as f64 / wall.as_nanos() as f64;
    Ok(match measured {
        Ok(out) => ContainerdPart {
            status: "measured",
            reason: String::new(),
            busy_cpus,
            wall_s: wall.as_secs_f64(),
            rows: cri::rows(&out),
            output: Some(out),
        },
        Err(e) => ContainerdPart {
            status: "failed",
            reason: format!("failed: {e:#}"),
            busy_cpus,
            wall_s: wall.as_secs_f64(),
            rows: Vec::new(),
            output: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_watch_sees_an_exclusive_holder() {
        let path: &'static str = Box::leak(
            std::env::temp_dir()
                .join(format!("bench-cni-lock-{}", std::process::id()))
                .to_string_lossy()
                .into_owned()
                .into_boxed_str(),
        );
        let holder = fs::File::create(path).unwrap();
        // SAFETY: flock on an fd we own.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        let watch = LockWatch::start(path);
        thread::sleep(Duration::from_millis(60));
        drop(holder);
        thread::sleep(Duration::from_millis(60));
        let held = watch.stop();
        let _ = fs::remove_file(path);
        assert!((10.0..90.0).contains(&held), "{held}");
    }
}
