//! A node joining a cluster kept in etcd, as its agent does (flannel's
//! subnet lease): its record under a short liveness lease, so that a
//! second agent with the same node name is refused while this one runs;
//! its IPv4 and IPv6 pod ranges claimed in one transaction under a long
//! lease (the ones it holds already, else the first free ones), so that no
//! two nodes ever hold one range and a node that restarts keeps its own;
//! then the CNI configuration list for its range. While the agent runs it
//! renews both leases; when it stops it revokes the liveness one, and its
//! ranges stay reserved until the long lease ends.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{cluster, Etcd, EtcdOptions};
use crate::cni::node_lease;
use crate::model::{
    cluster::validate_node_name,
    file_pods::FilePods,
    format_mac,
    node::vtep_mac,
    registry::{self, choose_range, AgentId, Keys, NodeRecord, RangeRecord, Settings},
};

/// What the agent is told (`vethctl agent --cluster …`).
#[derive(Clone, Debug)]
pub struct JoinOptions {
    pub etcd: EtcdOptions,
    /// `--cluster-name`; default: the only cluster in etcd.
    pub cluster: Option<String>,
    /// `--cluster-node`: this node's name in the cluster.
    pub node: String,
    /// `--underlay`: the interface on the network the nodes share;
    /// default: the settings' `[underlay] interface`.
    pub underlay: Option<String>,
    /// Where the CNI configuration list goes.
    pub cni_conf_dir: PathBuf,
    pub liveness_seconds: i64,
    /// `--pods FILE`: pods of the node's own, in its leased range.
    pub pods: Option<PathBuf>,
}

/// File name of the list the agent writes (install-cni's default).
pub const CONF_FILE: &str = "10-vethctl.conflist";
/// Why the lease file says lost when the range lease ran out.
const RANGES_LOST: &str = "the lease of its pod ranges ran out (etcd away for longer than it \
                           lasts?), and another node may lease them";
/// How often the range lease is renewed (it lasts 24 h).
const RANGE_RENEW_EVERY: Duration = Duration::from_secs(600);

/// A node that has joined: what it holds, and how to keep it.
#[derive(Clone)]
pub struct Member {
    pub(super) etcd: Etcd,
    pub(super) keys: Keys,
    pub cluster: String,
    /// The cluster's settings, as stored.
    pub settings: Settings,
    pub record: NodeRecord,
    /// The liveness lease (replaced when it expired while etcd was away).
    live: Arc<AtomicI64>,
    range_lease: i64,
    /// The range lease ran out: the lease file says so from then on.
    ranges_lost: Arc<AtomicBool>,
    liveness_seconds: i64,
    pub conflist: PathBuf,
    /// The node's own pods (`--pods`).
    pub pods: FilePods,
}

/// Joins the cluster: record, ranges, CNI list.
pub async fn join(o: &JoinOptions) -> Result<Member> {
    validate_node_name("--cluster-node", &o.node)?;
    if !(2..=3600).contains(&o.liveness_seconds) {
        bail!(
            "--liveness-ttl: {} s is out of range; use 2 to 3600",
            o.liveness_seconds
        );
    }
    let etcd = Etcd::connect(&o.etcd).await?;
    let cluster = cluster::cluster_name(&etcd, o.cluster.as_deref()).await?;
    let keys = Keys::new(&cluster);
    let settings =
        cluster::settings_of(&etcd, &cluster, &cluster::snapshot(&etcd, &keys).await?.0)?;
    let pods = read_pods(o.pods.as_deref(), &settings)?;
    let interface = o
        .underlay
        .as_deref()
        .unwrap_or(&settings.cluster.underlay.interface);
    let mut record = own_record(&o.node, interface).await?;
    let asked = node_lease::boottime_ms();
    let live = grant(&etcd, o.liveness_seconds).await?;
    claim_node(&etcd, &keys, &record, live).await?;
    let held = hold_ranges(&etcd, &keys, &settings, &mut record, live, &o.cni_conf_dir).await;
    let (range_lease, conflist) = match held {
        Ok(held) => held,
        Err(e) => {
            // The name is free again at once, not after the TTL.
            revoke(&etcd, live).await;
            return Err(e);
        }
    };
    let member = Member {
        etcd,
        keys,
        cluster,
        settings,
        record,
        live: Arc::new(AtomicI64::new(live)),
        range_lease,
        ranges_lost: Arc::new(AtomicBool::new(false)),
        liveness_seconds: o.liveness_seconds,
        conflist,
        pods,
    };
    if let Err(e) = member.note_held(live, asked, o.liveness_seconds) {
        // Without the file every ADD would be refused: say so now.
        member.leave().await;
        return Err(e);
    }
    Ok(member)
}

