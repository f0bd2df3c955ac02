//! The agent's HTTP/1 server, made to outlast clients that connect and
//! then send nothing, or one byte at a time, or hold thousands of
//! connections (any local user can): connections are capped, each gets a
//! few seconds to send its request and one request only, those still
//! sending make way for newcomers when the cap is reached, a full
//! descriptor table slows accepting instead of spinning, and what goes
//! wrong is logged at a bounded rate.

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::AbortHandle};

/// The server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time from accept until the request's headers are in.
    pub header_timeout: Duration,
    /// Time a connection may live in all (request, answer, a slow reader).
    pub deadline: Duration,
}

impl Limits {
    /// What the agent uses: a scraper sends its request at once and reads
    /// its answer in well under a second (1.4 MB for 1,000 pods).
    pub fn agent() -> Limits {
        Limits {
            max_connections: max_connections_for(nofile_limit()),
            header_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(20),
        }
    }
}

/// Most connections the agent keeps; fewer when the descriptor limit is
/// low, so that half of it stays for the scrapes' own map and netlink
/// descriptors.
const MAX_CONNECTIONS: usize = 128;

fn max_connections_for(nofile: u64) -> usize {
    usize::try_from(nofile / 2)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

/// The soft RLIMIT_NOFILE.
fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Longest pause between accept attempts while the descriptor table is
/// full and nothing can be shed.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// Serves `handle` on `listener` until the task is aborted. Each
/// connection carries one request (no keep-alive: an idle connection is
/// then one still sending its request, which the header timeout ends).
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, handle: H) -> Infallible
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let connections = Arc::new(Connections::default());
    let log = Arc::new(RateLimitedLog::new(Duration::from_secs(10)));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                stream
            }
            Err(e) => {
                log.note("accept", &e.to_string());
                // Out of descriptors (or memory): shed a connection still
                // sending its request, or wait longer each time.
                if !connections.evict_oldest_waiting() {
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        // Below the descriptor limit of now (an operator may lower it).
        let cap = limits
            .max_connections
            .min(max_connections_for(nofile_limit()));
        if !make_room(&connections, cap).await {
            log.note(
                "connection limit",
                "every connection is answering a request; refused one",
            );
            continue;
        }
        spawn_connection(stream, limits, &connections, &log, handle.clone());
    }
}

/// Makes room for one more connection under `cap` by shedding the one that
/// has waited longest for its request, among those that have had a chance
/// to read it: connections accepted but not yet run get that chance first
/// (a scraper's request is usually there by then), so a flood accepted in
/// one go never sheds a scraper unread. `false` when every connection is
/// answering a request.
async fn make_room(connections: &Connections, cap: usize) -> bool {
    loop {
        if connections.live() < cap || connections.evict_oldest_waiting() {
            return true;
        }
        if !connections.has_fresh() {
            return false;
        }
        tokio::task::yield_now().await;
    }
}

fn spawn_connection<H, F>(
    stream: tokio::net::TcpStream,
    limits: Limits,
    connections: &Arc<Connections>,
    log: &Arc<RateLimitedLog>,
    handle: H,
) where
    H: Fn(Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let live = connections.open();
    let id = live.id;
    let (conns, log) = (connections.clone(), log.clone());
    // Listed before its task can run, so that what the task reports
    // (under the same lock) always finds it there.
    let mut queues = connections.queues();
    let task = tokio::spawn(async move {
        let _live = live;
        conns.started(id);
        let activated = conns.clone();
        let service = service_fn(move |req| {
            // Its request is in: no longer one to shed.
            activated.answering(id);
            let answer = handle(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(false)
            .max_buf_size(16 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        match tokio::time::timeout(limits.deadline, connection).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log.note("connection", &e.to_string()),
            Err(_) => log.note("connection", "deadline passed; closed"),
        }
        conns.answering(id);
    });
    queues.fresh.push_back((id, task.abort_handle()));
}

/// The open connections: how many, and which are still without their
/// request (oldest first), apart by whether they have run yet.
#[derive(Default)]
struct Connections {
    live: Arc<AtomicUsize>,
    next_id: AtomicUsize,
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    /// Accepted, not yet run.
    fresh: VecDeque<(usize, AbortHandle)>,
    /// Run at least once, request not complete.
    waiting: VecDeque<(usize, AbortHandle)>,
}

/// One open connection; closing it (dropping, also when its task is
/// aborted) frees its slot.
struct Live {
    id: usize,
    live: Arc<AtomicUsize>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn open(&self) -> Live {
        self.live.fetch_add(1, Ordering::Relaxed);
        Live {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            live: self.live.clone(),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A panic elsewhere never leaves the queues half-changed.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_fresh(&self) -> bool {
        !self.queues().fresh.is_empty()
    }

    /// Connection `id` runs: from now on it may be shed.
    fn started(&self, id: usize) {
        let mut queues = self.queues();
        if let Some(at) = queues.fresh.iter().position(|(i, _)| *i == id) {
            if let Some(entry) = queues.fresh.remove(at) {
                queues.waiting.push_back(entry);
            }
        }
    }

    /// Connection `id` has its request (or is done): never shed.
    fn answering(&self, id: usize) {
        let mut queues = self.queues();
        queues.fresh.retain(|(i, _)| *i != id);
        queues.waiting.retain(|(i, _)| *i != id);
    }

    /// Closes the connection that has waited longest for its request
    /// since it first ran; `false` if none is waiting.
    fn evict_oldest_waiting(&self) -> bool {
        let mut queues = self.queues();
        while let Some((_, task)) = queues.waiting.pop_front() {
            if !task.is_finished() {
                task.abort();
                return true;
            }
        }
        false
    }
}

/// At most one line per kind of trouble per period, with how many were
/// left out since the last.
struct RateLimitedLog {
    period: Duration,
    kinds: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl RateLimitedLog {
    fn new(period: Duration) -> RateLimitedLog {
        RateLimitedLog {
            period,
            kinds: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, kind: &'static str, message: &str) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let suppressed = match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, last, count)) if now.duration_since(*last) < self.period => {
                *count += 1;
                return;
            }
            Some((_, last, count)) => {
                *last = now;
                std::mem::take(count)
            }
            None => {
                kinds.push((kind, now, 0));
                0
            }
        };
        drop(kinds);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more like it in the last {:?})", self.period)
        } else {
            String::new()
        };
        log::error!("vethctl agent: {kind}: {message}{more}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_half_the_descriptors() {
        assert_eq!(max_connections_for(1024), MAX_CONNECTIONS);
        assert_eq!(max_connections_for(64), 32);
        assert_eq!(max_connections_for(1), 1);
        assert_eq!(max_connections_for(u64::MAX), MAX_CONNECTIONS);
    }
}
