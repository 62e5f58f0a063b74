//! The engine on a scripted pool, with no process started: workers that answer, die in the
//! middle of a batch, stall until killed, or never start, and what the engine makes of it.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use corral_protocol::{Batch, BatchDone, RunningSlot, RunningWord, TaskResult, WorkerId};
use crossbeam_channel::{Receiver, Sender, select, unbounded};

use super::{EngineConfig, EngineEnd, EngineReport};
use crate::input::InputFormat;
use crate::os::Signal;
use crate::pool::{PoolEvent, StartedWorker, WorkerPool};
use crate::record::TaskNames;
use crate::scheduler::{StartFailure, WorkerExit};
use crate::service::Service;

/// Pids of scripted workers: far above any real one, and never signalled.
const FIRST_PID: u32 = 4_000_000_000;

/// What a scripted worker does with a job, read from the job's input.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    /// Answers with its input.
    Answer,
    /// Dies of SIGSEGV while running it.
    Die,
    /// Runs until it is killed.
    Stall,
}

fn act_of(input: &[u8]) -> Act {
    let text = String::from_utf8_lossy(input);
    if text.contains("die") {
        Act::Die
    } else if text.contains("stall") {
        Act::Stall
    } else {
        Act::Answer
    }
}

/// How the scripted pool starts workers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Starts {
    /// Every start works.
    Work,
    /// Every start fails as a configuration error would.
    FailFatally,
}

/// What the scripted pool saw.
#[derive(Default)]
struct Seen {
    spawns: u32,
    kills: Vec<u32>,
}

/// A pool whose workers are threads that follow [`Act`]; see the module docs.
struct ScriptedPool {
    events: Sender<PoolEvent>,
    starts: Starts,
    next_pid: AtomicU32,
    kills: Mutex<HashMap<u32, Sender<()>>>,
    seen: Arc<Mutex<Seen>>,
}

impl WorkerPool for ScriptedPool {
    fn spawn(&self, worker: WorkerId) {
        self.seen.lock().unwrap().spawns += 1;
        if self.starts == Starts::FailFatally {
            let failure = StartFailure::fatal("worker binary fake not found".into());
            let _ = self.events.send(PoolEvent::StartFailed { worker, failure });
            return;
        }
        let pid = FIRST_PID + self.next_pid.fetch_add(1, Ordering::Relaxed);
        let (running, region) = RunningSlot::create();
        let word = RunningSlot::from_shared(region).expect("a running region");
        let (started, queued, _killed) = StartedWorker::new(
            worker,
            pid,
            pid - FIRST_PID + 1,
            (vec!["echo".into()], false, running),
        );
        let (kill, killed) = unbounded();
        self.kills.lock().unwrap().insert(pid, kill);
        let events = self.events.clone();
        let _ = events.send(PoolEvent::Started(started));
        thread::spawn(move || scripted_worker(worker, &word, &queued, &killed, &events));
    }

    fn kill(&self, pid: u32) {
        self.seen.lock().unwrap().kills.push(pid);
        if let Some(kill) = self.kills.lock().unwrap().remove(&pid) {
            let _ = kill.send(());
        }
    }

    fn resident_bytes(&self, _pid: u32) -> Option<u64> {
        None
    }
}

/// One scripted worker: answers its batches in order, as a native worker does, until it dies,
/// is killed, or is retired.
fn scripted_worker(
    worker: WorkerId,
    running: &RunningSlot,
    queued: &Receiver<Batch>,
    killed: &Receiver<()>,
    events: &Sender<PoolEvent>,
) {
    let gone = |exit: WorkerExit| {
        let _ = events.send(PoolEvent::Gone {
            worker,
            exit,
            note: None,
        });
    };
    loop {
        let batch = select! {
            recv(killed) -> _ => return gone(WorkerExit::Signal(Signal::KILL)),
            recv(queued) -> batch => match batch {
                Ok(batch) => batch,
                // Retired: it exits once its input ends.
                Err(_) => return gone(WorkerExit::Code(0)),
            },
        };
        let mut done = BatchDone {
            batch: batch.id,
            ..BatchDone::default()
        };
        for (index, (_, input)) in batch.iter().enumerate() {
            running.store(RunningWord::running(batch.id, index));
            match act_of(input) {
                Act::Answer => {
                    done.outputs.0.extend_from_slice(input);
                    done.push(1_000, TaskResult::Ok);
                }
                Act::Die => return gone(WorkerExit::Signal(Signal::SEGV)),
                Act::Stall => {
                    let _ = killed.recv();
                    return gone(WorkerExit::Signal(Signal::KILL));
                }
            }
        }
        running.store(RunningWord::IDLE);
        if events.send(PoolEvent::Done { worker, done }).is_err() {
            return;
        }
    }
}

