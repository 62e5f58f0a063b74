//! Transports: how the supervisor talks to one worker process. The pool spawns the process and
//! supervises it (process group, reaping, logs, kills); a transport only sets up the channel
//! before the spawn, waits for the worker's hello, carries batches out and answers in, and keeps
//! the worker's running word. The scheduler never learns which transport a worker speaks.
//!
//! - [`native`]: workers built on the corral-worker library, over ipc-channel, with the running
//!   word in memory shared with the worker.
//! - [`stdio`]: any executable that speaks JSON lines on stdin and stdout
//!   (`docs/worker-protocol.md`); the running job is known from the order of its answers.

mod link;
pub mod native;
pub mod stdio;

pub(crate) use link::{Pipes, Received, Refusal};

use std::process::Command;
use std::time::Duration;

use corral_protocol::Batch;

use crate::scheduler::StartFailure;

/// Which transport a pool's workers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// ipc-channel, for workers on the corral-worker library (`--worker`).
    Native,
    /// JSON lines on stdin and stdout, for any executable (`--worker-cmd`).
    Stdio,
}

impl Transport {
    /// Sets up `command` for this transport before it is spawned: environment and pipes.
    /// `gather` is how long a stdio worker's answers may gather before they are read;
    /// `answers` how a native worker's will be.
    pub(crate) fn prepare(
        self,
        command: &mut Command,
        gather: Duration,
        answers: native::Answers,
    ) -> Result<Bootstrap, StartFailure> {
        match self {
            Transport::Native => native::prepare(command, answers).map(Bootstrap::Native),
            Transport::Stdio => {
                stdio::prepare(command);
                Ok(Bootstrap::Stdio(gather))
            }
        }
    }
}

/// A transport's state between the spawn and the hello.
pub(crate) enum Bootstrap {
    Native(native::Bootstrap),
    /// How long answers may gather before they are read.
    Stdio(Duration),
}

/// How a wait for a hello is ended from another thread (the watchdog), once the worker has
/// been killed or is gone.
pub(crate) enum Unblock {
    /// Connect to the bootstrap server and hang up: ends a wait for a connection.
    Connect(String),
    /// Nothing to do: the wait ends when the worker's pipe closes or it is reaped.
    Nothing,
}

impl Unblock {
    pub(crate) fn fire(self) {
        match self {
            Unblock::Connect(name) => native::unblock(name),
            Unblock::Nothing => {}
        }
    }
}

impl Bootstrap {
    /// How to end [`Bootstrap::hello`] from another thread.
    pub(crate) fn unblocker(&self) -> Unblock {
        match self {
            Bootstrap::Native(bootstrap) => Unblock::Connect(bootstrap.server_name.clone()),
            Bootstrap::Stdio(_) => Unblock::Nothing,
        }
    }

    /// Waits for the worker's hello and checks it. Blocks; ended by the watchdog's
    /// [`Unblock`] (after it killed the worker) or by the worker's exit.
    pub(crate) fn hello(self, pid: u32, pipes: Pipes) -> Result<Greeting, Refusal> {
        match self {
            Bootstrap::Native(bootstrap) => bootstrap
                .hello(pid)
                .map(|hello| hello.wrap(Outbox::Native, Inbox::Native)),
            Bootstrap::Stdio(gather) => {
                stdio::hello(pipes, gather).map(|hello| hello.wrap(Outbox::Stdio, Inbox::Stdio))
            }
        }
    }
}

/// A worker that said hello, with the outbox and inbox of its transport.
pub(crate) type Greeting = link::Greeting<Outbox, Inbox>;

/// Where a worker's batches go.
pub enum Outbox {
    /// The worker's ipc-channel sender.
    Native(native::Outbox),
    /// The worker's stdin.
    Stdio(stdio::Outbox),
}

impl Outbox {
    /// Sends a batch; blocks while the channel is full. An error means the worker cannot be
    /// reached any more.
    pub fn send(&mut self, batch: Batch) -> Result<(), String> {
        match self {
            Outbox::Native(outbox) => outbox.send(batch),
            Outbox::Stdio(outbox) => outbox.send(batch),
        }
    }

    /// Tells the worker to finish what it holds and exit.
    pub fn shutdown(self) {
        match self {
            Outbox::Native(outbox) => outbox.shutdown(),
            Outbox::Stdio(outbox) => outbox.shutdown(),
        }
    }
}

/// Where a worker's answers come from: a native worker's channel (read on a thread of its own
/// or in the pool's receiver set), or a stdio worker's stdout (read on a thread of its own).
pub(crate) enum Inbox {
    Native(native::Inbox),
    Stdio(stdio::Inbox),
}
