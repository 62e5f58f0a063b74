//! The engine every mode drives: one scheduler and its pool of workers, fed by any number of
//! sources, each answered through its own sink. `corral run` is one source (its inputs, read
//! in order) and one sink (its output); a service is one of each per connection.
//!
//! Everything about sources comes on one channel of [`Intake`], in the order it was sent:
//! `Open` gives a source its sink, then its chunks of parsed jobs follow, then its end (or why it
//! could not be read to its end); `Seal` says no source will be opened after it, so the engine
//! ends once each source has ended and been answered. What must not wait for room in the queue
//! comes through [`Control`]: `Close` drops what a source still has queued (its jobs in flight
//! finish, their results are discarded), and `Stop` is a stop signal: the first drains (no new
//! batch; the batches in flight finish within the grace period), a second one, or the end of
//! the grace period, ends the engine at once.
//!
//! The loop never waits on a sink: results are handed over without blocking, and while more
//! than [`MAX_BACKLOG`] wait to be written, summed over the sinks, no more input is taken, so
//! memory stays bounded and signals, timeouts and the grace period are still enforced.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use corral_protocol::{RunningWord, WorkerId};
use crossbeam_channel::{Receiver, Sender, never, select, tick, unbounded};

use crate::input::JobParser;
use crate::pool::{PoolEvent, Spawner, WorkerHandle, WorkerPool};
use crate::ports::{Feed, Intake, Sink};
use crate::progress::Progress;
use crate::record::{Job, JobResult, SourceId, TaskNames};
use crate::scheduler::{Action, Event, RunCounters, Scheduler, StartCause, WorkerExit};

mod types;
pub use types::{
    Control, EngineConfig, EngineEnd, EngineReport, EngineStatus, Observers, WorkerStatus,
};

/// How often deadlines, delayed restarts and the grace period are checked.
const TICK: Duration = Duration::from_millis(20);
/// Results waiting to be written past which no more input is taken.
pub const MAX_BACKLOG: usize = 16 * 1024;

struct Source {
    sink: Box<dyn Sink>,
    /// Lines received (a job or a rejected line is one, a block of raw lines as many as it
    /// has), and lines answered.
    read: u64,
    answered: u64,
    ended: bool,
}

/// The engine: see the module documentation.
pub struct Engine {
    scheduler: Scheduler,
    pool: Box<dyn WorkerPool>,
    pool_events: Receiver<PoolEvent>,
    handles: HashMap<WorkerId, WorkerHandle>,
    sources: HashMap<SourceId, Source>,
    /// Sources closed before they were opened (their `Open` still waited in the intake).
    closed_early: HashSet<SourceId>,
    last_opened: Option<SourceId>,
    sealed: bool,
    measure_rss: bool,
    grace: Duration,
    progress: Option<Progress>,
    /// Where the scheduler's notes of finished jobs go (see [`Engine::observe_with`]).
    observers: Observers,
    end: Option<EngineEnd>,
    source_error: Option<String>,
    sources_complete: bool,
    /// Items received so far, for the progress bar's total.
    read: u64,
    /// Results delivered so far.
    answered: u64,
    /// Jobs of closed sources that came after the close, dropped unread by the scheduler.
    discarded: u64,
    /// Workers that died (not retired), by slot.
    slot_restarts: HashMap<u32, u64>,
    /// The first stop signal, once received.
    interrupted: Option<i32>,
    grace_until: Option<Instant>,
    input_ended_sent: bool,
    finished: bool,
}

impl Engine {
    /// An engine whose jobs number their tasks in `names`; its first workers start at once.
    pub fn new(config: EngineConfig, names: TaskNames) -> Engine {
        let pool = config.pool.clone();
        Engine::with_pool(config, names, |events| {
            Box::new(Spawner::new(pool, events)) as Box<dyn WorkerPool>
        })
    }

    /// An engine on a pool of workers that `pool` makes: the pool reports on the sender it is
    /// given, and must hold it as long as it lives. (`config.pool` is not used.)
    pub fn with_pool(
        config: EngineConfig,
        names: TaskNames,
        pool: impl FnOnce(Sender<PoolEvent>) -> Box<dyn WorkerPool>,
    ) -> Engine {
        let (events_tx, pool_events) = unbounded::<PoolEvent>();
        let pool = pool(events_tx);
        let seed = getrandom::u64().unwrap_or(1);
        let mut engine = Engine {
            scheduler: Scheduler::new(config.scheduler.clone(), names, Instant::now(), seed),
            pool,
            pool_events,
            handles: HashMap::new(),
            sources: HashMap::new(),
            closed_early: HashSet::new(),
            last_opened: None,
            sealed: false,
            measure_rss: config.scheduler.max_rss.is_some(),
            grace: config.grace,
            progress: config.progress.then(Progress::new),
            observers: Observers::default(),
            end: None,
            source_error: None,
            sources_complete: true,
            read: 0,
            answered: 0,
            discarded: 0,
            slot_restarts: HashMap::new(),
            interrupted: None,
            grace_until: None,
            input_ended_sent: false,
            finished: false,
        };
        engine.step(Event::Tick {
            running: Vec::new(),
        });
        engine
    }

