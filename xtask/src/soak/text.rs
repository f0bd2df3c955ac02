//! The report as text (pure): what ran and the headline figures, the
//! targets, latency by live pods, then every finding.

use std::fmt::Write as _;

use super::{
    report::{LatencyRow, Target},
    Agent, Footprint, Measured,
};

fn latency_table(rows: &[LatencyRow]) -> String {
    let mut s = String::from(
        "| verb | live pods | n | p50 ms | p99 ms | max ms |\n|---|---|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | ~{} ({}) | {} | {:.1} | {:.1} | {:.1} |",
            r.verb.name(),
            r.live_pods,
            r.live_range,
            r.n,
            r.p50_ms,
            r.p99_ms,
            r.max_ms
        );
    }
    s
}

fn targets_table(targets: &[Target]) -> String {
    let mut s = String::from("| verdict | target | measured |\n|---|---|---|\n");
    for t in targets {
        let _ = writeln!(s, "| {} | {} | {} |", t.verdict.label(), t.what, t.measured);
    }
    s
}

/// The agent's RSS at each plateau (what the target judges), and at the
/// same live count on the way down (kept from the peak, not judged), then
/// every 10th of the samples.
fn rss_table(a: &Agent) -> String {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let mut s = String::from(
        "Agent RSS at a constant live count (each plateau past its first fifth; the top one judged):\n\n\
         | churned pods | cycles | RSS floor MB, first → last third | MB per 1,000 cycles | on the way down (not judged) |\n\
         |--:|--:|---|--:|--:|\n",
    );
    for st in &a.judged {
        let _ = writeln!(
            s,
            "| {} | {}–{} | {:.1} → {:.1} | {:+.2} | {} |",
            st.plateau,
            st.from.cycle,
            st.to.cycle,
            mb(st.floor_early_kb),
            mb(st.floor_late_kb),
            st.per_1000(),
            st.way_down_kb
                .map_or("–".into(), |kb| format!("{:.1} MB", mb(kb)))
        );
    }
    let step = (a.rss.len() / 10).max(1);
    let shown: Vec<String> = a
        .rss
        .iter()
        .step_by(step)
        .chain(a.rss.last())
        .map(|r| format!("{}: {} pods {:.1} MB", r.cycle, r.live, mb(r.rss_kb)))
        .collect();
    let _ = writeln!(
        s,
        "\nRSS by cycle (cycle: live pods, RSS): {}",
        shown.join("; ")
    );
    s
}

/// The whole text: what ran and the headline figures, the targets,
/// latency, then the details.
pub fn text(m: &Measured) -> String {
    format!(
        "{}\n{}\nADD and DEL by live pods (successful executions that were not killed):\n\n{}\n{}\n{}",
        header(m),
        targets_table(&m.targets),
        latency_table(&m.latency),
        rss_table(&m.agent),
        details(m)
    )
}

fn header(m: &Measured) -> String {
    let (e, t, a) = (&m.executions, &m.traffic, &m.agent);
    let mb = |f: &Footprint| f.rss_kb as f64 / 1024.0;
    let mut s =
        format!(
        "soak: {} ADD/DEL cycles {} wide through veth-cni (network {}, tc, {}), plateaus at {:?} \
         live pods, {} % of ADDs and DELs killed with SIGKILL, seed {}, {:.0} s; load average {}\n",
        m.cycles,
        m.width,
        super::NETWORK,
        m.subnet,
        m.levels,
        m.kill_percent,
        m.seed,
        m.wall_s,
        m.loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        s,
        "kills: {} ADDs and {} DELs killed mid-way ({} came after the plugin had exited); {} \
         concurrent double ADDs of one id; {} ADD and {} DEL executions failed (retried as a \
         runtime does)",
        e.add_killed,
        e.del_killed,
        e.kills_too_late,
        e.double_added.len(),
        e.failed_adds,
        e.failed_dels
    );
    let _ = writeln!(
        s,
        "long-lived pods: {} datagrams at {}/s, {} lost, {} send errors, longest gap {:.1} ms; \
         TCP longest stall {:.1} ms, {} break(s)",
        t.sent,
        m.rate,
        t.lost,
        t.send_errors,
        t.longest_gap_ms,
        t.tcp_longest_stall_ms,
        t.connections_broken
    );
    let _ = writeln!(
        s,
        "agent: RSS {:.1} MB at start, {:.1} MB at the end; fds {} → {}; {}; it logged \
         \"endpoint removed\" {} time(s) for this network; {} status sweeps",
        mb(&a.start),
        mb(&a.end),
        a.start.fds,
        a.end.fds,
        if a.alive {
            "alive at the end"
        } else {
            "EXITED during the run"
        },
        a.endpoint_removed.len(),
        m.findings.sweeps
    );
    s
}

