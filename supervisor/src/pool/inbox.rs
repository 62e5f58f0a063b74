//! Workers' answers in. A native worker's answers' channel is read either on a thread of its
//! own (the first workers, one per CPU: see `PoolConfig::own_readers`) or, with every other
//! native worker's, by one thread waiting on an ipc-channel receiver set; a stdio worker's
//! stdout, a pipe, is read on a thread of its own.
//! Either way a worker's `Gone` goes out only once its channel has closed and the monitor has
//! reported its exit, from the thread that sent its answers, so it always comes after the
//! last of them.

use std::collections::HashMap;
use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::thread;

use corral_protocol::WorkerId;
use corral_protocol::frame;
use crossbeam_channel::{Receiver, Sender, unbounded};
use ipc_channel::ipc::{IpcMessage, IpcReceiver, IpcReceiverSet, IpcSelectionResult, IpcSender};

use super::handle::describe_exit;
use super::types::PoolEvent;
use crate::os::kill_group;
use crate::scheduler::WorkerExit;
use crate::transport::{Inbox, Received, native};

/// A native worker's answers' channel, as the receiver set reads it.
type SharedInbox = IpcReceiver<native::AnswerBytes>;

/// Who is answering on an inbox, and how the end of that worker is learnt.
pub(super) struct Answering {
    pub(super) worker: WorkerId,
    pub(super) pid: u32,
    /// The monitor's report of the worker's exit.
    pub(super) exits: Receiver<ExitStatus>,
    /// Why the pool killed the worker, when it did.
    pub(super) kill_note: Arc<OnceLock<String>>,
}

/// The handle on the receiver set's thread. The thread ends once every handle is dropped and
/// every worker it reads has ended, or when nobody takes the pool's events any more.
#[derive(Clone)]
pub(super) struct Inboxes {
    adds: Sender<(SharedInbox, Answering)>,
    /// Wakes the thread: a new inbox to add, or an exit reported.
    poke: IpcSender<()>,
    events: Sender<PoolEvent>,
}

impl Inboxes {
    /// Starts the receiver set's thread; answers and ends go out on `events`.
    pub(super) fn start(events: Sender<PoolEvent>) -> io::Result<Inboxes> {
        let (poke, pokes) = ipc_channel::ipc::channel::<()>()?;
        let mut set = IpcReceiverSet::new()?;
        let control = set.add(pokes)?;
        let (adds, added) = unbounded();
        let thread_events = events.clone();
        thread::Builder::new()
            .name("corral-answers".into())
            .spawn(move || {
                let mut answers = Answers {
                    set,
                    control,
                    added,
                    events: thread_events,
                    reading: HashMap::new(),
                    ending: Vec::new(),
                };
                answers.run();
            })?;
        Ok(Inboxes { adds, poke, events })
    }

    /// Reads a started worker's answers from now until it ends.
    pub(super) fn add(&self, inbox: Inbox, answering: Answering) {
        let events = self.events.clone();
        let name = format!("corral-recv-{}", answering.pid);
        let spawned = match inbox {
            Inbox::Native(native::Inbox::Shared(inbox)) => {
                let _ = self.adds.send((inbox, answering));
                self.wake();
                return;
            }
            Inbox::Native(native::Inbox::Own(inbox)) => thread::Builder::new()
                .name(name)
                .spawn(move || receive_alone(|| native::recv(&inbox), answering, &events)),
            Inbox::Stdio(mut inbox) => thread::Builder::new()
                .name(name)
                .spawn(move || receive_alone(|| inbox.recv(), answering, &events)),
        };
        if let Err(err) = spawned {
            tracing::error!("cannot start a thread for a worker's answers: {err}");
        }
    }

    /// Wakes the thread: an inbox was added, or the monitor reported an exit.
    pub(super) fn wake(&self) {
        let _ = self.poke.send(());
    }
}

/// A native worker being read.
struct Reading {
    answering: Answering,
    /// Set when the worker broke the protocol: it has been killed, and what it sends after
    /// that is dropped.
    violation: Option<String>,
    /// About how long its last answer was, in bytes.
    last_len: usize,
}

/// The receiver set's thread.
struct Answers {
    set: IpcReceiverSet,
    control: u64,
    added: Receiver<(SharedInbox, Answering)>,
    events: Sender<PoolEvent>,
    reading: HashMap<u64, Reading>,
    /// Workers whose channel closed, waiting for their exit.
    ending: Vec<Reading>,
}

