//! `cargo xtask bench disruption`: what a change costs the traffic that is
//! running through it (Cilium's "connection disruption" pattern).
//!
//! One two-pod topology (`bdisrupt`, 198.19.192.0/24 and
//! fd00:198:19:192::/64, used by nothing else) carries, for the whole run,
//! a sequence-numbered UDP stream from pod a to pod b at a fixed rate and a
//! few long-lived TCP connections exchanging small messages without pause.
//! Every sender and receiver is a thread of this process that joined its
//! pod's namespace with `setns`. Then, one after the other, with time to
//! settle in between: nothing (the noise floor); `vethctl agent` killed
//! with SIGKILL and started again; a program reload (`counters` toggled in
//! the topology file, `vethctl up`) and back; every `vethctl mode set`
//! transition between the modes (an Eulerian circuit, so each ordered pair
//! once). Around each event it counts datagrams lost (sent without error,
//! never received), the longest gap between two arrivals, sender errors
//! (such as `Network is unreachable`), the longest TCP round trip and TCP
//! connections broken (an error, a reset or no answer within the timeout;
//! a broken connection is opened again for the next events). Traffic stays
//! between the benchmark's own namespaces.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::prepare;
use crate::cmd;

const NAME: &str = "bdisrupt";
const CIDR: &str = "198.19.192.0/24";
const CIDR6: &str = "fd00:198:19:192::/64";
const UDP_PORT: u16 = 11192;
const TCP_PORT: u16 = 11193;
/// The agent's metrics address: a port of its own, so another agent on
/// the machine does not keep this one from starting.
const AGENT_LISTEN: &str = "127.0.0.1:19592";
/// A TCP connection that gets no answer for this long counts as broken.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Round trips longer than this are kept, for the longest stall.
const SLOW_ROUND_TRIP: Duration = Duration::from_millis(20);
/// Most seconds of UDP stream the run keeps arrival times for.
const MAX_SECONDS: u64 = 1200;

pub struct Options {
    pub rate: u64,
    pub connections: usize,
    pub settle_ms: u64,
    pub modes: Vec<String>,
}

/// What one event cost.
#[derive(Debug, Serialize)]
struct Row {
    event: String,
    /// How long the command (or kill and restart) took, ms.
    command_ms: f64,
    /// Datagrams sent in the window (by the sender's sequence numbers).
    sent: u64,
    /// Sent without error but never received.
    lost: u64,
    /// Sends that failed (ENETUNREACH and the like).
    send_errors: u64,
    /// The errors seen, by message.
    send_error_kinds: BTreeMap<String, u64>,
    /// Longest time between two datagrams received in the window, ms.
    longest_gap_ms: f64,
    /// Longest TCP round trip that overlapped the window, ms (0 if none
    /// took over 20 ms).
    tcp_longest_stall_ms: f64,
    /// TCP connections that broke in the window.
    connections_broken: u64,
    /// What broke them.
    broken_by: Vec<String>,
}

/// Shared between the traffic threads and the driver.
struct Traffic {
    base: Instant,
    rate: u64,
    stop: AtomicBool,
    /// Next sequence number the UDP sender will send.
    next_seq: AtomicU64,
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
}

impl Traffic {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// Moves the calling thread (only it) into `/run/netns/NETNS`.
fn enter(netns: &str) -> Result<()> {
    let path = format!("/run/netns/{netns}");
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a plain syscall on a live fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// The topology file and the agent, both taken down when dropped.
struct Bench {
    vethctl: PathBuf,
    file: PathBuf,
    agent: Option<Child>,
}

impl Bench {
    fn write_file(&self, mode: &str, counters: bool) -> Result<()> {
        let text = format!(
            "name = \"{NAME}\"\nmode = \"{mode}\"\npod_cidr = \"{CIDR}\"\npod_cidr6 = \"{CIDR6}\"\n\
             counters = {counters}\n\n[[pods]]\nname = \"a\"\n\n[[pods]]\nname = \"b\"\n"
        );
        fs::write(&self.file, text)?;
        Ok(())
    }

    fn vethctl(&self, args: &[&str]) -> Result<String> {
        cmd::output(Command::new(&self.vethctl).args(args))
    }

    fn start_agent(&mut self) -> Result<()> {
        let child = Command::new(&self.vethctl)
            .args(["agent", "--listen", AGENT_LISTEN])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting vethctl agent")?;
        self.agent = Some(child);
        Ok(())
    }

    /// SIGKILL to the agent this benchmark started (by its pid only).
    fn kill_agent(&mut self) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            child.kill().context("kill -9 of the agent")?;
            let _ = child.wait();
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.kill_agent();
        let _ = Command::new(&self.vethctl)
            .args(["down", "--name", NAME])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.file);
    }
}

