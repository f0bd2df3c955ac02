//! The churn: `--width` workers taking steps from the schedule (a new pod
//! made, ADDed and probed; a live pod DELed and its namespace checked and
//! removed), a sweeper that checks every live pod's mapped state against
//! `vethctl status` every second, and a disturber that runs the mode
//! changes and the map-layout change when their cycle comes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use veth_bench::{disruption::Traffic, interrupt};

use super::{
    probe, rss,
    runtime::{ips, Added, Rng, Runtime, Stuck},
    schedule::{Event, Schedule, Step, CONFIGURED_MODE},
    snapshot::{footprint, Leak},
};
use crate::bench::cni::exec::{self, Attachment};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Adding,
    /// ADD succeeded; being probed.
    Probing,
    Live,
    Deleting,
}

#[derive(Clone, Debug)]
struct Pod {
    attachment: Attachment,
    ipv4: Option<Ipv4Addr>,
    result: Vec<u8>,
    state: State,
}

/// A pod whose ADD succeeded but that was cut off.
#[derive(Clone, Debug, Serialize)]
pub struct CutOff {
    pub pod: String,
    pub ipv4: Option<Ipv4Addr>,
    /// How it was found: its probe after ADD, or a sweep's state.
    pub how: String,
    /// A probe went unanswered (else only the mapped state was wrong, as
    /// `status` reads the pinned maps).
    pub unanswered: bool,
    /// The disturbance last started before it was found (or none).
    pub after_event: String,
}

/// What the churn found.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    /// Pods whose ADD succeeded.
    pub added: usize,
    pub cut_off: Vec<CutOff>,
    /// Address → the live pods that held it at once.
    pub duplicates: BTreeMap<String, BTreeSet<String>>,
    /// Ids whose concurrent ADDs both succeeded with different addresses.
    pub double_add_two_addresses: Vec<String>,
    pub stuck: Vec<Stuck>,
    /// Interfaces left in a pod's namespace after its DELs succeeded.
    pub leftovers: Vec<Leak>,
    pub sweeps: usize,
    pub sweep_errors: Vec<String>,
    /// Pods seen not `ready` once (judged again by the next sweep).
    #[serde(skip)]
    suspects: BTreeMap<String, String>,
}

impl Findings {
    fn cut(
        &mut self,
        pod: &str,
        ipv4: Option<Ipv4Addr>,
        how: String,
        unanswered: bool,
        event: &str,
    ) {
        if self.cut_off.iter().all(|c| c.pod != pod) {
            self.cut_off.push(CutOff {
                pod: pod.to_string(),
                ipv4,
                how,
                unanswered,
                after_event: event.to_string(),
            });
        }
    }
}

/// One disturbance and how it went.
#[derive(Clone, Debug, Serialize)]
pub struct EventRow {
    pub at_cycle: usize,
    pub what: String,
    pub ms: f64,
    pub outcome: String,
    /// When it started, ns on the traffic's clock.
    #[serde(skip)]
    pub started_ns: u64,
    pub datagrams_lost_after: u64,
}

struct Churn {
    schedule: Schedule,
    pods: BTreeMap<usize, Pod>,
    next_index: usize,
    in_flight: usize,
    rng: Rng,
    findings: Findings,
    cycles_done: usize,
    last_event: String,
}

impl Churn {
    /// Pods attached (ADD succeeded, DEL not finished), the long-lived two
    /// included.
    fn live(&self) -> usize {
        2 + self
            .pods
            .values()
            .filter(|p| p.state != State::Adding)
            .count()
    }
}

/// Everything the churn's threads share.
pub struct Ctx<'a> {
    pub runtime: &'a Runtime,
    pub vethctl: &'a Path,
    pub network: &'a str,
    pub netns_dir: &'a Path,
    /// The long-lived pod's echo server every new pod is probed against.
    pub echo: SocketAddrV4,
    /// The long-lived pods, by name: (namespace, address).
    pub long_lived: Vec<(String, PathBuf, Ipv4Addr)>,
    pub sweep_every: Duration,
    /// The agent's pid, whose RSS is sampled as each cycle ends.
    agent: u32,
    rss: Mutex<Vec<rss::Sample>>,
    churn: Mutex<Churn>,
    failure: Mutex<Option<anyhow::Error>>,
    done: AtomicBool,
}

