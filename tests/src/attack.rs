//! Frames a pod is not supposed to send, crafted byte by byte and sent
//! from inside its namespace, and receivers that look for them.
//!
//! - [`frame`], [`ipv4_udp`], [`ipv6_udp`]: Ethernet frames with any VLAN
//!   tags, IPv4 or IPv6 headers with any fields, UDP with real checksums.
//! - [`PacketSocket`]: a raw AF_PACKET socket on a pod's interface;
//!   `send()` of a frame larger than a page leaves only the Ethernet header
//!   in the linear part of the skb.
//! - [`TxRing`]: an AF_PACKET `PACKET_TX_RING` (TPACKET_V2), which always
//!   puts only the Ethernet header in the linear part and the rest in page
//!   fragments of the ring.
//! - [`Capture`]: an AF_PACKET socket that sees every frame arriving on
//!   every interface of a namespace (VLAN tags the kernel took out of the
//!   frame included, from `PACKET_AUXDATA`).
//! - [`UdpSink`]: UDP sockets on a pod's addresses, what its stack accepted.
//!
//! Every socket is made on a thread that entered the namespace (`setns`),
//! so frames leave from and are seen in namespaces the test made.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use veth_userspace::netlink::netns;

use crate::{
    frames::{self, internet_checksum},
    run,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ tag some switches use.
pub const ETH_P_QINQ1: u16 = 0x9100;
/// IEEE 802 "local experimental" EtherType 1: nobody handles it.
pub const ETH_P_LOCAL_EXP: u16 = 0x88b5;
const ETH_P_ALL: u16 = 0x0003;
const IPPROTO_UDP: u8 = 17;

// ---------------------------------------------------------------------------
// Markers: a unique string in every crafted frame, to find it again.

/// A marker unique across tests and test processes: 16 ASCII bytes
/// (`VA`, the pid, a counter).
pub fn marker() -> Vec<u8> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("VA{:06x}{:08x}", std::process::id() & 0xff_ffff, n).into_bytes()
}

/// The marker followed by filler up to `len` bytes (at least the marker).
pub fn payload(marker: &[u8], len: usize) -> Vec<u8> {
    let mut p = marker.to_vec();
    while p.len() < len {
        p.push(b'a' + (p.len() % 26) as u8);
    }
    p
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Frames.

/// An Ethernet frame: `tags` are (TPID, VID) pairs, outermost first, then
/// `ethertype` and `payload`.
pub fn frame(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    // `with_vlan_tag` puts each new tag outermost: innermost first.
    tags.iter().rev().fold(
        frames::ethernet(dst, src, ethertype, payload),
        |f, &(tpid, vid)| frames::with_vlan_tag(&f, tpid, vid),
    )
}

/// `datagram` (a UDP datagram with checksum 0) with its checksum over
/// `pseudo_header` filled in.
fn with_udp_checksum(pseudo_header: &[u8], mut datagram: Vec<u8>) -> Vec<u8> {
    let mut check = internet_checksum(&[pseudo_header, &datagram]);
    if check == 0 {
        check = 0xffff;
    }
    datagram[6..8].copy_from_slice(&check.to_be_bytes());
    datagram
}

/// An IPv4 header's fields, with the usual values by default; [`Ipv4::udp`]
/// builds the packet.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Version and header length in 32-bit words (0x45 for a plain header).
    pub vihl: u8,
    /// None: the real total length.
    pub total_len: Option<u16>,
    pub ttl: u8,
    /// Options after the fixed header (a multiple of 4 bytes; `vihl`
    /// must count them: see [`Ipv4::with_options`]).
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            vihl: 0x45,
            total_len: None,
            ttl: 64,
            options: Vec::new(),
        }
    }

    /// This header with `options` (a multiple of 4 bytes, at most 40) and
    /// the IHL that counts them.
    pub fn with_options(self, options: &[u8]) -> Ipv4 {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IPv4 options"
        );
        Ipv4 {
            vihl: 0x40 | (5 + options.len() / 4) as u8,
            options: options.to_vec(),
            ..self
        }
    }

    /// The IPv4 packet (20-byte header and the options, whatever `vihl`
    /// says) carrying a UDP datagram with `payload`, both checksums right.
    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let udp = frames::udp(sport, dport, payload);
        let mut ip = vec![0u8; 20];
        ip.extend_from_slice(&self.options);
        ip[0] = self.vihl;
        let total_len = self.total_len.unwrap_or((ip.len() + udp.len()) as u16);
        ip[2..4].copy_from_slice(&total_len.to_be_bytes());
        ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = self.ttl;
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let check = internet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let pseudo = self.udp_pseudo_header(udp.len());
        [&ip[..], &with_udp_checksum(&pseudo, udp)].concat()
    }

    /// Like [`Ipv4::udp`], with the UDP checksum left as a GSO sender
    /// hands it to the kernel (`CHECKSUM_PARTIAL`): the pseudo-header sum
    /// only, which the kernel completes per segment.
    pub fn udp_partial(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut packet = self.udp(sport, dport, payload);
        let at = packet.len() - payload.len() - 8;
        let udp_len = packet.len() - at;
        let partial = !internet_checksum(&[&self.udp_pseudo_header(udp_len)]);
        packet[at + 6..at + 8].copy_from_slice(&partial.to_be_bytes());
        packet
    }

    fn udp_pseudo_header(&self, udp_len: usize) -> [u8; 12] {
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&self.src.octets());
        pseudo[4..8].copy_from_slice(&self.dst.octets());
        pseudo[9] = IPPROTO_UDP;
        pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
        pseudo
    }
}

