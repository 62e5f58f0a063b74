//! The handshake: a worker's hello waited for on a thread of the worker's own, with a watchdog
//! for its deadline, its exit and the end of the run. The thread then goes on as the worker's
//! sender, the one thread each worker keeps.

use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, select};

use super::answering::Answering;
use super::handle::{describe_exit, send_batches};
use super::inbox::Inboxes;
use super::launch::Launched;
use super::types::{PoolEvent, StartedWorker};
use crate::os::{Signal, kill_group};
use crate::scheduler::{StartCause, StartFailure, WorkerExit};
use crate::transport::{Inbox, Outbox};

/// How long a worker whose hello failed (its pipe closed) is given to exit, so that its exit
/// status can be reported rather than the closed pipe.
const EXIT_AFTER_HANGUP: Duration = Duration::from_millis(500);

/// What a worker's accepted hello gave.
struct Accepted {
    slot: u32,
    tasks: Vec<String>,
    job_ids: bool,
    running: corral_protocol::RunningSlot,
    outbox: Outbox,
    inbox: Inbox,
}

impl Launched {
    /// Runs the handshake on the worker's own thread, which then goes on as its sender.
    pub(super) fn handshake(
        self,
        timeout: Duration,
        events: &Sender<PoolEvent>,
        cancelled: &Receiver<()>,
        inboxes: &Inboxes,
    ) {
        let (events, cancelled, inboxes) = (events.clone(), cancelled.clone(), inboxes.clone());
        let pid = self.pid;
        thread::Builder::new()
            .name(format!("corral-send-{pid}"))
            .spawn(move || {
                let worker = self.worker;
                let (hello, exits) = match self.accept(timeout, &cancelled) {
                    Ok(accepted) => accepted,
                    Err(failure) => {
                        let _ = events.send(PoolEvent::StartFailed { worker, failure });
                        return;
                    }
                };
                let kill_note = Arc::new(OnceLock::new());
                let (started, queued, killed) = StartedWorker::new(
                    worker,
                    pid,
                    hello.slot,
                    (hello.tasks, hello.job_ids, hello.running),
                );
                // Started first: the worker's answers and its end come after it.
                if events.send(PoolEvent::Started(started)).is_err() {
                    kill_group(pid);
                    return;
                }
                let answering = Answering {
                    worker,
                    pid,
                    exits,
                    kill_note: kill_note.clone(),
                };
                inboxes.add(hello.inbox, answering);
                drop((inboxes, events));
                send_batches(pid, hello.outbox, queued, &killed, &kill_note);
            })
            .expect("spawning a thread");
    }

    /// Waits for the hello, checks it, and returns the started worker with its inbox. On
    /// failure the worker is killed.
    fn accept(
        self,
        timeout: Duration,
        cancelled: &Receiver<()>,
    ) -> Result<(Accepted, Receiver<ExitStatus>), StartFailure> {
        let Launched {
            worker: _,
            pid,
            slot,
            program,
            bootstrap,
            pipes,
            exits_during_handshake,
            exits,
        } = self;
        // The wait for a hello has no timeout of its own (ipc-channel's accept, a read). A
        // watchdog ends it if the child exits first, the deadline passes or the run is over: it
        // kills the worker, which ends a wait for a message or a line, and fires the transport's
        // unblocker, which ends a wait for a connection. Its verdict says why the wait ended.
        let (handshake_over, watch) = bounded::<()>(1);
        let (verdict_tx, verdict) = bounded::<StartFailure>(1);
        {
            let (cancelled, unblock) = (cancelled.clone(), bootstrap.unblocker());
            let program = program.clone();
            thread::Builder::new()
                .name(format!("corral-handshake-{pid}"))
                .spawn(move || {
                    let failure = select! {
                        recv(watch) -> _ => return,
                        recv(exits_during_handshake) -> exit => {
                            let exit = exit.map(describe_exit);
                            StartFailure {
                                cause: if exit == Ok(WorkerExit::Signal(Signal::KILL)) {
                                    StartCause::KilledFromOutside
                                } else {
                                    StartCause::Transient
                                },
                                message: match &exit {
                                    Ok(exit) => format!("worker {pid} ({program}) {exit} before saying hello"),
                                    Err(_) => format!("worker {pid} ({program}) vanished before saying hello"),
                                },
                            }
                        },
                        recv(cancelled) -> _ => {
                            kill_group(pid);
                            StartFailure::transient(format!("worker {pid} ({program}) was abandoned: the run is over"))
                        },
                        default(timeout) => {
                            kill_group(pid);
                            StartFailure::transient(format!(
                                "worker {pid} ({program}) did not say hello within {}",
                                humantime::format_duration(timeout)
                            ))
                        },
                    };
                    let _ = verdict_tx.send(failure);
                    unblock.fire();
                })
                .expect("spawning a thread");
        }
        let greeted = bootstrap.hello(pid, pipes);
        if let Err(refusal) = &greeted
            && refusal.cause != StartCause::Fatal
        {
            // A worker whose pipe closed is most likely exiting: its exit says more than the
            // closed pipe does (and whether it was killed from outside).
            if let Ok(failure) = verdict.recv_timeout(EXIT_AFTER_HANGUP) {
                kill_group(pid);
                return Err(failure);
            }
        }
        let _ = handshake_over.send(());
        if let Ok(failure) = verdict.try_recv() {
            kill_group(pid);
            return Err(failure);
        }
        let greeting = greeted.map_err(|refusal| {
            kill_group(pid);
            StartFailure {
                cause: refusal.cause,
                message: format!("worker {pid} ({program}) {}", refusal.message),
            }
        })?;
        tracing::info!(pid, "worker started");
        let accepted = Accepted {
            slot,
            tasks: greeting.tasks,
            job_ids: greeting.job_ids,
            running: greeting.running,
            outbox: greeting.outbox,
            inbox: greeting.inbox,
        };
        Ok((accepted, exits))
    }
}
