//! `corral run`: its inputs, read in order, are the engine's one source, and its output the
//! one sink (see [`crate::engine`]).
//!
//! Signals: the first SIGINT, SIGTERM or SIGHUP drains the run (no new jobs; batches in flight
//! finish within the grace period and their results are written). A second signal, or the end
//! of the grace period, kills the workers at once; results already complete (those held back
//! for `--keep-order` too) are still written.
//!
//! Results go to the writer thread without blocking, and while more than
//! [`crate::engine::MAX_BACKLOG`] wait to be written no more input is taken, so a stalled
//! reader of the results holds memory bounded and signals, timeouts and the grace period are
//! still enforced. At the end the run waits for the writer, but not past the grace period of a
//! stop signal, nor past [`LAST_FLUSH`] after a second one.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corral_protocol::Notes;
use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, unbounded};

use crate::engine::{Control, Engine, EngineConfig, EngineEnd, Observers};
use crate::input::parallel::ParallelReader;
use crate::input::{InputFormat, JobParser};
use crate::joblog::{Joblog, JoblogFile};
use crate::metrics::{Listener, Metrics};
use crate::output::{Tally, WriterThread, echo_of};
use crate::pool::PoolConfig;
use crate::ports::{Feed, Intake, Sink, SourceError};
use crate::record::{InputChunk, Job, Jobs, SourceId, TaskNames};
use crate::resume::FinishedKeys;
use crate::ring::Ring;
use crate::scheduler::{RunCounters, SchedulerConfig};
use crate::transport::Transport;

/// Items handed from the reader to the scheduler at once, at most.
const INPUT_CHUNK: usize = 1024;
/// How long results already complete may still take to be written once the run is stopped at
/// once (a second signal, the end of the grace period).
pub const LAST_FLUSH: Duration = Duration::from_secs(1);
/// How long a scrape of `--metrics` waits for the engine's state.
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// Where jobs are read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Standard input.
    Stdin,
    /// A file. Anything but a regular file (a named pipe, a device) keeps the descriptor
    /// opened when the command line was checked and is read through it: a named pipe opened
    /// twice loses its writer to the first close. A regular file is opened again when its
    /// turn comes, so that a thousand inputs do not hold a thousand descriptors.
    File(PathBuf, Option<Arc<File>>),
}

impl Source {
    /// Opens `path` for reading (an error now says it cannot be read at all).
    pub fn open(path: &Path) -> io::Result<Source> {
        let file = File::open(path)?;
        let keep = !file.metadata()?.is_file();
        Ok(Source::File(path.to_owned(), keep.then(|| Arc::new(file))))
    }

    /// How messages name it.
    pub fn name(&self) -> String {
        match self {
            Source::Stdin => "standard input".into(),
            Source::File(path, _) => path.display().to_string(),
        }
    }

    /// Its reader; an error says it cannot be opened now.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>, SourceError> {
        match self {
            Source::Stdin => Ok(Box::new(io::stdin())),
            Source::File(_, Some(file)) => Ok(Box::new(SharedFile(file.clone()))),
            Source::File(path, None) => match File::open(path) {
                Ok(file) => Ok(Box::new(file)),
                Err(error) => Err(SourceError::Open {
                    name: path.display().to_string(),
                    error,
                }),
            },
        }
    }
}

/// A file read through a shared descriptor.
struct SharedFile(Arc<File>);

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Scheduling rules.
    pub scheduler: SchedulerConfig,
    /// How to start workers.
    pub pool: PoolConfig,
    /// How lines become jobs.
    pub format: InputFormat,
    /// Inputs, read in order.
    pub sources: Vec<Source>,
    /// How long batches in flight may take to finish after the first stop signal.
    pub grace: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Keys of results already written (`--resume`); those jobs are skipped.
    pub finished: Option<FinishedKeys>,
    /// Threads that parse the input; 0 parses on the thread that reads it, as `--resume`
    /// always does.
    pub parse_threads: usize,
}

