//! Whether this node holds its lease in a cluster kept in etcd, as the
//! plugin tells it without talking to etcd (it runs once per pod and must
//! answer in milliseconds, also while etcd is away).
//!
//! The agent (`vethctl agent --cluster … --cluster-node N`) keeps a small
//! file in the node's state root, [`FILE`], written whole: the cluster and
//! node, the pod ranges it leased, its liveness lease and until when that
//! lease is known to be held, and which process it is. It rewrites the
//! file after every renewal that etcd confirmed, marks it lost when a
//! lease is gone for good, and removes it when it stops. The list it
//! writes carries a [`CLUSTER_KEY`] naming the cluster and node; a list
//! without it (`install-cni --subnet`) is no cluster node's and is not
//! looked at here.
//!
//! "Held", precisely (see [`decide`]): the file is there and readable, of
//! the list's cluster and node, written on this boot, not marked lost; its
//! agent still runs (same PID and start time; not asked when the agent is
//! in another PID namespace, see [`AgentProcess::runs`]); the last renewal
//! etcd confirmed plus the lease's TTL has not passed on `CLOCK_BOOTTIME`
//! (which counts suspended time and never jumps); and the list's ranges
//! are the leased ones. Anything else is not held: ADD is refused and
//! STATUS answers not ready, code 51 when the network has pods (the other
//! nodes stop routing to a node whose liveness lease ends), else 50. So
//! are they while the agent has not yet brought the node's network up
//! (its first read of the cluster): an ADD then would make the network a
//! CNI network of its own instead of the node's part.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use veth_cni_protocol::{CniError, NetConf};

use crate::{endpoint::Store, state};

/// The file, in the node's state root ([`state::root`]): not a network's
/// name, which has no `-` or `.`.
pub const FILE: &str = "cluster-lease.json";
/// Key of our plugin's entry in a list the agent wrote: `{"name":
/// CLUSTER, "node": NODE}`.
pub const CLUSTER_KEY: &str = "cluster";

/// The cluster and node a list was written for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    pub node: String,
}

/// What the agent records (the file's content).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    pub cluster: String,
    pub node: String,
    pub pod_cidr: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// etcd's id of the liveness lease.
    pub liveness_lease: i64,
    pub liveness_ttl: i64,
    /// `CLOCK_BOOTTIME`, in ms, until which the liveness lease is known to
    /// be held: when the last renewal etcd confirmed was asked for, plus
    /// the TTL etcd gave.
    pub valid_until_ms: u64,
    pub agent: AgentProcess,
    /// Why the agent no longer holds the lease, when it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// The agent process: to tell that it is gone (PIDs are reused; the start
/// time is not) and which boot wrote the file (`CLOCK_BOOTTIME` restarts
/// at 0 on every boot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProcess {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start_ticks: u64,
    /// Inode of its PID namespace: its PID means something only there.
    pub pid_ns: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot: String,
}

impl AgentProcess {
    /// This process.
    pub fn this() -> AgentProcess {
        AgentProcess {
            pid: std::process::id(),
            start_ticks: start_ticks("self").unwrap_or(0),
            pid_ns: pid_ns(),
            boot: boot_id(),
        }
    }

    /// Whether it still runs, as far as this process can tell: `None`
    /// from another PID namespace (an agent in a container without the
    /// host's PIDs), where only the liveness deadline counts.
    pub fn runs(&self) -> Option<bool> {
        if self.pid_ns == 0 || self.pid_ns != pid_ns() {
            return None;
        }
        Some(start_ticks(&self.pid.to_string()) == Some(self.start_ticks))
    }
}

fn start_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from the last ')'. Field 3 is the first after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn pid_ns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `CLOCK_BOOTTIME` in ms.
pub fn boottime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}

/// Where the file is on this node.
pub fn path() -> PathBuf {
    state::root().join(FILE)
}

/// Writes the file whole (the agent).
pub fn write(lease: &NodeLease) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(lease)?;
    state::write_atomically(&state::root(), FILE, &bytes)
}