/// Every ordered pair of `modes` once, as one walk from the first mode
/// back to it (Hierholzer's algorithm on the complete digraph).
fn transitions(modes: &[String]) -> Vec<(String, String)> {
    let mut next: Vec<Vec<usize>> = (0..modes.len())
        .map(|a| (0..modes.len()).filter(|&b| b != a).collect())
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

pub fn run(options: &Options) -> Result<()> {
    if options.rate == 0 || options.rate > 200_000 {
        bail!("--rate takes 1 to 200000 datagrams per second");
    }
    if options.connections > 64 {
        bail!("--connections takes 0 to 64");
    }
    for m in &options.modes {
        if !["pair", "bridge", "routed", "tc", "xdp"].contains(&m.as_str()) {
            bail!("--modes: unknown mode {m:?}");
        }
    }
    if options.modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    let (vethctl, dir) = prepare()?;
    if Path::new("/run/netns").join(format!("{NAME}-a")).exists() {
        bail!(
            "topology {NAME} is already up: is another disruption benchmark running? \
             Wait for it, or take it down with `vethctl down --name {NAME}`"
        );
    }
    let mut bench = Bench {
        vethctl,
        file: dir.join(format!("{NAME}.toml")),
        agent: None,
    };
    let first = options.modes[0].clone();
    bench.write_file(&first, true)?;
    bench.vethctl(&["up", "--topology", &bench.file.to_string_lossy()])?;
    let status: Value =
        serde_json::from_str(&bench.vethctl(&["status", "--json", "--name", NAME])?)?;
    let pod = |i: usize, field: &str| -> Result<String> {
        status["topologies"][0]["pods"][i][field]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("status of {NAME} lacks pods[{i}].{field}"))
    };
    let (client_netns, server_netns, server_ip) =
        (pod(0, "netns")?, pod(1, "netns")?, pod(1, "ipv4")?);
    bench.start_agent()?;

    let traffic = Arc::new(Traffic {
        base: Instant::now(),
        rate: options.rate,
        stop: AtomicBool::new(false),
        next_seq: AtomicU64::new(0),
        arrivals: (0..options.rate * MAX_SECONDS)
            .map(|_| AtomicU64::new(0))
            .collect(),
        send_errors: Mutex::new(Vec::new()),
        slow_round_trips: Mutex::new(Vec::new()),
        broken: Mutex::new(Vec::new()),
        round_trips: AtomicU64::new(0),
    });
    let udp_addr: SocketAddr = format!("{server_ip}:{UDP_PORT}").parse()?;
    let tcp_addr: SocketAddr = format!("{server_ip}:{TCP_PORT}").parse()?;
    let mut threads = Vec::new();
    // Receivers first, and wait until they listen.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    {
        let (t, ns, ready) = (traffic.clone(), server_netns.clone(), ready_tx.clone());
        threads.push(thread::spawn(move || {
            udp_receiver(&t, &ns, udp_addr, ready)
        }));
    }
    {
        let (t, ns, ready) = (traffic.clone(), server_netns.clone(), ready_tx.clone());
        threads.push(thread::spawn(move || tcp_server(t, &ns, tcp_addr, ready)));
    }
    drop(ready_tx);
    for _ in 0..2 {
        ready_rx
            .recv()
            .context("a receiver ended before it listened")??;
    }
    {
        let (t, ns) = (traffic.clone(), client_netns.clone());
        threads.push(thread::spawn(move || udp_sender(&t, &ns, udp_addr)));
    }
    for _ in 0..options.connections {
        let (t, ns) = (traffic.clone(), client_netns.clone());
        threads.push(thread::spawn(move || tcp_client(&t, &ns, tcp_addr)));
    }

    let result = drive(&mut bench, &traffic, options);
    traffic.stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Err(e)) => eprintln!("traffic thread: {e:#}"),
            Err(_) => eprintln!("a traffic thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    let windows = result?;
    let rows: Vec<Row> = windows.iter().map(|w| w.row(&traffic)).collect();
    print_table(&rows, options);
    let out = dir.join("disruption.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "rate": options.rate,
            "connections": options.connections,
            "settle_ms": options.settle_ms,
            "tcp_round_trips": traffic.round_trips.load(Ordering::Relaxed),
            "rows": rows,
        }))?,
    )?;
    println!("results: {}", out.display());
    drop(bench);
    Ok(())
}

