//! Every sentence the scheduler says: notes for the log, why a worker is killed or recycled,
//! why a run ends, and the messages of failed jobs. This is the one place in the scheduler
//! that names command-line flags, so that a renamed flag or a reworded message is one change.

use std::time::Duration;

use super::config::{HaltRule, RestartPolicy};
use super::types::WorkerExit;

fn duration(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// The name of a job running in a block of lines: its line.
pub(super) fn on_line(line: u64) -> String {
    format!("on line {line}")
}

/// Why a worker is recycled when the pool shrinks.
pub(super) fn resized(workers: usize) -> String {
    format!("the pool now runs {workers} workers")
}

/// Why a worker is recycled after running its share of jobs.
pub(super) fn ran_jobs(done: u64, max: u64) -> String {
    format!("it ran {done} jobs (--max-jobs-per-worker {max})")
}

/// Why a worker is recycled when its memory grew too large.
pub(super) fn memory_reached(rss: u64, max: u64) -> String {
    format!(
        "its memory reached {} (--max-rss {})",
        bytes(rss),
        bytes(max)
    )
}

/// Why a worker is killed for answering what it was not asked.
pub(super) fn wrong_batch(pid: u32) -> String {
    format!("worker {pid} answered a batch it was not running")
}

/// Why a worker is killed for answering a block of lines as one job.
pub(super) fn block_as_one_job(pid: u32) -> String {
    format!("worker {pid} answered a block of lines as one job")
}

/// Why a run ends when workers do not start.
pub(super) fn start_failures(count: u32, last: &str) -> String {
    format!("workers failed to start {count} times in a row; the last one: {last}")
}

/// Why a run ends when workers die before any work, again and again.
pub(super) fn died_before_work(
    count: u32,
    pid: u32,
    exit: &WorkerExit,
    note: Option<&str>,
) -> String {
    let why = note.map(|note| format!(": {note}")).unwrap_or_default();
    format!(
        "workers died before finishing any work {count} times in a row; the last one (pid {pid}) {exit}{why}"
    )
}

/// The last death, as the restart budget's end names it.
pub(super) fn last_death(pid: u32, exit: &WorkerExit) -> String {
    format!("pid {pid}, {exit}")
}

/// Why a run ends when the restart budget is spent.
pub(super) fn restarts_spent(policy: &RestartPolicy, last: &str) -> String {
    format!(
        "workers keep dying: more than {} restarts within {}, even with backoff (the last one: {last}); see --max-restarts and --restart-period",
        policy.max_restarts,
        duration(policy.period),
    )
}

/// Why a run halts.
pub(super) fn halted(failed: u64, rule: &HaltRule) -> String {
    format!("halted after {failed} failed jobs (--halt {rule})")
}

/// The note of a job whose worker died running it.
pub(super) fn failed_attempt(
    name: &str,
    line: u64,
    timed_out: bool,
    pid: u32,
    exit: &WorkerExit,
    attempt: u32,
    attempts: u32,
) -> String {
    let what = if timed_out { "timed out on" } else { "crashed" };
    format!(
        "job {name} (line {line}) {what} worker {pid} ({exit}); attempt {attempt} of {attempts}"
    )
}

/// The message of a job that timed out on its last attempt.
pub(super) fn timed_out(
    timeout: Option<Duration>,
    pid: u32,
    attempt: u32,
    attempts: u32,
) -> String {
    let limit = timeout.map(|t| duration(t).to_string()).unwrap_or_default();
    format!(
        "ran longer than {limit}; worker {pid} and its process group were killed (attempt {attempt} of {attempts})"
    )
}

/// The message of a job whose worker died running it on its last attempt; `memory_limit` is
/// named when the way it died is how a job over it dies.
pub(super) fn crashed(
    pid: u32,
    exit: &WorkerExit,
    (attempt, attempts): (u32, u32),
    note: Option<&str>,
    memory_limit: Option<u64>,
) -> String {
    let mut message =
        format!("worker {pid} {exit} while running this job (attempt {attempt} of {attempts})");
    if let Some(note) = note {
        message.push_str(": ");
        message.push_str(note);
    }
    if let Some(limit) = memory_limit {
        message.push_str(&format!(
            "; workers run under --memory-limit {}, which this job may have exceeded",
            bytes(limit)
        ));
    }
    message
}

/// Why a worker is killed when its job runs past `--timeout`.
pub(super) fn ran_longer(job: &str, timeout: Duration) -> String {
    format!("job {job} ran longer than {}", duration(timeout))
}

/// The note of a job that has run long (`timeout_set`: whether `--timeout` will end it).
pub(super) fn running_long(job: &str, ran: Duration, pid: u32, timeout_set: bool) -> String {
    let hint = if timeout_set {
        ""
    } else {
        " (no --timeout is set to end it)"
    };
    format!(
        "job {job} has been running for {} on worker {pid}{hint}",
        duration(ran)
    )
}

/// Why a retired worker is killed.
pub(super) fn lingering(grace: Duration) -> String {
    format!(
        "it did not exit within {} of the end of its input (a thread or timer that keeps it alive?)",
        duration(grace)
    )
}
