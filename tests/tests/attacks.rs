//! What a hostile pod can send, and what must come of it: frames whose
//! headers are not in the linear part of the skb (an AF_PACKET TX ring, a
//! large `send()`), VLAN tags in the frame and out of band, malformed IPv4
//! and IPv6 headers and unknown EtherTypes, neighbour discovery behind a
//! Fragment header, other pods' link-local and `::` sources, IPv4 source
//! routes and GSO segments over the MTU, in every mode the programs run
//! (tc, xdp, routed, bridge); a stale endpoint whose ifindex an unrelated
//! veth took over; and two trace sessions at once.
//!
//! Every check is made at the receiver: an AF_PACKET capture on every
//! interface of pod b's namespace and UDP sockets on b's addresses look for
//! a marker unique to each frame, and the counters of `vethctl stats
//! --json` must name the drop reason. Frames are crafted byte by byte and
//! sent from sockets made inside pod a's namespace (`tests/src/attack.rs`);
//! every packet stays in namespaces the test made.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use serde_json::Value;
use veth_tests::{
    attack::{
        self, add_vlan_device, arp_request, atomic_fragment_header, ethertype_of, frame, ipv4_udp,
        ipv6_icmp, ipv6_udp, ipv6_udp_with, marker, nd_marker_option, payload, vnet_udp4_gso,
        Capture, HostLink, Ipv4, Netns, PacketSocket, TxRing, UdpSink, UnreachableRoutes, VlanPush,
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_LOCAL_EXP, ETH_P_QINQ1,
        IPPROTO_ICMPV6, NEXTHDR_FRAGMENT,
    },
    counter, expect_pings, lines_of, ping, run, Agent, ChildGuard, TestTopology,
};
use veth_userspace::model::{eui64_link_local, Pod};

/// The UDP port b listens on.
const PORT: u16 = 40404;
/// Each crafted frame is sent this many times; counters must move by
/// exactly this much.
const COPIES: u64 = 3;
/// How long a frame that must not arrive gets to arrive anyway.
const SETTLE: Duration = Duration::from_millis(300);
/// A MAC that is nobody's (locally administered).
const FOREIGN_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x66];

fn v6(pod: &Pod) -> Ipv6Addr {
    pod.ipv6.expect("a dual-stack pod has an IPv6 address")
}

/// What must come of a probe.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Dropped at a's veth with this reason: nothing reaches b, a's drop
    /// counter for the reason and a's dropped packets move by exactly
    /// [`COPIES`], nothing is redirected into b.
    Dropped(&'static str),
    /// Reaches b's UDP socket, every copy, and a drops nothing; in the
    /// redirect modes it is redirected (so the program read its headers).
    Delivered,
    /// Mode xdp, tag out of band (XDP sees the inner frame): must not
    /// reach b with a tag; reaching it untagged is reported, not judged.
    NotTagged,
    /// Must not reach b at all; the reason is reported, not judged.
    NotDelivered,
}

/// A dual-stack topology with pods a, b and c in one mode, with a capture
/// on every interface of b's namespace and UDP sockets on b's addresses.
/// Failed checks are collected, so one run shows every hole; `finish`
/// fails the test with all of them.
struct Lab {
    // Receivers stop before the topology goes.
    capture: Capture,
    sink: UdpSink,
    t: TestTopology,
    mode: &'static str,
    a: Pod,
    b: Pod,
    c: Pod,
    failures: Vec<String>,
}

impl Lab {
    /// `mtu`: the topology's MTU (on both ends of every pair).
    fn new(mode: &'static str, mtu: Option<u32>) -> Lab {
        let t = TestTopology::reserved(|name, block| {
            let mut text = format!(
                "name = \"{name}\"\nmode = \"{mode}\"\npod_cidr = \"{}\"\npod_cidr6 = \"{}\"\n",
                block.cidr, block.cidr6
            );
            if let Some(mtu) = mtu {
                text += &format!("mtu = {mtu}\n");
            }
            for pod in ["a", "b", "c"] {
                text += &format!("\n[[pods]]\nname = \"{pod}\"\n");
            }
            text
        });
        t.up();
        let (a, b, c) = (t.pod("a").clone(), t.pod("b").clone(), t.pod("c").clone());
        // Neighbours, FDB and routes warm, and the path works at all.
        expect_pings(&a.netns, b.ipv4, 2, &format!("{mode}: a -> b IPv4"));
        expect_pings(&a.netns, v6(&b), 2, &format!("{mode}: a -> b IPv6"));
        let capture = Capture::start(&b.netns);
        let sink = UdpSink::start(&b.netns, &[b.ipv4.into(), v6(&b).into()], PORT);
        Lab {
            capture,
            sink,
            t,
            mode,
            a,
            b,
            c,
            failures: Vec::new(),
        }
    }

    /// Where a pod sends a frame for b: its gateway in the routed modes,
    /// b itself on the bridge.
    fn dst_mac(&self) -> [u8; 6] {
        if self.mode == "bridge" {
            self.b.mac
        } else {
            self.a.gateway_mac
        }
    }

    fn redirect_mode(&self) -> bool {
        self.mode == "tc" || self.mode == "xdp"
    }

