//! Medians with spread, per-round paired ratios, and the files a person or
//! a script reads: a table, JSON, CSV and an SVG chart.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::{bail, Result};
use plotters::prelude::*;
use serde::Serialize;

use super::median;
use veth_bench::Spread;
pub use veth_bench::{Sample, Workload};

/// One path under one workload, over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub path: String,
    #[serde(flatten)]
    pub spread: Spread,
    /// Median over rounds of (this path / bridge) in the same round.
    pub ratio_to_bridge: Option<f64>,
    /// Median over rounds of (this path / pair) in the same round.
    pub ratio_to_pair: Option<f64>,
    /// Median over rounds of (this path / the run's baseline), if it has one.
    pub ratio_to_baseline: Option<f64>,
}

pub fn summarize(samples: &[Sample], baseline: Option<&str>) -> Vec<Summary> {
    let mut by_key: BTreeMap<(Workload, &str), Vec<&Sample>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for s in samples {
        if !order.contains(&s.path.as_str()) {
            order.push(&s.path);
        }
        by_key.entry((s.workload, &s.path)).or_default().push(s);
    }
    let value_in = |workload: Workload, path: &str, round: usize| {
        by_key
            .get(&(workload, path))
            .and_then(|v| v.iter().find(|s| s.round == round))
            .map(|s| s.value)
    };
    let paired = |workload: Workload, path: &str, base: &str| -> Option<f64> {
        let ratios: Vec<f64> = by_key
            .get(&(workload, path))?
            .iter()
            .filter_map(|s| {
                let b = value_in(workload, base, s.round)?;
                (b > 0.0).then(|| s.value / b)
            })
            .collect();
        (!ratios.is_empty()).then(|| median(&ratios))
    };
    let mut out = Vec::new();
    for workload in Workload::ALL {
        for path in &order {
            let Some(list) = by_key.get(&(workload, *path)) else {
                continue;
            };
            out.push(Summary {
                path: path.to_string(),
                spread: Spread::of(workload, list),
                ratio_to_bridge: paired(workload, path, "bridge"),
                ratio_to_pair: paired(workload, path, "pair"),
                ratio_to_baseline: baseline.and_then(|b| paired(workload, path, b)),
            });
        }
    }
    out
}

fn fmt_value(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// The table printed at the end and copied into BENCHMARKS.md.
/// `baseline`: the path the third ratio column is relative to, if any
/// (e.g. the smallest topology in a scale run); else × bridge and × pair.
pub fn table(summary: &[Summary], rounds: usize, seconds: u64, baseline: Option<&str>) -> String {
    let mut out = format!(
        "medians over {rounds} interleaved round(s) of {seconds} s per path; ratios are per-round paired medians\n\n"
    );
    let (first, second) = match baseline {
        Some(b) => (format!("× {b}"), String::from("-")),
        None => (String::from("× bridge"), String::from("× pair")),
    };
    out += &format!(
        "| workload | path | median (min–max) | unit | {first} | {second} | p50 µs | p99 µs | retrans | loss % | CPU |\n"
    );
    out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for summary in summary {
        let (r1, r2) = match baseline {
            Some(_) => (summary.ratio_to_baseline, None),
            None => (summary.ratio_to_bridge, summary.ratio_to_pair),
        };
        let s = &summary.spread;
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}–{}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.workload.name(),
            summary.path,
            fmt_value(s.median),
            fmt_value(s.min),
            fmt_value(s.max),
            s.unit,
            fmt_opt(r1, |r| format!("{r:.2}")),
            fmt_opt(r2, |r| format!("{r:.2}")),
            fmt_opt(s.p50_us, |v| format!("{v:.1}")),
            fmt_opt(s.p99_us, |v| format!("{v:.1}")),
            fmt_opt(s.retransmits, |v| format!("{v:.0}")),
            fmt_opt(s.loss_percent, |v| format!("{v:.1}")),
            fmt_opt(s.cpu_ns_per_unit, |v| format!(
                "{v:.0} {}",
                s.workload.cpu_unit()
            )),
        );
    }
    out
}

