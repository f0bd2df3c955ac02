//! From op timings to the verdicts (pure): percentiles per plugin and
//! concurrency, ratios to the reference plugins, the targets of issue 11
//! section 4, and the table.

use std::fmt::Write as _;

use serde::Serialize;

use super::median;

/// The plugins, in table order; the first two are ours.
pub const VETH_BUILTIN: &str = "veth-cni builtin";
pub const VETH_HOST_LOCAL: &str = "veth-cni host-local";
pub const BRIDGE: &str = "bridge host-local";
pub const PTP: &str = "ptp host-local";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Add,
    Del,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
        }
    }
}

/// One plugin execution.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub plugin: String,
    /// Executions in flight at once (1: one at a time).
    pub parallel: usize,
    pub round: usize,
    pub verb: Verb,
    pub pod: usize,
    pub ms: f64,
    /// CPU time (user + system) of the plugin and of the IPAM plugin it ran.
    pub cpu_ms: f64,
}

/// One batch: `pods` executions of one verb, `parallel` at a time, from
/// the first start to the last exit.
#[derive(Clone, Debug, Serialize)]
pub struct Batch {
    pub plugin: String,
    pub parallel: usize,
    pub round: usize,
    pub verb: Verb,
    pub pods: usize,
    pub wall_s: f64,
}

/// Latency of one verb.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time per execution, median: what the machine's load does not
    /// change much.
    pub cpu_p50_ms: f64,
    /// Lowest and highest per-round median: how much the machine moved.
    pub round_p50_min_ms: f64,
    pub round_p50_max_ms: f64,
    /// All batches of this verb added up: how long the N executions took.
    pub total_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub plugin: String,
    pub parallel: usize,
    pub add: Latency,
    pub del: Latency,
    /// Median over rounds of (this plugin's round median / the reference's
    /// in the same round): the ratio with the machine's drift paired out.
    pub add_vs_bridge: Option<f64>,
    pub add_vs_ptp: Option<f64>,
    pub del_vs_bridge: Option<f64>,
    pub del_vs_ptp: Option<f64>,
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms_of<'a>(
    samples: &'a [Sample],
    plugin: &'a str,
    parallel: usize,
    verb: Verb,
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| s.plugin == plugin && s.parallel == parallel && s.verb == verb)
}

fn round_medians(
    samples: &[Sample],
    plugin: &str,
    parallel: usize,
    verb: Verb,
) -> Vec<(usize, f64)> {
    medians_by_round(ms_of(samples, plugin, parallel, verb).map(|s| (s.round, s.ms)))
}

/// Each round's median of `values` (round, value), by round.
pub fn medians_by_round(values: impl Iterator<Item = (usize, f64)>) -> Vec<(usize, f64)> {
    let mut by_round = std::collections::BTreeMap::<usize, Vec<f64>>::new();
    for (round, value) in values {
        by_round.entry(round).or_default().push(value);
    }
    by_round
        .into_iter()
        .map(|(round, values)| (round, median(&values)))
        .collect()
}

/// Median over the rounds both have of `ours`' round median divided by
/// `theirs'`; `None` without such a round.
pub fn paired_ratio(ours: &[(usize, f64)], theirs: &[(usize, f64)]) -> Option<f64> {
    let ratios: Vec<f64> = ours
        .iter()
        .filter_map(|&(round, m)| {
            let b = theirs.iter().find(|(r, _)| *r == round)?.1;
            (b > 0.0).then(|| m / b)
        })
        .collect();
    (!ratios.is_empty()).then(|| median(&ratios))
}

fn latency(
    samples: &[Sample],
    batches: &[Batch],
    plugin: &str,
    parallel: usize,
    verb: Verb,
) -> Latency {
    let ms: Vec<f64> = ms_of(samples, plugin, parallel, verb)
        .map(|s| s.ms)
        .collect();
    let cpu: Vec<f64> = ms_of(samples, plugin, parallel, verb)
        .map(|s| s.cpu_ms)
        .collect();
    let rounds: Vec<f64> = round_medians(samples, plugin, parallel, verb)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    Latency {
        n: ms.len(),
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: percentile(&ms, 100.0),
        cpu_p50_ms: median(&cpu),
        round_p50_min_ms: rounds.iter().copied().fold(f64::INFINITY, f64::min),
        round_p50_max_ms: rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        total_s: batches
            .iter()
            .filter(|b| b.plugin == plugin && b.parallel == parallel && b.verb == verb)
            .map(|b| b.wall_s)
            .sum(),
    }
}

