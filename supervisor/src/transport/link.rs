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
    /// The worker broke the protocol; the pool kills it.
    Violation(Violation),
}

/// How a worker broke its transport's protocol. Its text is a sentence about the worker ("it
/// ..."), for the log and the note of the job it was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A native worker's message is not a framed answer (the framing's complaint).
    Malformed(String),
    /// A native worker's channel failed (ipc-channel's error).
    ChannelFailed(String),
    /// A stdio worker printed a line longer than this many bytes.
    LineTooLong(usize),
    /// A stdio worker printed a line (quoted) that is not a response.
    NotAResponse(String),
    /// A stdio worker printed a response (quoted) with no request waiting.
    Unasked(String),
    /// A stdio worker answered one id where another was next.
    WrongId {
        /// The id it answered, as it wrote it.
        answered: String,
        /// The id of the request answered next, as sent.
        next: String,
    },
    /// A stdio worker's response (quoted) has neither or both of `output` and `error`.
    NeitherOrBoth(String),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Malformed(why) => write!(f, "it sent a malformed message ({why})"),
            Violation::ChannelFailed(why) => write!(f, "its channel failed ({why})"),
            Violation::LineTooLong(max) => write!(
                f,
                "it printed a line longer than {} on stdout",
                bytesize::ByteSize(*max as u64).display().iec()
            ),
            Violation::NotAResponse(line) => write!(
                f,
                "it printed {line} on stdout, which is not a response (print to stderr instead)"
            ),
            Violation::Unasked(line) => {
                write!(f, "it printed {line} on stdout with no request waiting")
            }
            Violation::WrongId { answered, next } => {
                write!(f, "it answered id {answered} where {next} was next")
            }
            Violation::NeitherOrBoth(line) => write!(
                f,
                "it answered {line} with neither or both of \"output\" and \"error\""
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Violation;

    /// Each violation reads as a sentence about the worker, as the log and the job's note say
    /// it.
    #[test]
    fn violations_say_what_the_worker_did() {
        let said = |v: Violation| v.to_string();
        assert_eq!(
            said(Violation::Malformed("3 bytes, too few to be framed".into())),
            "it sent a malformed message (3 bytes, too few to be framed)"
        );
        assert_eq!(
            said(Violation::ChannelFailed("closed".into())),
            "its channel failed (closed)"
        );
        assert_eq!(
            said(Violation::LineTooLong(64 << 20)),
            "it printed a line longer than 64.0 MiB on stdout"
        );
        assert_eq!(
            said(Violation::NotAResponse("\"hi\"".into())),
            "it printed \"hi\" on stdout, which is not a response (print to stderr instead)"
        );
        assert_eq!(
            said(Violation::Unasked("\"{}\"".into())),
            "it printed \"{}\" on stdout with no request waiting"
        );
        assert_eq!(
            said(Violation::WrongId {
                answered: "\"x\"".into(),
                next: "1".into()
            }),
            "it answered id \"x\" where 1 was next"
        );
        assert_eq!(
            said(Violation::NeitherOrBoth("\"{}\"".into())),
            "it answered \"{}\" with neither or both of \"output\" and \"error\""
        );
    }
}
