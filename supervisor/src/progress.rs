//! Progress on stderr: done (of total, once the input has been read), rate, ETA, failures and
//! restarts. On a terminal a live bar; elsewhere (`--progress` into a log or a pipe) a plain
//! line every few seconds, since a bar's redrawing means nothing in a file.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::record::JobResult;

/// When stderr is not a terminal: the first plain line comes after a second, the next ones
/// every few seconds.
const FIRST_LINE: Duration = Duration::from_secs(1);
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A progress display fed with results as they are written.
pub struct Progress {
    bar: ProgressBar,
    /// Without a terminal: when the last plain line was written (see FIRST_LINE).
    plain: Option<Cell<Instant>>,
    started: Instant,
    done: Cell<u64>,
    total: Cell<Option<u64>>,
    failed: Cell<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// A bar with an unknown total, drawn on stderr at most 10 times a second; or, when stderr
    /// is not a terminal, plain lines.
    pub fn new() -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {human_pos} jobs, {per_sec} {msg}")
                .expect("a valid template"),
        );
        let now = Instant::now();
        Progress {
            bar,
            // As if a line had been written just before, so the first comes after FIRST_LINE.
            plain: (!terminal).then(|| Cell::new(now - (LINE_EVERY - FIRST_LINE))),
            started: now,
            done: Cell::new(0),
            total: Cell::new(None),
            failed: Cell::new(0),
        }
    }

    /// The total is known: show a bar and an ETA.
    pub fn set_total(&self, total: u64) {
        self.total.set(Some(total));
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
        let count: u64 = results.iter().map(JobResult::count).sum();
        self.done.set(self.done.get() + count);
        self.bar.inc(count);
        if failed > 0 || restarts > 0 {
            self.bar
                .set_message(format!("({failed} failed, {restarts} restarts)"));
        }
        if let Some(last) = &self.plain
            && last.get().elapsed() >= LINE_EVERY
        {
            last.set(Instant::now());
            self.line(restarts);
        }
    }

    /// Writes the plain line (no terminal), whether results come or not: called on the
    /// engine's tick, so a run whose jobs stall still says it is alive and how far it got.
    pub fn tick(&self, restarts: u64) {
        if let Some(last) = &self.plain
            && last.get().elapsed() >= LINE_EVERY
        {
            last.set(Instant::now());
            self.line(restarts);
        }
    }

    fn line(&self, restarts: u64) {
        let done = self.done.get();
        let secs = self.started.elapsed().as_secs_f64();
        let of = self.total.get().map_or(String::new(), |t| format!("/{t}"));
        let _ = writeln!(
            std::io::stderr().lock(),
            "corral: progress: {done}{of} jobs, {:.0} jobs/s, {} failed, {restarts} restarts, {:.0}s",
            done as f64 / secs.max(1e-9),
            self.failed.get(),
            secs
        );
    }

    /// Removes the bar, leaving the line for the summary.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