/// Pods a sweep probes at most (at once, 3 s at most).
const MAX_PROBES: usize = 16;

/// 64 hex digits, as containerd's sandbox ids: the run and the pod.
pub fn container_id(index: usize) -> String {
    format!("{:08x}50a4{:052x}", std::process::id(), index)
}

impl<'a> Ctx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: &'a Runtime,
        vethctl: &'a Path,
        network: &'a str,
        netns_dir: &'a Path,
        echo: SocketAddrV4,
        long_lived: Vec<(String, PathBuf, Ipv4Addr)>,
        schedule: Schedule,
        seed: u64,
        sweep_every: Duration,
    ) -> Ctx<'a> {
        Ctx {
            runtime,
            vethctl,
            network,
            netns_dir,
            echo,
            long_lived,
            sweep_every,
            agent: 0,
            rss: Mutex::new(Vec::new()),
            churn: Mutex::new(Churn {
                schedule,
                pods: BTreeMap::new(),
                next_index: 1,
                in_flight: 0,
                rng: Rng::new(seed ^ 0x5eed),
                findings: Findings::default(),
                cycles_done: 0,
                last_event: "none yet".into(),
            }),
            failure: Mutex::new(None),
            done: AtomicBool::new(false),
        }
    }

    /// Samples the agent `pid`'s RSS as each cycle ends.
    pub fn with_agent(mut self, pid: u32) -> Ctx<'a> {
        self.agent = pid;
        self
    }

    /// The agent's RSS as each cycle ended, with the live count.
    pub fn rss_samples(&self) -> Vec<rss::Sample> {
        std::mem::take(&mut *self.rss.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn churn(&self) -> MutexGuard<'_, Churn> {
        self.churn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        interrupt::is_set()
            || self.done.load(Ordering::Relaxed)
            || self.failure.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    /// Runs the churn to its end (or the first failure of the soak
    /// itself, or Ctrl-C); the events' rows.
    pub fn run(
        &self,
        width: usize,
        events: &[(usize, Event)],
        traffic: &Traffic,
    ) -> Result<Vec<EventRow>> {
        let started = Instant::now();
        let rows = thread::scope(|s| {
            let workers: Vec<_> = (0..width).map(|_| s.spawn(|| self.worker())).collect();
            let sweeper = s.spawn(|| self.sweeper());
            let disturber = s.spawn(|| self.disturber(events, traffic));
            let progress = s.spawn(|| self.progress(started));
            for w in workers {
                if let Err(e) = w
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))
                {
                    self.fail(e);
                }
            }
            self.done.store(true, Ordering::Relaxed);
            let _ = sweeper.join();
            let _ = progress.join();
            disturber.join().unwrap_or_default()
        });
        if let Some(e) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        interrupt::check("everything the soak made is being removed")?;
        Ok(rows)
    }

    fn fail(&self, e: anyhow::Error) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    }

    pub fn findings(&self) -> Findings {
        std::mem::take(&mut self.churn().findings)
    }

    pub fn cycles_done(&self) -> usize {
        self.churn().cycles_done
    }

    fn worker(&self) -> Result<()> {
        while !self.stopped() {
            let next = {
                let mut c = self.churn();
                let population = c
                    .pods
                    .values()
                    .filter(|p| p.state != State::Deleting)
                    .count();
                let deletable: Vec<usize> = c
                    .pods
                    .iter()
                    .filter(|(_, p)| p.state == State::Live)
                    .map(|(&i, _)| i)
                    .collect();
                let live = c.live();
                let in_flight = c.in_flight;
                match c.schedule.next(population, deletable.len(), in_flight) {
                    Step::Done => return Ok(()),
                    Step::Wait => None,
                    Step::Add => {
                        let index = c.next_index;
                        c.next_index += 1;
                        let pod = Pod {
                            attachment: Attachment {
                                container_id: container_id(index),
                                netns: self.netns_dir.join(format!("soak-{index}")),
                                pod_name: format!("soak-{index}"),
                            },
                            ipv4: None,
                            result: Vec::new(),
                            state: State::Adding,
                        };
                        c.pods.insert(index, pod);
                        c.in_flight += 1;
                        Some((Step::Add, index, live))
                    }
                    Step::Del => {
                        let pick = c.rng.below(deletable.len());
                        let index = deletable[pick];
                        if let Some(p) = c.pods.get_mut(&index) {
                            p.state = State::Deleting;
                        }
                        c.in_flight += 1;
                        Some((Step::Del, index, live))
                    }
                }
            };
            let Some((step, index, live)) = next else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            let outcome = match step {
                Step::Add => self.add_pod(index, live),
                _ => self.del_pod(index, live),
            };
            self.churn().in_flight -= 1;
            if let Err(e) = outcome {
                // Stops the other threads at their next step.
                self.fail(e);
                return Ok(());
            }
        }
        Ok(())
    }

    fn pod(&self, index: usize) -> Result<Pod> {
        self.churn()
            .pods
            .get(&index)
            .cloned()
            .context("a pod the churn is working on vanished from its table")
    }

    fn add_pod(&self, index: usize, live: usize) -> Result<()> {
        let a = self.pod(index)?.attachment;
        exec::make_netns(&a.netns)?;
        match self.runtime.add(&a, live)? {
            Added::Result(result) => self.probe_new(index, result),
            Added::Twice { kept, other } => {
                let mut c = self.churn();
                let what = format!("{}: {:?} and {:?}", a.pod_name, ips(&kept), ips(&other));
                c.findings.double_add_two_addresses.push(what);
                drop(c);
                self.probe_new(index, kept)
            }
            Added::Stuck(stuck) => {
                self.churn().findings.stuck.push(stuck);
                self.finish(index, true)
            }
        }
    }

    /// The pod's ADD succeeded: is its address another live pod's, and
    /// does it reach the long-lived pod?
    fn probe_new(&self, index: usize, result: Vec<u8>) -> Result<()> {
        let ipv4 = ips(&result)
            .iter()
            .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok());
        let (a, token) = {
            let mut c = self.churn();
            let name = format!("soak-{index}");
            if let Some(ip) = ipv4 {
                let mut holders: BTreeSet<String> = c
                    .pods
                    .iter()
                    // A pod being deleted may have given its address back.
                    .filter(|(&i, p)| {
                        i != index
                            && p.ipv4 == Some(ip)
                            && matches!(p.state, State::Probing | State::Live)
                    })
                    .map(|(_, p)| p.attachment.pod_name.clone())
                    .collect();
                holders.extend(
                    self.long_lived
                        .iter()
                        .filter(|l| l.2 == ip)
                        .map(|l| l.0.clone()),
                );
                if !holders.is_empty() {
                    holders.insert(name);
                    c.findings
                        .duplicates
                        .entry(ip.to_string())
                        .or_default()
                        .extend(holders);
                }
            }
            c.findings.added += 1;
            let token = c.rng.next();
            let pod = c.pods.get_mut(&index).context("pod vanished")?;
            pod.ipv4 = ipv4;
            pod.result = result;
            pod.state = State::Probing;
            (pod.attachment.clone(), token)
        };
        let reached = match ipv4 {
            Some(_) => probe::reaches(&a.netns, self.echo, token)?,
            None => false,
        };
        let mut c = self.churn();
        if !reached {
            let event = c.last_event.clone();
            let how = if ipv4.is_some() {
                "no echo from the long-lived pod within 3 s of its ADD".to_string()
            } else {
                "its ADD result has no IPv4 address".to_string()
            };
            c.findings.cut(&a.pod_name, ipv4, how, true, &event);
        }
        if let Some(p) = c.pods.get_mut(&index) {
            p.state = State::Live;
        }
        Ok(())
    }

    fn del_pod(&self, index: usize, live: usize) -> Result<()> {
        let pod = self.pod(index)?;
        let stuck = self.runtime.remove(&pod.attachment, &pod.result, live)?;
        let is_stuck = stuck.is_some();
        if let Some(s) = stuck {
            self.churn().findings.stuck.push(s);
        }
        self.finish(index, is_stuck)
    }

    /// The runtime is done with the pod: its namespace must hold `lo`
    /// alone, and is removed (kept until the end when something is left in
    /// it, so that the end's count sees the host side too).
    fn finish(&self, index: usize, stuck: bool) -> Result<()> {
        let a = self.pod(index)?.attachment;
        let left = exec::interfaces_besides_lo(&a.netns)?;
        if left.is_empty() {
            exec::remove_netns(&a.netns);
        } else {
            let after = if stuck {
                "the runtime gave up on it"
            } else {
                "its DELs succeeded"
            };
            self.churn().findings.leftovers.push(Leak {
                kind: "pod interface".into(),
                what: format!(
                    "{} left in {}'s namespace after {after}",
                    left.join(", "),
                    a.pod_name
                ),
            });
        }
        let (cycle, live, plateau) = {
            let mut c = self.churn();
            c.pods.remove(&index);
            c.cycles_done += 1;
            (c.cycles_done, c.live(), c.schedule.plateau())
        };
        if let Ok(f) = footprint(self.agent) {
            self.rss
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rss::Sample {
                    cycle,
                    live,
                    plateau,
                    rss_kb: f.rss_kb,
                });
        }
        Ok(())
    }

    fn sleep_unless_done(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.stopped() {
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn progress(&self, started: Instant) {
        while !self.stopped() {
            self.sleep_unless_done(Duration::from_secs(10));
            let c = self.churn();
            eprintln!(
                "soak: {:.0} s, {} cycles done, {} ADDs started, {} pods attached, {} cut off, {} stuck",
                started.elapsed().as_secs_f64(),
                c.cycles_done,
                c.schedule.adds(),
                c.live(),
                c.findings.cut_off.len(),
                c.findings.stuck.len()
            );
        }
    }

    fn sweeper(&self) {
        while !self.stopped() {
            self.sleep_unless_done(self.sweep_every);
            if self.stopped() {
                return;
            }
            if let Err(e) = self.sweep() {
                let mut c = self.churn();
                c.findings.sweep_errors.push(format!("{e:#}"));
            }
        }
    }

    /// Live pods a sweep may judge: name → (namespace, address).
    fn settled(&self) -> BTreeMap<String, (PathBuf, Option<Ipv4Addr>)> {
        let c = self.churn();
        let mut pods: BTreeMap<String, (PathBuf, Option<Ipv4Addr>)> = c
            .pods
            .values()
            .filter(|p| p.state == State::Live)
            .map(|p| {
                (
                    p.attachment.pod_name.clone(),
                    (p.attachment.netns.clone(), p.ipv4),
                )
            })
            .collect();
        for (name, netns, ip) in &self.long_lived {
            pods.insert(name.clone(), (netns.clone(), Some(*ip)));
        }
        pods
    }

    /// One look at `vethctl status`: every pod live before and after it
    /// must be there and `ready` (a pod seen otherwise twice in a row, or
    /// that no longer reaches the long-lived pod, is cut off); no two
    /// pods may share an address.
    pub fn sweep(&self) -> Result<()> {
        let before = self.settled();
        let out = Command::new(self.vethctl)
            .args(["status", "--json", "--name", self.network])
            .output()
            .context("starting vethctl status")?;
        if !out.status.success() {
            anyhow::bail!(
                "vethctl status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let status: Value = serde_json::from_slice(&out.stdout).context("vethctl status --json")?;
        let after = self.settled();
        let listed = status_pods(&status);
        // Among pods live throughout (a pod being deleted may have given
        // its address back before its record went).
        let mut by_ip: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, (ip, _)) in &listed {
            if before.contains_key(name) && after.contains_key(name) {
                by_ip.entry(ip.clone()).or_default().insert(name.clone());
            }
        }
        let notes = self.not_ready(&listed, &before, &after);
        let mut c = self.churn();
        c.findings.sweeps += 1;
        let event = c.last_event.clone();
        for (ip, pods) in by_ip.into_iter().filter(|(_, p)| p.len() > 1) {
            c.findings.duplicates.entry(ip).or_default().extend(pods);
        }
        let mut suspects = BTreeMap::new();
        for (name, ip, state, reaches) in notes {
            let again = c.findings.suspects.contains_key(&name);
            if !reaches || again {
                let how = format!(
                    "a sweep found its endpoint {state}{}{}",
                    if again { " twice in a row" } else { "" },
                    if reaches {
                        ""
                    } else {
                        " and it no longer reached the long-lived pod"
                    }
                );
                c.findings.cut(&name, ip, how, !reaches, &event);
            } else {
                suspects.insert(name, state);
            }
        }
        c.findings.suspects = suspects;
        Ok(())
    }

    /// The pods live before and after the look that `status` did not show
    /// `ready`: (name, address, state, still reaches the long-lived pod).
    /// Up to [`MAX_PROBES`] are probed, at once; the others (and the
    /// long-lived pods, whose traffic is measured) count as reaching, and
    /// are judged by the next sweep.
    fn not_ready(
        &self,
        listed: &BTreeMap<String, (String, String)>,
        before: &BTreeMap<String, (PathBuf, Option<Ipv4Addr>)>,
        after: &BTreeMap<String, (PathBuf, Option<Ipv4Addr>)>,
    ) -> Vec<(String, Option<Ipv4Addr>, String, bool)> {
        let mut notes: Vec<(String, Option<Ipv4Addr>, String, bool)> = Vec::new();
        let mut to_probe = Vec::new();
        for (name, (netns, ip)) in before {
            if after.get(name).map(|a| &a.0) != Some(netns) {
                continue;
            }
            let state = listed
                .get(name)
                .map_or("missing from status".to_string(), |(_, s)| s.clone());
            if state == "ready" {
                continue;
            }
            let long_lived = self.long_lived.iter().any(|l| Some(l.2) == *ip);
            if let (Some(ip), false, true) = (ip, long_lived, to_probe.len() < MAX_PROBES) {
                to_probe.push((notes.len(), netns.clone(), *ip));
            }
            notes.push((name.clone(), *ip, state, true));
        }
        let answers: Vec<(usize, bool)> = thread::scope(|s| {
            let probes: Vec<_> = to_probe
                .iter()
                .map(|(i, netns, ip)| {
                    s.spawn(move || {
                        // A pod deleted meanwhile (namespace gone) is not judged.
                        let reached = probe::reaches(netns, self.echo, u64::from(u32::from(*ip)));
                        (*i, reached.unwrap_or(true))
                    })
                })
                .collect();
            probes.into_iter().filter_map(|p| p.join().ok()).collect()
        });
        for (i, reached) in answers {
            notes[i].3 = reached;
        }
        notes
    }

    fn disturber(&self, events: &[(usize, Event)], traffic: &Traffic) -> Vec<EventRow> {
        let mut rows = Vec::new();
        for (at, event) in events {
            while !self.stopped() && self.churn().schedule.adds() < *at {
                thread::sleep(Duration::from_millis(20));
            }
            if self.stopped() {
                break;
            }
            let what = event.label();
            self.churn().last_event = what.clone();
            let started_ns = traffic.now_ns();
            let started = Instant::now();
            let outcome = match self.disturb(event) {
                Ok(s) => s,
                Err(e) => format!("FAILED: {e:#}"),
            };
            eprintln!("soak: at cycle {at}: {what}: {outcome}");
            rows.push(EventRow {
                at_cycle: *at,
                what,
                ms: started.elapsed().as_secs_f64() * 1e3,
                outcome,
                started_ns,
                datagrams_lost_after: 0,
            });
        }
        self.back_to_configured_mode(&mut rows, traffic);
        rows
    }

    /// Events the churn outran are skipped; the network still goes back to
    /// its configuration's mode (as the next ADD would make it), so the
    /// end's snapshot compares like with like (a bridge left by `mode set
    /// bridge` is no leak).
    fn back_to_configured_mode(&self, rows: &mut Vec<EventRow>, traffic: &Traffic) {
        let last_mode = rows
            .iter()
            .rev()
            .find_map(|r| r.what.strip_prefix("mode set "));
        if last_mode.is_none_or(|m| m == CONFIGURED_MODE) {
            return;
        }
        let event = Event::Mode(CONFIGURED_MODE);
        let (started_ns, started) = (traffic.now_ns(), Instant::now());
        let outcome = self
            .disturb(&event)
            .unwrap_or_else(|e| format!("FAILED: {e:#}"));
        let at = self.churn().schedule.adds();
        eprintln!(
            "soak: at cycle {at}: {} (the configuration's): {outcome}",
            event.label()
        );
        rows.push(EventRow {
            at_cycle: at,
            what: event.label(),
            ms: started.elapsed().as_secs_f64() * 1e3,
            outcome,
            started_ns,
            datagrams_lost_after: 0,
        });
    }

    fn disturb(&self, event: &Event) -> Result<String> {
        match event {
            Event::Mode(mode) => {
                let out = Command::new(self.vethctl)
                    .args(["mode", "set", mode, "--name", self.network])
                    .output()
                    .context("starting vethctl mode set")?;
                if !out.status.success() {
                    anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
                }
                Ok("ok".into())
            }
            Event::MapLayout => {
                // As a vethctl of another build would: under the change
                // locks (the network's endpoint rewire, all of the node's,
                // then the network's), so no ADD is half-way through the
                // maps, nor a rewire through the endpoints, meanwhile.
                let locks = Path::new("/run/vethctl/.locks");
                let _rewire = flock_exclusive(&locks.join(format!("{}.rewire", self.network)))?;
                let _global = flock_exclusive(Path::new("/run/vethctl/.lock"))?;
                let _network = flock_exclusive(&locks.join(self.network))?;
                let pins = Path::new("/sys/fs/bpf/vethctl").join(self.network);
                let replaced = veth_bench::disruption::give_pinned_maps_other_layouts(&pins)?;
                Ok(format!(
                    "{} pinned maps replaced: {}",
                    replaced.len(),
                    replaced.join(", ")
                ))
            }
        }
    }
}

/// An exclusive `flock` on `path`, held until the file is dropped.
fn flock_exclusive(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// `vethctl status --json`'s pods of the one network: name (the
/// Kubernetes pod name) → (IPv4, endpoint state).
fn status_pods(status: &Value) -> BTreeMap<String, (String, String)> {
    let mut pods = BTreeMap::new();
    for pod in status["topologies"][0]["pods"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = pod["k8s"]
            .as_str()
            .and_then(|k| k.rsplit('/').next())
            .or(pod["name"].as_str())
            .unwrap_or("?")
            .to_string();
        pods.insert(
            name,
            (
                pod["ipv4"].as_str().unwrap_or("").to_string(),
                pod["endpoint"].as_str().unwrap_or("?").to_string(),
            ),
        );
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_pods_are_named_by_their_kubernetes_name() {
        let status = serde_json::json!({"topologies": [{"pods": [
            {"name": "0000", "k8s": "bench-cni/soak-3", "ipv4": "198.19.240.4", "endpoint": "ready"},
            {"name": "long-a", "ipv4": "198.19.240.2", "endpoint": "unmapped"}
        ]}]});
        let pods = status_pods(&status);
        assert_eq!(
            pods["soak-3"],
            ("198.19.240.4".to_string(), "ready".to_string())
        );
        assert_eq!(pods["long-a"].1, "unmapped");
    }

    #[test]
    fn container_ids_are_64_hex_and_distinct() {
        let a = container_id(1);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, container_id(2));
    }
}
