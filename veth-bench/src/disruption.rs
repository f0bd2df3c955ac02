//! Traffic that measures what a change costs (Cilium's "connection
//! disruption" pattern): a sequence-numbered UDP stream at a fixed rate
//! from one pod to another, and long-lived TCP connections exchanging
//! small messages without pause. `cargo xtask bench disruption` and the
//! no-loss test share it.
//!
//! Every sender and receiver is a thread of the calling process that
//! joined its pod's namespace with `setns`. Loss is counted by sequence
//! number (sent without error, never received), not by time, so a slow or
//! busy machine shows as gaps and stalls, never as loss. A connection is
//! broken when it errors, is reset, or gets no answer within the timeout.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What traffic to run, between which pods.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the sending pod: a name under /run/netns or a path.
    pub client_netns: String,
    /// Namespace of the receiving pod.
    pub server_netns: String,
    /// The receiving pod's address.
    pub server: IpAddr,
    pub udp_port: u16,
    pub tcp_port: u16,
    /// Datagrams per second.
    pub rate: u64,
    /// Long-lived TCP connections.
    pub connections: usize,
    /// Most seconds of stream kept (the memory for arrival times).
    pub max_seconds: u64,
    /// A TCP connection that gets no answer for this long counts as broken.
    pub tcp_timeout: Duration,
}

/// Round trips longer than this are kept, for the longest stall.
const SLOW_ROUND_TRIP: Duration = Duration::from_millis(20);
/// A sender further behind its schedule than this starts the schedule
/// again from now instead of catching up in a burst (which would overflow
/// queues that have nothing to do with the change measured).
const MAX_CATCH_UP: Duration = Duration::from_millis(20);
/// Receive buffer of the UDP receiver (SO_RCVBUFFORCE): a receiver kept
/// off the CPU for a while must not drop datagrams itself.
const UDP_RCVBUF: libc::c_int = 16 << 20;

/// A point in the traffic: the next sequence number and the time.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub seq: u64,
    pub ns: u64,
}

/// What the traffic saw between two marks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Disruption {
    /// Datagrams sent in the window (by the sender's sequence numbers).
    pub sent: u64,
    /// Sent without error but never received.
    pub lost: u64,
    /// When each lost datagram was sent, ns on the traffic's clock.
    #[serde(skip)]
    pub lost_sent_ns: Vec<u64>,
    /// Sends that failed (ENETUNREACH and the like).
    pub send_errors: u64,
    /// The errors seen, by message.
    pub send_error_kinds: BTreeMap<String, u64>,
    /// Longest time between two datagrams received in the window, ms.
    pub longest_gap_ms: f64,
    /// When that gap began (the arrival before it), ns on the traffic's
    /// clock.
    #[serde(skip)]
    pub longest_gap_from_ns: u64,
    /// Longest TCP round trip that overlapped the window, ms (0 if none
    /// took over 20 ms).
    pub tcp_longest_stall_ms: f64,
    /// TCP connections that broke in the window.
    pub connections_broken: u64,
    /// What broke them.
    pub broken_by: Vec<String>,
}

