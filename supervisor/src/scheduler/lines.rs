//! Blocks of raw job lines ([`Job::lines`]) in the scheduler. A block is one job to the queue
//! and one batch to a native worker, which reads, runs and answers each of its lines itself
//! ([`corral_protocol::LineBlock`]); its answer is one result holding every result line.
//!
//! A block is cut to the batch size the time per line asks for, as a batch of jobs would be,
//! and blocks that follow each other in the input share a batch up to that size (and to
//! [`LINE_BATCH_BYTES`]), the worker reading them as one.
//! When a worker dies holding a block, its running word names the line: the lines before and
//! after it go back to the queue as blocks, without penalty, and that line alone is read here,
//! by the run's own parser, into a job like any other, which takes the failed attempt (and
//! runs alone, is retried or fails, as any job that crashed its worker).

use corral_protocol::{
    Batch, BatchId, JobRequest, LineBlock, Notes, Outcome, RawJson, RunningWord, TaskIndex,
    TaskResult, WorkerId, frame,
};

use super::{Action, LineReading, Pace, Scheduler, WorkerExit, say};
use std::time::Instant;

use crate::input::{JobParser, Piece};
use crate::notes::BlockJoblog;
use crate::record::{Completed, InputItem, Job, JobResult, Jobs, ResultKey, SharedBytes};

/// Most bytes of lines in one batch: well below the size ipc-channel sends as one message, so
/// that a batch is one write and one read, and below the 128 KiB past which glibc's malloc
/// gives freed memory back to the system (and faults it in again for the next batch).
pub(super) const LINE_BATCH_BYTES: usize = 120 * 1024;

/// Most lines in one batch (besides the batch size the time per line asks for).
const LINE_BATCH_LINES: usize = 16 * 1024;

impl Scheduler {
    /// Lets the scheduler take blocks of raw lines ([`Job::lines`]) read as `parser` reads
    /// lines: their workers read them with its format, and a line that crashed its worker is
    /// read by it.
    pub fn read_lines_with(&mut self, parser: JobParser) {
        let format = parser.format();
        self.lines = Some(LineReading {
            max_line_bytes: format.max_line_bytes as u64,
            default_task: format.default_task.clone(),
            parser,
        });
    }

    /// Sends the block at the front of the queue to `worker`, cut to the batch size, with the
    /// blocks that follow it in the input while they fit.
    pub(super) fn send_lines(&mut self, worker: WorkerId) -> bool {
        let Some(reading) = &self.lines else {
            unreachable!("blocks of lines come only to a scheduler that reads them")
        };
        // Lines of a block are answered together, so more of them than --max-batch-jobs may
        // share a batch (one line while their speed is not known yet).
        let mut size = self.batch_size_by_time(Some(Pace::Lines), LINE_BATCH_LINES) as u64;
        let mut job = self.pending.pop_front().expect("a block is in front");
        let mut lines = job.weight();
        if self.input_ended {
            // Near the end, spread what is left over every worker instead of loading one: the
            // blocks waiting are about this one's size.
            let share = self.ready_workers() * self.depth();
            let waiting = lines * (self.pending.len() as u64 + 1);
            size = size.min(waiting.div_ceil(share as u64).max(1));
        }
        if lines > size {
            let rest = job.split_lines(size);
            self.outstanding += 1;
            self.pending.push_front(Jobs::from(vec![rest]));
            lines = size;
        }
        let slot = self
            .workers
            .get(&worker)
            .expect("dispatch passes live workers");
        let mut batch = Batch {
            id: BatchId(self.next_batch),
            jobs: Vec::with_capacity(1),
            // Room for the blocks that may follow it and for the message's head, so that
            // neither moves the bytes.
            inputs: RawJson(Vec::with_capacity(
                job.bytes().as_bytes().len().max(LINE_BATCH_BYTES) + frame::head_room(1),
            )),
            lines: Some(LineBlock {
                first_line: job.line,
                attempts: 0,
                worker: slot.pid,
                max_line_bytes: reading.max_line_bytes,
                default_task: reading.default_task.clone(),
                notes: self.cfg.notes,
            }),
            ..Batch::default()
        };
        batch.inputs.0.extend_from_slice(job.bytes().as_bytes());
        let mut next_line = job.line + lines;
        let mut blocks = Jobs::from(vec![job]);
        // The blocks right after it in the input go too, while they fit whole.
        while let Some(next) = self.pending.front() {
            // (A block whose last line has no line ending is the end of an input file: the
            // next one's first line is a line of its own.)
            let Some(block) = next.as_lines() else {
                break;
            };
            if batch.inputs.0.last() != Some(&b'\n')
                || next.source != blocks[0].source
                || next.line != next_line
                || batch.inputs.0.len() + block.bytes().as_bytes().len() > LINE_BATCH_BYTES
            {
                break;
            }
            let count = block.count();
            if lines + count > size {
                break;
            }
            let next = self.pending.pop_front().expect("just seen");
            batch.inputs.0.extend_from_slice(next.bytes().as_bytes());
            lines += count;
            next_line += count;
            blocks.push_back(next);
        }
        let end = u32::try_from(batch.inputs.0.len()).expect("a batch stays far below 4 GiB");
        batch.jobs.push(JobRequest {
            task: TaskIndex(0),
            input_end: end,
        });
        self.send(worker, batch, blocks)
    }