/// The pods of `--pods FILE`, checked by the settings' rules before the
/// node claims anything.
fn read_pods(path: Option<&std::path::Path>, settings: &Settings) -> Result<FilePods> {
    let Some(path) = path else {
        return Ok(FilePods::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--pods: reading {}", path.display()))?;
    FilePods::from_toml(&text, settings).map_err(|e| {
        crate::model::ModelError {
            field: format!("--pods {}: {}", path.display(), e.field),
            ..e
        }
        .into()
    })
}

/// Claims the node's ranges, records them and writes the CNI list: the
/// range lease and the list's path.
async fn hold_ranges(
    etcd: &Etcd,
    keys: &Keys,
    settings: &Settings,
    record: &mut NodeRecord,
    live: i64,
    conf_dir: &std::path::Path,
) -> Result<(i64, PathBuf)> {
    let (range_lease, v4, v6) = claim_ranges(etcd, keys, settings, &record.name).await?;
    record.pod_cidr = Some(v4);
    record.pod_cidr6 = v6;
    put_record(etcd, keys, record, live).await?;
    Ok((range_lease, write_conflist(settings, record, conf_dir)?))
}

async fn revoke(etcd: &Etcd, lease: i64) {
    let revoked = etcd
        .call("removing the node's record", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await;
    if let Err(e) = revoked {
        log::warn!("vethctl agent: {e:#}; the record goes when its lease runs out");
    }
}

/// This node's record before it holds ranges: who runs it and where the
/// others reach it.
async fn own_record(node: &str, interface: &str) -> Result<NodeRecord> {
    let ((address, address_len), v6) = underlay_addresses(interface).await?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    Ok(NodeRecord {
        name: node.to_string(),
        agent: AgentId {
            boot: boot.trim().to_string(),
            netns: crate::node::current().cookie,
            pid: std::process::id(),
            started: crate::logging::rfc3339(SystemTime::now()),
        },
        address: Some(address),
        address6: v6.map(|(a, _)| a),
        address_len: Some(address_len),
        address6_len: v6.map(|(_, l)| l),
        vtep_mac: Some(format_mac(&vtep_mac(address))),
        pod_cidr: None,
        pod_cidr6: None,
    })
}

/// An address and its prefix length.
type OnLink<A> = (A, u8);

/// The first IPv4 and global IPv6 address of `interface`.
async fn underlay_addresses(
    interface: &str,
) -> Result<(OnLink<Ipv4Addr>, Option<OnLink<Ipv6Addr>>)> {
    let host = crate::netlink::Host::connect()?;
    let all = crate::netlink::inspect::addresses(&host).await?;
    let mine: Vec<(IpAddr, u8)> = all
        .iter()
        .filter(|a| a.ifname == interface)
        .map(|a| (a.address, a.prefix_len))
        .collect();
    let v4 = mine.iter().find_map(|(a, len)| match a {
        IpAddr::V4(v4) if !v4.is_loopback() => Some((*v4, *len)),
        _ => None,
    });
    let v6 = mine.iter().find_map(|(a, len)| match a {
        // Link-local addresses are the same on every link: no node's.
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 != 0xfe80 && !v6.is_loopback() => {
            Some((*v6, *len))
        }
        _ => None,
    });
    let v4 = v4.with_context(|| {
        format!(
            "--underlay: interface {interface:?} has no IPv4 address here; name the interface \
             on the network the nodes share (the other nodes reach this one at its address)"
        )
    })?;
    Ok((v4, v6))
}

async fn grant(etcd: &Etcd, seconds: i64) -> Result<i64> {
    let response = etcd
        .call("granting a lease", |mut c| async move {
            c.lease_grant(seconds, None).await
        })
        .await?;
    Ok(response.id())
}

/// Puts the node's record unless another agent's is there. A record of
/// this very node's previous agent, which died without removing it, is
/// taken over at once instead of waiting for its lease to run out.
async fn claim_node(etcd: &Etcd, keys: &Keys, record: &NodeRecord, lease: i64) -> Result<()> {
    let key = keys.node(&record.name);
    for _ in 0..3 {
        let value = serde_json::to_vec(record)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = etcd
            .call("claiming the node's name", |mut c| async move {
                c.txn(txn).await
            })
            .await?;
        if response.succeeded() {
            return Ok(());
        }
        let Some((other, revision)) = got_record(&response.op_responses()) else {
            continue; // Gone meanwhile.
        };
        if !other
            .agent
            .is_gone_predecessor_of(&record.agent, pid_runs(other.agent.pid))
        {
            return Err(crate::Error::Conflict(format!(
                "--cluster-node: node {:?} is held by another agent: {} (its record lives while \
                 that agent runs and up to its liveness TTL after it stops); stop that agent, or \
                 give this one another --cluster-node",
                record.name, other.agent
            ))
            .into());
        }
        log::info!(
            "vethctl agent: taking over from {}, which is gone",
            other.agent
        );
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        etcd.call("removing the gone agent's record", |mut c| async move {
            c.txn(txn).await
        })
        .await?;
    }
    bail!(
        "--cluster-node: the record of node {:?} kept changing under us; try again",
        record.name
    )
}

fn got_record(responses: &[TxnOpResponse]) -> Option<(NodeRecord, i64)> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => {
            let kv = get.kvs().first()?;
            Some((serde_json::from_slice(kv.value()).ok()?, kv.mod_revision()))
        }
        _ => None,
    })
}