    /// Sends what `send` makes of a fresh marker [`COPIES`] times and
    /// checks the outcome at b and in the counters.
    fn probe(&mut self, what: &str, expect: Expect, mut send: impl FnMut(&[u8])) {
        let marker = marker();
        let before = self.t.stats();
        for _ in 0..COPIES {
            send(&marker);
        }
        if let Expect::Delivered = expect {
            let deadline = Instant::now() + Duration::from_secs(5);
            while (self.sink.containing(&marker).len() as u64) < COPIES && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(SETTLE);
        let after = self.t.stats();
        let arrived = self.capture.containing(&marker);
        let accepted = self.sink.containing(&marker).len() as u64;
        let delta = |pod: &str, direction: &str, field: &str| {
            counter(&after[pod], direction, field) - counter(&before[pod], direction, field)
        };
        let moved = drop_deltas(&before["a"], &after["a"]);
        let observed = format!(
            "b saw {} frame(s){}, b's sockets got {accepted}; a's drops moved {moved:?}, \
             a's from_pod dropped +{} redirected +{} passed +{}, b's to_pod redirected +{} \
             passed +{}",
            arrived.len(),
            arrived
                .first()
                .map(|c| format!(" (first: {})", c.describe()))
                .unwrap_or_default(),
            delta("a", "from_pod", "dropped_packets"),
            delta("a", "from_pod", "redirected_packets"),
            delta("a", "from_pod", "passed_packets"),
            delta("b", "to_pod", "redirected_packets"),
            delta("b", "to_pod", "passed_packets"),
        );
        eprintln!("[{}] {what}: {observed}", self.mode);
        let redirect_mode = self.redirect_mode();
        let mut fail = |problem: String| {
            self.failures
                .push(format!("[{}] {what}: {problem} ({observed})", self.mode));
        };
        match expect {
            Expect::Dropped(reason) => {
                if !arrived.is_empty() {
                    fail("arrived at b".into());
                }
                if accepted > 0 {
                    fail("delivered to b's socket".into());
                }
                match after["a"]["drops"].get(reason).and_then(Value::as_u64) {
                    None => fail(format!("stats --json has no drops.{reason}")),
                    Some(now) => {
                        let was = before["a"]["drops"][reason].as_u64().unwrap_or(0);
                        if now - was != COPIES {
                            fail(format!(
                                "drops.{reason} moved by {}, not {COPIES}",
                                now - was
                            ));
                        }
                    }
                }
                if delta("a", "from_pod", "dropped_packets") != COPIES {
                    fail(format!(
                        "a's from_pod.dropped_packets did not move by {COPIES}"
                    ));
                }
                if delta("b", "to_pod", "redirected_packets") != 0 {
                    fail("counted as redirected into b".into());
                }
            }
            Expect::Delivered => {
                if accepted != COPIES {
                    fail(format!("{accepted} of {COPIES} copies reached b's socket"));
                }
                if delta("a", "from_pod", "dropped_packets") != 0 {
                    fail("a's frames were dropped".into());
                }
                if redirect_mode && delta("b", "to_pod", "redirected_packets") < COPIES {
                    fail(format!(
                        "not redirected into b by the {} program",
                        self.mode
                    ));
                }
            }
            Expect::NotTagged => {
                if let Some(tagged) = arrived.iter().find(|c| c.tagged()) {
                    fail(format!("arrived at b tagged: {}", tagged.describe()));
                }
            }
            Expect::NotDelivered => {
                if !arrived.is_empty() || accepted > 0 {
                    fail("arrived at b".into());
                }
                if delta("b", "to_pod", "redirected_packets") != 0 {
                    fail("counted as redirected into b".into());
                }
            }
        }
    }

    /// Fails the test with every failed check.
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} failed check(s) in mode {}:\n{}",
            self.failures.len(),
            self.mode,
            self.failures.join("\n")
        );
    }
}

