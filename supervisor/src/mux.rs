//! `corral mux`: one engine and its workers for the whole life of one library client, which
//! sends many calls at once on corral's standard input and reads every call's results on its
//! standard output. Python's `corral.Pool` keeps one for each pool: each `map`, `apply` or
//! `submit` is a call, and each call is a source of its own on the engine, so calls share the
//! workers, take turns in the queue a batch at a time, and one that is abandoned drops only its
//! own queued jobs.
//!
//! Standard input is job lines, as `corral run` reads them, and lines of the client's own that
//! open with `{"corral":` (which no job line does):
//!
//! - `{"corral":"call","call":N}`: the job lines that follow are call N's (N any number the
//!   client chooses; the call opens with its first line);
//! - `{"corral":"end","call":N}`: call N has no more jobs;
//! - `{"corral":"cancel","call":N}`: call N is abandoned: its queued jobs are dropped, and its
//!   results from now on are not written.
//!
//! Job lines before any `call` line are call 0's. The end of standard input means no more
//! calls: the calls still open end there, the engine runs what it has, and corral exits 0.
//!
//! Standard output is one result line per job, as `corral run` writes them, in completion
//! order and with the calls' results interleaved (the client tells them apart by their ids).
//! If the workers cannot run (they fail at start, again and again), a last line
//! `{"corral":"error","message":...}` says why, and corral exits with status 2.
//!
//! The lines of each call are copied out of the read buffer: a call whose jobs wait long in
//! the queue must not hold a block that every other call's lines need (as a ring of shared
//! blocks would).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Sender, bounded, unbounded};
use serde::Deserialize;

use crate::engine::{Control, Engine, EngineConfig, EngineEnd};
use crate::input::{InputFormat, JobParser, Piece};
use crate::output::{Echo, echo_of, format_result};
use crate::ports::{Feed, Intake, Sink};
use crate::record::count_lines;
use crate::record::{JobResult, Jobs, SourceId, TaskNames};
use crate::wire::{PREFIX, Said};

/// Jobs the queue may hold, summed over every call: the client bounds each call's jobs in
/// flight, and the queue must take them all, so that a control line is never stuck behind job
/// lines waiting for room.
const QUEUED_JOBS: usize = 1 << 20;
/// Bytes of one call's job lines handed to the engine at once, at most.
const RUN_BYTES: usize = 256 * 1024;
/// Bytes read from the client at a time.
const READ_BYTES: usize = 256 * 1024;

/// A line of the client's own.
#[derive(Debug, Deserialize)]
#[serde(tag = "corral", rename_all = "snake_case")]
enum Say {
    Call { call: u64 },
    End { call: u64 },
    Cancel { call: u64 },
}

/// How `corral mux` ended.
#[derive(Debug)]
pub enum MuxEnd {
    /// The client closed its input and every call was answered (or the client is gone).
    Done,
    /// The workers could not be run; the message says why (also written as the last line).
    Fatal(String),
}

/// Serves the calls of `input`, writing their results to `output` (a pipe or file, which is
/// made non-blocking), until the input ends and every call is answered, or until the workers
/// cannot run.
pub fn mux(
    mut config: EngineConfig,
    format: InputFormat,
    input: impl Read + Send + 'static,
    output: File,
) -> MuxEnd {
    config.scheduler.max_queued = config.scheduler.max_queued.max(QUEUED_JOBS);
    config.scheduler.spread_always = true;
    // Each call waits for its answers: they are read as they come.
    config.pool.gather = Duration::ZERO;
    let names = TaskNames::default();
    let (intake, intake_rx) = bounded::<Intake>(1);
    let (control, control_rx) = unbounded::<Control>();
    let pipe = Arc::new(ResultPipe::new(output));
    let engine = Engine::new(config, names.clone());
    let engine = thread::Builder::new()
        .name("corral-engine".into())
        .spawn(move || engine.run(&intake_rx, &control_rx))
        .expect("spawning a thread");
    let writer = {
        let pipe = pipe.clone();
        thread::Builder::new()
            .name("corral-writer".into())
            .spawn(move || pipe.write_pending())
            .expect("spawning a thread")
    };
    {
        let calls = Calls {
            echo: echo_of(&format),
            format,
            names,
            intake,
            control,
            pipe: pipe.clone(),
            ended: Arc::default(),
            open: HashMap::new(),
            next_source: 0,
        };
        // It ends with the input; a client that never closes it ends with the engine.
        thread::Builder::new()
            .name("corral-calls".into())
            .spawn(move || calls.read(input))
            .expect("spawning a thread");
    }
    let report = engine.join().expect("the engine thread does not panic");
    let end = match report.end {
        EngineEnd::Fatal(message) | EngineEnd::Halted(message) => MuxEnd::Fatal(message),
        EngineEnd::Completed | EngineEnd::SinkFailed | EngineEnd::Interrupted(_) => MuxEnd::Done,
    };
    // Every sink went with the engine, so every result is ahead of this.
    if let MuxEnd::Fatal(message) = &end {
        pipe.send(
            &Said::Error {
                message: message.clone(),
            }
            .line(),
        );
    }
    pipe.end();
    let _ = writer.join();
    end
}

