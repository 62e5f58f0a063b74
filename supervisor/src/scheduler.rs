//! The scheduler: the pure state machine at the heart of a run. It owns every decision (which
//! jobs are queued, which batch each worker holds, attempts, restart budget, deadlines) and no
//! I/O: edges turn I/O into [`Event`]s, the scheduler answers with [`Action`]s, and time is
//! passed in, so its rules are unit-tested without processes or sleeps.
//!
//! Attribution after a crash: each worker publishes the job it is running in a shared word
//! (see [`RunningWord`]). When a worker dies, results it already delivered stand; the job its
//! word names gets a failed attempt; every other job it held goes back to the front of the queue
//! without penalty. A job that has failed before runs alone in its batch, so it cannot cost
//! others a re-run twice.
//!
//! Timeouts are enforced on the timer tick: a worker whose word names the same job for longer
//! than the timeout is killed, so a job is stopped between `timeout` and `timeout + tick`.
//!
//! Stopping early (a signal, or `--halt soon`) drains: no new batch goes out, the batches in
//! flight finish and their results are written, and jobs still queued get no result line (a
//! `--resume` run picks them up). `--halt now` kills the workers at once instead.
//!
//! With `keep_order`, results are released in input order. Only jobs within `window` of the
//! oldest unanswered one are dispatched, so memory stays bounded; one slow job at the head of
//! the window holds back the jobs behind it until it finishes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_protocol::{BatchDone, BatchId, Notes, RunningWord, TaskIndex, TaskResult, WorkerId};

use crate::input::JobParser;
use crate::notes::Noted;
use crate::record::{
    Completed, ErrorKind, InputChunk, Job, JobError, JobResult, Jobs, SharedBytes, TaskId,
    TaskNames, Work,
};

mod batching;
mod config;
mod deaths;
mod lines;
mod noting;
mod queue;
mod say;
mod speed;
mod status;
mod types;
pub use config::{HaltRule, HaltThreshold, RestartBudget, RestartPolicy, SchedulerConfig};
use queue::JobQueue;
use speed::{Pace, ewma};
pub use types::{
    Action, Event, RunCounters, StartCause, StartFailure, WorkerExit, WorkerState, WorkerView,
};

/// How long a job runs before the log says so (then again each time its time doubles).
pub const STALL_NOTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Retiring,
}

#[derive(Debug)]
struct InFlight {
    id: BatchId,
    /// The jobs not answered yet; the first is at index `answered` of the batch as sent.
    jobs: Jobs,
    /// Jobs of the batch already answered by partial answers.
    answered: usize,
}

impl InFlight {
    /// What names the job `word` says this batch's worker runs, its job at `index`: a job's
    /// id, or the number of a line in a block of lines.
    fn running_name(&self, index: usize, word: RunningWord) -> String {
        let job = &self.jobs[index];
        match &job.work {
            Work::One(one) => one.id.to_string(),
            Work::Lines(_) => {
                let line = word.index_in(self.id).unwrap_or(0) as u64;
                say::on_line(job.line + line)
            }
        }
    }

    /// Whether `word` names one of the jobs not answered yet, and which.
    fn running(&self, word: RunningWord) -> Option<usize> {
        if self.jobs.front().is_some_and(Job::is_lines) {
            // A block of lines is a batch's one job; the word names its line.
            return word.index_in(self.id).map(|_| 0);
        }
        (0..self.jobs.len()).find(|&i| word.is(self.id, self.answered + i))
    }
}