/// IPv6 next header: ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 next header: Fragment.
pub const NEXTHDR_FRAGMENT: u8 = 44;

/// An IPv6 atomic fragment header (offset 0, no more fragments, RFC 6946)
/// before `next`: a host's bridge defragmenter strips it.
pub fn atomic_fragment_header(next: u8) -> [u8; 8] {
    [next, 0, 0, 0, 0x5e, 0xed, 0x00, 0x01]
}

/// An IPv6 packet carrying the ICMPv6 `message` (its checksum filled in)
/// behind the raw `extension` headers; `first_next` names the first of
/// them (ICMPv6 when there are none). Hop limit 255, as neighbour
/// discovery requires.
pub fn ipv6_icmp(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    extension: &[u8],
    first_next: u8,
    message: &[u8],
) -> Vec<u8> {
    let mut message = message.to_vec();
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(&src.octets());
    pseudo[16..32].copy_from_slice(&dst.octets());
    pseudo[32..36].copy_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo[39] = IPPROTO_ICMPV6;
    message[2..4].fill(0);
    let check = internet_checksum(&[&pseudo, &message]);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    frames::ipv6(src, dst, 255, first_next, &[extension, &message].concat())
}

/// A neighbour discovery option of experimental type 253 (RFC 4727)
/// carrying `marker`, padded to a multiple of 8 bytes: receivers ignore
/// it, captures find the frame by it.
pub fn nd_marker_option(marker: &[u8]) -> Vec<u8> {
    let units = (2 + marker.len()).div_ceil(8);
    let mut option = vec![253, units as u8];
    option.extend_from_slice(marker);
    option.resize(units * 8, 0);
    option
}

/// `struct virtio_net_hdr` (native byte order) for an IPv4 UDP packet
/// the kernel is to cut into segments of `gso_size` bytes of payload
/// (`VIRTIO_NET_HDR_GSO_UDP_L4`), completing the UDP checksum of each.
pub fn vnet_udp4_gso(gso_size: u16) -> [u8; 10] {
    const F_NEEDS_CSUM: u8 = 1;
    const GSO_UDP_L4: u8 = 5;
    let csum_start: u16 = 14 + 20;
    let mut hdr = [0u8; 10];
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = GSO_UDP_L4;
    hdr[2..4].copy_from_slice(&(csum_start + 8).to_ne_bytes());
    hdr[4..6].copy_from_slice(&gso_size.to_ne_bytes());
    hdr[6..8].copy_from_slice(&csum_start.to_ne_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_ne_bytes());
    hdr
}

