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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use corral_protocol::{
    Batch, BatchDone, BatchId, JobRequest, RawJson, RunningWord, TaskIndex, TaskResult, WorkerId,
};

use crate::record::{Completed, ErrorKind, InputItem, Job, JobError, JobResult, ResultKey};

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Worker processes to keep running.
    pub workers: usize,
    /// Extra attempts for a job that crashes its worker or times out.
    pub retries: u32,
    /// Longest a single job may run.
    pub timeout: Option<Duration>,
    /// Most jobs held in the queue before input reading pauses.
    pub max_queued: usize,
    /// How much work one batch should hold, judged from the measured time per job.
    pub batch_target: Duration,
    /// Most jobs in one batch.
    pub max_batch_jobs: usize,
    /// Most input bytes in one batch (a single larger job still goes, alone).
    pub max_batch_bytes: usize,
    /// Batches sent to one worker ahead of its answers.
    pub batches_in_flight: usize,
    /// Restart budget and backoff.
    pub restart: RestartPolicy,
    /// Start-up failures in a row, with no batch completed in between, that end the run.
    pub max_start_failures: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            workers: 1,
            retries: 2,
            timeout: None,
            max_queued: 65_536,
            batch_target: Duration::from_millis(4),
            max_batch_jobs: 4096,
            max_batch_bytes: 4 << 20,
            batches_in_flight: 2,
            restart: RestartPolicy::default(),
            max_start_failures: 3,
        }
    }
}

/// OTP-style restart intensity: up to `max_restarts` replacements in any `period` go ahead at
/// once; past that each replacement waits, with exponential backoff and jitter, until the rate
/// falls back under the budget.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Restarts allowed per period without delay.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
    /// First backoff delay once over budget.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 100,
            period: Duration::from_secs(10),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Counts restarts in a sliding window and says how long the next one must wait.
#[derive(Debug)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    over: u32,
}

impl RestartBudget {
    /// A budget with nothing spent.
    pub fn new(policy: RestartPolicy) -> RestartBudget {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
            over: 0,
        }
    }

    /// Records a restart at `now`; returns how long it must wait. `jitter` in `[0, 1)` spreads
    /// the delay over its upper half.
    pub fn delay(&mut self, now: Instant, jitter: f64) -> Duration {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.policy.period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() <= self.policy.max_restarts as usize {
            self.over = 0;
            return Duration::ZERO;
        }
        let exp = self
            .policy
            .backoff_base
            .saturating_mul(1 << self.over.min(20));
        self.over += 1;
        exp.min(self.policy.backoff_max).mul_f64(0.5 + jitter / 2.0)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal (`"SIGSEGV"`).
    Signal(String),
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerExit::Code(code) => write!(f, "exited with status {code}"),
            WorkerExit::Signal(signal) => write!(f, "was killed by {signal}"),
        }
    }
}

/// Why a worker could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// Retrying cannot help (missing binary, wrong protocol version, wrong nonce).
    pub fatal: bool,
    /// What happened, for the user.
    pub message: String,
}

/// Something that happened, fed to [`Scheduler::handle`].
#[derive(Debug)]
pub enum Event {
    /// Lines read from input.
    Input(Vec<InputItem>),
    /// All input has been read.
    InputEnded,
    /// A worker said hello.
    WorkerReady {
        /// Which worker.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
        /// The tasks it serves, in index order.
        tasks: Vec<String>,
    },
    /// A worker could not be started; no process of it is left.
    WorkerStartFailed {
        /// Which worker.
        worker: WorkerId,
        /// Why.
        failure: StartFailure,
    },
    /// A worker answered a batch.
    BatchDone {
        /// Which worker.
        worker: WorkerId,
        /// Its answer.
        done: BatchDone,
    },
    /// A worker's process is gone and all its messages have been delivered.
    WorkerGone {
        /// Which worker.
        worker: WorkerId,
        /// How it ended.
        exit: WorkerExit,
        /// Its running word, read after its death.
        running: RunningWord,
        /// Why the supervisor killed it, if it did so for a reason the scheduler does not know.
        note: Option<String>,
    },
    /// The timer: each live worker's running word, read now.
    Tick {
        /// Worker and word.
        running: Vec<(WorkerId, RunningWord)>,
    },
}

