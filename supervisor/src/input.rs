//! Job readers: turn JSON-lines (or plain lines) into jobs, streaming, with a cap on line length
//! so that a huge or endless line never lands in memory whole.
//!
//! Lines are numbered from 1 across all inputs, as if they were concatenated; a job without an
//! `id` takes its line number. Empty lines (also `\r\n` and whitespace-only ones) are skipped
//! but counted.
//!
//! Input is read into a fixed ring of blocks ([`BlockRing`], a `crate::ring::Ring`): jobs are
//! views of their block, and a block goes back to the ring when the last job read from it is
//! answered, so the memory that input takes is set by the ring's size, not by how far the
//! workers lag.

mod lines;
pub mod parallel;

use lines::split_line;
pub use lines::{BlockRing, Framed, Line, LineReader, LineRef, ring_blocks};

use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use corral_protocol::JobSeq;
use corral_protocol::byte_string;

use crate::record::{
    ErrorKind, InputChunk, InputItem, Job, JobError, JobId, JobResult, Jobs, OneJob, ResultKey,
    SharedBytes, SourceId, TaskId, TaskNames,
};
use crate::resume::{FinishedKeys, Meeting, id_digest, line_digest};
use crate::shard::{Shard, ShardBy};
use corral_protocol::jobline;

/// How lines become jobs.
#[derive(Debug, Clone)]
pub struct InputFormat {
    /// Each line is a plain string input rather than a JSON job.
    pub plain_lines: bool,
    /// The task of jobs that name none.
    pub default_task: Option<String>,
    /// Whether jobs of the [`EXEC_TASK`] may run (`--exec` was given). Without it they are
    /// refused: a job file alone never runs a program.
    pub exec: bool,
    /// Longest line accepted, in bytes (without its line ending).
    pub max_line_bytes: usize,
    /// Most blocks of input alive at once (see [`BlockRing`]), and most vectors of jobs read
    /// and not yet answered; [`ring_blocks`] gives the size for a pool.
    pub max_blocks: usize,
    /// Only this shard's lines are jobs; the others are skipped (see [`crate::Shard`]).
    pub shard: Option<Shard>,
}

impl InputFormat {
    /// JSON job lines of up to 1 MiB, for a pool of `workers`, without `--exec`.
    pub fn json(workers: usize) -> InputFormat {
        InputFormat {
            plain_lines: false,
            default_task: None,
            exec: false,
            max_line_bytes: 1 << 20,
            max_blocks: ring_blocks(workers),
            shard: None,
        }
    }
}

pub use corral_protocol::jobline::EXEC_TASK;

/// A run of input lines that can be parsed apart from the rest, knowing where it starts.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Whole lines (each with its `\n`, but perhaps the input's last), the first of which
    /// is line `first_line`.
    Lines {
        /// The number of the first line.
        first_line: u64,
        /// The lines, sharing the block they were read into.
        lines: Bytes,
        /// How many lines they are.
        count: u64,
    },
    /// Line `line` was `len` bytes long, over the limit.
    TooLong {
        /// Its number.
        line: u64,
        /// Its length, in bytes.
        len: u64,
    },
}

/// Turns lines into [`InputItem`]s, numbering lines and jobs.
#[derive(Debug)]
pub struct JobParser {
    format: InputFormat,
    /// The source its jobs and rejected lines belong to.
    source: SourceId,
    line: u64,
    next_seq: u64,
    /// The run's task names, which jobs refer to by number.
    names: TaskNames,
    /// The task named last, checked first: most jobs name the task the previous one named.
    last_task: Option<(Box<str>, TaskId)>,
    /// The task of jobs that name none.
    default_task: Option<TaskId>,
    /// The number of [`EXEC_TASK`].
    exec_task: TaskId,
    /// The input of jobs that give none.
    null: SharedBytes,
    /// With `--resume`: results already written, and every id met so far with its line, so
    /// that finished jobs are skipped and a repeated id is reported instead of merged.
    resume: Option<FinishedKeys>,
    /// The blocks every input is read into; out only while [`JobParser::read_all`] reads.
    ring: Option<BlockRing>,
    /// Asked before a task name is added to the run's names: `Err` is the job's result
    /// instead (a service keeps the names of one client's jobs out of everyone's table).
    gate: Option<TaskGate>,
    /// Why the gate refused the name just asked for.
    gated: Option<Refusal>,
}

