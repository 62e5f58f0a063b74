//! Wire messages between the corral supervisor and its native workers: ids, the bootstrap
//! handshake, batches and their outcomes; the records of the stdio protocol are in [`stdio`].
//! Types only; no I/O happens here.
//!
//! A native worker is started with two environment variables, [`ENV_BOOTSTRAP`] (the name of
//! an `ipc_channel::ipc::IpcOneShotServer`) and [`ENV_NONCE`]. It connects and sends its
//! [`Hello`], which hands over two byte channels: on one it receives [`ToWorker`] messages,
//! on the other it answers every [`Batch`] with one [`BatchDone`], each framed by [`frame`].
//!
//! Job inputs and task outputs travel as raw JSON bytes ([`RawJson`]): the supervisor never
//! parses them, it splices them into result lines.

pub mod byte_string;
pub mod exec;
pub mod frame;
pub mod jobline;
pub mod joblog;
pub mod result_line;
pub mod stdio;

use std::sync::atomic::{AtomicU64, Ordering};

use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcSharedMemory};
use serde::{Deserialize, Serialize};

/// Version of this protocol. The supervisor refuses a worker whose `Hello` carries another.
pub const PROTOCOL_VERSION: u32 = 6;

/// Environment variable holding the name of the supervisor's one-shot bootstrap server.
pub const ENV_BOOTSTRAP: &str = "CORRAL_BOOTSTRAP";

/// Environment variable holding the nonce the worker must echo in its `Hello`, as 16 hex digits.
pub const ENV_NONCE: &str = "CORRAL_NONCE";

/// Environment variable holding the supervisor's pid. A worker arms `PR_SET_PDEATHSIG` at
/// start-up and exits at once if its parent is no longer this process (the supervisor died
/// before the signal was armed).
pub const ENV_SUPERVISOR_PID: &str = "CORRAL_SUPERVISOR_PID";

/// Environment variable holding the worker's slot: a number from 1 that is unique among the
/// pool's live workers and that a replacement takes over (GNU parallel's `{%}`).
pub const ENV_WORKER_SLOT: &str = "CORRAL_WORKER_SLOT";

/// Environment variable set (to `1`) for the workers of `corral serve`: their jobs come from
/// clients who must not reach, through the service, what they could not reach themselves, so
/// the built-in worker reads no file a job names.
pub const ENV_SHARED_SERVICE: &str = "CORRAL_SHARED_SERVICE";

/// Largest serialized message either side sends, in bytes. Batches are cut below it.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Largest job line a supervisor accepts (`--max-job-bytes` cannot go past it). A batch holds
/// one such job at most, so the `u32` offsets of [`Batch`] and [`BatchDone`] cannot overflow.
pub const MAX_JOB_BYTES: u64 = 1 << 30;

/// Size in bytes of the shared-memory region a worker hands over in `Hello`: one
/// [`RunningWord`] as a little-endian `u64`.
pub const RUNNING_REGION_BYTES: usize = 8;

/// Tunes glibc's allocator for the buffers both sides make on every batch: about a hundred
/// KiB each, made on one thread and freed on another, one after the other. By default glibc
/// hands such memory back to the kernel as soon as it is free, and serves buffers over 128 KiB
/// with mappings of their own, so that every batch faults its pages in afresh; this keeps up
/// to 8 MiB free per arena instead. The supervisor calls it first thing, a native worker
/// before its hello.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets two thresholds of the allocator, which takes its own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// One worker process as the supervisor numbers them: a replacement gets a new id.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

/// One job's place in the supervisor's input, in reading order, starting at 0.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobSeq(pub u64);

/// One batch sent to a worker. Unique within a supervisor run.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BatchId(pub u64);

/// Index of a task in the list a worker announced in its `Hello`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskIndex(pub u32);

/// JSON text carried as bytes, never parsed on the way through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawJson(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What a worker publishes, in shared memory, about the job it is running right now.
///
/// `0` means idle. Otherwise the low 24 bits hold the job's index in its batch plus one and the
/// high 40 bits the batch id (modulo 2^40). The supervisor reads it after a worker dies to know
/// which job killed it, and on its timer to know how long the current job has run: attribution
/// without a message per job.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunningWord(pub u64);

impl RunningWord {
    /// The word of a worker between jobs.
    pub const IDLE: RunningWord = RunningWord(0);
    /// Most jobs one batch may hold, so that an index fits the word.
    pub const MAX_BATCH_JOBS: usize = (1 << 24) - 1;