/// Shown at most, per kind of finding.
const SHOWN: usize = 12;

/// A titled list cut at [`SHOWN`] items; nothing when empty.
fn list(title: &str, items: &[String]) -> String {
    let mut s = String::new();
    if items.is_empty() {
        return s;
    }
    let _ = writeln!(s, "\n{title}:");
    for item in items.iter().take(SHOWN) {
        let _ = writeln!(s, "- {item}");
    }
    if items.len() > SHOWN {
        let _ = writeln!(s, "- … and {} more (all in soak.json)", items.len() - SHOWN);
    }
    s
}

/// The events and every finding, each list cut at [`SHOWN`].
fn details(m: &Measured) -> String {
    let (f, leaks, after_down, tally) = (&m.findings, &m.leaks, &m.leaks_after_down, &m.executions);
    let mut s = String::from(
        "disturbances during the churn (datagrams lost between the long-lived pods after each, \
         until the next):\n",
    );
    for e in &m.events {
        let _ = writeln!(
            s,
            "- at cycle {}: {} ({:.0} ms): {}; {} lost",
            e.at_cycle, e.what, e.ms, e.outcome, e.datagrams_lost_after
        );
    }
    let mut add = |title: String, items: Vec<String>| s += &list(&title, &items);
    add(
        format!("cut off ({} pods)", f.cut_off.len()),
        f.cut_off
            .iter()
            .map(|c| {
                format!(
                    "{} ({}): {}; last disturbance before it was found: {}",
                    c.pod,
                    c.ipv4.map_or("no address".into(), |a| a.to_string()),
                    c.how,
                    c.after_event
                )
            })
            .collect(),
    );
    add(
        format!(
            "addresses held by two live pods at once ({}; * = its ADD ran twice at once)",
            f.duplicates.len()
        ),
        f.duplicates
            .iter()
            .map(|(ip, pods)| {
                let marked: Vec<String> = pods
                    .iter()
                    .map(|p| match tally.double_added.contains(p) {
                        true => format!("{p}*"),
                        false => p.clone(),
                    })
                    .collect();
                format!("{ip}: {}", marked.join(", "))
            })
            .collect(),
    );
    add(
        "concurrent ADDs of one id that answered with two addresses".into(),
        f.double_add_two_addresses.clone(),
    );
    add(
        format!("stuck: the runtime's retries ran out ({})", f.stuck.len()),
        f.stuck
            .iter()
            .map(|st| format!("{}: {}: {}", st.pod, st.what, st.error))
            .collect(),
    );
    add(
        format!(
            "leaked at the end, compared with the start ({})",
            leaks.len()
        ),
        leaks
            .iter()
            .map(|l| format!("{}: {}", l.kind, l.what))
            .collect(),
    );
    add(
        format!("left after `vethctl down` ({})", after_down.len()),
        after_down
            .iter()
            .map(|l| format!("{}: {}", l.kind, l.what))
            .collect(),
    );
    let mut failures: Vec<(&String, &usize)> = tally.failures.iter().collect();
    failures.sort_by(|a, b| b.1.cmp(a.1));
    add(
        "plugin failures (not killed), by message".into(),
        failures.iter().map(|(m, n)| format!("{n}× {m}")).collect(),
    );
    add("sweep errors".into(), f.sweep_errors.clone());
    add(
        "what the agent logged removing this network's endpoints".into(),
        m.agent.endpoint_removed.clone(),
    );
    s
}
