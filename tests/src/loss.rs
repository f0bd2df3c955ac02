//! Events under traffic, with what each cost: the numbered UDP stream and
//! long-lived TCP connections of `veth_bench::disruption` (the traffic of
//! `cargo xtask bench disruption`) run while each event happens; every
//! datagram of the run falls into exactly one event's window, and loss is
//! counted by sequence number, so a slow machine shows as gaps, not loss.

use std::{
    thread,
    time::{Duration, Instant},
};

use veth_bench::disruption::{Disruption, Mark, Traffic};

/// Traffic after each event before its window closes.
const SETTLE: Duration = Duration::from_millis(300);

/// The events of one run of `traffic` and what each cost.
pub struct Events<'a> {
    traffic: &'a Traffic,
    /// How long every connection gets to answer after an event (a stall
    /// this long is a failure even without an error).
    answer_within: Duration,
    from: Mark,
    report: Vec<(String, Disruption, bool)>,
}

impl<'a> Events<'a> {
    pub fn new(traffic: &'a Traffic, answer_within: Duration) -> Events<'a> {
        Events {
            traffic,
            answer_within,
            from: traffic.mark(),
            report: Vec::new(),
        }
    }

    /// Runs `action` under the traffic; its window runs from the end of
    /// the previous one to `SETTLE` after the action (and until every
    /// connection answered again).
    pub fn event<T>(&mut self, name: &str, action: impl FnOnce() -> T) -> T {
        let traffic = self.traffic;
        let started = traffic.now_ns();
        let done = action();
        thread::sleep(SETTLE);
        let deadline = Instant::now() + self.answer_within;
        while !traffic.all_connections_answered_since(started) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let answered = traffic.all_connections_answered_since(started);
        let to = traffic.mark();
        // What was sent just before `to` is given time to arrive.
        thread::sleep(Duration::from_millis(100));
        let window = traffic.window(self.from, to);
        self.report.push((name.to_string(), window, answered));
        self.from = to;
        done
    }

    /// Prints each event's cost; fails naming every event that lost a
    /// datagram, had a send error, broke a connection or left one
    /// unanswered.
    pub fn assert_nothing_lost(&self) {
        let mut failed = Vec::new();
        for (event, d, answered) in &self.report {
            eprintln!(
                "{event:<28} sent {:>6} lost {:>3} send errors {:>3} broken {} answered \
                 {answered} gap {:>6.1} ms stall {:>6.1} ms {:?} {:?}",
                d.sent,
                d.lost,
                d.send_errors,
                d.connections_broken,
                d.longest_gap_ms,
                d.tcp_longest_stall_ms,
                d.send_error_kinds,
                d.broken_by
            );
            if d.sent == 0
                || d.lost > 0
                || d.send_errors > 0
                || d.connections_broken > 0
                || !answered
            {
                failed.push(event.clone());
            }
        }
        assert!(failed.is_empty(), "lost or broke traffic: {failed:?}");
    }
}
