//! Work inside a runtime's network namespace, known by path
//! (`/var/run/netns/cni-…` from containerd, `/run/netns/netns-…` from
//! podman): commands through `nsenter`, sockets from a thread that entered
//! the namespace, and a TCP/UDP echo server and checks.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Runs `f` on a new thread that entered the network namespace at `netns`;
/// sockets made there stay in that namespace wherever they are used.
pub fn on_netns_path<T, F>(netns: &Path, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let file = std::fs::File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    let label = netns.to_path_buf();
    std::thread::Builder::new()
        .name("netns-path".into())
        .spawn(move || {
            // SAFETY: setns on a valid fd changes only this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                bail!("entering network namespace {}: {e}", label.display());
            }
            f()
        })
        .context("spawning a namespace thread")
}

/// Runs `f` in the network namespace at `netns` and waits for its result.
pub fn in_netns<T, F>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    on_netns_path(netns, f)?
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
}

/// `nsenter --net=NETNS PROGRAM ARGS…` (the program runs in that network
/// namespace, everything else is the host's).
pub fn exec_in(netns: &Path, program: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .args(args)
        .output()
        .expect("running nsenter (util-linux)")
}

/// Pings `dst` from the namespace at `netns`; returns the replies counted.
pub fn ping_in(netns: &Path, dst: IpAddr, count: u32) -> u32 {
    let count = count.to_string();
    let dst = dst.to_string();
    let out = exec_in(
        netns,
        "ping",
        &["-n", "-q", "-c", &count, "-i", "0.05", "-W", "1", &dst],
    );
    crate::pings_received(&out.stdout)
}

/// Waits (up to 10 s) for a first ping from `netns` to `dst` to be
/// answered, then expects `count` more, all answered.
pub fn expect_ping(netns: &Path, dst: IpAddr, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ping_in(netns, dst, 1) != 1 {
        assert!(
            Instant::now() < deadline,
            "no ping from {} to {dst} answered within 10 s",
            netns.display()
        );
    }
    assert_eq!(
        ping_in(netns, dst, count),
        count,
        "{count} pings from {} to {dst}",
        netns.display()
    );
}

/// A TCP and UDP echo server on one port of every address of a network
/// namespace (`netns` = `None`: the host's). Stops when dropped.
pub struct EchoServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl EchoServer {
    /// Listens on `0.0.0.0:port` (TCP and UDP; port 0: one the kernel
    /// picks, in [`Self::port`]) in the namespace at `netns` and returns
    /// once both sockets are bound.
    pub fn start(netns: Option<&Path>, port: u16) -> Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        // Port 0: the kernel picks a TCP port and UDP takes the same one.
        let bind = move || -> Result<(TcpListener, UdpSocket)> {
            let tcp = TcpListener::bind(addr)?;
            let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], tcp.local_addr()?.port())))?;
            Ok((tcp, udp))
        };
        let (tcp, udp) = match netns {
            Some(ns) => in_netns(ns, bind)?,
            None => bind()?,
        };
        let port = tcp.local_addr()?.port();
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let tcp_stop = stop.clone();
        let tcp_thread = std::thread::spawn(move || serve_tcp(tcp, &tcp_stop));
        let udp_stop = stop.clone();
        let udp_thread = std::thread::spawn(move || serve_udp(udp, &udp_stop));
        Ok(EchoServer {
            port,
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

fn serve_tcp(listener: TcpListener, stop: &AtomicBool) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn serve_udp(socket: UdpSocket, stop: &AtomicBool) -> Result<()> {
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                socket.send_to(&buf[..n], peer)?;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects over TCP from the namespace at `client` (`None`: the host) to
/// `dst`, sends a message and expects it echoed back.
pub fn tcp_echo(client: Option<&Path>, dst: SocketAddr) -> Result<()> {
    let exchange = move || -> Result<()> {
        let mut conn = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .with_context(|| format!("connecting to {dst}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let msg = format!("vethctl echo over tcp to {dst}");
        conn.write_all(msg.as_bytes())?;
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back)
            .with_context(|| format!("reading the echo from {dst}"))?;
        if back != msg.as_bytes() {
            bail!("{dst} echoed {:?}", String::from_utf8_lossy(&back));
        }
        Ok(())
    };
    match client {
        Some(ns) => in_netns(ns, exchange),
        None => exchange(),
    }
}

/// Sends a UDP datagram from the namespace at `client` (`None`: the host)
/// to `dst` and expects it echoed back (three tries, 1 s each).
pub fn udp_echo(client: Option<&Path>, dst: SocketAddr) -> Result<()> {
    let exchange = move || -> Result<()> {
        let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        socket.connect(dst)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let msg = format!("vethctl echo over udp to {dst}");
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            socket.send(msg.as_bytes())?;
            if let Ok(n) = socket.recv(&mut buf) {
                if &buf[..n] == msg.as_bytes() {
                    return Ok(());
                }
                bail!("{dst} echoed {:?}", String::from_utf8_lossy(&buf[..n]));
            }
        }
        bail!("no UDP echo from {dst} in 3 tries")
    };
    match client {
        Some(ns) => in_netns(ns, exchange),
        None => exchange(),
    }
}

/// Whether a network namespace is still mounted at `path` (a runtime's
/// namespace file that was unmounted but not removed does not count).
pub fn netns_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy();
    // /var/run is a symlink to /run: mountinfo shows resolved paths.
    let resolved: PathBuf = std::fs::canonicalize(path.parent().unwrap_or(path))
        .map(|p| p.join(path.file_name().unwrap_or_default()))
        .unwrap_or_else(|_| path.to_path_buf());
    let resolved = resolved.to_string_lossy();
    mounts.lines().any(|l| {
        let mount_point = l.split(' ').nth(4).unwrap_or("");
        mount_point == wanted || mount_point == resolved
    })
}

/// A free TCP port on the host right now (for a hostPort): the kernel
/// picks it; nothing keeps it, so use it soon.
pub fn free_host_port() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}