/// What a run reports besides its results: a joblog, metrics.
#[derive(Debug, Default)]
pub struct Observing {
    /// The joblog's file, opened.
    pub joblog: Option<JoblogFile>,
    /// Where metrics are served, bound.
    pub metrics: Option<Listener>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every job has its result.
    Completed,
    /// Stopped by a signal (its number); jobs not run have no result line.
    Interrupted(i32),
    /// Stopped by `--halt`; the message says why.
    Halted(String),
    /// The workers could not be run (configuration error); the message says why.
    Fatal(String),
    /// An input could not be read to its end; the jobs read before the error have results.
    InputFailed(String),
    /// The results could not be written.
    OutputFailed(io::ErrorKind, String),
}

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    /// Results written, by outcome.
    pub tally: Tally,
    /// Restarts, recycles, jobs not run.
    pub counters: RunCounters,
    /// Results that were complete but could not be written (a write error, or an output still
    /// stalled when the run had to end).
    pub unwritten: u64,
    /// Whether all input was read.
    pub input_complete: bool,
    /// How it ended.
    pub end: RunEnd,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs every job of `config.sources` and writes one result line per job line to `output`.
pub fn run(config: RunConfig, output: Box<dyn Write + Send>, observing: Observing) -> RunReport {
    let started = Instant::now();
    let Observing {
        joblog,
        metrics: listener,
    } = observing;
    let mut config = config;
    config.scheduler.notes = match (&joblog, &listener) {
        (Some(_), Some(_)) => Notes::Both,
        (Some(_), None) => Notes::Joblog,
        (None, Some(_)) => Notes::Counts,
        (None, None) => Notes::None,
    };
    let mut writer = WriterThread::start(output, echo_of(&config.format));

    let names = TaskNames::default();
    let parser = JobParser::new(config.format.clone(), names.clone());
    let reading = Reading::of(&config);
    let block_parser = (reading == Reading::Blocks).then(|| parser.piece_parser());
    let (intake_tx, intake_rx) = bounded::<Intake>(1);
    let sources = config.sources.clone();
    let finished = config.finished.clone();
    let vectors = config.format.max_blocks;
    let sink: Box<dyn Sink> = Box::new(writer.sender());
    thread::Builder::new()
        .name("corral-input".into())
        .spawn(move || read_inputs(sources, parser, finished, reading, vectors, sink, intake_tx))
        .expect("spawning a thread");

    let (control_tx, control_rx) = unbounded::<Control>();
    let signals = crate::os::forward_stop_signals(control_tx.clone(), Control::Stop);
    let mut engine = Engine::new(
        EngineConfig {
            scheduler: config.scheduler.clone(),
            pool: config.pool.clone(),
            grace: config.grace,
            progress: config.progress,
        },
        names.clone(),
    );
    if let Some(parser) = block_parser {
        engine.read_lines_with(parser);
    }
    let mut joblog = joblog.map(|file| Joblog::start(file, names.clone()));
    let metrics = listener.map(|listener| {
        let control = control_tx.clone();
        let live = move || {
            let (tx, rx) = bounded(1);
            control.send(Control::Status(tx)).ok()?;
            rx.recv_timeout(STATUS_WAIT)
                .ok()
                .map(|status| status.live())
        };
        let metrics = Arc::new(Metrics::new(names.clone(), Box::new(live)));
        crate::metrics::serve(listener, metrics.clone());
        metrics
    });
    engine.observe_with(Observers {
        joblog: joblog.as_ref().map(Joblog::sender),
        metrics,
    });
    let report = engine.run(&intake_rx, &control_rx);
    if let Some(Err(err)) = joblog.as_mut().map(Joblog::finish) {
        tracing::error!("cannot write the joblog: {err}");
    }

    writer.close();
    let mut interrupted = match report.end {
        EngineEnd::Interrupted(signal) => Some(signal),
        _ => None,
    };
    wait_for_writer(
        &writer,
        &control_rx,
        config.grace,
        report.grace_until,
        report.stopped_at_once,
        &mut interrupted,
    );
    if let Some(handle) = signals {
        handle.close();
    }
    let delivered = writer.delivered();
    let written = writer.outcome();
    let unwritten = delivered - written.tally.total();
    if written.abandoned {
        tracing::warn!("the output is stalled: {unwritten} results complete were not written");
    }
    let end = match report.end {
        EngineEnd::Fatal(message) => Some(RunEnd::Fatal(message)),
        EngineEnd::Halted(message) => Some(RunEnd::Halted(message)),
        EngineEnd::Interrupted(_) | EngineEnd::Completed | EngineEnd::SinkFailed => None,
    }
    .or_else(|| interrupted.map(RunEnd::Interrupted))
    .or_else(|| report.source_error.map(RunEnd::InputFailed));
    let end = match (end, written.error) {
        (Some(end), _) => end,
        (None, Some(err)) => RunEnd::OutputFailed(err.kind(), err.to_string()),
        (None, None) => RunEnd::Completed,
    };
    RunReport {
        tally: written.tally,
        counters: report.counters,
        unwritten,
        input_complete: report.sources_complete,
        end,
        elapsed: started.elapsed(),
    }
}