/// The client's end of the results, shared by every call's sink. A sink writes its results
/// itself, at once, when nothing waits to be written before them and the pipe takes them
/// without waiting; what the pipe does not take at once goes to the writer thread, which
/// waits for room. So results reach the client without a hand-over between threads, and the
/// engine never waits on the client.
struct ResultPipe {
    file: File,
    state: Mutex<PipeState>,
    more: Condvar,
    /// The client stopped reading (a write failed).
    gone: AtomicBool,
}

#[derive(Default)]
struct PipeState {
    /// Bytes the pipe did not take yet, in order.
    pending: Vec<u8>,
    /// The writer thread is writing bytes it took from `pending`.
    writing: bool,
    /// Nothing more will be sent.
    ended: bool,
}

impl ResultPipe {
    fn new(file: File) -> ResultPipe {
        if let Err(err) = crate::os::set_nonblocking(file.as_fd()) {
            tracing::debug!("results are written blocking: {err}");
        }
        ResultPipe {
            file,
            state: Mutex::default(),
            more: Condvar::new(),
            gone: AtomicBool::new(false),
        }
    }

    fn gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn lost(&self) {
        if !self.gone.swap(true, Ordering::Relaxed) {
            tracing::info!("the client stopped reading: dropping the jobs not started yet");
        }
    }

    /// Writes `bytes` now as far as the pipe takes them, and leaves the rest to the writer.
    fn send(&self, bytes: &[u8]) {
        if bytes.is_empty() || self.gone() {
            return;
        }
        let mut state = self.state.lock().expect("never poisoned");
        let mut rest = bytes;
        if state.pending.is_empty() && !state.writing {
            match (&self.file).write(bytes) {
                Ok(n) => rest = &bytes[n..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    drop(state);
                    self.lost();
                    return;
                }
            }
            if rest.is_empty() {
                return;
            }
        }
        state.pending.extend_from_slice(rest);
        self.more.notify_one();
    }

    /// Nothing more will be sent: the writer writes what is left, then returns.
    fn end(&self) {
        self.state.lock().expect("never poisoned").ended = true;
        self.more.notify_one();
    }

    /// The writer thread: writes what the pipe did not take at once, waiting for room, until
    /// the end.
    fn write_pending(&self) {
        loop {
            let bytes = {
                let mut state = self.state.lock().expect("never poisoned");
                while state.pending.is_empty() {
                    if state.ended {
                        return;
                    }
                    state = self.more.wait(state).expect("never poisoned");
                }
                state.writing = true;
                std::mem::take(&mut state.pending)
            };
            if !self.gone() && write_waiting(&self.file, &bytes).is_err() {
                self.lost();
            }
            self.state.lock().expect("never poisoned").writing = false;
        }
    }
}

