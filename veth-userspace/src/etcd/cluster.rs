//! `vethctl cluster init` and `vethctl cluster status`: a cluster's
//! settings stored once in etcd, and what its nodes hold.

use anyhow::{Context, Result};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;

use super::Etcd;
use crate::model::{
    registry::{self, Entry, Keys, NodeView, Settings, Snapshot},
    validate_topology_name,
};

/// What `init` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Init {
    Stored,
    /// etcd had the same settings already.
    Unchanged,
}

/// Stores the settings unless the cluster has some; the same settings
/// again are fine, other ones are refused naming the first key that
/// differs (nodes run on the stored ones).
pub async fn init(etcd: &Etcd, settings: &Settings) -> Result<Init> {
    let key = Keys::new(settings.name()).settings();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), settings.text.clone(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let response = etcd
        .call(
            "storing the settings",
            |mut c| async move { c.txn(txn).await },
        )
        .await?;
    if response.succeeded() {
        return Ok(Init::Stored);
    }
    let stored = response
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .context("the settings went away meanwhile; run it again")?;
    let stored = parse_stored(settings.name(), &stored)?;
    match settings.first_difference(&stored) {
        None => Ok(Init::Unchanged),
        Some((key, ours, theirs)) => Err(crate::Error::Conflict(format!(
            "{key}: cluster {:?} in etcd has {key} = {theirs}, the file says {ours}; the \
             settings of a cluster cannot change under its nodes: keep {theirs}, or init a new \
             cluster under another name",
            settings.name()
        ))
        .into()),
    }
}

fn parse_stored(cluster: &str, bytes: &[u8]) -> Result<Settings> {
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    Settings::from_toml(text).with_context(|| {
        format!("the settings of cluster {cluster:?} in etcd do not parse (written by another version of vethctl?)")
    })
}

/// The cluster `given` names, or the only one etcd holds.
pub async fn cluster_name(etcd: &Etcd, given: Option<&str>) -> Result<String> {
    if let Some(name) = given {
        validate_topology_name(name).map_err(|e| crate::model::ModelError {
            field: "--cluster-name".into(),
            ..e
        })?;
        return Ok(name.to_string());
    }
    let options = GetOptions::new().with_prefix().with_keys_only();
    let response = etcd
        .call("listing clusters", |mut c| async move {
            c.get(registry::ROOT, Some(options)).await
        })
        .await?;
    let mut names: Vec<String> = response
        .kvs()
        .iter()
        .filter_map(|kv| registry::cluster_of_settings_key(kv.key_str().ok()?).map(String::from))
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => Err(no_cluster(etcd)),
        _ => Err(crate::Error::InvalidConfig {
            field: "--cluster-name".into(),
            message: format!(
                "etcd at {} holds clusters {}; name one",
                etcd.endpoints(),
                names.join(", ")
            ),
        }
        .into()),
    }
}

fn no_cluster(etcd: &Etcd) -> anyhow::Error {
    anyhow::anyhow!(
        "etcd at {0} holds no vethctl cluster; store its settings first: `vethctl cluster init \
         --cluster {0} -t SETTINGS.toml`",
        etcd.endpoints()
    )
}

/// Every key of cluster `name`, read at one revision; the revision too.
pub async fn snapshot(etcd: &Etcd, keys: &Keys) -> Result<(Snapshot, i64)> {
    let (entries, revision) = read(etcd, keys).await?;
    Ok((Snapshot::of(keys, entries), revision))
}

/// Every key of cluster `name` as etcd has it, at one revision; the
/// revision too.
pub async fn read(etcd: &Etcd, keys: &Keys) -> Result<(Vec<Entry>, i64)> {
    let prefix = keys.all().to_string();
    let response = etcd
        .call("reading the cluster", |mut c| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        })
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let entries = response.kvs().iter().filter_map(|kv| -> Option<Entry> {
        Some((
            kv.key_str().ok()?.to_string(),
            kv.value().to_vec(),
            kv.mod_revision(),
            kv.lease(),
        ))
    });
    Ok((entries.collect(), revision))
}

/// The stored settings of cluster `name`.
pub fn settings_of(etcd: &Etcd, name: &str, snapshot: &Snapshot) -> Result<Settings> {
    match &snapshot.settings {
        Some(text) => parse_stored(name, text.as_bytes()),
        None => Err(anyhow::anyhow!(
            "cluster {name:?} has no settings in etcd at {0}; store them first: `vethctl cluster \
             init --cluster {0} -t SETTINGS.toml`",
            etcd.endpoints()
        )),
    }
}

/// `vethctl cluster status`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub endpoints: String,
    /// etcd's revision the report was read at.
    pub revision: i64,
    pub settings: std::collections::BTreeMap<&'static str, String>,
    pub nodes: Vec<NodeView>,
    /// Keys this version cannot read.
    pub unreadable: Vec<String>,
}

pub async fn status(etcd: &Etcd, name: Option<&str>) -> Result<ClusterStatus> {
    let name = cluster_name(etcd, name).await?;
    let (snapshot, revision) = snapshot(etcd, &Keys::new(&name)).await?;
    let settings = settings_of(etcd, &name, &snapshot)?;
    let mut held = snapshot.held4.clone();
    held.extend(snapshot.held6.iter().cloned());
    Ok(ClusterStatus {
        endpoints: etcd.endpoints().to_string(),
        revision,
        settings: settings.values().into_iter().collect(),
        nodes: registry::view(&snapshot.nodes, &held),
        unreadable: snapshot.unreadable,
        cluster: name,
    })
}

impl ClusterStatus {
    /// A header line, then a line per node.
    pub fn to_table(&self) -> String {
        let s = |key: &str| self.settings.get(key).map_or("?", String::as_str);
        let mut out = format!(
            "cluster {} (etcd {}, revision {}): mode {}, cross_node {}, cluster_cidr {}, \
             cluster_cidr6 {}\n",
            self.cluster,
            self.endpoints,
            self.revision,
            s("mode"),
            s("cross_node"),
            s("cluster_cidr"),
            s("cluster_cidr6")
        );
        let dash = || "-".to_string();
        let mut rows = vec![[
            "NODE",
            "STATE",
            "POD RANGE",
            "POD RANGE6",
            "UNDERLAY",
            "AGENT",
        ]
        .map(String::from)];
        for n in &self.nodes {
            rows.push([
                n.name.clone(),
                if n.alive {
                    "alive"
                } else {
                    "down (range kept)"
                }
                .to_string(),
                n.pod_cidr.map_or_else(dash, |r| r.to_string()),
                n.pod_cidr6.map_or_else(dash, |r| r.to_string()),
                n.address.map_or_else(dash, |a| a.to_string()),
                n.agent
                    .as_ref()
                    .map_or_else(dash, |a| format!("PID {}", a.pid)),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        for key in &self.unreadable {
            out.push_str(&format!("unreadable key (another version's?): {key}\n"));
        }
        out
    }
}