/// What a task name must pass before it joins a run's names (see
/// [`JobParser::with_task_gate`]): `Err` is the kind and message of the job's result instead.
#[derive(Clone)]
pub struct TaskGate(pub Arc<GateFn>);

/// The check of a [`TaskGate`].
pub type GateFn = dyn Fn(&str) -> Result<(), Refusal> + Send + Sync;

/// Why a task name may not join a run's names: the kind and message of the job's result.
pub type Refusal = (ErrorKind, String);

impl std::fmt::Debug for TaskGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskGate")
    }
}

enum Verdict {
    Run,
    Skip,
    Duplicate(Option<u64>),
}

impl JobParser {
    /// A parser at line 1, numbering task names in `names`.
    pub fn new(format: InputFormat, names: TaskNames) -> JobParser {
        JobParser {
            default_task: format.default_task.as_deref().map(|name| {
                names
                    .intern(name)
                    .expect("the first name of a run has room")
            }),
            exec_task: names
                .intern(EXEC_TASK)
                .expect("the second name of a run has room"),
            source: SourceId::default(),
            line: 0,
            next_seq: 0,
            names,
            last_task: None,
            null: SharedBytes::from(&b"null"[..]),
            resume: None,
            ring: Some(BlockRing::new(format.max_blocks)),
            gate: None,
            gated: None,
            format,
        }
    }

    /// How it reads lines.
    pub fn format(&self) -> &InputFormat {
        &self.format
    }

    /// The source its jobs are of.
    pub fn source(&self) -> SourceId {
        self.source
    }

    /// Marks its jobs and rejected lines as coming from `source` (the default is
    /// `SourceId(0)`, a run's only source).
    pub fn with_source(mut self, source: SourceId) -> JobParser {
        self.source = source;
        self
    }

    /// Skips lines whose result is among `finished` (keys from [`crate::resume`]), and
    /// reports repeated ids as `bad_input` results keyed by line.
    pub fn resume(&mut self, finished: FinishedKeys) {
        self.resume = Some(finished);
    }

    fn verdict(&mut self, id: Option<&[u8]>) -> Verdict {
        let Some(keys) = &mut self.resume else {
            return Verdict::Run;
        };
        // A job without an id has its line number as id, and its result says so.
        let key = match id {
            Some(raw) => id_digest(raw).unwrap_or_else(|| line_digest(self.line)),
            None => id_digest(itoa::Buffer::new().format(self.line).as_bytes())
                .expect("a number is an id"),
        };
        match keys.meet(key, self.line) {
            Meeting::Run => Verdict::Run,
            Meeting::Finished => Verdict::Skip,
            Meeting::Repeated(first) => Verdict::Duplicate(first),
        }
    }

    /// Reads all of `reader`, passing each item to `sink` together with whether the next line
    /// needs another read (a good moment to hand over what was read). Stops early when `sink`
    /// returns false. Returns whether it read to the end.
    ///
    /// The next read may wait for a block of the ring to come back, so `sink` must hand items
    /// on rather than keep them, at least by the time it is told the next line needs a read.
    pub fn read_all<R: Read>(
        &mut self,
        reader: R,
        mut sink: impl FnMut(InputItem, bool) -> bool,
    ) -> io::Result<bool> {
        let ring = self.ring.take().expect("read_all is not re-entered");
        let mut lines = LineReader::new(reader, self.format.max_line_bytes, ring);
        let read = self.read_lines(&mut lines, &mut sink);
        self.ring = Some(lines.into_ring());
        read
    }