/// Runs `jobs` (job lines) on `workers` scripted workers; the results by id, the report, and
/// what the pool saw.
fn run(
    jobs: &str,
    workers: usize,
    starts: Starts,
    configure: impl FnOnce(&mut EngineConfig),
) -> (BTreeMap<String, serde_json::Value>, EngineReport, Seen) {
    let mut config = EngineConfig::native("scripted".into(), workers);
    configure(&mut config);
    let names = TaskNames::default();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pool_seen = seen.clone();
    let engine = super::Engine::with_pool(config, names.clone(), move |events| {
        Box::new(ScriptedPool {
            events,
            starts,
            next_pid: AtomicU32::new(0),
            kills: Mutex::new(HashMap::new()),
            seen: pool_seen,
        }) as Box<dyn WorkerPool>
    });
    let mut service = Service::around(engine, names, InputFormat::json(1));
    let results = service.submit(Cursor::new(jobs.as_bytes().to_vec()));
    let mut by_id = BTreeMap::new();
    for line in results {
        let result: serde_json::Value = serde_json::from_slice(&line).expect("a result line");
        let id = result["id"].to_string();
        assert!(
            by_id.insert(id.clone(), result).is_none(),
            "two results for {id}"
        );
    }
    let report = service.shutdown();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (by_id, report, seen)
}

fn job(id: u32, input: &str) -> String {
    format!("{{\"id\": {id}, \"task\": \"echo\", \"input\": {input:?}}}\n")
}

fn kind(result: &serde_json::Value) -> &str {
    result["error"]["kind"].as_str().unwrap_or("ok")
}

#[test]
fn every_job_of_answering_workers_gets_its_output_once() {
    let jobs: String = (1..=500).map(|i| job(i, &format!("x{i}"))).collect();
    let (results, report, seen) = run(&jobs, 2, Starts::Work, |_| {});
    assert_eq!(results.len(), 500);
    for i in 1..=500 {
        assert_eq!(results[&i.to_string()]["output"], format!("x{i}"));
    }
    assert_eq!(report.end, EngineEnd::Completed);
    assert!(report.sources_complete);
    assert_eq!(seen.spawns, 2, "no worker was replaced");
    assert_eq!(report.counters.restarts, 0);
}

#[test]
fn a_job_that_kills_its_worker_every_time_fails_as_crashed_and_the_rest_are_answered() {
    let mut jobs: String = (1..=40).map(|i| job(i, "fine")).collect();
    jobs += &job(41, "die");
    jobs += &(42..=80).map(|i| job(i, "fine")).collect::<String>();
    let (results, report, seen) = run(&jobs, 2, Starts::Work, |config| {
        config.scheduler.retries = 2;
    });
    assert_eq!(results.len(), 80);
    let culprit = &results["41"];
    assert_eq!(kind(culprit), "crashed", "{culprit}");
    assert_eq!(culprit["attempts"], 3, "1 + --retries attempts");
    assert_eq!(culprit["error"]["signal"], "SIGSEGV");
    let others_ok = results
        .iter()
        .filter(|(id, _)| *id != "41")
        .all(|(_, r)| kind(r) == "ok" && r["attempts"] == 1);
    assert!(
        others_ok,
        "jobs that shared a batch with it were not blamed"
    );
    assert_eq!(report.end, EngineEnd::Completed);
    assert_eq!(report.counters.restarts, 3);
    assert_eq!(seen.spawns, 2 + 3, "each death replaced its worker");
}

#[test]
fn a_stalled_job_gets_its_worker_killed_through_the_pool_and_fails_as_timeout() {
    let mut jobs = job(1, "stall");
    jobs += &(2..=20).map(|i| job(i, "fine")).collect::<String>();
    let (results, report, seen) = run(&jobs, 2, Starts::Work, |config| {
        config.scheduler.timeout = Some(Duration::from_millis(200));
        config.scheduler.retries = 0;
    });
    assert_eq!(results.len(), 20);
    assert_eq!(kind(&results["1"]), "timeout", "{}", results["1"]);
    assert!((2..=20).all(|i| kind(&results[&i.to_string()]) == "ok"));
    assert_eq!(report.end, EngineEnd::Completed);
    assert_eq!(
        seen.kills.len(),
        1,
        "the stalled worker, and only it, was killed"
    );
    assert!(seen.kills[0] >= FIRST_PID);
}

#[test]
fn workers_that_cannot_start_end_the_run_as_a_configuration_error() {
    let jobs: String = (1..=5).map(|i| job(i, "fine")).collect();
    let (results, report, seen) = run(&jobs, 2, Starts::FailFatally, |_| {});
    match &report.end {
        EngineEnd::Fatal(message) => assert!(message.contains("not found"), "{message}"),
        other => panic!("ended {other:?}"),
    }
    assert!(results.is_empty(), "no job ran: {results:?}");
    assert!(seen.spawns >= 1);
}