/// A well-formed IPv4 UDP packet.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    Ipv4::new(src, dst).udp(40000, dport, payload)
}

/// An IPv6 UDP packet, both checksums right; `payload_len` None: the real
/// payload length.
pub fn ipv6_udp_with(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dport: u16,
    payload: &[u8],
    payload_len: Option<u16>,
) -> Vec<u8> {
    let udp = frames::udp(40000, dport, payload);
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(&src.octets());
    pseudo[16..32].copy_from_slice(&dst.octets());
    pseudo[32..36].copy_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo[39] = IPPROTO_UDP;
    let mut packet = frames::ipv6(src, dst, 64, IPPROTO_UDP, &with_udp_checksum(&pseudo, udp));
    if let Some(len) = payload_len {
        packet[4..6].copy_from_slice(&len.to_be_bytes());
    }
    packet
}

/// A well-formed IPv6 UDP packet.
pub fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    ipv6_udp_with(src, dst, dport, payload, None)
}

/// An ARP request (`oper` 1) for `tpa`: hardware type Ethernet, protocol
/// IPv4, and the given hardware address length (6 for a well-formed one).
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, hlen: u8) -> Vec<u8> {
    let mut p = frames::arp(frames::ARP_REQUEST, sha, spa, [0; 6], tpa);
    p[4] = hlen;
    p
}

/// The EtherType for an IP packet of `ip`'s family.
pub fn ethertype_of(ip: IpAddr) -> u16 {
    match ip {
        IpAddr::V4(_) => ETH_P_IP,
        IpAddr::V6(_) => ETH_P_IPV6,
    }
}

// ---------------------------------------------------------------------------
// Sending.

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(&format!("setsockopt({level}, {name})")))
    }
}

fn ifindex(ifname: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(ifname).expect("interface name without NUL");
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(last_error(&format!("if_nametoindex({ifname})")))
    } else {
        Ok(index as i32)
    }
}

/// An AF_PACKET raw socket (protocol 0: it receives nothing) bound to
/// `ifname`; the caller is on a thread inside the interface's namespace.
fn bound_packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain socket call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_error("socket(AF_PACKET)"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut addr: libc::sockaddr_ll = unsafe { MaybeUninit::zeroed().assume_init() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex(ifname)?;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_error(&format!("bind(AF_PACKET, {ifname})")));
    }
    Ok(fd)
}

/// Makes a socket on a thread inside `netns`; the socket keeps that
/// namespace when used from any thread.
fn socket_in<T: Send + 'static>(
    netns: &str,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> T {
    let label = netns.to_string();
    netns::on_thread(netns, move || make().map_err(anyhow::Error::from))
        .unwrap_or_else(|e| panic!("entering {label}: {e:#}"))
        .join()
        .expect("namespace thread")
        .unwrap_or_else(|e| panic!("socket in {netns}: {e:#}"))
}

/// A raw AF_PACKET socket on an interface inside a namespace: `send()`
/// puts a frame on the wire as it is.
pub struct PacketSocket {
    fd: OwnedFd,
    what: String,
}

impl PacketSocket {
    pub fn open(netns: &str, ifname: &str) -> PacketSocket {
        let name = ifname.to_string();
        let fd = socket_in(netns, move || bound_packet_socket(&name));
        PacketSocket {
            fd,
            what: format!("{ifname} in {netns}"),
        }
    }

    /// Like [`PacketSocket::open`], with `SO_MARK` set: every frame sent
    /// carries `mark` in its skb (see [`VlanPush`]).
    pub fn open_marked(netns: &str, ifname: &str, mark: u32) -> PacketSocket {
        let socket = PacketSocket::open(netns, ifname);
        setsockopt(
            socket.fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark,
        )
        .unwrap_or_else(|e| panic!("SO_MARK on {}: {e}", socket.what));
        socket
    }

