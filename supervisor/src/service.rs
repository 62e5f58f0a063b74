//! The Rust API: an engine and its workers on a thread of their own, shared by any number of
//! submissions of job lines, each answered with exactly its own result lines.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};

use crate::engine::{Control, Engine, EngineConfig, EngineReport};
use crate::input::{InputFormat, JobParser};
use crate::output::{Echo, echo_of, format_result};
use crate::ports::{Feed, Intake, Sink, SourceError};
use crate::record::{InputChunk, JobResult, SourceId, TaskNames};

/// An engine on a thread of its own, for Rust code: each [`Service::submit`] is a source of
/// its own, whose result lines come back, as `corral run` writes them, on its [`Results`].
///
/// ```no_run
/// use corral::{EngineConfig, Service};
/// use corral::input::InputFormat;
/// let worker = "target/release/corral-worker".into();
/// let mut service = Service::start(EngineConfig::native(worker, 2), InputFormat::json(2));
/// let results = service.submit(std::io::Cursor::new(b"{\"task\": \"echo\", \"input\": 1}\n".to_vec()));
/// for line in results {
///     println!("{}", String::from_utf8_lossy(&line));
/// }
/// let report = service.shutdown();
/// ```
pub struct Service {
    intake: Sender<Intake>,
    control: Sender<Control>,
    names: TaskNames,
    format: InputFormat,
    next: u32,
    engine: thread::JoinHandle<EngineReport>,
    /// Disconnected once the engine's thread has ended.
    engine_ended: Receiver<()>,
}

impl Service {
    /// Starts the engine and its workers.
    pub fn start(config: EngineConfig, format: InputFormat) -> Service {
        let names = TaskNames::default();
        let engine = Engine::new(config, names.clone());
        Service::around(engine, names, format)
    }

    /// Runs `engine`, whose jobs number their tasks in `names`, on a thread of its own.
    pub(crate) fn around(engine: Engine, names: TaskNames, format: InputFormat) -> Service {
        let (intake, intake_rx) = bounded::<Intake>(1);
        let (control, control_rx) = unbounded::<Control>();
        let (running, engine_ended) = bounded::<()>(0);
        let engine = thread::Builder::new()
            .name("corral-engine".into())
            .spawn(move || {
                let report = engine.run(&intake_rx, &control_rx);
                drop(running);
                report
            })
            .expect("spawning a thread");
        Service {
            intake,
            control,
            names,
            format,
            next: 0,
            engine,
            engine_ended,
        }
    }

    /// Runs the job lines of `jobs` (read on a thread of its own); their results, one line
    /// each, come on the returned iterator, which ends once every job has its result.
    pub fn submit(&mut self, jobs: impl Read + Send + 'static) -> Results {
        let source = SourceId(self.next);
        self.next += 1;
        let (tx, rx) = unbounded::<Vec<u8>>();
        let echo = echo_of(&self.format);
        let gone = Arc::new(AtomicBool::new(false));
        let sink = Box::new(LineSink {
            tx,
            echo,
            gone: gone.clone(),
        });
        let parser = JobParser::new(self.format.clone(), self.names.clone()).with_source(source);
        let intake = self.intake.clone();
        if intake.send(Intake::Open { source, sink }).is_ok() {
            thread::Builder::new()
                .name("corral-submit".into())
                .spawn(move || feed(source, parser, jobs, &intake))
                .expect("spawning a thread");
        }
        Results {
            source,
            rx,
            engine_ended: self.engine_ended.clone(),
            gone,
        }
    }

    /// Stops a submission early: its jobs not started yet never run, and its results end
    /// there. (Dropping its [`Results`] does the same.)
    pub fn cancel(&self, results: &Results) {
        let _ = self.control.send(Control::Close(results.source));
    }

    /// Lets every submission finish, then stops the workers.
    pub fn shutdown(self) -> EngineReport {
        let _ = self.intake.send(Intake::Seal);
        drop(self.intake);
        self.engine
            .join()
            .expect("the engine thread does not panic")
    }
}

/// The result lines of one [`Service::submit`], each with its newline.
pub struct Results {
    source: SourceId,
    rx: Receiver<Vec<u8>>,
    /// Disconnected once the engine's thread has ended.
    engine_ended: Receiver<()>,
    /// Set when dropped: nobody reads the results any more.
    gone: Arc<AtomicBool>,
}

impl Drop for Results {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::Relaxed);
    }
}

impl Iterator for Results {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        select! {
            recv(self.rx) -> line => line.ok(),
            // The engine has stopped: what it delivered is still there to read, and nothing
            // more comes, even if its submission never reached it (it may sit in the intake).
            recv(self.engine_ended) -> _ => self.rx.try_recv().ok(),
        }
    }
}

/// A sink that formats each result as its line.
struct LineSink {
    tx: Sender<Vec<u8>>,
    echo: Echo,
    gone: Arc<AtomicBool>,
}

impl Sink for LineSink {
    fn deliver(&mut self, results: Vec<JobResult>) {
        for result in &results {
            let mut line = Vec::with_capacity(64);
            format_result(result, self.echo, &mut line);
            if result.count() == 1 {
                let _ = self.tx.send(line);
                continue;
            }
            // A block of lines answered at once: still one line an item.
            for one in line.split_inclusive(|&b| b == b'\n') {
                let _ = self.tx.send(one.to_vec());
            }
        }
    }

    fn backlog(&self) -> usize {
        self.tx.len()
    }

    fn failed(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

/// Parses `jobs` as `source` and feeds them to the engine, then says the source ended.
fn feed(source: SourceId, mut parser: JobParser, jobs: impl Read, intake: &Sender<Intake>) {
    let send = |feed: Feed| intake.send(Intake::Feed { source, feed }).is_ok();
    let read = parser.read_chunks(
        jobs,
        FEED_CHUNK,
        InputChunk::default,
        |item| item,
        |chunk| send(Feed::Jobs(chunk)),
    );
    match read {
        Ok(true) => {
            send(Feed::Ended);
        }
        Ok(false) => {}
        Err(err) => {
            send(Feed::Failed(SourceError::read("the jobs", err)));
        }
    }
}

/// Items a submission hands to the engine at once, at most.
const FEED_CHUNK: usize = 1024;
