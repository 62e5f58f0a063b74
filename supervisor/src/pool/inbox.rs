//! Workers' answers in. A native worker's answers' channel is read either on a thread of its
//! own (the first workers, one per CPU: see `PoolConfig::own_readers`) or, with every other
//! native worker's, by one thread waiting on an ipc-channel receiver set; every stdio worker's
//! stdout, a pipe, is read by one more thread (`stdout`).
//! Either way a worker's `Gone` goes out only once its channel has closed and the monitor has
//! reported its exit, from the thread that sent its answers, so it always comes after the
//! last of them.

use std::collections::HashMap;
use std::io;
use std::thread;

use corral_protocol::frame;
use crossbeam_channel::{Receiver, Sender, unbounded};
use ipc_channel::ipc::{IpcMessage, IpcReceiver, IpcReceiverSet, IpcSelectionResult, IpcSender};

use super::answering::{Answering, Ending, send_exited};
use super::stdout::StdoutReader;
use super::types::PoolEvent;
use crate::os::kill_group;
use crate::transport::{Inbox, Received, native};

/// A native worker's answers' channel, as the receiver set reads it.
type SharedInbox = IpcReceiver<native::AnswerBytes>;

/// The handle on the receiver set's thread. The thread ends once every handle is dropped and
/// every worker it reads has ended, or when nobody takes the pool's events any more.
#[derive(Clone)]
pub(super) struct Inboxes {
    adds: Sender<(SharedInbox, Answering)>,
    /// Wakes the thread: a new inbox to add, or an exit reported.
    poke: IpcSender<()>,
    events: Sender<PoolEvent>,
    stdout: StdoutReader,
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
        let stdout = StdoutReader::start(events.clone())?;
        Ok(Inboxes {
            adds,
            poke,
            events,
            stdout,
        })
    }

    /// Reads a started worker's answers from now until it ends.
    pub(super) fn add(&self, inbox: Inbox, answering: Answering) {
        match inbox {
            Inbox::Native(native::Inbox::Shared(inbox)) => {
                let _ = self.adds.send((inbox, answering));
                let _ = self.poke.send(());
            }
            Inbox::Native(native::Inbox::Own(inbox)) => {
                let events = self.events.clone();
                let spawned = thread::Builder::new()
                    .name(format!("corral-recv-{}", answering.pid))
                    .spawn(move || receive_alone(&inbox, answering, &events));
                if let Err(err) = spawned {
                    tracing::error!("cannot start a thread for a worker's answers: {err}");
                }
            }
            Inbox::Stdio(inbox) => self.stdout.add(inbox, answering),
        }
    }

    /// Wakes the threads that wait for exits: the monitor reported one.
    pub(super) fn wake(&self) {
        let _ = self.poke.send(());
        self.stdout.wake();
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

impl Reading {
    /// The worker, now that its channel closed.
    fn ended(self) -> Ending {
        Ending {
            answering: self.answering,
            violation: self.violation,
        }
    }
}

/// The receiver set's thread.
struct Answers {
    set: IpcReceiverSet,
    control: u64,
    added: Receiver<(SharedInbox, Answering)>,
    events: Sender<PoolEvent>,
    reading: HashMap<u64, Reading>,
    /// Workers whose channel closed, waiting for their exit.
    ending: Vec<Ending>,
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
                            self.ending.push(reading.ended());
                        }
                        true
                    }
                };
                if !delivered {
                    // Nobody takes the pool's events: the run is over.
                    return;
                }
            }
            send_exited(&mut self.ending, &self.events);
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
                    self.ending.push(Ending {
                        answering,
                        violation: Some(format!("corral could not read its answers ({err})")),
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
                reading.violation = Some(what.to_string());
                kill_group(reading.answering.pid);
                true
            }
            Received::Closed => true,
        }
    }

    /// The set failed: every worker it reads is killed, and its end reported once reaped.
    fn abandon(&mut self) {
        let mut ended: Vec<Ending> = (self.reading.drain())
            .map(|(_, reading)| reading.ended())
            .collect();
        ended.append(&mut self.ending);
        for ending in &ended {
            kill_group(ending.answering.pid);
        }
        for Ending {
            answering,
            violation,
        } in ended
        {
            let exit = answering.wait_for_exit();
            let _ = self.events.send(answering.gone(violation, exit));
        }
    }
}

/// Forwards a native worker's answers, read from its own channel, until the channel closes,
/// then waits for its exit.
fn receive_alone(
    inbox: &ipc_channel::ipc::IpcBytesReceiver,
    answering: Answering,
    events: &Sender<PoolEvent>,
) {
    let mut violation = None;
    loop {
        match native::recv(inbox) {
            Received::Done(done) => {
                let worker = answering.worker;
                if events.send(PoolEvent::Done { worker, done }).is_err() {
                    return;
                }
            }
            Received::Closed => break,
            Received::Violation(what) => {
                violation = Some(what.to_string());
                kill_group(answering.pid);
                break;
            }
        }
    }
    let exit = answering.wait_for_exit();
    let _ = events.send(answering.gone(violation, exit));
}
