//! `vethctl agent`: the node's daemon. It keeps every topology's endpoints
//! (or those of `--network`) true to their veths ([`crate::watch`]) and
//! serves a Prometheus endpoint over the pinned maps. It holds no counters of its own: every scrape
//! reads the maps, so a restart loses nothing, and stopping it leaves the
//! dataplane forwarding (with endpoints then updated only by `up`).
//! `/healthz` says it is alive, `/readyz` whether the node's dataplane is
//! ready (see [`crate::observe::readiness`]). One agent per node: a lock
//! file ([`crate::state::AgentLock`]) keeps a second from starting.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
};

use crate::{
    dataplane, http_server,
    netlink::Host,
    observe::{
        metrics::{self, MetricsOptions},
        passes, readiness,
    },
    state::{AgentLock, Scope},
};

/// Default listen address: loopback only; anything wider is a choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9435";

pub struct AgentOptions {
    pub listen: SocketAddr,
    /// Turn on the kernel's per-program run-time statistics while running.
    pub bpf_stats: bool,
    /// CNI configuration lists whose networks are brought up at start (the
    /// node's dataplane loaded before the first pod).
    pub cni_confs: Vec<std::path::PathBuf>,
    /// Export drop reasons per pod as well as per network.
    pub per_pod_drops: bool,
    /// The lock file that keeps a second agent from starting.
    pub lock_file: std::path::PathBuf,
    /// The networks it keeps current and reports on (with those of
    /// `cni_confs`); every recorded one when empty.
    pub networks: Vec<String>,
    /// Join this cluster kept in etcd (`--cluster`, `--cluster-node`).
    pub cluster: Option<crate::etcd::member::JoinOptions>,
}

struct Shared {
    host: Host,
    metrics: MetricsOptions,
    /// The networks of `--cni-conf`, which `/readyz` wants up.
    cni_networks: Vec<String>,
    scope: Scope,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(options: AgentOptions) -> Result<()> {
    let _lock = AgentLock::take(&options.lock_file)?;
    let member = join_cluster(options.cluster.as_ref()).await?;
    let mut membership = tokio::spawn(keep_membership(member.clone()));
    let cni_networks = bring_up_cni_networks(&options.cni_confs).await?;
    // Held for the agent's lifetime: the kernel counts only while it is open.
    let _stats = options
        .bpf_stats
        .then(dataplane::enable_bpf_stats)
        .transpose()?;
    let listener = TcpListener::bind(options.listen).await.with_context(|| {
        format!(
            "listening on {} (is another agent running?)",
            options.listen
        )
    })?;
    log::info!(
        "vethctl agent: serving http://{}/metrics, /healthz and /readyz (PID {}; Ctrl-C or SIGTERM to stop; the dataplane keeps forwarding)",
        listener.local_addr()?,
        std::process::id()
    );
    // A scoped agent keeps the networks it brought up too.
    let scope = match options.networks.is_empty() {
        true => Scope::all(),
        false => Scope::only(options.networks.iter().chain(&cni_networks).cloned()),
    };
    let shared = Arc::new(Shared {
        host: Host::connect()?,
        metrics: MetricsOptions {
            bpf_stats: options.bpf_stats,
            per_pod_drops: options.per_pod_drops,
        },
        cni_networks,
        scope: scope.clone(),
    });
    let mut server = tokio::spawn(http_server::serve(
        listener,
        http_server::Limits::agent(),
        move |req| respond(shared.clone(), req),
    ));
    // Its own rtnetlink socket: a socket runs one dump at a time, and a
    // scrape's dump would fail (EBUSY) beside the watcher's.
    let mut watcher = tokio::spawn(crate::watch::run(Host::connect()?, scope));
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
        // Endpoints would silently go stale: fail, so that whatever
        // supervises the agent restarts it.
        ended = &mut watcher => anyhow::bail!("keeping endpoints current failed: {}", why(ended)),
        ended = &mut membership => anyhow::bail!("keeping the node in its cluster failed: {}", why(ended)),
        served = &mut server => {
            let why = match served {
                Ok(never) => match never {},
                Err(e) => e.to_string(),
            };
            anyhow::bail!("serving metrics failed: {why}");
        }
    }
    server.abort();
    watcher.abort();
    membership.abort();
    // Ended before the node leaves: a renewal in flight would write the
    // lease file again after `leave` removed it.
    let _ = membership.await;
    if let Some(member) = &member {
        member.leave().await;
    }
    log::info!("vethctl agent: stopped");
    Ok(())
}

/// Brings up the network of each `--cni-conf` list: their names.
async fn bring_up_cni_networks(confs: &[std::path::PathBuf]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for path in confs {
        let list = crate::cni::install::read_list(path)?;
        let name = crate::cni::bring_up(&list)
            .await
            .with_context(|| format!("bringing up the network of {}", path.display()))?;
        log::info!(
            "vethctl agent: network {name:?} of {} is up",
            path.display()
        );
        names.push(name);
    }
    Ok(names)
}

/// Why a task that should run until the agent stops ended.
fn why(ended: Result<Result<()>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(())) => "it stopped".to_string(),
        Err(e) => e.to_string(),
    }
}

/// Joins the cluster in etcd, when told to: the node's record, its pod
/// ranges, the CNI list for them.
async fn join_cluster(
    options: Option<&crate::etcd::member::JoinOptions>,
) -> Result<Option<crate::etcd::member::Member>> {
    let Some(options) = options else {
        return Ok(None);
    };
    let member = crate::etcd::member::join(options).await?;
    let r = &member.record;
    log::info!(
        "vethctl agent: node {:?} of cluster {:?} holds pod ranges {}{}; wrote {}",
        r.name,
        member.cluster,
        r.pod_cidr.map(|n| n.to_string()).unwrap_or_default(),
        r.pod_cidr6.map(|n| format!(" and {n}")).unwrap_or_default(),
        member.conflist.display()
    );
    Ok(Some(member))
}

/// Keeps the node's leases and its part wired to the cluster's live
/// nodes for as long as the agent runs (never ends without a cluster).
async fn keep_membership(member: Option<crate::etcd::member::Member>) -> Result<()> {
    let Some(member) = member else {
        return std::future::pending().await;
    };
    let following = crate::etcd::sync::follow(member.clone());
    tokio::select! {
        kept = member.keep() => kept,
        followed = following => followed,
    }
}

async fn respond(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(hyper::header::ACCEPT);
            let openmetrics = metrics::wants_openmetrics(accept.and_then(|a| a.to_str().ok()));
            let passes = passes::snapshot();
            match metrics::exposition(&shared.host, shared.metrics, &shared.scope, passes).await {
                Ok(text) => match openmetrics {
                    true => reply(StatusCode::OK, metrics::CONTENT_TYPE, text),
                    false => reply(
                        StatusCode::OK,
                        metrics::TEXT_CONTENT_TYPE,
                        metrics::to_text_format(&text),
                    ),
                },
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("reading the dataplane failed: {e:#}\n"),
                ),
            }
        }
        // Alive: it answers. Nothing more, so that a slow kernel never
        // gets a working agent restarted.
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            match readiness::problems(&shared.host, &shared.cni_networks, &shared.scope).await {
                Ok(problems) if problems.is_empty() => {
                    reply(StatusCode::OK, "text/plain", "ready\n".into())
                }
                Ok(problems) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready:\n{}\n", problems.join("\n")),
                ),
                Err(e) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: reading the dataplane failed: {e:#}\n"),
                ),
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "vethctl agent: /metrics, /healthz, /readyz\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