/// Shared between the traffic threads and the caller.
struct Shared {
    base: Instant,
    /// `base` on CLOCK_MONOTONIC, ns.
    base_monotonic_ns: u64,
    rate: u64,
    tcp_timeout: Duration,
    stop: AtomicBool,
    /// Next sequence number the UDP sender will send.
    next_seq: AtomicU64,
    /// Send time of each sequence number, ns since `base`.
    sent_at: Vec<AtomicU64>,
    /// Arrival time of each sequence number, ns since `base` plus one
    /// (0: not received).
    arrivals: Vec<AtomicU64>,
    /// (sequence number, error) of each failed send.
    send_errors: Mutex<Vec<(u64, String)>>,
    /// (start ns, end ns) of each slow TCP round trip.
    slow_round_trips: Mutex<Vec<(u64, u64)>>,
    /// (ns, what) of each broken connection.
    broken: Mutex<Vec<(u64, String)>>,
    /// TCP round trips completed, all connections.
    round_trips: AtomicU64,
    /// End of the last round trip of each connection, ns since `base`.
    last_round_trip: Vec<AtomicU64>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// The running traffic; stops (and joins its threads) when dropped.
pub struct Traffic {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<Result<()>>>,
}

/// CLOCK_MONOTONIC now, ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Moves the calling thread (only it) into `/run/netns/NETNS`, or into
/// the namespace bound at NETNS when it is a path (a runtime's, such as
/// containerd's `/var/run/netns/cni-…`).
fn enter(netns: &str) -> Result<()> {
    let path = if netns.starts_with('/') {
        netns.to_string()
    } else {
        format!("/run/netns/{netns}")
    };
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a plain syscall on a live fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

impl Traffic {
    /// Starts receivers (and waits until they listen), then the UDP sender
    /// and the TCP clients; returns once every connection completed a
    /// round trip (or fails after `tcp_timeout`).
    pub fn start(config: &Config) -> Result<Traffic> {
        if config.rate == 0 || config.rate > 200_000 {
            bail!("the UDP rate takes 1 to 200000 datagrams per second");
        }
        if config.connections > 64 {
            bail!("0 to 64 TCP connections");
        }
        let slots = (config.rate * config.max_seconds) as usize;
        let shared = Arc::new(Shared {
            base: Instant::now(),
            base_monotonic_ns: monotonic_ns(),
            rate: config.rate,
            tcp_timeout: config.tcp_timeout,
            stop: AtomicBool::new(false),
            next_seq: AtomicU64::new(0),
            sent_at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            arrivals: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            send_errors: Mutex::new(Vec::new()),
            slow_round_trips: Mutex::new(Vec::new()),
            broken: Mutex::new(Vec::new()),
            round_trips: AtomicU64::new(0),
            last_round_trip: (0..config.connections).map(|_| AtomicU64::new(0)).collect(),
        });
        let mut traffic = Traffic {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let udp_addr = SocketAddr::new(config.server, config.udp_port);
        let tcp_addr = SocketAddr::new(config.server, config.tcp_port);
        // Receivers first, and wait until they listen.
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        {
            let (t, ns, ready) = (
                shared.clone(),
                config.server_netns.clone(),
                ready_tx.clone(),
            );
            traffic.threads.push(thread::spawn(move || {
                udp_receiver(&t, &ns, udp_addr, ready)
            }));
        }
        {
            let (t, ns, ready) = (
                shared.clone(),
                config.server_netns.clone(),
                ready_tx.clone(),
            );
            traffic
                .threads
                .push(thread::spawn(move || tcp_server(t, &ns, tcp_addr, ready)));
        }
        drop(ready_tx);
        for _ in 0..2 {
            ready_rx
                .recv()
                .context("a receiver ended before it listened")??;
        }
        {
            let (t, ns) = (shared.clone(), config.client_netns.clone());
            traffic
                .threads
                .push(thread::spawn(move || udp_sender(&t, &ns, udp_addr)));
        }
        for i in 0..config.connections {
            let (t, ns) = (shared.clone(), config.client_netns.clone());
            traffic
                .threads
                .push(thread::spawn(move || tcp_client(&t, i, &ns, tcp_addr)));
        }
        let deadline = Instant::now() + config.tcp_timeout;
        while !traffic.all_connections_answered_since(0) {
            if Instant::now() > deadline {
                bail!(
                    "not every TCP connection to {tcp_addr} completed a round trip within {:?}: \
                     is the topology forwarding?",
                    config.tcp_timeout
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(traffic)
    }

    /// Nanoseconds on the traffic's clock.
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// A CLOCK_MONOTONIC time (ns) on the traffic's clock (0 if before it).
    pub fn from_monotonic_ns(&self, monotonic_ns: u64) -> u64 {
        monotonic_ns.saturating_sub(self.shared.base_monotonic_ns)
    }

    pub fn mark(&self) -> Mark {
        Mark {
            seq: self.shared.next_seq.load(Ordering::Relaxed),
            ns: self.now_ns(),
        }
    }

    /// TCP round trips completed so far, all connections.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Every connection completed a round trip after `ns` (a connection
    /// that stalls for good shows here long before its timeout).
    pub fn all_connections_answered_since(&self, ns: u64) -> bool {
        self.shared
            .last_round_trip
            .iter()
            .all(|t| t.load(Ordering::Relaxed) > ns)
    }

    /// What the traffic saw from `from` to `to`. Datagrams sent just before
    /// `to` may still be on their way: take `to` a moment before calling.
    pub fn window(&self, from: Mark, to: Mark) -> Disruption {
        let t = &self.shared;
        let (s0, s1) = (from.seq, to.seq.min(t.arrivals.len() as u64));
        let errors: Vec<(u64, String)> = t
            .send_errors
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(s, _)| (s0..s1).contains(s))
            .cloned()
            .collect();
        let mut kinds = BTreeMap::new();
        for (_, e) in &errors {
            *kinds.entry(e.clone()).or_insert(0) += 1;
        }
        let errored: HashSet<u64> = errors.iter().map(|(s, _)| *s).collect();
        let mut lost_sent_ns = Vec::new();
        let mut times = Vec::new();
        for s in s0..s1 {
            let a = t.arrivals[s as usize].load(Ordering::Relaxed);
            if a == 0 {
                if !errored.contains(&s) {
                    lost_sent_ns.push(t.sent_at[s as usize].load(Ordering::Relaxed));
                }
            } else {
                times.push(a - 1);
            }
        }
        times.sort_unstable();
        // From the window's start to the first arrival, between arrivals,
        // and from the last to the window's end.
        let mut edges = vec![from.ns];
        edges.extend(times.iter().copied().filter(|&a| a >= from.ns));
        edges.push(to.ns);
        let (longest_gap, longest_gap_from_ns) = edges
            .windows(2)
            .map(|w| (w[1].saturating_sub(w[0]), w[0]))
            .max()
            .unwrap_or((0, from.ns));
        let stall = t
            .slow_round_trips
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(a, b)| *b >= from.ns && *a <= to.ns)
            .map(|(a, b)| b - a)
            .max()
            .unwrap_or(0);
        let broken: Vec<String> = t
            .broken
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(at, _)| (from.ns..to.ns).contains(at))
            .map(|(_, e)| e.clone())
            .collect();
        Disruption {
            sent: s1.saturating_sub(s0),
            lost: lost_sent_ns.len() as u64,
            lost_sent_ns,
            send_errors: errors.len() as u64,
            send_error_kinds: kinds,
            longest_gap_ms: longest_gap as f64 / 1e6,
            longest_gap_from_ns,
            tcp_longest_stall_ms: stall as f64 / 1e6,
            connections_broken: broken.len() as u64,
            broken_by: broken,
        }
    }

    /// Stops every thread and waits for them; the first thread error, if
    /// any.
    pub fn stop(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut first = None;
        for t in self.threads.drain(..) {
            let result = match t.join() {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("a traffic thread panicked")),
            };
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

fn udp_receiver(
    t: &Shared,
    netns: &str,
    addr: SocketAddr,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let socket = match enter(netns).and_then(|()| {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        // SAFETY: setsockopt on a live socket with an int option value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&UDP_RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("SO_RCVBUFFORCE on the UDP receiver (needs root)");
        }
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 64];
    while !t.stop.load(Ordering::Relaxed) {
        match socket.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                if let Some(slot) = t.arrivals.get(seq as usize) {
                    let _ = slot.compare_exchange(
                        0,
                        t.now_ns() + 1,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("UDP receive"),
        }
    }
    Ok(())
}

/// Sends one datagram every 1/rate s, each with the next sequence number;
/// behind schedule it catches up at once, but never by more than
/// [`MAX_CATCH_UP`] of traffic.
fn udp_sender(t: &Shared, netns: &str, addr: SocketAddr) -> Result<()> {
    enter(netns)?;
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the UDP sender")?;
    let period_ns = 1_000_000_000 / t.rate;
    let max_behind = MAX_CATCH_UP.as_nanos() as u64;
    let mut buf = [0u8; 64];
    let mut due = t.now_ns();
    while !t.stop.load(Ordering::Relaxed) {
        let seq = t.next_seq.load(Ordering::Relaxed);
        if seq as usize >= t.arrivals.len() {
            break;
        }
        let now = t.now_ns();
        if due > now {
            thread::sleep(Duration::from_nanos(due - now));
        } else if now - due > max_behind {
            due = now;
        }
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        t.sent_at[seq as usize].store(t.now_ns(), Ordering::Relaxed);
        if let Err(e) = socket.send_to(&buf, addr) {
            t.send_errors
                .lock()
                .expect("not poisoned")
                .push((seq, e.to_string()));
        }
        t.next_seq.store(seq + 1, Ordering::Relaxed);
        due += period_ns;
    }
    Ok(())
}

fn tcp_server(
    t: Arc<Shared>,
    netns: &str,
    addr: SocketAddr,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let listener = match enter(netns).and_then(|()| {
        let l = TcpListener::bind(addr).with_context(|| format!("listening on TCP {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let netns = netns.to_string();
    let mut echoes = Vec::new();
    while !t.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (netns, t) = (netns.clone(), t.clone());
                echoes.push(thread::spawn(move || -> Result<()> {
                    enter(&netns)?;
                    conn.set_nonblocking(false)?;
                    conn.set_nodelay(true)?;
                    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
                    echo(conn, &t.stop);
                    Ok(())
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("accept"),
        }
    }
    drop(listener);
    for e in echoes {
        let _ = e.join();
    }
    Ok(())
}

/// Sends back what arrives until the peer closes, an error or the end of
/// the run (the client's FIN may not make it through a broken path).
fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One long-lived connection: a 64-byte message and its echo after the
/// other with 1 ms between; on an error or a timeout it counts a broken
/// connection and opens a new one.
fn tcp_client(t: &Shared, index: usize, netns: &str, addr: SocketAddr) -> Result<()> {
    enter(netns)?;
    while !t.stop.load(Ordering::Relaxed) {
        let mut conn = match TcpStream::connect_timeout(&addr, t.tcp_timeout) {
            Ok(c) => c,
            Err(e) => {
                t.broken
                    .lock()
                    .expect("not poisoned")
                    .push((t.now_ns(), format!("connect: {e}")));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(t.tcp_timeout))?;
        conn.set_write_timeout(Some(t.tcp_timeout))?;
        let mut msg = [0u8; 64];
        let mut back = [0u8; 64];
        let mut n: u64 = 0;
        let failure = loop {
            if t.stop.load(Ordering::Relaxed) {
                break None;
            }
            n += 1;
            msg[..8].copy_from_slice(&n.to_be_bytes());
            let start = t.now_ns();
            if let Err(e) = conn.write_all(&msg) {
                break Some(format!("write: {e}"));
            }
            match conn.read_exact(&mut back) {
                Ok(()) if back == msg => {}
                Ok(()) => break Some("echo does not match".to_string()),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    break Some("closed by the server".to_string())
                }
                Err(e) => break Some(format!("read: {e}")),
            }
            let end = t.now_ns();
            t.round_trips.fetch_add(1, Ordering::Relaxed);
            t.last_round_trip[index].store(end, Ordering::Relaxed);
            if end - start > SLOW_ROUND_TRIP.as_nanos() as u64 {
                t.slow_round_trips
                    .lock()
                    .expect("not poisoned")
                    .push((start, end));
            }
            thread::sleep(Duration::from_millis(1));
        };
        if let Some(f) = failure {
            t.broken.lock().expect("not poisoned").push((t.now_ns(), f));
        }
    }
    Ok(())
}

/// Every ordered pair of `modes` once, except those in `skip`, as one walk
/// from the first mode back to it (Hierholzer's algorithm). Without
/// `skip` the graph is complete and such a walk always exists; a `skip`
/// must leave every mode with as many ways in as out (skip pairs both
/// ways), or some pairs are left out.
pub fn transitions(modes: &[String], skip: &[(&str, &str)]) -> Vec<(String, String)> {
    let skipped = |a: usize, b: usize| skip.iter().any(|&(f, t)| modes[a] == f && modes[b] == t);
    let mut next: Vec<Vec<usize>> = (0..modes.len())
        .map(|a| {
            (0..modes.len())
                .filter(|&b| b != a && !skipped(a, b))
                .collect()
        })
        .collect();
    let mut stack = vec![0usize];
    let mut walk = Vec::new();
    while let Some(&v) = stack.last() {
        if next[v].is_empty() {
            walk.push(stack.pop().expect("non-empty"));
        } else {
            stack.push(next[v].remove(0));
        }
    }
    walk.reverse();
    walk.windows(2)
        .map(|w| (modes[w[0]].clone(), modes[w[1]].clone()))
        .collect()
}

/// Stands in for a vethctl whose maps had other layouts: every map pinned
/// in `pin_dir` (a topology's `/sys/fs/bpf/vethctl/<name>`) is replaced by
/// a pin of a one-entry hash map with 8-byte keys and values, which
/// matches none of vethctl's layouts. Programs attached now keep the maps
/// they hold; the next program load finds every pinned layout changed and
/// makes the maps afresh. Returns the maps replaced. Uses `bpftool`.
pub fn give_pinned_maps_other_layouts(pin_dir: &std::path::Path) -> Result<Vec<String>> {
    let mut replaced = Vec::new();
    let entries =
        std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            continue;
        }
        let is_map = std::process::Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(&path)
            .output()
            .with_context(|| "running bpftool (is it installed?)")?
            .status
            .success();
        if !is_map {
            continue;
        }
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        let status = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&path)
            .args([
                "type",
                "hash",
                "key",
                "8",
                "value",
                "8",
                "entries",
                "1",
                "name",
                "old_layout",
            ])
            .status()
            .context("running bpftool map create")?;
        if !status.success() {
            bail!("bpftool map create {} failed ({status})", path.display());
        }
        replaced.push(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    replaced.sort();
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes() -> Vec<String> {
        ["tc", "xdp", "routed", "bridge", "pair"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn every_ordered_pair_once_from_the_first_mode_back() {
        let walk = transitions(&modes(), &[]);
        assert_eq!(walk.len(), 20);
        let pairs: std::collections::BTreeSet<_> = walk.iter().cloned().collect();
        assert_eq!(pairs.len(), 20, "no pair twice");
        assert_eq!(walk[0].0, "tc");
        assert_eq!(walk.last().unwrap().1, "tc");
        assert!(walk.windows(2).all(|w| w[0].1 == w[1].0), "one walk");
    }

    #[test]
    fn skipped_pairs_are_left_out_and_the_rest_walked() {
        let walk = transitions(&modes(), &[("routed", "bridge"), ("bridge", "routed")]);
        assert_eq!(walk.len(), 18);
        assert!(!walk.iter().any(|(f, t)| f == "routed" && t == "bridge"));
        assert!(!walk.iter().any(|(f, t)| f == "bridge" && t == "routed"));
        let pairs: std::collections::BTreeSet<_> = walk.iter().cloned().collect();
        assert_eq!(pairs.len(), 18);
        assert!(walk.windows(2).all(|w| w[0].1 == w[1].0), "one walk");
        assert_eq!(walk.last().unwrap().1, "tc");
    }
}
