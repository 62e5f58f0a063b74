//! What the report's two passes learn of a joblog, and the figures' shared measures: the
//! page ([`super::html`]) is drawn from these alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

/// Slices of the run's time span, for throughput and the aggregated timeline.
pub(super) const COLUMNS: usize = 480;
/// Most jobs drawn one by one on the timeline.
pub(super) const JOBS_DRAWN: usize = 2_000;
/// Slowest jobs listed.
pub(super) const SLOWEST: usize = 20;
/// Most rows of the aggregated timeline; more workers share rows.
pub(super) const MAX_ROWS: usize = 64;
/// Buckets of the job-time histogram per power of ten, from 1 ms (a joblog's times are in
/// milliseconds) to 10^5 s.
pub(super) const PER_DECADE: usize = 4;
pub(super) const DECADES: usize = 8;
pub(super) const FIRST_DECADE: i32 = -3;
/// Slices of the span per bar of the throughput figure.
pub(super) const SLICES_PER_BAR: usize = 4;
/// Longest command shown, in characters.
pub(super) const COMMAND_CHARS: usize = 160;

/// A slow job, for the table of the slowest.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Slow {
    pub(super) runtime: f64,
    pub(super) seq: u64,
    pub(super) outcome: String,
    pub(super) command: String,
}

impl Eq for Slow {}

impl PartialOrd for Slow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.runtime
            .total_cmp(&other.runtime)
            .then(other.seq.cmp(&self.seq))
    }
}

/// What the first pass learns.
#[derive(Debug, Default)]
pub(super) struct Summary {
    pub(super) jobs: u64,
    pub(super) ok: u64,
    pub(super) unreadable: u64,
    pub(super) first_start: f64,
    pub(super) last_end: f64,
    pub(super) runtime_total: f64,
    pub(super) outcomes: BTreeMap<String, u64>,
    /// Job times: `[0]` under 1 ms, then [`PER_DECADE`] per decade, the last open-ended.
    pub(super) histogram: Vec<u64>,
    pub(super) slowest: BinaryHeap<Reverse<Slow>>,
}

/// What the second pass learns, slice by slice of the span.
#[derive(Debug)]
pub(super) struct Timeline {
    /// Jobs that finished in each slice.
    pub(super) finished: Vec<u64>,
    /// Job-seconds of work in each slice.
    pub(super) busy: Vec<f64>,
    /// The jobs themselves, when there are few: start, end, ok, seq.
    pub(super) jobs: Option<Vec<(f64, f64, bool, u64)>>,
}

/// Where a job time goes in the histogram.
pub(super) fn bucket(seconds: f64) -> usize {
    if seconds < 1e-3 {
        return 0;
    }
    let at = ((seconds.log10() - f64::from(FIRST_DECADE)) * PER_DECADE as f64).floor();
    (at.max(0.0) as usize + 1).min(PER_DECADE * DECADES + 1)
}

/// The lower bound of histogram bucket `i` (> 0), in seconds.
pub(super) fn bucket_floor(i: usize) -> f64 {
    10f64.powf(f64::from(FIRST_DECADE) + (i - 1) as f64 / PER_DECADE as f64)
}

/// The start of the run's span and its length (never 0).
pub(super) fn span_of(summary: &Summary) -> (f64, f64) {
    if summary.jobs == 0 {
        return (0.0, 1.0);
    }
    let span = (summary.last_end - summary.first_start).max(1e-3);
    (summary.first_start, span)
}

/// Rows for `jobs` (sorted by start here): each job goes to the first row free when it starts,
/// as a worker would take it; returns each job's row and the number of rows.
pub(super) fn assign_rows(jobs: &mut [(f64, f64, bool, u64)]) -> (Vec<usize>, usize) {
    jobs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.3.cmp(&b.3)));
    let mut free_at: Vec<f64> = Vec::new();
    let rows = jobs
        .iter()
        .map(|&(start, end, _, _)| {
            // Starts and times rounded to the joblog's milliseconds may overlap by that much.
            match free_at.iter().position(|&t| t <= start + 1.5e-3) {
                Some(row) => {
                    free_at[row] = end;
                    row
                }
                None => {
                    free_at.push(end);
                    free_at.len() - 1
                }
            }
        })
        .collect();
    (rows, free_at.len().max(1))
}

/// `seconds` as people read a duration.
pub(super) fn duration(seconds: f64) -> String {
    let mut text = String::new();
    if seconds < 1e-3 {
        let _ = write!(text, "{:.0} µs", seconds * 1e6);
    } else if seconds < 1.0 {
        let _ = write!(text, "{:.1} ms", seconds * 1e3);
    } else if seconds < 120.0 {
        let _ = write!(text, "{seconds:.2} s");
    } else if seconds < 7200.0 {
        let _ = write!(text, "{:.1} min", seconds / 60.0);
    } else {
        let _ = write!(text, "{:.1} h", seconds / 3600.0);
    }
    text
}