/// Something the edges must do.
#[derive(Debug)]
pub enum Action {
    /// Start a worker process under this id.
    Spawn(WorkerId),
    /// Send a batch to a worker.
    Send {
        /// Which worker.
        worker: WorkerId,
        /// The batch.
        batch: Batch,
    },
    /// Kill a worker and its process group now.
    Kill(WorkerId),
    /// Let a worker finish and exit: close its channel.
    Retire(WorkerId),
    /// Write these results.
    Emit(Vec<JobResult>),
    /// The run cannot go on (configuration error); stop everything.
    Fatal(String),
    /// Every job has its result and every worker is gone.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Retiring,
}

#[derive(Debug)]
struct InFlight {
    id: BatchId,
    jobs: Vec<Job>,
}

#[derive(Debug)]
struct WorkerSlot {
    phase: Phase,
    pid: u32,
    tasks: HashMap<Box<str>, TaskIndex>,
    in_flight: VecDeque<InFlight>,
    /// The running word last seen on a tick, and when it was first seen.
    word: RunningWord,
    word_since: Instant,
    batches_done: u64,
    /// Set when the scheduler killed the worker for a timeout: the word of the job that overran.
    timed_out: Option<RunningWord>,
    /// Set when the worker was killed for breaking the protocol.
    violation: Option<String>,
}

/// The state machine. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pending: VecDeque<Job>,
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
    /// Moving average of task time per job, in nanoseconds.
    per_job_nanos: Option<f64>,
    rng: u64,
    stopped: bool,
    actions: Vec<Action>,
    emitted: Vec<JobResult>,
}

impl Scheduler {
    /// A scheduler about to start `cfg.workers` workers. `seed` drives backoff jitter.
    pub fn new(cfg: SchedulerConfig, now: Instant, seed: u64) -> Scheduler {
        let spawns_due = vec![now; cfg.workers.max(1)];
        Scheduler {
            budget: RestartBudget::new(cfg.restart.clone()),
            cfg,
            pending: VecDeque::new(),
            input_ended: false,
            outstanding: 0,
            workers: BTreeMap::new(),
            spawns_due,
            next_worker: 1,
            next_batch: 1,
            start_failures: 0,
            per_job_nanos: None,
            rng: seed | 1,
            stopped: false,
            actions: Vec::new(),
            emitted: Vec::new(),
        }
    }

    /// Whether the input reader should be asked for more lines.
    pub fn wants_input(&self) -> bool {
        !self.input_ended && !self.stopped && self.pending.len() < self.cfg.max_queued
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if !self.stopped {
            match event {
                Event::Input(items) => self.on_input(items),
                Event::InputEnded => self.input_ended = true,
                Event::WorkerReady { worker, pid, tasks } => self.on_ready(worker, pid, tasks),
                Event::WorkerStartFailed { worker, failure } => {
                    self.on_start_failed(now, worker, failure)
                }
                Event::BatchDone { worker, done } => self.on_batch_done(worker, done),
                Event::WorkerGone {
                    worker,
                    exit,
                    running,
                    note,
                } => self.on_gone(now, worker, exit, running, note),
                Event::Tick { running } => self.on_tick(now, running),
            }
        }
        if !self.stopped {
            self.advance(now);
        }
        if !self.emitted.is_empty() {
            let results = std::mem::take(&mut self.emitted);
            // Results go out before anything else decided in this step, so a `Finished` never
            // overtakes them.
            self.actions.insert(0, Action::Emit(results));
        }
        std::mem::take(&mut self.actions)
    }

    fn on_input(&mut self, items: Vec<InputItem>) {
        for item in items {
            match item {
                InputItem::Job(job) => {
                    self.outstanding += 1;
                    self.pending.push_back(job);
                }
                InputItem::Rejected(result) => self.emitted.push(result),
            }
        }
    }

    fn on_ready(&mut self, worker: WorkerId, pid: u32, tasks: Vec<String>) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        slot.phase = Phase::Ready;
        slot.pid = pid;
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

    fn on_batch_done(&mut self, worker: WorkerId, done: BatchDone) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        let matches = slot
            .in_flight
            .front()
            .is_some_and(|b| b.id == done.batch && b.jobs.len() == done.outcomes.len());
        if !matches {
            if slot.violation.is_none() {
                slot.violation = Some(format!(
                    "worker {} answered a batch it was not running",
                    slot.pid
                ));
                self.actions.push(Action::Kill(worker));
            }
            return;
        }
        let batch = slot.in_flight.pop_front().expect("checked above");
        slot.batches_done += 1;
        let pid = slot.pid;
        self.start_failures = 0;