/// Writes `<stem>.json`, `<stem>.csv` and, for a run with bridge in it,
/// `<stem>.svg`.
pub fn write_files(dir: &Path, stem: &str, summary: &[Summary], samples: &[Sample]) -> Result<()> {
    fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(
            &serde_json::json!({ "summary": summary, "samples": samples }),
        )?,
    )?;
    let mut csv = String::from(
        "workload,path,round,value,unit,p50_us,p99_us,retransmits,loss_percent,cpu_ns_per_unit\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{}",
            s.workload.name(),
            s.path,
            s.round,
            s.value,
            s.workload.unit(),
            o(s.p50_us),
            o(s.p99_us),
            o(s.retransmits.map(|r| r as f64)),
            o(s.loss_percent),
            o(s.cpu_ns_per_unit),
        );
    }
    fs::write(dir.join(format!("{stem}.csv")), csv)?;
    if summary.iter().any(|s| s.ratio_to_bridge.is_some()) {
        chart(&dir.join(format!("{stem}.svg")), summary)?;
    }
    Ok(())
}

/// Grouped bars: each path's median relative to bridge, per workload.
fn chart(path: &Path, summary: &[Summary]) -> Result<()> {
    let paths: Vec<&str> = {
        let mut p: Vec<&str> = Vec::new();
        for s in summary {
            if !p.contains(&s.path.as_str()) {
                p.push(&s.path);
            }
        }
        p
    };
    let max = summary
        .iter()
        .filter_map(|s| s.ratio_to_bridge)
        .fold(1.5f64, f64::max)
        * 1.1;
    let groups = Workload::ALL.len();
    let width = paths.len() + 1;
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "median rate relative to bridge (paired per round; higher is better)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(groups * width) as f64, 0f64..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("× bridge")
        .draw()?;
    let palette = [
        &BLACK,
        &RGBColor(120, 120, 120),
        &BLUE,
        &GREEN,
        &RED,
        &MAGENTA,
        &CYAN,
    ];
    for (g, workload) in Workload::ALL.iter().enumerate() {
        for (i, p) in paths.iter().enumerate() {
            let Some(r) = summary
                .iter()
                .find(|s| s.spread.workload == *workload && s.path == *p)
                .and_then(|s| s.ratio_to_bridge)
            else {
                continue;
            };
            let x0 = (g * width + i) as f64 + 0.1;
            let color = palette[i % palette.len()];
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + 0.8, r)],
                color.filled(),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            workload.name().to_string(),
            ((g * width) as f64 + 0.2, -0.05 * max),
            ("sans-serif", 14),
        )))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), ((groups * width) as f64, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    for (i, p) in paths.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                color.filled(),
            )))?
            .label(*p)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The quick mode's only verdict: a path that moved nothing is broken.
pub fn check_every_path_carried_traffic(samples: &[Sample]) -> Result<()> {
    let broken: Vec<String> = samples
        .iter()
        .filter(|s| s.value.is_nan() || s.value <= 0.0)
        .map(|s| format!("{} under {}", s.path, s.workload.name()))
        .collect();
    if !broken.is_empty() {
        bail!("no traffic through: {}", broken.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str, round: usize, value: f64) -> Sample {
        Sample {
            value,
            ..Sample::new(path, Workload::UdpRate, round)
        }
    }

    #[test]
    fn ratios_are_paired_per_round() {
        // Round 2 is noisy for everyone; pairing keeps the ratio at 2.
        let samples = [
            sample("bridge", 0, 100.0),
            sample("tc", 0, 200.0),
            sample("pair", 0, 200.0),
            sample("bridge", 1, 10.0),
            sample("tc", 1, 20.0),
            sample("pair", 1, 20.0),
            sample("bridge", 2, 50.0),
            sample("tc", 2, 100.0),
            sample("pair", 2, 100.0),
        ];
        let summary = summarize(&samples, Some("pair"));
        let tc = summary.iter().find(|s| s.path == "tc").unwrap();
        assert_eq!(tc.ratio_to_bridge, Some(2.0));
        assert_eq!(tc.ratio_to_pair, Some(1.0));
        assert_eq!(tc.ratio_to_baseline, Some(1.0));
        assert_eq!(tc.spread.median, 100.0);
        assert_eq!((tc.spread.min, tc.spread.max), (20.0, 200.0));
        assert!(table(&summary, 3, 1, None).contains(
            "| udp_64b_rate | tc | 100 (20.00–200) | packets/s received | 2.00 | 1.00 |"
        ));
    }

    #[test]
    fn a_silent_path_fails_the_quick_check() {
        assert!(check_every_path_carried_traffic(&[sample("tc", 0, 5.0)]).is_ok());
        let err = check_every_path_carried_traffic(&[sample("tc", 0, 5.0), sample("xdp", 0, 0.0)])
            .unwrap_err();
        assert!(err.to_string().contains("xdp under udp_64b_rate"));
    }
}