/// Waits until every result is written, but not past the grace period of a stop signal,
/// nor past [`LAST_FLUSH`] once the run was stopped at once; a further signal ends the wait.
fn wait_for_writer(
    writer: &WriterThread,
    control_rx: &Receiver<Control>,
    grace: Duration,
    grace_until: Option<Instant>,
    stopped_at_once: bool,
    interrupted: &mut Option<i32>,
) {
    let mut until = if stopped_at_once {
        Some(Instant::now() + LAST_FLUSH)
    } else {
        grace_until
    };
    loop {
        let deadline = until.map_or_else(never, |t| {
            after(t.saturating_duration_since(Instant::now()))
        });
        select! {
            recv(writer.finished()) -> _ => return,
            recv(deadline) -> _ => return,
            recv(control_rx) -> message => {
                let Ok(Control::Stop(signal)) = message else { return };
                if interrupted.is_some() {
                    return;
                }
                *interrupted = Some(signal);
                let limit = Instant::now() + grace;
                until = Some(until.map_or(limit, |t| t.min(limit)));
                tracing::warn!(
                    "stop signal: waiting at most {} for the results to be written",
                    humantime::format_duration(grace)
                );
            }
        }
    }
}

/// How `corral run` reads its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// On the thread that reads them: `--parse-threads 0`, or `--resume`, whose repeated ids
    /// are found in reading order.
    Serial,
    /// Framed on the thread that reads them, parsed on this many others.
    Parallel(usize),
    /// Framed on the thread that reads them, and sent as blocks of raw lines that the workers
    /// read, run and answer themselves ([`crate::record::Job::lines`]): the usual way, when
    /// nothing needs each job in the supervisor before it runs
    /// ([`RunConfig::needs_each_job`]).
    Blocks,
}

impl Reading {
    fn of(config: &RunConfig) -> Reading {
        if config.parse_threads == 0 || config.finished.is_some() {
            Reading::Serial
        } else if config.needs_each_job().is_none() {
            Reading::Blocks
        } else {
            Reading::Parallel(config.parse_threads)
        }
    }
}

