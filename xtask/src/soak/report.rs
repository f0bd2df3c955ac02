//! From what the soak saw to the verdicts (pure): latency by live pod
//! count, the targets of issue 18 and the text.

use serde::Serialize;

use super::rss::{self, Stretch};
use crate::bench::cni::summary::{percentile, Verb};

/// One plugin execution that ran to success without being killed.
#[derive(Clone, Debug, Serialize)]
pub struct OpSample {
    pub verb: Verb,
    /// Pods attached (ADD succeeded, DEL not finished) when it started,
    /// the long-lived two included.
    pub live: usize,
    pub ms: f64,
}

/// Live pod counts are put with the nearest of these (on a log scale).
pub const BUCKETS: [usize; 4] = [10, 100, 500, 1000];

/// The index in [`BUCKETS`] of the bucket `live` falls in: boundaries at
/// the geometric means (32, 224, 708).
pub fn bucket_of(live: usize) -> usize {
    BUCKETS
        .windows(2)
        .position(|w| (live * live) < w[0] * w[1])
        .unwrap_or(BUCKETS.len() - 1)
}

/// The live pod counts bucket `i` holds, for the table.
fn bucket_range(i: usize) -> String {
    let low = if i == 0 {
        0
    } else {
        (BUCKETS[i - 1] * BUCKETS[i]).isqrt() + 1
    };
    match BUCKETS.get(i + 1) {
        Some(next) => format!("{low}–{}", (BUCKETS[i] * next).isqrt()),
        None => format!("{low}+"),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    pub verb: Verb,
    /// ~10, ~100, ~500 or ~1000 live pods.
    pub live_pods: usize,
    pub live_range: String,
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn latency_rows(samples: &[OpSample]) -> Vec<LatencyRow> {
    let mut rows = Vec::new();
    for verb in [Verb::Add, Verb::Del] {
        for (i, &bucket) in BUCKETS.iter().enumerate() {
            let ms: Vec<f64> = samples
                .iter()
                .filter(|s| s.verb == verb && bucket_of(s.live) == i)
                .map(|s| s.ms)
                .collect();
            if ms.is_empty() {
                continue;
            }
            rows.push(LatencyRow {
                verb,
                live_pods: bucket,
                live_range: bucket_range(i),
                n: ms.len(),
                p50_ms: percentile(&ms, 50.0),
                p99_ms: percentile(&ms, 99.0),
                max_ms: percentile(&ms, 100.0),
            });
        }
    }
    rows
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "MISS")]
    Miss,
    /// Not measurable in this run (too few cycles or pods).
    #[serde(rename = "N/A")]
    NotMeasured,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotMeasured => "N/A",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub verdict: Verdict,
    pub measured: String,
    /// A correctness target (its miss fails `--quick`), not a timing or
    /// resource one.
    pub correctness: bool,
}

/// The counts the targets judge.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub cycles: usize,
    pub pods_added: usize,
    pub unreachable: usize,
    /// Of those, the ones a probe found unanswering (the others only
    /// shown unmapped or stale twice in a row).
    pub unanswered: usize,
    pub duplicate_addresses: usize,
    pub double_add_two_addresses: usize,
    pub leaks: usize,
    pub stuck: usize,
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    pub tcp_broken: u64,
    pub agent_alive: bool,
    /// The agent's RSS at each plateau's constant live count.
    pub agent_rss: Vec<Stretch>,
    pub agent_fds: (u64, u64),
}

/// Every target: the correctness ones, then the agent's RSS and the ADD
/// p99's flatness.
pub fn targets(c: &Counts, latency: &[LatencyRow]) -> Vec<Target> {
    let mut t = correctness(c);
    t.push(agent_rss(c));
    t.push(add_p99_flat(latency));
    t
}

fn correctness(c: &Counts) -> Vec<Target> {
    let correct = |what: &str, bad: usize, measured: String| Target {
        what: what.into(),
        verdict: Verdict::of(bad == 0),
        measured,
        correctness: true,
    };
    vec![
        correct(
            "0 pods cut off: every pod whose ADD succeeded reaches a long-lived pod and stays mapped",
            c.unreachable,
            format!(
                "{} of {} pods ({} no longer answered a probe; {} only shown not ready twice in a row)",
                c.unreachable,
                c.pods_added,
                c.unanswered,
                c.unreachable - c.unanswered
            ),
        ),
        correct(
            "0 duplicate addresses among live pods",
            c.duplicate_addresses,
            format!("{} address(es) held by two live pods", c.duplicate_addresses),
        ),
        correct(
            "one id, one address: concurrent ADDs of one id answer alike",
            c.double_add_two_addresses,
            format!("{} id(s) given two addresses", c.double_add_two_addresses),
        ),
        correct(
            "0 leaked objects at the end (links, records, map entries, addresses, pins, locks)",
            c.leaks,
            format!("{} leaked", c.leaks),
        ),
        correct(
            "every ADD and DEL succeeds within the runtime's retries",
            c.stuck,
            format!("{} pod(s) stuck", c.stuck),
        ),
        correct(
            "0 datagrams lost between the long-lived pods",
            c.datagrams_lost as usize,
            format!("{} of {} lost", c.datagrams_lost, c.datagrams_sent),
        ),
        correct(
            "the TCP connection between the long-lived pods never breaks",
            c.tcp_broken as usize,
            format!("{} break(s)", c.tcp_broken),
        ),
        correct(
            "the agent runs to the end",
            usize::from(!c.agent_alive),
            if c.agent_alive { "alive" } else { "exited" }.into(),
        ),
    ]
}

