//! Batching in the scheduler: which worker gets which jobs, in batches sized by each task's
//! measured time to the batch target, within the byte cap, the order window and the sources'
//! turns; jobs of a task the worker lacks are answered here.

use std::collections::HashMap;

use corral_protocol::{Batch, BatchDone, BatchId, RawJson, RunningWord, TaskIndex, WorkerId};

use super::speed::{Pace, ewma, speed_of};
use super::{Action, InFlight, Phase, Scheduler};
use crate::record::{ErrorKind, Job, JobError, Jobs, SourceId, TaskId, TaskNames};

/// A worker's index for each job's task. Jobs mostly name the task the previous one named, so
/// the last answer is kept and the name looked up only when the task changes.
struct TaskLookup<'a> {
    names: &'a TaskNames,
    tasks: &'a HashMap<Box<str>, TaskIndex>,
    last: Option<(TaskId, TaskIndex)>,
}

impl TaskLookup<'_> {
    fn index(&mut self, task: TaskId) -> Option<TaskIndex> {
        if let Some((id, index)) = self.last
            && id == task
        {
            return Some(index);
        }
        let index = self.tasks.get(&*self.names.name(task)).copied()?;
        self.last = Some((task, index));
        Some(index)
    }
}

impl Scheduler {
    /// Hands batches to ready workers, one per worker per round, until the queue is empty or
    /// every worker has its fill.
    pub(super) fn dispatch(&mut self) {
        if self.draining {
            return;
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        // Until a job has been answered nothing says the jobs are short: the first worker
        // ready takes no batch ahead while another is still starting, or that one would find
        // the work gone (two slow jobs on two workers would take twice one's time).
        let unmeasured_start = self.per_job_nanos.is_none()
            && self
                .workers
                .values()
                .any(|slot| slot.phase == Phase::Starting);
        let depth = if unmeasured_start { 1 } else { self.depth() };
        // Level by level: every worker gets its first batch before any gets a second.
        for level in 1..=depth {
            for &id in &ids {
                if self.pending.is_empty() {
                    return;
                }
                let slot = &self.workers[&id];
                if slot.takes_batches() && slot.in_flight.len() < level {
                    self.send_batch(id);
                }
            }
        }
    }

    /// Updates the speed of each task in an answered batch, a run of jobs of one task at a
    /// time (a batch is nearly always of one task).
    pub(super) fn learn_task_speeds(&mut self, jobs: &Jobs, done: &BatchDone) {
        let mut i = 0;
        while i < jobs.len().min(done.outcomes.len()) {
            let task = Pace::Task(jobs[i].as_one().expect("a batch of job lines").task);
            let (mut total, mut count) = (0u64, 0u64);
            while i < jobs.len().min(done.outcomes.len())
                && jobs[i].as_one().map(|one| Pace::Task(one.task)) == Some(task)
            {
                total += done.outcomes[i].nanos;
                count += 1;
                i += 1;
            }
            self.learn_speed(task, total as f64 / count as f64);
        }
    }

    /// Updates the speed of `task` with a sample of nanoseconds per job.
    pub(super) fn learn_speed(&mut self, task: Pace, sample: f64) {
        match self.task_nanos.iter_mut().find(|(t, _)| *t == task) {
            Some((_, avg)) => *avg = ewma(Some(*avg), sample),
            None => self.task_nanos.push((task, sample)),
        }
    }

    /// Batches one worker holds at once. More than one hides the round trip between an answer
    /// and the next batch, which short jobs feel; a job slower than the batch target does not,
    /// and one queued behind another on a busy worker at the end of the input would wait while
    /// a worker beside it sits idle.
    pub(super) fn depth(&self) -> usize {
        match self.per_job_nanos {
            Some(nanos) if nanos >= self.cfg.batch_target.as_nanos() as f64 => 1,
            _ => self.cfg.batches_in_flight,
        }
    }

    /// Jobs in a batch that starts with a job of `task`: what its task takes in the batch
    /// target; one job while the task's speed is not known yet.
    pub(super) fn batch_size(&self, task: Option<Pace>) -> usize {
        let cap = self.cfg.max_batch_jobs;
        let mut size = self.batch_size_by_time(task, cap);
        if self.input_ended || self.cfg.spread_always {
            // Near the end, spread what is left over every worker instead of loading one.
            let ready = self
                .workers
                .values()
                .filter(|s| s.phase == Phase::Ready)
                .count()
                .max(1);
            size = size.min(self.pending.len().div_ceil(ready * self.depth()).max(1));
        }
        size
    }

    /// Jobs of `task` that take the batch target, at most `cap`.
    pub(super) fn batch_size_by_time(&self, task: Option<Pace>, cap: usize) -> usize {
        let nanos = task.and_then(|task| speed_of(&self.task_nanos, task));
        let by_time = match nanos {
            None => 1,
            Some(nanos) => (self.cfg.batch_target.as_nanos() as f64 / nanos.max(50.0)) as usize,
        };
        by_time.clamp(1, cap.min(RunningWord::MAX_BATCH_JOBS))
    }

    /// Builds and sends one batch to `worker`; false when nothing could be sent.
    pub(super) fn send_batch(&mut self, worker: WorkerId) -> bool {
        if self.pending.front().is_some_and(Job::is_lines) {
            return self.send_lines(worker);
        }
        let mut size = self.batch_size(
            self.pending
                .front()
                .and_then(Job::as_one)
                .map(|one| Pace::Task(one.task)),
        );
        let slot = self
            .workers
            .get_mut(&worker)
            .expect("dispatch passes live workers");
        if let Some(max) = self.cfg.max_jobs_per_worker {
            // Never hand a worker more than it may run before it is recycled.
            let room = max.saturating_sub(slot.jobs_done + slot.jobs_in_flight());
            size = size.min(room as usize);
            if size == 0 {
                return false;
            }
        }
        let order_limit = self.reorder.as_ref().map(|r| r.next + r.window);
        let capacity = size.min(self.pending.len());
        let job_ids = slot.job_ids;
        let mut batch = Batch {
            id: BatchId(self.next_batch),
            jobs: Vec::with_capacity(capacity),
            inputs: RawJson(Vec::with_capacity(capacity * 32)),
            ..Batch::default()
        };
        let mut lookup = TaskLookup {
            names: &self.names,
            tasks: &slot.tasks,
            last: None,
        };
        // A group of jobs read together that makes a batch of a good size on its own goes out
        // whole: its vector moves, not each job.
        let whole = self.pending.front_group().filter(|group| {
            let n = group.jobs.len();
            n <= size
                && 2 * n >= size
                && group.bytes <= self.cfg.max_batch_bytes
                && !group.retries
                && order_limit.is_none_or(|limit| group.jobs.iter().all(|job| job.seq.0 < limit))
        });
        if let Some(group) = whole {
            let known = group.jobs.iter().all(|job| {
                let Some(one) = job.as_one() else {
                    return false;
                };
                match lookup.index(one.task) {
                    Some(task) => {
                        batch.push(task, one.input.as_bytes());
                        if job_ids {
                            batch.push_id(one.id.as_bytes());
                        }
                        true
                    }
                    None => false,
                }
            });
            if known {
                let jobs = self
                    .pending
                    .pop_group()
                    .expect("the group was just seen")
                    .jobs;
                return self.send(worker, batch, jobs);
            }
            // A job names a task the worker lacks: take the jobs one by one, to answer it.
            batch.jobs.clear();
            batch.inputs.0.clear();
            batch.ids.0.clear();
            batch.id_ends.clear();
        }
        let mut jobs = Jobs::with_capacity(capacity);
        let mut unknown = Vec::new();
        // The batch was sized for its first job's task. It stays within that job's source (the
        // sources take turns a batch each, and a batch sized for one client's fast task must
        // not carry another's slow jobs), and takes a job of another task only while the
        // measured times still fit the batch target.
        let target = self.cfg.batch_target.as_nanos() as f64;
        let mut planned = 0.0;
        let mut first: Option<(SourceId, TaskId)> = None;
        while let Some(next) = self.pending.front() {
            if order_limit.is_some_and(|limit| next.seq.0 >= limit) {
                break;
            }
            // A block of lines goes in a batch of its own.
            let Some(one) = next.as_one() else {
                break;
            };
            let alone = next.failed_attempts > 0;
            let speed = speed_of(&self.task_nanos, Pace::Task(one.task));
            // A job of a task the worker lacks is answered here, not sent: it costs nothing.
            let served = lookup.index(one.task);
            if let Some((source, task)) = first
                && (next.source != source
                    || (served.is_some()
                        && one.task != task
                        && speed.is_none_or(|n| planned + n > target)))
            {
                break;
            }
            if !jobs.is_empty()
                && (jobs.len() >= size
                    || batch.inputs.0.len() + one.input.as_bytes().len() > self.cfg.max_batch_bytes
                    || alone)
            {
                break;
            }
            let Some(task) = served else {
                let served: Vec<&str> = lookup.tasks.keys().map(|k| &**k).collect();
                let message = corral_protocol::jobline::unknown_task_message(
                    &self.names.name(one.task),
                    &served,
                );
                let job = self.pending.pop_front().expect("front exists");
                self.outstanding -= 1;
                let error = JobError::new(ErrorKind::UnknownTask, message);
                unknown.push(job.into_result(0, None, Err(error)));
                continue;
            };
            first.get_or_insert((next.source, one.task));
            planned += speed.unwrap_or(target);
            batch.push(task, one.input.as_bytes());
            if job_ids {
                batch.push_id(one.id.as_bytes());
            }
            let job = self.pending.pop_front().expect("front exists");
            jobs.push_back(job);
            if alone {
                break;
            }
        }
        let answered = !unknown.is_empty();
        for result in unknown {
            self.emit(result);
        }
        if jobs.is_empty() {
            // Unknown tasks were answered: the caller may try again.
            return answered;
        }
        self.send(worker, batch, jobs)
    }

    /// Records `jobs` as in flight on `worker` and sends their `batch`.
    pub(super) fn send(&mut self, worker: WorkerId, batch: Batch, jobs: Jobs) -> bool {
        let slot = self.workers.get_mut(&worker).expect("still live");
        self.next_batch += 1;
        // Sources take turns, a batch each.
        self.pending.rotate();
        slot.in_flight.push_back(InFlight {
            id: batch.id,
            jobs,
            answered: 0,
        });
        self.actions.push(Action::Send { worker, batch });
        true
    }
}