    /// The word for the job at `index` of `batch`.
    pub fn running(batch: BatchId, index: usize) -> RunningWord {
        debug_assert!(index < Self::MAX_BATCH_JOBS);
        RunningWord(((batch.0 & ((1 << 40) - 1)) << 24) | (index as u64 + 1))
    }

    /// The batch and index this word names, or `None` when idle.
    pub fn job(self) -> Option<(u64, usize)> {
        if self.0 == 0 {
            return None;
        }
        Some((self.0 >> 24, ((self.0 & ((1 << 24) - 1)) - 1) as usize))
    }

    /// The index of the job of `batch` this word names, if it names one of `batch`.
    pub fn index_in(self, batch: BatchId) -> Option<usize> {
        self.job()
            .filter(|&(id, _)| id == batch.0 & ((1 << 40) - 1))
            .map(|(_, index)| index)
    }

    /// Whether this word names the job at `index` of `batch`.
    pub fn is(self, batch: BatchId, index: usize) -> bool {
        self == RunningWord::running(batch, index)
    }
}

/// The shared-memory word holding a worker's [`RunningWord`]: the worker stores, the
/// supervisor loads. Both sides map the same memfd page.
#[derive(Debug)]
pub struct RunningSlot {
    // Keeps the mapping alive; `word` points into it.
    _region: IpcSharedMemory,
    word: *const AtomicU64,
}

// SAFETY: the pointer targets a shared mapping owned by `_region`, accessed only atomically.
unsafe impl Send for RunningSlot {}
// SAFETY: as above; all access goes through `AtomicU64`.
unsafe impl Sync for RunningSlot {}

impl RunningSlot {
    /// A fresh idle slot, and the handle to send to the other side in `Hello`.
    pub fn create() -> (RunningSlot, IpcSharedMemory) {
        let region = IpcSharedMemory::from_byte(0, RUNNING_REGION_BYTES);
        let handover = region.clone();
        (
            RunningSlot::wrap(region).expect("a fresh region has the right size"),
            handover,
        )
    }

    /// The slot behind a region received in `Hello`; `None` if it has the wrong size.
    pub fn from_shared(region: IpcSharedMemory) -> Option<RunningSlot> {
        RunningSlot::wrap(region)
    }

    fn wrap(mut region: IpcSharedMemory) -> Option<RunningSlot> {
        if region.len() != RUNNING_REGION_BYTES {
            return None;
        }
        // SAFETY: the region is a page-aligned MAP_SHARED mapping of 8 bytes that lives as long
        // as `_region`. It is only ever accessed through this atomic, on both sides, so no
        // non-atomic access can race with it.
        let word = unsafe {
            AtomicU64::from_ptr(region.deref_mut().as_mut_ptr().cast::<u64>()) as *const AtomicU64
        };
        Some(RunningSlot {
            _region: region,
            word,
        })
    }

    /// Publishes `word`.
    pub fn store(&self, word: RunningWord) {
        // SAFETY: see `wrap`; the pointer is valid while `self` lives.
        unsafe { &*self.word }.store(word.0, Ordering::Release);
    }

    /// Reads the current word.
    pub fn load(&self) -> RunningWord {
        // SAFETY: see `wrap`.
        RunningWord(unsafe { &*self.word }.load(Ordering::Acquire))
    }
}

/// A worker introducing itself. `Answers` is how the supervisor takes the receiving end of the
/// answers' channel: the worker sends an [`IpcBytesReceiver`]; a supervisor that waits on many
/// workers at once may read it as any other ipc-channel receiver, which travels the same way.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello<Answers = IpcBytesReceiver> {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The nonce from [`ENV_NONCE`], proving this is the process that was started.
    pub nonce: u64,
    /// The worker's process id.
    pub pid: u32,
    /// Names of the tasks it serves; a job names one, a batch refers to it by [`TaskIndex`].
    pub tasks: Vec<String>,
    /// Where the supervisor sends work: [`ToWorker`] messages, framed by [`frame`].
    pub batches: IpcBytesSender,
    /// Where the supervisor reads the answers: [`BatchDone`] messages, framed by [`frame`].
    pub answers: Answers,
    /// [`RUNNING_REGION_BYTES`] of shared memory holding the worker's [`RunningWord`].
    pub running: IpcSharedMemory,
}

/// Messages from the supervisor to a worker.
#[derive(Debug)]
pub enum ToWorker {
    /// Run these jobs in order and answer with one [`BatchDone`].
    Batch(Batch),
    /// Finish the current batch, then exit with status 0.
    Shutdown,
}

