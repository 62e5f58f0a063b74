//! The engine's ports: what a source sends it ([`Intake`], [`Feed`]) and where each source's
//! results go ([`Sink`]). Readers of input and writers of results meet the engine here, and
//! need nothing else of it.

use crate::record::{InputChunk, JobResult, SourceId};

/// Where one source's results go.
pub trait Sink: Send {
    /// Takes results of the source's jobs; must not wait.
    fn deliver(&mut self, results: Vec<JobResult>);
    /// Results handed over and not yet written.
    fn backlog(&self) -> usize;
    /// Whether results can no longer be written (a write failed, the client is gone).
    fn failed(&self) -> bool;
}

/// What a source sends.
#[derive(Debug)]
pub enum Feed {
    /// Jobs read, and lines that could not be (their results are ready).
    Jobs(InputChunk),
    /// The source could not be read to its end; what it sent before still runs.
    Failed(String),
    /// The source has nothing more.
    Ended,
}

/// Sources opening, what they send, and the end of sources; taken only while the queue has
/// room.
pub enum Intake {
    /// A new source, whose results go to `sink`. Each source opened has a higher id than the
    /// one before.
    Open {
        /// Which source.
        source: SourceId,
        /// Where its results go.
        sink: Box<dyn Sink>,
    },
    /// What a source sends.
    Feed {
        /// Which source.
        source: SourceId,
        /// What it sends.
        feed: Feed,
    },
    /// No source will be opened after this.
    Seal,
}
