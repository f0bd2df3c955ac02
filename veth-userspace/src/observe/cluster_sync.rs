//! `status` of the cluster kept in etcd that this node is in, as its agent
//! last saw it (the file [`crate::etcd::sync_state`] keeps): the cluster,
//! this node's ranges, the other nodes with their ranges and liveness and
//! whether they are wired, the revision and age of the last sync, and
//! whether etcd answered.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::table::{render_fitting, row, Width};
use crate::etcd::sync_state::{self, SyncStatus};

#[derive(Debug, Serialize)]
pub struct ClusterSync {
    #[serde(flatten)]
    pub sync: SyncStatus,
    /// Seconds since the last sync, at the time of this status.
    pub last_sync_age_seconds: Option<f64>,
    /// Whether the agent that saved it still runs (else all of it is as
    /// that agent last saw it, before it was killed).
    pub agent_running: bool,
}

/// The cluster this node's agent follows, if it follows one.
pub fn of_this_node() -> anyhow::Result<Option<ClusterSync>> {
    let Some(sync) = sync_state::load()? else {
        return Ok(None);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let agent_running = crate::etcd::member::pid_runs(sync.agent_pid);
    Ok(Some(ClusterSync {
        last_sync_age_seconds: sync.last_sync.map(|t| (now - t).max(0.0)),
        agent_running,
        sync,
    }))
}

impl ClusterSync {
    /// Two lines about the cluster and the sync, then a line per other
    /// node; `-o wide` says why a record is left out.
    pub fn table(&self, width: Width) -> String {
        let s = &self.sync;
        let ranges: Vec<String> = s.pod_ranges.iter().map(|r| r.to_string()).collect();
        let age = match self.last_sync_age_seconds {
            Some(age) => format!("{age:.1} s ago"),
            None => "never".to_string(),
        };
        let agent = match self.agent_running {
            true => format!("agent PID {}", s.agent_pid),
            false => format!("agent PID {} NOT RUNNING: as it last saw it", s.agent_pid),
        };
        let mut out = format!(
            "cluster {} (etcd {}): node {}, pod ranges {}\nlast sync: revision {}, {age}; etcd {}; {agent}\n",
            s.cluster,
            s.endpoints,
            s.node,
            ranges.join(" "),
            s.revision,
            if s.etcd_reachable { "reachable" } else { "UNREACHABLE" },
        );
        if s.nodes.is_empty() {
            return out + "no other node\n";
        }
        let wide = width == Width::Wide;
        let mut rows = vec![row(["NODE", "STATE", "POD RANGES", "UNDERLAY", "WIRED"])];
        for n in &s.nodes {
            let ranges: Vec<String> = n.pod_ranges.iter().map(|r| r.to_string()).collect();
            let wired = match (&n.left_out, n.wired) {
                (Some(l), _) if wide => format!("no ({}: {})", l.reason.name(), l.why),
                (Some(l), _) => format!("no ({})", l.reason.name()),
                (None, true) => "yes".into(),
                (None, false) => "no".into(),
            };
            let state = if n.alive {
                "alive"
            } else {
                "down (range kept)"
            };
            let address = n.address.as_deref().unwrap_or("-");
            rows.push(row([&n.name, state, &ranges.join(" "), address, &wired]));
        }
        out += &render_fitting(&rows, width, 0);
        out
    }
}