/// Jobs a worker runs in order. Inputs travel in one buffer, so that a batch of thousands of
/// small jobs is a handful of allocations rather than one per job. Serialized, it is the head
/// of its message ([`frame`]), which carries the inputs apart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Echoed in the answer and written into the [`RunningWord`].
    pub id: BatchId,
    /// The jobs; at most [`RunningWord::MAX_BATCH_JOBS`].
    pub jobs: Vec<JobRequest>,
    /// The jobs' `input`s, as JSON, one after the other.
    #[serde(skip)]
    pub inputs: RawJson,
    /// The jobs' ids, as JSON, one after the other, when the worker asked for them (a stdio
    /// worker echoes each in its answer); empty otherwise.
    pub ids: RawJson,
    /// Where each id ends in [`Batch::ids`]; empty when the ids are not sent.
    pub id_ends: Vec<u32>,
    /// Set when the batch's one job is a block of job lines, its input, that the worker reads,
    /// runs and answers itself (see [`LineBlock`]).
    pub lines: Option<LineBlock>,
}

/// A block of raw job lines sent as a batch's one job: the worker reads each line as the
/// supervisor would ([`jobline`]), runs it and writes its result line ([`result_line`]), so
/// that the supervisor only frames lines and writes results. It answers with one
/// [`TaskResult::Lines`] whose output is the result lines, and its [`RunningWord`] names the
/// line it is running, counted from 0 in the block, blank lines included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineBlock {
    /// The number of the block's first line.
    pub first_line: u64,
    /// Attempts already made at these lines; their results say one more.
    pub attempts: u32,
    /// The pid the results name as their worker: the process the supervisor started.
    pub worker: u32,
    /// Longest line accepted, in bytes (`--max-job-bytes`).
    pub max_line_bytes: u64,
    /// The task of lines that name none (`--task`).
    pub default_task: Option<String>,
    /// What the answer says of each line besides its result line (for a joblog, or metrics).
    pub notes: Notes,
}

impl Batch {
    /// Appends a job.
    pub fn push(&mut self, task: TaskIndex, input: &[u8]) {
        self.inputs.0.extend_from_slice(input);
        let input_end = u32::try_from(self.inputs.0.len()).expect("batches stay far below 4 GiB");
        self.jobs.push(JobRequest { task, input_end });
    }

    /// Adds the id of the job pushed last, for a worker that asked for ids.
    pub fn push_id(&mut self, id: &[u8]) {
        self.ids.0.extend_from_slice(id);
        let end = u32::try_from(self.ids.0.len()).expect("batches stay far below 4 GiB");
        self.id_ends.push(end);
    }

    /// Each job's id, in order, if they were sent.
    pub fn ids(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.id_ends.iter().map(move |&end| {
            let end = end as usize;
            let id = self.ids.0.get(start..end).unwrap_or_default();
            start = end;
            id
        })
    }

    /// Each job's task and input, in order.
    pub fn iter(&self) -> impl Iterator<Item = (TaskIndex, &[u8])> {
        let mut start = 0;
        self.jobs.iter().map(move |job| {
            let end = job.input_end as usize;
            let input = self.inputs.0.get(start..end).unwrap_or_default();
            start = end;
            (job.task, input)
        })
    }
}

/// One job inside a batch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct JobRequest {
    /// Which task runs it.
    pub task: TaskIndex,
    /// Where its input ends in [`Batch::inputs`]; it starts where the previous one ended.
    pub input_end: u32,
}

/// A worker's answer to a [`Batch`]. Serialized, it is the head of its message ([`frame`]),
/// which carries the outputs apart.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchDone {
    /// The batch answered.
    pub batch: BatchId,
    /// One outcome per job, in the batch's order.
    pub outcomes: Vec<Outcome>,
    /// The outputs of the jobs, as JSON, one after the other. A failure adds nothing, unless
    /// it is a task error that describes itself (a command's exit status and output).
    #[serde(skip)]
    pub outputs: RawJson,
}

impl BatchDone {
    /// Appends an outcome whose output (empty for a failure) was appended to `outputs`.
    pub fn push(&mut self, nanos: u64, result: TaskResult) {
        let output_end = u32::try_from(self.outputs.0.len()).expect("answers stay far below 4 GiB");
        self.outcomes.push(Outcome {
            nanos,
            output_end,
            result,
        });
    }

