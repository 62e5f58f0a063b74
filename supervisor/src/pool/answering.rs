//! The end of a worker as the thread that read its answers reports it: who the worker is, how
//! its exit is learnt from the monitor, and its `Gone`, sent after its last answer.

use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};

use corral_protocol::WorkerId;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::handle::describe_exit;
use super::types::PoolEvent;
use crate::scheduler::WorkerExit;

/// Who is answering on an inbox, and how the end of that worker is learnt.
pub(super) struct Answering {
    pub(super) worker: WorkerId,
    pub(super) pid: u32,
    /// The monitor's report of the worker's exit.
    pub(super) exits: Receiver<ExitStatus>,
    /// Why the pool killed the worker, when it did.
    pub(super) kill_note: Arc<OnceLock<String>>,
}

impl Answering {
    /// How the worker ended, if the monitor has reaped it yet.
    pub(super) fn exit_now(&self) -> Option<WorkerExit> {
        match self.exits.try_recv() {
            Ok(status) => Some(describe_exit(status)),
            Err(TryRecvError::Disconnected) => Some(WorkerExit::Code(-1)),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// How the worker ended, once the monitor has reaped it.
    pub(super) fn wait_for_exit(&self) -> WorkerExit {
        match self.exits.recv() {
            Ok(status) => describe_exit(status),
            Err(_) => WorkerExit::Code(-1),
        }
    }

    /// The worker's `Gone`; `violation` says how it broke the protocol, if it did.
    pub(super) fn gone(self, violation: Option<String>, exit: WorkerExit) -> PoolEvent {
        let Answering {
            worker,
            pid,
            kill_note,
            ..
        } = self;
        let note = violation.or_else(|| kill_note.get().cloned());
        if let Some(note) = &note {
            tracing::warn!(pid, "worker killed: {note}");
        }
        PoolEvent::Gone { worker, exit, note }
    }
}

/// A worker whose answers ended (its channel or its stdout closed), waiting for its exit;
/// `violation` says how it broke the protocol, if it did.
pub(super) struct Ending {
    pub(super) answering: Answering,
    pub(super) violation: Option<String>,
}

/// Sends the `Gone` of each of `ending` whose exit the monitor has reported; the rest wait.
pub(super) fn send_exited(ending: &mut Vec<Ending>, events: &Sender<PoolEvent>) {
    let mut i = 0;
    while i < ending.len() {
        let Some(exit) = ending[i].answering.exit_now() else {
            i += 1;
            continue;
        };
        let Ending {
            answering,
            violation,
        } = ending.swap_remove(i);
        let _ = events.send(answering.gone(violation, exit));
    }
}
