//! Can a pod reach its neighbour? A UDP echo server in a long-lived pod,
//! and a probe from a new pod's namespace: an answer proves both
//! directions through the dataplane (the new pod's frames mapped and
//! forwarded, and frames to it delivered).

use std::{
    fs::File,
    io::ErrorKind,
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

/// Moves the calling thread (only it) into the namespace bound at `path`.
fn enter(path: &Path) -> Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a plain syscall on a live fd, on a thread of our own.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering {}", path.display()));
    }
    Ok(())
}

/// Echoes every datagram back to its sender until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(netns: &Path, addr: SocketAddrV4) -> Result<EchoServer> {
        let netns = netns.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let socket = enter(&netns).and_then(|()| {
                let s = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(s)
            });
            let socket = match socket {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        rx.recv()
            .context("the echo server ended before it listened")??;
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Tries before a pod counts as cut off, each waiting this long for the
/// echo: ~3 s in all, time for the first ARP and a busy machine.
const TRIES: u32 = 10;
const WAIT: Duration = Duration::from_millis(300);

/// Whether a datagram from the pod at `netns` to `server` is echoed.
pub fn reaches(netns: &Path, server: SocketAddrV4, token: u64) -> Result<bool> {
    let netns: PathBuf = netns.to_path_buf();
    thread::spawn(move || -> Result<bool> {
        enter(&netns)?;
        let socket = UdpSocket::bind("0.0.0.0:0").context("binding the probe")?;
        socket.set_read_timeout(Some(WAIT))?;
        let mut buf = [0u8; 64];
        for _ in 0..TRIES {
            // A send error (no route yet) counts as an unanswered try.
            if socket.send_to(&token.to_be_bytes(), server).is_err() {
                thread::sleep(WAIT);
                continue;
            }
            loop {
                match socket.recv(&mut buf) {
                    Ok(8) if buf[..8] == token.to_be_bytes() => return Ok(true),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        Ok(false)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}