        let n = batch.jobs.len() as u64;
        let total: u64 = done.outcomes.iter().map(|o| o.nanos).sum();
        let sample = total as f64 / n as f64;
        self.per_job_nanos = Some(match self.per_job_nanos {
            None => sample,
            Some(avg) => 0.7 * avg + 0.3 * sample,
        });

        self.outstanding -= n;
        for (job, outcome) in batch.jobs.into_iter().zip(done.outcomes) {
            let result = match outcome.result {
                TaskResult::Ok(output) => Ok(Completed {
                    output: output.0,
                    nanos: outcome.nanos,
                }),
                TaskResult::TaskError(message) => Err(JobError::new(ErrorKind::TaskError, message)),
                TaskResult::BadInput(message) => Err(JobError::new(ErrorKind::BadInput, message)),
                TaskResult::Panic(message) => Err(JobError::new(ErrorKind::Panic, message)),
            };
            self.emitted.push(JobResult {
                key: ResultKey::Job {
                    id: job.id,
                    line: job.line,
                },
                meta: job.meta,
                attempts: job.failed_attempts + 1,
                worker: Some(pid),
                outcome: result,
            });
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
        for batch in slot.in_flight {
            for (index, mut job) in batch.jobs.into_iter().enumerate() {
                if !culprit.is(batch.id, index) {
                    requeue.push(job);
                    continue;
                }
                attributed = true;
                job.failed_attempts += 1;
                if job.failed_attempts <= self.cfg.retries {
                    requeue.push(job);
                    continue;
                }
                let error = self.attempt_error(&job, slot.pid, &exit, timed_out, note.as_deref());
                self.outstanding -= 1;
                self.emitted.push(JobResult {
                    key: ResultKey::Job {
                        id: job.id,
                        line: job.line,
                    },
                    meta: job.meta,
                    attempts: job.failed_attempts,
                    worker: Some(slot.pid),
                    outcome: Err(error),
                });
            }
        }
        for job in requeue.into_iter().rev() {
            self.pending.push_front(job);
        }
        if slot.phase == Phase::Retiring || self.finishing() {
            return;
        }
        // A worker that died on its own before finishing anything, with no job to blame, is
        // what a broken build or environment looks like: count it towards giving up.
        if !attributed && slot.batches_done == 0 && note.is_none() {
            self.start_failures += 1;
            if self.start_failures >= self.cfg.max_start_failures {
                self.fatal(format!(
                    "workers died before finishing any work {} times in a row; the last one (pid {}) {exit}",
                    self.start_failures, slot.pid
                ));
                return;
            }
        }
        let jitter = self.next_jitter();
        let delay = self.budget.delay(now, jitter);
        self.spawns_due.push(now + delay);
    }

    fn attempt_error(
        &self,
        job: &Job,
        pid: u32,
        exit: &WorkerExit,
        timed_out: bool,
        note: Option<&str>,
    ) -> JobError {
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
        let mut error = JobError::new(ErrorKind::Crashed, message);
        match exit {
            WorkerExit::Code(code) => error.exit_code = Some(*code),
            WorkerExit::Signal(signal) => error.signal = Some(signal.clone()),
        }
        error
    }