    /// Like [`PacketSocket::open`], with `PACKET_VNET_HDR`: every frame sent
    /// starts with a `struct virtio_net_hdr` (see [`vnet_udp4_gso`]), which
    /// can make it a GSO packet with segments of any size. Needs only
    /// CAP_NET_RAW, a default container capability.
    pub fn open_vnet(netns: &str, ifname: &str) -> PacketSocket {
        const PACKET_VNET_HDR: libc::c_int = 15;
        let socket = PacketSocket::open(netns, ifname);
        setsockopt(
            socket.fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            &1i32,
        )
        .unwrap_or_else(|e| panic!("PACKET_VNET_HDR on {}: {e}", socket.what));
        socket
    }

    /// Sends `frame` (an skb with only the Ethernet header linear when the
    /// frame is larger than a page).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a live buffer of the length passed.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send of {} bytes on {}: {}",
            frame.len(),
            self.what,
            io::Error::last_os_error()
        );
    }
}

/// An AF_PACKET socket with a `PACKET_TX_RING` (TPACKET_V2) on an
/// interface inside a namespace. The kernel builds each frame's skb with
/// only the link-layer header (14 bytes) in the linear part; everything
/// after it stays in the ring's pages, as fragments.
pub struct TxRing {
    fd: OwnedFd,
    ring: *mut u8,
    frame_size: usize,
    frames: usize,
    next: usize,
    what: String,
}

const RING_FRAME_SIZE: usize = 16384;
const RING_FRAMES: usize = 8;

