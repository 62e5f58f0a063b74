//! The runtime of `corral run`: wires the edges (input reader, pool, result writer, signals,
//! timer, progress bar) to the scheduler on one thread, and carries out the scheduler's actions.
//!
//! Signals: the first SIGINT, SIGTERM or SIGHUP drains the run (no new jobs; batches in flight
//! finish within the grace period and their results are written). A second signal, or the end
//! of the grace period, kills the workers at once; results already complete (those held back
//! for `--keep-order` too) are still written.
//!
//! The loop never waits on the output: results go to the writer thread without blocking, and
//! while more than [`MAX_BACKLOG`] wait to be written no more input is taken, so a stalled
//! reader of the results holds memory bounded and signals, timeouts and the grace period are
//! still enforced. At the end the run waits for the writer, but not past the grace period of a
//! stop signal, nor past [`LAST_FLUSH`] after a second one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use corral_protocol::{RunningWord, WorkerId};
use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, tick, unbounded};

use crate::input::{InputFormat, JobParser};
use crate::output::{Echo, Tally, WriterThread};
use crate::pool::{PoolConfig, PoolEvent, Spawner, WorkerHandle, resident_bytes};
use crate::progress::Progress;
use crate::record::{InputChunk, JobResult, Jobs, TaskNames};
use crate::resume::FinishedKeys;
use crate::ring::Ring;
use crate::scheduler::{Action, Event, RunCounters, Scheduler, SchedulerConfig};

/// Items handed from the reader to the scheduler at once, at most.
const INPUT_CHUNK: usize = 1024;
/// How often deadlines, delayed restarts and the grace period are checked.
const TICK: Duration = Duration::from_millis(20);
/// Results waiting to be written past which no more input is taken.
pub const MAX_BACKLOG: usize = 16 * 1024;
/// How long results already complete may still take to be written once the run is stopped at
/// once (a second signal, the end of the grace period).
pub const LAST_FLUSH: Duration = Duration::from_secs(1);

/// Where jobs are read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Standard input.
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Stdin => "standard input".into(),
            Source::File(path) => path.display().to_string(),
        }
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

enum InputMsg {
    Items(InputChunk),
    Failed(String),
}

/// Runs every job of `config.sources` and writes one result line per job line to `output`.
pub fn run(config: RunConfig, output: Box<dyn Write + Send>) -> RunReport {
    let started = Instant::now();
    let (input_tx, input_rx) = bounded::<InputMsg>(1);
    let sources = config.sources.clone();
    let format = config.format.clone();
    let finished = config.finished.clone();
    let vectors = config.format.max_blocks;
    let names = TaskNames::default();
    let parser = JobParser::new(format, names.clone());
    thread::Builder::new()
        .name("corral-input".into())
        .spawn(move || read_inputs(sources, parser, finished, vectors, input_tx))
        .expect("spawning a thread");

    let echo = if config.format.plain_lines {
        Echo::Input
    } else {
        Echo::Meta
    };
    let writer = WriterThread::start(output, echo);

    let (signals_tx, signals_rx) = unbounded::<i32>();
    let signals = forward_signals(signals_tx);

    let (events_tx, events_rx) = unbounded::<PoolEvent>();
    let spawner = Spawner::new(config.pool.clone(), events_tx);
    let seed = getrandom::u64().unwrap_or(1);
    let mut runtime = Runtime {
        scheduler: Scheduler::new(config.scheduler.clone(), names, Instant::now(), seed),
        spawner,
        handles: HashMap::new(),
        writer,
        emitted: 0,
        measure_rss: config.scheduler.max_rss.is_some(),
        grace: config.grace,
        progress: config.progress.then(Progress::new),
        end: None,
        input_error: None,
        input_complete: false,
        read: 0,
        interrupted: None,
        grace_until: None,
        finished: false,
    };
    runtime.step(Event::Tick {
        running: Vec::new(),
    });
    runtime.event_loop(&input_rx, &events_rx, &signals_rx);

    let stopped_at_once = !runtime.finished;
    if stopped_at_once {
        // Stopped early: what is complete still goes out (in order, under --keep-order), and
        // every worker goes down now.
        let held = runtime.scheduler.abandon();
        runtime.emit(held);
        for handle in runtime.handles.values() {
            handle.kill();
        }
    }
    if let Some(progress) = &runtime.progress {
        progress.finish();
    }
    runtime.writer.close();
    runtime.wait_for_writer(&signals_rx, stopped_at_once);
    if let Some(handle) = signals {
        handle.close();
    }
    let counters = runtime.scheduler.counters();
    let end = runtime
        .end
        .take()
        .or_else(|| runtime.interrupted.map(RunEnd::Interrupted))
        .or_else(|| {
            runtime
                .scheduler
                .halt_reason()
                .map(|r| RunEnd::Halted(r.to_owned()))
        })
        .or_else(|| runtime.input_error.take().map(RunEnd::InputFailed));
    let input_complete = runtime.input_complete;
    let Runtime {
        writer,
        spawner,
        emitted,
        ..
    } = runtime;
    drop(spawner);
    let written = writer.outcome();
    let unwritten = emitted - written.tally.total();
    if written.abandoned {
        tracing::warn!("the output is stalled: {unwritten} results complete were not written");
    }
    let end = match (end, written.error) {
        (Some(end), _) => end,
        (None, Some(err)) => RunEnd::OutputFailed(err.kind(), err.to_string()),
        (None, None) => RunEnd::Completed,
    };
    RunReport {
        tally: written.tally,
        counters,
        unwritten,
        input_complete,
        end,
        elapsed: started.elapsed(),
    }
}