    /// Hands the notes of finished jobs (made when `config.scheduler.notes` asks) and the
    /// workers' starts and ends to `observers`.
    pub fn observe_with(&mut self, observers: Observers) {
        self.observers = observers;
    }

    /// Lets its sources send blocks of raw lines, read as `parser` reads lines (see
    /// [`Scheduler::read_lines_with`]); only for workers of the native transport.
    pub fn read_lines_with(&mut self, parser: JobParser) {
        self.scheduler.read_lines_with(parser);
    }

    /// Runs until every source is answered after [`Intake::Seal`], or until it must stop.
    /// Every worker is gone when it returns, and every sink dropped.
    pub fn run(mut self, intake: &Receiver<Intake>, control: &Receiver<Control>) -> EngineReport {
        self.event_loop(intake, control);
        let stopped_at_once = !self.finished;
        if stopped_at_once {
            // Stopped early: what is complete still goes out (in order, under --keep-order).
            let held = self.scheduler.abandon();
            self.emit(held);
        }
        // Every worker goes down now: after a stop, all of them; after the end, any that said
        // hello once the scheduler had stopped waiting for it.
        for handle in self.handles.values() {
            handle.kill(&*self.pool);
        }
        if let Some(progress) = &self.progress {
            progress.finish();
        }
        let end = self
            .end
            .take()
            .or_else(|| self.interrupted.map(EngineEnd::Interrupted))
            .or_else(|| {
                self.scheduler
                    .halt_reason()
                    .map(|r| EngineEnd::Halted(r.to_owned()))
            })
            .unwrap_or(EngineEnd::Completed);
        let sources_complete = self.sources_complete && self.sources.values().all(|s| s.ended);
        EngineReport {
            end,
            stopped_at_once,
            counters: self.counters(),
            source_error: self.source_error.take(),
            sources_complete,
            grace_until: self.grace_until,
        }
    }