impl TxRing {
    pub fn open(netns: &str, ifname: &str) -> TxRing {
        let name = ifname.to_string();
        let fd = socket_in(netns, move || {
            // SAFETY: plain socket call.
            let raw =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(last_error("socket(AF_PACKET)"));
            }
            // SAFETY: a fresh fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
            setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VERSION,
                &version,
            )?;
            let req = libc::tpacket_req {
                tp_block_size: RING_FRAME_SIZE as u32,
                tp_block_nr: RING_FRAMES as u32,
                tp_frame_size: RING_FRAME_SIZE as u32,
                tp_frame_nr: RING_FRAMES as u32,
            };
            setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_TX_RING, &req)?;
            let mut addr: libc::sockaddr_ll = unsafe { MaybeUninit::zeroed().assume_init() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex(&name)?;
            // SAFETY: a valid sockaddr_ll of the size passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(last_error(&format!("bind(AF_PACKET, {name})")));
            }
            Ok(fd)
        });
        let len = RING_FRAME_SIZE * RING_FRAMES;
        // SAFETY: maps the ring the kernel set up for this socket.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ring,
            libc::MAP_FAILED,
            "mmap of the TX ring: {}",
            io::Error::last_os_error()
        );
        TxRing {
            fd,
            ring: ring.cast(),
            frame_size: RING_FRAME_SIZE,
            frames: RING_FRAMES,
            next: 0,
            what: format!("TX ring on {ifname} in {netns}"),
        }
    }

    /// Queues `frame` in the next slot of the ring and has the kernel send
    /// it; returns once the kernel handed the slot back.
    pub fn send(&mut self, frame: &[u8]) {
        // Data starts where the kernel expects it without PACKET_TX_HAS_OFF:
        // TPACKET2_HDRLEN - sizeof(sockaddr_ll), the aligned header.
        let data_offset = libc::TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>();
        assert!(
            frame.len() + data_offset <= self.frame_size,
            "frame too big"
        );
        // SAFETY: slot `next` lies inside the mapping; the kernel only
        // touches a slot whose status is SEND_REQUEST, and the status word
        // is accessed with volatile reads and writes.
        unsafe {
            let slot = self.ring.add(self.next * self.frame_size);
            let hdr = slot.cast::<libc::tpacket2_hdr>();
            let status = &raw mut (*hdr).tp_status;
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::ptr::read_volatile(status) != libc::TP_STATUS_AVAILABLE {
                assert!(Instant::now() < deadline, "{}: slot never freed", self.what);
                std::thread::sleep(Duration::from_millis(1));
            }
            std::ptr::copy_nonoverlapping(frame.as_ptr(), slot.add(data_offset), frame.len());
            (*hdr).tp_len = frame.len() as u32;
            std::sync::atomic::fence(Ordering::SeqCst);
            std::ptr::write_volatile(status, libc::TP_STATUS_SEND_REQUEST);
            // Blocking: returns once the ring is drained.
            let n = libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, 0);
            assert!(
                n >= 0,
                "{}: send: {}",
                self.what,
                io::Error::last_os_error()
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let s = std::ptr::read_volatile(status);
                if s == libc::TP_STATUS_AVAILABLE {
                    break;
                }
                assert!(
                    s & libc::TP_STATUS_WRONG_FORMAT == 0,
                    "{}: the kernel refused the frame (TP_STATUS_WRONG_FORMAT)",
                    self.what
                );
                assert!(
                    Instant::now() < deadline,
                    "{}: frame not sent (status {s:#x})",
                    self.what
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.next = (self.next + 1) % self.frames;
    }
}

impl Drop for TxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`.
        unsafe {
            libc::munmap(self.ring.cast(), self.frame_size * self.frames);
        }
    }
}

// ---------------------------------------------------------------------------
// Receiving.

/// A frame that arrived on an interface of a captured namespace.
#[derive(Clone, Debug)]
pub struct Captured {
    pub ifname: String,
    /// The VLAN TCI the kernel took out of the frame, if any.
    pub vlan_tci: Option<u16>,
    /// The frame as the interface received it (without an out-of-band tag),
    /// cut to its first 512 bytes.
    pub frame: Vec<u8>,
    pub len: usize,
}

impl Captured {
    /// The frame is VLAN tagged: out of band, or with a tag in its data.
    pub fn tagged(&self) -> bool {
        let ethertype = self
            .frame
            .get(12..14)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        self.vlan_tci.is_some()
            || matches!(ethertype, Some(ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1))
    }

    /// The destination address of an untagged IPv4 or IPv6 frame.
    pub fn ip_dst(&self) -> Option<IpAddr> {
        let f = &self.frame;
        match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
            ETH_P_IP => {
                let o: [u8; 4] = f.get(30..34)?.try_into().ok()?;
                Some(IpAddr::V4(o.into()))
            }
            ETH_P_IPV6 => {
                let o: [u8; 16] = f.get(38..54)?.try_into().ok()?;
                Some(IpAddr::V6(o.into()))
            }
            _ => None,
        }
    }

    /// Whether the (kept part of the) frame contains `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        contains(&self.frame, needle)
    }

    /// One line for messages.
    pub fn describe(&self) -> String {
        let head: String = self
            .frame
            .iter()
            .take(48)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{} bytes on {}{} [{head}..]",
            self.len,
            self.ifname,
            self.vlan_tci
                .map(|t| format!(" with VLAN tag {} out of band", t & 0x0fff))
                .unwrap_or_default()
        )
    }
}

/// Everything arriving on every interface (but `lo`) of a namespace, seen
/// by an AF_PACKET socket; frames the namespace sends itself are left out.
/// Stops when dropped.
pub struct Capture {
    seen: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    netns: String,
}