/// Median over rounds of plugin's round median / base's round median.
fn paired(
    samples: &[Sample],
    plugin: &str,
    base: &str,
    parallel: usize,
    verb: Verb,
) -> Option<f64> {
    if plugin == base {
        return None;
    }
    paired_ratio(
        &round_medians(samples, plugin, parallel, verb),
        &round_medians(samples, base, parallel, verb),
    )
}

pub fn rows(
    samples: &[Sample],
    batches: &[Batch],
    plugins: &[&str],
    parallels: &[usize],
) -> Vec<Row> {
    let mut out = Vec::new();
    for &parallel in parallels {
        for &plugin in plugins {
            out.push(Row {
                plugin: plugin.to_string(),
                parallel,
                add: latency(samples, batches, plugin, parallel, Verb::Add),
                del: latency(samples, batches, plugin, parallel, Verb::Del),
                add_vs_bridge: paired(samples, plugin, BRIDGE, parallel, Verb::Add),
                add_vs_ptp: paired(samples, plugin, PTP, parallel, Verb::Add),
                del_vs_bridge: paired(samples, plugin, BRIDGE, parallel, Verb::Del),
                del_vs_ptp: paired(samples, plugin, PTP, parallel, Verb::Del),
            });
        }
    }
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    /// `PASS`, `MISS`, or `NOT RUN`.
    pub verdict: &'static str,
    /// The figures it was judged on.
    pub measured: String,
}

fn row<'a>(rows: &'a [Row], plugin: &str, parallel: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.plugin == plugin && r.parallel == parallel)
}

/// The targets of issue 11 section 4 for every concurrency measured: p50
/// below the reference plugins' (ours with host-local and with the
/// built-in IPAM), the built-in one at most 0.6 × bridge, for ADD and
/// DEL; and the concurrent ADDs finishing sooner than one at a time.
pub fn targets(rows: &[Row], parallels: &[usize]) -> Vec<Target> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    for &parallel in parallels {
        let how = if parallel == 1 {
            "one at a time".to_string()
        } else {
            format!("{parallel} at a time")
        };
        for verb in [Verb::Add, Verb::Del] {
            let p50 = |plugin: &str| {
                row(rows, plugin, parallel).map(|r| match verb {
                    Verb::Add => r.add.p50_ms,
                    Verb::Del => r.del.p50_ms,
                })
            };
            let checks: [(&str, &str, f64); 5] = [
                (VETH_HOST_LOCAL, BRIDGE, 1.0),
                (VETH_HOST_LOCAL, PTP, 1.0),
                (VETH_BUILTIN, BRIDGE, 1.0),
                (VETH_BUILTIN, PTP, 1.0),
                (VETH_BUILTIN, BRIDGE, 0.6),
            ];
            for (ours, theirs, factor) in checks {
                let (Some(a), Some(b)) = (p50(ours), p50(theirs)) else {
                    continue;
                };
                let (what, ok) = if factor < 1.0 {
                    (
                        format!("{} p50 {ours} ≤ {factor} × {theirs} ({how})", verb.name()),
                        a <= factor * b,
                    )
                } else {
                    (
                        format!("{} p50 {ours} < {theirs} ({how})", verb.name()),
                        a < b,
                    )
                };
                out.push(Target {
                    what,
                    verdict: verdict(ok),
                    measured: format!("{a:.1} ms vs {b:.1} ms (× {:.2})", a / b),
                });
            }
        }
    }
    if let Some(&wide) = parallels.iter().find(|&&p| p > 1) {
        for plugin in [VETH_BUILTIN, VETH_HOST_LOCAL] {
            let (Some(one), Some(many)) = (row(rows, plugin, 1), row(rows, plugin, wide)) else {
                continue;
            };
            out.push(Target {
                what: format!(
                    "{plugin}: {wide}-way ADDs finish sooner in total than one at a time"
                ),
                verdict: verdict(many.add.total_s < one.add.total_s),
                measured: format!(
                    "{} ADDs: {:.2} s {wide}-way vs {:.2} s one at a time (× {:.2})",
                    many.add.n,
                    many.add.total_s,
                    one.add.total_s,
                    many.add.total_s / one.add.total_s
                ),
            });
        }
    }
    out
}