impl RunConfig {
    /// Why the supervisor must see each job before it runs, so that lines cannot go to the
    /// workers as blocks of raw lines; `None` when they can. Every setting is named here, so
    /// that a new one cannot be added without deciding whether it needs each job.
    pub fn needs_each_job(&self) -> Option<&'static str> {
        let RunConfig {
            scheduler,
            pool,
            format,
            sources: _,
            grace: _,
            progress: _,
            // Their reading order is decided apart (see `Reading`).
            finished: _,
            parse_threads: _,
        } = self;
        let InputFormat {
            plain_lines,
            default_task: _,
            exec,
            max_line_bytes: _,
            max_blocks: _,
            shard,
        } = format;
        let SchedulerConfig {
            keep_order,
            max_jobs_per_worker,
            workers: _,
            retries: _,
            // A block's running word names its running line, as a batch's names its job.
            timeout: _,
            max_queued: _,
            max_queued_bytes: _,
            batch_target: _,
            max_batch_jobs: _,
            max_batch_bytes: _,
            batches_in_flight: _,
            spread_always: _,
            restart: _,
            max_start_failures: _,
            // Failures are counted from the answers, a block's as a batch's.
            halt: _,
            max_rss: _,
            memory_limit: _,
            exit_grace: _,
            // A block's lines are noted by its worker.
            notes: _,
        } = scheduler;
        let PoolConfig {
            transport,
            program: _,
            args: _,
            env: _,
            handshake_timeout: _,
            memory_limit: _,
            keeper: _,
            gather: _,
            own_readers: _,
        } = pool;
        if *transport != Transport::Native {
            Some("only native workers read blocks of lines")
        } else if keep_order.is_some() {
            Some("--keep-order holds each result in input order")
        } else if max_jobs_per_worker.is_some() {
            Some("--max-jobs-per-worker counts each job")
        } else if shard.is_some() {
            Some("--shard picks each job by its line or id")
        } else if *plain_lines {
            Some("--lines makes each line a job of its own")
        } else if *exec {
            Some("--exec checks each job before it runs a program")
        } else {
            None
        }
    }
}

/// Reads every input in order as source 0: opens it with `sink`, says no other source comes,
/// then sends its jobs and its end, as `reading` says.
fn read_inputs(
    sources: Vec<Source>,
    mut parser: JobParser,
    finished: Option<FinishedKeys>,
    reading: Reading,
    vectors: usize,
    sink: Box<dyn Sink>,
    tx: Sender<Intake>,
) {
    const SOURCE: SourceId = SourceId(0);
    let opened = tx.send(Intake::Open {
        source: SOURCE,
        sink,
    });
    if opened.is_err() || tx.send(Intake::Seal).is_err() {
        return;
    }
    let send = move |feed: Feed| {
        tx.send(Intake::Feed {
            source: SOURCE,
            feed,
        })
        .is_ok()
    };
    let mut input = match reading {
        Reading::Serial => {
            if let Some(finished) = finished {
                parser.resume(finished);
            }
            Input::Serial {
                parser,
                ring: Ring::new(vectors),
                send: Box::new(send),
            }
        }
        Reading::Parallel(threads) => {
            Input::Parallel(ParallelReader::start(&parser, threads, vectors, send))
        }
        Reading::Blocks => Input::Parallel(ParallelReader::blocks(&parser, vectors, send)),
    };
    for source in sources {
        let reader = match source.reader() {
            Ok(reader) => reader,
            Err(error) => {
                input.feed(Feed::Failed(error));
                return;
            }
        };
        match input.read(reader) {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                input.feed(Feed::Failed(SourceError::read(source.name(), err)));
                return;
            }
        }
    }
    input.feed(Feed::Ended);
}

/// How `corral run` reads its inputs.
enum Input {
    /// On this thread, line after line, chunks sent as they fill.
    Serial {
        parser: JobParser,
        /// The jobs of a chunk travel in a vector of this ring.
        ring: Ring<VecDeque<Job>>,
        send: Box<dyn FnMut(Feed) -> bool>,
    },
    /// Framed on this thread, parsed on every core.
    Parallel(ParallelReader),
}

impl Input {
    /// Reads all of `reader`; false when the engine takes no more.
    fn read(&mut self, reader: Box<dyn Read>) -> io::Result<bool> {
        match self {
            Input::Parallel(parallel) => parallel.read(reader),
            Input::Serial { parser, ring, send } => parser.read_chunks(
                reader,
                INPUT_CHUNK,
                || InputChunk {
                    jobs: Jobs::from_ring(ring, INPUT_CHUNK),
                    rejected: Vec::new(),
                },
                |item| item,
                |chunk| send(Feed::Jobs(chunk)),
            ),
        }
    }

