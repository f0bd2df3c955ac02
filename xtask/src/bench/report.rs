//! Medians with spread, per-round paired ratios, and the files a person or
//! a script reads: a table, JSON, CSV and an SVG chart.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::{bail, Result};
use plotters::{
    coord::types::RangedCoordf64,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde::Serialize;

use super::median;
use crate::cmd;
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
    /// Median over rounds of (this path / limit) in the same round: how
    /// far it is from a program that only redirects.
    pub ratio_to_limit: Option<f64>,
    /// Median over rounds of (this path / the run's baseline), if it has one.
    pub ratio_to_baseline: Option<f64>,
    /// Median over rounds of (this path / its twin), if the run pairs it
    /// with one (cross-node: `ebpf` with `host-gw`).
    pub ratio_to_twin: Option<f64>,
    /// Median over rounds of (this path's program ns/run / `limit+map`'s)
    /// in the same round: what its program costs against the least a
    /// dataplane program does (issue 19's program-time target).
    pub program_to_limit_map: Option<f64>,
}

/// What a run's ratio columns compare each path with, in the same round.
#[derive(Clone, Copy, Debug)]
pub enum Compare<'a> {
    /// `bench paths`: × bridge, × pair, × limit; the chart against bridge.
    Paths,
    /// × one path of the run (a scale run's smallest), then × limit.
    Baseline(&'a str),
    /// × each path's twin (`(path, twin)` pairs), then × one path of the
    /// run; the chart against the first pair's twin.
    Twins(&'a [(&'a str, &'a str)], &'a str),
}

impl Compare<'_> {
    /// The path the chart divides by and the one drawn dashed across it.
    fn chart_paths(&self) -> Option<(&str, &str)> {
        match *self {
            Compare::Paths => Some(("bridge", LIMIT)),
            Compare::Baseline(_) => None,
            Compare::Twins(twins, reference) => twins.first().map(|(_, twin)| (*twin, reference)),
        }
    }
}

/// The reference path every run measures: a TCX program doing nothing but
/// `bpf_redirect_peer` (see `limit.rs`).
pub const LIMIT: &str = "limit";

/// The reference with one hash lookup and one per-CPU counter besides the
/// redirect (see `limit.rs`): what program times are divided by.
pub const LIMIT_MAP: &str = "limit+map";

/// limit+map plus what routing a frame to a local pod takes besides the
/// checks: the MAC and TTL rewrite (and the unclone prologue it brings),
/// the MTU test, the `DEVMAP` proof (see `limit.rs`). Its
/// `program × limit+map` is the least any checked redirect can reach.
pub const LIMIT_REWRITE: &str = "limit+rewrite";

/// `path`'s value ÷ `base`'s in the same round, for every round that
/// measured both under `workload` (and `base` moved something).
pub fn paired_ratios(samples: &[Sample], workload: Workload, path: &str, base: &str) -> Vec<f64> {
    paired_ratios_of(samples, workload, (path, base), |s| Some(s.value))
}

/// The same for any measure `of` a sample (rounds where either side has
/// none are left out).
fn paired_ratios_of(
    samples: &[Sample],
    workload: Workload,
    (path, base): (&str, &str),
    of: impl Fn(&Sample) -> Option<f64>,
) -> Vec<f64> {
    let measure = |p: &str, round: usize| {
        samples
            .iter()
            .find(|s| s.workload == workload && s.path == p && s.round == round)
            .and_then(&of)
    };
    samples
        .iter()
        .filter(|s| s.workload == workload && s.path == path)
        .filter_map(|s| {
            let (v, b) = (of(s)?, measure(base, s.round)?);
            (b > 0.0).then(|| v / b)
        })
        .collect()
}