/// Marks the file lost, saying why (the agent, when a lease is gone for
/// good); nothing when there is none.
pub fn mark_lost(why: &str) -> Result<()> {
    let Ok(Some(mut lease)) = read(&path()) else {
        return Ok(());
    };
    lease.lost = Some(why.to_string());
    write(&lease)
}

/// Removes the file (the agent, when it stops).
pub fn remove() -> Result<()> {
    match std::fs::remove_file(path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path().display())),
    }
}

/// The file at `path`, if there is one.
pub fn read(path: &Path) -> Result<Option<NodeLease>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not a lease file of this vethctl", path.display()))
}

/// The cluster and node a configuration names, if it names one.
pub fn mark_of(config: &NetConf) -> Result<Option<Mark>, CniError> {
    let Some(value) = config.other.get(CLUSTER_KEY) else {
        return Ok(None);
    };
    let mark: Mark = serde_json::from_value(value.clone()).map_err(|e| {
        CniError::invalid_config(
            CLUSTER_KEY,
            format!(
                "{value} is not {{\"name\": CLUSTER, \"node\": NODE}} ({e}); only `vethctl agent \
                 --cluster` writes this key: let it write the list again"
            ),
        )
    })?;
    Ok(Some(mark))
}

/// The ranges a list gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

/// What the plugin knows at the moment it decides.
#[derive(Clone, Debug)]
pub struct Now {
    pub boot: String,
    pub boottime_ms: u64,
}

/// Why the node's lease is not held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotHeld {
    /// No file: the agent is not running (never started on this boot, or
    /// stopped).
    NoFile,
    Unreadable(String),
    /// The file is another cluster's or node's.
    OtherNode {
        cluster: String,
        node: String,
    },
    /// Written before the machine last booted.
    OtherBoot,
    Lost(String),
    /// The agent that wrote it no longer runs.
    AgentGone {
        pid: u32,
    },
    /// Its last renewal plus its TTL has passed.
    Expired {
        ago_ms: u64,
        ttl: i64,
        lease: i64,
    },
    /// The list's ranges are not the leased ones.
    OtherRanges {
        list: String,
        leased: String,
    },
}

/// Whether the lease `file` (or why it could not be read) holds for the
/// list marked `mark` with `ranges`, at `now`; `runs` says whether its
/// agent still runs (see [`AgentProcess::runs`]). Pure.
pub fn decide(
    mark: &Mark,
    ranges: &Ranges,
    file: Result<Option<NodeLease>, String>,
    now: &Now,
    runs: impl FnOnce(&AgentProcess) -> Option<bool>,
) -> Result<(), NotHeld> {
    let lease = file.map_err(NotHeld::Unreadable)?.ok_or(NotHeld::NoFile)?;
    if lease.cluster != mark.name || lease.node != mark.node {
        return Err(NotHeld::OtherNode {
            cluster: lease.cluster,
            node: lease.node,
        });
    }
    if lease.agent.boot != now.boot {
        return Err(NotHeld::OtherBoot);
    }
    if let Some(why) = lease.lost {
        return Err(NotHeld::Lost(why));
    }
    if runs(&lease.agent) == Some(false) {
        return Err(NotHeld::AgentGone {
            pid: lease.agent.pid,
        });
    }
    if now.boottime_ms >= lease.valid_until_ms {
        let renewed = lease
            .valid_until_ms
            .saturating_sub(lease.liveness_ttl.max(0) as u64 * 1000);
        return Err(NotHeld::Expired {
            ago_ms: now.boottime_ms.saturating_sub(renewed),
            ttl: lease.liveness_ttl,
            lease: lease.liveness_lease,
        });
    }
    let leased = Ranges {
        v4: lease.pod_cidr,
        v6: lease.pod_cidr6,
    };
    if *ranges != leased {
        let show = |r: &Ranges| match r.v6 {
            Some(v6) => format!("{} and {v6}", r.v4),
            None => r.v4.to_string(),
        };
        return Err(NotHeld::OtherRanges {
            list: show(ranges),
            leased: show(&leased),
        });
    }
    Ok(())
}

