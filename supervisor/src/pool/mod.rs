//! Worker processes: spawning (fork+exec), the handshake with its own deadline, reaping,
//! killing, and the threads that carry batches, answers and log lines. What goes over the wire
//! is the business of the worker's transport (`crate::transport`); everything about the
//! process is here, the same for every transport.
//!
//! Every worker runs in its own process group, so that the terminal's Ctrl-C reaches only the
//! supervisor (shutdown is its decision) and a kill of the group also takes the worker's own
//! children. `PR_SET_PDEATHSIG` kills a worker when the thread that started it exits; all
//! workers are forked on the spawner thread, which lives as long as the pool, so workers die
//! with the supervisor even if it is killed with SIGKILL. The worker library arms it at
//! start-up (so that the spawn itself can be a fast posix_spawn) and exits at once if its parent
//! is already not the supervisor whose pid it was given; for a stdio worker, which cannot, the
//! spawn arms it before the exec. The worker's children are reached by the [`Keeper`], which
//! kills every listed group once corral is gone.
//!
//! Each live worker has a slot, a number from 1 in its environment (`CORRAL_WORKER_SLOT`):
//! the lowest one free when it starts, freed when it is reaped.
//!
//! Starting is two steps: the spawner thread only forks (about a millisecond), and each
//! worker's handshake then runs on that worker's own thread, so one slow or silent worker never
//! delays another start or a replacement. That thread goes on as the worker's sender, the only
//! thread a worker has: a send blocks while the worker is busy and its channel full.
//!
//! Everything else is shared by the whole pool: one monitor thread (`monitor`) reaps every
//! worker as it exits (pidfds) and logs what each prints; one thread (`stdout`) reads every
//! stdio worker's answers, waiting on all of their pipes at once; and a native worker's
//! answers are read either on a thread of their own, for the first workers, one per CPU
//! (`PoolConfig::own_readers`: no copy of each answer), or, for the rest, by one thread
//! (`inbox`) waiting on an ipc-channel receiver set. So a pool holds one thread per worker,
//! plus at most one per CPU, plus a constant. The handshake thread reports `Started` before the
//! worker's inbox is read, and a worker's `Done`s and its `Gone` come from one thread, so they
//! always arrive in that order.
//!
//! The pool's parts: `launch` (the command and the fork), `handshake`, `monitor`, `inbox`,
//! `stdout` and `handle` (the runtime's side of a live worker, and its sender).

mod answering;
mod handle;
mod handshake;
mod inbox;
mod launch;
mod monitor;
mod stdout;
mod types;

#[cfg(test)]
mod tests;

pub use handle::WorkerHandle;
#[cfg(test)]
pub use types::StartedWorker;
pub use types::{PoolConfig, PoolEvent, WorkerPool};

use std::sync::Arc;
use std::thread;

use corral_protocol::WorkerId;
use crossbeam_channel::{Sender, bounded, unbounded};

use crate::cgroup::RunCgroup;
use crate::keeper::Keeper;
use crate::scheduler::StartFailure;

use inbox::Inboxes;
use launch::launch;
use monitor::Monitor;
use types::Slots;

/// The long-lived thread that forks every worker (see the module docs for why it is one
/// thread).
pub struct Spawner {
    requests: Option<Sender<WorkerId>>,
    /// Dropped to cancel: queued requests are skipped and handshakes in progress are abandoned.
    cancel: Option<Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread (and the keeper, when configured); it reports on `events`.
    pub fn new(config: PoolConfig, events: Sender<PoolEvent>) -> Spawner {
        let keeper = config
            .keeper
            .as_deref()
            .and_then(|program| match Keeper::start(program) {
                Ok(keeper) => Some(Arc::new(keeper)),
                Err(err) => {
                    tracing::warn!(
                        "cannot start the keeper ({}: {err}): workers' children may outlive a killed corral",
                        program.display()
                    );
                    None
                }
            });
        // With the keeper (corral's own runs, not a library's bare pool), a cgroup too, where
        // corral may make one: it reaches what left the workers' process groups.
        let cgroup = config
            .keeper
            .as_ref()
            .and_then(|_| RunCgroup::create())
            .map(Arc::new);
        if let (Some(keeper), Some(cgroup)) = (&keeper, &cgroup) {
            keeper.watch_cgroup(cgroup.dir());
        }
        let (requests, inbox) = unbounded::<WorkerId>();
        let (cancel, cancelled) = bounded::<()>(0);
        let slots = Slots::default();
        let thread = thread::Builder::new()
            .name("corral-spawner".into())
            .spawn(move || {
                let shared = Inboxes::start(events.clone()).and_then(|inboxes| {
                    let waker = inboxes.clone();
                    Ok((Monitor::start(move || waker.wake())?, inboxes))
                });
                for worker in inbox {
                    if cancelled.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
                        return;
                    }
                    let launched = match &shared {
                        Ok((monitor, inboxes)) => {
                            let keeper = keeper.clone();
                            launch(&config, worker, keeper, cgroup.as_deref(), &slots, monitor)
                                .map(|launched| (launched, inboxes))
                        }
                        Err(err) => Err(StartFailure::fatal(format!(
                            "cannot start the pool's threads: {err}"
                        ))),
                    };
                    let sent = match launched {
                        Ok((launched, inboxes)) => {
                            let timeout = config.handshake_timeout;
                            launched.handshake(timeout, &events, &cancelled, inboxes);
                            Ok(())
                        }
                        Err(failure) => events.send(PoolEvent::StartFailed { worker, failure }),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            })
            .expect("spawning a thread");
        Spawner {
            requests: Some(requests),
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }

    /// Asks for a worker to be started under `worker`.
    pub fn spawn(&self, worker: WorkerId) {
        if let Some(requests) = &self.requests {
            // The thread only stops when this handle is dropped.
            let _ = requests.send(worker);
        }
    }
}

impl WorkerPool for Spawner {
    fn spawn(&self, worker: WorkerId) {
        Spawner::spawn(self, worker);
    }

    fn kill(&self, pid: u32) {
        crate::os::kill_group(pid);
    }

    fn resident_bytes(&self, pid: u32) -> Option<u64> {
        crate::os::resident_bytes(pid)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Requests still queued, and handshakes under way, are for a run that is over.
        self.cancel.take();
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