    /// The one read-and-feed loop of every mode: reads all of `reader` and hands its items on
    /// in chunks, each made by `new_chunk` and passed through `item` (a filter that may turn
    /// a job into a refusal), once it holds `chunk_len` items or the next line needs another
    /// read. The last chunk goes after the end or an error. `hand_over` returns false once
    /// nothing more is taken; then this returns `Ok(false)`. `Ok(true)` means every item was
    /// handed over.
    pub fn read_chunks<R: Read>(
        &mut self,
        reader: R,
        chunk_len: usize,
        mut new_chunk: impl FnMut() -> InputChunk,
        mut item: impl FnMut(InputItem) -> InputItem,
        mut hand_over: impl FnMut(InputChunk) -> bool,
    ) -> io::Result<bool> {
        // A chunk is made only once the last one is handed over, so that waiting for one (a
        // ring's vector) never holds items back.
        let mut chunk: Option<InputChunk> = None;
        let read = self.read_all(reader, |read, would_wait| {
            let filling = chunk.get_or_insert_with(&mut new_chunk);
            filling.push(item(read));
            if filling.len() >= chunk_len || would_wait {
                let full = chunk.take().expect("just filled");
                return hand_over(full);
            }
            true
        });
        if let Some(last) = chunk.take().filter(|chunk| !chunk.is_empty())
            && !hand_over(last)
        {
            return Ok(false);
        }
        read
    }

