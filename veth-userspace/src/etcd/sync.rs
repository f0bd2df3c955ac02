//! The agent following its cluster (flannel's subnet watch): it reads the
//! node records at one revision, brings its node's part up for them, then
//! watches the records from the next revision, so no change is lost
//! between the read and the watch, and brings the part up again whenever
//! the live nodes change it. The part is what `vethctl up -t CLUSTER
//! --cluster-node NODE` brings up (one code path): the settings, one
//! `[[nodes]]` per live record ([`registry::cluster_text`]), this node's
//! with its own pods of `--pods` ([`crate::model::file_pods`]); a node whose
//! liveness lease ended has no record, so its routes, FDB entries and map
//! entries go, by the convergence that removes only what it recorded.
//!
//! etcd is never in the dataplane's way: when it is down or the watch
//! fails, the part stays as it was; the agent reads everything again with
//! backoff and watches from that read's revision.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};

use super::{
    cluster,
    member::Member,
    sync_state::{self, Op},
    REQUEST_TIMEOUT,
};
use crate::{
    apply::UpOptions,
    model::{cluster::Cluster, live::Live, registry},
};

/// First wait before reading again after a failure, doubled up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A watch quiet this long is asked for its progress: a connection cut
/// without being closed (a partition) would otherwise look like a quiet
/// cluster forever.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Keeps the node's part converged to the cluster's live nodes for as
/// long as the agent runs.
pub async fn follow(member: Member) -> Result<()> {
    sync_state::start(&member);
    let mut converged: Option<String> = None;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let why = match follow_once(&member, &mut converged, &mut backoff).await {
            Ok(()) => {
                sync_state::failed(Op::Watch);
                "etcd ended the watch".to_string()
            }
            Err(e) => format!("{e:#}"),
        };
        log::warn!(
            "vethctl agent: following cluster {:?}: {why}; the dataplane stays as it is; reading \
             the nodes again in {} ms",
            member.cluster,
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        sync_state::reconnecting();
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
    let (entries, revision) = cluster::read(&member.etcd, &member.keys)
        .await
        .inspect_err(|_| sync_state::failed(Op::Read))?;
    sync_state::at(revision, 0);
    // Range keys too: a record is wired only with the ranges leased to it.
    let mut live = Live::of(&member.keys, entries);
    converge(member, &live, converged, None).await?;
    let prefix = member.keys.all().to_string();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let key = prefix.clone();
    let mut stream = member
        .etcd
        .call("watching the cluster", |mut c| async move {
            c.watch(key, Some(options)).await
        })
        .await
        .inspect_err(|_| sync_state::failed(Op::Watch))?;
    *backoff = BACKOFF_FIRST;
    while let Some(response) = next(&mut stream)
        .await
        .inspect_err(|_| sync_state::failed(Op::Watch))?
    {
        let arrived = Instant::now();
        if response.canceled() {
            sync_state::failed(Op::Watch);
            bail!("etcd cancelled the watch: {}", response.cancel_reason());
        }
        let revision = response.header().map_or(0, |h| h.revision());
        if response.events().is_empty() {
            sync_state::current(revision);
            continue;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Delete => live.delete(&member.keys, key),
                EventType::Put => live.put(&member.keys, key, kv.value()),
            }
        }
        sync_state::at(revision, response.events().len());
        converge(member, &live, converged, Some(arrived)).await?;
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

/// Brings the node's part up for the live records, unless it is the
/// part brought up last (`converged`: the cluster file it came from).
/// Records at fault are left out ([`registry::wiring`]); `arrived`: when
/// the watch response that asked for this came.
async fn converge(
    member: &Member,
    live: &Live,
    converged: &mut Option<String>,
    arrived: Option<Instant>,
) -> Result<()> {
    let (settings, me) = (&member.settings, &member.record);
    // The node's own file pods (`--pods`) go into its entry either way.
    let wiring = |alone: bool| -> Result<_> {
        let (text, left_out) = registry::wiring(settings, me, &live.nodes, &live.held, alone)?;
        Ok((member.pods.add_to(&text, &me.name)?, left_out))
    };
    let (mut text, mut left_out) = wiring(false)?;
    // Only this node's part is made and checked: each part lists every
    // other node, so making them all would cost the square of the nodes.
    if converged.as_deref() != Some(text.as_str())
        && Cluster::node_part_of(&text, &me.name).is_err()
    {
        // A combination the checks of each record did not foresee: each
        // record tried alone.
        (text, left_out) = wiring(true)?;
    }
    if converged.as_deref() == Some(text.as_str()) {
        sync_state::converged(live, &left_out, arrived);
        return Ok(());
    }
    let started = Instant::now();
    // A failure here is read again with backoff: the part stays as it was.
    *converged = None;
    let part = crate::apply::up_cluster_node(&text, &me.name, UpOptions::default()).await?;
    *converged = Some(text);
    sync_state::converged(live, &left_out, arrived);
    let peers = part.node.as_ref().map_or(0, |n| n.peers.len());
    log::info!(
        "vethctl agent: node {:?} is wired to {peers} other nodes in {} ms",
        me.name,
        started.elapsed().as_millis(),
    );
    Ok(())
}
