//! The stdio transport, supervisor side: a worker in any language that speaks JSON lines
//! (`docs/worker-protocol.md`). Its first stdout line is a hello; then each job is one request
//! line on its stdin and one response line on its stdout, answered in order.
//!
//! A batch is written ahead whole (the pipe bounds how far), so a fast worker never waits for
//! its next line. The running job is the first request not answered yet: the receiver moves the
//! running word on with each answer, so timeouts and crash attribution work as for a native
//! worker, and the answers of a batch go to the scheduler together, as one `BatchDone`.
//!
//! Anything on stdout that is not the answer expected next (a stray print, a wrong id, a line
//! that is not JSON) is a protocol violation: the worker is killed and replaced, and the job
//! that was running is retried like any crash. The log says what the worker printed.
//!
//! Such a worker cannot arm `PR_SET_PDEATHSIG` itself, so the spawn does it between fork and
//! exec (the setting survives exec); the supervisor's pid is checked there too, in case it died
//! before the signal was armed.

use std::collections::VecDeque;
use std::io::{self, BufWriter, PipeReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use corral_protocol::stdio::{STDIO_PROTOCOL_VERSION, StdioHello, StdioResponse};
use corral_protocol::{
    Batch, BatchDone, BatchId, MAX_FRAME_BYTES, RawJson, RunningSlot, RunningWord, TaskResult,
};

use super::link::{Greeting, Pipes, Received, Refusal, Violation};
use crate::os::poll_readable;

/// Longest line a stdio worker may print on stdout; a longer one is a violation.
const MAX_LINE: usize = MAX_FRAME_BYTES;

/// How much of a line that broke the protocol is quoted in the log.
const QUOTE: usize = 200;

/// Once answers are there to read, how long the receiver lets more of them gather before it
/// reads. A worker writes each answer as it is done, so that a crash is blamed on the right
/// job; reading each as it comes would cost the supervisor a wakeup per job, which on a busy
/// machine takes CPU time the workers need. Answers that wait in the pipe lose nothing: after
/// a death, the receiver reads all of them before the running job is taken to be the culprit.
/// The cost is this much latency per read, and a timeout noticed this much later.
pub const GATHER: Duration = Duration::from_micros(300);

/// Pipes stdin (the requests) and arms the death signal in the child before its exec.
pub(crate) fn prepare(command: &mut Command) {
    command.stdin(Stdio::piped());
    let supervisor = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, getppid
    // and _exit, which are async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            // Dies with the spawner thread of the supervisor, even under SIGKILL.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != supervisor {
                // The supervisor died between the fork and the line above.
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Reads the worker's hello and sets up its two ends.
pub(crate) fn hello(pipes: Pipes, gather: Duration) -> Result<Greeting<Outbox, Inbox>, Refusal> {
    let (Some(stdin), Some(stdout)) = (pipes.stdin, pipes.stdout) else {
        return Err(Refusal::transient("has no stdin or stdout pipe".into()));
    };
    let mut lines = LineSource::new(stdout, pipes.stopped);
    let hello: StdioHello = match lines.next_line() {
        Next::Line(line) => serde_json::from_slice(line).map_err(|err| {
            Refusal::fatal(format!(
                    "printed {} where its hello was expected ({err}); its stdout carries the protocol, so anything else must go to stderr",
                    quote(line)
                ),
            )
        })?,
        Next::End => return Err(Refusal::transient("closed its stdout before saying hello".into())),
        Next::TooLong => return Err(Refusal::fatal("printed an endless first line".into())),
        Next::Quiet => unreachable!("a wait for the hello ends with a line or the end"),
    };
    if hello.corral_protocol != STDIO_PROTOCOL_VERSION {
        return Err(Refusal::fatal(format!(
            "speaks stdio protocol version {}, this corral speaks {STDIO_PROTOCOL_VERSION}",
            hello.corral_protocol
        )));
    }
    let (slot, region) = RunningSlot::create();
    let running = RunningSlot::from_shared(region).expect("a fresh region has the right size");
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            batches: VecDeque::new(),
            since: Instant::now(),
        }),
        running: slot,
    });
    let task_names = hello
        .tasks
        .iter()
        .map(|name| serde_json::to_vec(name).expect("a string serializes"))
        .collect();
    Ok(Greeting {
        tasks: hello.tasks,
        running,
        job_ids: true,
        outbox: Outbox {
            stdin: BufWriter::with_capacity(64 * 1024, stdin),
            shared: shared.clone(),
            task_names,
        },
        inbox: Inbox {
            lines,
            shared,
            done: BatchDone::default(),
            ended: None,
            gathered: false,
            gather_for: gather,
        },
    })
}