struct Runtime {
    scheduler: Scheduler,
    spawner: Spawner,
    handles: HashMap<WorkerId, WorkerHandle>,
    writer: WriterThread,
    /// Results handed to the writer.
    emitted: u64,
    measure_rss: bool,
    grace: Duration,
    progress: Option<Progress>,
    end: Option<RunEnd>,
    /// Why input stopped early, if it did; the jobs read before still run.
    input_error: Option<String>,
    input_complete: bool,
    /// Items read so far, for the progress bar's total.
    read: u64,
    /// The first stop signal, once received.
    interrupted: Option<i32>,
    grace_until: Option<Instant>,
    finished: bool,
}

impl Runtime {
    fn event_loop(
        &mut self,
        input_rx: &Receiver<InputMsg>,
        events_rx: &Receiver<PoolEvent>,
        signals_rx: &Receiver<i32>,
    ) {
        let ticker = tick(TICK);
        let no_input = never();
        let mut input_open = true;
        while !self.finished && self.end.is_none() {
            if self.writer.failed() {
                return;
            }
            let input = if input_open
                && self.scheduler.wants_input()
                && self.writer.backlog() < MAX_BACKLOG
            {
                input_rx
            } else {
                &no_input
            };
            let event = select! {
                recv(events_rx) -> event => match event {
                    Ok(event) => self.pool_event(event),
                    Err(_) => unreachable!("the spawner holds a sender while the runtime lives"),
                },
                recv(input) -> msg => match msg {
                    Ok(InputMsg::Items(items)) => {
                        self.read += items.len() as u64;
                        Event::Input(items)
                    }
                    Ok(InputMsg::Failed(message)) => {
                        // Said once, at the end, as the reason the run stopped short.
                        self.input_error = Some(message);
                        input_open = false;
                        Event::InputEnded
                    }
                    Err(_) => {
                        input_open = false;
                        self.input_complete = true;
                        if let Some(progress) = &self.progress {
                            progress.set_total(self.read);
                        }
                        Event::InputEnded
                    }
                },
                recv(signals_rx) -> signal => match self.on_signal(signal.expect("the signal thread outlives the loop")) {
                    Some(event) => event,
                    None => return,
                },
                recv(ticker) -> _ => {
                    if self.grace_until.is_some_and(|until| Instant::now() >= until) {
                        tracing::warn!("grace period over: killing the workers");
                        return;
                    }
                    Event::Tick { running: self.handles.iter().map(|(&id, h)| (id, h.running.load())).collect() }
                }
            };
            self.step(event);
        }
    }

    /// The first stop signal drains; a second one ends the loop (the caller kills the workers).
    fn on_signal(&mut self, signal: i32) -> Option<Event> {
        let name = nix::sys::signal::Signal::try_from(signal).map_or("a signal", |s| s.as_str());
        if self.interrupted.is_some() {
            tracing::warn!("{name} again: killing the workers");
            return None;
        }
        self.interrupted = Some(signal);
        self.grace_until = Some(Instant::now() + self.grace);
        tracing::warn!(
            "{name}: finishing the batches in flight (at most {}), then stopping; send it again to stop at once",
            humantime::format_duration(self.grace)
        );
        Some(Event::Drain)
    }

    fn pool_event(&mut self, event: PoolEvent) -> Event {
        match event {
            PoolEvent::Started(started) => {
                let (worker, tasks, job_ids, handle) = WorkerHandle::new(started);
                let pid = handle.pid;
                self.handles.insert(worker, handle);
                Event::WorkerReady {
                    worker,
                    pid,
                    tasks,
                    job_ids,
                }
            }
            PoolEvent::StartFailed { worker, failure } => {
                tracing::warn!("worker failed to start: {}", failure.message);
                Event::WorkerStartFailed { worker, failure }
            }
            PoolEvent::Done { worker, done } => {
                let rss = if self.measure_rss {
                    self.handles
                        .get(&worker)
                        .and_then(|h| resident_bytes(h.pid))
                } else {
                    None
                };
                Event::BatchDone { worker, done, rss }
            }
            PoolEvent::Gone { worker, exit, note } => {
                // A worker's Started always comes before its Gone (one thread sends both), so
                // the handle is there; without one, nothing is known of what it ran.
                let running = match self.handles.remove(&worker) {
                    Some(handle) => {
                        if handle.retired() {
                            tracing::info!(pid = handle.pid, "worker {exit}");
                        } else {
                            tracing::warn!(pid = handle.pid, "worker {exit}");
                        }
                        handle.running.load()
                    }
                    None => RunningWord::IDLE,
                };
                Event::WorkerGone {
                    worker,
                    exit,
                    running,
                    note,
                }
            }
        }
    }