/// One event's window: sequence numbers and times.
struct Window {
    event: String,
    command: Duration,
    seq: (u64, u64),
    ns: (u64, u64),
}

impl Window {
    fn row(&self, t: &Traffic) -> Row {
        let (s0, s1) = self.seq;
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
        let errored: std::collections::HashSet<u64> = errors.iter().map(|(s, _)| *s).collect();
        let mut lost = 0;
        let mut times = Vec::new();
        for s in s0..s1.min(t.arrivals.len() as u64) {
            let a = t.arrivals[s as usize].load(Ordering::Relaxed);
            if a == 0 {
                if !errored.contains(&s) {
                    lost += 1;
                }
            } else {
                times.push(a - 1);
            }
        }
        times.sort_unstable();
        // From the window's start to the first arrival, between arrivals,
        // and from the last to the window's end.
        let mut edges = vec![self.ns.0];
        edges.extend(times.iter().copied().filter(|&a| a >= self.ns.0));
        edges.push(self.ns.1);
        let longest_gap = edges
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or(0);
        let stall = t
            .slow_round_trips
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(a, b)| *b >= self.ns.0 && *a <= self.ns.1)
            .map(|(a, b)| b - a)
            .max()
            .unwrap_or(0);
        let broken: Vec<String> = t
            .broken
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(at, _)| (self.ns.0..self.ns.1).contains(at))
            .map(|(_, e)| e.clone())
            .collect();
        Row {
            event: self.event.clone(),
            command_ms: self.command.as_secs_f64() * 1e3,
            sent: s1 - s0,
            lost,
            send_errors: errors.len() as u64,
            send_error_kinds: kinds,
            longest_gap_ms: longest_gap as f64 / 1e6,
            tcp_longest_stall_ms: stall as f64 / 1e6,
            connections_broken: broken.len() as u64,
            broken_by: broken,
        }
    }
}

/// Runs the events one after the other; each window starts a settle time
/// before the event and ends a settle time after it.
fn drive(bench: &mut Bench, traffic: &Traffic, options: &Options) -> Result<Vec<Window>> {
    let settle = Duration::from_millis(options.settle_ms);
    // Let the stream and the connections start.
    thread::sleep(Duration::from_secs(1));
    if traffic.round_trips.load(Ordering::Relaxed) == 0 && options.connections > 0 {
        bail!("no TCP round trip completed in the first second: is the topology forwarding?");
    }
    let mut windows = Vec::new();
    let mut event = |name: String, action: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let seq0 = traffic.next_seq.load(Ordering::Relaxed);
        let ns0 = traffic.now_ns();
        thread::sleep(settle / 4);
        let started = Instant::now();
        action().with_context(|| name.clone())?;
        let command = started.elapsed();
        thread::sleep(settle);
        let w = Window {
            event: name,
            command,
            seq: (seq0, traffic.next_seq.load(Ordering::Relaxed)),
            ns: (ns0, traffic.now_ns()),
        };
        let row = w.row(traffic);
        println!(
            "{:<22} lost {:>5}  gap {:>7.1} ms  send errors {:>5}  tcp stall {:>7.1} ms  broken {}",
            row.event,
            row.lost,
            row.longest_gap_ms,
            row.send_errors,
            row.tcp_longest_stall_ms,
            row.connections_broken
        );
        windows.push(w);
        Ok(())
    };
    let file = bench.file.to_string_lossy().to_string();
    let first = options.modes[0].clone();
    let cell = std::cell::RefCell::new(bench);

    event("idle (no change)".into(), &mut || Ok(()))?;
    event("agent kill -9, restart".into(), &mut || {
        let mut b = cell.borrow_mut();
        b.kill_agent()?;
        thread::sleep(Duration::from_millis(500));
        b.start_agent()
    })?;
    event("reload: counters off".into(), &mut || {
        let b = cell.borrow();
        b.write_file(&first, false)?;
        b.vethctl(&["up", "--topology", &file]).map(drop)
    })?;
    event("reload: counters on".into(), &mut || {
        let b = cell.borrow();
        b.write_file(&first, true)?;
        b.vethctl(&["up", "--topology", &file]).map(drop)
    })?;
    for (from, to) in transitions(&options.modes) {
        event(format!("mode {from} -> {to}"), &mut || {
            cell.borrow()
                .vethctl(&["mode", "set", &to, "--name", NAME])
                .map(drop)
        })?;
    }
    Ok(windows)
}

