//! The native transport, worker side: connect to the supervisor's bootstrap server, say
//! `Hello` with two byte channels in it, then run the batches of one and answer on the other
//! (messages framed by [`corral_protocol::frame`]) until told to stop or until the supervisor
//! goes away.

use std::time::Instant;

use corral_protocol::{
    BatchDone, ENV_BOOTSTRAP, ENV_NONCE, ENV_SUPERVISOR_PID, Hello, PROTOCOL_VERSION, RawJson,
    RunningSlot, RunningWord, ToWorker, frame,
};
use ipc_channel::ipc::{self, IpcSender};

use crate::task::{Registry, task_result};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The bootstrap variables are missing: the process was not started by a supervisor.
    #[error("not started by a corral supervisor ({ENV_BOOTSTRAP} is not set)")]
    NotSupervised,
    /// The nonce variable is malformed.
    #[error("{ENV_NONCE} is not 16 hex digits: {0:?}")]
    BadNonce(String),
    /// The supervisor that started this process is already gone.
    #[error("the supervisor (pid {0}) is gone")]
    SupervisorGone(String),
    /// A request from the supervisor could not be read as one.
    #[error("not a request from corral: {0}")]
    BadRequest(String),
    /// Connecting to or talking with the supervisor failed.
    #[error("{context}: {source}")]
    Ipc {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn ipc_err(context: &'static str) -> impl FnOnce(ipc_channel::IpcError) -> ServeError {
    move |err| ServeError::Ipc {
        context,
        source: match err {
            ipc_channel::IpcError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        },
    }
}

/// Arms `PR_SET_PDEATHSIG(SIGKILL)`, so that this worker dies with the supervisor thread that
/// started it even if the supervisor is SIGKILLed, then checks that the supervisor did not die
/// before that: a worker must never outlive its supervisor.
fn die_with_supervisor() -> Result<(), ServeError> {
    let expected = std::env::var(ENV_SUPERVISOR_PID).unwrap_or_default();
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid have no memory-safety preconditions.
    let parent = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        libc::getppid()
    };
    match expected.parse::<libc::pid_t>() {
        Ok(pid) if pid == parent => Ok(()),
        _ => Err(ServeError::SupervisorGone(expected)),
    }
}

pub(crate) fn serve(registry: &Registry) -> Result<(), ServeError> {
    let server = std::env::var(ENV_BOOTSTRAP).map_err(|_| ServeError::NotSupervised)?;
    die_with_supervisor()?;
    corral_protocol::keep_freed_memory();
    let nonce_text = std::env::var(ENV_NONCE).unwrap_or_default();
    let nonce = u64::from_str_radix(&nonce_text, 16)
        .map_err(|_| ServeError::BadNonce(nonce_text.clone()))?;

    let bootstrap: IpcSender<Hello> =
        IpcSender::connect(server).map_err(|source| ServeError::Ipc {
            context: "connecting to the supervisor",
            source,
        })?;
    let channel = || {
        ipc::bytes_channel().map_err(|source| ServeError::Ipc {
            context: "creating a channel",
            source,
        })
    };
    let (batches, inbox) = channel()?;
    let (to_supervisor, answers) = channel()?;
    let (slot, running) = RunningSlot::create();
    bootstrap
        .send(Hello {
            protocol_version: PROTOCOL_VERSION,
            nonce,
            pid: std::process::id(),
            tasks: registry.names(),
            batches,
            answers,
            running,
        })
        .map_err(ipc_err("sending hello"))?;

    // Capacity for the next batch's outputs: about what the last one needed.
    let mut output_hint = 0;
    let mut tasks = crate::lines::Tasks::new(registry);
    loop {
        let message = match inbox.recv() {
            Ok(message) => message,
            // The supervisor dropped its sender: a clean exit.
            Err(ipc_channel::IpcError::Disconnected) => return Ok(()),
            Err(err) => return Err(ipc_err("receiving a batch")(err)),
        };
        let batch = match ToWorker::from_message(message) {
            Ok(ToWorker::Batch(batch)) => batch,
            Ok(ToWorker::Shutdown) => return Ok(()),
            Err(err) => return Err(ServeError::BadRequest(err)),
        };
        let mut done = BatchDone {
            batch: batch.id,
            outcomes: Vec::with_capacity(batch.jobs.len()),
            // Room for the answer's head too, so that framing it does not move the outputs.
            outputs: RawJson(Vec::with_capacity(
                output_hint + frame::head_room(batch.jobs.len()),
            )),
        };
        if let Some(block) = &batch.lines {
            let started = Instant::now();
            let lines = batch.iter().next().map_or(&[][..], |(_, lines)| lines);
            let result = crate::lines::answer(
                &mut tasks,
                &slot,
                batch.id,
                block,
                lines,
                &mut done.outputs.0,
            );
            done.push(started.elapsed().as_nanos() as u64, result);
        }
        // One clock reading per job: each job's time runs from the end of the previous one.
        let mut mark = Instant::now();
        let jobs = if batch.lines.is_some() {
            0
        } else {
            batch.jobs.len()
        };
        for (index, (task, input)) in batch.iter().take(jobs).enumerate() {
            slot.store(RunningWord::running(batch.id, index));
            let result = task_result(registry.run(task.0 as usize, input, &mut done.outputs.0));
            let now = Instant::now();
            done.push(now.duration_since(mark).as_nanos() as u64, result);
            mark = now;
        }
        output_hint = done.outputs.0.len();
        slot.store(RunningWord::IDLE);
        if to_supervisor.send(&done.into_message()).is_err() {
            // The supervisor is gone; nobody is left to serve.
            return Ok(());
        }
    }
}
