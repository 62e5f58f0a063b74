//! Result lines: formatting a [`JobResult`] as one JSON line, writing them on a thread of
//! their own, and the tally of a run's outcomes. Raw JSON (ids, outputs, meta) is spliced in as it came, never re-parsed.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::input::InputFormat;
use crate::ordered::{OrderedPool, Pending, machine_threads};
use crate::ports::Sink;
use corral_protocol::result_line::{Failure, Key, Outcome, ResultLine};

use crate::record::{ErrorKind, JobResult, ResultKey, SharedBytes};

pub use corral_protocol::result_line::Echo;

/// The echo of jobs read as `format` says: their input line in `--lines` mode.
pub fn echo_of(format: &InputFormat) -> Echo {
    if format.plain_lines {
        Echo::Input
    } else {
        Echo::Meta
    }
}

/// Appends `result` as one JSON line (with its `\n`) to `out` (see
/// [`corral_protocol::result_line`] for its fields).
pub fn format_result(result: &JobResult, echo: Echo, out: &mut Vec<u8>) {
    let key = match &result.key {
        ResultKey::Job { id, line } => Key::Job {
            id: id.as_bytes(),
            line: *line,
        },
        ResultKey::Line(line) => Key::Line(*line),
        ResultKey::Lines(_) => {
            // A worker wrote the lines of a block of job lines itself.
            if let Ok(done) = &result.outcome {
                out.extend_from_slice(done.output.as_bytes());
            }
            return;
        }
    };
    let failure;
    let outcome = match &result.outcome {
        Ok(done) => Outcome::Ok {
            output: done.output.as_bytes(),
            nanos: done.nanos,
        },
        Err(error) => {
            failure = Failure {
                kind: error.kind,
                signal: error.signal.as_deref(),
                exit_code: error.exit_code,
                error_type: error.error_type.as_deref(),
                message: &error.message,
                output: error.output.as_ref().map(SharedBytes::as_bytes),
            };
            Outcome::Err(&failure)
        }
    };
    ResultLine {
        key,
        outcome,
        attempts: result.attempts,
        worker: result.worker,
        echo: result.meta.as_ref().map(|meta| (meta.as_bytes(), echo)),
    }
    .write(out);
}

/// Result lines formatted together, and the tally of their outcomes.
#[derive(Debug, Default)]
pub struct Formatted {
    /// The lines, each with its `\n`.
    pub lines: Vec<u8>,
    /// Their outcomes.
    pub tally: Tally,
}

/// Formats `results`, in order, as one block of lines.
pub fn format_block(results: &[JobResult], echo: Echo) -> Formatted {
    let mut block = Formatted {
        lines: Vec::with_capacity(results.len() * 96),
        tally: Tally::default(),
    };
    for result in results {
        format_result(result, echo, &mut block.lines);
        block.tally.add(result);
    }
    block
}

/// Counts of a run's results.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Jobs that succeeded.
    pub ok: u64,
    /// Jobs that failed, by kind.
    pub failed: BTreeMap<ErrorKind, u64>,
}

impl Tally {
    /// Counts one result (those of a block of lines, for one that holds them).
    pub fn add(&mut self, result: &JobResult) {
        if let ResultKey::Lines(lines) = &result.key {
            for &(kind, n) in &lines.failed {
                *self.failed.entry(kind).or_default() += n;
            }
            self.ok += lines.results - lines.failures();
            return;
        }
        match &result.outcome {
            Ok(_) => self.ok += 1,
            Err(error) => *self.failed.entry(error.kind).or_default() += 1,
        }
    }

    /// Jobs that failed, of any kind.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Results counted, of any outcome.
    pub fn total(&self) -> u64 {
        self.ok + self.failed_total()
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (kind, n) in other.failed {
            *self.failed.entry(kind).or_default() += n;
        }
    }
}

/// Bytes of result lines written at once, at least (but the last ones of a burst).
const WRITE_BYTES: usize = 128 * 1024;

/// Writes result lines to a sink, buffered; flushes when told (after each group of results).
/// It knows which results reached the sink whole: [`ResultWriter::written`] counts only those,
/// so that after a write error the summary does not count lines that were never written.
pub struct ResultWriter<W: Write> {
    sink: W,
    echo: Echo,
    buf: Vec<u8>,
    /// Results formatted into `buf` and not yet handed to the sink.
    buffered: Tally,
    written: Tally,
}

