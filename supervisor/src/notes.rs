//! Notes of finished jobs, for the joblog and the metrics: which line, which task, when it
//! started, how long it took and how it ended. The scheduler makes one per result line when
//! asked ([`crate::scheduler::SchedulerConfig::notes`]), in the order the jobs finish; a block
//! of lines gets one per line from its worker ([`corral_protocol::LineNote`]).

use std::sync::Arc;
use std::time::Instant;

use crate::record::{ErrorKind, SharedBytes, TaskId};

/// One finished job (or a line that never became one).
#[derive(Debug, Clone)]
pub struct JobNote {
    /// Its line in its source, from 1.
    pub line: u64,
    /// The task it ran; `None` for a line that named none it could run.
    pub task: Option<TaskId>,
    /// When its last attempt started, as reckoned from when its answer came and the times the
    /// worker gave; `None` if it never ran.
    pub started: Option<Instant>,
    /// Time its last attempt took, in nanoseconds.
    pub nanos: u64,
    /// How it failed, if it did.
    pub failed: Option<ErrorKind>,
    /// How it ended besides its error kind, for the few jobs that say more (kept apart, so
    /// that the note of a plain job stays small).
    pub ended: Option<Box<Ended>>,
}

/// What the scheduler noted in one step: notes of jobs, counts of lines of blocks, and what
/// workers said of each line of their blocks.
#[derive(Debug, Default)]
pub struct Noted {
    /// Notes of the jobs it saw whole, in the order they finished.
    pub notes: Vec<JobNote>,
    /// Lines of blocks, counted by their workers.
    pub counts: Vec<Counted>,
    /// The lines of blocks, as their workers noted them for the joblog.
    pub block_joblogs: Vec<BlockJoblog>,
}

/// What a worker noted of the lines of a batch of blocks for the joblog: packed
/// [`corral_protocol::joblog::Alike`]s.
#[derive(Debug, Clone)]
pub struct BlockJoblog {
    /// The [`corral_protocol::joblog::Alike`]s, packed.
    pub alike: SharedBytes,
    /// The batch's first line, from which their indexes count.
    pub first_line: u64,
    /// The batch's number of lines: no more are written.
    pub lines: u64,
    /// The run's number of each of the worker's tasks, by the worker's index.
    pub task_ids: Arc<[Option<TaskId>]>,
}

impl Noted {
    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.notes.is_empty() && self.counts.is_empty() && self.block_joblogs.is_empty()
    }
}

/// Lines of blocks of one task and outcome, as their worker counted them
/// ([`corral_protocol::LineCount`], its task numbered for the run).
#[derive(Debug, Clone)]
pub struct Counted {
    /// The task; `None` for lines that did not run.
    pub task: Option<TaskId>,
    /// How they failed, if they did.
    pub failed: Option<ErrorKind>,
    /// How many.
    pub count: u64,
    /// Their times, summed, in nanoseconds.
    pub nanos: u64,
    /// Their times in the buckets of [`corral_protocol::DURATION_BUCKET_NANOS`], and the rest.
    pub buckets: [u64; corral_protocol::DURATION_BUCKET_NANOS.len() + 1],
}

/// What ended a job, besides its error kind.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    /// The signal that ended its worker, as a number.
    pub signal: Option<i32>,
    /// The status its worker exited with, when that is why it failed.
    pub exit_code: Option<i32>,
    /// An `--exec` job's output (its command, status and what it printed), raw JSON.
    pub exec_output: Option<SharedBytes>,
}

impl JobNote {
    /// A note of a job that did not run, or whose running is not timed.
    pub fn unrun(line: u64, failed: Option<ErrorKind>) -> JobNote {
        JobNote {
            line,
            task: None,
            started: None,
            nanos: 0,
            failed,
            ended: None,
        }
    }
}
