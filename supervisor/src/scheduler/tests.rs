//! Unit tests of the scheduler's rules, driven by hand-made events and a fake clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use corral_protocol::{Batch, BatchDone, BatchId, JobSeq, RunningWord, TaskResult, WorkerId};

use corral_protocol::Notes;

use super::{
    Action, Event, RestartPolicy, Scheduler, SchedulerConfig, StartCause, StartFailure, WorkerExit,
};
use crate::os::Signal;
use crate::record::{
    ErrorKind, InputChunk, Job, JobId, JobResult, Jobs, Lines, OneJob, ResultKey, SharedBytes,
    SourceId, TaskNames,
};

/// A scheduler with a clock that only moves when told, and everything it emitted.
struct Harness {
    scheduler: Scheduler,
    now: Instant,
    results: Vec<JobResult>,
    sends: Vec<(WorkerId, Batch)>,
    spawns: Vec<WorkerId>,
    kills: Vec<WorkerId>,
    retires: Vec<WorkerId>,
    fatal: Option<String>,
    aborted: Option<String>,
    recycled: Vec<String>,
    notes: Vec<String>,
    /// The notes of finished jobs, with `SchedulerConfig::notes`.
    noted: Vec<crate::notes::JobNote>,
    finished: bool,
}

thread_local! {
    /// The task names of this test's scheduler: each test runs on a thread of its own.
    static NAMES: TaskNames = TaskNames::default();
}

fn job(seq: u64, task: &str) -> Job {
    let one = OneJob {
        id: JobId::from((seq + 1).to_string().into_bytes()),
        task: NAMES.with(|names| names.intern(task).expect("few names")),
        input: SharedBytes::from(format!("[{seq}]").into_bytes()),
        meta: None,
    };
    Job::one(JobSeq(seq), SourceId::default(), seq + 1, one)
}

/// A worker's answer to `batch`: one outcome per result, each ok one with output `1`.
fn answer(batch: BatchId, results: impl IntoIterator<Item = TaskResult>, nanos: u64) -> BatchDone {
    let mut done = BatchDone {
        batch,
        ..BatchDone::default()
    };
    for result in results {
        if result == TaskResult::Ok {
            done.outputs.0.push(b'1');
        }
        done.push(nanos, result);
    }
    done
}

fn all_ok(n: usize) -> impl Iterator<Item = TaskResult> {
    (0..n).map(|_| TaskResult::Ok)
}

impl Harness {
    fn new(cfg: SchedulerConfig) -> Harness {
        let now = Instant::now();
        let mut h = Harness {
            scheduler: Scheduler::new(cfg, NAMES.with(TaskNames::clone), now, 42),
            now,
            results: Vec::new(),
            sends: Vec::new(),
            spawns: Vec::new(),
            kills: Vec::new(),
            retires: Vec::new(),
            fatal: None,
            aborted: None,
            recycled: Vec::new(),
            notes: Vec::new(),
            noted: Vec::new(),
            finished: false,
        };
        h.feed(Event::Tick { running: vec![] });
        h
    }