impl<W: Write> ResultWriter<W> {
    /// A writer into `sink`, writing each result's echo as `echo` says.
    pub fn new(sink: W, echo: Echo) -> ResultWriter<W> {
        ResultWriter {
            sink,
            echo,
            buf: Vec::with_capacity(2 * WRITE_BYTES),
            buffered: Tally::default(),
            written: Tally::default(),
        }
    }

    /// Formats and buffers results, writing out whenever the buffer is large.
    pub fn write(&mut self, results: &[JobResult]) -> io::Result<()> {
        for result in results {
            format_result(result, self.echo, &mut self.buf);
            self.buffered.add(result);
            if self.buf.len() >= WRITE_BYTES {
                self.write_out()?;
            }
        }
        Ok(())
    }

    /// Buffers lines formatted already, writing out once the buffer is large: one write for
    /// many blocks of small results, and a large block written at once, without a copy.
    pub fn write_formatted(&mut self, block: Formatted) -> io::Result<()> {
        if self.buf.is_empty() && block.lines.len() >= WRITE_BYTES {
            let written = self.sink.write_all(&block.lines);
            written?;
            self.written.merge(block.tally);
            return Ok(());
        }
        self.buf.extend_from_slice(&block.lines);
        self.buffered.merge(block.tally);
        if self.buf.len() >= WRITE_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes out everything buffered and flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.sink.flush()
    }

    /// Results whose lines were handed to the sink whole.
    pub fn written(&self) -> &Tally {
        &self.written
    }

    fn write_out(&mut self) -> io::Result<()> {
        let written = self.sink.write_all(&self.buf);
        self.buf.clear();
        let buffered = std::mem::take(&mut self.buffered);
        written?;
        self.written.merge(buffered);
        Ok(())
    }
}

/// The result writer on a thread of its own, so that a slow or stalled output never blocks
/// the scheduler's loop: results are handed over without waiting, and the loop reads
/// [`WriterThread::backlog`] to stop taking input while too many wait to be written.
///
/// Results are formatted on a pool of threads sized to the machine (`OrderedPool`), each
/// group handed over as one block; the writer thread only writes the blocks, in the order
/// they were handed over.
pub struct WriterThread {
    tx: Option<crossbeam_channel::Sender<ToWrite>>,
    formatters: Arc<Formatters>,
    shared: Arc<WriterState>,
    done: crossbeam_channel::Receiver<()>,
}

/// A group of results handed over, and how many result lines it holds.
enum ToWrite {
    /// Being formatted.
    Formatting(usize, Pending<Formatted>),
    /// Blocks of lines a worker wrote itself ([`ResultKey::Lines`]), which need no formatting.
    Written(usize, Vec<JobResult>),
}

/// The threads that format results.
type Formatters = OrderedPool<Vec<JobResult>, Formatted>;

#[derive(Default)]
struct WriterState {
    /// Results handed over, ever.
    delivered: AtomicU64,
    /// Results handed over and not yet written (or dropped after an error).
    backlog: AtomicUsize,
    failed: AtomicBool,
    /// Set once the thread has written (or dropped) everything it will ever get.
    done: AtomicBool,
    /// What reached the sink so far, and the write error, if one happened.
    end: Mutex<(Tally, Option<io::Error>)>,
}

/// What the writer did, read when the run ends.
#[derive(Debug)]
pub struct Written {
    /// Results written whole.
    pub tally: Tally,
    /// The write error that stopped writing, if any.
    pub error: Option<io::Error>,
    /// Whether the writer was still writing when it was read (an output stalled at the end).
    pub abandoned: bool,
}

impl WriterThread {
    /// Starts writing to `sink`.
    pub fn start(sink: Box<dyn Write + Send>, echo: Echo) -> WriterThread {
        let (tx, rx) = crossbeam_channel::unbounded::<ToWrite>();
        let formatters = Arc::new(OrderedPool::start(
            "corral-format",
            vec![(); machine_threads()],
            None,
            move |(), results: Vec<JobResult>| format_block(&results, echo),
        ));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let shared = Arc::new(WriterState::default());
        let state = shared.clone();
        std::thread::Builder::new()
            .name("corral-output".into())
            .spawn(move || {
                write_all_results(&rx, sink, echo, &state);
                state.done.store(true, Ordering::Release);
                let _ = done_tx.send(());
            })
            .expect("spawning a thread");
        WriterThread {
            tx: Some(tx),
            formatters,
            shared,
            done,
        }
    }

