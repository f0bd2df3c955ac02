//! Executes plans: observes the kernel, plans, and runs each step through
//! [`netlink`](crate::netlink) and [`dataplane`](crate::dataplane).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Mutex,
};

use anyhow::{anyhow, Context, Result};

use crate::{
    applied::{masquerade_fingerprint, pod_fingerprint, Applied, AppliedPod},
    dataplane::{self, Dataplane, Hook, Pins, PodEntry},
    model::{host_address_label, object_prefix, Mode, Topology},
    netlink::{
        nat, netns, pair,
        pod::{self, PodWiring},
        sysctl, Host,
    },
    plan::{plan_down, plan_up, Observed, Step},
    state::{self, StateDir},
};

/// Testing hook: abort the process after this many steps, to leave the
/// kernel exactly as a crash in the middle of `up` would.
pub const CRASH_AFTER_STEPS_ENV: &str = "VETHCTL_CRASH_AFTER_STEPS";

/// What the kernel has of topology `name`. `recorded` is the description
/// it was last brought up with: IPv6 node addresses carry no label, so that
/// is how an old one is found. `applied` is what the last `up` finished.
pub async fn observe(
    host: &Host,
    name: &str,
    recorded: Option<&Topology>,
    desired: Option<&Topology>,
    applied: Applied,
) -> Result<Observed> {
    let prefix = object_prefix(name);
    let (netns, dead_netns): (BTreeSet<String>, BTreeSet<String>) = netns::list(&prefix)?
        .into_iter()
        .partition(|n| netns::exists(n));
    let mut links: std::collections::BTreeMap<String, _> = host
        .links_with_prefix(&prefix)
        .await?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let mut host_addresses: BTreeSet<IpAddr> = host
        .labelled_addresses(&host_address_label(name))
        .await?
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    // A bridge named outside the prefix (e.g. cni0) is found by name.
    for topology in [recorded, desired].into_iter().flatten() {
        if !topology.bridge.starts_with(&prefix) {
            if let Some(link) = host.link(&topology.bridge).await? {
                links.insert(link.name.clone(), link);
            }
        }
    }
    if let Some(v6) = recorded.and_then(|t| t.host_address6) {
        if host.has_loopback_address6(v6).await? {
            host_addresses.insert(IpAddr::V6(v6));
        }
    }
    // Only a two-pod topology can have (had) a direct pair.
    let direct_pair = match [recorded, desired]
        .into_iter()
        .flatten()
        .find(|t| t.pods.len() == 2)
    {
        Some(t) => pair::exists(&t.pods[0]).await?,
        None => false,
    };
    let netns_inodes = netns
        .iter()
        .filter_map(|n| Some((n.clone(), netns::inode(n)?)))
        .collect();
    let pins = Pins::new(name);
    let programs_current = desired.is_some_and(|t| {
        pins.programs_exist() && applied.programs.as_deref() == Some(&programs_digest(t))
    });
    let linked = match desired {
        Some(t) => {
            let hooks = Hook::for_mode(t.mode);
            t.pods
                .iter()
                .filter(|p| hooks.iter().all(|&h| pins.link(&p.host_veth, h).exists()))
                .map(|p| p.host_veth.clone())
                .collect()
        }
        None => BTreeSet::new(),
    };
    Ok(Observed {
        netns,
        dead_netns,
        links,
        host_addresses,
        direct_pair,
        netns_inodes,
        applied,
        programs_current,
        linked,
        masquerade_table: desired.is_some() && nat::table_exists(name)?,
    })
}

