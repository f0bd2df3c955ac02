//! Single-packet tests (`BPF_PROG_TEST_RUN`) of what the programs put in a
//! trace event: the verdict, and the frame's first
//! [`TRACE_HEADER_BYTES`] bytes exactly as the frame had them, at both TC
//! hooks and at XDP, for frames shorter and longer than that; and that
//! `vethctl trace`'s decoder reads IPv6 extension headers out of them.
//!
//! The object is loaded privately with empty maps and attached nowhere, so
//! `from_pod` and `xdp_from_pod` drop every frame as `unknown_veth` and
//! `to_pod` passes it: neither rewrites the frame, and the traced bytes
//! must equal the frame that went in.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use veth_common::{
    names::{MAP_TRACE_CONFIG, MAP_TRACE_EVENTS, PROG_FROM_POD, PROG_TO_POD, PROG_XDP_FROM_POD},
    verdict, DropReason, TraceConfig, TraceEvent, TRACE_HEADER_BYTES,
};
use veth_tests::{
    frames::{arp, ethernet, ipv4, ipv6, udp, ARP_REQUEST, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
    require_root,
};
use veth_userspace::observe::trace::decode::{decode, Transport};

const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc8, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc8, 0, 0, 0, 0, 0, 3);
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

struct Programs {
    ebpf: Ebpf,
    config: Array<MapData, TraceConfig>,
    events: RingBuf<MapData>,
}

impl Programs {
    fn load() -> Programs {
        require_root();
        let mut ebpf = Ebpf::load(veth_userspace::dataplane::object()).expect("loading the object");
        for name in [PROG_FROM_POD, PROG_TO_POD] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.load()
                .unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP_FROM_POD)
            .unwrap()
            .try_into()
            .unwrap();
        xdp.load().expect("loading xdp_from_pod");
        let config = ebpf.take_map(MAP_TRACE_CONFIG).unwrap().try_into().unwrap();
        let events = ebpf
            .take_map(MAP_TRACE_EVENTS[0])
            .unwrap()
            .try_into()
            .unwrap();
        Programs {
            ebpf,
            config,
            events,
        }
    }

    /// Turns session 0 on (every frame, every pair) or off.
    fn trace(&mut self, on: bool) {
        let config = TraceConfig {
            sample_every: u32::from(on),
            ifindex: 0,
            until_ns: monotonic_ns() + 60_000_000_000,
        };
        self.config.set(0, config, 0).expect("TRACE_CONFIG[0]");
    }

    /// Runs `name` once on `frame`; the events it emitted.
    fn run(&mut self, name: &str, frame: &[u8]) -> Vec<TraceEvent> {
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let program = self.ebpf.program(name).unwrap();
        let result = if name == PROG_XDP_FROM_POD {
            <&Xdp>::try_from(program).unwrap().test_run(options)
        } else {
            <&SchedClassifier>::try_from(program)
                .unwrap()
                .test_run(options)
        };
        result.unwrap_or_else(|e| panic!("test run of {name}: {e:?}"));
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(item.len(), size_of::<TraceEvent>(), "one whole event");
            // SAFETY: the programs write whole TraceEvents; read unaligned.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        events
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a live out-parameter.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// IPv6 from a to b: hop-by-hop options, a first fragment, then UDP
/// 5353 -> 53 with `payload_len` bytes.
fn ipv6_with_extension_headers(payload_len: usize) -> Vec<u8> {
    let mut headers = vec![44, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop: PadN, next fragment
    headers.extend([17, 0, 0, 1, 0, 0, 0, 9]); // fragment: offset 0, more
    headers.extend(udp(5353, 53, &vec![0x5a; payload_len]));
    ethernet(MAC_B, MAC_A, ETH_P_IPV6, &ipv6(A6, B6, 64, 0, &headers))
}

#[test]
fn events_carry_the_verdict_and_the_frames_first_bytes() {
    let mut programs = Programs::load();
    let a = Ipv4Addr::new(10, 200, 0, 2);
    let frames = [
        (
            "ARP request (42 bytes)",
            ethernet(
                [0xff; 6],
                MAC_A,
                ETH_P_ARP,
                &arp(ARP_REQUEST, MAC_A, a, [0; 6], Ipv4Addr::new(10, 200, 0, 3)),
            ),
        ),
        (
            "IPv6 with extension headers, 100 bytes",
            ipv6_with_extension_headers(22),
        ),
        (
            "IPv6 with extension headers, 1514 bytes",
            ipv6_with_extension_headers(1436),
        ),
        (
            "IPv4 UDP, 1514 bytes",
            ethernet(
                MAC_B,
                MAC_A,
                ETH_P_IP,
                &ipv4(a, a, 64, 17, &udp(1, 2, &[7; 1472])),
            ),
        ),
    ];
    programs.trace(true);
    let mut failures = Vec::new();
    for (what, frame) in &frames {
        for (program, want_verdict, want_reason) in [
            (
                PROG_FROM_POD,
                verdict::DROPPED,
                DropReason::UnknownVeth as u8,
            ),
            (
                PROG_XDP_FROM_POD,
                verdict::DROPPED,
                DropReason::UnknownVeth as u8,
            ),
            (PROG_TO_POD, verdict::PASSED, 0),
        ] {
            let before = monotonic_ns();
            let events = programs.run(program, frame);
            let after = monotonic_ns();
            let [event] = events[..] else {
                failures.push(format!("{program}, {what}: {} events", events.len()));
                continue;
            };
            let captured = frame.len().min(TRACE_HEADER_BYTES);
            let problems = [
                (event.len as usize != frame.len(), "len"),
                (usize::from(event.captured) != captured, "captured"),
                (event.headers[..captured] != frame[..captured], "headers"),
                (event.verdict != want_verdict, "verdict"),
                (event.reason != want_reason, "reason"),
                (!(before..=after).contains(&event.timestamp_ns), "timestamp"),
            ];
            for (wrong, field) in problems {
                if wrong {
                    failures.push(format!("{program}, {what}: {field} wrong in {event:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    programs.trace(false);
    assert!(
        programs.run(PROG_FROM_POD, &frames[1].1).is_empty(),
        "no event while the session is off"
    );
}

#[test]
fn traced_bytes_decode_past_ipv6_extension_headers() {
    let mut programs = Programs::load();
    programs.trace(true);
    let events = programs.run(PROG_XDP_FROM_POD, &ipv6_with_extension_headers(1436));
    let [event] = events[..] else {
        panic!("one event: {events:?}");
    };
    let flow = decode(&event.headers[..usize::from(event.captured)])
        .ip
        .expect("an IPv6 flow");
    assert_eq!((flow.src, flow.dst), (A6.into(), B6.into()));
    assert_eq!(flow.protocol, 17);
    assert_eq!(flow.transport, Transport::Ports { src: 5353, dst: 53 });
    assert!(flow.fragment.is_some_and(|f| f.offset == 0 && f.more));
}
