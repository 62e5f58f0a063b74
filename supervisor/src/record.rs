//! Job and result records as the supervisor holds them: a job read from input, and the one
//! result every job line ends with.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::{Deref, DerefMut, Range};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use corral_protocol::JobSeq;

use crate::ring::{Home, Ring};

/// A job read from input, waiting for or under execution: one job line, or a block of raw
/// job lines that a native worker reads and answers itself.
///
/// A job costs no allocation of its own: its bytes are slices of the block of lines it was
/// read with, and a short id is kept inline. That matters at a million jobs a second.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its place in the input, from 0.
    pub seq: JobSeq,
    /// Where it came from (a run has one source; a service one per connection).
    pub source: SourceId,
    /// The 1-based line it came from (a block's first line), counted across all inputs.
    pub line: u64,
    /// What it asks of a worker.
    pub work: Work,
    /// Attempts that ended in a crash or a timeout so far.
    pub failed_attempts: u32,
}

/// What a [`Job`] asks of a worker.
#[derive(Debug, Clone)]
pub enum Work {
    /// One job line, read by the supervisor.
    One(OneJob),
    /// A block of raw job lines.
    Lines(Lines),
}

/// One job line, as the supervisor read it.
#[derive(Debug, Clone)]
pub struct OneJob {
    /// The job's `id` as raw JSON (a string or a number).
    pub id: JobId,
    /// The task that runs it, by its number in the run's [`TaskNames`].
    pub task: TaskId,
    /// The job's `input` as raw JSON.
    pub input: SharedBytes,
    /// The job's `meta` as raw JSON, echoed in its result.
    pub meta: Option<SharedBytes>,
}

/// A block of raw job lines that a native worker reads and answers itself
/// ([`corral_protocol::LineBlock`]): one job for the scheduler, one result (all their result
/// lines) for the sink. Its lines are counted once, when it is cut.
#[derive(Debug, Clone)]
pub struct Lines {
    /// The lines, whole, each with its `\n` but perhaps the last.
    bytes: SharedBytes,
    /// How many there are.
    count: u64,
}

impl Lines {
    /// The block of `bytes`, which holds `count` lines (as [`count_lines`] counts them).
    pub fn new(bytes: SharedBytes, count: u64) -> Lines {
        debug_assert_eq!(count, count_lines(bytes.as_bytes()));
        Lines { bytes, count }
    }

    /// Its lines.
    pub fn bytes(&self) -> &SharedBytes {
        &self.bytes
    }

    /// How many lines it holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Splits it after its first `count` lines (at least one, fewer than it has): this keeps
    /// them, the rest is returned.
    pub fn split_off(&mut self, count: u64) -> Lines {
        debug_assert!(count > 0 && count < self.count);
        let bytes = self.bytes.as_bytes();
        let end = memchr::memchr_iter(b'\n', bytes)
            .nth(count as usize - 1)
            .map_or(bytes.len(), |i| i + 1);
        let rest = Lines {
            bytes: self.bytes.slice(end..bytes.len()),
            count: self.count - count,
        };
        self.bytes = self.bytes.slice(0..end);
        self.count = count;
        rest
    }
}

impl Job {
    /// The job of a job line, line `line`, not tried yet.
    pub fn one(seq: JobSeq, source: SourceId, line: u64, one: OneJob) -> Job {
        Job {
            seq,
            source,
            line,
            work: Work::One(one),
            failed_attempts: 0,
        }
    }

    /// A block of raw job lines, the first of which is line `line`.
    pub fn lines(seq: JobSeq, source: SourceId, line: u64, lines: Lines) -> Job {
        Job {
            seq,
            source,
            line,
            work: Work::Lines(lines),
            failed_attempts: 0,
        }
    }

    /// The block of lines it is, if it is one.
    pub fn as_lines(&self) -> Option<&Lines> {
        match &self.work {
            Work::Lines(lines) => Some(lines),
            Work::One(_) => None,
        }
    }

    /// The one job line it is, if it is one.
    pub fn as_one(&self) -> Option<&OneJob> {
        match &self.work {
            Work::One(one) => Some(one),
            Work::Lines(_) => None,
        }
    }

    /// Whether it is a block of raw job lines.
    pub fn is_lines(&self) -> bool {
        matches!(self.work, Work::Lines(_))
    }

    /// The lines it stands for: those of its block, or 1.
    pub fn weight(&self) -> u64 {
        match &self.work {
            Work::One(_) => 1,
            Work::Lines(lines) => lines.count,
        }
    }

