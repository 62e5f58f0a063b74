//! The native transport, supervisor side: an ipc-channel bootstrap server named in the worker's
//! environment with a nonce, a `Hello` carrying the worker's sender and its running word in
//! shared memory, then one `Batch` out and one `BatchDone` back per batch.

use std::process::Command;

use corral_protocol::{
    Batch, ENV_BOOTSTRAP, ENV_NONCE, FromWorker, Hello, PROTOCOL_VERSION, RunningSlot, ToWorker,
};
use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};

use super::{Greeting, Received, Refusal};
use crate::scheduler::StartFailure;

/// The bootstrap server a worker connects to, and the nonce it must echo.
pub(crate) struct Bootstrap {
    server: IpcOneShotServer<FromWorker>,
    pub(crate) server_name: String,
    nonce: u64,
}

/// Creates the bootstrap server and names it, with a fresh nonce, in `command`'s environment
/// (not in argv, where other users could read it).
pub(crate) fn prepare(command: &mut Command) -> Result<Bootstrap, StartFailure> {
    let transient = StartFailure::transient;
    let (server, server_name) = IpcOneShotServer::<FromWorker>::new().map_err(|err| {
        transient(format!(
            "cannot create the bootstrap socket: {err} (is $TMPDIR writable?)"
        ))
    })?;
    let nonce =
        getrandom::u64().map_err(|err| transient(format!("no randomness for the nonce: {err}")))?;
    command
        .env(ENV_BOOTSTRAP, &server_name)
        .env(ENV_NONCE, format!("{nonce:016x}"));
    Ok(Bootstrap {
        server,
        server_name,
        nonce,
    })
}

/// Ends a wait in `accept`: a connection that hangs up at once.
pub(crate) fn unblock(server_name: String) {
    let _ = IpcSender::<FromWorker>::connect(server_name);
}

impl Bootstrap {
    /// Accepts the worker's connection and checks its hello.
    pub(crate) fn hello(self, pid: u32) -> Result<Greeting, Refusal> {
        let refuse = |fatal: bool, message: String| Refusal { fatal, message };
        let (receiver, first) = self
            .server
            .accept()
            .map_err(|err| refuse(false, format!("failed the handshake: {err}")))?;
        let hello: Hello = match first {
            FromWorker::Hello(hello) => hello,
            FromWorker::Done(_) => return Err(refuse(true, "did not start with hello".into())),
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(refuse(
                true,
                format!(
                    "speaks protocol version {}, this corral speaks {PROTOCOL_VERSION}; rebuild it against this corral-worker",
                    hello.protocol_version
                ),
            ));
        }
        if hello.nonce != self.nonce {
            return Err(refuse(true, "answered with the wrong nonce".into()));
        }
        if hello.pid != pid {
            tracing::debug!(pid, "worker reports pid {} (a wrapper?)", hello.pid);
        }
        let Some(running) = RunningSlot::from_shared(hello.running) else {
            return Err(refuse(
                true,
                "sent a running-word region of the wrong size".into(),
            ));
        };
        Ok(Greeting {
            tasks: hello.tasks,
            running,
            job_ids: false,
            outbox: super::Outbox::Native(Outbox(hello.sender)),
            inbox: super::Inbox::Native(Inbox(receiver)),
        })
    }
}

/// A native worker's batches: its ipc-channel sender.
pub struct Outbox(IpcSender<ToWorker>);

impl Outbox {
    pub(crate) fn send(&mut self, batch: Batch) -> Result<(), String> {
        self.0
            .send(ToWorker::Batch(batch))
            .map_err(|err| err.to_string())
    }

    pub(crate) fn shutdown(self) {
        let _ = self.0.send(ToWorker::Shutdown);
    }
}

/// A native worker's answers: the bootstrap channel it connected.
pub(crate) struct Inbox(IpcReceiver<FromWorker>);

impl Inbox {
    pub(crate) fn recv(&mut self) -> Received {
        match self.0.recv() {
            Ok(FromWorker::Done(done)) => Received::Done(done),
            Ok(FromWorker::Hello(_)) => Received::Violation("it sent a second hello".into()),
            Err(ipc_channel::IpcError::Disconnected) => Received::Closed,
            Err(err) => Received::Violation(format!("it sent a malformed message ({err})")),
        }
    }
}
