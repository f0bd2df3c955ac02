//! No loss on change (issue 10): under a sequence-numbered UDP stream and
//! long-lived TCP connections between two pods, an agent killed and
//! restarted, program reloads (counters toggled: other instructions, as a
//! new object has; every pinned map given another layout; `up --repair`)
//! and every `mode set` transition the kernel lets happen without loss
//! lose no datagram and break no connection. The traffic is the one of
//! `cargo xtask bench disruption` (`veth_bench::disruption`); loss is
//! counted by sequence number, so a slow machine shows as gaps, not loss.
//!
//! Left out: routed <-> bridge. Without a program in front of it, a pod's
//! traffic goes through its host-side veth's receive path while the veth
//! becomes (or stops being) a bridge port, and the kernel drops what
//! arrives in the window where the port exists but is disabled
//! (`br_add_if` registers the bridge's receive handler before it enables
//! the port, `del_nbp` disables the port before it removes the handler):
//! usually nothing, sometimes a datagram or a TCP segment. The table in
//! docs/design.md shows them.

use std::{
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use veth_bench::disruption::{
    give_pinned_maps_other_layouts, transitions, Config, Disruption, Mark, Traffic,
};
use veth_tests::{expect_success, Agent, TestTopology};

const UDP_PORT: u16 = 11192;
const TCP_PORT: u16 = 11193;
/// Datagrams per second: enough to see a 1 ms hole, little enough that a
/// sender that falls behind on a busy machine does not overflow queues.
const RATE: u64 = 2000;
const CONNECTIONS: usize = 3;
/// Traffic after each event before its window closes.
const SETTLE: Duration = Duration::from_millis(300);
/// How long every connection gets to answer after an event (a stall this
/// long is a failure even without an error).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What one event cost, and whether every connection answered after it.
struct Outcome {
    event: String,
    disruption: Disruption,
    answered: bool,
    /// How long the action took.
    command: Duration,
}

impl Outcome {
    fn clean(&self) -> bool {
        let d = &self.disruption;
        d.sent > 0
            && d.lost == 0
            && d.send_errors == 0
            && d.connections_broken == 0
            && self.answered
    }
}

/// Runs `action` under the traffic; the window runs from the end of the
/// previous one to `SETTLE` after the action, so every datagram of the
/// run is in exactly one window.
fn event(
    traffic: &Traffic,
    from: &mut Mark,
    outcomes: &mut Vec<Outcome>,
    name: &str,
    action: impl FnOnce(),
) {
    let started = traffic.now_ns();
    let clock = Instant::now();
    action();
    let command = clock.elapsed();
    thread::sleep(SETTLE);
    let deadline = Instant::now() + ANSWER_WITHIN;
    while !traffic.all_connections_answered_since(started) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let answered = traffic.all_connections_answered_since(started);
    let to = traffic.mark();
    // What was sent just before `to` is given time to arrive.
    thread::sleep(Duration::from_millis(100));
    outcomes.push(Outcome {
        event: name.to_string(),
        disruption: traffic.window(*from, to),
        answered,
        command,
    });
    *from = to;
}

#[test]
fn changes_lose_no_datagram_and_break_no_connection() {
    let mut t = TestTopology::dual_stack("tc", &["a", "b"]);
    t.up();
    let mut agent = Agent::for_networks(&[t.name()]);
    let traffic = Traffic::start(&Config {
        client_netns: t.pod("a").netns.clone(),
        server_netns: t.pod("b").netns.clone(),
        server: IpAddr::V4(t.pod("b").ipv4),
        udp_port: UDP_PORT,
        tcp_port: TCP_PORT,
        rate: RATE,
        connections: CONNECTIONS,
        max_seconds: 600,
        tcp_timeout: ANSWER_WITHIN,
    })
    .expect("traffic between pods a and b");
    let text = std::fs::read_to_string(&t.file).expect("reading the topology file");
    let with_counters = |on: bool| {
        text.replace(
            "mode = \"tc\"\n",
            &format!("mode = \"tc\"\ncounters = {on}\n"),
        )
    };
    let pins = Path::new("/sys/fs/bpf/vethctl").join(t.name());

    let mut outcomes = Vec::new();
    let mut from = traffic.mark();
    thread::sleep(SETTLE);
    event(&traffic, &mut from, &mut outcomes, "idle", || {});
    event(
        &traffic,
        &mut from,
        &mut outcomes,
        "agent kill -9, restart",
        || {
            agent.child().signal(libc::SIGKILL);
            agent.child().expect_exit(Duration::from_secs(10));
            agent = Agent::for_networks(&[t.name()]);
        },
    );
    event(
        &traffic,
        &mut from,
        &mut outcomes,
        "reload: counters off",
        || {
            t.rewrite(&with_counters(false));
            t.up();
        },
    );
    event(
        &traffic,
        &mut from,
        &mut outcomes,
        "reload: counters on",
        || {
            t.rewrite(&with_counters(true));
            t.up();
        },
    );
    event(
        &traffic,
        &mut from,
        &mut outcomes,
        "reload: map layouts changed",
        || {
            let replaced =
                give_pinned_maps_other_layouts(&pins).expect("replacing the pinned maps");
            assert!(!replaced.is_empty(), "maps pinned in {}", pins.display());
            t.rewrite(&with_counters(false));
            let out = t.vethctl(&["up"]);
            expect_success(&out, "vethctl up");
            let stderr = String::from_utf8_lossy(&out.stderr);
            for map in &replaced {
                assert!(
                    stderr.contains(&format!(
                        "map {map} was pinned by a vethctl with another layout"
                    )),
                    "vethctl made map {map} afresh: {stderr}"
                );
            }
        },
    );
    event(
        &traffic,
        &mut from,
        &mut outcomes,
        "reload: counters on again",
        || {
            t.rewrite(&with_counters(true));
            t.up();
        },
    );
    event(&traffic, &mut from, &mut outcomes, "up --repair", || {
        t.up_repair()
    });
    let modes: Vec<String> = ["tc", "xdp", "routed", "bridge", "pair"]
        .map(String::from)
        .to_vec();
    let walk = transitions(&modes, &[("routed", "bridge"), ("bridge", "routed")]);
    assert_eq!(walk.len(), 18, "every other ordered pair of modes");
    for (from_mode, to_mode) in &walk {
        event(
            &traffic,
            &mut from,
            &mut outcomes,
            &format!("mode {from_mode} -> {to_mode}"),
            || t.mode_set(to_mode),
        );
    }
    let round_trips = traffic.round_trips();
    let stopped = traffic.stop();

    let mut report = String::new();
    for o in &outcomes {
        let d = &o.disruption;
        report += &format!(
            "{:<30} {:>6.0} ms  sent {:>6} lost {:>4} send errors {:>3} broken {} answered {} gap {:>6.1} ms stall {:>6.1} ms {:?} {:?}\n",
            o.event,
            o.command.as_secs_f64() * 1e3,
            d.sent,
            d.lost,
            d.send_errors,
            d.connections_broken,
            o.answered,
            d.longest_gap_ms,
            d.tcp_longest_stall_ms,
            d.send_error_kinds,
            d.broken_by
        );
    }
    eprintln!("{report}");
    stopped.expect("the traffic threads ran to the end");
    assert!(round_trips > 0, "TCP round trips completed");
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.clean())
        .map(|o| o.event.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "lost datagrams, send errors or broken or stalled connections in: {failed:?}\n{report}"
    );
}