    /// Whether every output offset lies within [`BatchDone::outputs`], so that the ranges of
    /// [`BatchDone::iter`] can be sliced. An answer that is not is a protocol violation.
    pub fn is_well_formed(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| o.output_end as usize <= self.outputs.0.len())
    }

    /// Each outcome with its output bytes, in order; the ranges are within
    /// [`BatchDone::outputs`] when [`BatchDone::is_well_formed`].
    pub fn iter(&self) -> impl Iterator<Item = (&Outcome, std::ops::Range<usize>)> {
        let mut start = 0;
        self.outcomes.iter().map(move |outcome| {
            let end = (outcome.output_end as usize).max(start);
            let range = start..end;
            start = end;
            (outcome, range)
        })
    }
}

/// The result of running one job.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// Time spent in the task, in nanoseconds.
    pub nanos: u64,
    /// Where its output ends in [`BatchDone::outputs`].
    pub output_end: u32,
    /// What the task produced.
    pub result: TaskResult,
}

/// What a task produced.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskResult {
    /// The task's output is in [`BatchDone::outputs`].
    Ok,
    /// The task returned an error.
    TaskError {
        /// What went wrong, in words (the error's `Display`).
        message: String,
        /// A name for the kind of error, when the worker gives one (a Python exception's
        /// class, `exit_status` for a command that failed).
        error_type: Option<String>,
    },
    /// The job's input did not match the task's input type.
    BadInput(String),
    /// The task panicked; the message is the panic's payload.
    Panic(String),
    /// A [`LineBlock`] answered: its result lines are the output.
    Lines(LineTally),
}

/// What the result lines of a [`LineBlock`] say, counted.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTally {
    /// Lines in the block, blank ones included.
    pub lines: u64,
    /// Result lines written: one for each line that is not blank.
    pub results: u64,
    /// Those that are failures, by kind.
    pub failed: Vec<(result_line::ErrorKind, u64)>,
    /// The lines counted by task and outcome, unless [`LineBlock::notes`] is [`Notes::None`].
    pub counts: Vec<LineCount>,
    /// With [`Notes::joblog`]: the bytes at the end of the answer's outputs, after the result
    /// lines, that are what the lines' joblog lines are made of ([`joblog::Alike`], packed).
    pub alike_bytes: u64,
}

/// What a block's answer says of its lines besides their result lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notes {
    /// Nothing.
    #[default]
    None,
    /// Counts by task and outcome, with a histogram of times ([`LineCount`]): for metrics.
    Counts,
    /// What the lines' joblog lines are made of ([`LineTally::alike_bytes`]): for a joblog.
    Joblog,
    /// Both.
    Both,
}

impl Notes {
    /// Whether lines are counted.
    pub fn counts(self) -> bool {
        matches!(self, Notes::Counts | Notes::Both)
    }

    /// Whether what the lines' joblog lines are made of is noted.
    pub fn joblog(self) -> bool {
        matches!(self, Notes::Joblog | Notes::Both)
    }
}

/// Upper bounds of the buckets of a histogram of job times, in nanoseconds (100 µs to 300 s;
/// a last bucket takes the rest).
pub const DURATION_BUCKET_NANOS: [u64; 13] = [
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
    60_000_000_000,
    300_000_000_000,
];

/// The lines of a block of one task (`None`: lines that did not run) and one outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineCount {
    /// The task.
    pub task: Option<TaskIndex>,
    /// The outcome: how they failed, if they did.
    pub failed: Option<result_line::ErrorKind>,
    /// How many.
    pub count: u64,
    /// Their times, summed, in nanoseconds.
    pub nanos: u64,
    /// Their times in the buckets of [`DURATION_BUCKET_NANOS`], and one more for the rest.
    pub buckets: [u64; DURATION_BUCKET_NANOS.len() + 1],
}

impl LineTally {
    /// Counts `note`, if `notes` asks for counts.
    pub fn note(&mut self, notes: Notes, note: LineNote) {
        match notes {
            Notes::None | Notes::Joblog => {}
            Notes::Counts | Notes::Both => {
                // Lines mostly count where the one before did, in the first bucket.
                let same = |c: &LineCount| c.task == note.task && c.failed == note.failed;
                let at = match self.counts.iter().rposition(same) {
                    Some(at) => at,
                    None => {
                        self.counts.push(LineCount {
                            task: note.task,
                            failed: note.failed,
                            ..LineCount::default()
                        });
                        self.counts.len() - 1
                    }
                };
                let count = &mut self.counts[at];
                count.count += 1;
                count.nanos = count.nanos.saturating_add(note.nanos);
                let bucket = if note.nanos <= DURATION_BUCKET_NANOS[0] {
                    0
                } else {
                    DURATION_BUCKET_NANOS.partition_point(|&b| b < note.nanos)
                };
                count.buckets[bucket] += 1;
            }
        }
    }
}

