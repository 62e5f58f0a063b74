//! What goes in and out of the scheduler: the events it handles and the actions it returns,
//! how a worker ended or failed to start, its state, and the run's counters.

use std::time::Instant;

use corral_protocol::{Batch, BatchDone, RunningWord, WorkerId};

use crate::os::Signal;
use crate::record::{InputChunk, JobResult, SourceId};

/// Counters of a run, for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunCounters {
    /// Workers replaced after an unexpected death.
    pub restarts: u64,
    /// Workers replaced by `max_jobs_per_worker` or `max_rss`.
    pub recycled: u64,
    /// Jobs read that have no result yet (at the end: not run because the run stopped early).
    pub not_run: u64,
    /// Jobs dropped unrun because their source went away (a client disconnected).
    pub dropped: u64,
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(Signal),
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
    /// What kind of failure it is, which decides what comes next.
    pub cause: StartCause,
    /// What happened, for the user.
    pub message: String,
}

/// What kind of failure a failed start is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartCause {
    /// Another start may not repeat it (a slow or crashing start): retried with backoff, and
    /// counted towards giving up on starting workers.
    Transient,
    /// Every start would repeat it (a missing binary, a wrong protocol version or nonce): the
    /// run stops.
    Fatal,
    /// The worker was killed with SIGKILL before its hello, and not by corral: what `kill -9`
    /// or the OOM killer does, not what a broken build does. It is not counted towards giving
    /// up on starting workers; it spends the restart budget, as a crash during work does.
    KilledFromOutside,
}

impl StartFailure {
    /// A failure another start may not repeat.
    pub fn transient(message: String) -> StartFailure {
        StartFailure {
            cause: StartCause::Transient,
            message,
        }
    }

    /// A failure every start would repeat: the run stops.
    pub fn fatal(message: String) -> StartFailure {
        StartFailure {
            cause: StartCause::Fatal,
            message,
        }
    }
}

/// Where a worker is in its life, as `corral status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Started, and not said hello yet.
    #[default]
    Starting,
    /// Ready, and holding no job.
    Idle,
    /// Holding jobs.
    Busy,
    /// Holding jobs, to be replaced once they are answered (`--max-jobs-per-worker`,
    /// `--max-rss`).
    Recycling,
    /// Told to finish what it holds and exit.
    Retiring,
}

impl WorkerState {
    /// The state as `corral status` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Recycling => "recycling",
            WorkerState::Retiring => "retiring",
        }
    }

    /// Whether it takes jobs (it has said hello and is not on its way out).
    pub fn takes_jobs(self) -> bool {
        !matches!(self, WorkerState::Starting | WorkerState::Retiring)
    }
}

/// A worker as the scheduler sees it ([`Scheduler::workers`](crate::scheduler::Scheduler::workers)).
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Which worker.
    pub worker: WorkerId,
    /// Its process id (0 while it starts).
    pub pid: u32,
    /// Where it is in its life.
    pub state: WorkerState,
    /// Jobs it has answered.
    pub jobs_done: u64,
    /// Jobs it holds.
    pub in_flight: u64,
    /// The id of the job it is running, as far as its running word tells.
    pub current: Option<String>,
    /// Since when that job has been running (as the ticks saw it).
    pub current_since: Option<Instant>,
}

/// Something that happened, fed to [`Scheduler::handle`](crate::scheduler::Scheduler::handle).
#[derive(Debug)]
pub enum Event {
    /// Lines read from input.
    Input(InputChunk),
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
        /// Whether its batches carry the jobs' ids (a stdio worker echoes them).
        job_ids: bool,
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
        /// Its resident memory in bytes, measured just after, when recycling by memory is on.
        rss: Option<u64>,
    },
    /// Stop early: run nothing new, let the batches in flight finish.
    Drain,
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
    /// A source is gone (a client disconnected): its queued jobs are dropped without a result;
    /// its jobs in flight finish, and their results are emitted as usual, for the edges to
    /// discard.
    DropSource(SourceId),
    /// Run this many workers from now on: more start at once; the ones too many take no new
    /// batch and retire once idle.
    Resize(usize),
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
    Kill {
        /// Which worker.
        worker: WorkerId,
        /// Why, for the log.
        why: String,
    },
    /// Something worth a line in the log (which job a crash is blamed on).
    Note(String),
    /// Let a worker finish and exit: close its channel.
    Retire {
        /// Which worker.
        worker: WorkerId,
        /// Why, when it is recycled rather than retired at the end of the run.
        recycled: Option<String>,
    },
    /// Write these results.
    Emit(Vec<JobResult>),
    /// Notes of finished jobs, in the order they finished, and counts of the lines of blocks
    /// ([`SchedulerConfig::notes`]).
    Noted(crate::notes::Noted),
    /// The run cannot go on (configuration error); stop everything.
    Fatal(String),
    /// `--halt now` triggered: kill every worker and end the run; the message says why.
    Abort(String),
    /// Every job has its result and every worker is gone.
    Finished,
}
