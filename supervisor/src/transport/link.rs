//! What every transport shares with the pool: the pipes it is handed after the spawn, the
//! hello it gives back, the refusal of a handshake, and what a read of answers gave.

use std::io::PipeReader;
use std::process::{ChildStdin, ChildStdout};

use corral_protocol::{BatchDone, RunningSlot};

use crate::scheduler::StartCause;

/// The worker's pipes the pool hands a transport after the spawn. `stopped` becomes readable
/// once the worker has been reaped, so that a read never outlasts the worker (a descendant
/// that escaped its group may still hold the pipe open).
pub(crate) struct Pipes {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stopped: Option<PipeReader>,
}

/// A worker that said hello, with its transport's outbox `O` and inbox `I`.
pub(crate) struct Greeting<O, I> {
    /// The tasks it serves, in index order.
    pub tasks: Vec<String>,
    /// The job it is running.
    pub running: RunningSlot,
    /// Whether its batches must carry the jobs' ids.
    pub job_ids: bool,
    pub outbox: O,
    pub inbox: I,
}

impl<O, I> Greeting<O, I> {
    /// The same hello with its outbox and inbox wrapped.
    pub(crate) fn wrap<O2, I2>(
        self,
        outbox: impl FnOnce(O) -> O2,
        inbox: impl FnOnce(I) -> I2,
    ) -> Greeting<O2, I2> {
        Greeting {
            tasks: self.tasks,
            running: self.running,
            job_ids: self.job_ids,
            outbox: outbox(self.outbox),
            inbox: inbox(self.inbox),
        }
    }
}

/// Why a handshake failed, and how it is worded.
pub(crate) struct Refusal {
    /// Whether another start would repeat it (a wrong protocol version is `Fatal`).
    pub cause: StartCause,
    /// What happened, as a sentence about the worker.
    pub message: String,
}

impl Refusal {
    /// A refusal another start may not repeat.
    pub(crate) fn transient(message: String) -> Refusal {
        Refusal {
            cause: StartCause::Transient,
            message,
        }
    }

    /// A refusal every start would repeat.
    pub(crate) fn fatal(message: String) -> Refusal {
        Refusal {
            cause: StartCause::Fatal,
            message,
        }
    }
}

/// What the next read of a worker's inbox gave.
pub(crate) enum Received {
    /// The answer to a whole batch.
    Done(BatchDone),
    /// The worker closed its end (it exited, or is exiting).
    Closed,
    /// The worker broke the protocol; the pool kills it. Says what it did.
    Violation(String),
}
