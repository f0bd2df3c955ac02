//! `vethctl agent`: the node's daemon. It keeps every topology's endpoints
//! true to their veths ([`crate::watch`]) and serves a Prometheus endpoint
//! over the pinned maps. It holds no counters of its own: every scrape
//! reads the maps, so a restart loses nothing, and stopping it leaves the
//! dataplane forwarding (with endpoints then updated only by `up`).

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
    observe::metrics::{self, CONTENT_TYPE},
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
}

struct Shared {
    host: Host,
    bpf_stats: bool,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(options: AgentOptions) -> Result<()> {
    for path in &options.cni_confs {
        let list = crate::cni::install::read_list(path)?;
        let name = crate::cni::bring_up(&list)
            .await
            .with_context(|| format!("bringing up the network of {}", path.display()))?;
        eprintln!(
            "vethctl agent: network {name:?} of {} is up",
            path.display()
        );
    }
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
    eprintln!(
        "vethctl agent: serving http://{}/metrics (Ctrl-C or SIGTERM to stop; the dataplane keeps forwarding)",
        listener.local_addr()?
    );
    let shared = Arc::new(Shared {
        host: Host::connect()?,
        bpf_stats: options.bpf_stats,
    });
    let mut server = tokio::spawn(http_server::serve(
        listener,
        http_server::Limits::agent(),
        move |req| respond(shared.clone(), req),
    ));
    // Its own rtnetlink socket: a socket runs one dump at a time, and a
    // scrape's dump would fail (EBUSY) beside the watcher's.
    let mut watcher = tokio::spawn(crate::watch::run(Host::connect()?));
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
        // Endpoints would silently go stale: fail, so that whatever
        // supervises the agent restarts it.
        ended = &mut watcher => {
            let why = match ended {
                Ok(Err(e)) => format!("{e:#}"),
                Ok(Ok(())) => "it stopped".to_string(),
                Err(e) => e.to_string(),
            };
            anyhow::bail!("keeping endpoints current failed: {why}");
        }
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
    eprintln!("vethctl agent: stopped");
    Ok(())
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
        "/metrics" => match metrics::gather(&shared.host, shared.bpf_stats).await {
            Ok(snapshot) => reply(StatusCode::OK, CONTENT_TYPE, metrics::encode(snapshot)),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("reading the dataplane failed: {e:#}\n"),
            ),
        },
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "vethctl agent: metrics at /metrics\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".into(),
        ),
    }
}