/// Whether process `pid` runs (on this machine: only asked of an agent of
/// the same boot and network namespace).
pub(crate) fn pid_runs(pid: u32) -> bool {
    // 0 would ask about our own process group.
    let Ok(pid @ 1..) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Claims the node's ranges (those it holds, else the first free ones)
/// in one transaction that fails if any of them changed since it was
/// read; a lost race is read again.
async fn claim_ranges(
    etcd: &Etcd,
    keys: &Keys,
    settings: &Settings,
    me: &str,
) -> Result<(i64, Ipv4Net, Option<Ipv6Net>)> {
    let c = &settings.cluster;
    let mut granted = None;
    for _ in 0..10 {
        let (snap, _) = cluster::snapshot(etcd, keys).await?;
        let v4 = choose_range(
            IpNet::V4(c.cluster_cidr),
            c.node_prefix_len,
            &snap.held4,
            me,
            ("cluster_cidr", "node_prefix_len"),
        )?;
        let v6 = c
            .cluster_cidr6
            .map(|c6| {
                choose_range(
                    IpNet::V6(c6),
                    c.node_prefix_len6,
                    &snap.held6,
                    me,
                    ("cluster_cidr6", "node_prefix_len6"),
                )
            })
            .transpose()?;
        let held: Vec<&registry::Held> = snap.held4.iter().chain(&snap.held6).collect();
        let lease = match (held.iter().find(|h| h.node == me && h.lease != 0), granted) {
            (Some(mine), _) => mine.lease,
            (None, Some(lease)) => lease,
            (None, None) => *granted.insert(grant(etcd, registry::RANGE_LEASE_SECONDS).await?),
        };
        let mut compares = Vec::new();
        let mut puts = Vec::new();
        let value = serde_json::to_vec(&RangeRecord {
            node: me.to_string(),
        })?;
        for range in [Some(v4), v6].into_iter().flatten() {
            let key = keys.range(range);
            compares.push(match held.iter().find(|h| h.range == range) {
                Some(h) => Compare::mod_revision(key.clone(), CompareOp::Equal, h.revision),
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            });
            puts.push(TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        let txn = Txn::new().when(compares).and_then(puts);
        let response = etcd
            .call("claiming the node's pod ranges", |mut c| async move {
                c.txn(txn).await
            })
            .await?;
        if response.succeeded() {
            let v4 = match v4 {
                IpNet::V4(n) => n,
                IpNet::V6(_) => unreachable!("an IPv4 range"),
            };
            let v6 = v6.and_then(|n| match n {
                IpNet::V6(n) => Some(n),
                IpNet::V4(_) => None,
            });
            return Ok((lease, v4, v6));
        }
    }
    bail!("the cluster's ranges kept changing under us (other nodes joining); try again")
}

async fn put_record(etcd: &Etcd, keys: &Keys, record: &NodeRecord, lease: i64) -> Result<()> {
    let key = keys.node(&record.name);
    let value = serde_json::to_vec(record)?;
    etcd.call("writing the node's record", |mut c| async move {
        c.put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
    })
    .await?;
    Ok(())
}

/// The cluster and node the list and the lease file are for.
fn mark(settings: &Settings, record: &NodeRecord) -> node_lease::Mark {
    node_lease::Mark {
        name: settings.name().to_string(),
        node: record.name.clone(),
    }
}

/// The CNI list for the node's ranges, written as `install-cni` writes
/// it (validated first, replaced whole), marked as the node's (see
/// [`node_lease`]: the plugin adds pods only while the lease is held).
fn write_conflist(
    settings: &Settings,
    record: &NodeRecord,
    dir: &std::path::Path,
) -> Result<PathBuf> {
    let part = &settings.cluster.parts[0];
    let options = crate::cni::install::InstallOptions {
        plugin: PathBuf::new(),
        bin_dir: PathBuf::new(),
        conf_dir: dir.to_path_buf(),
        conf_file: CONF_FILE.to_string(),
        name: settings.name().to_string(),
        mode: part.mode.name().to_string(),
        ipam: veth_cni_protocol::BUILTIN_IPAM_TYPE.to_string(),
        subnet: record.pod_cidr.map(|n| n.to_string()).unwrap_or_default(),
        subnet6: record.pod_cidr6.map(|n| n.to_string()),
        mtu: Some(settings.pod_mtu()),
        chain: Vec::new(),
        log_file: None,
        log_level: None,
        plugins_from: None,
        cluster: Some(mark(settings, record)),
    };
    crate::cni::install::write_list(&options)
        .with_context(|| format!("writing the CNI configuration list into {}", dir.display()))
}

impl Member {
    /// Renews the leases until the agent stops; etcd away only delays it
    /// (a liveness lease that ran out meanwhile is replaced: the record is
    /// put again). Ends only when another agent took the node's name.
    pub async fn keep(self) -> Result<()> {
        let every = Duration::from_secs((self.liveness_seconds / 3).max(1) as u64);
        let mut range_renewed = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let live = self.live.load(Ordering::Relaxed);
            let asked = node_lease::boottime_ms();
            let renewed = self.renew(live).await;
            match &renewed {
                Ok(_) => super::sync_state::answered(),
                Err(_) => super::sync_state::failed(super::sync_state::Op::Lease),
            }
            match renewed {
                Ok(ttl) if ttl > 0 => {
                    if let Err(e) = self.note_held(live, asked, ttl) {
                        log::warn!("vethctl agent: {e:#}");
                    }
                }
                Ok(_) => {
                    if let Err(e) = self.rejoin().await {
                        self.lost(&format!("{e:#}"));
                        // etcd gone again meanwhile: tried at the next
                        // renewal. Anything else (another agent took the
                        // name) ends the agent.
                        if !matches!(e.downcast_ref(), Some(crate::Error::TryAgain(_))) {
                            return Err(e);
                        }
                        log::warn!("vethctl agent: {e:#}; trying again");
                    }
                }
                Err(e) => log::warn!(
                    "vethctl agent: keeping node {:?} alive: {e:#}",
                    self.record.name
                ),
            }
            if range_renewed.elapsed() >= RANGE_RENEW_EVERY {
                match self.renew(self.range_lease).await {
                    Ok(ttl) if ttl > 0 => range_renewed = Instant::now(),
                    Ok(_) => {
                        log::error!("vethctl agent: the lease of node {:?}'s pod ranges ran out; restart the agent to claim them again", self.record.name);
                        self.ranges_lost.store(true, Ordering::Relaxed);
                        self.lost(RANGES_LOST);
                    }
                    Err(e) => log::warn!("vethctl agent: renewing the pod ranges' lease: {e:#}"),
                }
            }
        }
    }

    /// One keep-alive of `lease`: its TTL left, 0 when it had run out.
    async fn renew(&self, lease: i64) -> Result<i64> {
        self.etcd
            .call("renewing a lease", |mut c| async move {
                let (mut keeper, mut stream) = match c.lease_keep_alive(lease).await {
                    Ok(kept) => kept,
                    // etcd answers the keep-alive of a lease that ran out
                    // with TTL 0, which etcd-client turns into this error
                    // (an agent stopped or cut off longer than its TTL).
                    Err(etcd_client::Error::LeaseKeepAliveError(why))
                        if why == "lease not found" =>
                    {
                        return Ok(0)
                    }
                    Err(e) => return Err(e),
                };
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .await
    }

    /// The liveness lease ran out (etcd was away longer than its TTL):
    /// claims the name again under a new one.
    async fn rejoin(&self) -> Result<()> {
        log::warn!(
            "vethctl agent: node {:?}'s liveness lease ran out; registering again",
            self.record.name
        );
        let asked = node_lease::boottime_ms();
        let live = grant(&self.etcd, self.liveness_seconds).await?;
        claim_node(&self.etcd, &self.keys, &self.record, live).await?;
        self.live.store(live, Ordering::Relaxed);
        self.note_held(live, asked, self.liveness_seconds)
    }

    /// Records for the plugin that the liveness lease `live` is held for
    /// `ttl` seconds from `asked` (`CLOCK_BOOTTIME` ms, taken before the
    /// request that etcd confirmed).
    fn note_held(&self, live: i64, asked: u64, ttl: i64) -> Result<()> {
        let r = &self.record;
        let lease = node_lease::NodeLease {
            cluster: self.settings.name().to_string(),
            node: r.name.clone(),
            pod_cidr: r
                .pod_cidr
                .context("a node that joined holds an IPv4 range")?,
            pod_cidr6: r.pod_cidr6,
            liveness_lease: live,
            liveness_ttl: ttl,
            valid_until_ms: asked + ttl.max(0) as u64 * 1000,
            agent: node_lease::AgentProcess::this(),
            lost: self
                .ranges_lost
                .load(Ordering::Relaxed)
                .then(|| RANGES_LOST.to_string()),
        };
        node_lease::write(&lease).with_context(|| {
            format!(
                "recording node {:?}'s lease for the CNI plugin in {}",
                r.name,
                node_lease::path().display()
            )
        })
    }

    /// Tells the plugin the lease is lost (until a later renewal or
    /// registration writes the file again, unless the ranges are lost).
    fn lost(&self, why: &str) {
        if let Err(e) = node_lease::mark_lost(why) {
            log::warn!(
                "vethctl agent: marking node {:?}'s lease lost: {e:#}",
                self.record.name
            );
        }
    }

    /// Removes the node's record at once (its ranges stay reserved), the
    /// lease file (the plugin adds no pod until an agent holds the node
    /// again) and the sync state it leaves for `status`.
    pub async fn leave(&self) {
        if let Err(e) = node_lease::remove() {
            log::warn!("vethctl agent: {e:#}");
        }
        revoke(&self.etcd, self.live.load(Ordering::Relaxed)).await;
        super::sync_state::stop();
    }
}