    /// The bytes it sends a worker: its input, or its block's lines.
    pub fn bytes(&self) -> &SharedBytes {
        match &self.work {
            Work::One(one) => &one.input,
            Work::Lines(lines) => &lines.bytes,
        }
    }

    /// The result of this job line, keyed by its id and line and echoing its `meta`.
    ///
    /// # Panics
    ///
    /// If it is a block of lines: a block's result holds its worker's own result lines, and
    /// the scheduler makes it (`ResultKey::Lines`); a line of a block that fails alone is read
    /// into a job line first.
    pub fn into_result(
        self,
        attempts: u32,
        worker: Option<u32>,
        outcome: Result<Completed, Box<JobError>>,
    ) -> JobResult {
        let Work::One(one) = self.work else {
            panic!("a block of lines has no result of its own")
        };
        JobResult {
            seq: self.seq,
            source: self.source,
            key: ResultKey::Job {
                id: one.id,
                line: self.line,
            },
            meta: one.meta,
            attempts,
            worker,
            outcome,
        }
    }

    /// Splits a block of lines after its first `count` lines (at least one, fewer than it
    /// has): this keeps them, the rest is returned, a block starting `count` lines later.
    ///
    /// # Panics
    ///
    /// If it is not a block of lines.
    pub fn split_lines(&mut self, count: u64) -> Job {
        let Work::Lines(lines) = &mut self.work else {
            panic!("only a block of lines is split")
        };
        let rest = lines.split_off(count);
        Job {
            seq: self.seq,
            source: self.source,
            line: self.line + count,
            work: Work::Lines(rest),
            failed_attempts: self.failed_attempts,
        }
    }
}

/// One stream of jobs fed to the engine, whose results go back to it alone: a run's inputs are
/// one source, each connection to a service is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceId(pub u32);

/// A task name's number within one run (see [`TaskNames`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(u32);

impl TaskId {
    /// Its place in its run's table of names, from 0.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The task names of one run, numbered as they are first read: jobs carry the number, which
/// costs nothing to copy or drop, where a shared name would cost two atomic operations per job
/// on a count that the input thread and the scheduler both keep touching. The input thread
/// adds names; the scheduler looks them up when it forms a batch.
#[derive(Debug, Clone, Default)]
pub struct TaskNames(Arc<RwLock<NameTable>>);

#[derive(Debug, Default)]
struct NameTable {
    ids: HashMap<Arc<str>, TaskId>,
    names: Vec<Arc<str>>,
}

impl TaskNames {
    /// Most distinct task names a run may have: a worker serves a handful, so more is a sign
    /// of input that names its tasks by mistake (a job id in the `task` field), and would only
    /// fill memory.
    pub const MAX: usize = 10_000;

    /// The number of `name`, given it now if it has none; `None` when the run already has
    /// [`TaskNames::MAX`] names.
    pub fn intern(&self, name: &str) -> Option<TaskId> {
        if let Some(&id) = self.read().ids.get(name) {
            return Some(id);
        }
        let mut table = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = table.ids.get(name) {
            return Some(id);
        }
        if table.names.len() >= TaskNames::MAX {
            return None;
        }
        let id = TaskId(table.names.len() as u32);
        let name: Arc<str> = Arc::from(name);
        table.names.push(name.clone());
        table.ids.insert(name, id);
        Some(id)
    }