/// Judged between samples at one live count (see [`rss`]): within the
/// top plateau of the schedule; every plateau shown.
fn agent_rss(c: &Counts) -> Target {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let each: Vec<String> = c
        .agent_rss
        .iter()
        .map(|s| {
            format!(
                "{} pods: floor {:.1} → {:.1} MB over {} cycles",
                s.plateau,
                mb(s.floor_early_kb),
                mb(s.floor_late_kb),
                s.cycles()
            )
        })
        .collect();
    let growth = rss::growth_per_1000(&c.agent_rss);
    let verdict = growth.map_or(Verdict::NotMeasured, |g| Verdict::of(g <= 1.0));
    Target {
        what: "agent RSS growth ≤ 1 MB per 1,000 cycles (at equal live counts)".into(),
        verdict,
        measured: format!(
            "{} per 1,000 cycles at the top plateau ({}); fds {} → {}",
            growth.map_or(
                format!("not judged (under {} cycles there)", rss::MIN_JUDGED_CYCLES),
                |g| format!("{g:+.2} MB")
            ),
            each.join("; "),
            c.agent_fds.0,
            c.agent_fds.1
        ),
        correctness: false,
    }
}

/// ADD p99 at ~1,000 live pods against ~10; not measured when the run
/// never reached ~1,000.
fn add_p99_flat(latency: &[LatencyRow]) -> Target {
    let p99 = |live: usize| {
        latency
            .iter()
            .find(|r| r.verb == Verb::Add && r.live_pods == live)
            .map(|r| r.p99_ms)
    };
    let (verdict, measured) = match (p99(10), p99(1000)) {
        (Some(low), Some(high)) => (
            Verdict::of(high <= low * 1.2),
            format!(
                "{low:.1} ms at ~10, {high:.1} ms at ~1000 ({:+.0} %)",
                (high / low - 1.0) * 100.0
            ),
        ),
        (low, _) => {
            let highest = latency
                .iter()
                .filter(|r| r.verb == Verb::Add)
                .max_by_key(|r| r.live_pods);
            (
                Verdict::NotMeasured,
                format!(
                    "the run never reached ~1000 live pods (--max-pods); ADD p99 {} at ~10{}",
                    low.map_or("–".into(), |v| format!("{v:.1} ms")),
                    highest.map_or(String::new(), |r| format!(
                        ", {:.1} ms at ~{}",
                        r.p99_ms, r.live_pods
                    ))
                ),
            )
        }
    };
    Target {
        what: "ADD p99 flat (within 20 %) from 10 to 1,000 live pods".into(),
        verdict,
        measured,
        correctness: false,
    }
}

/// The targets that make the run fail: every miss, or with `quick` (what
/// CI runs) only the correctness ones, never timing.
pub fn failed(targets: &[Target], quick: bool) -> Vec<&str> {
    targets
        .iter()
        .filter(|t| t.verdict == Verdict::Miss && (t.correctness || !quick))
        .map(|t| t.what.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_counts_go_to_the_nearest_bucket_on_a_log_scale() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(31), 0);
        assert_eq!(bucket_of(32), 1);
        assert_eq!(bucket_of(223), 1);
        assert_eq!(bucket_of(224), 2);
        assert_eq!(bucket_of(707), 2);
        assert_eq!(bucket_of(708), 3);
        assert_eq!(bucket_of(5000), 3);
        assert_eq!(bucket_range(0), "0–31");
        assert_eq!(bucket_range(3), "708+");
    }

    fn sample(verb: Verb, live: usize, ms: f64) -> OpSample {
        OpSample { verb, live, ms }
    }

    #[test]
    fn add_p99_is_judged_only_when_both_ends_were_measured() {
        let mut samples: Vec<OpSample> =
            (0..100).map(|i| sample(Verb::Add, 10, i as f64)).collect();
        let rows = latency_rows(&samples);
        let flat = targets(&Counts::default(), &rows);
        assert_eq!(flat.last().unwrap().verdict, Verdict::NotMeasured);
        samples.extend((0..100).map(|i| sample(Verb::Add, 1000, 2.0 * i as f64)));
        samples.push(sample(Verb::Del, 1000, 5.0));
        let rows = latency_rows(&samples);
        assert_eq!(rows.len(), 3);
        let t = targets(&Counts::default(), &rows);
        assert_eq!(t.last().unwrap().verdict, Verdict::Miss);
        assert!(!t.last().unwrap().correctness);
    }

    #[test]
    fn only_correctness_misses_fail_a_quick_run() {
        let leaking = |cycle: usize| rss::Sample {
            cycle,
            live: 12,
            plateau: Some(10),
            rss_kb: 1000 + 80 * cycle as u64,
        };
        let clean = Counts {
            agent_alive: true,
            cycles: 100,
            agent_rss: rss::stretches(&(1..=1000).map(leaking).collect::<Vec<_>>()),
            ..Counts::default()
        };
        let t = targets(&clean, &[]);
        // RSS grew 8 MB per 100 cycles: a miss, but not a correctness one.
        assert_eq!(failed(&t, false).len(), 1);
        assert!(failed(&t, true).is_empty());
        let lossy = Counts {
            datagrams_lost: 3,
            ..clean
        };
        assert_eq!(
            failed(&targets(&lossy, &[]), true),
            ["0 datagrams lost between the long-lived pods"]
        );
    }
}