    /// Sends `feed` after everything read.
    fn feed(&mut self, feed: Feed) {
        match self {
            Input::Parallel(parallel) => {
                parallel.feed(feed);
            }
            Input::Serial { send, .. } => {
                send(feed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{HaltRule, HaltThreshold};
    use crate::shard::{Shard, ShardBy};

    fn plain() -> RunConfig {
        let engine = EngineConfig::native("corral-worker".into(), 2);
        RunConfig {
            scheduler: engine.scheduler,
            pool: engine.pool,
            format: InputFormat::json(2),
            sources: Vec::new(),
            grace: engine.grace,
            progress: false,
            finished: None,
            parse_threads: 2,
        }
    }

    /// Each setting, changed from a plain run's, either needs each job in the supervisor or
    /// does not; the ones that do are exactly these.
    #[test]
    fn only_settings_that_look_at_each_job_turn_blocks_off() {
        assert_eq!(plain().needs_each_job(), None);
        assert_eq!(Reading::of(&plain()), Reading::Blocks);
        type Change = fn(&mut RunConfig);
        let needs: [(&str, Change); 6] = [
            ("stdio", |c| c.pool.transport = Transport::Stdio),
            ("keep-order", |c| c.scheduler.keep_order = Some(64)),
            ("max-jobs", |c| c.scheduler.max_jobs_per_worker = Some(10)),
            ("shard", |c| {
                c.format.shard = Some(Shard::new(1, 2, ShardBy::Line).unwrap());
            }),
            ("lines", |c| c.format.plain_lines = true),
            ("exec", |c| c.format.exec = true),
        ];
        for (name, change) in needs {
            let mut config = plain();
            change(&mut config);
            assert!(config.needs_each_job().is_some(), "{name}");
            assert_eq!(Reading::of(&config), Reading::Parallel(2), "{name}");
        }
        let needs_not: [(&str, Change); 18] = [
            ("task", |c| c.format.default_task = Some("t".into())),
            ("max-job-bytes", |c| c.format.max_line_bytes = 10),
            ("blocks", |c| c.format.max_blocks = 3),
            ("grace", |c| c.grace = Duration::from_secs(1)),
            ("progress", |c| c.progress = true),
            ("workers", |c| c.scheduler.workers = 7),
            ("retries", |c| c.scheduler.retries = 9),
            ("timeout", |c| {
                c.scheduler.timeout = Some(Duration::from_secs(1))
            }),
            ("max-queued", |c| c.scheduler.max_queued = 3),
            ("batch", |c| c.scheduler.max_batch_jobs = 3),
            ("in-flight", |c| c.scheduler.batches_in_flight = 1),
            ("spread", |c| c.scheduler.spread_always = true),
            ("halt", |c| {
                c.scheduler.halt = Some(HaltRule {
                    now: true,
                    threshold: HaltThreshold::Count(1),
                });
            }),
            ("max-rss", |c| c.scheduler.max_rss = Some(1 << 30)),
            ("memory-limit", |c| c.pool.memory_limit = Some(1 << 30)),
            ("args", |c| c.pool.args = vec!["x".into()]),
            ("env", |c| c.pool.env = vec![("A".into(), "1".into())]),
            ("start-timeout", |c| {
                c.pool.handshake_timeout = Duration::from_secs(1)
            }),
        ];
        for (name, change) in needs_not {
            let mut config = plain();
            change(&mut config);
            assert_eq!(config.needs_each_job(), None, "{name}");
        }
        // Read in order, apart from the rest: --parse-threads 0 and --resume.
        let mut serial = plain();
        serial.parse_threads = 0;
        assert_eq!(Reading::of(&serial), Reading::Serial);
        let mut resumed = plain();
        resumed.finished = Some(FinishedKeys::default());
        assert_eq!(Reading::of(&resumed), Reading::Serial);
    }
}