#[derive(Debug)]
struct WorkerSlot {
    phase: Phase,
    pid: u32,
    tasks: HashMap<Box<str>, TaskIndex>,
    /// The run's number for each of its tasks, by its index (for the notes of its lines).
    task_ids: Arc<[Option<TaskId>]>,
    /// Whether its batches carry the jobs' ids.
    job_ids: bool,
    in_flight: VecDeque<InFlight>,
    /// The running word last seen on a tick, and when it was first seen.
    word: RunningWord,
    word_since: Instant,
    /// Set when the scheduler killed the worker for a timeout: the word of the job that overran.
    timed_out: Option<RunningWord>,
    /// Set when the worker was killed for breaking the protocol.
    violation: Option<String>,
    /// Jobs answered by this worker.
    jobs_done: u64,
    /// Why it is being recycled; it takes no new batch and retires once idle.
    recycle: Option<String>,
    /// Whether `Retire` was sent.
    retire_sent: bool,
    /// When `Retire` was sent; cleared once the worker is killed for not exiting.
    retired_at: Option<Instant>,
    /// How long its running job had run when that was last said in the log.
    stall_noted: Option<Duration>,
}

impl WorkerSlot {
    fn new(now: Instant) -> WorkerSlot {
        WorkerSlot {
            phase: Phase::Starting,
            pid: 0,
            tasks: HashMap::new(),
            task_ids: Arc::default(),
            job_ids: false,
            in_flight: VecDeque::new(),
            word: RunningWord::IDLE,
            word_since: now,
            timed_out: None,
            violation: None,
            jobs_done: 0,
            recycle: None,
            retire_sent: false,
            retired_at: None,
            stall_noted: None,
        }
    }

    fn takes_batches(&self) -> bool {
        self.phase == Phase::Ready
            && self.timed_out.is_none()
            && self.violation.is_none()
            && self.recycle.is_none()
    }

    fn jobs_in_flight(&self) -> u64 {
        self.in_flight.iter().map(|b| b.jobs.len() as u64).sum()
    }
}

/// Holds results back until every earlier job has its result (`keep_order`).
#[derive(Debug)]
struct Reorder {
    next: u64,
    window: u64,
    held: BTreeMap<u64, JobResult>,
}

/// What the scheduler needs to send blocks of lines, and to read one of their lines itself.
#[derive(Debug)]
struct LineReading {
    parser: JobParser,
    max_line_bytes: u64,
    default_task: Option<String>,
}

/// The state machine. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    /// The run's task names, which jobs carry by number.
    names: TaskNames,
    pending: JobQueue,
    input_ended: bool,
    /// Jobs read and not yet answered.
    outstanding: u64,
    workers: BTreeMap<WorkerId, WorkerSlot>,
    /// Replacements owed, each with the earliest time it may start.
    spawns_due: Vec<Instant>,
    next_worker: u64,
    next_batch: u64,
    budget: RestartBudget,
    start_failures: u32,
    /// Moving average of task time per job, in nanoseconds, over every task.
    per_job_nanos: Option<f64>,
    /// The same for each task: a batch is sized by its first job's task, so that a slow task
    /// arriving after a fast one (another client of a service) is not sent in huge batches.
    task_nanos: Vec<(Pace, f64)>,
    rng: u64,
    stopped: bool,
    /// Stopping early: nothing new is dispatched.
    draining: bool,
    halt_reason: Option<String>,
    reorder: Option<Reorder>,
    /// Items read (jobs and rejected lines) and failed results so far, for `--halt`.
    read: u64,
    failed: u64,
    counters: RunCounters,
    actions: Vec<Action>,
    emitted: Vec<JobResult>,
    /// What was noted of the jobs finished in this step, when the config asks for it.
    noted: Noted,
    /// The number of the `exec` task, when notes are made (its notes keep its output).
    exec_task: Option<TaskId>,
    /// Set when blocks of raw lines may come (see [`Scheduler::read_lines_with`]).
    lines: Option<LineReading>,
}

