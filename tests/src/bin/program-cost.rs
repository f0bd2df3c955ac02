//! What the security checks cost per packet, measured on the programs
//! themselves: `from_pod` (TC) and `xdp_from_pod` loaded privately twice,
//! with the checks compiled in and out, each run with `BPF_PROG_TEST_RUN`
//! on the same 64-byte UDP frame from one pod to another (IPv4 and IPv6),
//! which both variants redirect. Beside `from_pod`, the same frames through
//! the "limit+map" reference (`bpf_redirect_peer`, one hash lookup, one
//! per-CPU counter) give issue 19's ratio without any traffic. Rounds
//! rotate which variant goes first; the kernel times each batch of runs.
//! Nothing is attached, nothing is sent: the frames never leave the test
//! run.
//!
//! `cargo xtask bench checks` runs this and writes target/bench/checks.json.
//! Usage: program-cost [ROUNDS] [OUT.json]

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{bail, Result};
use serde_json::json;
use veth_userspace::dataplane::{
    lab::{Lab, LabSettings, TEST_RUN_IFINDEX},
    reference::{Reference, ReferenceProgram},
    PodEntry,
};

/// Runs per test-run call: below 254 so that the TTL the program
/// decrements on the same buffer never expires.
const REPEAT: u32 = 200;
/// Calls per sample.
const CALLS: usize = 200;

const TC_ACT_REDIRECT: i32 = 7;
const XDP_REDIRECT: i32 = 4;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(Ok(10), |r| r.parse())?;
    if rounds == 0 {
        bail!("ROUNDS must be at least 1");
    }
    let out = args.get(2).cloned();
    let (a, b) = pods();
    let frames = [("ipv4", frame_v4(&a, &b)), ("ipv6", frame_v6(&a, &b))];
    let labs = [true, false].map(|checks| {
        let mut lab = Lab::load(LabSettings {
            counters: true,
            redirect: true,
            checks,
        })?;
        lab.add_pod(0, &a)?;
        lab.add_pod(1, &b)?;
        lab.set_sender(TEST_RUN_IFINDEX, 0)?;
        Ok::<_, anyhow::Error>((checks, lab))
    });
    let [on, off] = labs;
    let labs = [on?, off?];
    // The reference of issue 19 beside `from_pod`: it redirects every frame
    // from loopback to loopback.
    let reference =
        ReferenceProgram::load(Reference::LimitMap, TEST_RUN_IFINDEX, TEST_RUN_IFINDEX)?;
    let mut results = Vec::new();
    for hook in ["tc", "xdp"] {
        for (family, frame) in &frames {
            let variants = if hook == "tc" { 3 } else { 2 };
            let mut samples: [Vec<f64>; 3] = Default::default();
            for round in 0..rounds {
                // Which variant goes first rotates from round to round.
                for k in 0..variants {
                    let i = (round + k) % variants;
                    samples[i].push(match i {
                        2 => reference_sample(&reference, frame)?,
                        _ => sample(&labs[i].1, hook, frame)?,
                    });
                }
            }
            results.push(report(hook, family, rounds, &samples));
        }
    }
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
        println!("raw results in {path}");
    }
    Ok(())
}

/// Prints one hook and family and returns its JSON: checks on and off,
/// and for TC `from_pod` against limit+map (the median of per-round
/// ratios: rounds that ran while the machine was busier pair up).
fn report(hook: &str, family: &str, rounds: usize, samples: &[Vec<f64>; 3]) -> serde_json::Value {
    let [with, without] = [0, 1].map(|i| summary(&samples[i]));
    println!(
        "{hook:<3} {family}: checks on {:.1} ns ({:.1}-{:.1}), off {:.1} ns ({:.1}-{:.1}), \
         checks cost {:.1} ns per packet",
        with.0,
        with.1,
        with.2,
        without.0,
        without.1,
        without.2,
        with.0 - without.0
    );
    let mut json = json!({
        "hook": hook,
        "family": family,
        "rounds": rounds,
        "runs_per_sample": REPEAT as usize * CALLS,
        "checks_on_ns": {"median": with.0, "min": with.1, "max": with.2},
        "checks_off_ns": {"median": without.0, "min": without.1, "max": without.2},
        "checks_cost_ns": with.0 - without.0,
    });
    if !samples[2].is_empty() {
        let reference = summary(&samples[2]);
        let ratios: Vec<f64> = samples[0]
            .iter()
            .zip(&samples[2])
            .map(|(f, r)| f / r)
            .collect();
        let ratio = summary(&ratios);
        println!(
            "{hook:<3} {family}: limit+map {:.1} ns ({:.1}-{:.1}); from_pod (checks on) \
             {:.2} x limit+map ({:.2}-{:.2})",
            reference.0, reference.1, reference.2, ratio.0, ratio.1, ratio.2
        );
        json["limit_map_ns"] =
            json!({"median": reference.0, "min": reference.1, "max": reference.2});
        json["from_pod_x_limit_map"] = json!({"median": ratio.0, "min": ratio.1, "max": ratio.2});
    }
    json
}

