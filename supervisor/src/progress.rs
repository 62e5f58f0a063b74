//! The live progress bar on stderr: done (of total, once the input has been read), rate, ETA,
//! failures and restarts. Drawn only on a terminal unless forced with `--progress`.

use std::cell::Cell;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::record::JobResult;

/// A progress bar fed with results as they are written.
pub struct Progress {
    bar: ProgressBar,
    failed: Cell<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// A bar with an unknown total, drawn on stderr at most 10 times a second.
    pub fn new() -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {human_pos} jobs, {per_sec} {msg}")
                .expect("a valid template"),
        );
        Progress {
            bar,
            failed: Cell::new(0),
        }
    }

    /// The total is known: show a bar and an ETA.
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_style(
            ProgressStyle::with_template(
                "[{bar:30}] {human_pos}/{human_len} jobs, {per_sec}, ETA {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    }

    /// Counts written results.
    pub fn record(&self, results: &[JobResult], restarts: u64) {
        let failed = self.failed.get() + results.iter().map(JobResult::failures).sum::<u64>();
        self.failed.set(failed);
        self.bar.inc(results.iter().map(JobResult::count).sum());
        if failed > 0 || restarts > 0 {
            self.bar
                .set_message(format!("({failed} failed, {restarts} restarts)"));
        }
    }

    /// Removes the bar, leaving the line for the summary.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
