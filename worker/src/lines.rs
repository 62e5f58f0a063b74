//! Answering a block of raw job lines ([`LineBlock`]): each line is read as the supervisor
//! would read it ([`corral_protocol::jobline`]), run, and answered with its result line
//! ([`corral_protocol::result_line`]), so that a result is the same byte for byte whichever
//! side read its line.

use corral_protocol::jobline::{
    self, EXEC_REFUSED, EXEC_TASK, NO_TASK, fields_skimming, is_blank, split_line,
    unknown_task_message,
};
use corral_protocol::result_line::{Echo, ErrorKind, Failure, Key, Outcome, ResultLine};
use corral_protocol::{
    BatchId, LineBlock, LineNote, LineTally, Notes, RunningSlot, RunningWord, TaskIndex,
    TaskResult, joblog,
};
use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::clock::LineClock;
use crate::task::{Registry, task_result};

/// The tasks of a worker, as lines name them.
pub(crate) struct Tasks<'a> {
    registry: &'a Registry,
    names: Vec<String>,
    /// Times each line.
    clock: LineClock,
    /// Room for a block's packed [`joblog::Alike`]s, kept from block to block.
    alike: Vec<u8>,
}

impl<'a> Tasks<'a> {
    pub(crate) fn new(registry: &'a Registry) -> Tasks<'a> {
        Tasks {
            names: registry.names(),
            registry,
            clock: LineClock::new(),
            alike: Vec::new(),
        }
    }

    /// The index of task `name`, with the last one looked up kept in `last` (lines of a block
    /// mostly name one task).
    fn index_of(&self, last: &mut Option<(String, Option<usize>)>, name: &str) -> Option<usize> {
        match last {
            Some((last, index)) if last == name => *index,
            _ => {
                let index = self.names.iter().position(|n| n == name);
                *last = Some((name.to_owned(), index));
                index
            }
        }
    }
}

/// Runs every line of `lines`, the block of batch `batch`, appending their result lines to
/// `out`; publishes the line it runs in `slot`.
pub(crate) fn answer(
    tasks: &mut Tasks<'_>,
    slot: &RunningSlot,
    batch: BatchId,
    block: &LineBlock,
    lines: &[u8],
    out: &mut Vec<u8>,
) -> TaskResult {
    let max = usize::try_from(block.max_line_bytes).unwrap_or(usize::MAX);
    let mut tally = LineTally::default();
    let mut notes = BlockNotes::new(block, std::mem::take(&mut tasks.alike));
    // A task's output, before it is spliced into its line.
    let mut output = Vec::new();
    let mut last_task: Option<(String, Option<usize>)> = None;
    tasks.clock.start();
    let (mut at, mut index) = (0, 0);
    while at < lines.len() {
        let (line, next) = split_line(lines, at, max);
        let number = block.first_line + index as u64;
        slot.store(RunningWord::running(batch, index));
        at = next;
        index += 1;
        let line = match line {
            Ok(range) => &lines[range],
            Err(len) => {
                let message = jobline::too_long_message(len, max);
                reject(
                    out,
                    &mut tally,
                    (Key::Line(number), number, &mut notes),
                    ErrorKind::TooLarge,
                    &message,
                    None,
                );
                continue;
            }
        };
        if is_blank(line) {
            continue;
        }
        // A task that skims its input runs as the line is read; what it gave counts only if
        // the line turns out to be a job.
        output.clear();
        let mut skimmed = None;
        let fields = match fields_skimming(line, |task, rest| {
            let index = tasks.index_of(&mut last_task, task)?;
            if !tasks.registry.skims(index) {
                return None;
            }
            output.clear();
            let (len, outcome) = tasks.registry.skim(index, rest, &mut output)?;
            skimmed = Some(outcome);
            Some(len)
        }) {
            Ok(fields) => fields,
            Err(message) => {
                reject(
                    out,
                    &mut tally,
                    (Key::Line(number), number, &mut notes),
                    ErrorKind::BadInput,
                    &message,
                    None,
                );
                continue;
            }
        };
        let number_text;
        let id = match fields.id {
            Some(id) => id,
            None => {
                number_text = itoa::Buffer::new().format(number).to_owned();
                number_text.as_bytes()
            }
        };
        let key = Key::Job { id, line: number };
        let Some(task) = fields
            .task
            .or_else(|| block.default_task.as_deref().map(Cow::Borrowed))
        else {
            reject(
                out,
                &mut tally,
                (key, number, &mut notes),
                ErrorKind::BadInput,
                NO_TASK,
                None,
            );
            continue;
        };
        let meta = fields.meta.map(|span| &line[span]);
        if task == EXEC_TASK {
            reject(
                out,
                &mut tally,
                (key, number, &mut notes),
                ErrorKind::UnknownTask,
                EXEC_REFUSED,
                None,
            );
            continue;
        }
        let Some(task_index) = tasks.index_of(&mut last_task, &task) else {
            let served: Vec<&str> = tasks.names.iter().map(String::as_str).collect();
            let message = unknown_task_message(&task, &served);
            reject(
                out,
                &mut tally,
                (key, number, &mut notes),
                ErrorKind::UnknownTask,
                &message,
                meta,
            );
            continue;
        };
        let input = fields.input.map_or(&b"null"[..], |span| &line[span]);
        // The time of a line runs from the end of the one before, as for a batch of jobs.
        let result = task_result(match skimmed {
            Some(outcome) => outcome,
            None => tasks.registry.run(task_index, input, &mut output),
        });
        let nanos = tasks.clock.lap();
        let failure;
        let (outcome, kind) = match &result {
            TaskResult::Ok => (
                Outcome::Ok {
                    output: &output,
                    nanos,
                },
                None,
            ),
            TaskResult::TaskError {
                message,
                error_type,
            } => {
                failure = Failure {
                    error_type: error_type.as_deref(),
                    output: (!output.is_empty()).then_some(&output[..]),
                    ..Failure::new(ErrorKind::TaskError, message)
                };
                (Outcome::Err(&failure), Some(ErrorKind::TaskError))
            }
            TaskResult::BadInput(message) => {
                failure = Failure::new(ErrorKind::BadInput, message);
                (Outcome::Err(&failure), Some(ErrorKind::BadInput))
            }
            TaskResult::Panic(message) => {
                failure = Failure::new(ErrorKind::Panic, message);
                (Outcome::Err(&failure), Some(ErrorKind::Panic))
            }
            TaskResult::Lines(_) => unreachable!("a task's own result is never lines"),
        };
        tally.add(kind);
        notes.ran(&mut tally, (number, task_index), kind, nanos);
        ResultLine {
            key,
            outcome,
            attempts: block.attempts + 1,
            worker: Some(block.worker),
            echo: meta.map(|meta| (meta, Echo::Meta)),
        }
        .write(out);
    }
    tally.lines = index as u64;
    let alike = notes.finish();
    tally.alike_bytes = alike.len() as u64;
    out.extend_from_slice(alike);
    notes.alike.clear();
    tasks.alike = notes.alike;
    TaskResult::Lines(tally)
}

/// What a block's answer says of its lines besides their result lines, as
/// [`LineBlock::notes`] asks: counts, and what their joblog lines are made of
/// ([`joblog::Alike`]), packed, which the supervisor writes out.
struct BlockNotes {
    notes: Notes,
    first_line: u64,
    /// The packed lines, which go after the result lines.
    alike: Vec<u8>,
    packer: joblog::Packer,
}

impl BlockNotes {
    fn new(block: &LineBlock, alike: Vec<u8>) -> BlockNotes {
        let started = if block.notes.joblog() {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        } else {
            0
        };
        BlockNotes {
            notes: block.notes,
            first_line: block.first_line,
            alike,
            packer: joblog::Packer::new(started),
        }
    }