fn print_table(rows: &[Row], options: &Options) {
    println!(
        "\ndisruption: UDP {} datagrams/s from pod a to pod b, {} TCP connections, windows of {} ms settle around each event",
        options.rate, options.connections, options.settle_ms
    );
    println!(
        "| {:<22} | {:>7} | {:>6} | {:>11} | {:>11} | {:>13} | {:>6} | {:>10} |",
        "event", "sent", "lost", "gap (ms)", "send errors", "tcp stall ms", "broken", "command ms"
    );
    println!(
        "|{:-<24}|{:->9}|{:->8}|{:->13}|{:->13}|{:->15}|{:->8}|{:->12}|",
        "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<22} | {:>7} | {:>6} | {:>11.1} | {:>11} | {:>13.1} | {:>6} | {:>10.0} |",
            r.event,
            r.sent,
            r.lost,
            r.longest_gap_ms,
            r.send_errors,
            r.tcp_longest_stall_ms,
            r.connections_broken,
            r.command_ms
        );
        for (kind, n) in &r.send_error_kinds {
            println!("|   send error: {kind} x{n}");
        }
        for b in &r.broken_by {
            println!("|   broken: {b}");
        }
    }
}

fn udp_receiver(
    t: &Traffic,
    netns: &str,
    addr: SocketAddr,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<()> {
    let socket = match enter(netns).and_then(|()| {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
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

/// Sends sequence number n at `base + n / rate`; behind schedule it
/// sends at once (a stalled sender catches up).
fn udp_sender(t: &Traffic, netns: &str, addr: SocketAddr) -> Result<()> {
    enter(netns)?;
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the UDP sender")?;
    let period_ns = 1_000_000_000 / t.rate;
    let mut buf = [0u8; 64];
    while !t.stop.load(Ordering::Relaxed) {
        let seq = t.next_seq.load(Ordering::Relaxed);
        if seq as usize >= t.arrivals.len() {
            break;
        }
        let due = seq * period_ns;
        let now = t.now_ns();
        if due > now {
            thread::sleep(Duration::from_nanos(due - now));
        }
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        if let Err(e) = socket.send_to(&buf, addr) {
            t.send_errors
                .lock()
                .expect("not poisoned")
                .push((seq, e.to_string()));
        }
        t.next_seq.store(seq + 1, Ordering::Relaxed);
    }
    Ok(())
}

fn tcp_server(
    t: Arc<Traffic>,
    netns: &str,
    addr: SocketAddr,
    ready: std::sync::mpsc::Sender<Result<()>>,
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
    // Echo threads end when their client closes (at the end of the run).
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

/// One long-lived connection, a 64-byte message and its echo after the
/// other with 1 ms between; on an error or a timeout it counts a broken
/// connection and opens a new one.
fn tcp_client(t: &Traffic, netns: &str, addr: SocketAddr) -> Result<()> {
    enter(netns)?;
    while !t.stop.load(Ordering::Relaxed) {
        let mut conn = match TcpStream::connect_timeout(&addr, TCP_TIMEOUT) {
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
        conn.set_read_timeout(Some(TCP_TIMEOUT))?;
        conn.set_write_timeout(Some(TCP_TIMEOUT))?;
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