/// Writes all of `bytes` to a non-blocking file, waiting for room as needed.
fn write_waiting(mut file: &File, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                crate::os::poll_writable(file.as_fd());
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Where the engine hands a call's results: formatted and sent down the one pipe.
struct CallSink {
    pipe: Arc<ResultPipe>,
    echo: Echo,
    /// Which call, and its source.
    call: u64,
    source: SourceId,
    /// The calls that have ended and are not answered yet (they can still be cancelled); a
    /// call leaves it when its sink is dropped, its last result delivered.
    ended: EndedCalls,
}

type EndedCalls = Arc<Mutex<HashMap<u64, SourceId>>>;

impl Drop for CallSink {
    fn drop(&mut self) {
        let mut ended = self.ended.lock().expect("never poisoned");
        if ended.get(&self.call) == Some(&self.source) {
            ended.remove(&self.call);
        }
    }
}

impl Sink for CallSink {
    fn deliver(&mut self, results: Vec<JobResult>) {
        let mut lines = Vec::with_capacity(results.len() * 96);
        for result in &results {
            format_result(result, self.echo, &mut lines);
        }
        self.pipe.send(&lines);
    }

    /// None counted: the client bounds each call's jobs in flight, so their results are
    /// bounded too, and it reads them on a thread of its own that does nothing else.
    fn backlog(&self) -> usize {
        0
    }

    fn failed(&self) -> bool {
        self.pipe.gone()
    }
}

/// A call that is open: its source, and where its lines have got to.
struct Call {
    source: SourceId,
    parser: JobParser,
    /// Lines of it read so far.
    line: u64,
    /// The sequence number its next job takes.
    next_seq: u64,
}

/// The reading side: the client's lines, routed to the calls they belong to.
struct Calls {
    format: InputFormat,
    names: TaskNames,
    intake: Sender<Intake>,
    control: Sender<Control>,
    /// What each call's sink is made of.
    pipe: Arc<ResultPipe>,
    echo: Echo,
    ended: EndedCalls,
    open: HashMap<u64, Call>,
    next_source: u32,
}

impl Calls {
    /// Reads the client's lines to their end, then seals the engine's intake.
    fn read(mut self, input: impl Read) {
        let mut reader = BufReader::with_capacity(READ_BYTES, input);
        let max = self.format.max_line_bytes;
        let mut current = 0;
        let mut run = Vec::with_capacity(RUN_BYTES);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(max as u64 + 2)
                .read_until(b'\n', &mut line);
            let Ok(n) = read else { break };
            if n == 0 {
                break;
            }
            let too_long = !line.ends_with(b"\n") && n > max + 1;
            if too_long {
                let Ok(rest) = skip_line(&mut reader) else {
                    break;
                };
                if !self.hand_over(current, &mut run) {
                    return;
                }
                self.too_long(current, n as u64 + rest);
                continue;
            }
            if line.starts_with(PREFIX) {
                if !self.hand_over(current, &mut run) {
                    return;
                }
                match serde_json::from_slice::<Say>(&line) {
                    Ok(Say::Call { call }) => current = call,
                    Ok(Say::End { call }) => self.end(call),
                    Ok(Say::Cancel { call }) => self.cancel(call),
                    Err(err) => tracing::warn!(
                        "a line of the client's own that corral does not know: {err}"
                    ),
                }
                continue;
            }
            run.extend_from_slice(&line);
            if (run.len() >= RUN_BYTES || reader.buffer().is_empty())
                && !self.hand_over(current, &mut run)
            {
                return;
            }
        }
        if !self.hand_over(current, &mut run) {
            return;
        }
        let open: Vec<u64> = self.open.keys().copied().collect();
        for call in open {
            self.end(call);
        }
        let _ = self.intake.send(Intake::Seal);
    }

    /// The open call `call`, opened now if it is not.
    fn call(&mut self, call: u64) -> Option<&mut Call> {
        if !self.open.contains_key(&call) {
            let source = SourceId(self.next_source);
            self.next_source = self.next_source.checked_add(1)?;
            let sink = Box::new(CallSink {
                pipe: self.pipe.clone(),
                echo: self.echo,
                call,
                source,
                ended: self.ended.clone(),
            });
            self.intake.send(Intake::Open { source, sink }).ok()?;
            let parser =
                JobParser::new(self.format.clone(), self.names.clone()).with_source(source);
            self.open.insert(
                call,
                Call {
                    source,
                    parser,
                    line: 0,
                    next_seq: 0,
                },
            );
        }
        self.open.get_mut(&call)
    }

    /// Hands the job lines of `run` to the engine as `call`'s; false once the engine is gone.
    fn hand_over(&mut self, call: u64, run: &mut Vec<u8>) -> bool {
        if run.is_empty() {
            return true;
        }
        let lines = Bytes::from(std::mem::replace(run, Vec::with_capacity(RUN_BYTES)));
        let intake = self.intake.clone();
        let Some(call) = self.call(call) else {
            return false;
        };
        let count = count_lines(&lines);
        let piece = Piece::Lines {
            first_line: call.line + 1,
            lines,
            count,
        };
        let mut chunk = call
            .parser
            .parse_piece(&piece, Jobs::with_capacity(count as usize));
        call.line += count;
        chunk.renumber(&mut call.next_seq);
        if chunk.is_empty() {
            return true;
        }
        let source = call.source;
        intake
            .send(Intake::Feed {
                source,
                feed: Feed::Jobs(chunk),
            })
            .is_ok()
    }

    /// A line of `call` was `len` bytes long, over the limit: its result says so.
    fn too_long(&mut self, call: u64, len: u64) {
        let intake = self.intake.clone();
        let Some(call) = self.call(call) else {
            return;
        };
        call.line += 1;
        let piece = Piece::TooLong {
            line: call.line,
            len,
        };
        let mut chunk = call.parser.parse_piece(&piece, Jobs::with_capacity(1));
        chunk.renumber(&mut call.next_seq);
        let source = call.source;
        let _ = intake.send(Intake::Feed {
            source,
            feed: Feed::Jobs(chunk),
        });
    }

    fn end(&mut self, number: u64) {
        if let Some(call) = self.open.remove(&number) {
            // Before the engine hears of the end, so that the sink's drop finds it.
            self.ended
                .lock()
                .expect("never poisoned")
                .insert(number, call.source);
            let _ = self.intake.send(Intake::Feed {
                source: call.source,
                feed: Feed::Ended,
            });
        }
    }

    /// Drops what a call has not run yet, whether or not it has ended.
    fn cancel(&mut self, number: u64) {
        let source = match self.open.remove(&number) {
            Some(call) => Some(call.source),
            None => self.ended.lock().expect("never poisoned").remove(&number),
        };
        if let Some(source) = source {
            let _ = self.control.send(Control::Close(source));
        }
    }
}

/// Consumes the rest of a line too long to keep; returns how many bytes it had (without its
/// ending).
fn skip_line(reader: &mut impl BufRead) -> io::Result<u64> {
    let mut skipped = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(skipped);
        }
        if let Some(at) = memchr::memchr(b'\n', buffer) {
            let carriage = u64::from(at > 0 && buffer[at - 1] == b'\r');
            reader.consume(at + 1);
            return Ok(skipped + at as u64 - carriage);
        }
        let len = buffer.len();
        reader.consume(len);
        skipped += len as u64;
    }
}
