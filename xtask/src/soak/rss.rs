//! The agent's RSS judged for growth (pure). Its RSS follows the live pod
//! count, and glibc keeps the memory of the highest demand reached: after
//! a peak of 1,000 pods the RSS stays near the peak's on the way down, so
//! comparing an early figure with the end reads the peak as growth (10.9
//! → 39.4 MB in the first long soak, with no leak: flat at a constant
//! count). Growth is therefore judged only between samples at one live
//! count, within the top plateau of the schedule (past its first fifth):
//! there the count holds while pods are added and deleted, and the demand
//! has reached its high, so a step up is not a new high kept. A lower
//! plateau can make one: a `mode set` at 500 pods (every veth changing at
//! once) stepped the RSS up by 4 MB within that plateau in one run, and
//! stayed. Every plateau is shown; only the top one is judged.
//!
//! Within it, the floors are compared: the lowest RSS of the stretch's
//! first third against that of its last third. The agent's RSS swings by
//! several MB around its periodic pass over every endpoint (allocated
//! during the pass, given back after it), and a sample at either end
//! could land on either side of one: three runs of one build read −77,
//! +33 and +15 MB per 1,000 cycles from the end samples. A leak raises the
//! floor; a pass in progress does not.

use serde::Serialize;

/// The agent's RSS when a cycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Cycles done (pods added and deleted) so far.
    pub cycle: usize,
    /// Pods attached then, the long-lived two included.
    pub live: usize,
    /// The plateau (live churned pods) the schedule was churning at, if
    /// any.
    pub plateau: Option<usize>,
    pub rss_kb: u64,
}

/// One plateau's judged stretch: the live count held throughout.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stretch {
    pub plateau: usize,
    pub from: Sample,
    pub to: Sample,
    /// The RSS when the live count next fell to this plateau's after the
    /// peak (shown, not judged: it keeps the peak's memory).
    pub way_down_kb: Option<u64>,
    /// The lowest RSS of the stretch's first and of its last third.
    pub floor_early_kb: u64,
    pub floor_late_kb: u64,
}

impl Stretch {
    pub fn cycles(&self) -> usize {
        self.to.cycle - self.from.cycle
    }

    /// The floor's rise from the first third to the last.
    pub fn growth_kb(&self) -> i64 {
        self.floor_late_kb as i64 - self.floor_early_kb as i64
    }

    /// MB per 1,000 cycles: the floors' rise over the cycles between the
    /// thirds' middles (two thirds of the stretch).
    pub fn per_1000(&self) -> f64 {
        let between = (self.cycles() as f64 * 2.0 / 3.0).max(1.0);
        self.growth_kb() as f64 / 1024.0 * 1000.0 / between
    }
}

/// The lowest RSS of the first and of the last third of `run`.
fn floors(run: &[Sample]) -> (u64, u64) {
    let third = (run.len() / 3).max(1);
    let floor = |part: &[Sample]| part.iter().map(|s| s.rss_kb).min().unwrap_or(0);
    (floor(&run[..third]), floor(&run[run.len() - third..]))
}

/// Fewer cycles judged than this: no verdict. The RSS moves in steps of
/// 0.1–0.3 MB at a constant count too, which over fewer cycles would read
/// as more than 1 MB per 1,000 (`--quick`'s ~100 at its top: +2.5).
pub const MIN_JUDGED_CYCLES: usize = 150;

/// Each plateau's stretch past its first fifth, in the order reached.
pub fn stretches(samples: &[Sample]) -> Vec<Stretch> {
    let mut out = Vec::new();
    let mut rest = samples;
    while let Some(start) = rest.iter().position(|s| s.plateau.is_some()) {
        let plateau = rest[start].plateau;
        let len = rest[start..]
            .iter()
            .take_while(|s| s.plateau == plateau)
            .count();
        let run = &rest[start..start + len];
        rest = &rest[start + len..];
        let (first, last) = (run[0], run[len - 1]);
        let settled = first.cycle + (last.cycle - first.cycle) / 5;
        let Some(from_at) = run.iter().position(|s| s.cycle >= settled) else {
            continue;
        };
        let from = &run[from_at];
        let (floor_early_kb, floor_late_kb) = floors(&run[from_at..]);
        let level = plateau.unwrap_or_default();
        let peak = samples.iter().map(|s| s.live).max().unwrap_or(0);
        let peak_at = samples.iter().position(|s| s.live == peak).unwrap_or(0);
        let way_down = samples[peak_at..]
            .iter()
            .find(|s| s.live <= last.live && peak > last.live)
            .map(|s| s.rss_kb);
        out.push(Stretch {
            plateau: level,
            from: *from,
            to: last,
            way_down_kb: way_down,
            floor_early_kb,
            floor_late_kb,
        });
    }
    out
}