    /// The name numbered `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not from this run's names.
    pub fn name(&self, id: TaskId) -> Arc<str> {
        self.read().names[id.0 as usize].clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, NameTable> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A slice of a shared buffer: part of a block of job lines, or of the outputs of a batch.
/// Slicing and cloning only count references; nothing is copied.
#[derive(Clone)]
pub struct SharedBytes(Bytes);

impl SharedBytes {
    /// The bytes of `buf` in `range`.
    pub fn new(buf: &Bytes, range: Range<usize>) -> SharedBytes {
        SharedBytes(buf.slice(range))
    }

    /// The bytes themselves.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes in `range` of these, sharing the buffer.
    pub fn slice(&self, range: Range<usize>) -> SharedBytes {
        SharedBytes(self.0.slice(range))
    }

    /// The buffer's view of these bytes.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl From<&[u8]> for SharedBytes {
    fn from(bytes: &[u8]) -> SharedBytes {
        SharedBytes(Bytes::copy_from_slice(bytes))
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> SharedBytes {
        SharedBytes(Bytes::from(bytes))
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A job's id as raw JSON, stored inline when it is short (as ids usually are).
#[derive(Clone)]
pub enum JobId {
    /// Up to 22 bytes, in place.
    Inline {
        /// How many bytes of `bytes` are used.
        len: u8,
        /// The bytes.
        bytes: [u8; 22],
    },
    /// A longer id.
    Heap(Box<[u8]>),
}

impl JobId {
    /// The id's JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            JobId::Inline { len, bytes } => &bytes[..*len as usize],
            JobId::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for JobId {
    fn from(text: &[u8]) -> JobId {
        if text.len() <= 22 {
            let mut bytes = [0; 22];
            bytes[..text.len()].copy_from_slice(text);
            JobId::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            JobId::Heap(text.into())
        }
    }
}

impl From<Vec<u8>> for JobId {
    fn from(text: Vec<u8>) -> JobId {
        JobId::from(&text[..])
    }
}

impl PartialEq for JobId {
    fn eq(&self, other: &JobId) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for JobId {}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

pub use corral_protocol::result_line::ErrorKind;

/// Why a job failed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, in words.
    pub message: String,
    /// The signal that ended the worker, for `crashed` (`"SIGSEGV"`).
    pub signal: Option<String>,
    /// The worker's exit status, for `crashed` when it exited rather than being signalled.
    pub exit_code: Option<i32>,
    /// For `task_error`: the name the worker gave the error (a Python exception's class,
    /// `exit_status` for a command that failed).
    pub error_type: Option<String>,
    /// For `task_error`: output the failed task still produced, raw JSON (a command's status
    /// and what it printed).
    pub output: Option<SharedBytes>,
}

impl JobError {
    /// An error with only a kind and a message, boxed as a result's outcome holds it.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Box<JobError> {
        Box::new(JobError {
            kind,
            message: message.into(),
            signal: None,
            exit_code: None,
            error_type: None,
            output: None,
        })
    }
}

/// Which job a result answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultKey {
    /// A job that was read: its raw JSON id, and the line it came from.
    Job {
        /// Raw JSON id.
        id: JobId,
        /// 1-based input line.
        line: u64,
    },
    /// A line that could not be read as a job.
    Line(u64),
    /// A block of job lines answered by a worker ([`Job::lines`]): the output holds their
    /// result lines, counted here.
    Lines(Box<corral_protocol::LineTally>),
}

/// The one result of one job line.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// The answered item's place in the input (jobs and rejected lines share one count).
    pub seq: JobSeq,
    /// The source of the job, which the result goes back to.
    pub source: SourceId,
    /// Which job.
    pub key: ResultKey,
    /// The job's `meta`, echoed.
    pub meta: Option<SharedBytes>,
    /// How many times the job ran (0 when it never did).
    pub attempts: u32,
    /// The pid of the worker that ran the last attempt, if any.
    pub worker: Option<u32>,
    /// What came of it. An error is boxed: errors are rare, and a result moves through
    /// several queues, so it is kept small for the common case.
    pub outcome: Result<Completed, Box<JobError>>,
}

/// The output of a job that succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The task's output, raw JSON.
    pub output: SharedBytes,
    /// Time the task took, in nanoseconds.
    pub nanos: u64,
}

impl JobResult {
    /// Whether the job succeeded (for a block of lines: every one of them).
    pub fn is_ok(&self) -> bool {
        self.failures() == 0
    }

    /// The failed results it holds: 0 or 1, or those of a block of lines.
    pub fn failures(&self) -> u64 {
        match (&self.key, &self.outcome) {
            (ResultKey::Lines(tally), _) => tally.failures(),
            (_, outcome) => u64::from(outcome.is_err()),
        }
    }

    /// The input lines it answers: 1, or every line of a block of lines, blank ones too (what
    /// [`Job::weight`] counted).
    pub fn weight(&self) -> u64 {
        match &self.key {
            ResultKey::Lines(tally) => tally.lines,
            _ => 1,
        }
    }

    /// The result lines it stands for: 1, or those of a block of lines.
    pub fn count(&self) -> u64 {
        match &self.key {
            ResultKey::Lines(tally) => tally.results,
            _ => 1,
        }
    }
}

/// Jobs in input order, in a vector that goes back to the input reader's `Ring` of them when
/// it is dropped (if it came from there), so that the vectors in flight are a fixed set reused
/// in turn. The jobs read together travel in one of these from the reader through the queue to
/// a worker's batch, so that a batch can take them all by moving it.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: VecDeque<Job>,
    home: Option<Home<VecDeque<Job>>>,
}

impl Jobs {
    /// An empty vector with room for `capacity` jobs, of no ring.
    pub fn with_capacity(capacity: usize) -> Jobs {
        Jobs {
            jobs: VecDeque::with_capacity(capacity),
            home: None,
        }
    }

