//! Connection rate, as netperf's TCP_CRR measures it: connect, send a
//! 1-byte request, read the 1-byte response, close, and again, one
//! connection at a time. This is where the host's conntrack and netfilter
//! hooks show: every connection is a new flow.
//!
//! A small built-in generator rather than a tool: netperf is not in
//! Debian's packages, sockperf and iperf3 keep one connection open, and
//! what Debian has that opens connections (apache2-utils' `ab`, `wrk`)
//! speaks HTTP, whose requests and parsing would dominate what is timed.
//! Two threads of this process, each of which joins its namespace with
//! `setns` (which moves only the calling thread) and pins itself to its CPU
//! before it opens a socket.
//!
//! The server closes first, as an HTTP/1.0 server does, so TIME_WAIT sits
//! on the server's side and the client never runs out of ephemeral ports
//! (28k of them would last about a second at these rates); the client
//! reads the server's FIN before it closes, so every connection ends with
//! the full FIN/ACK exchange.

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

const PORT: u16 = 11112;
/// How often the server's blocking accept wakes up to look for the end.
const ACCEPT_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CrrResult {
    pub connections: u64,
    pub connections_per_second: f64,
    /// Time of one whole connection (connect to close), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs the loop for `duration`: the server in `server_netns` on `ip`, the
/// client in `client_netns`, pinned to `cpus` = (client, server).
pub fn connection_rate(
    client_netns: &str,
    server_netns: &str,
    ip: &str,
    cpus: (u32, u32),
    duration: Duration,
) -> Result<CrrResult> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("server address {ip:?}"))?;
    let addr = SocketAddr::new(ip, PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let server = {
        let (netns, stop) = (server_netns.to_string(), stop.clone());
        thread::spawn(move || serve(&netns, cpus.1, addr, &stop, ready_tx))
    };
    let client = match ready_rx.recv() {
        Ok(Ok(())) => {
            let netns = client_netns.to_string();
            Some(thread::spawn(move || {
                run_client(&netns, cpus.0, addr, duration)
            }))
        }
        Ok(Err(e)) => return Err(e.context("starting the connection-rate server")),
        Err(_) => None,
    };
    let result = client.map(|c| c.join());
    stop.store(true, Ordering::Relaxed);
    let served = server.join();
    let times = match result {
        Some(Ok(r)) => r?,
        Some(Err(_)) => bail!("the connection-rate client panicked"),
        None => bail!("the connection-rate server ended before it listened"),
    };
    match served {
        Ok(r) => r?,
        Err(_) => bail!("the connection-rate server panicked"),
    }
    summarize(times, duration)
}

/// Medians and rate from each connection's duration in ns.
fn summarize(mut times: Vec<u32>, duration: Duration) -> Result<CrrResult> {
    if times.is_empty() {
        bail!("no connection completed");
    }
    times.sort_unstable();
    let at = |p: f64| f64::from(times[((times.len() - 1) as f64 * p).round() as usize]) / 1e3;
    let connections = times.len() as u64;
    Ok(CrrResult {
        connections,
        connections_per_second: connections as f64 / duration.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    })
}

/// Moves the calling thread into namespace `netns` (see [`crate::netns_path`]) and onto
/// `cpu`. Only this thread: `setns` and `sched_setaffinity(0, …)` act on
/// the caller, which is why every end gets a thread of its own.
pub fn enter(netns: &str, cpu: u32) -> Result<()> {
    let path = crate::netns_path(netns);
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain syscalls on a live fd and a zeroed, then filled, CPU set.
    unsafe {
        if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

fn serve(
    netns: &str,
    cpu: u32,
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let listener = match enter(netns, cpu).and_then(|()| listen(addr)) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            // The receive timeout: look at `stop` again.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("accept"),
        };
        // A connection the client gave up on is its problem, not the
        // server's: it counts only what completes.
        let _ = conn.set_nodelay(true);
        if conn.read_exact(&mut byte).is_ok() {
            let _ = conn.write_all(&byte);
        }
        // Dropping closes: the server's FIN goes first.
    }
    Ok(())
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: ACCEPT_TIMEOUT.as_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket and a live timeval of the size passed. Linux
    // honours SO_RCVTIMEO in accept(), so the loop can see `stop`.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO on the listener");
    }
    Ok(listener)
}

/// Connections back to back for `duration`; each one's time in ns.
fn run_client(netns: &str, cpu: u32, addr: SocketAddr, duration: Duration) -> Result<Vec<u32>> {
    enter(netns, cpu)?;
    let mut times = Vec::with_capacity(1 << 16);
    let mut failures = 0u32;
    let start = Instant::now();
    let mut buf = [0u8; 1];
    while start.elapsed() < duration {
        let t0 = Instant::now();
        match one_connection(addr, &mut buf) {
            Ok(()) => times.push(u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX)),
            Err(e) => {
                failures += 1;
                // A few failures are the noise of a busy machine; many are
                // a broken path, which must not pass as a low rate.
                if failures > 100 && failures as usize > times.len() {
                    return Err(e).with_context(|| format!("connecting to {addr}"));
                }
            }
        }
    }
    Ok(times)
}

fn one_connection(addr: SocketAddr, buf: &mut [u8; 1]) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    conn.set_nodelay(true)?;
    // A path that loses the response must end the loop, not hang it.
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.write_all(b"r")?;
    conn.read_exact(buf)?;
    // The server closes after its response: wait for its FIN (read of 0).
    if conn.read(buf)? != 0 {
        return Err(std::io::Error::other("more than one byte of response"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate() {
        let times: Vec<u32> = (1..=100).rev().map(|us| us * 1000).collect();
        let r = summarize(times, Duration::from_secs(2)).unwrap();
        assert_eq!(r.connections, 100);
        assert_eq!(r.connections_per_second, 50.0);
        assert_eq!(r.p50_us, 51.0);
        assert_eq!(r.p99_us, 99.0);
        assert!(summarize(Vec::new(), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = enter("vethctl-no-such-netns", 0).unwrap_err();
        assert!(format!("{err:#}").contains("/run/netns/vethctl-no-such-netns"));
    }
}