pub fn summarize(samples: &[Sample], compare: Compare) -> Vec<Summary> {
    let mut by_key: BTreeMap<(Workload, &str), Vec<&Sample>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for s in samples {
        if !order.contains(&s.path.as_str()) {
            order.push(&s.path);
        }
        by_key.entry((s.workload, &s.path)).or_default().push(s);
    }
    let median_of = |ratios: Vec<f64>| (!ratios.is_empty()).then(|| median(&ratios));
    let paired = |workload: Workload, path: &str, base: &str| {
        median_of(paired_ratios(samples, workload, path, base))
    };
    let program_paired = |workload: Workload, path: &str| {
        median_of(paired_ratios_of(
            samples,
            workload,
            (path, LIMIT_MAP),
            |s| s.program_ns_per_run,
        ))
    };
    let mut out = Vec::new();
    for workload in Workload::ALL {
        for path in &order {
            let Some(list) = by_key.get(&(workload, *path)) else {
                continue;
            };
            let (baseline, twin) = match compare {
                Compare::Paths => (None, None),
                Compare::Baseline(b) => (Some(b), None),
                Compare::Twins(twins, b) => (
                    Some(b),
                    twins.iter().find(|(p, _)| p == path).map(|(_, t)| *t),
                ),
            };
            out.push(Summary {
                path: path.to_string(),
                spread: Spread::of(workload, list),
                ratio_to_bridge: paired(workload, path, "bridge"),
                ratio_to_pair: paired(workload, path, "pair"),
                ratio_to_limit: paired(workload, path, LIMIT),
                ratio_to_baseline: baseline.and_then(|b| paired(workload, path, b)),
                ratio_to_twin: twin.and_then(|t| paired(workload, path, t)),
                program_to_limit_map: program_paired(workload, path),
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
/// Its ratio columns are `compare`'s.
pub fn table(summary: &[Summary], rounds: usize, seconds: u64, compare: Compare) -> String {
    let mut out = format!(
        "medians over {rounds} interleaved round(s) of {seconds} s per path; ratios are per-round paired medians\n\n"
    );
    let columns = ratio_columns(compare);
    let headers: String = columns.iter().map(|(h, _)| format!(" {h} |")).collect();
    out += &format!(
        "| workload | path | median (min–max) | unit |{headers} p50 µs | p99 µs | retrans | loss % | CPU | program ns/run | program × {LIMIT_MAP} |\n"
    );
    out += &format!("|{}\n", " --- |".repeat(11 + columns.len()));
    for summary in summary {
        let ratios: String = columns
            .iter()
            .map(|(_, ratio)| format!(" {} |", fmt_opt(ratio(summary), |r| format!("{r:.2}"))))
            .collect();
        let s = &summary.spread;
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}–{}) | {} |{ratios} {} | {} | {} | {} | {} | {} | {} |",
            s.workload.name(),
            summary.path,
            fmt_value(s.median),
            fmt_value(s.min),
            fmt_value(s.max),
            s.unit,
            fmt_opt(s.p50_us, |v| format!("{v:.1}")),
            fmt_opt(s.p99_us, |v| format!("{v:.1}")),
            fmt_opt(s.retransmits, |v| format!("{v:.0}")),
            fmt_opt(s.loss_percent, |v| format!("{v:.1}")),
            fmt_opt(s.cpu_ns_per_unit, |v| format!(
                "{v:.0} {}",
                s.workload.cpu_unit()
            )),
            fmt_opt(s.program_ns_per_run, |v| format!("{v:.0}")),
            fmt_opt(summary.program_to_limit_map, |r| format!("{r:.2}")),
        );
    }
    out += "\n";
    for workload in Workload::ALL {
        if summary.iter().any(|s| s.spread.workload == workload) {
            let _ = writeln!(out, "- `{}`: {}", workload.name(), workload.description());
        }
    }
    out
}

/// A ratio column of the table: its header and its value.
type RatioColumn = (String, fn(&Summary) -> Option<f64>);

fn ratio_columns(compare: Compare) -> Vec<RatioColumn> {
    let limit: RatioColumn = (format!("× {LIMIT}"), |s| s.ratio_to_limit);
    match compare {
        Compare::Baseline(b) => vec![(format!("× {b}"), |s| s.ratio_to_baseline), limit],
        Compare::Twins(_, b) => vec![
            ("× twin".into(), |s| s.ratio_to_twin),
            (format!("× {b}"), |s| s.ratio_to_baseline),
        ],
        Compare::Paths => vec![
            ("× bridge".into(), |s| s.ratio_to_bridge),
            ("× pair".into(), |s| s.ratio_to_pair),
            limit,
        ],
    }
}

/// Writes `<stem>.json`, `<stem>.csv` and, for a run whose chart has its
/// reference path in it, the chart as `<stem>.svg` and `<stem>.png`.
pub fn write_files(
    dir: &Path,
    stem: &str,
    summary: &[Summary],
    samples: &[Sample],
    compare: Compare,
) -> Result<()> {
    fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(
            &serde_json::json!({ "summary": summary, "samples": samples }),
        )?,
    )?;
    let mut csv = String::from(
        "workload,path,round,value,unit,p50_us,p99_us,retransmits,loss_percent,cpu_ns_per_unit,program_ns_per_run\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{}",
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
            o(s.program_ns_per_run),
        );
    }
    fs::write(dir.join(format!("{stem}.csv")), csv)?;
    let charted = compare
        .chart_paths()
        .filter(|(base, _)| summary.iter().any(|s| s.path == *base));
    if let Some(reference) = charted {
        let svg = dir.join(format!("{stem}.svg"));
        chart(&svg, stem, summary, reference)?;
        // plotters' bitmap backend would need a font library; Debian's
        // librsvg renders the SVG with the system's fonts instead.
        cmd::run(
            std::process::Command::new("rsvg-convert")
                .arg("-b")
                .arg("white")
                .arg("-o")
                .arg(dir.join(format!("{stem}.png")))
                .arg(&svg),
        )?;
    }
    Ok(())
}