    fn step(&mut self, event: Event) {
        for action in self.scheduler.handle(Instant::now(), event) {
            match action {
                Action::Spawn(worker) => self.spawner.spawn(worker),
                Action::Send { worker, batch } => {
                    if let Some(handle) = self.handles.get(&worker) {
                        handle.send(batch);
                    }
                }
                Action::Kill { worker, why } => {
                    if let Some(handle) = self.handles.get(&worker) {
                        tracing::warn!(pid = handle.pid, "killing worker: {why}");
                        handle.kill();
                    }
                }
                Action::Retire { worker, recycled } => {
                    if let Some(handle) = self.handles.get_mut(&worker) {
                        if let Some(why) = recycled {
                            tracing::info!(pid = handle.pid, "recycling worker: {why}");
                        }
                        handle.retire();
                    }
                }
                Action::Note(message) => tracing::warn!("{message}"),
                Action::Emit(results) => self.emit(results),
                Action::Fatal(message) => self.end = Some(RunEnd::Fatal(message)),
                Action::Abort(message) => self.end = Some(RunEnd::Halted(message)),
                Action::Finished => self.finished = true,
            }
        }
    }
}

impl Runtime {
    fn emit(&mut self, results: Vec<JobResult>) {
        if results.is_empty() {
            return;
        }
        if let Some(progress) = &self.progress {
            progress.record(&results, self.scheduler.counters().restarts);
        }
        self.emitted += results.len() as u64;
        self.writer.send(results);
    }

    /// Waits until every result is written, but not past the grace period of a stop signal,
    /// nor past [`LAST_FLUSH`] once the run was stopped at once; a further signal ends the wait.
    fn wait_for_writer(&mut self, signals_rx: &Receiver<i32>, stopped_at_once: bool) {
        let mut until = if stopped_at_once {
            Some(Instant::now() + LAST_FLUSH)
        } else {
            self.grace_until
        };
        loop {
            let deadline = until.map_or_else(never, |t| {
                after(t.saturating_duration_since(Instant::now()))
            });
            select! {
                recv(self.writer.finished()) -> _ => return,
                recv(deadline) -> _ => return,
                recv(signals_rx) -> signal => {
                    let Ok(signal) = signal else { return };
                    if self.interrupted.is_some() {
                        return;
                    }
                    self.interrupted = Some(signal);
                    let grace = Instant::now() + self.grace;
                    until = Some(until.map_or(grace, |t| t.min(grace)));
                    tracing::warn!(
                        "stop signal: waiting at most {} for the results to be written",
                        humantime::format_duration(self.grace)
                    );
                }
            }
        }
    }
}

/// Forwards SIGINT, SIGTERM and SIGHUP to the runtime. Returns a handle to stop forwarding.
fn forward_signals(tx: Sender<i32>) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(err) => {
            tracing::warn!("cannot handle stop signals: {err}");
            return None;
        }
    };
    let handle = signals.handle();
    thread::Builder::new()
        .name("corral-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(signal).is_err() {
                    return;
                }
            }
        })
        .expect("spawning a thread");
    Some(handle)
}

fn read_inputs(
    sources: Vec<Source>,
    mut parser: JobParser,
    finished: Option<FinishedKeys>,
    vectors: usize,
    tx: Sender<InputMsg>,
) {
    if let Some(finished) = finished {
        parser.resume(finished);
    }
    // The jobs of a chunk travel in a vector of this ring; one is taken only once the last
    // chunk is sent, so that waiting for a vector never holds jobs back from the scheduler.
    let mut ring = Ring::new(vectors);
    let mut chunk: Option<InputChunk> = None;
    for source in sources {
        let reader: Box<dyn Read> = match &source {
            Source::Stdin => Box::new(io::stdin()),
            Source::File(path) => match File::open(path) {
                Ok(file) => Box::new(file),
                Err(err) => {
                    let _ = tx.send(InputMsg::Failed(format!(
                        "cannot open {}: {err}",
                        path.display()
                    )));
                    return;
                }
            },
        };
        let read = parser.read_all(reader, |item, would_wait| {
            let filling = chunk.get_or_insert_with(|| InputChunk {
                jobs: Jobs::from_ring(&mut ring, INPUT_CHUNK),
                rejected: Vec::new(),
            });
            filling.push(item);
            if filling.len() >= INPUT_CHUNK || would_wait {
                let full = chunk.take().expect("just filled");
                return tx.send(InputMsg::Items(full)).is_ok();
            }
            true
        });
        match read {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                if let Some(full) = chunk.take() {
                    let _ = tx.send(InputMsg::Items(full));
                }
                let _ = tx.send(InputMsg::Failed(format!(
                    "cannot read {}: {err}",
                    source.name()
                )));
                return;
            }
        }
    }
    if let Some(full) = chunk.take().filter(|chunk| !chunk.is_empty()) {
        let _ = tx.send(InputMsg::Items(full));
    }
}