    /// Notes line `seq`, which ran the task `index` for `nanos`.
    fn ran(
        &mut self,
        tally: &mut LineTally,
        (seq, index): (u64, usize),
        failed: Option<ErrorKind>,
        nanos: u64,
    ) {
        let task = u32::try_from(index).ok();
        if self.notes.counts() {
            let note = LineNote {
                task: task.map(TaskIndex),
                failed,
                nanos,
            };
            tally.note(self.notes, note);
        }
        if self.notes.joblog() {
            let ran = if failed.is_some() {
                joblog::Ran::Failed
            } else {
                joblog::Ran::Ok
            };
            let index = seq - self.first_line;
            self.packer.line(index, task, ran, nanos, &mut self.alike);
        }
    }

    /// Notes line `seq`, which did not run.
    fn rejected(&mut self, tally: &mut LineTally, seq: u64, kind: ErrorKind) {
        let note = LineNote {
            task: None,
            failed: Some(kind),
            nanos: 0,
        };
        tally.note(self.notes, note);
        if self.notes.joblog() {
            let index = seq - self.first_line;
            let never = joblog::Ran::Never;
            self.packer.line(index, None, never, 0, &mut self.alike);
        }
    }

    /// The packed lines, whole.
    fn finish(&mut self) -> &[u8] {
        self.packer.finish(&mut self.alike);
        &self.alike
    }
}

/// Writes the result of a line that does not run, line `seq`: it was never attempted.
fn reject(
    out: &mut Vec<u8>,
    tally: &mut LineTally,
    (key, seq, notes): (Key<'_>, u64, &mut BlockNotes),
    kind: ErrorKind,
    message: &str,
    meta: Option<&[u8]>,
) {
    tally.add(Some(kind));
    notes.rejected(tally, seq, kind);
    ResultLine {
        key,
        outcome: Outcome::Err(&Failure::new(kind, message)),
        attempts: 0,
        worker: None,
        echo: meta.map(|meta| (meta, Echo::Meta)),
    }
    .write(out);
}