/// Bar fills, one per path: a ramp from dark to light (viridis stops), so
/// neighbours differ in lightness and stay apart in grey-scale print; every
/// other path is also hatched.
const FILLS: [RGBColor; 7] = [
    RGBColor(0x44, 0x01, 0x54),
    RGBColor(0x44, 0x39, 0x83),
    RGBColor(0x31, 0x68, 0x8e),
    RGBColor(0x21, 0x91, 0x8c),
    RGBColor(0x35, 0xb7, 0x79),
    RGBColor(0x90, 0xd7, 0x43),
    RGBColor(0xfd, 0xe7, 0x25),
];

/// How the `i`-th path's bars look: fill, hatched or not, and a hatch
/// colour that shows on that fill.
fn bar_style(i: usize) -> (RGBColor, bool, RGBColor) {
    let fill = FILLS[i % FILLS.len()];
    let light =
        0.299 * f64::from(fill.0) + 0.587 * f64::from(fill.1) + 0.114 * f64::from(fill.2) > 128.0;
    (fill, i % 2 == 1, if light { BLACK } else { WHITE })
}

/// A bar in pixel coordinates: fill, optional diagonal hatch, outline.
fn draw_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (x0, y0): (i32, i32),
    (x1, y1): (i32, i32),
    i: usize,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (fill, hatched, ink) = bar_style(i);
    let (left, right, top, bottom) = (x0.min(x1), x0.max(x1), y0.min(y1), y0.max(y1));
    area.draw(&Rectangle::new(
        [(left, top), (right, bottom)],
        fill.filled(),
    ))?;
    if hatched {
        // Lines of slope 1 every 6 px, clipped to the bar.
        let h = bottom - top;
        let mut k = left - h;
        while k < right {
            let (t0, t1) = ((left - k).max(0), (right - k).min(h));
            if t0 < t1 {
                area.draw(&PathElement::new(
                    vec![(k + t0, bottom - t0), (k + t1, bottom - t1)],
                    ink.stroke_width(1),
                ))?;
            }
            k += 6;
        }
    }
    area.draw(&Rectangle::new(
        [(left, top), (right, bottom)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

/// An error bar from `lo` to `hi` with a dot at `mid`, black on a white
/// halo so it shows on dark and light bars alike.
fn whisker<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<DB, Cartesian2d<RangedCoordf64, Y>>,
    x: f64,
    (lo, mid, hi): (f64, f64, f64),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    for style in [WHITE.stroke_width(3), BLACK.stroke_width(1)] {
        chart.draw_series(std::iter::once(ErrorBar::new_vertical(
            x, lo, mid, hi, style, 6,
        )))?;
    }
    Ok(())
}

/// The two lines under a workload's group of bars.
/// A workload's two-line label, centred under its group of bars at `(cx, cy)`.
fn draw_group_label<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (cx, cy): (i32, i32),
    workload: Workload,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (first, second) = group_label(workload);
    let centred = |size| {
        ("sans-serif", size)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top))
    };
    area.draw(&Text::new(first, (cx, cy + 8), centred(13)))?;
    area.draw(&Text::new(second, (cx, cy + 24), centred(12)))?;
    Ok(())
}

fn group_label(workload: Workload) -> (&'static str, &'static str) {
    let second = match workload {
        Workload::TcpRr | Workload::UdpRr | Workload::TcpCrr => "2 CPUs",
        Workload::TcpRrSameCpu | Workload::UdpRrSameCpu | Workload::TcpCrrSameCpu => "same CPU",
        Workload::TcpBulk => "1 stream",
        Workload::TcpBulkPerCpu => "stream per CPU",
        Workload::UdpRate => "64 B flood",
    };
    (workload.name(), second)
}