impl Scheduler {
    /// A scheduler about to start `cfg.workers` workers, for jobs whose task numbers are from
    /// `names`. `seed` drives backoff jitter.
    pub fn new(cfg: SchedulerConfig, names: TaskNames, now: Instant, seed: u64) -> Scheduler {
        let spawns_due = vec![now; cfg.workers.max(1)];
        let cfg_reorder = cfg.keep_order.map(|window| Reorder {
            next: 0,
            window: window.max(1) as u64,
            held: BTreeMap::new(),
        });
        let exec_task = cfg
            .notes
            .joblog()
            .then(|| names.intern(crate::input::EXEC_TASK))
            .flatten();
        Scheduler {
            budget: RestartBudget::new(cfg.restart.clone()),
            cfg,
            names,
            pending: JobQueue::default(),
            input_ended: false,
            outstanding: 0,
            workers: BTreeMap::new(),
            spawns_due,
            next_worker: 1,
            next_batch: 1,
            start_failures: 0,
            per_job_nanos: None,
            task_nanos: Vec::new(),
            rng: seed | 1,
            stopped: false,
            draining: false,
            halt_reason: None,
            reorder: cfg_reorder,
            read: 0,
            failed: 0,
            counters: RunCounters::default(),
            actions: Vec::new(),
            emitted: Vec::new(),
            noted: Noted::default(),
            exec_task,
            lines: None,
        }
    }

    /// Whether the input reader should be asked for more lines. Under `keep_order`, not while
    /// the lines read reach past the order window: rejected lines behind a slow head are held
    /// for ordering too, and the window bounds them as it bounds the jobs.
    pub fn wants_input(&self) -> bool {
        !self.input_ended
            && !self.stopped
            && !self.draining
            && self.pending.len() < self.cfg.max_queued
            && self.pending.bytes() < self.cfg.max_queued_bytes
            && self
                .reorder
                .as_ref()
                .is_none_or(|r| self.read < r.next + r.window)
    }

    /// Ends the run at once (a second signal, the end of the grace period): nothing more is
    /// decided, and the results held back for ordering are returned, in input order, so that
    /// what is complete is still written.
    pub fn abandon(&mut self) -> Vec<JobResult> {
        self.stopped = true;
        let mut results = std::mem::take(&mut self.emitted);
        if let Some(reorder) = &mut self.reorder {
            results.extend(std::mem::take(&mut reorder.held).into_values());
        }
        results
    }

    /// Jobs waiting for a worker, and the sources they are of.
    pub fn queued(&self) -> (usize, usize) {
        (self.pending.len(), self.pending.sources())
    }

    /// Why the run was halted by `--halt`, if it was.
    pub fn halt_reason(&self) -> Option<&str> {
        self.halt_reason.as_deref()
    }

    /// The run's counters so far.
    pub fn counters(&self) -> RunCounters {
        RunCounters {
            not_run: self.outstanding,
            ..self.counters
        }
    }

