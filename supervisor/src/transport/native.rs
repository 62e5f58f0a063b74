//! The native transport, supervisor side: an ipc-channel bootstrap server named in the worker's
//! environment with a nonce, a `Hello` handing over the worker's two byte channels and its
//! running word in shared memory, then one `Batch` out and one `BatchDone` back per batch, each
//! one message framed by [`corral_protocol::frame`].

use std::process::Command;

use corral_protocol::{
    Batch, BatchDone, ENV_BOOTSTRAP, ENV_NONCE, Hello, PROTOCOL_VERSION, RunningSlot,
};
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use super::link::{Greeting, Received, Refusal};
use crate::scheduler::StartFailure;

/// The bootstrap server a worker connects to, and the nonce it must echo.
pub(crate) struct Bootstrap {
    server: IpcOneShotServer<Hello>,
    pub(crate) server_name: String,
    nonce: u64,
}

/// Creates the bootstrap server and names it, with a fresh nonce, in `command`'s environment
/// (not in argv, where other users could read it).
pub(crate) fn prepare(command: &mut Command) -> Result<Bootstrap, StartFailure> {
    let transient = StartFailure::transient;
    let (server, server_name) = IpcOneShotServer::<Hello>::new().map_err(|err| {
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
    let _ = IpcSender::<Hello>::connect(server_name);
}

impl Bootstrap {
    /// Accepts the worker's connection and checks its hello.
    pub(crate) fn hello(self, pid: u32) -> Result<Greeting<Outbox, Inbox>, Refusal> {
        let refuse = |fatal: bool, message: String| Refusal { fatal, message };
        // The bootstrap channel carries the hello and nothing else.
        let (_, hello) = self
            .server
            .accept()
            .map_err(|err| refuse(false, format!("failed the handshake: {err}")))?;
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
            outbox: Outbox(hello.batches),
            inbox: Inbox(hello.answers),
        })
    }
}

/// A native worker's batches: the sending end of its byte channel.
pub struct Outbox(IpcBytesSender);

impl Outbox {
    pub(crate) fn send(&mut self, batch: Batch) -> Result<(), String> {
        self.0
            .send(&batch.into_message())
            .map_err(|err| err.to_string())
    }

    pub(crate) fn shutdown(self) {
        // An empty message is the request to stop.
        let _ = self.0.send(&[]);
    }
}

/// A native worker's answers: the receiving end of its other byte channel.
pub(crate) struct Inbox(IpcBytesReceiver);

impl Inbox {
    pub(crate) fn recv(&mut self) -> Received {
        match self.0.recv() {
            Ok(message) => match BatchDone::from_message(message) {
                Ok(done) => Received::Done(done),
                Err(err) => Received::Violation(format!("it sent a malformed message ({err})")),
            },
            Err(ipc_channel::IpcError::Disconnected) => Received::Closed,
            Err(err) => Received::Violation(format!("its channel failed ({err})")),
        }
    }
}