impl Capture {
    /// Starts capturing in `netns`; returns once the socket is open.
    pub fn start(netns: &str) -> Capture {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = netns::on_thread(netns, move || {
            let fd = capture_socket()?;
            ready_tx.send(()).ok();
            let mut buf = vec![0u8; 70_000];
            while !stop2.load(Ordering::Relaxed) {
                let Some(got) = receive(fd.as_raw_fd(), &mut buf)? else {
                    continue;
                };
                if got.pkttype == libc::PACKET_OUTGOING || got.ifname == "lo" {
                    continue;
                }
                let keep = got.len.min(buf.len()).min(512);
                seen2.lock().unwrap().push(Captured {
                    ifname: got.ifname,
                    vlan_tci: got.vlan_tci,
                    frame: buf[..keep].to_vec(),
                    len: got.len,
                });
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("capture in {netns}: {e:#}"));
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            let result = thread.join();
            panic!("capture in {netns} did not start: {result:?}");
        }
        Capture {
            seen,
            stop,
            thread: Some(thread),
            netns: netns.to_string(),
        }
    }

    /// Frames seen so far that contain `needle`.
    pub fn containing(&self, needle: &[u8]) -> Vec<Captured> {
        self.matching(|c| c.contains(needle))
    }

    /// Frames seen so far for which `f` holds.
    pub fn matching(&self, f: impl Fn(&Captured) -> bool) -> Vec<Captured> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| f(c))
            .cloned()
            .collect()
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("capture in {}: {e:#}", self.netns),
                    Err(_) => panic!("capture thread in {} panicked", self.netns),
                }
            }
        }
    }
}

fn capture_socket() -> io::Result<OwnedFd> {
    let proto = i32::from(ETH_P_ALL.to_be());
    // SAFETY: plain socket call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        return Err(last_error("socket(AF_PACKET, ETH_P_ALL)"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)?;
    let rcvbuf: libc::c_int = 8 << 20;
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &rcvbuf,
    )?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeout,
    )?;
    Ok(fd)
}

struct Received {
    ifname: String,
    pkttype: u8,
    vlan_tci: Option<u16>,
    len: usize,
}

/// One frame from a capture socket; None on timeout.
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let mut addr: libc::sockaddr_ll = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 32];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: every pointer in `msg` refers to a live buffer of its length.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(None)
            }
            _ => Err(e),
        };
    }
    let mut vlan_tci = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    vlan_tci = Some(aux.tp_vlan_tci);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes.
    let ifname = unsafe {
        if libc::if_indextoname(addr.sll_ifindex as u32, name.as_mut_ptr()).is_null() {
            format!("if{}", addr.sll_ifindex)
        } else {
            std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned()
        }
    };
    Ok(Some(Received {
        ifname,
        pkttype: addr.sll_pkttype,
        vlan_tci,
        len: n as usize,
    }))
}

/// A datagram a [`UdpSink`] received.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// UDP sockets on `port` of the given addresses inside a namespace: what
/// its IP stack accepted and delivered. Stops when dropped.
pub struct UdpSink {
    seen: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl UdpSink {
    pub fn start(netns: &str, addrs: &[IpAddr], port: u16) -> UdpSink {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &ip in addrs {
            let (seen, stop) = (seen.clone(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = netns::on_thread(netns, move || {
                let socket = UdpSocket::bind(SocketAddr::new(ip, port))?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                ready_tx.send(()).ok();
                let mut buf = vec![0u8; 70_000];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => seen.lock().unwrap().push(Datagram {
                            from,
                            data: buf[..n.min(256)].to_vec(),
                        }),
                        // A signal meant for another thread of the test
                        // (EINTR) is a retry, like the timeout.
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("UDP sink in {netns}: {e:#}"));
            if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                let result = thread.join();
                panic!("UDP sink on {ip}:{port} in {netns} did not start: {result:?}");
            }
            threads.push(thread);
        }
        UdpSink {
            seen,
            stop,
            threads,
        }
    }

    /// Datagrams received so far that contain `needle`.
    pub fn containing(&self, needle: &[u8]) -> Vec<Datagram> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|d| contains(&d.data, needle))
            .cloned()
            .collect()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let result = thread.join();
            if !std::thread::panicking() {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("UDP sink: {e:#}"),
                    Err(_) => panic!("UDP sink thread panicked"),
                }
            }
        }
    }
}