impl NotHeld {
    /// What happened and what to do, for node `mark` (lease file `path`).
    pub fn explain(&self, mark: &Mark, path: &Path) -> String {
        let node = format!("node {:?} of cluster {:?}", mark.node, mark.name);
        let start = format!(
            "start it: `vethctl agent --cluster ENDPOINTS --cluster-node {}`",
            mark.node
        );
        let file = path.display();
        match self {
            NotHeld::NoFile => format!(
                "{node} holds no lease on this machine: its agent is not running (no {file}; \
                 never started since boot, or stopped); {start}"
            ),
            NotHeld::Unreadable(e) => {
                format!("{node}: its lease file cannot be read ({e}); restart its agent")
            }
            NotHeld::OtherNode { cluster, node: n } => format!(
                "this list is {node}'s, but the agent on this machine holds node {n:?} of \
                 cluster {cluster:?} ({file}); remove the stale list, or run the agent as {:?}",
                mark.node
            ),
            NotHeld::OtherBoot => format!(
                "{node}: its lease file {file} is from before the machine restarted and its \
                 agent has not run since; {start}"
            ),
            NotHeld::Lost(why) => {
                format!("{node} lost its lease: {why}; see the agent's log, then restart it")
            }
            NotHeld::AgentGone { pid } => format!(
                "{node}: its agent (PID {pid}) is gone without leaving the cluster (killed?); \
                 {start} (its supervisor should restart it)"
            ),
            NotHeld::Expired { ago_ms, ttl, lease } => format!(
                "{node}: its liveness lease ({lease:x}) was last renewed {:.1} s ago, longer than \
                 its TTL of {ttl} s, so the other nodes may have stopped routing to it (etcd unreachable \
                 from the agent, or the agent stalled?); see the agent's log: pods are added \
                 again as soon as it renews the lease",
                *ago_ms as f64 / 1000.0
            ),
            NotHeld::OtherRanges { list, leased } => format!(
                "{node}: this list gives pod range {list}, but the node's agent leased {leased}: \
                 the list is stale; restart the agent, which writes it again"
            ),
        }
    }
}

/// ADD and STATUS: refuses, in the spec's STATUS codes, a configuration
/// of a cluster node whose lease is not held (see the module's doc);
/// nothing for any other configuration.
pub fn require_held(config: &NetConf) -> Result<(), CniError> {
    let Some(mark) = mark_of(config)? else {
        return Ok(());
    };
    let list = super::network::ranges(config.ipam.as_ref())?;
    let ranges = Ranges {
        v4: list.v4,
        v6: list.v6,
    };
    let path = path();
    let now = Now {
        boot: boot_id(),
        boottime_ms: boottime_ms(),
    };
    let file = read(&path).map_err(|e| format!("{e:#}"));
    let reason = match decide(&mark, &ranges, file, &now, AgentProcess::runs) {
        Err(not_held) => not_held.explain(&mark, &path),
        // Brought up as a CNI network of its own, the network would not
        // be the node's part that the agent keeps wired to the others.
        Ok(()) if super::cluster_node::recorded_part(&config.name)?.is_none() => format!(
            "node {:?} of cluster {:?} holds its lease, but its agent has not brought the \
             node's network {:?} up yet (it does once it has read the cluster); try again in \
             a moment",
            mark.node, mark.name, config.name
        ),
        Ok(()) => return Ok(()),
    };
    let has_pods = crate::model::validate_topology_name(&config.name).is_ok()
        && !Store::new(&config.name).records().is_empty();
    Err(match has_pods {
        true => CniError::LimitedConnectivity { reason },
        false => CniError::NotAvailable { reason },
    })
}

/// `install-cni --cluster-node NODE`: refused while an agent of another
/// node runs on this machine (a file of an agent that is gone is stale).
pub fn refuse_other_running_node(node: &str) -> Result<()> {
    let path = path();
    let Ok(Some(lease)) = read(&path) else {
        return Ok(());
    };
    if lease.node != node && lease.lost.is_none() && lease.agent.runs() != Some(false) {
        anyhow::bail!(
            "--cluster-node: the agent on this machine (PID {}) holds node {:?} of cluster \
             {:?} ({}); give that name, or stop that agent first",
            lease.agent.pid,
            lease.node,
            lease.cluster,
            path.display()
        );
    }
    Ok(())
}