    /// A sending side for the engine; the thread ends once it and [`WriterThread::close`]
    /// have both let go.
    pub fn sender(&self) -> ResultSender {
        ResultSender {
            tx: self.tx.clone().expect("a writer is closed only at the end"),
            formatters: self.formatters.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Results handed over so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Results handed over and not yet written.
    pub fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    /// Whether a write failed.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Says no more results come from here; once every [`ResultSender`] is dropped too,
    /// [`WriterThread::finished`] tells when all are written.
    pub fn close(&mut self) {
        self.tx.take();
    }

    /// Becomes ready once everything handed over is written (after [`WriterThread::close`]).
    pub fn finished(&self) -> &crossbeam_channel::Receiver<()> {
        &self.done
    }

    /// What was written. If the thread is still writing, this is what it had written so far
    /// and the rest is abandoned (the thread stays blocked on the sink).
    pub fn outcome(self) -> Written {
        let abandoned = !self.shared.done.load(Ordering::Acquire);
        let mut end = self.shared.end.lock().unwrap_or_else(|e| e.into_inner());
        Written {
            tally: end.0.clone(),
            error: end.1.take(),
            abandoned,
        }
    }
}

/// Hands results to a [`WriterThread`] without waiting: the sink of `corral run`'s one source.
pub struct ResultSender {
    tx: crossbeam_channel::Sender<ToWrite>,
    formatters: Arc<Formatters>,
    shared: Arc<WriterState>,
}

impl Sink for ResultSender {
    fn deliver(&mut self, results: Vec<JobResult>) {
        let n = results.iter().map(|r| r.count() as usize).sum();
        self.shared.delivered.fetch_add(n as u64, Ordering::Relaxed);
        self.shared.backlog.fetch_add(n, Ordering::Relaxed);
        let group = if results.iter().all(|r| matches!(r.key, ResultKey::Lines(_))) {
            ToWrite::Written(n, results)
        } else {
            ToWrite::Formatting(n, self.formatters.give(results))
        };
        // The thread only stops after every sender is dropped.
        let _ = self.tx.send(group);
    }

    fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }
}

fn write_all_results(
    rx: &crossbeam_channel::Receiver<ToWrite>,
    sink: Box<dyn Write + Send>,
    echo: Echo,
    state: &WriterState,
) {
    let mut writer = ResultWriter::new(sink, echo);
    let mut error = None;
    let publish = |writer: &ResultWriter<Box<dyn Write + Send>>, error: &mut Option<io::Error>| {
        let mut end = state.end.lock().unwrap_or_else(|e| e.into_inner());
        end.0.clone_from(writer.written());
        if error.is_some() {
            end.1 = error.take();
        }
    };
    for group in rx.iter() {
        let n = match &group {
            ToWrite::Formatting(n, _) | ToWrite::Written(n, _) => *n,
        };
        if error.is_none() && !state.failed.load(Ordering::Relaxed) {
            let written = match group {
                ToWrite::Formatting(_, formatted) => match formatted.wait() {
                    Some(block) => writer.write_formatted(block),
                    None => Err(io::Error::other("a thread formatting results panicked")),
                },
                ToWrite::Written(_, results) => writer.write(&results),
            }
            .and_then(|()| {
                if rx.is_empty() {
                    writer.flush()
                } else {
                    Ok(())
                }
            });
            if let Err(err) = written {
                state.failed.store(true, Ordering::Relaxed);
                error = Some(err);
            }
            if rx.is_empty() || error.is_some() {
                publish(&writer, &mut error);
            }
        }
        state.backlog.fetch_sub(n, Ordering::Relaxed);
    }
    if !state.failed.load(Ordering::Relaxed)
        && let Err(err) = writer.flush()
    {
        state.failed.store(true, Ordering::Relaxed);
        error = Some(err);
    }
    publish(&writer, &mut error);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Completed, JobError, SourceId};

