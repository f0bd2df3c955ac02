//! Rates between two counter snapshots, for `vethctl stats --watch`.

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    node_streams::NodeStreams,
    table::{render_fitting, row, Width},
    TopologyStats,
};
use crate::{model::Topology, netlink::Host};

/// Traffic of one pair over an interval, both directions added up.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairRate {
    pub topology: String,
    /// The lab's node the pair is on (a lab watched from its machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub pod: String,
    pub host_veth: String,
    pub packets_per_second: f64,
    pub bits_per_second: f64,
    pub redirected_packets_per_second: f64,
    pub passed_packets_per_second: f64,
    pub dropped_packets_per_second: f64,
}

/// Rates of the pairs present in both snapshots, busiest first (by bits,
/// then packets). Counters that went down (a pair re-created) count as 0.
pub fn rates(
    before: &[TopologyStats],
    after: &[TopologyStats],
    elapsed: Duration,
) -> Vec<PairRate> {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let old: BTreeMap<(&str, &str), &super::PairStats> = before
        .iter()
        .flat_map(|t| {
            t.pairs
                .iter()
                .map(move |p| ((t.name.as_str(), p.pod.as_str()), p))
        })
        .collect();
    let per_second = |new: u64, old: u64| new.saturating_sub(old) as f64 / seconds;
    let mut out: Vec<PairRate> = after
        .iter()
        .flat_map(|t| t.pairs.iter().map(move |p| (t, p)))
        .filter_map(|(t, p)| {
            let o = old.get(&(t.name.as_str(), p.pod.as_str()))?;
            let packets = |v: &veth_common::Verdicts| {
                v.redirected_packets + v.remote_packets + v.passed_packets + v.dropped_packets
            };
            let bytes = |v: &veth_common::Verdicts| {
                v.redirected_bytes + v.remote_bytes + v.passed_bytes + v.dropped_bytes
            };
            Some(PairRate {
                topology: t.name.clone(),
                node: None,
                pod: p.pod.clone(),
                host_veth: p.host_veth.clone(),
                packets_per_second: per_second(packets(&p.total), packets(&o.total)),
                bits_per_second: 8.0 * per_second(bytes(&p.total), bytes(&o.total)),
                redirected_packets_per_second: per_second(
                    p.total.redirected_packets,
                    o.total.redirected_packets,
                ),
                passed_packets_per_second: per_second(
                    p.total.passed_packets,
                    o.total.passed_packets,
                ),
                dropped_packets_per_second: per_second(
                    p.total.dropped_packets,
                    o.total.dropped_packets,
                ),
            })
        })
        .collect();
    busiest_first(&mut out);
    out
}

/// By bits, then packets, per second.
fn busiest_first(rates: &mut [PairRate]) {
    rates.sort_by(|a, b| {
        b.bits_per_second
            .total_cmp(&a.bits_per_second)
            .then(b.packets_per_second.total_cmp(&a.packets_per_second))
            .then(a.node.cmp(&b.node))
            .then(a.pod.cmp(&b.pod))
    });
}

pub struct WatchOptions {
    pub interval: Duration,
    /// Stop after this many refreshes.
    pub count: Option<u64>,
    pub json: bool,
    /// The table's columns (`-o wide`: all of them).
    pub width: Width,
    /// Redraw the table in place (a terminal); otherwise tables follow one
    /// another, a blank line apart, with no control codes (a file, a pipe).
    pub redraw: bool,
    /// Watching every topology (none selected): one taken down meanwhile
    /// leaves the watch instead of ending it.
    pub all: bool,
}

/// One refresh of the table: after the codes that home the cursor and
/// clear the screen on a terminal, or after a blank line elsewhere.
fn frame(table: &str, redraw: bool, first: bool) -> String {
    match (redraw, first) {
        (true, _) => format!("\x1b[H\x1b[2J{table}"),
        (false, true) => table.to_string(),
        (false, false) => format!("\n{table}"),
    }
}