/// Mean ns per run of the limit+map reference, as [`sample`] measures.
fn reference_sample(reference: &ReferenceProgram, frame: &[u8]) -> Result<f64> {
    let mut total = Duration::ZERO;
    for _ in 0..CALLS {
        let (verdict, per_run) = reference.timed_run(frame, REPEAT)?;
        if verdict != TC_ACT_REDIRECT {
            bail!("limit+map: the frame was not redirected (verdict {verdict})");
        }
        total += per_run;
    }
    Ok(total.as_nanos() as f64 / CALLS as f64)
}

/// Mean ns per run over `CALLS` test runs, each verified to redirect.
fn sample(lab: &Lab, hook: &str, frame: &[u8]) -> Result<f64> {
    let mut total = Duration::ZERO;
    for _ in 0..CALLS {
        let (result, redirect) = match hook {
            "tc" => (lab.run_tc(frame, REPEAT)?, TC_ACT_REDIRECT),
            _ => (lab.run_xdp(frame, REPEAT)?, XDP_REDIRECT),
        };
        if result.verdict != redirect {
            bail!(
                "{hook}: the frame was not redirected (verdict {}, counters {:?}); the measurement \
                 would be of another path",
                result.verdict,
                lab.counters(0)?
            );
        }
        total += result.per_run;
    }
    Ok(total.as_nanos() as f64 / CALLS as f64)
}

/// (median, min, max).
fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    (median, sorted[0], sorted[sorted.len() - 1])
}

/// Client and server, both behind the test run's device (loopback): the
/// program only needs the server's ifindex to exist (DEVMAP, MTU checks),
/// and a test run never transmits.
fn pods() -> (PodEntry, PodEntry) {
    let pod = |host_ifindex, last: u8| PodEntry {
        host_ifindex,
        ipv4: Ipv4Addr::new(198, 18, 0, last),
        ipv6: Some(Ipv6Addr::new(
            0xfd00,
            0x198,
            0x18,
            0,
            0,
            0,
            0,
            u16::from(last),
        )),
        mac: [0x0a, 0x58, 198, 18, 0, last],
        gateway_mac: veth_common::GATEWAY_MAC,
        mtu: 1500,
        host_path: false,
    };
    let a = pod(TEST_RUN_IFINDEX, 2);
    // A test run repeats the program on the same buffer: the server's MACs
    // are chosen so that the rewrite writes the bytes already there (the
    // same stores either way), and the next run still sees a's frame.
    let b = PodEntry {
        mac: veth_common::GATEWAY_MAC,
        gateway_mac: a.mac,
        ..pod(TEST_RUN_IFINDEX, 3)
    };
    (a, b)
}

const UDP_PAYLOAD: usize = 64 - 14 - 20 - 8;

fn ethernet(src: &PodEntry, ethertype: u16) -> Vec<u8> {
    let mut f = veth_common::GATEWAY_MAC.to_vec();
    f.extend_from_slice(&src.mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn udp(len: usize) -> Vec<u8> {
    let mut u = vec![0x30, 0x39, 0x13, 0x88];
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.resize(len, 0x5a);
    u
}

fn frame_v4(a: &PodEntry, b: &PodEntry) -> Vec<u8> {
    let udp = udp(8 + UDP_PAYLOAD);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 255, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&a.ipv4.octets());
    ip.extend_from_slice(&b.ipv4.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    let mut f = ethernet(a, 0x0800);
    f.extend(ip);
    f.extend(udp);
    f
}

fn frame_v6(a: &PodEntry, b: &PodEntry) -> Vec<u8> {
    let udp = udp(8 + UDP_PAYLOAD);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[17, 255]);
    ip.extend_from_slice(&a.ipv6.expect("dual stack").octets());
    ip.extend_from_slice(&b.ipv6.expect("dual stack").octets());
    let mut f = ethernet(a, 0x86dd);
    f.extend(ip);
    f.extend(udp);
    f
}