/// What the supervisor's joblog and metrics need of one line of a block (blank lines have
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineNote {
    /// The task it ran; `None` for a line that did not run (its result says why).
    pub task: Option<TaskIndex>,
    /// How it failed, if it did.
    pub failed: Option<result_line::ErrorKind>,
    /// Time it took, in nanoseconds.
    pub nanos: u64,
}

impl LineTally {
    /// Counts one more result, a failure of `kind` or a success.
    pub fn add(&mut self, kind: Option<result_line::ErrorKind>) {
        self.results += 1;
        let Some(kind) = kind else { return };
        match self.failed.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.failed.push((kind, 1)),
        }
    }

    /// Failures of any kind.
    pub fn failures(&self) -> u64 {
        self.failed.iter().map(|&(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_by_task_and_outcome_or_kept_one_by_one() {
        let note = |task: u32, failed, nanos| LineNote {
            task: Some(TaskIndex(task)),
            failed,
            nanos,
        };
        let mut tally = LineTally::default();
        tally.note(Notes::Counts, note(1, None, 50_000));
        tally.note(Notes::Counts, note(1, None, 2_000_000));
        tally.note(Notes::Counts, note(2, None, 1));
        let failed = Some(result_line::ErrorKind::TaskError);
        tally.note(Notes::Counts, note(1, failed, 400_000_000_000));
        assert_eq!(tally.counts.len(), 3);
        let ok = &tally.counts[0];
        assert_eq!(
            (ok.task, ok.failed, ok.count),
            (Some(TaskIndex(1)), None, 2)
        );
        assert_eq!(ok.nanos, 2_050_000);
        assert_eq!((ok.buckets[0], ok.buckets[3]), (1, 1), "{:?}", ok.buckets);
        assert_eq!(
            tally.counts[2].buckets[DURATION_BUCKET_NANOS.len()],
            1,
            "past the last bound"
        );
        tally.note(Notes::Both, note(3, None, 7));
        tally.note(Notes::None, note(3, None, 7));
        tally.note(Notes::Joblog, note(3, None, 7));
        assert_eq!(
            tally.counts.len(),
            4,
            "counted with Both too, not with None or Joblog"
        );
    }

    #[test]
    fn running_slot_is_shared_between_its_two_handles() {
        let (writer, handover) = RunningSlot::create();
        let reader = RunningSlot::from_shared(handover).unwrap();
        let word = RunningWord::running(BatchId(3), 4);
        writer.store(word);
        assert_eq!(reader.load(), word);
        assert!(RunningSlot::from_shared(IpcSharedMemory::from_byte(0, 3)).is_none());
    }

    #[test]
    fn batches_and_answers_pack_bytes_back_to_back() {
        let mut batch = Batch::default();
        batch.push(TaskIndex(1), b"[1,2]");
        batch.push(TaskIndex(0), b"null");
        let jobs: Vec<(TaskIndex, &[u8])> = batch.iter().collect();
        assert_eq!(
            jobs,
            [(TaskIndex(1), &b"[1,2]"[..]), (TaskIndex(0), &b"null"[..])]
        );

        let mut done = BatchDone::default();
        done.outputs.0.extend_from_slice(b"5");
        done.push(10, TaskResult::Ok);
        done.push(20, TaskResult::Panic("p".into()));
        done.outputs.0.extend_from_slice(b"\"x\"");
        done.push(30, TaskResult::Ok);
        let outputs: Vec<&[u8]> = done
            .iter()
            .map(|(_, range)| &done.outputs.0[range])
            .collect();
        assert_eq!(outputs, [&b"5"[..], b"", b"\"x\""]);
    }

    #[test]
    fn running_word_round_trips() {
        let word = RunningWord::running(BatchId(12345), 77);
        assert_eq!(word.job(), Some((12345, 77)));
        assert!(word.is(BatchId(12345), 77));
        assert!(!word.is(BatchId(12345), 78));
        assert_eq!(RunningWord::IDLE.job(), None);
        let big = RunningWord::running(BatchId((1 << 40) + 5), 0);
        assert_eq!(big.job(), Some((5, 0)));
        assert_eq!(word.index_in(BatchId(12345)), Some(77));
        assert_eq!(big.index_in(BatchId((1 << 40) + 5)), Some(0));
        assert_eq!(word.index_in(BatchId(12346)), None);
        assert_eq!(RunningWord::IDLE.index_in(BatchId(0)), None);
    }
}