/// Prints per-pair rates every interval until Ctrl-C or `count`: a table
/// redrawn in place, or one JSON line per interval.
pub async fn watch(
    host: &Host,
    topologies: &[Topology],
    options: &WatchOptions,
    out: &mut impl Write,
) -> Result<()> {
    let mut watched = topologies.to_vec();
    let (mut taken, mut before) = snapshot(host, &mut watched, options.all).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut shown = 0;
    while options.count.is_none_or(|c| shown < c) {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(options.interval) => {}
        }
        let (now, after) = snapshot(host, &mut watched, options.all).await?;
        let elapsed = now - taken;
        let current = rates(&before, &after, elapsed);
        show(&current, elapsed.as_secs_f64(), options, shown == 0, out)?;
        (taken, before) = (now, after);
        shown += 1;
    }
    Ok(())
}

/// One refresh: a JSON line, or the table.
fn show(
    rates: &[PairRate],
    seconds: f64,
    options: &WatchOptions,
    first: bool,
    out: &mut impl Write,
) -> Result<()> {
    if options.json {
        let line = WatchLine {
            interval_seconds: seconds,
            pairs: rates.to_vec(),
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    } else {
        let table = to_table(rates, Duration::from_secs_f64(seconds), options.width);
        write!(out, "{}", frame(&table, options.redraw, first))?;
    }
    out.flush()?;
    Ok(())
}

/// One line of `stats --watch --json`.
#[derive(Serialize, Deserialize)]
struct WatchLine {
    interval_seconds: f64,
    pairs: Vec<PairRate>,
}

/// `stats --watch` of labs from their machine: every node's own watch
/// (JSON lines at the same interval), one refresh once each node still
/// watching has sent its interval, the pairs marked with their node.
pub async fn watch_labs(
    labs: &[String],
    options: &WatchOptions,
    out: &mut impl Write,
) -> Result<()> {
    let interval = options.interval.as_secs_f64().to_string();
    let node_args = |lab: &str| {
        [
            "stats",
            "--watch",
            "--json",
            "-n",
            lab,
            "--interval",
            &interval,
        ]
        .map(String::from)
        .into()
    };
    let mut nodes = NodeStreams::start(labs, node_args)?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut latest: BTreeMap<_, WatchLine> = BTreeMap::new();
    let mut shown = 0;
    while options.count.is_none_or(|c| shown < c) {
        let next = tokio::select! {
            _ = &mut ctrl_c => break,
            next = nodes.next_line() => next,
        };
        let Some((node, line)) = next else { break };
        let mut interval: WatchLine = serde_json::from_str(&line)
            .with_context(|| format!("node {} of {}: {line:?}", node.node, node.lab))?;
        for pair in &mut interval.pairs {
            pair.node = Some(node.node.clone());
        }
        latest.insert(node, interval);
        if latest.len() >= nodes.running() {
            let seconds = latest
                .values()
                .map(|l| l.interval_seconds)
                .fold(0.0, f64::max);
            let mut pairs: Vec<PairRate> = latest.into_values().flat_map(|l| l.pairs).collect();
            busiest_first(&mut pairs);
            show(&pairs, seconds, options, shown == 0, out)?;
            (latest, shown) = (BTreeMap::new(), shown + 1);
        }
    }
    nodes.finish().await
}

/// The counters of every watched topology, now. Watching all of them
/// (`all`), one that can no longer be read — taken down since the watch
/// began — leaves the watch with a note instead of ending it: with many
/// topologies on a node, one going away is ordinary.
async fn snapshot(
    host: &Host,
    watched: &mut Vec<Topology>,
    all: bool,
) -> Result<(Instant, Vec<TopologyStats>)> {
    let mut stats = Vec::with_capacity(watched.len());
    let mut kept = Vec::with_capacity(watched.len());
    for t in watched.drain(..) {
        match super::stats(host, &t).await {
            Ok(s) => {
                stats.push(s);
                kept.push(t);
            }
            Err(e) if all => {
                let _ = writeln!(
                    std::io::stderr(),
                    "vethctl: topology {:?} can no longer be read, no longer watched: {e:#}",
                    t.name
                );
            }
            Err(e) => return Err(e),
        }
    }
    *watched = kept;
    Ok((Instant::now(), stats))
}

/// `12.3k`, `4.56M`, `1.20G`: rates at a glance.
pub fn si(value: f64) -> String {
    let (scaled, unit) = match value {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if unit.is_empty() {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.2}{unit}")
    }
}

/// The rates as a table: packets per second by verdict and, wide, the
/// host veth and the verdicts' column names in full.
pub fn to_table(rates: &[PairRate], elapsed: Duration, width: Width) -> String {
    let verdicts = match width {
        Width::Fit => ["REDIRECTED", "PASSED", "DROPPED"],
        Width::Wide => ["REDIRECTED PKT/S", "PASSED PKT/S", "DROPPED PKT/S"],
    };
    let nodes = rates.iter().any(|r| r.node.is_some());
    let mut rows = vec![row([
        "TOPOLOGY",
        "NODE",
        "POD",
        "HOST VETH",
        "PKT/S",
        "BIT/S",
        verdicts[0],
        verdicts[1],
        verdicts[2],
    ])];
    for r in rates {
        rows.push(row([
            &r.topology,
            r.node.as_deref().unwrap_or("-"),
            &r.pod,
            &r.host_veth,
            &si(r.packets_per_second),
            &si(r.bits_per_second),
            &si(r.redirected_packets_per_second),
            &si(r.passed_packets_per_second),
            &si(r.dropped_packets_per_second),
        ]));
    }
    for r in &mut rows {
        if width == Width::Fit {
            r.remove(3);
        }
        if !nodes {
            r.remove(1);
        }
    }
    // Fitting 80 columns, the verdicts' headers leave their unit to this line.
    let what = match width {
        Width::Fit => "packets/s per pair",
        Width::Wide => "per-pair rates",
    };
    format!(
        "{what} over {:.1} s, both directions, busiest first (Ctrl-C to stop)\n{}",
        elapsed.as_secs_f64(),
        render_fitting(&rows, width, 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::PairStats;
    use veth_common::Verdicts;

    #[test]
    fn only_a_terminal_gets_control_codes() {
        assert_eq!(frame("T\n", true, true), "\x1b[H\x1b[2JT\n");
        assert_eq!(frame("T\n", true, false), "\x1b[H\x1b[2JT\n");
        assert_eq!(frame("T\n", false, true), "T\n");
        assert_eq!(frame("T\n", false, false), "\nT\n");
    }

    fn stats(pod: &str, redirected: u64, bytes: u64, drops: u64) -> TopologyStats {
        let total = Verdicts {
            redirected_packets: redirected,
            redirected_bytes: bytes,
            dropped_packets: drops,
            ..Verdicts::default()
        };
        TopologyStats {
            name: "demo".into(),
            pairs: vec![PairStats {
                pod: pod.into(),
                namespace: None,
                host_veth: format!("demo-{pod}"),
                host_ifindex: 1,
                total,
                from_pod: total,
                to_pod: Verdicts::default(),
                drops: BTreeMap::new(),
            }],
            unknown_veth_drops: 0,
            underlay_drops: 0,
            across_nodes: false,
        }
    }

    #[test]
    fn rates_are_per_second_and_busiest_first() {
        let before = [stats("a", 100, 10_000, 0), stats("b", 0, 0, 0)];
        let mut after_a = stats("a", 300, 30_000, 4);
        after_a.pairs.extend(stats("b", 1000, 1_000_000, 0).pairs);
        let mut before_all = before[0].clone();
        before_all.pairs.extend(before[1].pairs.clone());
        let r = rates(&[before_all], &[after_a], Duration::from_secs(2));
        assert_eq!(r[0].pod, "b");
        assert_eq!(r[0].packets_per_second, 500.0);
        assert_eq!(r[0].bits_per_second, 4_000_000.0);
        assert_eq!(r[1].pod, "a");
        assert_eq!(r[1].packets_per_second, 102.0);
        assert_eq!(r[1].dropped_packets_per_second, 2.0);
    }

    #[test]
    fn recreated_pairs_do_not_go_negative_and_new_pairs_wait() {
        let r = rates(
            &[stats("a", 100, 100, 0)],
            &[stats("a", 5, 5, 0)],
            Duration::from_secs(1),
        );
        assert_eq!(r[0].packets_per_second, 0.0);
        let r = rates(&[], &[stats("a", 5, 5, 0)], Duration::from_secs(1));
        assert!(r.is_empty());
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(12_345.0), "12.35k");
        assert_eq!(si(4_560_000.0), "4.56M");
        assert_eq!(si(1.2e9), "1.20G");
    }
}