/// A UDP socket made in `netns` for sending to addresses of `dst`'s
/// family (the namespace's own stack picks the source).
pub fn udp_socket(netns: &str, dst: IpAddr) -> UdpSocket {
    socket_in(netns, move || {
        let any: IpAddr = match dst {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        UdpSocket::bind(SocketAddr::new(any, 0))
    })
}

/// Sends one UDP datagram with `payload` from a socket in `netns` to
/// `dst:port`.
pub fn udp_send(netns: &str, dst: IpAddr, port: u16, payload: &[u8]) {
    udp_socket(netns, dst)
        .send_to(payload, SocketAddr::new(dst, port))
        .unwrap_or_else(|e| panic!("UDP from {netns} to {dst}:{port}: {e}"));
}

// ---------------------------------------------------------------------------
// VLAN tags out of band.

/// Creates a VLAN device `<ifname>.<vid>` on `ifname` inside `netns`,
/// without IPv6 (so it sends nothing of its own), up. False if the kernel
/// has no 802.1Q support (`CONFIG_VLAN_8021Q` unset: "Unknown device
/// type"); any other failure panics.
pub fn add_vlan_device(netns: &str, ifname: &str, vid: u16) -> bool {
    let name = format!("{ifname}.{vid}");
    let out = Command::new("ip")
        .args(["-n", netns, "link", "add", "link", ifname, "name", &name])
        .args(["type", "vlan", "id", &vid.to_string()])
        .output()
        .expect("running ip");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Unknown device type") || stderr.contains("not supported"),
            "creating {name} in {netns}: {stderr}"
        );
        return false;
    }
    let key = format!("net.ipv6.conf.{ifname}/{vid}.disable_ipv6=1");
    run("ip", &["netns", "exec", netns, "sysctl", "-qw", &key]);
    run("ip", &["-n", netns, "link", "set", &name, "up"]);
    true
}

