//! Measured speeds: nanoseconds per job of each task, or per line of blocks, as moving averages
//! that batches are sized by.

use crate::record::TaskId;

/// What a speed is measured for: the jobs of one task, or the lines of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Jobs of a task, each a job line.
    Task(TaskId),
    /// Lines of blocks, which a worker reads and answers itself.
    Lines,
}

/// The measured nanoseconds per job (or line) of `pace` among `speeds`, if any.
pub(super) fn speed_of(speeds: &[(Pace, f64)], pace: Pace) -> Option<f64> {
    speeds
        .iter()
        .find(|(p, _)| *p == pace)
        .map(|&(_, nanos)| nanos)
}

/// A moving average that follows a change in a few samples.
pub(super) fn ewma(average: Option<f64>, sample: f64) -> f64 {
    match average {
        None => sample,
        Some(avg) => 0.7 * avg + 0.3 * sample,
    }
}
