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
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_protocol::{
    Batch, BatchDone, BatchId, RawJson, RunningWord, TaskIndex, TaskResult, WorkerId,
};

use crate::os::Signal;
use crate::record::{
    Completed, ErrorKind, InputChunk, Job, JobError, JobResult, Jobs, SharedBytes, SourceId,
    TaskId, TaskNames,
};

mod config;
mod lines;
mod queue;
mod types;
pub use config::{HaltRule, HaltThreshold, RestartBudget, RestartPolicy, SchedulerConfig};
use queue::JobQueue;
pub use types::{Action, Event, RunCounters, StartFailure, WorkerExit, WorkerState, WorkerView};

/// What a speed is measured for: the jobs of one task, or the lines of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Jobs of a task, each a job line.
    Task(TaskId),
    /// Lines of blocks, which a worker reads and answers itself.
    Lines,
}

/// The measured nanoseconds per job (or line) of `pace` among `speeds`, if any.
fn speed_of(speeds: &[(Pace, f64)], pace: Pace) -> Option<f64> {
    speeds
        .iter()
        .find(|(p, _)| *p == pace)
        .map(|&(_, nanos)| nanos)
}

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

/// Holds results back until every earlier job has its result (`keep_order`).
#[derive(Debug)]
struct Reorder {
    next: u64,
    window: u64,
    held: BTreeMap<u64, JobResult>,
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
    /// Set when blocks of raw lines may come (see [`Scheduler::read_lines_with`]).
    lines: Option<lines::LineReading>,
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

