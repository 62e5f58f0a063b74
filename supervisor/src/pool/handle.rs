//! The runtime's handle on a live worker: its batches go out on the one thread each worker
//! has, since a send blocks while the worker's socket buffer or pipe is full.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use corral_protocol::{Batch, RunningSlot, WorkerId};
use crossbeam_channel::{Receiver, Sender};

use super::types::{StartedWorker, WorkerPool};
use crate::os::{Signal, kill_group};
use crate::scheduler::WorkerExit;
use crate::transport::Outbox;

/// The runtime's handle on a live worker.
pub struct WorkerHandle {
    /// The worker's pid and process group.
    pub pid: u32,
    /// Its running word.
    pub running: RunningSlot,
    /// When it said hello.
    pub started: Instant,
    /// Its slot.
    pub slot: u32,
    batches: Option<Sender<Batch>>,
    /// Set when the runtime kills it: a batch that can then not be sent is no surprise.
    killed: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Takes over a started worker.
    pub fn new(started: StartedWorker) -> (WorkerId, Vec<String>, bool, WorkerHandle) {
        let StartedWorker {
            worker,
            pid,
            slot,
            tasks,
            job_ids,
            batches,
            running,
            killed,
        } = started;
        let handle = WorkerHandle {
            pid,
            running,
            started: Instant::now(),
            slot,
            batches: Some(batches),
            killed,
        };
        (worker, tasks, job_ids, handle)
    }

    /// Queues a batch for the worker.
    pub fn send(&self, batch: Batch) {
        if let Some(batches) = &self.batches {
            let _ = batches.send(batch);
        }
    }

    /// Lets the worker finish what it has and exit.
    pub fn retire(&mut self) {
        self.batches.take();
    }

    /// Whether [`WorkerHandle::retire`] was called.
    pub fn retired(&self) -> bool {
        self.batches.is_none()
    }

    /// Kills the worker and its process group, through its pool.
    pub fn kill(&self, pool: &dyn WorkerPool) {
        self.killed.store(true, Ordering::Relaxed);
        pool.kill(self.pid);
    }
}

/// Sends a worker its batches, in order, until its handle retires it (then asks it to exit)
/// or it cannot be reached.
pub(super) fn send_batches(
    pid: u32,
    mut outbox: Outbox,
    queued: Receiver<Batch>,
    killed: &AtomicBool,
    kill_note: &OnceLock<String>,
) {
    for batch in queued {
        if let Err(err) = outbox.send(batch) {
            if killed.load(Ordering::Relaxed) {
                return;
            }
            // Whatever the reason, a worker that cannot be sent its batch would hold it
            // forever: kill it, so that its death requeues the batch.
            tracing::warn!(pid, "cannot send a batch to the worker ({err}): killing it");
            let _ = kill_note.set(format!("corral could not send it a batch ({err})"));
            kill_group(pid);
            return;
        }
    }
    outbox.shutdown();
}

/// Describes how a process ended.
pub fn describe_exit(status: ExitStatus) -> WorkerExit {
    if let Some(signal) = status.signal() {
        WorkerExit::Signal(Signal(signal))
    } else {
        WorkerExit::Code(status.code().unwrap_or(-1))
    }
}