    fn line(result: &JobResult) -> String {
        let mut out = Vec::new();
        format_result(result, Echo::Meta, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ok_results_splice_raw_json() {
        let result = JobResult {
            seq: corral_protocol::JobSeq(0),
            source: SourceId::default(),
            key: ResultKey::Job {
                id: b"17".to_vec().into(),
                line: 3,
            },
            meta: Some(b"{\"any\": \"json\"}".to_vec().into()),
            attempts: 1,
            worker: Some(4242),
            outcome: Ok(Completed {
                output: b"14".to_vec().into(),
                nanos: 812_345,
            }),
        };
        assert_eq!(
            line(&result),
            "{\"id\":17,\"ok\":true,\"output\":14,\"attempts\":1,\"worker\":4242,\"ms\":0.812,\"meta\":{\"any\": \"json\"}}\n"
        );
        let value: serde_json::Value = serde_json::from_str(&line(&result)).unwrap();
        assert_eq!(value["meta"]["any"], "json");
    }

    #[test]
    fn errors_carry_kind_signal_and_escaped_message() {
        let mut error = JobError::new(ErrorKind::Crashed, "worker 9 was killed by \"SIGSEGV\"\n");
        error.signal = Some("SIGSEGV".into());
        let result = JobResult {
            seq: corral_protocol::JobSeq(0),
            source: SourceId::default(),
            key: ResultKey::Job {
                id: b"\"x\"".to_vec().into(),
                line: 1,
            },
            meta: None,
            attempts: 3,
            worker: Some(9),
            outcome: Err(error),
        };
        let text = line(&result);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["id"], "x");
        assert_eq!(value["ok"], false);
        assert_eq!(value["error"]["kind"], "crashed");
        assert_eq!(value["error"]["signal"], "SIGSEGV");
        assert_eq!(
            value["error"]["message"],
            "worker 9 was killed by \"SIGSEGV\"\n"
        );
        assert_eq!(value["attempts"], 3);
        assert!(value.get("line").is_none());
    }

    #[test]
    fn line_errors_name_the_line() {
        let result = JobResult {
            seq: corral_protocol::JobSeq(0),
            source: SourceId::default(),
            key: ResultKey::Line(19),
            meta: None,
            attempts: 0,
            worker: None,
            outcome: Err(JobError::new(ErrorKind::BadInput, "expected ','")),
        };
        assert_eq!(
            line(&result),
            "{\"line\":19,\"ok\":false,\"error\":{\"kind\":\"bad_input\",\"message\":\"expected ','\"}}\n"
        );
        let never_ran = JobResult {
            seq: corral_protocol::JobSeq(0),
            key: ResultKey::Job {
                id: b"5".to_vec().into(),
                line: 7,
            },
            ..result
        };
        assert!(line(&never_ran).starts_with("{\"id\":5,\"line\":7,\"ok\":false"));
    }

    #[test]
    fn writer_writes_every_line_and_tally_counts_by_kind() {
        let ok = JobResult {
            seq: corral_protocol::JobSeq(0),
            source: SourceId::default(),
            key: ResultKey::Line(1),
            meta: None,
            attempts: 1,
            worker: None,
            outcome: Ok(Completed {
                output: b"1".to_vec().into(),
                nanos: 0,
            }),
        };
        let bad = JobResult {
            outcome: Err(JobError::new(ErrorKind::Panic, "p")),
            ..ok.clone()
        };
        let results = [ok.clone(), bad, ok];
        let mut writer = ResultWriter::new(Vec::new(), Echo::Meta);
        writer.write(&results).unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.sink.iter().filter(|&&b| b == b'\n').count(), 3);
        let mut tally = Tally::default();
        results.iter().for_each(|r| tally.add(r));
        assert_eq!(tally.ok, 2);
        assert_eq!(tally.failed_total(), 1);
        assert_eq!(tally.failed[&ErrorKind::Panic], 1);
        assert_eq!(writer.written(), &tally);
    }

    /// A sink that takes `room` bytes, then fails.
    struct Filling {
        room: usize,
    }

    impl Write for Filling {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_write_error_only_the_results_written_whole_are_counted() {
        let result = |i: u64| JobResult {
            seq: corral_protocol::JobSeq(i),
            source: SourceId::default(),
            key: ResultKey::Line(i),
            meta: Some(vec![b'1'; 1000].into()),
            attempts: 1,
            worker: None,
            outcome: Ok(Completed {
                output: b"1".to_vec().into(),
                nanos: 0,
            }),
        };
        let results: Vec<JobResult> = (0..300).map(result).collect();
        let mut writer = ResultWriter::new(Filling { room: 200_000 }, Echo::Meta);
        assert!(
            writer
                .write(&results)
                .and_then(|()| writer.flush())
                .is_err()
        );
        let line_len = {
            let mut out = Vec::new();
            format_result(&results[0], Echo::Meta, &mut out);
            out.len() as u64
        };
        // The first 128 KiB went out whole; the second write failed.
        let written = writer.written().ok;
        assert!(written > 0 && written * line_len <= 200_000, "{written}");
        assert!(written < 300);
    }
}