/// A TCX egress program on an interface inside a namespace that gives
/// every frame marked `mark` (`SO_MARK` of the sending socket) a VLAN tag
/// out of band (`bpf_skb_vlan_push`, which sets the skb's tag as a VLAN
/// device on a veth does: the veth offloads tag insertion, so the tag
/// travels in the skb, not in the frame). For kernels without 802.1Q
/// devices. Detached when dropped.
pub struct VlanPush {
    _link: OwnedFd,
    _prog: OwnedFd,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
const TCX_NEXT: i32 = -1;

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// One BPF instruction: opcode, registers (dst low nibble, src high), offset,
/// immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (src << 4) | (dst & 0x0f);
    u64::from(code)
        | (u64::from(regs) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<OwnedFd> {
    // SAFETY: `attr` points to a live attribute struct of `size` bytes.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl VlanPush {
    pub fn attach(netns: &str, ifname: &str, tpid: u16, vid: u16, mark: u32) -> VlanPush {
        // r2 = skb->mark; if r2 != mark goto out; r2 = tpid (network
        // order); r3 = vid; call bpf_skb_vlan_push; out: r0 = TCX_NEXT; exit
        let program: Vec<u64> = vec![
            insn(0x61, 2, 1, 8, 0),           // ldxw r2, [r1 + 8] (__sk_buff.mark)
            insn(0x55, 2, 0, 3, mark as i32), // jne r2, mark, +3
            insn(0xb7, 2, 0, 0, i32::from(tpid.to_be())), // mov r2, tpid
            insn(0xb7, 3, 0, 0, i32::from(vid)), // mov r3, vid
            insn(0x85, 0, 0, 0, BPF_FUNC_SKB_VLAN_PUSH), // call
            insn(0xb7, 0, 0, 0, TCX_NEXT),    // mov r0, TCX_NEXT
            insn(0x95, 0, 0, 0, 0),           // exit
        ];
        let license = c"GPL";
        let mut log = vec![0u8; 65536];
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
        };
        let prog = bpf(
            BPF_PROG_LOAD,
            (&attr as *const ProgLoadAttr).cast(),
            size_of::<ProgLoadAttr>(),
        )
        .unwrap_or_else(|e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            panic!(
                "loading the VLAN push program: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        });
        let prog_fd = prog.as_raw_fd() as u32;
        let name = ifname.to_string();
        // The ifindex is looked up in the namespace of the calling thread.
        let link = socket_in(netns, move || {
            let attr = LinkCreateAttr {
                prog_fd,
                target_ifindex: ifindex(&name)? as u32,
                attach_type: BPF_TCX_EGRESS,
                flags: 0,
                relative_fd: 0,
                _pad: 0,
                expected_revision: 0,
            };
            bpf(
                BPF_LINK_CREATE,
                (&attr as *const LinkCreateAttr).cast(),
                size_of::<LinkCreateAttr>(),
            )
            .map_err(|e| io::Error::new(e.kind(), format!("TCX egress on {name}: {e}")))
        });
        VlanPush {
            _link: link,
            _prog: prog,
        }
    }
}

// ---------------------------------------------------------------------------
// Objects a test makes around a topology.

/// A network namespace of the test's own (`ip netns add`), deleted with
/// everything in it when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(prefix: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{:05x}{n:02x}", std::process::id() & 0xfffff);
        run("ip", &["netns", "add", &name]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A link in the host namespace that the test made, deleted when dropped
/// (a no-op if it went with its namespace already).
pub struct HostLink {
    pub name: String,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// `unreachable` routes in the host for a topology's address blocks, with a
/// metric worse than any route vethctl makes: while a pod's own /32 route
/// exists it wins, and once it is gone (its veth deleted) packets to the
/// pod's address end at this route, never at the host's default route.
/// Removed when dropped.
pub struct UnreachableRoutes {
    routes: Vec<(String, String)>,
}

pub const UNREACHABLE_METRIC: &str = "4242";

impl UnreachableRoutes {
    pub fn add(cidrs: &[String]) -> UnreachableRoutes {
        let mut routes = Vec::new();
        for cidr in cidrs {
            let family = if cidr.contains(':') { "-6" } else { "-4" };
            run(
                "ip",
                &[
                    family,
                    "route",
                    "add",
                    "unreachable",
                    cidr,
                    "metric",
                    UNREACHABLE_METRIC,
                ],
            );
            routes.push((family.to_string(), cidr.clone()));
        }
        UnreachableRoutes { routes }
    }
}

impl Drop for UnreachableRoutes {
    fn drop(&mut self) {
        for (family, cidr) in &self.routes {
            let _ = Command::new("ip")
                .args([
                    family.as_str(),
                    "route",
                    "del",
                    "unreachable",
                    cidr,
                    "metric",
                    UNREACHABLE_METRIC,
                ])
                .output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_packets() {
        // RFC 1071's example words.
        let words = [0x00u8, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&words]), !0xddf2);
        // A header whose checksum is right sums to zero.
        let ip = Ipv4::new(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3))
            .udp(1, 2, b"hello");
        assert_eq!(internet_checksum(&[&ip[..20]]), 0);
        let v6 = ipv6_udp(
            "fd00::2".parse().unwrap(),
            "fd00::3".parse().unwrap(),
            9,
            b"odd",
        );
        assert_eq!(v6.len(), 40 + 8 + 3);
        assert_eq!(u16::from_be_bytes([v6[4], v6[5]]), 11);
    }

    #[test]
    fn frames_carry_tags_in_order() {
        let f = frame(
            [1; 6],
            [2; 6],
            &[(ETH_P_8021AD, 5), (ETH_P_8021Q, 0)],
            ETH_P_IP,
            b"x",
        );
        assert_eq!(
            &f[12..23],
            &[0x88, 0xa8, 0, 5, 0x81, 0, 0, 0, 0x08, 0x00, b'x']
        );
    }
}