/// Two panels under a legend strip. Top: every workload, each path's
/// median divided by `base`'s median (bridge in `bench paths`), min–max as
/// error bars, the `dashed` path's level (the limit) as a dashed line
/// across each workload's bars. Bottom: the request/response latencies,
/// p50 as the bar and p99 as a whisker.
fn chart(path: &Path, stem: &str, summary: &[Summary], (base, dashed): (&str, &str)) -> Result<()> {
    let mut paths: Vec<&str> = Vec::new();
    for s in summary {
        if !paths.contains(&s.path.as_str()) {
            paths.push(&s.path);
        }
    }
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| summary.iter().any(|s| s.spread.workload == *w))
        .collect();
    let find = |w: Workload, p: &str| {
        summary
            .iter()
            .find(|s| s.spread.workload == w && s.path == p)
    };
    let base_median = |w: Workload| find(w, base).map(|s| s.spread.median);

    let root = SVGBackend::new(path, (1280, 1060)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(80);
    let (top, bottom) = body.split_vertically(560);

    // Legend strip, above both panels, so it never covers a bar.
    head.draw(&Text::new(
        format!("vethctl bench {stem}: medians over interleaved rounds; error bars: min–max over rounds"),
        (20, 10),
        ("sans-serif", 20).into_font(),
    ))?;
    let swatch = 120;
    for (i, p) in paths.iter().enumerate() {
        let x = 20 + swatch * i as i32;
        draw_bar(&head, (x, 44), (x + 28, 66), i)?;
        head.draw(&Text::new(
            p.to_string(),
            (x + 34, 48),
            ("sans-serif", 15).into_font(),
        ))?;
    }

    // Top panel: every workload relative to the base.
    let width = paths.len() + 1;
    let span = (workloads.len() * width) as f64;
    let ymax = summary
        .iter()
        .filter_map(|s| Some(s.spread.max / base_median(s.spread.workload)?))
        .filter(|v| v.is_finite())
        .fold(1.5f64, f64::max)
        * 1.05;
    let mut rates = ChartBuilder::on(&top)
        .caption(
            format!("rate relative to {base}: path median ÷ {base} median (higher is better); dashed: {dashed}"),
            ("sans-serif", 17),
        )
        .margin_left(15)
        .margin_right(15)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..span, 0f64..ymax)?;
    rates
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(format!("× {base}"))
        .draw()?;
    rates.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (span, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    for (g, &workload) in workloads.iter().enumerate() {
        let Some(base) = base_median(workload).filter(|b| *b > 0.0) else {
            continue;
        };
        for (i, p) in paths.iter().enumerate() {
            let Some(s) = find(workload, p) else {
                continue;
            };
            let x0 = (g * width + i) as f64 + 0.1;
            let xm = x0 + 0.4;
            let (lo, mid, hi) = (
                s.spread.min / base,
                s.spread.median / base,
                s.spread.max / base,
            );
            draw_bar(
                &root,
                rates.backend_coord(&(x0, 0.0)),
                rates.backend_coord(&(x0 + 0.8, mid)),
                i,
            )?;
            whisker(&mut rates, xm, (lo, mid, hi))?;
        }
        // The limit's level across the group: each bar's distance to it is
        // its distance to what the kernel allows.
        if let Some(limit) = find(workload, dashed) {
            let (x0, y) = ((g * width) as f64, limit.spread.median / base);
            rates.draw_series(DashedLineSeries::new(
                [(x0, y), (x0 + paths.len() as f64, y)],
                6,
                4,
                BLACK.stroke_width(2),
            ))?;
        }
        let at = rates.backend_coord(&((g * width) as f64 + (paths.len() as f64) / 2.0, 0.0));
        draw_group_label(&root, at, workload)?;
    }

    // Bottom panel: request/response latency.
    let rr: Vec<Workload> = workloads.iter().copied().filter(|w| w.is_rr()).collect();
    // Logarithmic: p99 can be a hundred times p50 on a busy machine.
    let latencies = || {
        summary
            .iter()
            .filter(|s| s.spread.workload.is_rr())
            .flat_map(|s| [s.spread.p50_us, s.spread.p99_us])
            .flatten()
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lmax = latencies().fold(10.0f64, f64::max) * 1.3;
    let lmin = latencies().fold(lmax, f64::min).min(10.0) * 0.7;
    let lspan = (rr.len() * width) as f64;
    let mut latency = ChartBuilder::on(&bottom)
        .caption(
            "request/response round trip, µs, log scale (lower is better): bar p50, whisker up to p99",
            ("sans-serif", 17),
        )
        .margin_left(15)
        .margin_right(15)
        .margin_bottom(10)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..lspan.max(1.0), (lmin..lmax).log_scale())?;
    latency
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("µs")
        .draw()?;
    for (g, &workload) in rr.iter().enumerate() {
        for (i, p) in paths.iter().enumerate() {
            let Some((p50, p99)) =
                find(workload, p).and_then(|s| Some((s.spread.p50_us?, s.spread.p99_us?)))
            else {
                continue;
            };
            let x0 = (g * width + i) as f64 + 0.1;
            let xm = x0 + 0.4;
            draw_bar(
                &root,
                latency.backend_coord(&(x0, lmin)),
                latency.backend_coord(&(x0 + 0.8, p50)),
                i,
            )?;
            whisker(&mut latency, xm, (p50, p50, p99))?;
        }
        let at = latency.backend_coord(&((g * width) as f64 + (paths.len() as f64) / 2.0, 0.0));
        draw_group_label(&root, at, workload)?;
    }
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
        let summary = summarize(&samples, Compare::Baseline("pair"));
        let tc = summary.iter().find(|s| s.path == "tc").unwrap();
        assert_eq!(tc.ratio_to_bridge, Some(2.0));
        assert_eq!(tc.ratio_to_pair, Some(1.0));
        assert_eq!(tc.ratio_to_baseline, Some(1.0));
        assert_eq!(tc.spread.median, 100.0);
        assert_eq!((tc.spread.min, tc.spread.max), (20.0, 200.0));
        assert!(table(&summary, 3, 1, Compare::Paths).contains(
            "| udp_64b_rate | tc | 100 (20.00–200) | packets/s received | 2.00 | 1.00 |"
        ));
    }

    #[test]
    fn program_times_are_paired_with_limit_map_per_round() {
        // limit+map's program time moves between rounds (placement, noise);
        // tc's stays at 1.5 times it. Paths without a program show a dash.
        let timed = |path: &str, round: usize, ns: f64| Sample {
            program_ns_per_run: Some(ns),
            ..sample(path, round, 1.0)
        };
        let samples = [
            timed("limit+map", 0, 80.0),
            timed("tc", 0, 120.0),
            sample("pair", 0, 1.0),
            timed("limit+map", 1, 100.0),
            timed("tc", 1, 150.0),
            sample("pair", 1, 1.0),
            timed("limit+map", 2, 60.0),
            timed("tc", 2, 90.0),
            sample("pair", 2, 1.0),
        ];
        let summary = summarize(&samples, Compare::Baseline("pair"));
        let program = |path: &str| {
            summary
                .iter()
                .find(|s| s.path == path)
                .unwrap()
                .program_to_limit_map
        };
        assert_eq!(program("tc"), Some(1.5));
        assert_eq!(program("limit+map"), Some(1.0));
        assert_eq!(program("pair"), None);
        let table = table(&summary, 3, 1, Compare::Baseline("pair"));
        assert!(table.contains("| program ns/run | program × limit+map |"));
        assert!(table.contains("| 120 | 1.50 |"), "{table}");
        assert!(table.contains("| - | - |"), "{table}");
    }

    #[test]
    fn every_path_has_its_paired_ratio_to_the_limit() {
        // The limit moves with the machine's noise; tc stays at half of it.
        let samples = [
            sample("limit", 0, 400.0),
            sample("tc", 0, 200.0),
            sample("bridge", 0, 100.0),
            sample("pair", 0, 200.0),
            sample("limit", 1, 40.0),
            sample("tc", 1, 20.0),
            sample("bridge", 1, 10.0),
            sample("pair", 1, 20.0),
            sample("limit", 2, 100.0),
            sample("tc", 2, 40.0),
            sample("bridge", 2, 20.0),
            sample("pair", 2, 50.0),
        ];
        let summary = summarize(&samples, Compare::Paths);
        let ratio = |path: &str| {
            summary
                .iter()
                .find(|s| s.path == path)
                .unwrap()
                .ratio_to_limit
        };
        assert_eq!(ratio("tc"), Some(0.5));
        assert_eq!(ratio("limit"), Some(1.0));
        assert_eq!(ratio("bridge"), Some(0.25));
        let table = table(&summary, 3, 1, Compare::Paths);
        assert!(table.contains("| unit | × bridge | × pair | × limit | p50 µs |"));
        assert_eq!(table.lines().nth(3).unwrap().matches("---").count(), 14);
        assert!(table.contains(
            "| udp_64b_rate | tc | 40.00 (20.00–200) | packets/s received | 2.00 | 1.00 | 0.50 |"
        ));
    }

    #[test]
    fn a_run_without_the_limit_shows_a_dash() {
        let samples = [sample("bridge", 0, 100.0), sample("tc", 0, 200.0)];
        let summary = summarize(&samples, Compare::Paths);
        assert_eq!(summary[1].ratio_to_limit, None);
        assert!(table(&summary, 1, 1, Compare::Paths).contains("| 2.00 | - | - |"));
    }

    #[test]
    fn a_scale_run_shows_its_baseline_then_the_limit() {
        let samples = [
            sample("tc-2pods", 0, 100.0),
            sample("tc-1000pods", 0, 80.0),
            sample("limit", 0, 160.0),
        ];
        let summary = summarize(&samples, Compare::Baseline("tc-2pods"));
        let table = table(&summary, 1, 1, Compare::Baseline("tc-2pods"));
        assert!(table.contains("| unit | × tc-2pods | × limit | p50 µs |"));
        assert!(table
            .contains("| tc-1000pods | 80.00 (80.00–80.00) | packets/s received | 0.80 | 0.50 |"));
    }

    #[test]
    fn a_twins_run_shows_each_path_against_its_twin_then_the_reference() {
        let samples = [
            sample("host-gw", 0, 100.0),
            sample("ebpf", 0, 120.0),
            sample("same-node", 0, 200.0),
            sample("host-gw", 1, 10.0),
            sample("ebpf", 1, 11.0),
            sample("same-node", 1, 20.0),
        ];
        let compare = Compare::Twins(&[("ebpf", "host-gw")], "same-node");
        let summary = summarize(&samples, compare);
        let ebpf = summary.iter().find(|s| s.path == "ebpf").unwrap();
        assert!((ebpf.ratio_to_twin.unwrap() - 1.15).abs() < 1e-9);
        assert_eq!(summary[0].ratio_to_twin, None);
        let table = table(&summary, 2, 1, compare);
        assert!(table.contains("| unit | × twin | × same-node | p50 µs |"));
        assert!(table.contains("| host-gw | 55.00 (10.00–100) | packets/s received | - | 0.50 |"));
        assert_eq!(compare.chart_paths(), Some(("host-gw", "same-node")));
    }

    #[test]
    fn the_chart_has_both_panels_and_every_path() {
        let paths = [
            "loopback",
            "pair",
            "bridge",
            "routed",
            "tc",
            "tc-rps",
            "xdp",
            "limit",
            "limit+map",
        ];
        let mut samples = Vec::new();
        for round in 0..3 {
            for workload in Workload::ALL {
                for (i, path) in paths.iter().enumerate() {
                    let mut s = Sample::new(path, workload, round);
                    s.value = 1000.0 * (1.0 + i as f64 / 4.0) * (1.0 + round as f64 / 10.0);
                    if workload.is_rr() {
                        s.p50_us = Some(10.0 + i as f64);
                        s.p99_us = Some(40.0 + 10.0 * i as f64);
                    }
                    samples.push(s);
                }
            }
        }
        let summary = summarize(&samples, Compare::Paths);
        let file = std::env::temp_dir().join(format!("xtask-chart-{}.svg", std::process::id()));
        chart(&file, "paths", &summary, ("bridge", LIMIT)).unwrap();
        let svg = fs::read_to_string(&file).unwrap();
        let _ = fs::remove_file(&file);
        for label in
            paths
                .iter()
                .chain(&["tcp_rr_same_cpu", "tcp_crr", "log scale", "dashed: limit"])
        {
            assert!(svg.contains(label), "{label} in the chart");
        }
    }

    #[test]
    fn a_silent_path_fails_the_quick_check() {
        assert!(check_every_path_carried_traffic(&[sample("tc", 0, 5.0)]).is_ok());
        let err = check_every_path_carried_traffic(&[sample("tc", 0, 5.0), sample("xdp", 0, 0.0)])
            .unwrap_err();
        assert!(err.to_string().contains("xdp under udp_64b_rate"));
    }
}
