//! The scheduler's notes of finished jobs ([`JobNote`]), when its config asks for them: made
//! where each answer or death is known, with the time each job started reckoned from it.

use std::time::Instant;

use corral_protocol::LineCount;

use super::{Scheduler, WorkerExit, lines::Death};
use crate::notes::{Counted, Ended, JobNote};
use crate::record::{Completed, Job, JobError, JobResult, ResultKey, TaskId, Work};

impl Scheduler {
    /// Notes `job`, answered with `result` after running `nanos` from `started`.
    pub(super) fn note_ran(
        &mut self,
        job: &Job,
        result: &Result<Completed, Box<JobError>>,
        started: Instant,
        nanos: u64,
    ) {
        let Work::One(one) = &job.work else { return };
        let exec = self.exec_task.is_some() && self.exec_task == Some(one.task);
        let exec_output = exec
            .then(|| match result {
                Ok(done) => Some(done.output.clone()),
                Err(error) => error.output.clone(),
            })
            .flatten();
        self.noted.notes.push(JobNote {
            task: Some(one.task),
            started: Some(started),
            nanos,
            failed: result.as_ref().err().map(|error| error.kind),
            ended: exec_output.map(|output| {
                Box::new(Ended {
                    exec_output: Some(output),
                    ..Ended::default()
                })
            }),
            ..JobNote::unrun(job.line, None)
        });
    }

    /// Notes `result` if its job never ran; the jobs that ran are noted where their answer or
    /// their death is known.
    pub(super) fn note_unrun(&mut self, result: &JobResult) {
        let line = match &result.key {
            _ if result.attempts > 0 => return,
            ResultKey::Job { line, .. } | ResultKey::Line(line) => *line,
            // A block's lines are counted, and written in the joblog, by its worker.
            ResultKey::Lines(_) => return,
        };
        let failed = result.outcome.as_ref().err().map(|error| error.kind);
        self.noted.notes.push(JobNote::unrun(line, failed));
    }

    /// Counts the lines of a batch of blocks, as a worker whose task numbers are `task_ids`
    /// counted them.
    pub(super) fn count_lines(&mut self, task_ids: &[Option<TaskId>], counts: &[LineCount]) {
        self.noted.counts.extend(counts.iter().map(|count| {
            Counted {
                task: count
                    .task
                    .and_then(|index| task_ids.get(index.0 as usize).copied().flatten()),
                failed: count.failed,
                count: count.count,
                nanos: count.nanos,
                buckets: count.buckets,
            }
        }));
    }

    /// Notes `job`, failed for good by its worker's `death`.
    pub(super) fn note_death(&mut self, job: &Job, error: &JobError, death: &Death<'_>) {
        let task = job.as_one().map(|one| one.task);
        let (exit_code, signal) = match death.exit {
            WorkerExit::Code(code) => (Some(*code), None),
            WorkerExit::Signal(signal) => (None, Some(signal.0)),
        };
        let ran = death.at.saturating_duration_since(death.since);
        self.noted.notes.push(JobNote {
            task,
            started: Some(death.since),
            nanos: u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX),
            ended: Some(Box::new(Ended {
                exit_code,
                signal,
                exec_output: None,
            })),
            ..JobNote::unrun(job.line, Some(error.kind))
        });
    }
}