    fn event_loop(&mut self, intake_rx: &Receiver<Intake>, control_rx: &Receiver<Control>) {
        let ticker = tick(TICK);
        let no_intake = never();
        let mut intake_open = true;
        let mut control_open = true;
        let no_control = never();
        while !self.finished && self.end.is_none() {
            if self.sinks_failed() {
                return;
            }
            let backlog: usize = self.sources.values().map(|s| s.sink.backlog()).sum();
            let intake = if intake_open && self.scheduler.wants_input() && backlog < MAX_BACKLOG {
                intake_rx
            } else {
                &no_intake
            };
            let control = if control_open {
                control_rx
            } else {
                &no_control
            };
            let event = select! {
                recv(self.pool_events) -> event => match event {
                    Ok(event) => self.pool_event(event),
                    Err(_) => unreachable!("the pool holds a sender while the engine lives"),
                },
                recv(intake) -> msg => match msg {
                    Ok(message) => match self.on_intake(message) {
                        Some(event) => event,
                        None => continue,
                    },
                    // Every sender is gone: nothing more can come.
                    Err(_) => {
                        intake_open = false;
                        match self.intake_closed() {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                },
                recv(control) -> msg => match msg {
                    Ok(message) => match self.on_control(message) {
                        Ok(Some(event)) => event,
                        Ok(None) => continue,
                        Err(()) => return,
                    },
                    Err(_) => {
                        control_open = false;
                        continue;
                    }
                },
                recv(ticker) -> _ => {
                    if let Some(progress) = &self.progress {
                        progress.tick(self.scheduler.counters().restarts);
                    }
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

    /// Every sender of intake is gone: nothing more can come, and a source that never said it
    /// ended may not have been read in full.
    fn intake_closed(&mut self) -> Option<Event> {
        self.sealed = true;
        let ids: Vec<SourceId> = self.sources.keys().copied().collect();
        for id in ids {
            if let Some(source) = self.sources.get_mut(&id)
                && !source.ended
            {
                source.ended = true;
                self.sources_complete = false;
            }
            self.complete_if_answered(id);
        }
        self.input_ended()
    }

    /// Drops the sources whose sink failed; true when that leaves nothing to run for.
    fn sinks_failed(&mut self) -> bool {
        let failed: Vec<SourceId> = self
            .sources
            .iter()
            .filter(|(_, s)| s.sink.failed())
            .map(|(&id, _)| id)
            .collect();
        if failed.is_empty() {
            return false;
        }
        for source in failed {
            self.sources.remove(&source);
            self.step(Event::DropSource(source));
        }
        if self.sealed && self.sources.is_empty() {
            self.end = Some(EngineEnd::SinkFailed);
            return true;
        }
        false
    }

    fn on_intake(&mut self, message: Intake) -> Option<Event> {
        let (source, feed) = match message {
            Intake::Open { source, sink } => {
                self.last_opened = Some(source);
                if !self.closed_early.remove(&source) {
                    self.sources.insert(
                        source,
                        Source {
                            sink,
                            read: 0,
                            answered: 0,
                            ended: false,
                        },
                    );
                }
                return None;
            }
            Intake::Seal => {
                self.sealed = true;
                return self.input_ended();
            }
            Intake::Feed { source, feed } => (source, feed),
        };
        let Some(state) = self.sources.get_mut(&source) else {
            // A source closed (or never opened): what it still sends is dropped, and counted.
            if let Feed::Jobs(chunk) = &feed {
                self.discarded += chunk.jobs.len() as u64;
            }
            return None;
        };
        match feed {
            Feed::Jobs(chunk) => {
                // A block of raw lines counts its lines (blank ones too): its results, however
                // the scheduler splits it, answer as many.
                let weight =
                    chunk.rejected.len() as u64 + chunk.jobs.iter().map(Job::weight).sum::<u64>();
                state.read += weight;
                self.read += weight;
                Some(Event::Input(chunk))
            }
            Feed::Failed(error) => {
                // Said once, at the end, as the reason the run stopped short.
                self.source_error.get_or_insert(error.to_string());
                self.sources_complete = false;
                state.ended = true;
                self.after_end(source)
            }
            Feed::Ended => {
                state.ended = true;
                self.after_end(source)
            }
        }
    }

    /// A source ended: it is complete once answered, and the whole input may have ended.
    fn after_end(&mut self, source: SourceId) -> Option<Event> {
        self.complete_if_answered(source);
        self.input_ended()
    }

    /// `InputEnded` for the scheduler once sealed and every source has ended.
    fn input_ended(&mut self) -> Option<Event> {
        if self.input_ended_sent || !self.sealed || !self.sources.values().all(|s| s.ended) {
            return None;
        }
        self.input_ended_sent = true;
        if let Some(progress) = &self.progress {
            progress.set_total(self.read);
        }
        Some(Event::InputEnded)
    }

    fn complete_if_answered(&mut self, source: SourceId) {
        if self
            .sources
            .get(&source)
            .is_some_and(|s| s.ended && s.answered == s.read)
        {
            // Dropping the sink tells its owner that every result is in.
            self.sources.remove(&source);
        }
    }

    /// Err when the engine must end at once.
    fn on_control(&mut self, message: Control) -> Result<Option<Event>, ()> {
        match message {
            Control::Close(source) => {
                let not_opened_yet = self.last_opened.is_none_or(|last| source > last);
                if self.sources.remove(&source).is_none() && not_opened_yet {
                    self.closed_early.insert(source);
                }
                self.step(Event::DropSource(source));
                Ok(self.input_ended())
            }
            Control::Stop(signal) => self.on_signal(signal).map(Some).ok_or(()),
            Control::Status(reply) => {
                let _ = reply.send(self.status());
                Ok(None)
            }
            Control::Resize(workers) => Ok(Some(Event::Resize(workers))),
        }
    }

    /// The scheduler's counters, with the jobs dropped before they reached it.
    fn counters(&self) -> RunCounters {
        let counters = self.scheduler.counters();
        RunCounters {
            dropped: counters.dropped + self.discarded,
            ..counters
        }
    }

    fn status(&self) -> EngineStatus {
        let now = Instant::now();
        let workers: Vec<WorkerStatus> = self
            .scheduler
            .workers()
            .into_iter()
            .map(|view| {
                let handle = self.handles.get(&view.worker);
                WorkerStatus {
                    pid: view.pid,
                    state: view.state,
                    current_secs: view
                        .current
                        .as_ref()
                        .and(view.current_since)
                        .map(|since| now.duration_since(since).as_secs_f64()),
                    current: view.current,
                    uptime_secs: handle
                        .map_or(0.0, |h| now.duration_since(h.started).as_secs_f64()),
                    rss_bytes: handle.and_then(|h| self.pool.resident_bytes(h.pid)),
                    jobs_done: view.jobs_done,
                    in_flight: view.in_flight,
                    slot: handle.map_or(0, |h| h.slot),
                    restarts: handle
                        .map_or(0, |h| self.slot_restarts.get(&h.slot).copied().unwrap_or(0)),
                }
            })
            .collect();
        let (queued, queued_sources) = self.scheduler.queued();
        let counters = self.counters();
        EngineStatus {
            ready: workers.iter().filter(|w| w.state.takes_jobs()).count(),
            workers,
            queued,
            queued_sources,
            outstanding: self.sources.values().map(|s| s.read - s.answered).sum(),
            answered: self.answered,
            restarts: counters.restarts,
            recycled: counters.recycled,
            dropped: counters.dropped,
            draining: self.interrupted.is_some(),
            tasks: self.scheduler.served_tasks(),
        }
    }

    /// The first stop signal drains; a second one ends the loop (the caller kills the workers).
    fn on_signal(&mut self, signal: i32) -> Option<Event> {
        let name = crate::os::Signal(signal);
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
                if let Some(metrics) = &self.observers.metrics {
                    metrics.worker_started();
                }
                Event::WorkerReady {
                    worker,
                    pid,
                    tasks,
                    job_ids,
                }
            }
            PoolEvent::StartFailed { worker, failure } => {
                tracing::warn!("worker failed to start: {}", failure.message);
                if let Some(metrics) = &self.observers.metrics {
                    metrics.start_failed(match failure.cause {
                        StartCause::Transient => "transient",
                        StartCause::Fatal => "fatal",
                        StartCause::KilledFromOutside => "killed",
                    });
                }
                Event::WorkerStartFailed { worker, failure }
            }
            PoolEvent::Done { worker, done } => {
                let rss = if self.measure_rss {
                    self.handles
                        .get(&worker)
                        .and_then(|h| self.pool.resident_bytes(h.pid))
                } else {
                    None
                };
                Event::BatchDone { worker, done, rss }
            }
            PoolEvent::Gone { worker, exit, note } => {
                if let Some(metrics) = &self.observers.metrics {
                    metrics.worker_exited(match exit {
                        WorkerExit::Code(code) => format!("status_{code}"),
                        WorkerExit::Signal(signal) => signal.name(),
                    });
                }
                // A worker's Started always comes before its Gone (one thread sends both), so
                // the handle is there; without one, nothing is known of what it ran.
                let running = match self.handles.remove(&worker) {
                    Some(handle) => {
                        if handle.retired() {
                            tracing::info!(pid = handle.pid, "worker {exit}");
                        } else {
                            tracing::warn!(pid = handle.pid, "worker {exit}");
                            *self.slot_restarts.entry(handle.slot).or_default() += 1;
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
                Action::Spawn(worker) => self.pool.spawn(worker),
                Action::Send { worker, batch } => {
                    if let Some(handle) = self.handles.get(&worker) {
                        handle.send(batch);
                    }
                }
                Action::Kill { worker, why } => {
                    if let Some(handle) = self.handles.get(&worker) {
                        tracing::warn!(pid = handle.pid, "killing worker: {why}");
                        handle.kill(&*self.pool);
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
                Action::Noted(noted) => self.observers.observe(noted),
                Action::Fatal(message) => self.end = Some(EngineEnd::Fatal(message)),
                Action::Abort(message) => self.end = Some(EngineEnd::Halted(message)),
                Action::Finished => self.finished = true,
            }
        }
    }

    /// Hands results to the sinks of their sources; those of a source gone are dropped.
    fn emit(&mut self, mut results: Vec<JobResult>) {
        if results.is_empty() {
            return;
        }
        if let Some(progress) = &self.progress {
            progress.record(&results, self.scheduler.counters().restarts);
        }
        let first = results[0].source;
        if results.iter().all(|r| r.source == first) {
            self.deliver(first, results);
            return;
        }
        results.sort_by_key(|r| r.source);
        while let Some(last) = results.last().map(|r| r.source) {
            let at = results.partition_point(|r| r.source < last);
            let tail = results.split_off(at);
            self.deliver(last, tail);
        }
    }

    fn deliver(&mut self, source: SourceId, results: Vec<JobResult>) {
        let Some(state) = self.sources.get_mut(&source) else {
            return;
        };
        state.answered += results.iter().map(JobResult::weight).sum::<u64>();
        self.answered += results.iter().map(JobResult::count).sum::<u64>();
        state.sink.deliver(results);
        self.complete_if_answered(source);
    }
}

#[cfg(test)]
mod tests;