/// What the sending and the receiving side of one worker share: the requests written and not
/// all answered, and the running word.
struct Shared {
    pending: Mutex<Pending>,
    running: RunningSlot,
}

struct Pending {
    batches: VecDeque<Sent>,
    /// When the job now running started: the previous answer, or the write that found the
    /// worker idle.
    since: Instant,
}

/// A batch whose requests were written.
struct Sent {
    id: BatchId,
    ids: RawJson,
    id_ends: Vec<u32>,
    answered: usize,
}

impl Sent {
    fn len(&self) -> usize {
        self.id_ends.len()
    }

    fn id_at(&self, index: usize) -> &[u8] {
        let start = match index {
            0 => 0,
            i => self.id_ends[i - 1] as usize,
        };
        &self.ids.0[start..self.id_ends[index] as usize]
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stdio worker's stdin, where its requests go.
pub struct Outbox {
    stdin: BufWriter<ChildStdin>,
    shared: Arc<Shared>,
    /// The tasks' names as JSON strings, by task index.
    task_names: Vec<Vec<u8>>,
}

impl Outbox {
    pub(crate) fn send(&mut self, mut batch: Batch) -> Result<(), String> {
        if batch.jobs.is_empty() {
            return Ok(());
        }
        if batch.id_ends.len() != batch.jobs.len() {
            return Err("a batch for a stdio worker must carry the jobs' ids".into());
        }
        let mut lines =
            Vec::with_capacity(batch.inputs.0.len() + batch.ids.0.len() + 48 * batch.jobs.len());
        for ((task, input), id) in batch.iter().zip(batch.ids()) {
            let name = self
                .task_names
                .get(task.0 as usize)
                .ok_or_else(|| format!("no task #{} in the worker's hello", task.0))?;
            lines.extend_from_slice(b"{\"id\":");
            lines.extend_from_slice(id);
            lines.extend_from_slice(b",\"task\":");
            lines.extend_from_slice(name);
            lines.extend_from_slice(b",\"input\":");
            lines.extend_from_slice(input);
            lines.extend_from_slice(b"}\n");
        }
        {
            // Recorded before it is written, so that no answer can come before its request.
            let mut pending = self.shared.lock();
            if pending.batches.is_empty() {
                self.shared.running.store(RunningWord::running(batch.id, 0));
                pending.since = Instant::now();
            }
            pending.batches.push_back(Sent {
                id: batch.id,
                ids: std::mem::take(&mut batch.ids),
                id_ends: std::mem::take(&mut batch.id_ends),
                answered: 0,
            });
        }
        self.stdin
            .write_all(&lines)
            .and_then(|()| self.stdin.flush())
            .map_err(|err| format!("writing to its stdin: {err}"))
    }

    /// Closes stdin: the worker answers what it has read and exits.
    pub(crate) fn shutdown(self) {
        let mut stdin = self.stdin;
        let _ = stdin.flush();
    }
}

/// A stdio worker's stdout, where its answers come from. It never blocks: whoever reads it
/// ([`Inbox::step`]) waits for its pipe ([`Inbox::fds`]) and keeps its time, so that one thread
/// can read every stdio worker's answers.
pub(crate) struct Inbox {
    lines: LineSource,
    shared: Arc<Shared>,
    /// The answers of the batch being answered.
    done: BatchDone,
    /// How the worker's output ended, once it has, after the answers it gave were handed on.
    ended: Option<Received>,
    /// Whether the gathering time was waited since the last bytes came, with answers read.
    gathered: bool,
    /// How long answers may gather before they are read.
    gather_for: Duration,
}

/// What an [`Inbox`] has, or waits for.
pub(crate) enum Step {
    /// An answer, or how the worker's output ended (its last step).
    Answer(Received),
    /// Nothing until its pipe is readable.
    Readable,
    /// Nothing before this time (answers are gathering); then step again.
    Until(Instant),
}

impl Inbox {
    /// The pipe to wait on, and the one that becomes readable once the worker is reaped.
    pub(crate) fn fds(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
        (
            self.lines.pipe.as_fd(),
            self.lines.stopped.as_ref().map(AsFd::as_fd),
        )
    }

    /// Whether, once its pipe is readable, answers should gather a while before they are read:
    /// only when more than one answer can come (a worker holding a single request, a slow job
    /// that goes alone, would only wait longer for its next one).
    pub(crate) fn gathers(&self) -> bool {
        if self.gather_for.is_zero() {
            return false;
        }
        let pending = self.shared.lock();
        let mut unanswered = pending.batches.iter().map(|b| b.len() - b.answered);
        unanswered.next().unwrap_or(0) + unanswered.next().unwrap_or(0) > 1
    }

    /// How long answers may gather before they are read.
    pub(crate) fn gather_for(&self) -> Duration {
        self.gather_for
    }

    /// The worker has been reaped: what it left in the pipe is read, and its output ends.
    pub(crate) fn reaped(&mut self) {
        self.lines.drain();
        self.lines.ended = true;
    }

    /// The next answer, or what to wait for. When the worker's output ends (it died, or broke
    /// the protocol) in the middle of a batch, the answers it gave for that batch come first,
    /// as a partial answer: they are results like any other, and only the jobs after them run
    /// again.
    pub(crate) fn step(&mut self, now: Instant) -> Step {
        if let Some(ended) = self.ended.take() {
            return Step::Answer(ended);
        }
        match self.next(now) {
            Step::Answer(end @ (Received::Closed | Received::Violation(_)))
                if !self.done.outcomes.is_empty() =>
            {
                self.ended = Some(end);
                Step::Answer(Received::Done(std::mem::take(&mut self.done)))
            }
            step => step,
        }
    }

    fn next(&mut self, now: Instant) -> Step {
        loop {
            let line = match self.lines.try_line() {
                Next::Line(line) => {
                    self.gathered = false;
                    line
                }
                Next::Quiet if self.done.outcomes.is_empty() => return Step::Readable,
                // Answers already read go to the scheduler as soon as the worker goes quiet (it
                // is running a job), after the gathering time (answers close behind each other
                // still go together): a batch's first results never wait for its last, slow,
                // job.
                Next::Quiet if !self.gathered && !self.gather_for.is_zero() => {
                    self.gathered = true;
                    return Step::Until(now + self.gather_for);
                }
                Next::Quiet => {
                    self.gathered = false;
                    return Step::Answer(Received::Done(std::mem::take(&mut self.done)));
                }
                Next::End => return Step::Answer(Received::Closed),
                Next::TooLong => {
                    return Step::Answer(Received::Violation(Violation::LineTooLong(MAX_LINE)));
                }
            };
            let response: StdioResponse<'_> = match serde_json::from_slice(line) {
                Ok(response) => response,
                Err(_) => {
                    return Step::Answer(Received::Violation(Violation::NotAResponse(quote(line))));
                }
            };
            let mut pending = self.shared.lock();
            let since = pending.since;
            let Some(sent) = pending.batches.front_mut() else {
                return Step::Answer(Received::Violation(Violation::Unasked(quote(line))));
            };
            let index = sent.answered;
            let expected = sent.id_at(index);
            if !same_id(expected, response.id.get().as_bytes()) {
                return Step::Answer(Received::Violation(Violation::WrongId {
                    answered: response.id.get().to_owned(),
                    next: String::from_utf8_lossy(expected).into_owned(),
                }));
            }
            if self.done.outcomes.is_empty() {
                // A batch's answer, or the rest of one already answered in part.
                self.done.batch = sent.id;
            }
            let result = match (response.output, response.error) {
                (Some(output), None) => {
                    self.done
                        .outputs
                        .0
                        .extend_from_slice(output.get().as_bytes());
                    TaskResult::Ok
                }
                (None, Some(error)) => TaskResult::TaskError {
                    message: error.message,
                    error_type: error.error_type,
                },
                _ => {
                    return Step::Answer(Received::Violation(Violation::NeitherOrBoth(quote(
                        line,
                    ))));
                }
            };
            let now = Instant::now();
            self.done
                .push(now.duration_since(since).as_nanos() as u64, result);
            sent.answered += 1;
            if sent.answered < sent.len() {
                let word = RunningWord::running(sent.id, sent.answered);
                self.shared.running.store(word);
                pending.since = now;
                continue;
            }
            pending.since = now;
            pending.batches.pop_front();
            let next = match pending.batches.front() {
                Some(next) => RunningWord::running(next.id, 0),
                None => RunningWord::IDLE,
            };
            self.shared.running.store(next);
            return Step::Answer(Received::Done(std::mem::take(&mut self.done)));
        }
    }
}

/// Whether two ids, as JSON, are the same value: byte for byte, or once parsed (a worker may
/// write `"\u00e9"` for `"é"`).
fn same_id(expected: &[u8], got: &[u8]) -> bool {
    expected == got
        || matches!(
            (
                serde_json::from_slice::<serde_json::Value>(expected),
                serde_json::from_slice::<serde_json::Value>(got),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

/// A line as it appears in the log: its start, quoted.
fn quote(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(QUOTE)]);
    if line.len() > QUOTE {
        format!("{text:?}... ({} bytes)", line.len())
    } else {
        format!("{text:?}")
    }
}

/// What the next read of a [`LineSource`] gave.
enum Next<'a> {
    /// A line, without its `\n`.
    Line(&'a [u8]),
    /// The pipe closed, or the worker was reaped and what it left was read.
    End,
    /// A line longer than [`MAX_LINE`].
    TooLong,
    /// No whole line to read now.
    Quiet,
}

/// The lines of a worker's stdout, read without blocking. Reads never outlast the worker: once
/// it is reaped (the `stopped` pipe becomes readable), what is left in the pipe is read and the
/// source ends.
struct LineSource {
    pipe: ChildStdout,
    stopped: Option<PipeReader>,
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// Where to look for the next `\n` (everything from `start` up to here has none).
    scanned: usize,
    /// No more bytes will come.
    ended: bool,
}

impl LineSource {
    fn new(pipe: ChildStdout, stopped: Option<PipeReader>) -> LineSource {
        let _ = crate::os::set_nonblocking(pipe.as_fd());
        LineSource {
            pipe,
            stopped,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            scanned: 0,
            ended: false,
        }
    }

    /// The next line, waiting for it (the hello, read on the worker's own thread).
    fn next_line(&mut self) -> Next<'_> {
        while !self.fill() {
            let reaped = match &self.stopped {
                Some(stopped) => poll_readable(&[self.pipe.as_fd(), stopped.as_fd()])[1],
                None => {
                    poll_readable(&[self.pipe.as_fd()]);
                    false
                }
            };
            if reaped {
                // The worker is gone: take what it left, then end.
                self.drain();
                self.ended = true;
            }
        }
        self.try_line()
    }

    /// The next whole line if there is one, reading what the pipe holds; never waits.
    fn try_line(&mut self) -> Next<'_> {
        if !self.fill() {
            return Next::Quiet;
        }
        if let Some(at) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
            let end = self.scanned + at;
            let line = self.start..end;
            self.start = end + 1;
            self.scanned = self.start;
            return Next::Line(&self.buf[line]);
        }
        if self.buf.len() - self.start > MAX_LINE {
            return Next::TooLong;
        }
        if self.start < self.buf.len() {
            // The end, and a last line without its newline.
            let line = self.start..self.buf.len();
            self.start = self.buf.len();
            self.scanned = self.start;
            return Next::Line(&self.buf[line]);
        }
        Next::End
    }

    /// Reads what the pipe holds until a whole line, an overlong one or the end is there;
    /// false when none is yet and the pipe is empty.
    fn fill(&mut self) -> bool {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                // (Nothing before `scanned` is a line ending, still.)
                self.scanned += at;
                return true;
            }
            self.scanned = self.buf.len();
            if self.buf.len() - self.start > MAX_LINE || self.ended {
                return true;
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.scanned -= self.start;
                self.start = 0;
            }
            match self.read_some() {
                Ok(0) => self.ended = true,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => self.ended = true,
            }
        }
    }

    fn read_some(&mut self) -> io::Result<usize> {
        let len = self.buf.len();
        self.buf.resize(len + 64 * 1024, 0);
        let read = self.pipe.read(&mut self.buf[len..]);
        self.buf.truncate(len + *read.as_ref().unwrap_or(&0));
        read
    }

    fn drain(&mut self) {
        while self.buf.len() - self.start <= MAX_LINE {
            match self.read_some() {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_by_value() {
        assert!(same_id(b"17", b"17"));
        assert!(same_id(b"\"\xc3\xa9\"", b"\"\\u00e9\""));
        assert!(!same_id(b"17", b"\"17\""));
        assert!(!same_id(b"17", b"18"));
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote(b"hi"), "\"hi\"");
        let long = vec![b'x'; 1000];
        assert!(quote(&long).ends_with("... (1000 bytes)"));
    }
}