    fn read_lines<R: Read>(
        &mut self,
        lines: &mut LineReader<R>,
        sink: &mut impl FnMut(InputItem, bool) -> bool,
    ) -> io::Result<bool> {
        while let Some(line) = lines.next_line()? {
            let item = match line {
                Line::Text(text) => self.parse(text),
                Line::TooLong(len) => self.too_long(len),
            };
            if let Some(item) = item
                && !sink(item, lines.would_wait())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next line was `len` bytes long, over the limit. `None` when it is not this
    /// shard's, or already answered.
    fn too_long(&mut self, len: u64) -> Option<InputItem> {
        self.line += 1;
        // A line too long to read has no id: it goes by its number.
        if self.format.shard.is_some_and(|s| !s.owns_line(self.line)) || self.finished_line() {
            return None;
        }
        let message = jobline::too_long_message(len, self.format.max_line_bytes);
        Some(self.rejected(ErrorKind::TooLarge, message))
    }

    /// A parser of pieces of input for a thread of its own: this one's format, source and
    /// task names, without `--resume` (repeated ids can only be found in reading order).
    pub fn piece_parser(&self) -> JobParser {
        JobParser {
            format: self.format.clone(),
            source: self.source,
            line: 0,
            next_seq: 0,
            names: self.names.clone(),
            last_task: None,
            default_task: self.default_task,
            exec_task: self.exec_task,
            null: self.null.clone(),
            resume: None,
            ring: None,
            gate: self.gate.clone(),
            gated: None,
        }
    }

    /// Parses the lines of `piece` into `jobs` and the chunk's rejected lines, as
    /// [`JobParser::read_all`] would have read them at that place in the input; their
    /// [`JobSeq`]s count from 0 within the piece (see [`InputChunk::renumber`]).
    pub fn parse_piece(&mut self, piece: &Piece, jobs: Jobs) -> InputChunk {
        let mut chunk = InputChunk {
            jobs,
            rejected: Vec::new(),
        };
        self.next_seq = 0;
        match piece {
            Piece::TooLong { line, len } => {
                self.line = line - 1;
                if let Some(item) = self.too_long(*len) {
                    chunk.push(item);
                }
            }
            Piece::Lines {
                first_line, lines, ..
            } => {
                self.line = first_line - 1;
                let mut at = 0;
                while at < lines.len() {
                    let (line, next) = split_line(lines, at, self.format.max_line_bytes);
                    at = next;
                    let item = match line {
                        Line::Text(text) => self.parse(text),
                        Line::TooLong(len) => self.too_long(len),
                    };
                    if let Some(item) = item {
                        chunk.push(item);
                    }
                }
            }
        }
        chunk
    }

    /// Parses one line (without its ending). `None` for a blank line.
    pub fn parse(&mut self, raw: LineRef<'_>) -> Option<InputItem> {
        let line = raw.bytes();
        self.line += 1;
        if !self.owns(line) {
            return None;
        }
        if jobline::is_blank(line) {
            return None;
        }
        if self.finished_line() {
            return None;
        }
        if self.format.plain_lines {
            match self.verdict(None) {
                Verdict::Run => {}
                Verdict::Skip => return None,
                Verdict::Duplicate(first) => return Some(self.duplicate(first)),
            }
            // A line need not be UTF-8: other bytes are lone surrogates, as Python writes them.
            let input = SharedBytes::from(byte_string::encode(line));
            let task = self.default_task.expect("--lines requires --task");
            // The line comes back in its result, as `input`.
            let echo = Some(input.clone());
            return Some(self.job(None, task, input, echo));
        }
        let parsed = match jobline::fields_of(line) {
            Ok(parsed) => parsed,
            Err(message) => return Some(self.rejected(ErrorKind::BadInput, message)),
        };
        let id = parsed.id;
        match self.verdict(id) {
            Verdict::Run => {}
            Verdict::Skip => return None,
            Verdict::Duplicate(first) => return Some(self.duplicate(first)),
        }
        let task = match (&parsed.task, self.default_task) {
            (Some(name), _) => match self.intern(name) {
                Some(task) => task,
                None if self.gated.is_some() => {
                    let (kind, message) = self.gated.take().expect("checked");
                    return Some(self.rejected_job(id, kind, message));
                }
                None => {
                    let message = format!(
                        "more than {} distinct task names in one run; is \"task\" the right field?",
                        TaskNames::MAX
                    );
                    return Some(self.rejected_job(id, ErrorKind::BadInput, message));
                }
            },
            (None, Some(task)) => task,
            (None, None) => {
                let message = jobline::NO_TASK.to_owned();
                return Some(self.rejected_job(id, ErrorKind::BadInput, message));
            }
        };
        let span = |range: Range<usize>| raw.share(range);
        let input = parsed.input.map_or_else(|| self.null.clone(), span);
        let meta = parsed.meta.map(span);
        Some(self.job(id, task, input, meta))
    }

    /// Whether the current line, `line`, is this shard's (always, without `--shard`). By id,
    /// the id is read where lines usually have it, first, or else the line is scanned for it;
    /// a line without one, or not a job, goes by number.
    fn owns(&self, line: &[u8]) -> bool {
        let Some(shard) = self.format.shard else {
            return true;
        };
        if shard.by == ShardBy::Line || self.format.plain_lines {
            return shard.owns_line(self.line);
        }
        let id = match crate::shard::leading_id(line) {
            Some(raw) => id_digest(raw),
            None => std::str::from_utf8(line)
                .ok()
                .and_then(|text| jobline::scan(text).ok())
                .and_then(|parsed| parsed.id)
                .and_then(|span| id_digest(&line[span])),
        };
        match id {
            Some(id) => shard.owns_id(id),
            None => shard.owns_line(self.line),
        }
    }

    /// Whether `--resume` found a result for the current line itself (one that was not a job).
    fn finished_line(&self) -> bool {
        self.resume
            .as_ref()
            .is_some_and(|keys| keys.contains(line_digest(self.line)))
    }

    /// The number of task `name`; `None` when the run has too many names.
    fn intern(&mut self, name: &str) -> Option<TaskId> {
        if let Some((last, id)) = &self.last_task
            && **last == *name
        {
            return Some(*id);
        }
        if let Some(gate) = &self.gate
            && let Err(refusal) = (gate.0)(name)
        {
            self.gated = Some(refusal);
            return None;
        }
        let id = self.names.intern(name)?;
        self.last_task = Some((name.into(), id));
        Some(id)
    }

    /// Has every task name go through `gate` before it joins the run's names.
    pub fn with_task_gate(mut self, gate: TaskGate) -> JobParser {
        self.gate = Some(gate);
        self
    }

    fn job(
        &mut self,
        id: Option<&[u8]>,
        task: TaskId,
        mut input: SharedBytes,
        meta: Option<SharedBytes>,
    ) -> InputItem {
        if task == self.exec_task {
            if !self.format.exec {
                let message = jobline::EXEC_REFUSED.to_owned();
                return self.rejected_job(id, ErrorKind::UnknownTask, message);
            }
            // The command's job number ({#}) is the line number: [line, input].
            let mut wrapped = Vec::with_capacity(input.as_bytes().len() + 24);
            wrapped.push(b'[');
            wrapped.extend_from_slice(itoa::Buffer::new().format(self.line).as_bytes());
            wrapped.push(b',');
            wrapped.extend_from_slice(input.as_bytes());
            wrapped.push(b']');
            input = SharedBytes::from(wrapped);
        }
        let seq = JobSeq(self.next_seq);
        self.next_seq += 1;
        let id = match id {
            Some(id) => JobId::from(id),
            None => JobId::from(self.line.to_string().into_bytes()),
        };
        InputItem::Job(Job::one(
            seq,
            self.source,
            self.line,
            OneJob {
                id,
                task,
                input,
                meta,
            },
        ))
    }

    fn duplicate(&mut self, first: Option<u64>) -> InputItem {
        let earlier = first.map_or_else(|| "an earlier line".to_owned(), |l| format!("line {l}"));
        let message =
            format!("duplicate id: {earlier} has the same id; ids must be unique to resume");
        self.rejected(ErrorKind::BadInput, message)
    }

    fn rejected(&mut self, kind: ErrorKind, message: String) -> InputItem {
        self.rejected_job(None, kind, message)
    }

    fn rejected_job(&mut self, id: Option<&[u8]>, kind: ErrorKind, message: String) -> InputItem {
        let key = match id {
            Some(id) => ResultKey::Job {
                id: JobId::from(id),
                line: self.line,
            },
            None => ResultKey::Line(self.line),
        };
        let seq = JobSeq(self.next_seq);
        self.next_seq += 1;
        InputItem::Rejected(Box::new(JobResult {
            seq,
            source: self.source,
            key,
            meta: None,
            attempts: 0,
            worker: None,
            outcome: Err(JobError::new(kind, message)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> InputFormat {
        InputFormat {
            plain_lines: false,
            exec: false,
            default_task: None,
            max_line_bytes: 64,
            // The tests keep every item they read: room for all of their input.
            max_blocks: 64,
            shard: None,
        }
    }

    fn read(text: &[u8], format: InputFormat) -> Vec<InputItem> {
        read_names(text, format).0
    }

    /// The items of `text`, and the task names they refer to.
    fn read_names(text: &[u8], format: InputFormat) -> (Vec<InputItem>, TaskNames) {
        let mut items = Vec::new();
        let names = TaskNames::default();
        let mut parser = JobParser::new(format, names.clone());
        parser
            .read_all(text, |item, _| {
                items.push(item);
                true
            })
            .unwrap();
        (items, names)
    }

    fn error_of(item: &InputItem) -> (&ResultKey, ErrorKind) {
        match item {
            InputItem::Rejected(result) => (&result.key, result.outcome.as_ref().unwrap_err().kind),
            InputItem::Job(job) => panic!("expected a rejection, got {job:?}"),
        }
    }

    #[test]
    fn lines_that_are_not_utf8_are_rejected_alone() {
        let mut text = b"{\"task\":\"t\",\"input\":\"caf\xc3\xa9\"}\n".to_vec();
        text.extend_from_slice(b"{\"task\":\"t\",\"input\":\"\xff\"}\n");
        text.extend_from_slice(b"{\"task\":\"t\",\"input\":1}\n");
        // A last line without a line ending is checked too.
        text.extend_from_slice(b"{\"task\":\"t\xc3\"}");
        let items = read(&text, format());
        assert_eq!(items.len(), 4);
        assert!(
            matches!(&items[0], InputItem::Job(job) if job.as_one().unwrap().input.as_bytes() == "\"café\"".as_bytes())
        );
        assert_eq!(
            error_of(&items[1]),
            (&ResultKey::Line(2), ErrorKind::BadInput)
        );
        assert!(matches!(&items[2], InputItem::Job(job) if job.line == 3));
        assert_eq!(
            error_of(&items[3]),
            (&ResultKey::Line(4), ErrorKind::BadInput)
        );
        let InputItem::Rejected(result) = &items[1] else {
            unreachable!()
        };
        assert_eq!(
            result.outcome.as_ref().unwrap_err().message,
            "line is not valid UTF-8"
        );
    }

    #[test]
    fn jobs_keep_raw_json_and_default_their_id_to_the_line_number() {
        let text = b"{\"id\": \"a\", \"task\": \"t\", \"input\": [1, 2], \"meta\": {\"k\": 1}}\n\n{\"task\":\"t\"}\n";
        let items = read(text, format());
        assert_eq!(items.len(), 2);
        let InputItem::Job(first) = &items[0] else {
            panic!()
        };
        assert_eq!(first.as_one().unwrap().id.as_bytes(), b"\"a\"");
        assert_eq!(first.as_one().unwrap().input.as_bytes(), b"[1, 2]");
        assert_eq!(
            first
                .as_one()
                .unwrap()
                .meta
                .as_ref()
                .map(SharedBytes::as_bytes),
            Some(&b"{\"k\": 1}"[..])
        );
        assert_eq!((first.seq, first.line), (JobSeq(0), 1));
        let InputItem::Job(second) = &items[1] else {
            panic!()
        };
        assert_eq!(
            second.as_one().unwrap().id.as_bytes(),
            b"3",
            "blank line 2 is counted"
        );
        assert_eq!(second.as_one().unwrap().input.as_bytes(), b"null");
        assert_eq!(
            first.as_one().unwrap().task,
            second.as_one().unwrap().task,
            "one name, one number"
        );
    }

    #[test]
    fn task_names_are_numbered_and_capped() {
        let mut text = String::new();
        for i in 0..=TaskNames::MAX {
            text.push_str(&format!("{{\"id\":{i},\"task\":\"t{i}\"}}\n"));
        }
        text.push_str("{\"id\":\"again\",\"task\":\"t7\"}\n");
        let (items, names) = read_names(text.as_bytes(), format());
        assert_eq!(items.len(), TaskNames::MAX + 2);
        let InputItem::Job(first) = &items[0] else {
            panic!()
        };
        assert_eq!(&*names.name(first.as_one().unwrap().task), "t0");
        let (key, kind) = error_of(&items[TaskNames::MAX]);
        assert_eq!(kind, ErrorKind::BadInput);
        assert!(matches!(key, ResultKey::Job { line, .. } if *line == TaskNames::MAX as u64 + 1));
        let InputItem::Job(again) = &items[TaskNames::MAX + 1] else {
            panic!("a known name still works after the cap")
        };
        assert_eq!(&*names.name(again.as_one().unwrap().task), "t7");
    }

    #[test]
    fn bad_lines_each_get_a_rejection_with_their_line() {
        let long = format!("{{\"task\":\"t\",\"input\":\"{}\"}}", "x".repeat(100));
        let text = format!(
            "not json\n{{\"id\": [1], \"task\": \"t\"}}\n{{\"id\": 5}}\n{long}\n{{\"task\":\"t\"}}\n"
        );
        let items = read(text.as_bytes(), format());
        assert_eq!(items.len(), 5);
        assert_eq!(
            error_of(&items[0]),
            (&ResultKey::Line(1), ErrorKind::BadInput)
        );
        assert_eq!(
            error_of(&items[1]),
            (&ResultKey::Line(2), ErrorKind::BadInput)
        );
        assert_eq!(
            error_of(&items[2]),
            (
                &ResultKey::Job {
                    id: b"5".to_vec().into(),
                    line: 3
                },
                ErrorKind::BadInput
            )
        );
        assert_eq!(
            error_of(&items[3]),
            (&ResultKey::Line(4), ErrorKind::TooLarge)
        );
        assert!(matches!(&items[4], InputItem::Job(job) if job.line == 5));
    }

    #[test]
    fn resume_skips_finished_jobs_and_reports_duplicates() {
        let mut items = Vec::new();
        let mut parser = JobParser::new(
            InputFormat {
                default_task: Some("t".into()),
                ..format()
            },
            TaskNames::default(),
        );
        let mut finished = FinishedKeys::default();
        finished.insert(id_digest(b"\"a\"").unwrap());
        finished.insert(line_digest(3));
        finished.insert(id_digest(b"4").unwrap());
        parser.resume(finished);
        let text = b"{\"id\":\"a\"}\n{\"id\":\"b\"}\nbroken\n{}\n{\"id\":\"\\u0062\"}\n{}\n";
        parser
            .read_all(&text[..], |item, _| {
                items.push(item);
                true
            })
            .unwrap();
        // a: finished; b: runs; line 3: finished; line 4 (id 4): finished; line 5 repeats b;
        // line 6 (id 6): runs.
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(
            matches!(&items[0], InputItem::Job(job) if job.as_one().unwrap().id.as_bytes() == b"\"b\"" && job.seq == JobSeq(0))
        );
        assert_eq!(
            error_of(&items[1]),
            (&ResultKey::Line(5), ErrorKind::BadInput)
        );
        assert!(
            matches!(&items[2], InputItem::Job(job) if job.as_one().unwrap().id.as_bytes() == b"6" && job.seq == JobSeq(2))
        );
    }

    #[test]
    fn resume_skips_a_too_long_line_that_has_its_result() {
        let long = format!("{{\"id\": \"{}\"}}", "x".repeat(100));
        let text = format!("{long}\n{long}\n{{\"id\": 3}}\n");
        let mut finished = FinishedKeys::default();
        finished.insert(line_digest(1));
        let mut parser = JobParser::new(
            InputFormat {
                default_task: Some("t".into()),
                ..format()
            },
            TaskNames::default(),
        );
        parser.resume(finished);
        let mut items = Vec::new();
        parser
            .read_all(text.as_bytes(), |item, _| {
                items.push(item);
                true
            })
            .unwrap();
        // Line 1 was answered (too large) before; line 2 was not; line 3 runs.
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(
            error_of(&items[0]),
            (&ResultKey::Line(2), ErrorKind::TooLarge)
        );
        assert!(matches!(&items[1], InputItem::Job(job) if job.line == 3));
    }

    /// What identifies an item: its line, and whether it is a job.
    fn lines_of(items: &[InputItem]) -> Vec<(u64, bool)> {
        items
            .iter()
            .map(|item| match item {
                InputItem::Job(job) => (job.line, true),
                InputItem::Rejected(result) => match &result.key {
                    ResultKey::Job { line, .. } => (*line, false),
                    ResultKey::Line(line) => (*line, false),
                    ResultKey::Lines(_) => unreachable!("reading makes no block's result"),
                },
            })
            .collect()
    }

    #[test]
    fn the_shards_together_read_every_line_once_numbered_as_without_shards() {
        use crate::shard::{Shard, ShardBy};
        let mut text = Vec::new();
        for i in 0..40 {
            let line = match i % 5 {
                0 => format!("{{\"id\":\"j{i}\",\"task\":\"t\"}}"),
                1 => "{\"task\":\"t\"}".to_owned(),
                2 => "not json".to_owned(),
                3 => String::new(),
                _ => format!(
                    "{{\"id\":{i},\"task\":\"t\",\"input\":[{}]}}",
                    "1,".repeat(30) + "1"
                ),
            };
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
        }
        let all = lines_of(&read(&text, format()));
        for by in [ShardBy::Line, ShardBy::Id] {
            for count in [1, 3, 7, 50] {
                let mut union: Vec<(u64, bool)> = (1..=count)
                    .flat_map(|index| {
                        let shard = Some(Shard::new(index, count, by).unwrap());
                        lines_of(&read(&text, InputFormat { shard, ..format() }))
                    })
                    .collect();
                union.sort_unstable();
                assert_eq!(union, all, "{by:?} of {count}");
            }
        }
        // By line, a shard's lines are exactly its numbers (too long ones too).
        let second = read(
            &text,
            InputFormat {
                shard: Some(Shard::new(2, 5, ShardBy::Line).unwrap()),
                ..format()
            },
        );
        assert!(lines_of(&second).iter().all(|&(line, _)| line % 5 == 2));
        assert!(
            lines_of(&second).iter().all(|&(_, job)| job),
            "line 2 of 5 is a job without id"
        );
    }

    #[test]
    fn default_task_and_plain_lines() {
        let with_task = InputFormat {
            default_task: Some("t".into()),
            ..format()
        };
        let (items, names) = read_names(b"{\"input\": 1}\n", with_task.clone());
        assert!(
            matches!(&items[0], InputItem::Job(job) if &*names.name(job.as_one().unwrap().task) == "t")
        );
        let plain = InputFormat {
            plain_lines: true,
            exec: false,
            ..with_task
        };
        let items = read(b"a \"quoted\" path\r\n", plain.clone());
        let InputItem::Job(job) = &items[0] else {
            panic!()
        };
        assert_eq!(
            job.as_one().unwrap().input.as_bytes(),
            br#""a \"quoted\" path""#
        );
        assert_eq!(job.as_one().unwrap().id.as_bytes(), b"1");
        // A line that is not UTF-8 (a legal file name) is a job too: its other bytes are
        // written as Python's surrogateescape writes them.
        let items = read(b"caf\xe9.txt\n", plain);
        let InputItem::Job(job) = &items[0] else {
            panic!()
        };
        assert_eq!(
            job.as_one().unwrap().input.as_bytes(),
            br#""caf\udce9.txt""#
        );
    }
}