    /// The answer to the blocks of a batch that `worker` (`pid`) held: their result lines, as
    /// one result.
    pub(super) fn lines_done(
        &mut self,
        (worker, pid): (WorkerId, u32),
        mut blocks: Jobs,
        outputs: bytes::Bytes,
        outcome: Outcome,
    ) {
        let Outcome { nanos, result, .. } = outcome;
        let TaskResult::Lines(tally) = result else {
            let why = say::block_as_one_job(pid);
            self.actions.push(Action::Kill { worker, why });
            // Only a worker that does not know blocks answers otherwise; it is being replaced
            // (see `on_batch_done`): the blocks wait for another.
            self.outstanding += blocks.len() as u64;
            self.pending.push_front(blocks);
            return;
        };
        // One result answers every block of the batch (their lines all count in it).
        let first = blocks.pop_front().expect("a batch has a block");
        // With a joblog, the worker noted the lines for it after their result lines.
        let alike = usize::try_from(tally.alike_bytes)
            .ok()
            .filter(|&n| n <= outputs.len())
            .unwrap_or(0);
        let results_end = outputs.len() - alike;
        if self.cfg.notes != Notes::None {
            let task_ids = self
                .workers
                .get(&worker)
                .map(|slot| slot.task_ids.clone())
                .unwrap_or_default();
            self.count_lines(&task_ids, &tally.counts);
            if alike > 0 {
                self.noted.block_joblogs.push(BlockJoblog {
                    alike: SharedBytes::new(&outputs, results_end..outputs.len()),
                    first_line: first.line,
                    lines: first.weight() + blocks.iter().map(Job::weight).sum::<u64>(),
                    task_ids,
                });
            }
        }
        self.emit(JobResult {
            seq: first.seq,
            source: first.source,
            key: ResultKey::Lines(Box::new(tally)),
            meta: None,
            attempts: 1,
            worker: Some(pid),
            outcome: Ok(Completed {
                output: SharedBytes::new(&outputs, 0..results_end),
                nanos,
            }),
        });
    }

    /// A worker died holding the blocks of `batch`, running the line `culprit` names (if it
    /// names one of `batch`, counted across its blocks): the lines around it go back to the
    /// queue as blocks, and it takes the failed attempt as a job of its own. Returns whether
    /// the death was blamed on a line.
    pub(super) fn lines_lost(
        &mut self,
        batch: BatchId,
        mut blocks: Jobs,
        culprit: RunningWord,
        death: &Death<'_>,
        requeue: &mut Vec<Job>,
    ) -> bool {
        let mut index = culprit.index_in(batch).map(|i| i as u64);
        let mut blamed = false;
        for block in blocks.drain(..) {
            let lines = block.weight();
            match index {
                Some(i) if i < lines => {
                    blamed = true;
                    self.line_lost(block, i, death, requeue);
                    index = None;
                }
                Some(i) => {
                    index = Some(i - lines);
                    requeue.push(block);
                }
                None => requeue.push(block),
            }
        }
        blamed
    }

    /// `block` goes back to the queue but for its line at `index`, which takes the failed
    /// attempt of a worker that died running it.
    fn line_lost(&mut self, mut block: Job, index: u64, death: &Death<'_>, requeue: &mut Vec<Job>) {
        let lines = block.weight();
        if index > 0 {
            let rest = block.split_lines(index);
            requeue.push(block);
            self.outstanding += 1;
            block = rest;
        }
        if lines - index > 1 {
            let after = block.split_lines(1);
            self.outstanding += 1;
            requeue.push(after);
        }
        // `block` is now the one line.
        match self.read_line(&block) {
            Some(InputItem::Job(mut job)) => {
                job.seq = block.seq;
                job.failed_attempts = 1;
                self.failed_attempt(job, death, requeue);
            }
            Some(InputItem::Rejected(result)) => {
                // Not a job at all (its worker died on its own while answering it).
                self.outstanding -= 1;
                self.emit(JobResult {
                    seq: block.seq,
                    ..*result
                });
            }
            // A blank line: it goes back, to be answered with no result.
            None => requeue.push(block),
        }
    }

    /// The line of `block`, a block of one line, read as the input was.
    fn read_line(&mut self, block: &Job) -> Option<InputItem> {
        let reading = self.lines.as_mut()?;
        let piece = Piece::Lines {
            first_line: block.line,
            lines: block.bytes().to_bytes(),
            count: 1,
        };
        let mut chunk = reading.parser.parse_piece(&piece, Jobs::with_capacity(1));
        if let Some(job) = chunk.jobs.pop_front() {
            return Some(InputItem::Job(job));
        }
        chunk
            .rejected
            .pop()
            .map(|result| InputItem::Rejected(Box::new(result)))
    }

    /// Workers that take batches now.
    fn ready_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|s| s.phase == super::Phase::Ready)
            .count()
            .max(1)
    }
}

/// How a worker died, for the jobs it held.
pub(super) struct Death<'a> {
    pub(super) pid: u32,
    pub(super) exit: &'a WorkerExit,
    pub(super) timed_out: bool,
    pub(super) note: Option<&'a str>,
    /// When the job it is blamed on was first seen running, and when the death was known.
    pub(super) since: Instant,
    pub(super) at: Instant,
}