/// The stretch the target judges: the top plateau's.
pub fn judged(stretches: &[Stretch]) -> Option<&Stretch> {
    stretches.iter().max_by_key(|s| s.plateau)
}

/// MB per 1,000 cycles within the top plateau; `None` when fewer than
/// [`MIN_JUDGED_CYCLES`] were judged there.
pub fn growth_per_1000(stretches: &[Stretch]) -> Option<f64> {
    let top = judged(stretches)?;
    (top.cycles() >= MIN_JUDGED_CYCLES).then(|| top.per_1000())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run through plateaus of 10, 100 and 500 churned pods, 250 cycles
    /// each, then every pod deleted; RSS from `rss(cycle, live)`.
    fn run(rss: impl Fn(usize, usize) -> f64) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut cycle = 0;
        let mut live = 2;
        let mut peak = 0;
        for level in [10, 100, 500] {
            // Climbing: cycles end only when pods are deleted.
            live = level + 2;
            peak = peak.max(live);
            for _ in 0..250 {
                cycle += 1;
                samples.push(Sample {
                    cycle,
                    live,
                    plateau: Some(level),
                    rss_kb: (rss(cycle, peak) * 1024.0) as u64,
                });
            }
        }
        while live > 2 {
            live -= 1;
            cycle += 1;
            samples.push(Sample {
                cycle,
                live,
                plateau: None,
                rss_kb: (rss(cycle, peak) * 1024.0) as u64,
            });
        }
        samples
    }

    #[test]
    fn the_peaks_retained_memory_is_not_growth() {
        // 10 MB plus 30 kB per pod of the highest count reached, kept on
        // the way down (10.9 → 25 MB from start to end).
        let samples = run(|_, peak| 10.0 + peak as f64 * 0.03);
        let first = samples.first().unwrap().rss_kb;
        assert!(samples.last().unwrap().rss_kb > first + 10 * 1024);
        let s = stretches(&samples);
        assert_eq!(
            s.iter().map(|s| s.plateau).collect::<Vec<_>>(),
            [10, 100, 500]
        );
        assert_eq!(s[0].from.cycle, 50);
        assert_eq!(s[0].cycles(), 200);
        assert!(s[0].way_down_kb.unwrap() > s[0].to.rss_kb + 10 * 1024);
        let g = growth_per_1000(&s).unwrap();
        assert!(g.abs() < 0.01, "{g}");
    }

    #[test]
    fn a_leak_misses_whatever_the_peak() {
        // The same, plus 2 MB per 1,000 cycles.
        let samples = run(|cycle, peak| 10.0 + peak as f64 * 0.03 + cycle as f64 * 0.002);
        let g = growth_per_1000(&stretches(&samples)).unwrap();
        assert!((g - 2.0).abs() < 0.05, "{g}");
        // A new high kept at a lower plateau (a burst of work there) is
        // not judged; the top plateau is flat.
        let samples = run(|cycle, peak| {
            let step = if cycle > 300 { 4.0 } else { 0.0 };
            10.0 + peak as f64 * 0.03 + step
        });
        let s = stretches(&samples);
        assert!(s[1].growth_kb() > 3 * 1024);
        assert!(growth_per_1000(&s).unwrap().abs() < 0.01);
        // Just past the target, with no peak to hide in.
        let samples = run(|cycle, _| 10.0 + cycle as f64 * 0.0012);
        let g = growth_per_1000(&stretches(&samples)).unwrap();
        assert!(g > 1.0, "{g}");
    }

    /// A periodic pass that allocates 8 MB for 5 of every 30 cycles,
    /// ending mid-pass: the end samples read it as growth, the floors do
    /// not; a leak under the same swings still misses.
    #[test]
    fn a_pass_in_progress_is_not_growth() {
        let swing = |cycle: usize| if cycle % 30 < 5 { 8.0 } else { 0.0 };
        let samples = run(|cycle, peak| 10.0 + peak as f64 * 0.03 + swing(cycle));
        let s = stretches(&samples);
        let top = judged(&s).unwrap();
        assert!(top.to.rss_kb > top.from.rss_kb + 7 * 1024, "ends mid-pass");
        assert!(growth_per_1000(&s).unwrap().abs() < 0.01);
        let samples =
            run(|cycle, peak| 10.0 + peak as f64 * 0.03 + swing(cycle) + cycle as f64 * 0.002);
        let g = growth_per_1000(&stretches(&samples)).unwrap();
        assert!(g > 1.0, "{g}");
    }

    #[test]
    fn too_few_cycles_at_a_count_give_no_verdict() {
        let samples: Vec<Sample> = (1..=150)
            .map(|cycle| Sample {
                cycle,
                live: 12,
                plateau: Some(10),
                rss_kb: 1000 + cycle as u64,
            })
            .collect();
        assert_eq!(growth_per_1000(&stretches(&samples)), None);
        assert!(stretches(&[]).is_empty());
    }
}