    /// Feeds one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if !self.stopped {
            match event {
                Event::Input(items) => self.on_input(items),
                Event::InputEnded => self.input_ended = true,
                Event::WorkerReady {
                    worker,
                    pid,
                    tasks,
                    job_ids,
                } => self.on_ready(worker, pid, tasks, job_ids),
                Event::WorkerStartFailed { worker, failure } => {
                    self.on_start_failed(now, worker, failure)
                }
                Event::BatchDone { worker, done, rss } => {
                    self.on_batch_done(now, worker, done, rss)
                }
                Event::Drain => self.draining = true,
                Event::WorkerGone {
                    worker,
                    exit,
                    running,
                    note,
                } => self.on_gone(now, worker, exit, running, note),
                Event::Tick { running } => self.on_tick(now, running),
                Event::DropSource(source) => {
                    let dropped = self.pending.remove_source(source) as u64;
                    self.outstanding -= dropped;
                    self.counters.dropped += dropped;
                }
                Event::Resize(workers) => self.resize(now, workers),
            }
        }
        if !self.stopped {
            self.advance(now);
        }
        if self.stopped
            && let Some(reorder) = &mut self.reorder
        {
            // The run is over: what is held back goes out, still in input order.
            self.emitted
                .extend(std::mem::take(&mut reorder.held).into_values());
        }
        if !self.emitted.is_empty() {
            let results = std::mem::take(&mut self.emitted);
            // Results go out before anything else decided in this step, so a `Finished` never
            // overtakes them.
            self.actions.insert(0, Action::Emit(results));
        }
        if !self.noted.is_empty() {
            let noted = std::mem::take(&mut self.noted);
            self.actions.insert(0, Action::Noted(noted));
        }
        std::mem::take(&mut self.actions)
    }

    fn on_input(&mut self, chunk: InputChunk) {
        self.read += chunk.rejected.len() as u64 + chunk.jobs.iter().map(Job::weight).sum::<u64>();
        self.outstanding += chunk.jobs.len() as u64;
        self.pending.push_back(chunk.jobs);
        for result in chunk.rejected {
            self.emit(result);
        }
    }

    fn resize(&mut self, now: Instant, workers: usize) {
        let workers = workers.max(1);
        self.cfg.workers = workers;
        let mut staying: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, slot)| slot.recycle.is_none() && slot.phase != Phase::Retiring)
            .map(|(&id, _)| id)
            .collect();
        let planned = staying.len() + self.spawns_due.len();
        if workers >= planned {
            self.spawns_due
                .extend(std::iter::repeat_n(now, workers - planned));
            return;
        }
        // Too many: starts not made yet are dropped first (the latest due), then the newest
        // workers retire once their batches are answered.
        let mut extra = planned - workers;
        let dropped = extra.min(self.spawns_due.len());
        self.spawns_due.sort_unstable();
        self.spawns_due.truncate(self.spawns_due.len() - dropped);
        extra -= dropped;
        staying.sort_unstable_by(|a, b| b.cmp(a));
        for id in staying.into_iter().take(extra) {
            if let Some(slot) = self.workers.get_mut(&id) {
                slot.recycle = Some(say::resized(workers));
            }
        }
    }

    fn on_ready(&mut self, worker: WorkerId, pid: u32, tasks: Vec<String>, job_ids: bool) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            // Abandoned while it started: the run was finishing.
            self.actions.push(Action::Kill {
                worker,
                why: "it started after the run had finished".into(),
            });
            return;
        };
        slot.phase = Phase::Ready;
        slot.pid = pid;
        slot.job_ids = job_ids;
        slot.task_ids = tasks.iter().map(|name| self.names.intern(name)).collect();
        slot.tasks = tasks
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name.into_boxed_str(), TaskIndex(i as u32)))
            .collect();
    }

    fn on_start_failed(&mut self, now: Instant, worker: WorkerId, failure: StartFailure) {
        self.workers.remove(&worker);
        if self.finishing() {
            return;
        }
        match failure.cause {
            StartCause::KilledFromOutside => {
                self.counters.restarts += 1;
                self.restart_within_budget(now, &failure.message);
                return;
            }
            StartCause::Fatal => return self.fatal(failure.message),
            StartCause::Transient => {}
        }
        self.start_failures += 1;
        if self.start_failures >= self.cfg.max_start_failures {
            self.fatal(say::start_failures(self.start_failures, &failure.message));
        } else {
            let delay = self
                .cfg
                .restart
                .backoff_base
                .saturating_mul(1 << self.start_failures.min(16));
            self.spawns_due
                .push(now + delay.min(self.cfg.restart.backoff_max));
        }
    }

    fn on_batch_done(
        &mut self,
        now: Instant,
        worker: WorkerId,
        mut done: BatchDone,
        rss: Option<u64>,
    ) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        // An answer covers the batch's jobs not answered yet, or only the first of them (a
        // stdio worker that stopped mid-batch: its answers count, the rest stay in flight).
        let matches = slot.in_flight.front().is_some_and(|b| {
            b.id == done.batch && !done.outcomes.is_empty() && done.outcomes.len() <= b.jobs.len()
        }) && done.is_well_formed();
        if !matches {
            if slot.violation.is_none() {
                let why = say::wrong_batch(slot.pid);
                slot.violation = Some(why.clone());
                self.actions.push(Action::Kill { worker, why });
            }
            return;
        }
        let front = slot.in_flight.front_mut().expect("checked above");
        // Blocks of lines are answered by one outcome for them all.
        let lines_batch = front.jobs.front().is_some_and(Job::is_lines);
        let batch = if done.outcomes.len() < front.jobs.len() && !lines_batch {
            let k = done.outcomes.len();
            front.answered += k;
            InFlight {
                id: front.id,
                jobs: front.jobs.drain(..k).collect(),
                answered: 0,
            }
        } else {
            slot.in_flight.pop_front().expect("checked above")
        };
        slot.jobs_done += batch.jobs.len() as u64;
        let pid = slot.pid;
        self.start_failures = 0;
        if slot.recycle.is_none() {
            let why = match (self.cfg.max_jobs_per_worker, self.cfg.max_rss, rss) {
                (Some(max), _, _) if slot.jobs_done >= max => {
                    Some(say::ran_jobs(slot.jobs_done, max))
                }
                (_, Some(max), Some(rss)) if rss > max => Some(say::memory_reached(rss, max)),
                _ => None,
            };
            if let Some(why) = why {
                slot.recycle = Some(why);
                self.counters.recycled += 1;
                // The replacement starts now, outside the restart budget: recycling is planned.
                self.spawns_due.push(now);
            }
        }

        let n = batch.jobs.len() as u64;
        let total: u64 = done.outcomes.iter().map(|o| o.nanos).sum();
        // Blocks of lines are timed per line.
        let block = lines_batch.then(|| batch.jobs.iter().map(Job::weight).sum::<u64>());
        let sample = total as f64 / block.unwrap_or(n).max(1) as f64;
        self.per_job_nanos = Some(ewma(self.per_job_nanos, sample));
        match block {
            Some(lines) => self.learn_speed(Pace::Lines, total as f64 / lines.max(1) as f64),
            None => self.learn_task_speeds(&batch.jobs, &done),
        }

        // The batch ran from `total` before its answer came, its jobs one after another.
        let mut started = now.checked_sub(Duration::from_nanos(total)).unwrap_or(now);
        self.outstanding -= n;
        // One result per job: room for them all at once, rather than growing by doubling.
        self.emitted.reserve(batch.jobs.len());
        let outputs = Bytes::from(std::mem::take(&mut done.outputs.0));
        let mut jobs = batch.jobs;
        if block.is_some() {
            let outcome = done
                .outcomes
                .pop()
                .expect("an answer covers the batch's jobs");
            self.lines_done((worker, pid), jobs, outputs, outcome);
            return;
        }
        for (job, (outcome, range)) in jobs.drain(..).zip(done.iter()) {
            let result = match &outcome.result {
                TaskResult::Ok => Ok(Completed {
                    output: SharedBytes::new(&outputs, range),
                    nanos: outcome.nanos,
                }),
                TaskResult::TaskError {
                    message,
                    error_type,
                } => {
                    let mut error = JobError::new(ErrorKind::TaskError, message.clone());
                    error.error_type = error_type.clone();
                    if !range.is_empty() {
                        error.output = Some(SharedBytes::new(&outputs, range));
                    }
                    Err(error)
                }
                TaskResult::BadInput(message) => {
                    Err(JobError::new(ErrorKind::BadInput, message.clone()))
                }
                TaskResult::Panic(message) => Err(JobError::new(ErrorKind::Panic, message.clone())),
                TaskResult::Lines(_) => Err(JobError::new(
                    ErrorKind::Panic,
                    "the worker answered a job as a block of lines",
                )),
            };
            let attempts = job.failed_attempts + 1;
            if self.cfg.notes != Notes::None {
                self.note_ran(&job, &result, started, outcome.nanos);
                started += Duration::from_nanos(outcome.nanos);
            }
            self.emit(job.into_result(attempts, Some(pid), result));
        }
    }

    /// Starts due workers, hands out work and notices the end of the run.
    fn advance(&mut self, now: Instant) {
        let finishing = self.finishing();
        if finishing {
            self.spawns_due.clear();
            // A worker still starting has nothing to finish: the run does not wait for it (a
            // stop signal while workers start must not wait out the grace). The pool abandons
            // its start when the run ends; one that says hello first is killed.
            self.workers.retain(|_, slot| slot.phase != Phase::Starting);
        }
        let mut retire = Vec::new();
        for (&id, slot) in &mut self.workers {
            let idle_recycled = slot.recycle.is_some() && slot.in_flight.is_empty();
            let done = finishing && slot.phase == Phase::Ready && slot.in_flight.is_empty();
            if (idle_recycled || done) && !slot.retire_sent {
                slot.phase = Phase::Retiring;
                slot.retire_sent = true;
                slot.retired_at = Some(now);
                retire.push(Action::Retire {
                    worker: id,
                    recycled: slot.recycle.clone().filter(|_| !finishing),
                });
            }
        }
        self.actions.extend(retire);
        if finishing {
            if self.workers.is_empty() {
                self.stopped = true;
                self.actions.push(Action::Finished);
            }
            return;
        }
        let (mut due, mut later): (Vec<Instant>, Vec<Instant>) =
            self.spawns_due.iter().partition(|&&t| t <= now);
        // Replacements wait while more retired workers than the pool has have not exited
        // yet: workers recycled faster than they exit would otherwise pile up without bound
        // (until `exit_grace` kills them).
        let lingering = self
            .workers
            .values()
            .filter(|slot| slot.retired_at.is_some())
            .count();
        if lingering > self.cfg.workers {
            later.append(&mut due);
        }
        self.spawns_due = later;
        for _ in due {
            let id = WorkerId(self.next_worker);
            self.next_worker += 1;
            self.workers.insert(id, WorkerSlot::new(now));
            self.actions.push(Action::Spawn(id));
        }
        self.dispatch();
    }

    /// The run has nothing more to do: all input answered, or draining and nothing in flight.
    fn finishing(&self) -> bool {
        (self.input_ended && self.outstanding == 0)
            || (self.draining && self.workers.values().all(|s| s.in_flight.is_empty()))
    }

    /// Sends a result on its way: counted for `--halt`, and held back under `keep_order`
    /// until every earlier job has its result.
    fn emit(&mut self, result: JobResult) {
        if self.cfg.notes != Notes::None {
            self.note_unrun(&result);
        }
        let failures = result.failures();
        if failures > 0 {
            self.failed += failures;
            self.check_halt();
        }
        match &mut self.reorder {
            None => self.emitted.push(result),
            Some(reorder) => {
                reorder.held.insert(result.seq.0, result);
                while let Some(next) = reorder.held.remove(&reorder.next) {
                    self.emitted.push(next);
                    reorder.next += 1;
                }
            }
        }
    }

    fn check_halt(&mut self) {
        let Some(rule) = self.cfg.halt else { return };
        if self.halt_reason.is_some() {
            return;
        }
        let triggered = match rule.threshold {
            HaltThreshold::Count(n) => self.failed >= n,
            HaltThreshold::Percent(p) => self.failed as f64 * 100.0 >= p * self.read as f64,
        };
        if !triggered {
            return;
        }
        let reason = say::halted(self.failed, &rule);
        self.halt_reason = Some(reason.clone());
        self.draining = true;
        if rule.now {
            self.stopped = true;
            self.actions.push(Action::Abort(reason));
        }
    }

    fn fatal(&mut self, message: String) {
        self.stopped = true;
        self.actions.push(Action::Fatal(message));
    }

    fn next_jitter(&mut self) -> f64 {
        // xorshift64: enough to spread restarts; seeded by the caller for reproducible tests.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