    fn on_tick(&mut self, now: Instant, running: Vec<(WorkerId, RunningWord)>) {
        let Some(timeout) = self.cfg.timeout else {
            return;
        };
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
            } else if word != RunningWord::IDLE
                && now.duration_since(slot.word_since) >= timeout
                && slot
                    .in_flight
                    .iter()
                    .any(|b| (0..b.jobs.len()).any(|i| word.is(b.id, i)))
            {
                slot.timed_out = Some(word);
                self.actions.push(Action::Kill(worker));
            }
        }
    }

    /// Starts due workers, hands out work and notices the end of the run.
    fn advance(&mut self, now: Instant) {
        if self.finishing() {
            self.spawns_due.clear();
            let mut retire = Vec::new();
            for (&id, slot) in &mut self.workers {
                if slot.phase == Phase::Ready {
                    slot.phase = Phase::Retiring;
                    retire.push(Action::Retire(id));
                }
            }
            self.actions.extend(retire);
            if self.workers.is_empty() {
                self.stopped = true;
                self.actions.push(Action::Finished);
            }
            return;
        }
        let (due, later): (Vec<Instant>, Vec<Instant>) =
            self.spawns_due.iter().partition(|&&t| t <= now);
        self.spawns_due = later;
        for _ in due {
            let id = WorkerId(self.next_worker);
            self.next_worker += 1;
            self.workers.insert(
                id,
                WorkerSlot {
                    phase: Phase::Starting,
                    pid: 0,
                    tasks: HashMap::new(),
                    in_flight: VecDeque::new(),
                    word: RunningWord::IDLE,
                    word_since: now,
                    batches_done: 0,
                    timed_out: None,
                    violation: None,
                },
            );
            self.actions.push(Action::Spawn(id));
        }
        self.dispatch();
    }

    fn finishing(&self) -> bool {
        self.input_ended && self.outstanding == 0
    }

    /// Hands batches to ready workers, one per worker per round, until the queue is empty or
    /// every worker has its fill.
    fn dispatch(&mut self) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        loop {
            let mut sent = false;
            for &id in &ids {
                if self.pending.is_empty() {
                    return;
                }
                let slot = &self.workers[&id];
                if slot.phase == Phase::Ready
                    && slot.timed_out.is_none()
                    && slot.violation.is_none()
                    && slot.in_flight.len() < self.cfg.batches_in_flight
                {
                    sent |= self.send_batch(id);
                }
            }
            if !sent {
                return;
            }
        }
    }

    fn batch_size(&self) -> usize {
        let by_time = match self.per_job_nanos {
            None => 1,
            Some(nanos) => (self.cfg.batch_target.as_nanos() as f64 / nanos.max(50.0)) as usize,
        };
        let mut size = by_time.clamp(1, self.cfg.max_batch_jobs.min(RunningWord::MAX_BATCH_JOBS));
        if self.input_ended {
            // Near the end, spread what is left over every worker instead of loading one.
            let ready = self
                .workers
                .values()
                .filter(|s| s.phase == Phase::Ready)
                .count()
                .max(1);
            size = size.min(
                self.pending
                    .len()
                    .div_ceil(ready * self.cfg.batches_in_flight)
                    .max(1),
            );
        }
        size
    }

    /// Builds and sends one batch to `worker`; false when nothing could be sent.
    fn send_batch(&mut self, worker: WorkerId) -> bool {
        let size = self.batch_size();
        let slot = self
            .workers
            .get_mut(&worker)
            .expect("dispatch passes live workers");
        let mut jobs = Vec::with_capacity(size.min(self.pending.len()));
        let mut requests = Vec::with_capacity(jobs.capacity());
        let mut bytes = 0;
        while let Some(next) = self.pending.front() {
            let alone = next.failed_attempts > 0;
            if !jobs.is_empty()
                && (jobs.len() >= size
                    || bytes + next.input.len() > self.cfg.max_batch_bytes
                    || alone)
            {
                break;
            }
            let job = self.pending.pop_front().expect("front exists");
            let Some(&task) = slot.tasks.get(&*job.task) else {
                let mut names: Vec<&str> = slot.tasks.keys().map(|k| &**k).collect();
                names.sort_unstable();
                let message = format!(
                    "unknown task {:?}; the worker serves: {}",
                    &*job.task,
                    names.join(", ")
                );
                self.outstanding -= 1;
                self.emitted.push(JobResult {
                    key: ResultKey::Job {
                        id: job.id,
                        line: job.line,
                    },
                    meta: job.meta,
                    attempts: 0,
                    worker: None,
                    outcome: Err(JobError::new(ErrorKind::UnknownTask, message)),
                });
                continue;
            };
            bytes += job.input.len();
            requests.push(JobRequest {
                task,
                input: RawJson(job.input.clone()),
            });
            jobs.push(job);
            if alone {
                break;
            }
        }
        if jobs.is_empty() {
            return false;
        }
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        slot.in_flight.push_back(InFlight { id, jobs });
        self.actions.push(Action::Send {
            worker,
            batch: Batch { id, jobs: requests },
        });
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

#[cfg(test)]
mod tests;