impl Answers {
    fn run(&mut self) {
        let mut open = true;
        while open || !self.reading.is_empty() || !self.ending.is_empty() {
            let selected = match self.set.select() {
                Ok(selected) => selected,
                Err(err) => {
                    tracing::error!("cannot wait for workers' answers: {err}");
                    return self.abandon();
                }
            };
            for selection in selected {
                let delivered = match selection {
                    IpcSelectionResult::MessageReceived(id, _) if id == self.control => {
                        self.take_added();
                        true
                    }
                    IpcSelectionResult::ChannelClosed(id) if id == self.control => {
                        open = false;
                        true
                    }
                    IpcSelectionResult::MessageReceived(id, message) => self.answer(id, message),
                    IpcSelectionResult::ChannelClosed(id) => {
                        if let Some(reading) = self.reading.remove(&id) {
                            self.ending.push(reading);
                        }
                        true
                    }
                };
                if !delivered {
                    // Nobody takes the pool's events: the run is over.
                    return;
                }
            }
            self.end_exited();
        }
    }

    fn take_added(&mut self) {
        for (inbox, answering) in self.added.try_iter() {
            let pid = answering.pid;
            match self.set.add(inbox) {
                Ok(id) => {
                    self.reading.insert(
                        id,
                        Reading {
                            answering,
                            violation: None,
                            last_len: 0,
                        },
                    );
                }
                Err(err) => {
                    // Its answers cannot be read: it is killed, and its end reported.
                    tracing::error!(pid, "cannot wait for the worker's answers: {err}");
                    kill_group(pid);
                    self.ending.push(Reading {
                        answering,
                        violation: Some(format!("corral could not read its answers ({err})")),
                        last_len: 0,
                    });
                }
            }
        }
    }

    /// Hands on what a worker sent; false once nobody takes events.
    fn answer(&mut self, id: u64, message: IpcMessage) -> bool {
        let Some(reading) = self.reading.get_mut(&id) else {
            return true;
        };
        if reading.violation.is_some() {
            return true;
        }
        let received = native::received(message, reading.last_len);
        if let Received::Done(done) = &received {
            reading.last_len = done.outputs.0.len() + frame::head_room(done.outcomes.len());
        }
        match received {
            Received::Done(done) => {
                let worker = reading.answering.worker;
                self.events.send(PoolEvent::Done { worker, done }).is_ok()
            }
            Received::Violation(what) => {
                reading.violation = Some(what);
                kill_group(reading.answering.pid);
                true
            }
            Received::Closed => true,
        }
    }

    /// Sends the `Gone` of each worker whose channel closed and whose exit has been reported.
    fn end_exited(&mut self) {
        let mut i = 0;
        while i < self.ending.len() {
            match self.ending[i].answering.exits.try_recv() {
                Ok(status) => {
                    let reading = self.ending.swap_remove(i);
                    let _ = self.events.send(gone(reading, describe_exit(status)));
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    let reading = self.ending.swap_remove(i);
                    let _ = self.events.send(gone(reading, WorkerExit::Code(-1)));
                }
                Err(crossbeam_channel::TryRecvError::Empty) => i += 1,
            }
        }
    }

    /// The set failed: every worker it reads is killed, and its end reported once reaped.
    fn abandon(&mut self) {
        let mut readings: Vec<Reading> = self.reading.drain().map(|(_, r)| r).collect();
        readings.append(&mut self.ending);
        for reading in &readings {
            kill_group(reading.answering.pid);
        }
        for reading in readings {
            let exit = wait_for_exit(&reading.answering);
            let _ = self.events.send(gone(reading, exit));
        }
    }
}

/// How the worker ended, once the monitor has reaped it.
fn wait_for_exit(answering: &Answering) -> WorkerExit {
    match answering.exits.recv() {
        Ok(status) => describe_exit(status),
        Err(_) => WorkerExit::Code(-1),
    }
}

/// A worker's `Gone`, with the note of why the pool killed it, if it did.
fn gone(reading: Reading, exit: WorkerExit) -> PoolEvent {
    ended(reading.answering, reading.violation, exit)
}

/// The `Gone` of the worker `answering` was about; `violation` says how it broke the protocol,
/// if it did.
fn ended(answering: Answering, violation: Option<String>, exit: WorkerExit) -> PoolEvent {
    let Answering {
        worker,
        pid,
        kill_note,
        ..
    } = answering;
    let note = violation.or_else(|| kill_note.get().cloned());
    if let Some(note) = &note {
        tracing::warn!(pid, "worker killed: {note}");
    }
    PoolEvent::Gone { worker, exit, note }
}

/// Forwards a worker's answers, each as `next` waits for it, until its channel or stdout ends,
/// then waits for its exit.
fn receive_alone(
    mut next: impl FnMut() -> Received,
    answering: Answering,
    events: &Sender<PoolEvent>,
) {
    let mut violation = None;
    loop {
        match next() {
            Received::Done(done) => {
                let worker = answering.worker;
                if events.send(PoolEvent::Done { worker, done }).is_err() {
                    return;
                }
            }
            Received::Closed => break,
            Received::Violation(what) => {
                violation = Some(what);
                kill_group(answering.pid);
                break;
            }
        }
    }
    // Its channel is closed before the wait: a worker writing to it ends, not blocks.
    drop(next);
    let exit = wait_for_exit(&answering);
    let _ = events.send(ended(answering, violation, exit));
}