    fn feed(&mut self, event: Event) {
        for action in self.scheduler.handle(self.now, event) {
            match action {
                Action::Spawn(w) => self.spawns.push(w),
                Action::Send { worker, batch } => self.sends.push((worker, batch)),
                Action::Kill { worker, .. } => self.kills.push(worker),
                Action::Retire { worker, recycled } => {
                    self.retires.push(worker);
                    self.recycled.extend(recycled);
                }
                Action::Note(note) => self.notes.push(note),
                Action::Abort(message) => self.aborted = Some(message),
                Action::Emit(results) => self.results.extend(results),
                Action::Noted(noted) => self.noted.extend(noted.notes),
                Action::Fatal(message) => self.fatal = Some(message),
                Action::Finished => self.finished = true,
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn input(&mut self, jobs: impl IntoIterator<Item = Job>) {
        self.feed(Event::Input(InputChunk {
            jobs: jobs.into_iter().collect(),
            rejected: Vec::new(),
        }));
    }

    fn ready(&mut self, worker: WorkerId, pid: u32) {
        self.feed(Event::WorkerReady {
            worker,
            pid,
            tasks: vec!["t".into(), "u".into()],
            job_ids: false,
        });
    }

    fn take_sends(&mut self) -> Vec<(WorkerId, Batch)> {
        std::mem::take(&mut self.sends)
    }

    /// Answers `batch` with every job ok, each taking `nanos`.
    fn complete(&mut self, worker: WorkerId, batch: &Batch, nanos: u64) {
        self.feed(Event::BatchDone {
            worker,
            done: answer(batch.id, all_ok(batch.jobs.len()), nanos),
            rss: None,
        });
    }

    fn die(&mut self, worker: WorkerId, exit: WorkerExit, running: RunningWord) {
        self.feed(Event::WorkerGone {
            worker,
            exit,
            running,
            note: None,
        });
    }

    /// Completes every batch sent until nothing more goes out.
    fn drain(&mut self, nanos: u64) {
        while !self.sends.is_empty() {
            for (worker, batch) in self.take_sends() {
                self.complete(worker, &batch, nanos);
            }
        }
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .results
            .iter()
            .map(|r| match &r.key {
                ResultKey::Job { id, .. } => id.to_string(),
                ResultKey::Line(line) => format!("line {line}"),
                ResultKey::Lines(_) => unreachable!("these tests send no block of lines"),
            })
            .collect();
        ids.sort_by_key(|id| id.parse::<u64>().unwrap_or(u64::MAX));
        ids
    }
}

fn config(workers: usize) -> SchedulerConfig {
    SchedulerConfig {
        workers,
        ..SchedulerConfig::default()
    }
}

fn sigsegv() -> WorkerExit {
    WorkerExit::Signal(Signal::SEGV)
}

#[test]
fn starts_the_configured_workers_and_batches_grow_with_measured_speed() {
    let mut h = Harness::new(SchedulerConfig {
        max_batch_jobs: 64,
        ..config(2)
    });
    assert_eq!(h.spawns, [WorkerId(1), WorkerId(2)]);
    h.input((0..1000).map(|i| job(i, "t")));
    assert!(
        h.sends.is_empty(),
        "nothing goes out before a worker is ready"
    );
    h.ready(WorkerId(1), 101);
    let first = h.take_sends();
    assert_eq!(
        first.len(),
        1,
        "unmeasured: no batch ahead while a worker is still starting"
    );
    assert_eq!(first[0].1.jobs.len(), 1, "unmeasured jobs go one at a time");
    // 1 µs per job and a 16 ms target: the next batches are as large as allowed, two in
    // flight.
    h.complete(WorkerId(1), &first[0].1, 1_000);
    let next = h.take_sends();
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|(_, b)| b.jobs.len() == 64));
    h.complete(WorkerId(1), &next[0].1, 1_000);
    h.complete(WorkerId(1), &next[1].1, 1_000);
    h.ready(WorkerId(2), 102);
    h.drain(1_000);
    h.feed(Event::InputEnded);
    assert_eq!(h.results.len(), 1000);
    assert!(h.results.iter().all(|r| r.is_ok() && r.attempts == 1));
    assert_eq!(
        h.ids(),
        (1..=1000).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(h.retires, [WorkerId(1), WorkerId(2)]);
    assert!(!h.finished, "finished only once the workers are gone");
    h.die(WorkerId(1), WorkerExit::Code(0), RunningWord::IDLE);
    h.die(WorkerId(2), WorkerExit::Code(0), RunningWord::IDLE);
    assert!(h.finished);
    assert!(h.spawns.len() == 2, "retired workers are not replaced");
}

#[test]
fn slow_jobs_go_one_per_batch_and_the_tail_is_spread() {
    let mut h = Harness::new(config(2));
    h.input((0..10).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    h.ready(WorkerId(2), 102);
    // 25 ms per job: above the 16 ms target, so every batch holds one job.
    while !h.sends.is_empty() {
        for (worker, batch) in h.take_sends() {
            assert_eq!(batch.jobs.len(), 1);
            h.complete(worker, &batch, 25_000_000);
        }
    }
    assert_eq!(h.results.len(), 10);
}

#[test]
fn a_worker_holds_one_slow_job_at_a_time_so_none_waits_behind_another() {
    let mut h = Harness::new(config(2));
    h.input((0..20).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    h.ready(WorkerId(2), 102);
    // Before any answer the speed is unknown: each worker gets a batch ahead.
    let mut held: HashMap<WorkerId, VecDeque<Batch>> = HashMap::new();
    for (worker, batch) in h.take_sends() {
        held.entry(worker).or_default().push_back(batch);
    }
    assert_eq!(held.values().map(VecDeque::len).collect::<Vec<_>>(), [2, 2]);
    let mut answered = 0;
    while answered < 20 {
        let worker = *held
            .iter()
            .find(|(_, batches)| !batches.is_empty())
            .expect("work is left")
            .0;
        let batch = held.get_mut(&worker).unwrap().pop_front().unwrap();
        answered += batch.jobs.len();
        // 40 ms a job: slower than the 16 ms target.
        h.complete(worker, &batch, 40_000_000 * batch.jobs.len() as u64);
        for (to, batch) in h.take_sends() {
            assert!(held[&to].is_empty(), "a slow job was queued behind another");
            held.get_mut(&to).unwrap().push_back(batch);
        }
    }
    assert_eq!(h.results.len(), 20);
}

#[test]
fn the_first_worker_ready_does_not_take_a_job_meant_for_one_still_starting() {
    // `seq 2 | corral run -j2 --exec 'sleep 2 # {}'` must take one job's time, not two.
    let mut h = Harness::new(config(2));
    h.input((0..2).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    assert_eq!(sends.len(), 1, "one job to the worker ready: {sends:?}");
    assert_eq!(sends[0].1.jobs.len(), 1);
    h.advance(Duration::from_millis(5));
    h.ready(WorkerId(2), 102);
    let sends = h.take_sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(
        sends[0].0,
        WorkerId(2),
        "the second job waited for the second worker"
    );
}

#[test]
fn sources_take_turns_a_batch_each_so_a_small_one_is_not_stuck_behind_a_large_one() {
    let mut h = Harness::new(config(1));
    let of = |source: u32, seqs: std::ops::Range<u64>| {
        seqs.map(move |seq| Job {
            source: SourceId(source),
            ..job(seq, "t")
        })
    };
    // Source 1 queues 400 jobs, then source 2 queues 8, each in chunks as its reader sends them.
    for start in (0..400).step_by(100) {
        h.input(of(1, start..start + 100));
    }
    h.input(of(2, 400..408));
    h.ready(WorkerId(1), 101);
    // One worker, slow jobs: once the speed is known, it holds one batch at a time, and
    // source 2 gets one of the first few, not the fifth.
    let mut held: VecDeque<(WorkerId, Batch)> = VecDeque::new();
    let mut order = Vec::new();
    while h.results.len() < 408 {
        held.extend(h.take_sends());
        let (worker, batch) = held.pop_front().expect("a batch is out");
        let before = h.results.len();
        h.complete(worker, &batch, 40_000_000 * batch.jobs.len() as u64);
        let sources: Vec<SourceId> = h.results[before..].iter().map(|r| r.source).collect();
        assert!(
            sources.windows(2).all(|w| w[0] == w[1]),
            "a batch of one source"
        );
        order.push(sources[0]);
    }
    let first_of_2 = order.iter().position(|&s| s == SourceId(2)).unwrap();
    assert!(first_of_2 <= 2, "source 2 waited {first_of_2} batches");
    let done_2 = order.iter().rposition(|&s| s == SourceId(2)).unwrap();
    assert!(done_2 < 20, "source 2 finished after {done_2} batches");
}

#[test]
fn a_batch_sized_for_a_fast_task_never_carries_another_source_s_slow_jobs() {
    // Source 2's job is of a task measured fast: its batch may be large, but it must not fill
    // up with source 1's slow jobs, or source 2 waits for all of them.
    let mut h = Harness::new(SchedulerConfig {
        max_batch_jobs: 1024,
        ..config(1)
    });
    let of = |source: u32, task: &'static str, seqs: std::ops::Range<u64>| {
        seqs.map(move |seq| Job {
            source: SourceId(source),
            ..job(seq, task)
        })
    };
    h.ready(WorkerId(1), 101);
    // Learn the speeds: t is fast, u (source 1's) slow.
    h.input(of(3, "t", 0..1));
    let warm = h.take_sends();
    h.complete(WorkerId(1), &warm[0].1, 2_000);
    h.input(of(4, "u", 1..2));
    let warm = h.take_sends();
    h.complete(WorkerId(1), &warm[0].1, 5_000_000);
    h.input(of(1, "u", 2..2_000));
    h.input(of(2, "t", 2_000..2_001));
    let mut sizes = Vec::new();
    while h.results.len() < 2_001 {
        let sends = h.take_sends();
        assert!(!sends.is_empty(), "work is left");
        for (worker, batch) in sends {
            let before = h.results.len();
            h.complete(worker, &batch, 5_000_000 * batch.jobs.len() as u64);
            let got: Vec<SourceId> = h.results[before..].iter().map(|r| r.source).collect();
            assert!(
                got.windows(2).all(|w| w[0] == w[1]),
                "a batch of one source"
            );
            sizes.push((got[0], got.len()));
        }
    }
    let (at, &(_, size)) = sizes
        .iter()
        .enumerate()
        .find(|(_, (source, _))| *source == SourceId(2))
        .expect("source 2 ran");
    assert_eq!(size, 1, "source 2's batch held its own job only");
    assert!(at <= 3, "source 2 waited {at} batches");
}

#[test]
fn a_dropped_source_loses_its_queued_jobs_and_nothing_else() {
    let mut h = Harness::new(config(1));
    let of = |source: u32, seqs: std::ops::Range<u64>| {
        seqs.map(move |seq| Job {
            source: SourceId(source),
            ..job(seq, "t")
        })
    };
    h.input(of(1, 0..50).chain(of(2, 50..100)));
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    assert!(!sends.is_empty());
    // Source 1 leaves with its first batches in flight: those finish, the rest never runs.
    h.feed(Event::DropSource(SourceId(1)));
    h.feed(Event::InputEnded);
    for (worker, batch) in sends {
        h.complete(worker, &batch, 1_000);
    }
    h.drain(1_000);
    let from = |source| {
        h.results
            .iter()
            .filter(|r| r.source == SourceId(source))
            .count()
    };
    assert_eq!(from(2), 50, "the other source has every result");
    assert!(from(1) < 50, "the dropped source's queued jobs did not run");
    let counters = h.scheduler.counters();
    assert_eq!(
        counters.dropped as usize,
        50 - from(1),
        "every job dropped is counted"
    );
    assert_eq!(counters.not_run, 0);
    assert_eq!(h.retires, [WorkerId(1)], "nothing is left outstanding");
    h.die(WorkerId(1), WorkerExit::Code(0), RunningWord::IDLE);
    assert!(h.finished);
}

#[test]
fn a_crash_blames_the_running_job_and_requeues_the_rest_without_penalty() {
    let mut h = Harness::new(SchedulerConfig {
        max_batch_jobs: 5,
        ..config(1)
    });
    h.input((0..6).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    let first = h.take_sends();
    h.complete(WorkerId(1), &first[0].1, 1_000); // job 0 done, measured
    let sends = h.take_sends();
    // In flight now: [1] from the first round and a batch of 4 (2..=5).
    let big = sends
        .iter()
        .find(|(_, b)| b.jobs.len() == 4)
        .expect("a batch of four")
        .1
        .clone();
    assert_eq!(h.results.len(), 1);
    // The worker dies while running index 1 of the big batch: job 3.
    h.die(WorkerId(1), sigsegv(), RunningWord::running(big.id, 1));
    assert_eq!(h.results.len(), 1, "nothing is failed on a first crash");
    assert_eq!(
        h.spawns,
        [WorkerId(1), WorkerId(2)],
        "the worker is replaced at once"
    );
    h.ready(WorkerId(2), 102);
    let resend = h.take_sends();
    // Job 1 (never blamed) and job 2 go together; job 3 has failed once and goes alone.
    let sizes: Vec<Vec<u8>> = resend
        .iter()
        .map(|(_, b)| b.iter().map(|(_, input)| input[1]).collect())
        .collect();
    assert_eq!(sizes, [vec![b'1', b'2'], vec![b'3']]);
    for (worker, batch) in &resend {
        h.complete(*worker, batch, 1_000);
    }
    h.drain(1_000);
    assert_eq!(h.results.len(), 6);
    let attempts: Vec<u32> = h.results.iter().map(|r| r.attempts).collect();
    let blamed = h
        .results
        .iter()
        .find(|r| {
            r.key
                == ResultKey::Job {
                    id: b"4".to_vec().into(),
                    line: 4,
                }
        })
        .unwrap();
    assert_eq!(blamed.attempts, 2, "job 3 (id 4) ran twice: {attempts:?}");
    assert!(h.results.iter().all(|r| r.is_ok()));
    assert_eq!(h.results.iter().filter(|r| r.attempts == 1).count(), 5);
}

#[test]
fn a_poison_pill_fails_after_one_plus_retries_attempts_and_the_pool_goes_on() {
    let mut h = Harness::new(SchedulerConfig {
        retries: 2,
        ..config(1)
    });
    h.input([job(0, "t"), job(1, "t")]);
    h.feed(Event::InputEnded);
    let mut worker = WorkerId(1);
    let mut pid = 100;
    for attempt in 1..=3 {
        pid += 1;
        h.ready(worker, pid);
        let sends = h.take_sends();
        let (_, poison) = sends
            .iter()
            .find(|(_, b)| b.iter().any(|(_, input)| input == b"[0]"))
            .unwrap();
        let index = poison
            .iter()
            .position(|(_, input)| input == b"[0]")
            .unwrap();
        h.die(worker, sigsegv(), RunningWord::running(poison.id, index));
        assert_eq!(
            h.results.len(),
            usize::from(attempt == 3),
            "attempt {attempt}"
        );
        worker = *h.spawns.last().unwrap();
    }
    let failed = &h.results[0];
    let error = failed.outcome.as_ref().unwrap_err();
    assert_eq!(error.kind, ErrorKind::Crashed);
    assert_eq!(error.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(failed.attempts, 3);
    assert!(
        error.message.contains("attempt 3 of 3"),
        "{}",
        error.message
    );
    // The other job still runs on the fourth worker.
    h.ready(worker, 200);
    h.drain(1_000);
    assert_eq!(h.results.len(), 2);
    assert!(h.results[1].is_ok());
    assert!(h.fatal.is_none());
}

#[test]
fn with_notes_each_result_is_noted_once_with_its_start_reckoned_back_from_its_answer() {
    let mut h = Harness::new(SchedulerConfig {
        retries: 0,
        notes: Notes::Both,
        max_batch_jobs: 3,
        ..config(1)
    });
    // Known speeds make full batches.
    h.input([job(0, "t")]);
    h.ready(WorkerId(1), 101);
    h.drain(1_000);
    h.noted.clear();
    h.input([job(1, "t"), job(2, "u"), job(3, "u")]);
    let (worker, batch) = h.take_sends().remove(0);
    assert_eq!(batch.jobs.len(), 3, "{batch:?}");
    // Lines 2 and 3 answered after 1 ms and 2 ms of work, then line 4 crashes its worker.
    h.advance(Duration::from_millis(50));
    let mut done = answer(batch.id, all_ok(2), 0);
    done.outcomes[0].nanos = 1_000_000;
    done.outcomes[1].nanos = 2_000_000;
    h.feed(Event::BatchDone {
        worker,
        done,
        rss: None,
    });
    let answered_at = h.now;
    assert_eq!(h.noted.len(), 2);
    let (first, second) = (&h.noted[0], &h.noted[1]);
    assert_eq!((first.line, second.line), (2, 3));
    assert_eq!(first.started, Some(answered_at - Duration::from_millis(3)));
    assert_eq!(second.started, Some(answered_at - Duration::from_millis(2)));
    assert_eq!((first.nanos, second.nanos), (1_000_000, 2_000_000));
    assert_eq!(first.failed, None);
    let names = NAMES.with(TaskNames::clone);
    assert_eq!(&*names.name(second.task.unwrap()), "u");
    h.feed(Event::Tick {
        running: vec![(worker, RunningWord::running(batch.id, 2))],
    });
    let since = h.now;
    h.advance(Duration::from_millis(40));
    h.die(worker, sigsegv(), RunningWord::running(batch.id, 2));
    assert_eq!(h.noted.len(), 3);
    let crashed = &h.noted[2];
    assert_eq!(crashed.line, 4);
    assert_eq!(crashed.failed, Some(ErrorKind::Crashed));
    assert_eq!(crashed.ended.as_ref().unwrap().signal, Some(libc::SIGSEGV));
    assert_eq!(crashed.started, Some(since));
    assert_eq!(crashed.nanos, 40_000_000);
    // The job of a task no worker serves is answered, and noted, without running.
    h.input([job(4, "nope")]);
    h.feed(Event::InputEnded);
    let worker = *h.spawns.last().unwrap();
    h.ready(worker, 102);
    h.drain(1_000);
    let unknown = h.noted.last().unwrap();
    assert_eq!(
        (unknown.line, unknown.task, unknown.started),
        (5, None, None)
    );
    assert_eq!(unknown.failed, Some(ErrorKind::UnknownTask));
    assert_eq!(h.noted.len(), 4);
    assert_eq!(h.results.len(), 5, "one result per job, as ever");
}

#[test]
fn a_job_that_crashes_once_succeeds_on_retry() {
    let mut h = Harness::new(config(1));
    h.input([job(0, "t")]);
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    h.die(
        WorkerId(1),
        WorkerExit::Code(3),
        RunningWord::running(sends[0].1.id, 0),
    );
    h.ready(WorkerId(2), 102);
    h.drain(1_000);
    assert_eq!(h.results.len(), 1);
    assert!(h.results[0].is_ok());
    assert_eq!(h.results[0].attempts, 2);
    assert_eq!(h.results[0].worker, Some(102));
}

#[test]
fn a_job_past_its_deadline_gets_its_worker_killed_and_fails_with_timeout() {
    let timeout = Duration::from_millis(500);
    let mut h = Harness::new(SchedulerConfig {
        retries: 0,
        timeout: Some(timeout),
        ..config(1)
    });
    h.input([job(0, "t")]);
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    let word = RunningWord::running(sends[0].1.id, 0);
    h.feed(Event::Tick {
        running: vec![(WorkerId(1), word)],
    });
    h.advance(Duration::from_millis(499));
    h.feed(Event::Tick {
        running: vec![(WorkerId(1), word)],
    });
    assert!(h.kills.is_empty(), "not yet");
    h.advance(Duration::from_millis(1));
    h.feed(Event::Tick {
        running: vec![(WorkerId(1), word)],
    });
    assert_eq!(h.kills, [WorkerId(1)]);
    h.feed(Event::Tick {
        running: vec![(WorkerId(1), word)],
    });
    assert_eq!(h.kills.len(), 1, "killed once");
    h.die(WorkerId(1), WorkerExit::Signal(Signal::KILL), word);
    assert_eq!(h.results.len(), 1);
    let error = h.results[0].outcome.as_ref().unwrap_err();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.message.contains("500ms"), "{}", error.message);
}

#[test]
fn a_long_job_is_said_in_the_log_at_a_minute_and_each_time_its_time_doubles() {
    let mut h = Harness::new(config(1));
    h.input([job(0, "t")]);
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    let word = RunningWord::running(sends[0].1.id, 0);
    let tick = |h: &mut Harness| {
        h.feed(Event::Tick {
            running: vec![(WorkerId(1), word)],
        });
    };
    tick(&mut h);
    let stalls = |h: &Harness| {
        h.notes
            .iter()
            .filter(|n| n.contains("has been running"))
            .count()
    };
    h.advance(Duration::from_secs(59));
    tick(&mut h);
    assert_eq!(stalls(&h), 0);
    h.advance(Duration::from_secs(2));
    tick(&mut h);
    assert_eq!(stalls(&h), 1);
    let note = h
        .notes
        .iter()
        .find(|n| n.contains("has been running"))
        .unwrap();
    assert!(
        note.contains("1m") && note.contains("101") && note.contains("no --timeout"),
        "{note}"
    );
    h.advance(Duration::from_secs(30));
    tick(&mut h);
    assert_eq!(stalls(&h), 1, "not again before two minutes");
    h.advance(Duration::from_secs(30));
    tick(&mut h);
    assert_eq!(stalls(&h), 2, "again at two minutes");
    assert!(h.kills.is_empty(), "without a timeout nothing is killed");
    let view = &h.scheduler.workers()[0];
    assert!(
        view.current.is_some() && view.current_since.is_some(),
        "{view:?}"
    );
}

#[test]
fn a_job_that_keeps_changing_is_not_timed_out() {
    let mut h = Harness::new(SchedulerConfig {
        timeout: Some(Duration::from_millis(100)),
        ..config(1)
    });
    h.input((0..3).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    for (_, batch) in &sends[..2] {
        h.feed(Event::Tick {
            running: vec![(WorkerId(1), RunningWord::running(batch.id, 0))],
        });
        h.advance(Duration::from_millis(90));
    }
    h.feed(Event::Tick {
        running: vec![(WorkerId(1), RunningWord::IDLE)],
    });
    h.advance(Duration::from_secs(10));
    h.feed(Event::Tick {
        running: vec![(WorkerId(1), RunningWord::IDLE)],
    });
    assert!(h.kills.is_empty());
}

#[test]
fn restarts_over_budget_wait_with_growing_backoff() {
    let policy = RestartPolicy {
        max_restarts: 2,
        period: Duration::from_secs(10),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        give_up_after: 3,
    };
    let mut h = Harness::new(SchedulerConfig {
        restart: policy,
        max_batch_jobs: 1,
        ..config(1)
    });
    h.input((0..100).map(|i| job(i, "t")));
    let mut delays = Vec::new();
    for round in 0..5 {
        let worker = *h.spawns.last().unwrap();
        h.ready(worker, 100 + round);
        let sends = h.take_sends();
        h.complete(worker, &sends[0].1, 1_000); // a batch finished: not a start failure
        h.take_sends();
        let spawned = h.spawns.len();
        h.die(worker, sigsegv(), RunningWord::IDLE);
        // Step the clock until the replacement is started.
        let mut waited = Duration::ZERO;
        while h.spawns.len() == spawned {
            h.advance(Duration::from_millis(10));
            waited += Duration::from_millis(10);
            h.feed(Event::Tick { running: vec![] });
            assert!(waited < Duration::from_secs(5), "replacement never started");
        }
        delays.push(waited);
    }
    // Two restarts are free: the replacement starts in the same step.
    assert_eq!(delays[..2], [Duration::ZERO, Duration::ZERO]);
    // Then 100 ms, 200 ms, 400 ms, each with jitter in its upper half.
    for (delay, full) in delays[2..].iter().zip([100u64, 200, 400]) {
        let full = Duration::from_millis(full);
        assert!(
            *delay >= full / 2 && *delay <= full + Duration::from_millis(10),
            "{delays:?}"
        );
    }
    assert!(h.fatal.is_none());
    assert_eq!(h.scheduler.counters().restarts, 5);
    // A sixth death, still over budget after three backoffs: the run stops.
    let worker = *h.spawns.last().unwrap();
    h.ready(worker, 999);
    h.take_sends();
    h.die(worker, sigsegv(), RunningWord::IDLE);
    let message = h.fatal.expect("workers that keep dying stop the run");
    assert!(
        message.contains("keep dying") && message.contains("--max-restarts"),
        "{message}"
    );
}

#[test]
fn a_fatal_start_failure_stops_the_run_at_once() {
    let mut h = Harness::new(config(2));
    h.input([job(0, "t")]);
    let failure = StartFailure::fatal("cannot run /nope: not found".into());
    h.feed(Event::WorkerStartFailed {
        worker: WorkerId(1),
        failure,
    });
    assert_eq!(h.fatal.as_deref(), Some("cannot run /nope: not found"));
    h.feed(Event::WorkerReady {
        worker: WorkerId(2),
        pid: 5,
        tasks: vec!["t".into()],
        job_ids: false,
    });
    assert!(h.sends.is_empty(), "a stopped scheduler does nothing more");
}

#[test]
fn repeated_start_failures_give_up_but_a_finished_batch_resets_the_count() {
    let mut h = Harness::new(config(1));
    h.input((0..10).map(|i| job(i, "t")));
    let fail = |h: &mut Harness| {
        let worker = *h.spawns.last().unwrap();
        let failure = StartFailure::transient("no hello within 5s".into());
        h.feed(Event::WorkerStartFailed { worker, failure });
        h.advance(Duration::from_secs(3));
        h.feed(Event::Tick { running: vec![] });
    };
    fail(&mut h);
    fail(&mut h);
    let worker = *h.spawns.last().unwrap();
    h.ready(worker, 7);
    let sends = h.take_sends();
    h.complete(worker, &sends[0].1, 1_000);
    h.take_sends();
    // Died idle after doing work: an ordinary restart, and the count was reset.
    h.die(worker, sigsegv(), RunningWord::IDLE);
    fail(&mut h);
    fail(&mut h);
    assert!(h.fatal.is_none());
    fail(&mut h);
    let message = h.fatal.expect("three in a row end the run");
    assert!(
        message.contains("3 times in a row") && message.contains("no hello"),
        "{message}"
    );
}

#[test]
fn workers_that_die_before_any_work_end_the_run() {
    let mut h = Harness::new(config(1));
    h.input([job(0, "t")]);
    for round in 0..3 {
        let worker = *h.spawns.last().unwrap();
        h.ready(worker, 10 + round);
        h.take_sends();
        h.die(worker, WorkerExit::Code(1), RunningWord::IDLE);
        h.advance(Duration::from_secs(1));
        h.feed(Event::Tick { running: vec![] });
    }
    assert!(
        h.fatal
            .unwrap()
            .contains("died before finishing any work 3 times")
    );
}

#[test]
fn a_partial_answer_stands_and_the_crash_is_blamed_on_the_job_after_it() {
    let mut h = Harness::new(SchedulerConfig {
        max_batch_jobs: 4,
        batches_in_flight: 1,
        ..config(1)
    });
    h.input((0..5).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 10);
    // The first batch measures the speed; the next one is full.
    let first = h.take_sends();
    h.complete(WorkerId(1), &first[0].1, 1_000);
    let sends = h.take_sends();
    let batch = &sends[0].1;
    assert_eq!(batch.jobs.len(), 4);
    // Two jobs answered, then the worker died running the third.
    h.feed(Event::BatchDone {
        worker: WorkerId(1),
        done: answer(batch.id, all_ok(2), 1_000),
        rss: None,
    });
    assert_eq!(h.results.len(), 3, "the answers given stand");
    h.die(WorkerId(1), sigsegv(), RunningWord::running(batch.id, 2));
    let worker = *h.spawns.last().unwrap();
    h.ready(worker, 11);
    let again = h.take_sends();
    assert_eq!(again[0].1.jobs.len(), 1, "the job that crashed runs alone");
    h.complete(worker, &again[0].1, 1_000);
    let rest = h.take_sends();
    h.complete(worker, &rest[0].1, 1_000);
    let attempts: Vec<u32> = h.results.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, [1, 1, 1, 2, 1], "only the fourth job was blamed");
    // An answer with more outcomes than jobs in flight is a violation.
    h.input((5..7).map(|i| job(i, "t")));
    let sends = h.take_sends();
    h.feed(Event::BatchDone {
        worker,
        done: answer(sends[0].1.id, all_ok(sends[0].1.jobs.len() + 1), 1_000),
        rss: None,
    });
    assert_eq!(h.kills, [worker]);
}

#[test]
fn workers_killed_from_outside_before_any_work_are_restarts_not_a_broken_build() {
    let mut h = Harness::new(config(1));
    h.input([job(0, "t")]);
    for round in 0..6 {
        let worker = *h.spawns.last().unwrap();
        if round % 2 == 0 {
            // Killed before its hello.
            let failure = StartFailure {
                cause: StartCause::KilledFromOutside,
                message: "killed by SIGKILL before saying hello".into(),
            };
            h.feed(Event::WorkerStartFailed { worker, failure });
        } else {
            // Killed after its hello, idle.
            h.ready(worker, 10 + round);
            h.take_sends();
            h.die(worker, WorkerExit::Signal(Signal::KILL), RunningWord::IDLE);
        }
        h.advance(Duration::from_secs(1));
        h.feed(Event::Tick { running: vec![] });
    }
    assert!(h.fatal.is_none(), "{:?}", h.fatal);
    assert_eq!(h.scheduler.counters().restarts, 6);
    let worker = *h.spawns.last().unwrap();
    h.ready(worker, 99);
    assert_eq!(h.take_sends().len(), 1, "the job still runs");
}

#[test]
fn a_batch_is_sized_by_its_own_task_so_a_slow_task_after_a_fast_one_starts_small() {
    let mut h = Harness::new(config(1));
    h.input((0..2).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    // t takes 1 µs a job: its batches grow to the batch target's worth.
    for _ in 0..4 {
        for (worker, batch) in h.take_sends() {
            h.complete(worker, &batch, 1_000 * batch.jobs.len() as u64);
        }
        h.input((100..400).map(|i| job(i, "t")));
    }
    h.drain(1_000);
    let t_sizes: Vec<usize> = h.take_sends().iter().map(|(_, b)| b.jobs.len()).collect();
    assert!(t_sizes.is_empty());
    // Then u comes, unmeasured: it goes one job at a time until its own speed is known, not
    // in batches sized for t.
    h.input((1000..1100).map(|i| job(i, "u")));
    let first: Vec<usize> = h.take_sends().iter().map(|(_, b)| b.jobs.len()).collect();
    assert!(first.iter().all(|&n| n == 1), "{first:?}");
    for (worker, batch) in h.take_sends() {
        h.complete(worker, &batch, 1_000);
    }
}

#[test]
fn a_group_read_together_goes_out_whole_when_it_is_a_good_batch() {
    let mut h = Harness::new(SchedulerConfig {
        max_batch_jobs: 8,
        ..config(1)
    });
    let sizes = |sends: &[(WorkerId, Batch)]| -> Vec<usize> {
        sends.iter().map(|(_, b)| b.jobs.len()).collect()
    };
    h.input((0..2).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    let warm = h.take_sends();
    assert_eq!(sizes(&warm), [1, 1], "unmeasured jobs go one at a time");
    h.input((2..8).map(|i| job(i, "t")));
    h.input((8..13).map(|i| job(i, "t")));
    // Batches may now hold 8 jobs; groups of 6 and 5 go as they are, not as 8 + 3.
    h.complete(WorkerId(1), &warm[0].1, 1_000);
    h.complete(WorkerId(1), &warm[1].1, 1_000);
    let groups = h.take_sends();
    assert_eq!(sizes(&groups), [6, 5]);
    // A group with a task the worker lacks is taken job by job: the unknown one is answered
    // and the batch fills up from the next group. A group under half a batch joins others.
    h.input((13..21).map(|i| job(i, if i == 15 { "nope" } else { "t" })));
    h.input((21..23).map(|i| job(i, "t")));
    h.input((23..25).map(|i| job(i, "t")));
    for (worker, batch) in &groups {
        h.complete(*worker, batch, 1_000);
    }
    let rest = h.take_sends();
    assert_eq!(sizes(&rest), [8, 3]);
    for (worker, batch) in &rest {
        h.complete(*worker, batch, 1_000);
    }
    assert_eq!(h.results.len(), 25);
    let failed: Vec<_> = h.results.iter().filter(|r| !r.is_ok()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].outcome.as_ref().unwrap_err().kind,
        ErrorKind::UnknownTask
    );
}

#[test]
fn unknown_tasks_get_their_own_result_and_the_rest_run() {
    let mut h = Harness::new(config(1));
    h.input([job(0, "t"), job(1, "nope"), job(2, "u")]);
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    h.drain(1_000);
    assert_eq!(h.results.len(), 3);
    let unknown = h.results.iter().find(|r| !r.is_ok()).unwrap();
    let error = unknown.outcome.as_ref().unwrap_err();
    assert_eq!(error.kind, ErrorKind::UnknownTask);
    assert!(
        error.message.contains("\"nope\"") && error.message.contains("t, u"),
        "{}",
        error.message
    );
    assert_eq!(unknown.attempts, 0);
}

#[test]
fn a_queue_full_of_bytes_stops_asking_for_input() {
    let mut h = Harness::new(SchedulerConfig {
        max_queued_bytes: 10,
        ..config(1)
    });
    h.input((0..2).map(|i| job(i, "t"))); // "[0]" and "[1]": 6 bytes
    assert!(h.scheduler.wants_input());
    h.input((2..4).map(|i| job(i, "t")));
    assert!(!h.scheduler.wants_input(), "12 bytes queued");
    h.ready(WorkerId(1), 101);
    assert!(h.scheduler.wants_input(), "dispatch made room");
}

#[test]
fn a_full_queue_stops_asking_for_input() {
    let mut h = Harness::new(SchedulerConfig {
        max_queued: 10,
        ..config(1)
    });
    assert!(h.scheduler.wants_input());
    h.input((0..10).map(|i| job(i, "t")));
    assert!(!h.scheduler.wants_input());
    h.ready(WorkerId(1), 101);
    assert!(h.scheduler.wants_input(), "dispatch made room");
    h.feed(Event::InputEnded);
    assert!(!h.scheduler.wants_input());
}

#[test]
fn an_answer_to_the_wrong_batch_kills_the_worker_and_nothing_is_lost() {
    let mut h = Harness::new(config(1));
    h.input([job(0, "t")]);
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    let bogus = answer(BatchId(999), all_ok(1), 1);
    h.feed(Event::BatchDone {
        worker: WorkerId(1),
        done: bogus,
        rss: None,
    });
    assert_eq!(h.kills, [WorkerId(1)]);
    h.die(
        WorkerId(1),
        WorkerExit::Signal(Signal::KILL),
        RunningWord::running(sends[0].1.id, 0),
    );
    h.ready(WorkerId(2), 102);
    h.drain(1_000);
    assert_eq!(h.results.len(), 1);
    assert!(h.results[0].is_ok());
}

#[test]
fn rejected_lines_are_emitted_at_once() {
    let mut h = Harness::new(config(1));
    let rejected = JobResult {
        seq: corral_protocol::JobSeq(0),
        source: SourceId::default(),
        key: ResultKey::Line(3),
        meta: None,
        attempts: 0,
        worker: None,
        outcome: Err(crate::record::JobError::new(
            ErrorKind::BadInput,
            "not JSON",
        )),
    };
    h.feed(Event::Input(InputChunk {
        jobs: Jobs::default(),
        rejected: vec![rejected.clone()],
    }));
    assert_eq!(h.results, [rejected]);
    // Nothing to run: the run ends without waiting for its worker to start.
    h.feed(Event::InputEnded);
    assert!(h.finished);
}

#[test]
fn a_stop_while_workers_start_does_not_wait_for_them() {
    let mut h = Harness::new(config(2));
    h.input((0..10).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    assert_eq!(sends.len(), 1);
    // SIGTERM: the batch in flight finishes; worker 2, still starting, is not waited for.
    h.feed(Event::Drain);
    assert!(!h.finished);
    h.complete(WorkerId(1), &sends[0].1, 1_000);
    assert_eq!(h.retires, [WorkerId(1)]);
    // Worker 2 says hello while worker 1 exits: it is killed, not given work.
    h.ready(WorkerId(2), 102);
    assert_eq!(h.kills, [WorkerId(2)]);
    assert!(h.sends.is_empty());
    h.die(WorkerId(1), WorkerExit::Code(0), RunningWord::IDLE);
    assert!(h.finished, "nothing waits for worker 2");
}

#[test]
fn drain_lets_batches_in_flight_finish_and_runs_nothing_new() {
    let mut h = Harness::new(config(1));
    h.input((0..10).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    assert_eq!(sends.len(), 2);
    h.feed(Event::Drain);
    assert!(!h.scheduler.wants_input());
    h.complete(WorkerId(1), &sends[0].1, 1_000);
    assert!(h.sends.is_empty(), "no new batch while draining");
    assert!(h.retires.is_empty(), "one batch is still in flight");
    h.complete(WorkerId(1), &sends[1].1, 1_000);
    assert_eq!(h.retires, [WorkerId(1)]);
    h.die(WorkerId(1), WorkerExit::Code(0), RunningWord::IDLE);
    assert!(h.finished);
    assert_eq!(h.results.len(), 2);
    assert_eq!(h.scheduler.counters().not_run, 8);
}

#[test]
fn keep_order_releases_results_in_input_order_within_a_window() {
    let mut h = Harness::new(SchedulerConfig {
        keep_order: Some(3),
        max_batch_jobs: 1,
        ..config(2)
    });
    h.input((0..6).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    h.ready(WorkerId(2), 102);
    let sends = h.take_sends();
    // Jobs 0, 1, 2 fit the window (0 and 2 on one worker, 1 on the other); job 3 waits for
    // job 0.
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert_eq!(sends[0].0, sends[2].0);
    // Job 1 finishes first: held back.
    h.complete(sends[1].0, &sends[1].1, 1_000);
    assert!(h.results.is_empty());
    assert!(h.sends.is_empty(), "the window is full until job 0 is done");
    h.complete(sends[0].0, &sends[0].1, 1_000);
    assert_eq!(h.ids(), ["1", "2"], "job 1 came out once job 0 had");
    assert_eq!(h.sends.len(), 2, "the window moved by two");
    h.complete(sends[2].0, &sends[2].1, 1_000);
    h.drain(1_000);
    let order: Vec<String> = h
        .results
        .iter()
        .map(|r| match &r.key {
            ResultKey::Job { id, .. } => id.to_string(),
            ResultKey::Line(_) | ResultKey::Lines(_) => unreachable!(),
        })
        .collect();
    assert_eq!(order, ["1", "2", "3", "4", "5", "6"]);
}

#[test]
fn halt_soon_drains_after_the_failure_count_and_halt_now_aborts() {
    let crash_all = |h: &mut Harness, rule: &str| {
        h.input((0..10).map(|i| job(i, "t")));
        h.ready(WorkerId(1), 101);
        let sends = h.take_sends();
        let failures = (0..sends[0].1.jobs.len()).map(|_| TaskResult::TaskError {
            message: "no".into(),
            error_type: None,
        });
        h.feed(Event::BatchDone {
            worker: WorkerId(1),
            done: answer(sends[0].1.id, failures, 1),
            rss: None,
        });
        let _ = rule;
        sends
    };
    let mut soon = Harness::new(SchedulerConfig {
        halt: Some("soon,fail=1".parse().unwrap()),
        ..config(1)
    });
    let sends = crash_all(&mut soon, "soon");
    assert!(soon.sends.is_empty(), "halted: nothing new goes out");
    assert!(
        soon.scheduler
            .halt_reason()
            .unwrap()
            .contains("--halt soon,fail=1")
    );
    soon.complete(WorkerId(1), &sends[1].1, 1);
    assert_eq!(soon.retires, [WorkerId(1)], "the batch in flight finished");

    let mut now = Harness::new(SchedulerConfig {
        halt: Some("now,fail=10%".parse().unwrap()),
        ..config(1)
    });
    crash_all(&mut now, "now");
    assert!(now.aborted.unwrap().contains("halted after 1 failed jobs"));
}

#[test]
fn workers_are_recycled_after_max_jobs_or_max_rss_without_losing_work() {
    let mut h = Harness::new(SchedulerConfig {
        max_jobs_per_worker: Some(3),
        max_batch_jobs: 2,
        ..config(1)
    });
    h.input((0..6).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    let mut sizes = Vec::new();
    while !h.sends.is_empty() {
        for (worker, batch) in h.take_sends() {
            if worker == WorkerId(1) {
                sizes.push(batch.jobs.len());
            }
            h.complete(worker, &batch, 1_000);
        }
    }
    assert_eq!(
        sizes.iter().sum::<usize>(),
        3,
        "worker 1 runs exactly 3 jobs: {sizes:?}"
    );
    assert_eq!(h.retires, [WorkerId(1)]);
    assert!(
        h.recycled[0].contains("--max-jobs-per-worker 3"),
        "{:?}",
        h.recycled
    );
    assert_eq!(
        h.spawns,
        [WorkerId(1), WorkerId(2)],
        "the replacement starts at once"
    );
    h.die(WorkerId(1), WorkerExit::Code(0), RunningWord::IDLE);
    assert_eq!(
        h.spawns.len(),
        2,
        "a recycled worker's exit is not a restart"
    );
    h.ready(WorkerId(2), 102);
    h.drain(1_000);
    assert_eq!(h.results.len(), 6);
    assert_eq!(
        h.scheduler.counters().recycled,
        2,
        "worker 2 reached its 3 jobs too"
    );
    assert_eq!(h.scheduler.counters().restarts, 0);

    let mut m = Harness::new(SchedulerConfig {
        max_rss: Some(100 << 20),
        ..config(1)
    });
    m.input((0..4).map(|i| job(i, "t")));
    m.ready(WorkerId(1), 101);
    let sends = m.take_sends();
    m.feed(Event::BatchDone {
        worker: WorkerId(1),
        done: answer(sends[0].1.id, all_ok(1), 1_000),
        rss: Some(200 << 20),
    });
    assert!(
        m.sends.is_empty(),
        "a worker over --max-rss takes no new batch"
    );
    m.complete(WorkerId(1), &sends[1].1, 1_000);
    assert_eq!(m.retires, [WorkerId(1)]);
    assert!(m.recycled[0].contains("200.0 MiB"), "{:?}", m.recycled);
}

#[test]
fn a_retired_worker_that_does_not_exit_is_killed_after_the_exit_grace() {
    let mut h = Harness::new(SchedulerConfig {
        exit_grace: Duration::from_secs(5),
        ..config(1)
    });
    h.input((0..2).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    h.ready(WorkerId(1), 101);
    h.drain(1_000);
    assert_eq!(
        h.retires,
        [WorkerId(1)],
        "every job answered: the worker retires"
    );
    assert!(!h.finished);
    h.advance(Duration::from_millis(4_900));
    h.feed(Event::Tick { running: vec![] });
    assert!(h.kills.is_empty(), "within the grace");
    h.advance(Duration::from_millis(200));
    h.feed(Event::Tick { running: vec![] });
    assert_eq!(h.kills, [WorkerId(1)], "past the grace");
    h.feed(Event::Tick { running: vec![] });
    assert_eq!(h.kills.len(), 1, "killed once");
    h.die(
        WorkerId(1),
        WorkerExit::Signal(Signal::KILL),
        RunningWord::IDLE,
    );
    assert!(h.finished, "the run ends with every result: {:?}", h.ids());
    assert_eq!(h.ids(), ["1", "2"]);
    assert_eq!(h.spawns.len(), 1, "a retired worker's kill is no restart");
}

#[test]
fn recycled_workers_that_linger_hold_back_replacements_instead_of_piling_up() {
    let mut h = Harness::new(SchedulerConfig {
        max_jobs_per_worker: Some(1),
        max_batch_jobs: 1,
        exit_grace: Duration::from_secs(5),
        ..config(1)
    });
    h.input((0..10).map(|i| job(i, "t")));
    h.feed(Event::InputEnded);
    // Each worker runs one job and is recycled; none exits.
    for worker in 1..=2 {
        h.ready(WorkerId(worker), 100 + worker as u32);
        h.drain(1_000);
    }
    // Two retired workers linger, more than the pool's one: the next replacement waits.
    assert_eq!(h.retires, [WorkerId(1), WorkerId(2)]);
    assert_eq!(h.spawns, [WorkerId(1), WorkerId(2)]);
    h.advance(Duration::from_millis(100));
    h.feed(Event::Tick { running: vec![] });
    assert_eq!(h.spawns.len(), 2, "still waiting");
    // One exits: the replacement starts, runs its job and lingers too.
    h.die(WorkerId(1), WorkerExit::Code(0), RunningWord::IDLE);
    assert_eq!(h.spawns.len(), 3);
    h.ready(WorkerId(3), 103);
    h.drain(1_000);
    assert_eq!(h.spawns.len(), 3);
    // Past the grace both are killed; as they go, replacements start and the run goes on.
    h.advance(Duration::from_secs(5));
    h.feed(Event::Tick { running: vec![] });
    let mut kills = h.kills.clone();
    kills.sort();
    assert_eq!(kills, [WorkerId(2), WorkerId(3)]);
    for worker in [2, 3] {
        h.die(
            WorkerId(worker),
            WorkerExit::Signal(Signal::KILL),
            RunningWord::IDLE,
        );
    }
    assert_eq!(h.spawns.len(), 4, "{:?}", h.spawns);
    assert_eq!(h.ids().len(), 3);
}

#[test]
fn a_crash_under_a_memory_limit_says_so() {
    let mut h = Harness::new(SchedulerConfig {
        retries: 0,
        memory_limit: Some(64 << 20),
        ..config(1)
    });
    h.input([job(0, "t")]);
    h.ready(WorkerId(1), 101);
    let sends = h.take_sends();
    h.die(
        WorkerId(1),
        WorkerExit::Signal(Signal::ABRT),
        RunningWord::running(sends[0].1.id, 0),
    );
    let error = h.results[0].outcome.as_ref().unwrap_err();
    assert_eq!(error.kind, ErrorKind::Crashed);
    assert!(
        error.message.contains("--memory-limit 64.0 MiB"),
        "{}",
        error.message
    );
    assert!(
        h.notes[0].contains("job 1 (line 1) crashed worker 101"),
        "{:?}",
        h.notes
    );
}

fn rejected(seq: u64) -> JobResult {
    JobResult {
        seq: JobSeq(seq),
        source: SourceId::default(),
        key: ResultKey::Line(seq + 1),
        meta: None,
        attempts: 0,
        worker: None,
        outcome: Err(crate::record::JobError::new(ErrorKind::BadInput, "bad")),
    }
}

#[test]
fn keep_order_stops_reading_once_lines_read_reach_past_the_window() {
    let mut h = Harness::new(SchedulerConfig {
        keep_order: Some(4),
        ..config(1)
    });
    h.ready(WorkerId(1), 101);
    // A slow head job, then bad lines: each is answered at once, but held behind the head.
    h.input([job(0, "t")]);
    assert!(h.scheduler.wants_input());
    h.feed(Event::Input(InputChunk {
        jobs: Jobs::default(),
        rejected: (1..4).map(rejected).collect(),
    }));
    assert!(
        !h.scheduler.wants_input(),
        "four items read, none released: the window is full"
    );
    let sends = h.take_sends();
    h.complete(WorkerId(1), &sends[0].1, 1_000);
    assert_eq!(h.results.len(), 4, "the head released the lines behind it");
    assert!(h.scheduler.wants_input());
}

#[test]
fn abandoning_a_run_hands_back_the_results_held_for_ordering_in_order() {
    let mut h = Harness::new(SchedulerConfig {
        keep_order: Some(100),
        max_batch_jobs: 1,
        batches_in_flight: 1,
        ..config(3)
    });
    h.input((0..3).map(|i| job(i, "t")));
    h.ready(WorkerId(1), 101);
    h.ready(WorkerId(2), 102);
    h.ready(WorkerId(3), 103);
    let sends = h.take_sends();
    // Jobs 1 and 2 finish; job 0 is still running when the run is abandoned.
    let (first, second) = (&sends[1], &sends[2]);
    h.complete(first.0, &first.1, 1_000);
    h.complete(second.0, &second.1, 1_000);
    assert!(h.results.is_empty(), "held behind job 0");
    let held = h.scheduler.abandon();
    let seqs: Vec<u64> = held.iter().map(|r| r.seq.0).collect();
    assert_eq!(seqs, [1, 2]);
    h.feed(Event::Tick { running: vec![] });
    assert!(h.sends.is_empty(), "an abandoned run decides nothing more");
}

#[test]
fn crashes_blamed_on_a_job_do_not_spend_the_restart_budget() {
    let mut h = Harness::new(SchedulerConfig {
        restart: RestartPolicy {
            max_restarts: 1,
            give_up_after: 1,
            ..RestartPolicy::default()
        },
        retries: 0,
        max_batch_jobs: 1,
        ..config(1)
    });
    h.input((0..50).map(|i| job(i, "t")));
    for round in 0..50 {
        let worker = *h.spawns.last().unwrap();
        h.ready(worker, 100 + round);
        let sends = h.take_sends();
        let (_, batch) = &sends[0];
        h.die(worker, sigsegv(), RunningWord::running(batch.id, 0));
        assert!(h.fatal.is_none(), "round {round}: {:?}", h.fatal);
    }
    assert_eq!(h.results.len(), 50);
    assert!(h.results.iter().all(|r| {
        r.outcome
            .as_ref()
            .is_err_and(|e| e.kind == ErrorKind::Crashed)
    }));
    assert_eq!(h.scheduler.counters().restarts, 50);
}

/// A block of the job lines `lines` (of task `t`), the first at line 1.
fn block(lines: &[&str]) -> Job {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    Job::lines(
        JobSeq(0),
        SourceId::default(),
        1,
        Lines::new(SharedBytes::from(text.into_bytes()), lines.len() as u64),
    )
}

/// A worker's answer to the block sent in `batch`, as if each of its `lines` ran.
fn lines_answer(batch: &Batch, lines: u64) -> BatchDone {
    let mut done = BatchDone {
        batch: batch.id,
        ..BatchDone::default()
    };
    done.outputs.0.extend_from_slice(b"{\"id\":1}\n");
    let tally = corral_protocol::LineTally {
        lines,
        results: lines,
        failed: vec![(ErrorKind::TaskError, 1)],
        counts: Vec::new(),
        ..Default::default()
    };
    done.push(1_000 * lines, TaskResult::Lines(tally));
    done
}

fn with_lines(cfg: SchedulerConfig) -> Harness {
    let mut h = Harness::new(cfg);
    let format = crate::input::InputFormat::json(1);
    let parser = crate::input::JobParser::new(format, NAMES.with(TaskNames::clone));
    h.scheduler.read_lines_with(parser);
    h
}

#[test]
fn a_block_of_lines_is_cut_to_the_batch_size_and_answered_as_one_result() {
    let mut h = with_lines(SchedulerConfig {
        workers: 1,
        ..SchedulerConfig::default()
    });
    h.ready(WorkerId(1), 100);
    let lines: Vec<String> = (1..=10)
        .map(|i| format!("{{\"id\":{i},\"task\":\"t\"}}"))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    h.input([block(&lines)]);
    // The speed of lines is not known yet: each batch the worker holds is one line.
    let sends = h.take_sends();
    assert_eq!(sends.len(), 2);
    for (n, (_, batch)) in sends.iter().enumerate() {
        let header = batch.lines.clone().expect("a block of lines");
        assert_eq!(
            (header.first_line, header.attempts, header.worker),
            (n as u64 + 1, 0, 100)
        );
        assert_eq!(batch.inputs.0, format!("{}\n", lines[n]).into_bytes());
    }
    h.feed(Event::InputEnded);
    h.feed(Event::BatchDone {
        worker: WorkerId(1),
        done: lines_answer(&sends[0].1, 1),
        rss: None,
    });
    // Once a line is known to be fast, the other eight go at once.
    let rest: Vec<Batch> = h.take_sends().into_iter().map(|(_, b)| b).collect();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].lines.as_ref().unwrap().first_line, 3);
    h.feed(Event::BatchDone {
        worker: WorkerId(1),
        done: lines_answer(&sends[1].1, 1),
        rss: None,
    });
    let mut answered = 2;
    // Answers come in the order the batches were sent.
    let mut waiting: VecDeque<Batch> = rest.into();
    while let Some(batch) = waiting.pop_front() {
        let count = crate::record::count_lines(&batch.inputs.0);
        answered += count;
        h.feed(Event::BatchDone {
            worker: WorkerId(1),
            done: lines_answer(&batch, count),
            rss: None,
        });
        waiting.extend(h.take_sends().into_iter().map(|(_, b)| b));
    }
    assert_eq!(answered, 10);
    assert!(
        h.results
            .iter()
            .all(|r| matches!(r.key, ResultKey::Lines(_)))
    );
    assert_eq!(h.results.iter().map(JobResult::weight).sum::<u64>(), 10);
    assert_eq!(
        h.results.iter().map(JobResult::failures).sum::<u64>(),
        h.results.len() as u64
    );
    assert_eq!(
        h.retires,
        [WorkerId(1)],
        "every line answered: the run winds down"
    );
}

#[test]
fn a_worker_dying_on_a_line_of_a_block_blames_that_line_alone() {
    let mut h = with_lines(SchedulerConfig {
        workers: 1,
        retries: 0,
        ..SchedulerConfig::default()
    });
    h.ready(WorkerId(1), 100);
    // Teach the speed of lines, so that the block goes whole.
    h.input([block(&["{\"id\":\"warm\",\"task\":\"t\"}"])]);
    let (worker, warm) = h.take_sends().remove(0);
    h.feed(Event::BatchDone {
        worker,
        done: lines_answer(&warm, 1),
        rss: None,
    });
    h.results.clear();
    h.input([block(&[
        "{\"id\":\"a\",\"task\":\"t\"}",
        "{\"id\":\"b\",\"task\":\"t\",\"meta\":{\"m\":1}}",
        "",
        "{\"id\":\"c\",\"task\":\"t\"}",
    ])]);
    let (_, sent) = h.take_sends().remove(0);
    assert_eq!(crate::record::count_lines(&sent.inputs.0), 4);
    // The worker dies running the block's second line (line 2).
    h.die(
        worker,
        WorkerExit::Signal(Signal::SEGV),
        RunningWord::running(sent.id, 1),
    );
    assert!(
        h.notes
            .iter()
            .any(|n| n.contains("job \"b\" (line 2) crashed worker 100")),
        "{:?}",
        h.notes
    );
    // With no retries, line 2 fails as a job that crashed its worker, with its id and meta.
    assert_eq!(h.results.len(), 1, "{:?}", h.results);
    let crashed = &h.results[0];
    assert!(matches!(&crashed.key, ResultKey::Job { id, line: 2 } if id.to_string() == "\"b\""));
    assert_eq!(
        crashed.outcome.as_ref().unwrap_err().kind,
        ErrorKind::Crashed
    );
    assert_eq!(crashed.meta.as_ref().unwrap().as_bytes(), b"{\"m\":1}");
    assert_eq!(crashed.attempts, 1);
    // Lines 1 and 3-4 go back as blocks, without penalty, to the replacement.
    h.ready(WorkerId(2), 200);
    let again: Vec<Batch> = h.take_sends().into_iter().map(|(_, b)| b).collect();
    let mut firsts: Vec<(u64, Vec<u8>)> = again
        .iter()
        .map(|b| {
            let header = b.lines.as_ref().expect("still blocks");
            assert_eq!(header.attempts, 0);
            (header.first_line, b.inputs.0.clone())
        })
        .collect();
    firsts.sort();
    assert_eq!(
        firsts,
        [
            (1, b"{\"id\":\"a\",\"task\":\"t\"}\n".to_vec()),
            (3, b"\n{\"id\":\"c\",\"task\":\"t\"}\n".to_vec()),
        ]
    );
}

/// Blocks `count` lines long each, one after the other from line `first`.
fn blocks_from(first: u64, blocks: usize, count: u64) -> Vec<Job> {
    (0..blocks as u64)
        .map(|b| {
            let text: String = (0..count)
                .map(|i| format!("{{\"id\":{},\"task\":\"t\"}}\n", first + b * count + i))
                .collect();
            Job::lines(
                JobSeq(b),
                SourceId::default(),
                first + b * count,
                Lines::new(SharedBytes::from(text.into_bytes()), count),
            )
        })
        .collect()
}

#[test]
fn blocks_that_follow_each_other_share_a_batch_and_one_result_answers_them() {
    let mut h = with_lines(SchedulerConfig {
        workers: 1,
        ..SchedulerConfig::default()
    });
    h.ready(WorkerId(1), 100);
    // Teach the speed of lines: fast.
    h.input([block(&["{\"id\":0,\"task\":\"t\"}"])]);
    let (worker, warm) = h.take_sends().remove(0);
    h.feed(Event::BatchDone {
        worker,
        done: lines_answer(&warm, 1),
        rss: None,
    });
    h.input(blocks_from(2, 3, 10));
    let sends = h.take_sends();
    assert_eq!(sends.len(), 1, "three blocks, one batch");
    let batch = &sends[0].1;
    assert_eq!(batch.lines.as_ref().unwrap().first_line, 2);
    assert_eq!(crate::record::count_lines(&batch.inputs.0), 30);
    assert_eq!(batch.jobs.len(), 1, "the worker reads them as one");
    // A block that does not follow (line 40, not 32) goes in a batch of its own.
    h.input(blocks_from(40, 1, 5));
    h.feed(Event::InputEnded);
    let later = h.take_sends();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].1.lines.as_ref().unwrap().first_line, 40);
    h.feed(Event::BatchDone {
        worker,
        done: lines_answer(batch, 30),
        rss: None,
    });
    h.feed(Event::BatchDone {
        worker,
        done: lines_answer(&later[0].1, 5),
        rss: None,
    });
    assert_eq!(h.results.iter().map(JobResult::weight).sum::<u64>(), 36);
    assert_eq!(
        h.retires,
        [worker],
        "every line answered: the run winds down"
    );
}

#[test]
fn a_worker_dying_in_the_second_of_two_blocks_blames_the_line_counted_across_them() {
    let mut h = with_lines(SchedulerConfig {
        workers: 1,
        retries: 1,
        ..SchedulerConfig::default()
    });
    h.ready(WorkerId(1), 100);
    h.input([block(&["{\"id\":0,\"task\":\"t\"}"])]);
    let (worker, warm) = h.take_sends().remove(0);
    h.feed(Event::BatchDone {
        worker,
        done: lines_answer(&warm, 1),
        rss: None,
    });
    h.input(blocks_from(2, 2, 4));
    let (_, batch) = h.take_sends().remove(0);
    assert_eq!(crate::record::count_lines(&batch.inputs.0), 8);
    // Line index 5 of the batch: the second line of the second block, line 7, id 7.
    h.die(
        worker,
        WorkerExit::Signal(Signal::KILL),
        RunningWord::running(batch.id, 5),
    );
    assert!(
        h.notes.iter().any(|n| n.contains("job 7 (line 7) crashed")),
        "{:?}",
        h.notes
    );
    h.ready(WorkerId(2), 200);
    // The rest go back as blocks; line 7 runs again, alone, as a job with one failed attempt.
    let mut sent: Vec<(u64, u64)> = Vec::new();
    let mut retried = None;
    for (_, b) in h.take_sends() {
        match &b.lines {
            Some(header) => sent.push((header.first_line, crate::record::count_lines(&b.inputs.0))),
            None => retried = Some(b),
        }
    }
    // The worker holds two batches: the retried job waits behind the blocks, or goes first.
    let pending = h.scheduler.queued().0;
    assert!(retried.is_some() || pending > 0);
    sent.sort();
    let lines: u64 = sent.iter().map(|&(_, n)| n).sum();
    assert!(
        lines <= 7 && sent.iter().all(|&(first, n)| first + n <= 7 || first >= 8),
        "{sent:?}"
    );
}