/// What limits veth-cni in mode tc, from the figures: the RCU grace
/// periods the kernel waits for (`grace_ms`: synchronize_rcu timed on this
/// machine) against the difference to bridge and the CPU time each spends.
/// Empty without the rows it needs.
pub fn limits(rows: &[Row], grace_ms: &[f64], parallels: &[usize], lock_percent: f64) -> String {
    let (Some(ours), Some(bridge)) = (row(rows, VETH_BUILTIN, 1), row(rows, BRIDGE, 1)) else {
        return String::new();
    };
    let gp = median(grace_ms);
    let mut out = format!(
        "What limits veth-cni (mode tc): ADD attaches its two programs as clsact filters \
         (`tcAttach` \"clsact\", the default), which wait for no RCU grace period; a TCX attach \
         or detach (`tcAttach` \"tcx\") waits for one under RTNL (synchronize_rcu in \
         kernel/bpf/tcx.c). DEL deletes the pod's veth, as bridge's and ptp's DEL do: the \
         kernel's netdev_run_todo waits for rcu_barrier, and again (with a sleep) while \
         references to the device remain. A grace period took {gp:.1} ms here (p50 of {} timed \
         with membarrier(MEMBARRIER_CMD_GLOBAL), which is synchronize_rcu; p99 {:.1} ms).\n",
        grace_ms.len(),
        percentile(grace_ms, 99.0)
    );
    let over = |a: f64, b: f64| {
        let d = a - b;
        format!("{d:+.1} ms ({:+.1} grace periods)", d / gp)
    };
    out += &format!(
        "- one at a time: veth-cni builtin − bridge, p50: ADD {}, DEL {}; CPU time per \
         execution ADD {:.1} vs {:.1} ms, DEL {:.1} vs {:.1} ms.\n",
        over(ours.add.p50_ms, bridge.add.p50_ms),
        over(ours.del.p50_ms, bridge.del.p50_ms),
        ours.add.cpu_p50_ms,
        bridge.add.cpu_p50_ms,
        ours.del.cpu_p50_ms,
        bridge.del.cpu_p50_ms,
    );
    if lock_percent > 0.0 {
        out += &format!(
            "- global lock: another vethctl's `up`, `down` or `mode set` held vethctl's global \
             change lock {lock_percent:.1} % of this run; a network's first ADD (not counted) \
             waits for it, the others take only their network's lock.\n"
        );
    }
    for &parallel in parallels.iter().filter(|&&p| p > 1) {
        let (Some(ours), Some(bridge)) = (
            row(rows, VETH_BUILTIN, parallel),
            row(rows, BRIDGE, parallel),
        ) else {
            continue;
        };
        out += &format!(
            "- {parallel} at a time: ADD p50 {:.1} ms (bridge {:.1} ms), DEL p50 {:.1} ms \
             (bridge {:.1} ms).\n",
            ours.add.p50_ms, bridge.add.p50_ms, ours.del.p50_ms, bridge.del.p50_ms,
        );
    }
    out
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// The table printed at the end and written beside the JSON.
pub fn table(rows: &[Row], targets: &[Target]) -> String {
    let mut out = String::from(
        "| plugin + IPAM | at once | ADD p50 ms (rounds) | ADD p99 ms | DEL p50 ms (rounds) | DEL p99 ms | all ADDs s | all DELs s | ADD × bridge | ADD × ptp | DEL × bridge | DEL × ptp | CPU ms ADD / DEL |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}–{}) | {} | {} ({}–{}) | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} / {} |",
            r.plugin,
            r.parallel,
            ms(r.add.p50_ms),
            ms(r.add.round_p50_min_ms),
            ms(r.add.round_p50_max_ms),
            ms(r.add.p99_ms),
            ms(r.del.p50_ms),
            ms(r.del.round_p50_min_ms),
            ms(r.del.round_p50_max_ms),
            ms(r.del.p99_ms),
            r.add.total_s,
            r.del.total_s,
            ratio(r.add_vs_bridge),
            ratio(r.add_vs_ptp),
            ratio(r.del_vs_bridge),
            ratio(r.del_vs_ptp),
            ms(r.add.cpu_p50_ms),
            ms(r.del.cpu_p50_ms),
        );
    }
    out += "\n| target | verdict | measured |\n| --- | --- | --- |\n";
    for t in targets {
        let _ = writeln!(out, "| {} | {} | {} |", t.what, t.verdict, t.measured);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(plugin: &str, parallel: usize, round: usize, verb: Verb, ms: f64) -> Sample {
        Sample {
            plugin: plugin.into(),
            parallel,
            round,
            verb,
            pod: 0,
            ms,
            cpu_ms: 1.0,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&v, 100.0), 200.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn round_medians_pair_only_rounds_both_have() {
        let ours = medians_by_round([(1, 10.0), (0, 4.0), (0, 6.0), (2, 9.0)].into_iter());
        assert_eq!(ours, [(0, 5.0), (1, 10.0), (2, 9.0)]);
        // Round 2 is ours only, round 3 theirs only; a zero median pairs with nothing.
        let theirs = [(0, 10.0), (1, 10.0), (3, 1.0)];
        assert_eq!(paired_ratio(&ours, &theirs), Some(0.75));
        assert_eq!(paired_ratio(&ours, &[(0, 0.0)]), None);
        assert_eq!(paired_ratio(&[], &theirs), None);
    }

    #[test]
    fn ratios_pair_rounds_and_targets_judge_p50() {
        let mut samples = Vec::new();
        // Round 1 is twice as slow for everyone: the paired ratio stays.
        for (round, k) in [(0, 1.0), (1, 2.0)] {
            for verb in [Verb::Add, Verb::Del] {
                samples.push(s(VETH_BUILTIN, 1, round, verb, 20.0 * k));
                samples.push(s(VETH_HOST_LOCAL, 1, round, verb, 35.0 * k));
                samples.push(s(BRIDGE, 1, round, verb, 40.0 * k));
                samples.push(s(PTP, 1, round, verb, 30.0 * k));
            }
        }
        let batches = vec![
            Batch {
                plugin: VETH_BUILTIN.into(),
                parallel: 1,
                round: 0,
                verb: Verb::Add,
                pods: 1,
                wall_s: 0.5,
            },
            Batch {
                plugin: VETH_BUILTIN.into(),
                parallel: 8,
                round: 0,
                verb: Verb::Add,
                pods: 1,
                wall_s: 0.25,
            },
        ];
        let plugins = [VETH_BUILTIN, VETH_HOST_LOCAL, BRIDGE, PTP];
        let rows = rows(&samples, &batches, &plugins, &[1]);
        let veth = &rows[0];
        assert_eq!(veth.add_vs_bridge, Some(0.5));
        assert_eq!(veth.add.total_s, 0.5);
        assert_eq!(
            (veth.add.round_p50_min_ms, veth.add.round_p50_max_ms),
            (20.0, 40.0)
        );
        let targets = targets(&rows, &[1]);
        let find = |what: &str| targets.iter().find(|t| t.what == what).unwrap().verdict;
        assert_eq!(
            find("ADD p50 veth-cni builtin ≤ 0.6 × bridge host-local (one at a time)"),
            "PASS"
        );
        assert_eq!(
            find("DEL p50 veth-cni host-local < ptp host-local (one at a time)"),
            "MISS"
        );
        assert_eq!(
            find("ADD p50 veth-cni host-local < bridge host-local (one at a time)"),
            "PASS"
        );
        assert!(table(&rows, &targets).contains("| veth-cni builtin | 1 | 20.0 (20.0–40.0) |"));
    }
}