/// Drop reasons of a pair that moved between two `stats` snapshots.
fn drop_deltas(before: &Value, after: &Value) -> BTreeMap<String, u64> {
    after["drops"]
        .as_object()
        .map(|drops| {
            drops
                .iter()
                .filter_map(|(reason, now)| {
                    let was = before["drops"][reason].as_u64().unwrap_or(0);
                    let moved = now.as_u64()? - was;
                    (moved > 0).then(|| (reason.clone(), moved))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A UDP packet from `src` to b's `PORT` carrying `marker` (`len` bytes of
/// payload), for the family of `src`.
fn udp_to(src: IpAddr, dst: IpAddr, marker: &[u8], len: usize) -> Vec<u8> {
    let data = payload(marker, len);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_udp(s, d, PORT, &data),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_udp(s, d, PORT, &data),
        _ => panic!("mixed families {src} -> {dst}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Headers outside the linear part of the skb.

/// An AF_PACKET TX ring puts only the Ethernet header in the skb's linear
/// part (and a `send()` larger than a page does the same): checks that
/// read only linear data see no IP header. Spoofed sources must still be
/// dropped, and a's own packets must still arrive (so the program reads
/// the headers rather than dropping whatever is not linear).
fn nonlinear_headers(mode: &'static str) {
    // Jumbo frames need an MTU above a page; mode xdp allows at most 3506.
    let jumbo = mode != "xdp";
    let mut lab = Lab::new(mode, jumbo.then_some(9000));
    let (a, b, c) = (lab.a.clone(), lab.b.clone(), lab.c.clone());
    let dst = lab.dst_mac();
    let (a4, b4, c4) = (IpAddr::V4(a.ipv4), IpAddr::V4(b.ipv4), IpAddr::V4(c.ipv4));
    let (a6, b6, c6) = (IpAddr::V6(v6(&a)), IpAddr::V6(v6(&b)), IpAddr::V6(v6(&c)));
    let mut ring = TxRing::open(&a.netns, "eth0");
    let mut ring_probe = |lab: &mut Lab, what: &str, expect, mac, src: IpAddr, to: IpAddr| {
        lab.probe(what, expect, |m| {
            ring.send(&frame(
                dst,
                mac,
                &[],
                ethertype_of(src),
                &udp_to(src, to, m, 64),
            ))
        });
    };
    ring_probe(
        &mut lab,
        "TX ring, a's own IPv4 source",
        Expect::Delivered,
        a.mac,
        a4,
        b4,
    );
    ring_probe(
        &mut lab,
        "TX ring, a's own IPv6 source",
        Expect::Delivered,
        a.mac,
        a6,
        b6,
    );
    ring_probe(
        &mut lab,
        "TX ring, IPv4 source = c",
        Expect::Dropped("spoofed_ipv4"),
        a.mac,
        c4,
        b4,
    );
    ring_probe(
        &mut lab,
        "TX ring, IPv6 source = c",
        Expect::Dropped("spoofed_ipv6"),
        a.mac,
        c6,
        b6,
    );
    ring_probe(
        &mut lab,
        "TX ring, foreign source MAC (IPv4)",
        Expect::Dropped("spoofed_mac"),
        FOREIGN_MAC,
        a4,
        b4,
    );
    ring_probe(
        &mut lab,
        "TX ring, foreign source MAC (IPv6)",
        Expect::Dropped("spoofed_mac"),
        FOREIGN_MAC,
        a6,
        b6,
    );
    if jumbo {
        let socket = PacketSocket::open(&a.netns, "eth0");
        let big = |lab: &mut Lab, what: &str, expect, mac, src: IpAddr, to: IpAddr| {
            lab.probe(what, expect, |m| {
                let f = frame(dst, mac, &[], ethertype_of(src), &udp_to(src, to, m, 5900));
                assert!(f.len() > 4096, "bigger than a page: {}", f.len());
                socket.send(&f)
            });
        };
        big(
            &mut lab,
            "6000-byte send(), a's own IPv4 source",
            Expect::Delivered,
            a.mac,
            a4,
            b4,
        );
        big(
            &mut lab,
            "6000-byte send(), a's own IPv6 source",
            Expect::Delivered,
            a.mac,
            a6,
            b6,
        );
        big(
            &mut lab,
            "6000-byte send(), IPv4 source = c",
            Expect::Dropped("spoofed_ipv4"),
            a.mac,
            c4,
            b4,
        );
        big(
            &mut lab,
            "6000-byte send(), IPv6 source = c",
            Expect::Dropped("spoofed_ipv6"),
            a.mac,
            c6,
            b6,
        );
        big(
            &mut lab,
            "6000-byte send(), foreign source MAC",
            Expect::Dropped("spoofed_mac"),
            FOREIGN_MAC,
            a4,
            b4,
        );
    }
    lab.finish();
}

#[test]
fn nonlinear_headers_are_checked_in_tc() {
    nonlinear_headers("tc");
}

#[test]
fn nonlinear_headers_are_checked_in_xdp() {
    nonlinear_headers("xdp");
}

#[test]
fn nonlinear_headers_are_checked_in_routed() {
    nonlinear_headers("routed");
}

#[test]
fn nonlinear_headers_are_checked_in_bridge() {
    nonlinear_headers("bridge");
}

// ---------------------------------------------------------------------------
// 2. VLAN tags.

/// Pods send untagged frames. A tag hides the packet from checks that
/// look at the frame's EtherType (the kernel strips 802.1Q/802.1ad tags
/// after TC has passed the frame, then routes what was inside), and a tag
/// a pod's VLAN device adds travels out of band, in the skb. Whatever the
/// tag, nothing may reach b: not on eth0, not on b's own `eth0.5` (the
/// capture sees every interface of b, and tags out of band too).
///
/// Without 802.1Q devices in the kernel (`CONFIG_VLAN_8021Q` unset), a
/// TCX egress program on a's eth0 pushes the out-of-band tag instead, onto
/// the frames of one marked socket, as the VLAN device would.
fn vlan_tags(mode: &'static str) {
    const VLAN_MARK: u32 = 0x5eed_0005;
    let mut lab = Lab::new(mode, None);
    let (a, b, c) = (lab.a.clone(), lab.b.clone(), lab.c.clone());
    let vlan_devices = add_vlan_device(&a.netns, "eth0", 5);
    if vlan_devices {
        assert!(add_vlan_device(&b.netns, "eth0", 5), "eth0.5 in b");
    } else {
        eprintln!("no 802.1Q devices in this kernel: tagging a's frames with bpf_skb_vlan_push");
    }
    let dst = lab.dst_mac();
    let (a4, b4, c4) = (IpAddr::V4(a.ipv4), IpAddr::V4(b.ipv4), IpAddr::V4(c.ipv4));
    let (a6, b6, c6) = (IpAddr::V6(v6(&a)), IpAddr::V6(v6(&b)), IpAddr::V6(v6(&c)));
    let socket = PacketSocket::open(&a.netns, "eth0");
    let tagged = |lab: &mut Lab, what: &str, tags: &[(u16, u16)], src: IpAddr, to: IpAddr| {
        lab.probe(what, Expect::Dropped("vlan_tagged"), |m| {
            socket.send(&frame(
                dst,
                a.mac,
                tags,
                ethertype_of(src),
                &udp_to(src, to, m, 64),
            ))
        });
    };
    // The control: the same socket, untagged, a's own source.
    lab.probe(
        "untagged, a's own IPv4 source (control)",
        Expect::Delivered,
        |m| socket.send(&frame(dst, a.mac, &[], ETH_P_IP, &udp_to(a4, b4, m, 64))),
    );
    let q = |vid| (ETH_P_8021Q, vid);
    let ad = |vid| (ETH_P_8021AD, vid);
    tagged(
        &mut lab,
        "802.1Q 0 / 802.1Q 0 / IPv4 source = c",
        &[q(0), q(0)],
        c4,
        b4,
    );
    tagged(&mut lab, "802.1Q 0 / IPv4 source = c", &[q(0)], c4, b4);
    tagged(&mut lab, "802.1Q 5 / IPv4 a's own source", &[q(5)], a4, b4);
    tagged(
        &mut lab,
        "802.1Q 0 / 802.1Q 0 / IPv6 source = c",
        &[q(0), q(0)],
        c6,
        b6,
    );
    tagged(&mut lab, "802.1Q 0 / IPv6 source = c", &[q(0)], c6, b6);
    tagged(&mut lab, "802.1Q 5 / IPv6 a's own source", &[q(5)], a6, b6);
    tagged(
        &mut lab,
        "802.1ad 0 / 802.1Q 0 / IPv4 source = c",
        &[ad(0), q(0)],
        c4,
        b4,
    );
    tagged(&mut lab, "802.1ad 0 / IPv4 source = c", &[ad(0)], c4, b4);
    tagged(
        &mut lab,
        "802.1ad 5 / IPv4 a's own source",
        &[ad(5)],
        a4,
        b4,
    );
    tagged(
        &mut lab,
        "802.1ad 5 / IPv6 a's own source",
        &[ad(5)],
        a6,
        b6,
    );
    tagged(
        &mut lab,
        "0x9100 0 / IPv4 source = c",
        &[(ETH_P_QINQ1, 0)],
        c4,
        b4,
    );

    // a's own VLAN device: the kernel hands the tag to the veth out of
    // band (the veth offloads VLAN insertion). XDP sees only the inner
    // frame and cannot know of the tag.
    let (vlan, _push) = if vlan_devices {
        (PacketSocket::open(&a.netns, "eth0.5"), None)
    } else {
        (
            PacketSocket::open_marked(&a.netns, "eth0", VLAN_MARK),
            Some(VlanPush::attach(
                &a.netns,
                "eth0",
                ETH_P_8021Q,
                5,
                VLAN_MARK,
            )),
        )
    };
    let xdp = mode == "xdp";
    let (own, spoofed) = if xdp {
        (Expect::NotTagged, Expect::NotDelivered)
    } else {
        (
            Expect::Dropped("vlan_tagged"),
            Expect::Dropped("vlan_tagged"),
        )
    };
    let via_vlan = |lab: &mut Lab, what: &str, expect, src: IpAddr, to: IpAddr| {
        lab.probe(what, expect, |m| {
            vlan.send(&frame(
                dst,
                a.mac,
                &[],
                ethertype_of(src),
                &udp_to(src, to, m, 64),
            ))
        });
    };
    via_vlan(
        &mut lab,
        "VLAN 5 out of band (a's VLAN device), a's own IPv4 source",
        own,
        a4,
        b4,
    );
    via_vlan(
        &mut lab,
        "VLAN 5 out of band (a's VLAN device), a's own IPv6 source",
        own,
        a6,
        b6,
    );
    via_vlan(
        &mut lab,
        "VLAN 5 out of band (a's VLAN device), IPv4 source = c",
        spoofed,
        c4,
        b4,
    );
    via_vlan(
        &mut lab,
        "VLAN 5 out of band (a's VLAN device), IPv6 source = c",
        spoofed,
        c6,
        b6,
    );
    lab.finish();
}

#[test]
fn vlan_tagged_frames_are_dropped_in_tc() {
    vlan_tags("tc");
}

#[test]
fn vlan_tagged_frames_are_dropped_in_xdp() {
    vlan_tags("xdp");
}

#[test]
fn vlan_tagged_frames_are_dropped_in_routed() {
    vlan_tags("routed");
}

#[test]
fn vlan_tagged_frames_are_dropped_in_bridge() {
    vlan_tags("bridge");
}

// ---------------------------------------------------------------------------
// 3. Malformed headers and unknown EtherTypes.

/// Headers that are not what their EtherType says, or lie about their
/// length: the checks must not read addresses out of them (a's own
/// addresses sit where the checks look), and nothing may reach b. An
/// EtherType no pod needs is dropped too (on a bridge it would be
/// switched to b).
fn malformed(mode: &'static str) {
    let mut lab = Lab::new(mode, None);
    let (a, b, c) = (lab.a.clone(), lab.b.clone(), lab.c.clone());
    let dst = lab.dst_mac();
    let (a4, b4, c4) = (a.ipv4, b.ipv4, c.ipv4);
    let (a6, b6) = (v6(&a), v6(&b));
    let socket = PacketSocket::open(&a.netns, "eth0");
    let raw = |lab: &mut Lab, what: &str, expect, ethertype: u16, l3: &dyn Fn(&[u8]) -> Vec<u8>| {
        lab.probe(what, expect, |m| {
            socket.send(&frame(dst, a.mac, &[], ethertype, &l3(m)))
        });
    };
    raw(
        &mut lab,
        "well-formed IPv4 (control)",
        Expect::Delivered,
        ETH_P_IP,
        &|m| ipv4_udp(a4, b4, PORT, &payload(m, 64)),
    );
    let malformed4 = Expect::Dropped("malformed_ipv4");
    raw(&mut lab, "IPv4 with IHL 3", malformed4, ETH_P_IP, &|m| {
        Ipv4 {
            vihl: 0x43,
            ..Ipv4::new(a4, b4)
        }
        .udp(40000, PORT, &payload(m, 64))
    });
    raw(
        &mut lab,
        "IPv4 header with version 6",
        malformed4,
        ETH_P_IP,
        &|m| {
            Ipv4 {
                vihl: 0x65,
                ..Ipv4::new(a4, b4)
            }
            .udp(40000, PORT, &payload(m, 64))
        },
    );
    raw(
        &mut lab,
        "an IPv6 packet in an IPv4 (0x0800) frame",
        malformed4,
        ETH_P_IP,
        &|m| ipv6_udp(a6, b6, PORT, &payload(m, 64)),
    );
    raw(
        &mut lab,
        "IPv4 total length 9000 in a 58-byte frame",
        malformed4,
        ETH_P_IP,
        &|m| {
            let f = Ipv4 {
                total_len: Some(9000),
                ..Ipv4::new(a4, b4)
            }
            .udp(40000, PORT, m);
            assert_eq!(f.len() + 14, 58);
            f
        },
    );
    raw(
        &mut lab,
        "IPv4 total length 12, shorter than its header",
        malformed4,
        ETH_P_IP,
        &|m| {
            Ipv4 {
                total_len: Some(12),
                ..Ipv4::new(a4, b4)
            }
            .udp(40000, PORT, &payload(m, 64))
        },
    );
    raw(
        &mut lab,
        "IPv6 payload length 9000 in a short frame",
        Expect::Dropped("malformed_ipv6"),
        ETH_P_IPV6,
        &|m| ipv6_udp_with(a6, b6, PORT, &payload(m, 64), Some(9000)),
    );
    raw(
        &mut lab,
        "an IPv4 packet in an IPv6 (0x86dd) frame",
        Expect::Dropped("malformed_ipv6"),
        ETH_P_IPV6,
        &|m| ipv4_udp(a4, b4, PORT, &payload(m, 64)),
    );
    // ARP for b (to b's MAC on a bridge), the marker in the padding.
    let arp = |sha, spa, hlen, m: &[u8]| [arp_request(sha, spa, b4, hlen), m.to_vec()].concat();
    raw(
        &mut lab,
        "ARP request with a foreign sender MAC",
        Expect::Dropped("spoofed_arp"),
        ETH_P_ARP,
        &|m| arp(FOREIGN_MAC, a4, 6, m),
    );
    raw(
        &mut lab,
        "ARP request announcing c's address",
        Expect::Dropped("spoofed_arp"),
        ETH_P_ARP,
        &|m| arp(a.mac, c4, 6, m),
    );
    raw(
        &mut lab,
        "ARP request with hardware address length 8",
        Expect::Dropped("malformed_arp"),
        ETH_P_ARP,
        &|m| arp(a.mac, a4, 8, m),
    );
    raw(
        &mut lab,
        "EtherType 0x88b5",
        Expect::Dropped("unsupported_ethertype"),
        ETH_P_LOCAL_EXP,
        &|m| payload(m, 64),
    );
    lab.finish();
}

#[test]
fn malformed_frames_are_dropped_in_tc() {
    malformed("tc");
}

#[test]
fn malformed_frames_are_dropped_in_xdp() {
    malformed("xdp");
}

#[test]
fn malformed_frames_are_dropped_in_routed() {
    malformed("routed");
}

#[test]
fn malformed_frames_are_dropped_in_bridge() {
    malformed("bridge");
}

// ---------------------------------------------------------------------------
// 4. Sources, fragments, source routes and GSO (issue 17, round two).

/// What a pod still got through after round one: neighbour discovery
/// behind an IPv6 Fragment header (on a bridge, the host's defragmenter
/// strips the header of an atomic fragment and the victim takes a plain
/// advertisement), another pod's link-local or the `::` source on
/// ordinary packets (on a bridge, b answers c), IPv4 source routes, and
/// GSO packets whose segments exceed every MTU on the way (a raw socket
/// with `PACKET_VNET_HDR`, CAP_NET_RAW only). Pod a's own link-local
/// source, a record-route option and GSO segments that fit still work.
fn sources_fragments_and_segments(mode: &'static str) {
    let mut lab = Lab::new(mode, None);
    let (a, b, c) = (lab.a.clone(), lab.b.clone(), lab.c.clone());
    let dst = lab.dst_mac();
    let (a4, b4, c4) = (a.ipv4, b.ipv4, c.ipv4);
    let (b6, c6) = (v6(&b), v6(&c));
    let (a_ll, b_ll, c_ll) = (
        eui64_link_local(a.mac),
        eui64_link_local(b.mac),
        eui64_link_local(c.mac),
    );
    // The programs take a pod's link-local address to be the EUI-64 of its
    // MAC, as the kernel makes it by default (addr_gen_mode 0).
    for pod in [&a, &b, &c] {
        let shown = run(
            "ip",
            &[
                "-n", &pod.netns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
            ],
        );
        let want = format!("{}/64", eui64_link_local(pod.mac));
        if !shown.contains(&want) {
            lab.failures.push(format!(
                "[{mode}] {}: eth0 has not {want}: {shown}",
                pod.name
            ));
        }
    }
    let socket = PacketSocket::open(&a.netns, "eth0");
    let send = |lab: &mut Lab,
                what: &str,
                expect,
                dst_mac: [u8; 6],
                ethertype: u16,
                l3: &dyn Fn(&[u8]) -> Vec<u8>| {
        lab.probe(what, expect, |m| {
            socket.send(&frame(dst_mac, a.mac, &[], ethertype, &l3(m)))
        });
    };
    // Sources.
    let spoofed6 = Expect::Dropped("spoofed_ipv6");
    send(
        &mut lab,
        "UDP from c's link-local address",
        spoofed6,
        dst,
        ETH_P_IPV6,
        &|m| ipv6_udp(c_ll, b6, PORT, &payload(m, 64)),
    );
    send(
        &mut lab,
        "UDP from c's link-local address to b's link-local",
        spoofed6,
        dst,
        ETH_P_IPV6,
        &|m| ipv6_udp(c_ll, b_ll, PORT, &payload(m, 64)),
    );
    send(&mut lab, "UDP from ::", spoofed6, dst, ETH_P_IPV6, &|m| {
        ipv6_udp(Ipv6Addr::UNSPECIFIED, b6, PORT, &payload(m, 64))
    });
    // On the bridge a's own link-local source reaches b; the routed
    // modes' host never forwards it (the address is the link's).
    let own_link_local = if mode == "bridge" {
        Expect::Delivered
    } else {
        Expect::NotDelivered
    };
    send(
        &mut lab,
        "UDP from a's own link-local address",
        own_link_local,
        dst,
        ETH_P_IPV6,
        &|m| ipv6_udp(a_ll, b6, PORT, &payload(m, 64)),
    );
    // Neighbour discovery behind a Fragment header, and DAD for another.
    let fragment = atomic_fragment_header(IPPROTO_ICMPV6);
    send(
        &mut lab,
        "neighbour advertisement for c's address behind an atomic fragment",
        Expect::Dropped("spoofed_neighbour"),
        dst,
        ETH_P_IPV6,
        &|m| {
            let mut na = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
            na.extend_from_slice(&c6.octets());
            na.extend_from_slice(&[2, 1]);
            na.extend_from_slice(&a.mac);
            na.extend_from_slice(&nd_marker_option(m));
            ipv6_icmp(a_ll, b6, &fragment, NEXTHDR_FRAGMENT, &na)
        },
    );
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    send(
        &mut lab,
        "router advertisement behind an atomic fragment",
        Expect::Dropped("router_message"),
        multicast_mac(all_nodes),
        ETH_P_IPV6,
        &|m| {
            // Hop limit 64, lifetime 1800 s; MTU 1280; prefix 2001:db8::/64.
            let mut ra = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
            ra.extend_from_slice(&[1, 1]);
            ra.extend_from_slice(&a.mac);
            ra.extend_from_slice(&[5, 1, 0, 0, 0, 0, 0x05, 0x00]);
            ra.extend_from_slice(&[3, 4, 64, 0xc0, 0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40]);
            ra.extend_from_slice(&[0; 4]);
            ra.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).octets());
            ra.extend_from_slice(&nd_marker_option(m));
            ipv6_icmp(a_ll, all_nodes, &fragment, NEXTHDR_FRAGMENT, &ra)
        },
    );
    let c_solicited = solicited_node(c6);
    send(
        &mut lab,
        "duplicate address detection from :: for c's address",
        Expect::Dropped("spoofed_neighbour"),
        multicast_mac(c_solicited),
        ETH_P_IPV6,
        &|m| {
            let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
            ns.extend_from_slice(&c6.octets());
            ns.extend_from_slice(&nd_marker_option(m));
            ipv6_icmp(Ipv6Addr::UNSPECIFIED, c_solicited, &[], IPPROTO_ICMPV6, &ns)
        },
    );
    // IPv4 options: source routes are dropped, a record route is not.
    for (name, kind) in [("loose", 131), ("strict", 137)] {
        let mut route = vec![kind, 7, 4];
        route.extend_from_slice(&c4.octets());
        route.push(0);
        send(
            &mut lab,
            &format!("UDP with a {name} source route via c"),
            Expect::Dropped("ipv4_source_route"),
            dst,
            ETH_P_IP,
            &|m| {
                Ipv4::new(a4, b4)
                    .with_options(&route)
                    .udp(40000, PORT, &payload(m, 64))
            },
        );
    }
    send(
        &mut lab,
        "UDP with a record route option",
        Expect::Delivered,
        dst,
        ETH_P_IP,
        &|m| {
            Ipv4::new(a4, b4)
                .with_options(&[7, 7, 4, 0, 0, 0, 0, 0])
                .udp(40000, PORT, &payload(m, 64))
        },
    );
    // GSO: one 9042-byte frame of three 3000-byte segments for b, whose
    // MTU is 1500; segments that fit are delivered.
    let vnet = PacketSocket::open_vnet(&a.netns, "eth0");
    let gso = |lab: &mut Lab, what: &str, expect, segment: u16| {
        lab.probe(what, expect, |m| {
            let packet =
                Ipv4::new(a4, b4).udp_partial(40000, PORT, &payload(m, 3 * usize::from(segment)));
            let f = frame(dst, a.mac, &[], ETH_P_IP, &packet);
            vnet.send(&[&vnet_udp4_gso(segment)[..], &f].concat())
        });
    };
    // XDP takes no GSO packets: the kernel hands them to the host stack,
    // which answers "fragmentation needed" for segments over b's MTU.
    let oversized = if mode == "xdp" {
        Expect::NotDelivered
    } else {
        Expect::Dropped("oversized_gso")
    };
    gso(
        &mut lab,
        "UDP GSO, 3 segments of 3000 bytes",
        oversized,
        3000,
    );
    gso(
        &mut lab,
        "UDP GSO, 3 segments of 1400 bytes",
        Expect::Delivered,
        1400,
    );
    lab.finish();
}

/// The solicited-node multicast group of `addr` (RFC 4291).
fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast MAC of an IPv6 group (RFC 2464).
fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[test]
fn sources_fragments_and_segments_are_checked_in_tc() {
    sources_fragments_and_segments("tc");
}

#[test]
fn sources_fragments_and_segments_are_checked_in_xdp() {
    sources_fragments_and_segments("xdp");
}

#[test]
fn sources_fragments_and_segments_are_checked_in_routed() {
    sources_fragments_and_segments("routed");
}

#[test]
fn sources_fragments_and_segments_are_checked_in_bridge() {
    sources_fragments_and_segments("bridge");
}

// ---------------------------------------------------------------------------
// 5. Stale endpoints.

/// `vethctl agent` serves every topology that is up: a test that must run
/// without one holds this while it runs, and so does a test that starts
/// one. (An agent started outside the tests changes what the tests
/// without one see.)
fn agent_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pod's status entry from `status --json`.
fn pod_status(t: &TestTopology, pod: &str) -> Value {
    t.status()["pods"]
        .as_array()
        .expect("pods[]")
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap_or_else(|| panic!("pod {pod} in status"))
        .clone()
}

/// Pod b's namespace deleted behind vethctl's back (its host veth goes
/// with it) and an unrelated veth pair made with b's old host-side ifindex,
/// its peer in a namespace of the test's: the redirect maps still name
/// that ifindex for b's addresses.
struct StaleB {
    /// Frames that arrive at the unrelated veth's peer.
    capture: Capture,
    _link: HostLink,
    _netns: Netns,
    /// b's old host-side ifindex, now the unrelated veth's.
    ifindex: u32,
    /// When b's host veth was seen gone.
    gone_at: Instant,
}

impl StaleB {
    fn make(t: &TestTopology) -> StaleB {
        let b = t.pod("b");
        let ifindex = pod_status(t, "b")["host_ifindex"]
            .as_u64()
            .expect("b's host_ifindex") as u32;
        let sysfs = std::path::Path::new("/sys/class/net").join(&b.host_veth);
        assert!(sysfs.exists(), "{} exists", sysfs.display());
        run("ip", &["netns", "delete", &b.netns]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while sysfs.exists() {
            assert!(
                Instant::now() < deadline,
                "{} still exists 20 s after its namespace was deleted",
                b.host_veth
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let gone_at = Instant::now();
        let netns = Netns::create("vatk");
        let link = HostLink {
            name: format!("{}x", netns.name),
        };
        let index = ifindex.to_string();
        let out = Command::new("ip")
            .args(["link", "add", "name", &link.name, "index", &index])
            .args(["type", "veth", "peer", "name", "eth0", "netns", &netns.name])
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "creating an unrelated veth with b's old ifindex {ifindex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run("ip", &["link", "set", &link.name, "up"]);
        run("ip", &["-n", &netns.name, "link", "set", "eth0", "up"]);
        let capture = Capture::start(&netns.name);
        eprintln!(
            "b's veth gone; unrelated veth {} with ifindex {ifindex} up after {:?}",
            link.name,
            gone_at.elapsed()
        );
        StaleB {
            capture,
            _link: link,
            _netns: netns,
            ifindex,
            gone_at,
        }
    }

    /// Frames for b's addresses that arrived at the unrelated veth.
    fn for_b(&self, b: &Pod) -> Vec<attack::Captured> {
        let (b4, b6) = (IpAddr::V4(b.ipv4), IpAddr::V6(v6(b)));
        self.capture
            .matching(|c| c.ip_dst() == Some(b4) || c.ip_dst() == Some(b6))
    }
}

/// What a's frames for b did while b was stale: UDP datagrams with
/// markers and pings, over IPv4 and IPv6.
struct Window {
    /// Frames a sent to b.
    sent: u64,
    answered: u32,
    a_redirected: u64,
    a_passed: u64,
    a_dropped: u64,
    markers: Vec<Vec<u8>>,
}

const STALE_PINGS: u32 = 5;
const STALE_DATAGRAMS: u64 = 3;

fn send_to_b(t: &TestTopology) -> Window {
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    let before = t.stats();
    let mut markers = Vec::new();
    for dst in [IpAddr::V4(b.ipv4), IpAddr::V6(v6(&b))] {
        for _ in 0..STALE_DATAGRAMS {
            let m = marker();
            attack::udp_send(&a.netns, dst, PORT, &payload(&m, 64));
            markers.push(m);
        }
    }
    let answered = ping(&a.netns, b.ipv4, STALE_PINGS) + ping(&a.netns, v6(&b), STALE_PINGS);
    std::thread::sleep(SETTLE);
    let after = t.stats();
    let delta = |field: &str| {
        counter(&after["a"], "from_pod", field) - counter(&before["a"], "from_pod", field)
    };
    Window {
        sent: 2 * STALE_DATAGRAMS + 2 * u64::from(STALE_PINGS),
        answered,
        a_redirected: delta("redirected_packets"),
        a_passed: delta("passed_packets"),
        a_dropped: delta("dropped_packets"),
        markers,
    }
}

/// With `vethctl agent` running, an endpoint whose veth went away is
/// inert within 100 ms: a's frames for b go to the host stack (which
/// answers "unreachable"), never into an interface that took over the
/// old ifindex, and are not counted as redirected; `status` says b is not
/// ready.
#[test]
fn stale_endpoint_is_not_redirected_to_with_the_agent() {
    let _alone = agent_serial();
    let t = TestTopology::dual_stack("tc", &["a", "b", "c"]);
    t.up();
    // Once b's /32 is gone, packets for b end here, not at a default route.
    let _unreachable = UnreachableRoutes::add(&[
        t.topology.pod_cidr.to_string(),
        t.topology.pod_cidr6.expect("dual stack").to_string(),
    ]);
    let _agent = Agent::start();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    expect_pings(&a.netns, b.ipv4, 3, "a -> b before");
    expect_pings(&a.netns, v6(&b), 3, "a -> b IPv6 before");
    let mut failures = Vec::new();
    let ready = pod_status(&t, "b");
    if ready["endpoint"] != "ready" {
        failures.push(format!("status of b before: {ready}"));
    }

    let stale = StaleB::make(&t);
    // The agent has 100 ms from the veth's end. Meanwhile a datagram every
    // 2 ms shows when redirects into the unrelated veth stopped (those
    // are not judged: the agent may take its 100 ms).
    let early_socket = attack::udp_socket(&a.netns, b.ipv4.into());
    let mut early: Vec<(Duration, Vec<u8>)> = Vec::new();
    while stale.gone_at.elapsed() < Duration::from_millis(100) {
        let m = marker();
        let _ = early_socket.send_to(&payload(&m, 32), (b.ipv4, PORT));
        early.push((stale.gone_at.elapsed(), m));
        std::thread::sleep(Duration::from_millis(2));
    }
    let status_b = pod_status(&t, "b");
    let window = send_to_b(&t);
    // What a sent from 100 ms on: everything for b but the early datagrams.
    let arrived: Vec<attack::Captured> = stale
        .for_b(&b)
        .into_iter()
        .filter(|c| !early.iter().any(|(_, m)| c.contains(m)))
        .collect();
    let marked: usize = window
        .markers
        .iter()
        .map(|m| stale.capture.containing(m).len())
        .sum();
    let summary = format!(
        "{} frames a -> b from 100 ms after b's veth went: {} answered, a's from_pod \
         redirected +{} passed +{} dropped +{}; {} arrived at the unrelated veth (ifindex {}), \
         {marked} of them with markers; b in status: {status_b}",
        window.sent,
        window.answered,
        window.a_redirected,
        window.a_passed,
        window.a_dropped,
        arrived.len(),
        stale.ifindex
    );
    eprintln!("{summary}");
    let early_arrived: Vec<Duration> = early
        .iter()
        .filter(|(_, m)| !stale.capture.containing(m).is_empty())
        .map(|(at, _)| *at)
        .collect();
    eprintln!(
        "before 100 ms: {} datagrams sent {:?}..{:?} after b's veth went, {} reached the \
         unrelated veth, the last one sent at {:?}",
        early.len(),
        early.first().map(|e| e.0),
        early.last().map(|e| e.0),
        early_arrived.len(),
        early_arrived.last()
    );
    if !arrived.is_empty() {
        failures.push(format!(
            "frames for b arrived at the unrelated veth: {}",
            arrived[0].describe()
        ));
    }
    if window.answered != 0 {
        failures.push("pings to the deleted b were answered".to_string());
    }
    if window.a_redirected != 0 {
        failures.push("a's frames for the deleted b were counted as redirected".to_string());
    }
    if window.a_passed < window.sent {
        failures.push("a's frames for the deleted b did not all go to the host stack".into());
    }
    match status_b["endpoint"].as_str() {
        Some("missing" | "down") => {}
        other => failures.push(format!(
            "status does not flag b as gone (endpoint {other:?})"
        )),
    }
    assert!(failures.is_empty(), "{}\n{summary}", failures.join("\n"));
}

/// Without the agent the maps keep b's endpoint until the next `up`, but
/// the kernel removes a deleted veth from the DEVMAP, which both programs
/// consult before redirecting: nothing reaches the veth that took over the
/// ifindex, a's frames go to the host stack and are counted so, `status`
/// shows b gone; after `up` rewires b the unrelated veth gets nothing and
/// b's counters hold only what reached b.
fn stale_without_the_agent_until_up(mode: &str) {
    let _alone = agent_serial();
    let t = TestTopology::dual_stack(mode, &["a", "b", "c"]);
    t.up();
    let _unreachable = UnreachableRoutes::add(&[
        t.topology.pod_cidr.to_string(),
        t.topology.pod_cidr6.expect("dual stack").to_string(),
    ]);
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    expect_pings(&a.netns, b.ipv4, 3, "a -> b before");
    expect_pings(&a.netns, v6(&b), 3, "a -> b IPv6 before");
    let b_before = counter(&t.stats()["b"], "to_pod", "redirected_packets");

    let stale = StaleB::make(&t);
    std::thread::sleep(Duration::from_millis(100));
    let status_b = pod_status(&t, "b");
    let window = send_to_b(&t);
    let arrived = stale.for_b(&b).len() as u64;
    eprintln!(
        "[{mode}] without the agent: {} frames a -> b: {} answered, a's from_pod redirected +{} \
         passed +{} dropped +{}; {arrived} arrived at the unrelated veth (ifindex {}); \
         b in status: {status_b}",
        window.sent,
        window.answered,
        window.a_redirected,
        window.a_passed,
        window.a_dropped,
        stale.ifindex
    );
    // Even with nobody updating the maps, the kernel dropped b's gone veth
    // from the DEVMAP, which the programs consult before every redirect: a's
    // frames for b go to the host stack (answered "unreachable"), never into
    // the interface that took over the ifindex.
    let mut failures = Vec::new();
    if arrived != 0 {
        failures.push(format!(
            "{arrived} frames for b arrived at the unrelated veth that reused its ifindex"
        ));
    }
    if window.a_redirected != 0 {
        failures.push(format!(
            "a's frames for the deleted b were counted as redirected (+{})",
            window.a_redirected
        ));
    }
    if window.a_passed < window.sent {
        failures.push("a's frames for the deleted b did not all go to the host stack".into());
    }
    match status_b["endpoint"].as_str() {
        Some("missing" | "down") => {}
        other => failures.push(format!(
            "status does not show b as gone (endpoint {other:?})"
        )),
    }

    // `up` rewires b: a new namespace and veth (another ifindex).
    t.up();
    let repaired = pod_status(&t, "b");
    if repaired["endpoint"] != "ready" {
        failures.push(format!("b after up: {repaired}"));
    }
    let b_after_up = counter(&t.stats()["b"], "to_pod", "redirected_packets");
    eprintln!(
        "[{mode}] b's to_pod.redirected_packets: {b_before} before its namespace went, \
         {b_after_up} after up"
    );
    if b_after_up != b_before && b_after_up != 0 {
        failures.push(format!(
            "after up, b's to_pod.redirected_packets is {b_after_up}: neither what b had \
             received ({b_before}) nor a fresh 0, so frames that never reached b are \
             counted for it"
        ));
    }
    expect_pings(&a.netns, b.ipv4, 1, "a -> b after up");
    expect_pings(&a.netns, v6(&b), 1, "a -> b IPv6 after up");
    let before = t.stats();
    let at_stale_before = stale.for_b(&b).len();
    let pings = 2 * 5;
    let answered = ping(&a.netns, b.ipv4, 5) + ping(&a.netns, v6(&b), 5);
    std::thread::sleep(SETTLE);
    let after = t.stats();
    let delta = |pod: &str, direction: &str, field: &str| {
        counter(&after[pod], direction, field) - counter(&before[pod], direction, field)
    };
    if answered != pings {
        failures.push(format!("after up: {answered} of {pings} pings answered"));
    }
    if delta("a", "from_pod", "redirected_packets") != u64::from(pings)
        || delta("b", "to_pod", "redirected_packets") != u64::from(pings)
    {
        failures.push(format!(
            "after up, {pings} echo requests a -> b: a's from_pod redirected +{}, b's to_pod \
             redirected +{}",
            delta("a", "from_pod", "redirected_packets"),
            delta("b", "to_pod", "redirected_packets")
        ));
    }
    let at_stale = stale.for_b(&b).len();
    if at_stale != at_stale_before {
        failures.push(format!(
            "after up, {} frames for b still arrived at the unrelated veth",
            at_stale - at_stale_before
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn stale_endpoint_without_the_agent_until_up_in_tc() {
    stale_without_the_agent_until_up("tc");
}

#[test]
fn stale_endpoint_without_the_agent_until_up_in_xdp() {
    stale_without_the_agent_until_up("xdp");
}

// ---------------------------------------------------------------------------
// 6. Concurrent traces.

/// `ping` from `netns` to `dst` every 50 ms, killed when dropped.
fn pinger(netns: &str, dst: IpAddr) -> ChildGuard {
    ChildGuard::spawn(
        &format!("ping from {netns}"),
        Command::new("ip")
            .args(["netns", "exec", netns, "ping", "-n", "-q", "-i", "0.05"])
            .args(["-c", "1000"])
            .arg(dst.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Two `vethctl trace --pod` sessions at once, for a and for c, while a
/// and c both ping b: each sees its own pod's flow, both ways, and nothing
/// of the other pod's.
#[test]
fn concurrent_traces_each_see_only_their_pod() {
    let t = TestTopology::dual_stack("tc", &["a", "b", "c"]);
    t.up();
    let (a, b, c) = (t.pod("a").clone(), t.pod("b").clone(), t.pod("c").clone());
    expect_pings(&a.netns, b.ipv4, 2, "a -> b");
    expect_pings(&c.netns, b.ipv4, 2, "c -> b");
    let _ping_a = pinger(&a.netns, b.ipv4.into());
    let _ping_c = pinger(&c.netns, b.ipv4.into());

    let mut sessions: Vec<(&str, Ipv4Addr, ChildGuard)> = [("a", a.ipv4), ("c", c.ipv4)]
        .into_iter()
        .map(|(pod, ip)| {
            (
                pod,
                ip,
                t.spawn_vethctl(&["trace", "--pod", pod, "--sample", "1", "--json"]),
            )
        })
        .collect();
    let streams: Vec<_> = sessions
        .iter_mut()
        .map(|(_, _, child)| (lines_of(child.take_stdout()), lines_of(child.take_stderr())))
        .collect();
    let mut events: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    let own_request = |pod: &str, ip: Ipv4Addr, e: &Value| {
        e["hook"] == "from_pod"
            && e["pod"] == pod
            && e["peer_pod"] == "b"
            && e["verdict"] == "redirected"
            && e["protocol"] == "icmp"
            && e["src"] == ip.to_string().as_str()
            && e["dst"] == b.ipv4.to_string().as_str()
    };
    let own_reply = |pod: &str, ip: Ipv4Addr, e: &Value| {
        e["pod"] == "b"
            && e["peer_pod"] == pod
            && e["verdict"] == "redirected"
            && e["src"] == b.ipv4.to_string().as_str()
            && e["dst"] == ip.to_string().as_str()
    };
    // Both sessions run side by side for 3 s after both saw their flow.
    let started = Instant::now();
    let mut both_seen: Option<Instant> = None;
    loop {
        for (i, (lines, _)) in streams.iter().enumerate() {
            loop {
                match lines.recv_timeout(Duration::from_millis(10)) {
                    Ok(line) => events[i].push(
                        serde_json::from_str(&line)
                            .unwrap_or_else(|e| panic!("trace line {line:?}: {e}")),
                    ),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        let (pod, _, child) = &mut sessions[i];
                        panic!(
                            "trace --pod {pod} ended early ({:?}): {:?}",
                            child.try_wait(),
                            streams[i].1.try_iter().collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
        let seen = sessions.iter().zip(&events).all(|((pod, ip, _), ev)| {
            ev.iter().any(|e| own_request(pod, *ip, e)) && ev.iter().any(|e| own_reply(pod, *ip, e))
        });
        match (seen, both_seen) {
            (true, None) => both_seen = Some(Instant::now()),
            (_, Some(at)) if at.elapsed() > Duration::from_secs(3) => break,
            _ => {}
        }
        if both_seen.is_none() && started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    for (_, _, child) in &mut sessions {
        child.signal(libc::SIGTERM);
        child.expect_exit(Duration::from_secs(10));
    }
    for (i, (lines, _)) in streams.iter().enumerate() {
        events[i].extend(
            lines
                .iter()
                .map(|l| serde_json::from_str::<Value>(&l).unwrap()),
        );
    }

    let mut failures = Vec::new();
    for ((pod, ip, _), events) in sessions.iter().zip(&events) {
        let foreign: Vec<&Value> = events
            .iter()
            .filter(|e| e["pod"] != *pod && e["peer_pod"] != *pod)
            .collect();
        eprintln!(
            "trace --pod {pod}: {} events, {} not of pod {pod}",
            events.len(),
            foreign.len()
        );
        if !foreign.is_empty() {
            failures.push(format!(
                "trace --pod {pod} printed {} of {} events that are not {pod}'s, e.g. {}",
                foreign.len(),
                events.len(),
                foreign[0]
            ));
        }
        if !events.iter().any(|e| own_request(pod, *ip, e)) {
            failures.push(format!(
                "trace --pod {pod} never showed {pod} -> b redirected"
            ));
        }
        if !events.iter().any(|e| own_reply(pod, *ip, e)) {
            failures.push(format!(
                "trace --pod {pod} never showed b -> {pod} redirected"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
