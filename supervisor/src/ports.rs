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

/// Why a source could not be read to its end.
#[derive(Debug)]
pub enum SourceError {
    /// An input (named as the user would name it) could not be opened.
    Open {
        /// The input.
        name: String,
        /// Why.
        error: std::io::Error,
    },
    /// Reading an input failed.
    Read {
        /// The input.
        name: String,
        /// Why.
        error: std::io::Error,
    },
    /// A service's client connection failed while its jobs were read.
    Connection(std::io::Error),
}

impl SourceError {
    /// Reading `name` failed with `error`.
    pub fn read(name: impl Into<String>, error: std::io::Error) -> SourceError {
        SourceError::Read {
            name: name.into(),
            error,
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Open { name, error } => write!(f, "cannot open {name}: {error}"),
            SourceError::Read { name, error } => write!(f, "cannot read {name}: {error}"),
            SourceError::Connection(error) => write!(f, "a client's connection failed: {error}"),
        }
    }
}

/// What a source sends.
#[derive(Debug)]
pub enum Feed {
    /// Jobs read, and lines that could not be (their results are ready).
    Jobs(InputChunk),
    /// The source could not be read to its end; what it sent before still runs.
    Failed(SourceError),
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
