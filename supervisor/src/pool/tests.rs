//! A worker's whole life through the pool, with a real child scripted in `sh` that speaks the
//! stdio protocol: start, hello, batches, a crash, a replacement in the freed slot, a kill and
//! a retirement, each seen as the pool's events in their order.

use std::ffi::OsString;
use std::time::Duration;

use corral_protocol::{Batch, BatchDone, BatchId, TaskIndex, TaskResult, WorkerId};
use crossbeam_channel::{Receiver, unbounded};

use super::{PoolConfig, PoolEvent, Spawner, WorkerHandle};
use crate::os::Signal;
use crate::scheduler::{StartCause, WorkerExit};
use crate::transport::Transport;

/// A stdio worker in `sh`: says hello, answers each request with its id and output 1, dies of
/// SIGSEGV on the input `"die"`, and exits 0 at the end of its input.
const SCRIPT: &str = r#"
printf '{"corral_protocol": 1, "tasks": ["t"]}\n'
while IFS= read -r line; do
    case "$line" in *'"input":"die"'*) kill -SEGV $$ ;; esac
    id=${line#'{"id":'}
    id=${id%%,*}
    printf '{"id":%s,"output":1}\n' "$id"
done
"#;

/// Long enough for a child to start and answer on a loaded machine; a wait never takes it
/// unless something is wrong.
const DEADLINE: Duration = Duration::from_secs(20);

/// A pool of workers that run `script` in `sh`, and its events.
fn pool(script: &str) -> (Spawner, Receiver<PoolEvent>) {
    let config = PoolConfig {
        program: "/bin/sh".into(),
        args: vec![OsString::from("-c"), OsString::from(script)],
        transport: Transport::Stdio,
        env: Vec::new(),
        handshake_timeout: DEADLINE,
        memory_limit: None,
        keeper: None,
        gather: Duration::ZERO,
        own_readers: 0,
    };
    let (events, received) = unbounded();
    (Spawner::new(config, events), received)
}

fn next(events: &Receiver<PoolEvent>) -> PoolEvent {
    events
        .recv_timeout(DEADLINE)
        .expect("the pool reports within the deadline")
}

/// Waits for `worker`'s hello; its handle.
fn started(events: &Receiver<PoolEvent>, worker: WorkerId) -> WorkerHandle {
    match next(events) {
        PoolEvent::Started(started) => {
            let (id, tasks, job_ids, handle) = WorkerHandle::new(started);
            assert_eq!(id, worker);
            assert_eq!(tasks, ["t"]);
            assert!(job_ids, "a stdio worker echoes ids");
            handle
        }
        PoolEvent::StartFailed { failure, .. } => panic!("start failed: {}", failure.message),
        _ => panic!("an event before the hello"),
    }
}

/// A batch of jobs of task 0 with ids 1, 2, ... and these inputs.
fn batch(id: u64, inputs: &[&str]) -> Batch {
    let mut batch = Batch {
        id: BatchId(id),
        ..Batch::default()
    };
    for (i, input) in inputs.iter().enumerate() {
        batch.push(TaskIndex(0), input.as_bytes());
        batch.push_id((i + 1).to_string().as_bytes());
    }
    batch
}

/// The answers to batch `id` until `count` of its jobs are answered (a stdio worker's answers
/// may come in more than one piece).
fn answered(events: &Receiver<PoolEvent>, worker: WorkerId, id: u64, count: usize) {
    let mut got = 0;
    while got < count {
        match next(events) {
            PoolEvent::Done { worker: from, done } => {
                let BatchDone {
                    batch, outcomes, ..
                } = &done;
                assert_eq!((from, *batch), (worker, BatchId(id)));
                assert!(outcomes.iter().all(|o| o.result == TaskResult::Ok));
                got += outcomes.len();
            }
            PoolEvent::Gone { exit, .. } => panic!("gone ({exit}) before its answers"),
            _ => panic!("not an answer"),
        }
    }
    assert_eq!(got, count);
}

/// Waits for `worker`'s end, after any answers still coming; how it ended.
fn gone(events: &Receiver<PoolEvent>, worker: WorkerId) -> WorkerExit {
    loop {
        match next(events) {
            PoolEvent::Gone {
                worker: from, exit, ..
            } => {
                assert_eq!(from, worker);
                return exit;
            }
            PoolEvent::Done { .. } => {}
            _ => panic!("not an end"),
        }
    }
}

#[test]
fn a_worker_lives_crashes_is_replaced_killed_and_retired_through_the_pool() {
    let (pool, events) = pool(SCRIPT);

    // Start and hello: the first worker takes slot 1.
    pool.spawn(WorkerId(1));
    let first = started(&events, WorkerId(1));
    assert_eq!(first.slot, 1);

    // Batches, answered in order.
    first.send(batch(1, &["1", "2", "3"]));
    answered(&events, WorkerId(1), 1, 3);
    first.send(batch(2, &["4"]));
    answered(&events, WorkerId(1), 2, 1);

    // A crash mid-batch: the job before it is answered, then the worker is gone with its
    // signal, and its slot is free again.
    first.send(batch(3, &["5", "\"die\"", "6"]));
    answered(&events, WorkerId(1), 3, 1);
    assert_eq!(gone(&events, WorkerId(1)), WorkerExit::Signal(Signal::SEGV));

    // The replacement takes the freed slot, and works.
    pool.spawn(WorkerId(2));
    let second = started(&events, WorkerId(2));
    assert_eq!(second.slot, 1);
    second.send(batch(4, &["7", "8"]));
    answered(&events, WorkerId(2), 4, 2);

    // Another beside it takes slot 2; killed through the pool, it ends with SIGKILL.
    pool.spawn(WorkerId(3));
    let third = started(&events, WorkerId(3));
    assert_eq!(third.slot, 2);
    third.kill(&pool);
    assert_eq!(gone(&events, WorkerId(3)), WorkerExit::Signal(Signal::KILL));

    // Retired, the replacement finishes its batch, reads the end of its input and exits 0.
    let mut second = second;
    second.send(batch(5, &["9"]));
    second.retire();
    answered(&events, WorkerId(2), 5, 1);
    assert_eq!(gone(&events, WorkerId(2)), WorkerExit::Code(0));

    drop(pool);
    assert!(
        events.recv_timeout(Duration::from_millis(100)).is_err(),
        "no event after every worker ended"
    );
}

#[test]
fn a_worker_that_never_says_hello_is_a_start_failure_and_is_killed() {
    let (pool, events) = pool("echo not a hello; sleep 60");
    pool.spawn(WorkerId(1));
    match next(&events) {
        PoolEvent::StartFailed { worker, failure } => {
            assert_eq!(worker, WorkerId(1));
            assert_eq!(
                failure.cause,
                StartCause::Fatal,
                "a worker that is no worker would fail again"
            );
            assert!(
                failure.message.contains("not a hello"),
                "{}",
                failure.message
            );
        }
        _ => panic!("expected a start failure"),
    }
}