    /// Each worker as it is now, for `corral status`.
    pub fn workers(&self) -> Vec<WorkerView> {
        let mut views: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(&worker, slot)| WorkerView {
                worker,
                pid: slot.pid,
                state: match slot.phase {
                    Phase::Starting => WorkerState::Starting,
                    Phase::Ready if slot.in_flight.is_empty() => WorkerState::Idle,
                    Phase::Ready if slot.recycle.is_some() => WorkerState::Recycling,
                    Phase::Ready => WorkerState::Busy,
                    Phase::Retiring => WorkerState::Retiring,
                },
                jobs_done: slot.jobs_done,
                in_flight: slot.jobs_in_flight(),
                current: slot.in_flight.iter().find_map(|f| {
                    f.running(slot.word)
                        .map(|i| lines::running_name(f, i, slot.word))
                }),
                current_since: (slot.word != RunningWord::IDLE).then_some(slot.word_since),
            })
            .collect();
        views.sort_by_key(|view| view.worker);
        views
    }

    /// The tasks the workers that said hello serve, sorted.
    pub fn served_tasks(&self) -> Vec<String> {
        let mut tasks: Vec<String> = self
            .workers
            .values()
            .filter(|slot| slot.phase != Phase::Starting)
            .flat_map(|slot| slot.tasks.keys().map(|name| name.to_string()))
            .collect();
        tasks.sort_unstable();
        tasks.dedup();
        tasks
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
                slot.recycle = Some(format!("the pool now runs {workers} workers"));
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
        if failure.killed && !failure.fatal {
            self.counters.restarts += 1;
            self.restart_within_budget(now, &failure.message);
            return;
        }
        self.start_failures += 1;
        if failure.fatal {
            self.fatal(failure.message);
        } else if self.start_failures >= self.cfg.max_start_failures {
            self.fatal(format!(
                "workers failed to start {} times in a row; the last one: {}",
                self.start_failures, failure.message
            ));
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
                let why = format!("worker {} answered a batch it was not running", slot.pid);
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
                (Some(max), _, _) if slot.jobs_done >= max => Some(format!(
                    "it ran {} jobs (--max-jobs-per-worker {max})",
                    slot.jobs_done
                )),
                (_, Some(max), Some(rss)) if rss > max => Some(format!(
                    "its memory reached {} (--max-rss {})",
                    bytesize::ByteSize(rss).display().iec(),
                    bytesize::ByteSize(max).display().iec()
                )),
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
            let answer = lines::Answer {
                nanos: outcome.nanos,
                result: outcome.result,
                pid,
            };
            if !matches!(answer.result, TaskResult::Lines(_)) {
                let why = format!("worker {pid} answered a block of lines as one job");
                self.actions.push(Action::Kill { worker, why });
            }
            self.lines_done(jobs, outputs, answer);
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
            self.emit(job.into_result(attempts, Some(pid), result));
        }
    }

    fn on_gone(
        &mut self,
        now: Instant,
        worker: WorkerId,
        exit: WorkerExit,
        running: RunningWord,
        note: Option<String>,
    ) {
        let Some(slot) = self.workers.remove(&worker) else {
            return;
        };
        let timed_out = slot.timed_out.is_some();
        let culprit = slot.timed_out.unwrap_or(running);
        let note = note.or(slot.violation);
        let mut requeue = Vec::new();
        let mut attributed = false;
        let death = lines::Death {
            pid: slot.pid,
            exit: &exit,
            timed_out,
            note: note.as_deref(),
        };
        for mut batch in slot.in_flight {
            if batch.jobs.front().is_some_and(Job::is_lines) {
                let blocks = std::mem::take(&mut batch.jobs);
                attributed |= self.lines_lost(batch.id, blocks, culprit, &death, &mut requeue);
                continue;
            }
            for (index, mut job) in batch.jobs.drain(..).enumerate() {
                if !culprit.is(batch.id, batch.answered + index) {
                    requeue.push(job);
                    continue;
                }
                attributed = true;
                job.failed_attempts += 1;
                self.failed_attempt(job, &death, &mut requeue);
            }
        }
        self.pending.push_front(requeue.into());
        if slot.phase == Phase::Retiring || slot.recycle.is_some() || self.finishing() {
            // Retired at the end, or recycled (its replacement is already on the way).
            return;
        }
        // A worker that died (or broke the protocol) before finishing anything, with no job to
        // blame, is what a broken build or environment looks like: count it towards giving up.
        // A SIGKILL that corral did not send (kill -9, the OOM killer) is not.
        let killed_from_outside =
            note.is_none() && !timed_out && exit == WorkerExit::Signal(Signal::KILL);
        if !attributed && slot.jobs_done == 0 && !killed_from_outside {
            self.start_failures += 1;
            if self.start_failures >= self.cfg.max_start_failures {
                let why = note.map(|note| format!(": {note}")).unwrap_or_default();
                self.fatal(format!(
                    "workers died before finishing any work {} times in a row; the last one (pid {}) {exit}{why}",
                    self.start_failures, slot.pid
                ));
                return;
            }
        }
        self.counters.restarts += 1;
        if attributed {
            // The crash is the job's: its own attempts bound how often it can happen (each one
            // costs it an attempt), so it must not spend the budget that protects everyone's
            // run from workers that die for no job's fault.
            self.spawns_due.push(now);
            return;
        }
        self.restart_within_budget(now, &format!("pid {}, {exit}", slot.pid));
    }

    /// A job whose worker died running it: says so, and requeues it while it has attempts
    /// left, or fails it.
    fn failed_attempt(&mut self, job: Job, death: &lines::Death<'_>, requeue: &mut Vec<Job>) {
        self.actions.push(Action::Note(format!(
            "job {} (line {}) {} worker {} ({}); attempt {} of {}",
            job.as_one().expect("a block's line fails as a job line").id,
            job.line,
            if death.timed_out {
                "timed out on"
            } else {
                "crashed"
            },
            death.pid,
            death.exit,
            job.failed_attempts,
            self.cfg.retries + 1
        )));
        if job.failed_attempts <= self.cfg.retries {
            requeue.push(job);
            return;
        }
        let error = self.attempt_error(&job, death.pid, death.exit, death.timed_out, death.note);
        self.outstanding -= 1;
        let attempts = job.failed_attempts;
        self.emit(job.into_result(attempts, Some(death.pid), Err(error)));
    }

    /// Schedules a replacement for a worker that died for no job's fault, as the restart
    /// budget allows; stops the run when even backoff cannot keep workers alive.
    fn restart_within_budget(&mut self, now: Instant, last: &str) {
        let jitter = self.next_jitter();
        let Some(delay) = self.budget.delay(now, jitter) else {
            let policy = &self.cfg.restart;
            self.fatal(format!(
                "workers keep dying: more than {} restarts within {}, even with backoff (the last one: {last}); see --max-restarts and --restart-period",
                policy.max_restarts,
                humantime::format_duration(policy.period),
            ));
            return;
        };
        self.spawns_due.push(now + delay);
    }

    fn attempt_error(
        &self,
        job: &Job,
        pid: u32,
        exit: &WorkerExit,
        timed_out: bool,
        note: Option<&str>,
    ) -> Box<JobError> {
        let attempts = format!(
            "attempt {} of {}",
            job.failed_attempts,
            self.cfg.retries + 1
        );
        if timed_out {
            let limit = self
                .cfg
                .timeout
                .map(|t| humantime::format_duration(t).to_string())
                .unwrap_or_default();
            return JobError::new(
                ErrorKind::Timeout,
                format!(
                    "ran longer than {limit}; worker {pid} and its process group were killed ({attempts})"
                ),
            );
        }
        let mut message = format!("worker {pid} {exit} while running this job ({attempts})");
        if let Some(note) = note {
            message.push_str(": ");
            message.push_str(note);
        }
        let memory_signal = matches!(exit, WorkerExit::Signal(s) if [Signal::ABRT, Signal::SEGV, Signal::BUS, Signal::KILL].contains(s));
        if let (Some(limit), true) = (self.cfg.memory_limit, memory_signal) {
            message.push_str(&format!(
                "; workers run under --memory-limit {}, which this job may have exceeded",
                bytesize::ByteSize(limit).display().iec()
            ));
        }
        let mut error = JobError::new(ErrorKind::Crashed, message);
        match exit {
            WorkerExit::Code(code) => error.exit_code = Some(*code),
            WorkerExit::Signal(signal) => error.signal = Some(signal.name()),
        }
        error
    }

    fn on_tick(&mut self, now: Instant, running: Vec<(WorkerId, RunningWord)>) {
        self.kill_lingering(now);
        let timeout = self.cfg.timeout;
        for (worker, word) in running {
            let Some(slot) = self.workers.get_mut(&worker) else {
                continue;
            };
            if slot.phase != Phase::Ready || slot.timed_out.is_some() {
                continue;
            }
            if word != slot.word {
                slot.word = word;
                slot.word_since = now;
                slot.stall_noted = None;
                continue;
            }
            if word == RunningWord::IDLE {
                continue;
            }
            let Some(job) = slot
                .in_flight
                .iter()
                .find_map(|b| b.running(word).map(|i| lines::running_name(b, i, word)))
            else {
                continue;
            };
            let ran = now.duration_since(slot.word_since);
            if let Some(timeout) = timeout
                && ran >= timeout
            {
                slot.timed_out = Some(word);
                let why = format!(
                    "job {job} ran longer than {}",
                    humantime::format_duration(timeout)
                );
                self.actions.push(Action::Kill { worker, why });
                continue;
            }
            // A job that runs long is said in the log, and again each time its time doubles,
            // so that a stall is never silent.
            let next = slot.stall_noted.map_or(STALL_NOTE, |noted| noted * 2);
            if ran >= next {
                slot.stall_noted = Some(next);
                let hint = if timeout.is_none() {
                    " (no --timeout is set to end it)"
                } else {
                    ""
                };
                self.actions.push(Action::Note(format!(
                    "job {job} has been running for {} on worker {}{hint}",
                    humantime::format_duration(next),
                    slot.pid
                )));
            }
        }
    }

    /// Kills each retired worker that has not exited within `exit_grace` of the end of its
    /// input.
    fn kill_lingering(&mut self, now: Instant) {
        let grace = self.cfg.exit_grace;
        for (&worker, slot) in &mut self.workers {
            let Some(at) = slot.retired_at else { continue };
            if now.duration_since(at) < grace {
                continue;
            }
            slot.retired_at = None;
            let why = format!(
                "it did not exit within {} of the end of its input (a thread or timer that \
                 keeps it alive?)",
                humantime::format_duration(grace)
            );
            self.actions.push(Action::Kill { worker, why });
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
        let reason = format!("halted after {} failed jobs (--halt {rule})", self.failed);
        self.halt_reason = Some(reason.clone());
        self.draining = true;
        if rule.now {
            self.stopped = true;
            self.actions.push(Action::Abort(reason));
        }
    }

    /// Hands batches to ready workers, one per worker per round, until the queue is empty or
    /// every worker has its fill.
    fn dispatch(&mut self) {
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
    fn learn_task_speeds(&mut self, jobs: &Jobs, done: &BatchDone) {
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
    fn learn_speed(&mut self, task: Pace, sample: f64) {
        match self.task_nanos.iter_mut().find(|(t, _)| *t == task) {
            Some((_, avg)) => *avg = ewma(Some(*avg), sample),
            None => self.task_nanos.push((task, sample)),
        }
    }

    /// Batches one worker holds at once. More than one hides the round trip between an answer
    /// and the next batch, which short jobs feel; a job slower than the batch target does not,
    /// and one queued behind another on a busy worker at the end of the input would wait while
    /// a worker beside it sits idle.
    fn depth(&self) -> usize {
        match self.per_job_nanos {
            Some(nanos) if nanos >= self.cfg.batch_target.as_nanos() as f64 => 1,
            _ => self.cfg.batches_in_flight,
        }
    }

    /// Jobs in a batch that starts with a job of `task`: what its task takes in the batch
    /// target; one job while the task's speed is not known yet.
    fn batch_size(&self, task: Option<Pace>) -> usize {
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
    fn batch_size_by_time(&self, task: Option<Pace>, cap: usize) -> usize {
        let nanos = task.and_then(|task| speed_of(&self.task_nanos, task));
        let by_time = match nanos {
            None => 1,
            Some(nanos) => (self.cfg.batch_target.as_nanos() as f64 / nanos.max(50.0)) as usize,
        };
        by_time.clamp(1, cap.min(RunningWord::MAX_BATCH_JOBS))
    }

    /// Builds and sends one batch to `worker`; false when nothing could be sent.
    fn send_batch(&mut self, worker: WorkerId) -> bool {
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
                let message =
                    crate::jobline::unknown_task_message(&self.names.name(one.task), &served);
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
    fn send(&mut self, worker: WorkerId, batch: Batch, jobs: Jobs) -> bool {
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

/// A moving average that follows a change in a few samples.
fn ewma(average: Option<f64>, sample: f64) -> f64 {
    match average {
        None => sample,
        Some(avg) => 0.7 * avg + 0.3 * sample,
    }
}

#[cfg(test)]
mod tests;