/// What is at `list` for node `node`, for `install-cni --cluster-node`.
pub fn describe_list(list: &Path, node: &str) -> String {
    let shown = list.display();
    if !list.exists() {
        return format!(
            "{shown}: none yet; the agent writes it once it holds the node's lease (until \
             then the runtime has no vethctl network)"
        );
    }
    let value = match super::install::read_list(list) {
        Ok(value) => value,
        Err(e) => return format!("{shown}: {e:#}; the agent replaces it when it joins"),
    };
    let ours = value["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == super::install::PLUGIN_TYPE))
        .cloned()
        .unwrap_or_default();
    let subnet = ours["ipam"]["subnet"].as_str().unwrap_or("?").to_string();
    match ours[CLUSTER_KEY]["node"].as_str() {
        Some(n) if n == node => {
            format!("{shown}: the agent's list for node {node:?}, pod range {subnet}")
        }
        Some(other) => format!(
            "{shown}: written by the agent of node {other:?}; this node's agent replaces it \
             when it joins, and until then the plugin refuses pods (not this node's lease)"
        ),
        None => format!(
            "{shown}: not an agent's list (install-cni --subnet wrote it?); the agent replaces \
             it when it joins, and until then the runtime gives pods addresses of {subnet}: \
             remove it if that range is not this node's"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark() -> Mark {
        Mark {
            name: "lab".into(),
            node: "n1".into(),
        }
    }

    fn ranges() -> Ranges {
        Ranges {
            v4: "10.251.1.0/24".parse().unwrap(),
            v6: Some("fd00:10:251:1::/64".parse().unwrap()),
        }
    }

    fn lease() -> NodeLease {
        NodeLease {
            cluster: "lab".into(),
            node: "n1".into(),
            pod_cidr: "10.251.1.0/24".parse().unwrap(),
            pod_cidr6: Some("fd00:10:251:1::/64".parse().unwrap()),
            liveness_lease: 0x1234,
            liveness_ttl: 10,
            valid_until_ms: 50_000,
            agent: AgentProcess {
                pid: 4242,
                start_ticks: 77,
                pid_ns: 4026531836,
                boot: "b1".into(),
            },
            lost: None,
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            boot: "b1".into(),
            boottime_ms: ms,
        }
    }

    fn judge(
        file: Result<Option<NodeLease>, String>,
        now: Now,
        runs: Option<bool>,
    ) -> Result<(), NotHeld> {
        decide(&mark(), &ranges(), file, &now, |_| runs)
    }

    #[test]
    fn held_while_the_agent_runs_within_its_deadline() {
        assert_eq!(judge(Ok(Some(lease())), at(49_999), Some(true)), Ok(()));
        // From another PID namespace only the deadline counts.
        assert_eq!(judge(Ok(Some(lease())), at(49_999), None), Ok(()));
    }

    #[test]
    fn the_deadline_passed_is_expired_with_the_time_since_the_renewal() {
        assert_eq!(
            judge(Ok(Some(lease())), at(50_000), None),
            Err(NotHeld::Expired {
                ago_ms: 10_000,
                ttl: 10,
                lease: 0x1234
            })
        );
        let e = judge(Ok(Some(lease())), at(52_500), Some(true)).unwrap_err();
        let text = e.explain(&mark(), Path::new("/run/vethctl/cluster-lease.json"));
        assert!(
            text.contains("12.5 s ago") && text.contains("TTL of 10 s"),
            "{text}"
        );
    }

    #[test]
    fn no_file_or_an_unreadable_one_is_not_held_and_says_to_start_the_agent() {
        let e = judge(Ok(None), at(1), None).unwrap_err();
        assert_eq!(e, NotHeld::NoFile);
        let text = e.explain(&mark(), Path::new("/x/cluster-lease.json"));
        assert!(
            text.contains("vethctl agent --cluster ENDPOINTS --cluster-node n1")
                && text.contains("/x/cluster-lease.json"),
            "{text}"
        );
        assert_eq!(
            judge(Err("bad".into()), at(1), None),
            Err(NotHeld::Unreadable("bad".into()))
        );
    }

    #[test]
    fn another_node_another_boot_or_a_lost_lease_is_not_held() {
        let mut other = lease();
        other.node = "n2".into();
        assert_eq!(
            judge(Ok(Some(other)), at(1), Some(true)),
            Err(NotHeld::OtherNode {
                cluster: "lab".into(),
                node: "n2".into()
            })
        );
        let mut other = lease();
        other.cluster = "lab2".into();
        assert!(matches!(
            judge(Ok(Some(other)), at(1), Some(true)),
            Err(NotHeld::OtherNode { .. })
        ));
        // CLOCK_BOOTTIME starts again at 0: a deadline of another boot
        // means nothing.
        let mut old = lease();
        old.agent.boot = "b0".into();
        assert_eq!(judge(Ok(Some(old)), at(1), None), Err(NotHeld::OtherBoot));
        // Lost is told before a gone agent: it says why.
        let mut lost = lease();
        lost.lost = Some("another agent holds node n1".into());
        assert_eq!(
            judge(Ok(Some(lost)), at(1), Some(false)),
            Err(NotHeld::Lost("another agent holds node n1".into()))
        );
    }

    #[test]
    fn a_gone_agent_is_not_held_before_its_deadline() {
        assert_eq!(
            judge(Ok(Some(lease())), at(1), Some(false)),
            Err(NotHeld::AgentGone { pid: 4242 })
        );
    }

    #[test]
    fn a_list_with_other_ranges_is_stale() {
        let mut moved = lease();
        moved.pod_cidr = "10.251.2.0/24".parse().unwrap();
        let e = judge(Ok(Some(moved)), at(1), Some(true)).unwrap_err();
        assert_eq!(
            e,
            NotHeld::OtherRanges {
                list: "10.251.1.0/24 and fd00:10:251:1::/64".into(),
                leased: "10.251.2.0/24 and fd00:10:251:1::/64".into()
            }
        );
        let mut v4_only = lease();
        v4_only.pod_cidr6 = None;
        assert!(matches!(
            judge(Ok(Some(v4_only)), at(1), Some(true)),
            Err(NotHeld::OtherRanges { .. })
        ));
    }

    #[test]
    fn this_process_is_seen_running_and_the_file_round_trips() {
        let me = AgentProcess::this();
        assert_eq!(me.runs(), Some(true));
        let mut gone = me.clone();
        gone.start_ticks += 1;
        assert_eq!(gone.runs(), Some(false), "a reused PID is another process");
        let mut elsewhere = me;
        elsewhere.pid_ns += 1;
        assert_eq!(elsewhere.runs(), None);
        let text = serde_json::to_string(&lease()).unwrap();
        assert_eq!(serde_json::from_str::<NodeLease>(&text).unwrap(), lease());
        assert!(boottime_ms() > 0);
    }

    #[test]
    fn a_list_names_its_cluster_node_or_none() {
        let conf = |extra: &str| {
            let text = format!(
                r#"{{"cniVersion":"1.0.0","name":"lab","type":"veth-cni","ipam":{{"type":"veth-builtin","subnet":"10.251.1.0/24"}}{extra}}}"#
            );
            NetConf::parse(text.as_bytes(), veth_cni_protocol::Command::Add).unwrap()
        };
        assert_eq!(mark_of(&conf("")).unwrap(), None);
        assert_eq!(
            mark_of(&conf(r#","cluster":{"name":"lab","node":"n1"}"#)).unwrap(),
            Some(mark())
        );
        let e = mark_of(&conf(r#","cluster":"lab""#)).unwrap_err();
        assert!(e.to_string().contains("cluster"), "{e}");
    }
}
