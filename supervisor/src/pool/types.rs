//! What the pool's parts share: how to start workers, what the pool reports, a started
//! worker, and the slots of live workers.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_protocol::{Batch, BatchDone, RunningSlot, WorkerId};
use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::scheduler::{StartFailure, WorkerExit};
use crate::transport::Transport;

/// How to start workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The worker binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// What it speaks.
    pub transport: Transport,
    /// More environment for it (`CORRAL_EXEC` for the built-in worker's `exec` task).
    pub env: Vec<(OsString, OsString)>,
    /// How long a worker may take to say hello.
    pub handshake_timeout: Duration,
    /// Cap on each worker's data segment (heap and private mappings), in bytes: `RLIMIT_DATA`.
    pub memory_limit: Option<u64>,
    /// A corral binary to run as the keeper (`corral keeper`, which takes the workers' process
    /// groups down even when corral is killed); without one, a SIGKILLed corral can leave its
    /// workers' children behind.
    pub keeper: Option<PathBuf>,
    /// With the stdio transport, how long answers may gather in a worker's pipe before they
    /// are read (`corral run` gives 300 µs): fewer wakeups for a run's throughput, at this
    /// much latency per read. A library's short calls want none.
    pub gather: Duration,
    /// With the native transport, how many workers (by slot, from the first) have their
    /// answers read on a thread of their own, which hands on each answer as it was received;
    /// the others' answers share one thread, which waits on all of them and copies each answer
    /// once. [`PoolConfig::own_readers_default`] gives one per CPU: as many workers as CPUs pay no
    /// copy, and a pool of hundreds does not hold a thread per worker for it.
    pub own_readers: usize,
}

impl PoolConfig {
    /// The default [`PoolConfig::own_readers`]: the number of CPUs this process may use.
    pub fn own_readers_default() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

/// What the pool's threads report to the runtime.
pub enum PoolEvent {
    /// A worker said hello and is ready for batches.
    Started(StartedWorker),
    /// A worker could not be started; it has been killed.
    StartFailed {
        /// Which worker.
        worker: WorkerId,
        /// Why.
        failure: StartFailure,
    },
    /// A worker answered a batch.
    Done {
        /// Which worker.
        worker: WorkerId,
        /// The answer.
        done: BatchDone,
    },
    /// A worker's process has exited and been reaped, and every message it sent was delivered.
    Gone {
        /// Which worker.
        worker: WorkerId,
        /// How it ended.
        exit: WorkerExit,
        /// Why the pool killed it, when it did (a malformed message).
        note: Option<String>,
    },
}

/// A worker that completed the handshake.
pub struct StartedWorker {
    /// Which worker.
    pub worker: WorkerId,
    /// Its pid (also its process group id).
    pub pid: u32,
    /// Its slot (`CORRAL_WORKER_SLOT`): a replacement takes the slot of the worker it replaces.
    pub slot: u32,
    /// The tasks it serves.
    pub tasks: Vec<String>,
    /// Whether its batches must carry the jobs' ids.
    pub job_ids: bool,
    /// Where to queue its batches, for its sender.
    pub(super) batches: Sender<Batch>,
    /// Its running word.
    pub running: RunningSlot,
    /// Set by the runtime before it kills the worker: its sender then expects failed sends.
    pub(super) killed: Arc<AtomicBool>,
}

impl StartedWorker {
    /// A worker that said hello, with the receiving end of its batches and the flag the
    /// runtime sets before it kills it: both for whoever sends its batches.
    pub fn new(
        worker: WorkerId,
        pid: u32,
        slot: u32,
        hello: (Vec<String>, bool, RunningSlot),
    ) -> (StartedWorker, Receiver<Batch>, Arc<AtomicBool>) {
        let (batches, queued) = unbounded();
        let killed = Arc::new(AtomicBool::new(false));
        let (tasks, job_ids, running) = hello;
        let started = StartedWorker {
            worker,
            pid,
            slot,
            tasks,
            job_ids,
            batches,
            running,
            killed: killed.clone(),
        };
        (started, queued, killed)
    }
}

/// What the engine asks of a pool of workers. The process pool ([`super::Spawner`]) is one;
/// the engine's unit tests use a scripted one. A pool reports on the events channel it was
/// made with: each worker's `Started` (or `StartFailed`), its answers, and its `Gone`.
pub trait WorkerPool: Send {
    /// Starts a worker under this id.
    fn spawn(&self, worker: WorkerId);
    /// Kills the worker whose pid this is, and its process group.
    fn kill(&self, pid: u32);
    /// The resident memory of the worker whose pid this is, if known.
    fn resident_bytes(&self, pid: u32) -> Option<u64>;
}

/// The slots of live workers (see the pool's docs): the lowest one free when a worker starts,
/// freed when it is reaped.
#[derive(Clone, Default)]
pub(super) struct Slots(Arc<Mutex<SlotTable>>);

#[derive(Default)]
struct SlotTable {
    free: BTreeSet<u32>,
    next: u32,
}

impl Slots {
    /// The lowest free slot, from 1.
    pub(super) fn take(&self) -> u32 {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match table.free.pop_first() {
            Some(slot) => slot,
            None => {
                table.next += 1;
                table.next
            }
        }
    }

    pub(super) fn give_back(&self, slot: u32) {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.free.insert(slot);
    }
}