    /// An empty vector with room for `capacity` jobs, from `ring` (waiting while it has none).
    pub fn from_ring(ring: &mut Ring<VecDeque<Job>>, capacity: usize) -> Jobs {
        Jobs {
            jobs: ring.take(|| VecDeque::with_capacity(capacity)),
            home: Some(ring.home()),
        }
    }
}

impl Deref for Jobs {
    type Target = VecDeque<Job>;

    fn deref(&self) -> &VecDeque<Job> {
        &self.jobs
    }
}

impl DerefMut for Jobs {
    fn deref_mut(&mut self) -> &mut VecDeque<Job> {
        &mut self.jobs
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            let mut jobs = std::mem::take(&mut self.jobs);
            jobs.clear();
            home.give_back(jobs);
        }
    }
}

impl From<Vec<Job>> for Jobs {
    fn from(jobs: Vec<Job>) -> Jobs {
        Jobs {
            jobs: VecDeque::from(jobs),
            home: None,
        }
    }
}

impl FromIterator<Job> for Jobs {
    fn from_iter<I: IntoIterator<Item = Job>>(jobs: I) -> Jobs {
        Jobs {
            jobs: jobs.into_iter().collect(),
            home: None,
        }
    }
}

/// Items read together, handed from the input reader to the scheduler at once.
#[derive(Debug, Default)]
pub struct InputChunk {
    /// The jobs to run.
    pub jobs: Jobs,
    /// Lines that are not jobs, each with its result.
    pub rejected: Vec<JobResult>,
}

impl InputChunk {
    /// Adds an item.
    pub fn push(&mut self, item: InputItem) {
        match item {
            InputItem::Job(job) => self.jobs.push_back(job),
            InputItem::Rejected(result) => self.rejected.push(*result),
        }
    }

    /// Moves the [`JobSeq`]s of a chunk numbered from 0 (a piece parsed apart, see
    /// [`crate::input::JobParser::parse_piece`]) to follow `*next`, and moves `*next` past them.
    pub fn renumber(&mut self, next: &mut u64) {
        for job in self.jobs.iter_mut() {
            job.seq.0 += *next;
        }
        for result in &mut self.rejected {
            result.seq.0 += *next;
        }
        *next += self.len() as u64;
    }

    /// Jobs and rejected lines in it.
    pub fn len(&self) -> usize {
        self.jobs.len() + self.rejected.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One item the input reader produces: a job to run, or a line already answered.
#[derive(Debug, Clone)]
pub enum InputItem {
    /// A job to run.
    Job(Job),
    /// A line that could not be read as a job, with its error result (boxed, as it is rare
    /// and a job is smaller).
    Rejected(Box<JobResult>),
}

/// The number of lines in `lines`, whole lines each with its `\n` but perhaps the last.
pub fn count_lines(lines: &[u8]) -> u64 {
    // Counted with vector compares, much faster than a search for each line.
    let newlines = bytecount::count(lines, b'\n') as u64;
    newlines + u64::from(lines.last().is_some_and(|&last| last != b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seq: u64) -> Job {
        let one = OneJob {
            id: JobId::from(&b"1"[..]),
            task: TaskId(0),
            input: SharedBytes::from(&b"null"[..]),
            meta: None,
        };
        Job::one(JobSeq(seq), SourceId::default(), seq + 1, one)
    }

    #[test]
    fn job_vectors_go_back_to_their_ring_empty_and_others_do_not() {
        let mut ring = Ring::new(1);
        let mut jobs = Jobs::from_ring(&mut ring, 8);
        jobs.push_back(job(0));
        jobs.push_back(job(1));
        let storage = jobs.as_slices().0.as_ptr();
        drop(jobs);
        let again = Jobs::from_ring(&mut ring, 8);
        assert!(again.is_empty(), "what was left in it was dropped");
        assert_eq!(
            again.as_slices().0.as_ptr(),
            storage,
            "the same storage, reused"
        );
        assert!(again.capacity() >= 8);
        // A vector of no ring is only dropped: the ring's one vector is still out.
        drop(Jobs::from(vec![job(2)]));
        assert_eq!(ring.given_back(), 0);
        drop(again);
        assert_eq!(ring.given_back(), 1);
    }
}
