//! The agent following its cluster (flannel's subnet watch): it reads the
//! node records at one revision, brings its node's part up for them, then
//! watches the records from the next revision, so no change is lost
//! between the read and the watch, and brings the part up again whenever
//! the live nodes change it. The part is what `vethctl up -t CLUSTER
//! --cluster-node NODE` brings up (one code path): the settings, one
//! `[[nodes]]` per live record ([`registry::cluster_text`]); a node whose
//! liveness lease ended has no record, so its routes, FDB entries and map
//! entries go, by the convergence that removes only what it recorded.
//!
//! etcd is never in the dataplane's way: when it is down or the watch
//! fails, the part stays as it was; the agent reads everything again with
//! backoff and watches from that read's revision.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};

use super::{cluster, member::Member, REQUEST_TIMEOUT};
use crate::{
    apply::UpOptions,
    model::registry::{self, NodeRecord},
};

/// First wait before reading again after a failure, doubled up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A watch quiet this long is asked for its progress: a connection cut
/// without being closed (a partition) would otherwise look like a quiet
/// cluster forever.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The live node records, by name.
type Nodes = BTreeMap<String, NodeRecord>;

/// Keeps the node's part converged to the cluster's live nodes for as
/// long as the agent runs.
pub async fn follow(member: Member) -> Result<()> {
    let mut converged: Option<String> = None;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let why = match follow_once(&member, &mut converged, &mut backoff).await {
            Ok(()) => "etcd ended the watch".to_string(),
            Err(e) => format!("{e:#}"),
        };
        log::warn!(
            "vethctl agent: following cluster {:?}: {why}; the dataplane stays as it is; reading \
             the nodes again in {} ms",
            member.cluster,
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One full read, the part brought up for it, then the watch from the
/// read's revision until it fails.
async fn follow_once(
    member: &Member,
    converged: &mut Option<String>,
    backoff: &mut Duration,
) -> Result<()> {
    let (snapshot, revision) = cluster::snapshot(&member.etcd, &member.keys).await?;
    let mut nodes: Nodes = snapshot
        .nodes
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    converge(member, &nodes, converged).await?;
    let prefix = member.keys.nodes();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let key = prefix.clone();
    let mut stream = member
        .etcd
        .call("watching the nodes", |mut c| async move {
            c.watch(key, Some(options)).await
        })
        .await?;
    *backoff = BACKOFF_FIRST;
    while let Some(response) = next(&mut stream).await? {
        if response.canceled() {
            bail!("etcd cancelled the watch: {}", response.cancel_reason());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            match event.event_type() {
                EventType::Delete => drop(nodes.remove(name)),
                EventType::Put => match serde_json::from_slice::<NodeRecord>(kv.value()) {
                    Ok(record) => drop(nodes.insert(name.to_string(), record)),
                    Err(e) => log::warn!("vethctl agent: node record {name:?} unreadable: {e}"),
                },
            }
        }
        converge(member, &nodes, converged).await?;
    }
    Ok(())
}

/// The watch's next response; when it is quiet for [`PROGRESS_EVERY`],
/// etcd must answer a progress request within the request deadline.
async fn next(stream: &mut WatchStream) -> Result<Option<WatchResponse>> {
    if let Ok(response) = tokio::time::timeout(PROGRESS_EVERY, stream.message()).await {
        return Ok(response?);
    }
    stream.request_progress().await?;
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
        Ok(response) => Ok(response?),
        Err(_) => bail!(
            "the watch was quiet for {} s and etcd did not answer a progress request within {} s",
            PROGRESS_EVERY.as_secs(),
            REQUEST_TIMEOUT.as_secs()
        ),
    }
}

/// Brings the node's part up for `nodes`, unless it is the part brought
/// up last (`converged`: the cluster file it came from).
async fn converge(member: &Member, nodes: &Nodes, converged: &mut Option<String>) -> Result<()> {
    let others: Vec<NodeRecord> = nodes.values().cloned().collect();
    let (text, left_out) = registry::cluster_text(&member.settings.text, &member.record, &others)?;
    if converged.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let started = Instant::now();
    let me = &member.record.name;
    // A failure here is read again with backoff: the part stays as it was.
    *converged = None;
    let part = crate::apply::up_cluster_node(&text, me, UpOptions::default()).await?;
    *converged = Some(text);
    let peers = part.node.as_ref().map_or(0, |n| n.peers.len());
    log::info!(
        "vethctl agent: node {me:?} is wired to {peers} other nodes in {} ms{}",
        started.elapsed().as_millis(),
        match left_out.is_empty() {
            true => String::new(),
            false => format!(
                " (not to {}: no range yet, or not on this node's underlay network)",
                left_out.join(", ")
            ),
        }
    );
    Ok(())
}
