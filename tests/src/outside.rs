//! "The outside" for tests: a namespace beyond the node, joined to the host
//! by a veth playing the uplink, with no route back to the pods — an answer
//! only arrives if the node masqueraded the pod's traffic.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use veth_userspace::netlink::netns;

use crate::{run, AddressBlock};

/// A namespace beyond the node, removed on drop.
pub struct Outside {
    pub netns: String,
    pub host_veth: String,
    pub host4: String,
    pub addr4: String,
    pub host6: String,
    pub addr6: String,
}

impl Outside {
    pub fn new(name: &str, block: &AddressBlock) -> Outside {
        let base = block.cidr.trim_end_matches(".0/24");
        let third: u32 = base.rsplit('.').next().unwrap().parse().unwrap();
        let outside = Outside {
            netns: format!("o{name}"),
            host_veth: format!("o{name}"),
            host4: format!("{base}.1"),
            addr4: format!("{base}.2"),
            host6: format!("fd00:2:{third:x}::1"),
            addr6: format!("fd00:2:{third:x}::2"),
        };
        let ip = |args: &[&str]| run("ip", args);
        ip(&["netns", "add", &outside.netns]);
        ip(&[
            "link",
            "add",
            &outside.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &outside.netns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", outside.host4),
            "dev",
            &outside.host_veth,
        ]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", outside.host6),
            "dev",
            &outside.host_veth,
            "nodad",
        ]);
        ip(&["link", "set", &outside.host_veth, "up"]);
        ip(&[
            "-n",
            &outside.netns,
            "addr",
            "add",
            &format!("{}/24", outside.addr4),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &outside.netns,
            "-6",
            "addr",
            "add",
            &format!("{}/64", outside.addr6),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &outside.netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &outside.netns, "link", "set", "lo", "up"]);
        outside
    }

    /// Connects from `pod_netns` to a TCP listener here; returns the peer
    /// address the outside saw and the echo of the bytes it got.
    pub fn connect_from(&self, pod_netns: &str, addr: &str) -> (IpAddr, Vec<u8>) {
        let target = SocketAddr::new(addr.parse::<IpAddr>().expect("an address"), 7000);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = netns::on_thread(&self.netns, move || {
            let listener = TcpListener::bind(target)?;
            ready_tx.send(()).ok();
            let (mut conn, peer) = listener.accept()?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf)?;
            conn.write_all(&buf)?;
            Ok(peer.ip())
        })
        .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listening");
        let client = netns::on_thread(pod_netns, move || {
            let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.write_all(b"hello")?;
            let mut echo = vec![0u8; 5];
            conn.read_exact(&mut echo)?;
            Ok(echo)
        })
        .unwrap();
        let echo = client.join().unwrap().expect("pod connects to the outside");
        let peer = server.join().unwrap().expect("outside accepts");
        (peer, echo)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}