fn programs_digest(topology: &Topology) -> String {
    dataplane::programs_digest(topology.counters, topology.mode == Mode::Tc)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct UpOptions {
    /// Wire every pod again and reload the programs, ignoring the record of
    /// what the last `up` did.
    pub repair: bool,
    /// Print how long each phase and step took (stderr).
    pub timings: bool,
}

/// `up --timings`: the time since the previous mark, on stderr.
struct Timings {
    on: bool,
    last: Mutex<std::time::Instant>,
}

impl Timings {
    fn new(on: bool) -> Timings {
        Timings {
            on,
            last: Mutex::new(std::time::Instant::now()),
        }
    }

    fn mark(&self, what: impl std::fmt::Display) {
        if self.on {
            let mut last = self.last.lock().expect("timings lock");
            let now = std::time::Instant::now();
            eprintln!(
                "{:>9.2} ms  {what}",
                now.duration_since(*last).as_secs_f64() * 1e3
            );
            *last = now;
        }
    }
}

/// Converges the kernel to `topology`. `source` is the description's text,
/// recorded for `status`, `stats` and `down`. Pods the last `up` wired as
/// wanted are left alone, unless `options.repair` asks to wire every pod
/// again (which also puts right what was changed inside a pod's namespace).
pub async fn up(topology: &Topology, source: &str, options: UpOptions) -> Result<Vec<Step>> {
    let timings = Timings::new(options.timings);
    let _lock = state::lock()?;
    timings.mark("wait for the lock");
    refuse_address_clashes(topology)?;
    let host = Host::connect()?;
    let observed = observe_for(&host, topology, options.repair).await?;
    timings.mark("observe the kernel");
    StateDir::new(&topology.name).save(source)?;
    let steps = plan_up(topology, &observed);
    let executor = Executor::new(
        host,
        &topology.name,
        forget_redone(&observed.applied, &steps),
        timings,
    );
    *executor.veths.lock().expect("veths lock") = observed
        .links
        .values()
        .filter(|l| l.is_veth())
        .map(|l| (l.name.clone(), l.ifindex))
        .collect();
    executor.save_applied()?;
    executor.timings.mark("plan and save state");
    executor.run(Some(topology), &steps).await?;
    executor.record_applied(topology).await?;
    executor.timings.mark("record what was applied");
    Ok(steps)
}

/// The record minus what `steps` redo: saved before they start, so a crash
/// in the middle leaves nothing recorded as done that may be half-done.
fn forget_redone(applied: &Applied, steps: &[Step]) -> Applied {
    let mut kept = applied.clone();
    for step in steps {
        match step {
            Step::ConfigurePod { pod } => {
                kept.pods.remove(pod);
            }
            Step::AttachPrograms { pods } => {
                for pod in pods {
                    kept.pods.remove(pod);
                }
            }
            Step::LoadPrograms => kept.programs = None,
            Step::ConfigureMasquerade => kept.masquerade = None,
            _ => {}
        }
    }
    kept
}

/// Refuses a topology whose addresses overlap another topology that is up,
/// before anything is made.
fn refuse_address_clashes(topology: &Topology) -> Result<()> {
    for name in state::recorded_topologies()? {
        if name == topology.name {
            continue;
        }
        if let Ok(Some(other)) = StateDir::new(&name).load() {
            if let Some(clash) = topology.address_clash(&other) {
                return Err(clash.into());
            }
        }
    }
    Ok(())
}

/// What `up` would do, without doing it.
pub async fn plan(topology: &Topology) -> Result<Vec<Step>> {
    let host = Host::connect()?;
    Ok(plan_up(
        topology,
        &observe_for(&host, topology, false).await?,
    ))
}

/// What the kernel has of `topology`, with what the last `up` finished
/// (nothing with `repair`, so that every pod is wired again).
async fn observe_for(host: &Host, topology: &Topology, repair: bool) -> Result<Observed> {
    let state = StateDir::new(&topology.name);
    let recorded = state.load().ok().flatten();
    let mut applied = Applied::load(&state)?;
    if repair {
        // Offloads are still reset where they may be set.
        applied = Applied {
            xdp_offloads: applied.xdp_offloads,
            ..Applied::default()
        };
    }
    observe(
        host,
        &topology.name,
        recorded.as_ref(),
        Some(topology),
        applied,
    )
    .await
}

/// Removes everything of topology `name`; fine to repeat, and after a crash.
pub async fn down(name: &str) -> Result<Vec<Step>> {
    let _lock = state::lock()?;
    let host = Host::connect()?;
    let recorded = StateDir::new(name).load().ok().flatten();
    let observed = observe(&host, name, recorded.as_ref(), None, Applied::default()).await?;
    let steps = plan_down(&observed);
    Executor::new(host, name, Applied::default(), Timings::new(false))
        .run(None, &steps)
        .await?;
    Ok(steps)
}

struct Executor {
    host: Host,
    name: String,
    crash_after: Option<usize>,
    /// The record as the steps change it; saved before a step makes it
    /// true (xdp offloads) and after the last step (everything else).
    applied: Mutex<Applied>,
    /// An attach running while the next steps go on.
    attaching: Mutex<Option<tokio::task::JoinHandle<Result<()>>>>,
    /// Ifindex of host-side veths by name: as observed, minus those the
    /// steps delete or create (looked up again when needed).
    veths: Mutex<BTreeMap<String, u32>>,
    timings: Timings,
}

impl Executor {
    fn new(host: Host, name: &str, applied: Applied, timings: Timings) -> Executor {
        let crash_after = std::env::var(CRASH_AFTER_STEPS_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        Executor {
            host,
            name: name.to_string(),
            crash_after,
            applied: Mutex::new(applied),
            attaching: Mutex::new(None),
            veths: Mutex::new(BTreeMap::new()),
            timings,
        }
    }

    fn save_applied(&self) -> Result<()> {
        let applied = self.applied.lock().expect("applied record lock");
        applied.save(&StateDir::new(&self.name))
    }

    /// After a complete `up`: every pod is wired as `topology` says, on the
    /// veth and namespace it has now.
    async fn record_applied(&self, topology: &Topology) -> Result<()> {
        let veths = self.host_veths(topology).await?;
        {
            let mut applied = self.applied.lock().expect("applied record lock");
            applied.programs = Some(programs_digest(topology));
            applied.masquerade = Some(masquerade_fingerprint(topology));
            applied.pods.clear();
            for pod in &topology.pods {
                let (Some(&host_ifindex), Some(netns_inode)) =
                    (veths.get(&pod.host_veth), netns::inode(&pod.netns))
                else {
                    continue;
                };
                applied.pods.insert(
                    pod.name.clone(),
                    AppliedPod {
                        fingerprint: pod_fingerprint(topology, pod),
                        host_ifindex,
                        netns_inode,
                    },
                );
            }
            applied
                .xdp_offloads
                .retain(|p| topology.pod(p).is_some() && topology.mode == Mode::Xdp);
        }
        self.save_applied()
    }

    /// Ifindex of each pod's host-side veth: known ones from what was
    /// observed, the others looked up (and remembered).
    async fn host_veths(&self, topology: &Topology) -> Result<BTreeMap<String, u32>> {
        let mut known = self.veths.lock().expect("veths lock").clone();
        for pod in &topology.pods {
            if !known.contains_key(&pod.host_veth) {
                if let Some(link) = self.host.link(&pod.host_veth).await? {
                    known.insert(link.name, link.ifindex);
                }
            }
        }
        *self.veths.lock().expect("veths lock") = known.clone();
        Ok(known)
    }

    async fn run(&self, topology: Option<&Topology>, steps: &[Step]) -> Result<()> {
        for (done, step) in steps.iter().enumerate() {
            if self.crash_after == Some(done) {
                eprintln!("vethctl: {CRASH_AFTER_STEPS_ENV}={done}: aborting before \"{step}\"");
                std::process::abort();
            }
            self.step(topology, step)
                .await
                .with_context(|| format!("topology {:?}: {step}", self.name))?;
            self.timings.mark(step);
        }
        self.finish_attaching().await
    }

    /// Polls until none of `names` is left, giving up once a second passes
    /// without one going (a namespace held open elsewhere keeps its pair;
    /// the following steps delete what is left).
    async fn await_veths_gone(&self, names: &[String]) -> Result<()> {
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let prefix = object_prefix(&self.name);
        let mut left = usize::MAX;
        let mut progress = std::time::Instant::now();
        loop {
            let now_left = self
                .host
                .links_with_prefix(&prefix)
                .await?
                .iter()
                .filter(|l| wanted.contains(l.name.as_str()))
                .count();
            if now_left == 0 {
                return Ok(());
            }
            if now_left < left {
                left = now_left;
                progress = std::time::Instant::now();
            } else if progress.elapsed() > std::time::Duration::from_secs(1) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits for the attach running in the background, if any.
    async fn finish_attaching(&self) -> Result<()> {
        let running = self.attaching.lock().expect("attaching lock").take();
        if let Some(task) = running {
            task.await.context("attach task panicked")??;
            self.timings.mark("wait for the attach to finish");
        }
        Ok(())
    }

    async fn step(&self, topology: Option<&Topology>, step: &Step) -> Result<()> {
        let need = || topology.ok_or_else(|| anyhow!("step needs the topology description"));
        match step {
            Step::ConfigureDirectPair => {
                let topology = need()?;
                pair::ensure(&self.host, &topology.pods[0], &topology.pods[1]).await?;
            }
            Step::RemoveDirectPair => {
                let topology = need()?;
                pair::remove(&topology.pods[0]).await?;
            }
            Step::ConfigureMasquerade => {
                let topology = need()?;
                let mut nets = Vec::new();
                if topology.uplink.masquerade {
                    nets.push(nat::Masquerade {
                        network: topology.pod_cidr.network().into(),
                        prefix_len: topology.pod_cidr.prefix_len(),
                    });
                    nets.extend(topology.pod_cidr6.map(|c| nat::Masquerade {
                        network: c.network().into(),
                        prefix_len: c.prefix_len(),
                    }));
                }
                nat::apply(
                    &topology.name,
                    &topology.object_prefix(),
                    topology.uplink.interface.as_deref(),
                    &nets,
                )?;
            }
            Step::RemoveMasquerade => nat::remove(&self.name)?,
            Step::EnableForwarding => {
                sysctl::enable_forwarding(need()?.pod_cidr6.is_some())?;
            }
            Step::ConfigureBridge { .. } => {
                self.host.ensure_bridge(need()?).await?;
            }
            Step::ConfigureHostAddress => {
                let topology = need()?;
                self.host
                    .ensure_host_address(&topology.host_address_label, topology.host_address)
                    .await?;
                if let Some(v6) = topology.host_address6 {
                    self.host.ensure_host_address6(v6).await?;
                }
            }
            Step::RemoveHostAddress {
                address: IpAddr::V4(_),
            } => {
                self.host
                    .remove_host_addresses(&host_address_label(&self.name))
                    .await?;
            }
            Step::RemoveHostAddress {
                address: IpAddr::V6(v6),
            } => {
                self.host.remove_host_address6(*v6).await?;
            }
            Step::CreateNetns { netns } => netns::create(netns)?,
            Step::CreateVeth { pod, host_veth } => {
                self.veths.lock().expect("veths lock").remove(host_veth);
                let pod = need()?.pod(pod).context("pod missing from the topology")?;
                self.host.create_pod_veth(pod).await?;
            }
            Step::ConfigurePod { pod } => {
                let topology = need()?;
                let pod = topology.pod(pod).context("pod missing from the topology")?;
                self.configure_pod(topology, pod).await?;
            }
            Step::LoadPrograms => {
                let topology = need()?.clone();
                // Loading verifies programs and may take a moment: off the
                // runtime.
                let replaced = tokio::task::spawn_blocking(move || {
                    dataplane::load_programs(
                        &topology.name,
                        topology.counters,
                        topology.mode == Mode::Tc,
                    )
                })
                .await
                .context("loading task panicked")??;
                for map in replaced {
                    eprintln!(
                        "vethctl: topology {:?}: map {map} was pinned by a vethctl with another \
                         layout; made afresh (what it held, such as counters, starts over)",
                        self.name
                    );
                }
            }
            Step::SyncDataplane => self.sync_dataplane(need()?).await?,
            Step::AttachPrograms { pods } => {
                let topology = need()?;
                let veths = pods
                    .iter()
                    .map(|p| {
                        Ok(topology
                            .pod(p)
                            .context("pod missing from the topology")?
                            .host_veth
                            .clone())
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (name, hooks) = (self.name.clone(), Hook::for_mode(topology.mode));
                self.finish_attaching().await?;
                let task = tokio::task::spawn_blocking(move || {
                    dataplane::attach_all(&name, &veths, hooks)
                });
                *self.attaching.lock().expect("attaching lock") = Some(task);
            }
            Step::ResetOffloads { pod } => {
                // Only once XDP is detached.
                self.finish_attaching().await?;
                let pod = need()?.pod(pod).context("pod missing from the topology")?;
                pod::set_offloads(pod, false).await?;
                let mut applied = self.applied.lock().expect("applied record lock");
                applied.xdp_offloads.remove(&pod.name);
            }
            Step::DeleteLink { name, ifindex } => {
                self.veths.lock().expect("veths lock").remove(name);
                self.host.delete_link(*ifindex, name).await?
            }
            Step::DeleteNetns { netns } => netns::delete(netns)?,
            Step::AwaitVethsGone { names } => self.await_veths_gone(names).await?,
            Step::RemovePins => Pins::new(&self.name).remove_all()?,
            Step::RemoveState => StateDir::new(&self.name).remove()?,
        }
        Ok(())
    }

    /// Pod side and host side of one pod, wired for the topology's mode.
    async fn configure_pod(&self, topology: &Topology, pod: &crate::model::Pod) -> Result<()> {
        let bridge = match topology.mode {
            Mode::Bridge => Some(
                self.host
                    .link(&topology.bridge)
                    .await?
                    .with_context(|| format!("bridge {:?} is missing", topology.bridge))?,
            ),
            _ => None,
        };
        let wiring = match &bridge {
            Some(_) => PodWiring::Bridged {
                prefix4: topology.pod_cidr.prefix_len(),
                prefix6: topology.pod_cidr6.map_or(128, |c| c.prefix_len()),
                gateway4: topology.host_address,
                gateway6: topology.host_address6,
            },
            None => PodWiring::Routed,
        };
        pod::configure(pod, &wiring).await?;
        if topology.mode == Mode::Xdp {
            let newly = (self.applied.lock().expect("applied record lock"))
                .xdp_offloads
                .insert(pod.name.clone());
            if newly {
                self.save_applied()?;
            }
            // Before XDP is attached: redirected frames need the pod's NAPI.
            pod::set_offloads(pod, true).await?;
        }
        let veth = self
            .host
            .link(&pod.host_veth)
            .await?
            .with_context(|| format!("host-side veth {:?} is missing", pod.host_veth))?;
        self.host
            .ensure_host_veth(pod, &veth, bridge.as_ref().map(|b| b.ifindex))
            .await?;
        sysctl::set_rps(&pod.host_veth, topology.rps)?;
        match bridge {
            Some(_) => self.host.remove_pod_routes(pod, veth.ifindex).await,
            None => {
                self.host
                    .ensure_pod_routes(pod, veth.ifindex, topology)
                    .await
            }
        }
    }

    async fn sync_dataplane(&self, topology: &Topology) -> Result<()> {
        let veths = self.host_veths(topology).await?;
        let mut entries = Vec::with_capacity(topology.pods.len());
        for pod in &topology.pods {
            let host_ifindex = *veths
                .get(&pod.host_veth)
                .with_context(|| format!("host-side veth {:?} is missing", pod.host_veth))?;
            entries.push(PodEntry {
                host_ifindex,
                ipv4: pod.ipv4,
                ipv6: pod.ipv6,
                mac: pod.mac,
                gateway_mac: pod.gateway_mac,
                mtu: pod.mtu,
            });
        }
        let ifindexes: BTreeSet<u32> = entries.iter().map(|e| e.host_ifindex).collect();
        let wanted: BTreeSet<&str> = topology.pods.iter().map(|p| p.host_veth.as_str()).collect();
        let mut dataplane = Dataplane::open(&self.name)?;
        {
            dataplane.sync_pods(&entries)?;
            dataplane.sync_devmap(&ifindexes)?;
            for veth in dataplane.pins().linked_veths()? {
                if !wanted.contains(veth.as_str()) {
                    dataplane.pins().remove_links(&veth)?;
                }
            }
            Ok(())
        }
    }
}
