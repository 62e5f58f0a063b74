//! The engine's settings, its controls, its status and its report: what a caller gives and is
//! given, apart from the loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::metrics::{Live, Metrics};
use crate::notes::Noted;
use crate::pool::PoolConfig;
use crate::record::SourceId;
use crate::scheduler::{RunCounters, SchedulerConfig, WorkerState};
use crate::transport::Transport;

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Scheduling rules.
    pub scheduler: SchedulerConfig,
    /// How to start workers.
    pub pool: PoolConfig,
    /// How long batches in flight may take to finish after the first stop signal.
    pub grace: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl EngineConfig {
    /// `workers` workers of `program` on the corral-worker library, every other setting at
    /// its default (the defaults of `corral run`).
    pub fn native(program: PathBuf, workers: usize) -> EngineConfig {
        EngineConfig {
            scheduler: SchedulerConfig {
                workers,
                ..SchedulerConfig::default()
            },
            pool: PoolConfig {
                program,
                args: Vec::new(),
                transport: Transport::Native,
                env: Vec::new(),
                handshake_timeout: Duration::from_secs(10),
                memory_limit: None,
                keeper: None,
                gather: crate::transport::stdio::GATHER,
                own_readers: PoolConfig::own_readers_default(),
            },
            grace: Duration::from_secs(10),
            progress: false,
        }
    }
}

/// Where the notes of finished jobs go, and the workers' starts and ends.
#[derive(Debug, Default)]
pub struct Observers {
    /// The joblog's writer.
    pub joblog: Option<Sender<Noted>>,
    /// The metrics.
    pub metrics: Option<Arc<Metrics>>,
}

impl Observers {
    /// Hands `noted` on.
    pub fn observe(&self, noted: Noted) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&noted.notes, &noted.counts);
        }
        if let Some(joblog) = &self.joblog
            && !(noted.notes.is_empty() && noted.block_joblogs.is_empty())
        {
            // A joblog that failed says so when it is finished.
            let _ = joblog.send(noted);
        }
    }
}

/// What is taken at once.
#[derive(Debug)]
pub enum Control {
    /// The source is gone: its queued jobs are dropped, its results from now on discarded.
    Close(SourceId),
    /// A stop signal (its number).
    Stop(i32),
    /// Asks for the engine's state; the answer proves its loop is turning.
    Status(Sender<EngineStatus>),
    /// Run this many workers from now on (jobs in flight are not disturbed).
    Resize(usize),
}

/// The engine's state, as [`Control::Status`] answers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineStatus {
    /// Every worker, starting or running.
    pub workers: Vec<WorkerStatus>,
    /// Workers that have said hello and take jobs.
    pub ready: usize,
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Sources that have jobs waiting.
    pub queued_sources: usize,
    /// Jobs received and not answered yet, of every source.
    pub outstanding: u64,
    /// Results delivered since the engine started.
    pub answered: u64,
    /// Workers replaced after dying, since the engine started.
    pub restarts: u64,
    /// Workers recycled.
    pub recycled: u64,
    /// Jobs dropped unrun because their client went away.
    pub dropped: u64,
    /// Whether a stop signal was received.
    pub draining: bool,
    /// The tasks the workers serve (empty until one has said hello).
    pub tasks: Vec<String>,
}

impl EngineStatus {
    /// What the metrics say of it.
    pub fn live(&self) -> Live {
        let mut workers: Vec<(&'static str, u64)> = [
            WorkerState::Starting,
            WorkerState::Idle,
            WorkerState::Busy,
            WorkerState::Recycling,
            WorkerState::Retiring,
        ]
        .into_iter()
        .map(|state| (state.as_str(), 0))
        .collect();
        for worker in &self.workers {
            if let Some(count) = workers
                .iter_mut()
                .find(|(s, _)| *s == worker.state.as_str())
            {
                count.1 += 1;
            }
        }
        Live {
            queued: self.queued as u64,
            in_flight: self.outstanding,
            workers,
            restarts: self.restarts,
            recycled: self.recycled,
            ..Live::default()
        }
    }
}

/// One worker, as [`EngineStatus`] shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    /// Its process id (0 while it starts).
    pub pid: u32,
    /// Where it is in its life.
    pub state: WorkerState,
    /// The id of the job it is running, if known.
    pub current: Option<String>,
    /// How long that job has been running, in seconds.
    pub current_secs: Option<f64>,
    /// Seconds since it said hello.
    pub uptime_secs: f64,
    /// Its resident memory, in bytes.
    pub rss_bytes: Option<u64>,
    /// Jobs it has answered.
    pub jobs_done: u64,
    /// Jobs it holds.
    pub in_flight: u64,
    /// Its slot (`CORRAL_WORKER_SLOT`; 0 while it starts).
    pub slot: u32,
    /// Workers of its slot that died and were replaced, since the engine started.
    pub restarts: u64,
}

/// How the engine ended, besides every source answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEnd {
    /// Every source was answered in full.
    Completed,
    /// Stopped by a signal (its number); jobs not run have no result.
    Interrupted(i32),
    /// Stopped by `--halt`; the message says why.
    Halted(String),
    /// The workers could not be run (configuration error); the message says why.
    Fatal(String),
    /// A sink failed while no other source could still come.
    SinkFailed,
}

/// What the engine did.
#[derive(Debug)]
pub struct EngineReport {
    /// How it ended.
    pub end: EngineEnd,
    /// Whether it had to stop at once (a second signal, the end of the grace period, a fatal
    /// error, `--halt now`, a failed sink) rather than with every worker retired.
    pub stopped_at_once: bool,
    /// Restarts, recycles, jobs not run.
    pub counters: RunCounters,
    /// The first source error (a source that could not be read to its end), if any.
    pub source_error: Option<String>,
    /// Whether every source was read to its end.
    pub sources_complete: bool,
    /// When the grace period of a stop signal ends, if one was received.
    pub grace_until: Option<Instant>,
}
