//! Starting a worker process: the command (program, environment, process group, memory cap),
//! the fork and exec, its slot, and handing it to the monitor; the handshake is not waited for.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use corral_protocol::{ENV_SUPERVISOR_PID, ENV_WORKER_SLOT, WorkerId};
use crossbeam_channel::{Receiver, bounded};

use super::monitor::{LogStream, Monitor, Watch};
use super::types::{PoolConfig, Slots};
use crate::cgroup::RunCgroup;
use crate::keeper::Keeper;
use crate::os::kill_group;
use crate::scheduler::StartFailure;
use crate::transport::{Bootstrap, Pipes, Transport, native};

/// Environment variables a worker must not inherit: they belong to the supervisor's own service
/// manager (systemd notify, watchdog and socket activation).
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// A worker process that has been forked and not yet said hello.
pub(super) struct Launched {
    pub(super) worker: WorkerId,
    pub(super) pid: u32,
    pub(super) slot: u32,
    pub(super) program: String,
    pub(super) bootstrap: Bootstrap,
    pub(super) pipes: Pipes,
    /// The monitor's report of the exit, for the handshake watchdog and then the receiver.
    pub(super) exits_during_handshake: Receiver<ExitStatus>,
    pub(super) exits: Receiver<ExitStatus>,
}

/// Forks the worker and hands it to the monitor; the handshake is not waited for.
pub(super) fn launch(
    config: &PoolConfig,
    worker: WorkerId,
    keeper: Option<Arc<Keeper>>,
    cgroup: Option<&RunCgroup>,
    slots: &Slots,
    monitor: &Monitor,
) -> Result<Launched, StartFailure> {
    let program = config.program.display().to_string();
    let (transient, fatal) = (StartFailure::transient, StartFailure::fatal);

    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_SUPERVISOR_PID, std::process::id().to_string())
        .stdin(Stdio::null())
        // The supervisor's stdout is the results stream: a worker's output goes to the log (or,
        // for a stdio worker, carries its answers).
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    // Own process group: no terminal signals reach the worker, and killpg reaches its children.
    // For a native worker nothing runs between fork and exec, so std can use posix_spawn (a
    // vfork), which makes a replacement start about a millisecond sooner than fork would; it
    // arms its own PR_SET_PDEATHSIG at start-up, checking that ENV_SUPERVISOR_PID is still its
    // parent. The stdio transport arms it in the child before the exec instead.
    command.process_group(0);
    let slot = slots.take();
    let answers = if slot as usize <= config.own_readers {
        native::Answers::Own
    } else {
        native::Answers::Shared
    };
    let bootstrap = match config
        .transport
        .prepare(&mut command, config.gather, answers)
    {
        Ok(bootstrap) => bootstrap,
        Err(failure) => {
            slots.give_back(slot);
            return Err(failure);
        }
    };
    command.env(ENV_WORKER_SLOT, slot.to_string());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            slots.give_back(slot);
            let message = match err.kind() {
                io::ErrorKind::NotFound => format!("worker binary {program} not found"),
                io::ErrorKind::PermissionDenied => {
                    format!("worker binary {program} is not executable")
                }
                _ => format!("cannot start worker binary {program}: {err}"),
            };
            let fatal_kind = matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            );
            return Err(if fatal_kind {
                fatal(message)
            } else {
                transient(message)
            });
        }
    };
    let pid = child.id();
    if let Some(keeper) = &keeper {
        keeper.watch(pid);
    }
    // Before it can have run any job (a worker starts one only after its hello).
    if let Some(cgroup) = cgroup {
        cgroup.enter(pid);
    }
    let discard = |child: Child, keeper: Option<&Keeper>| {
        discard(child, keeper);
        slots.give_back(slot);
    };
    if let Some(bytes) = config.memory_limit {
        // A hard cap, so that one job's runaway allocation fails in its own worker. It is set
        // from outside (prlimit) before the worker can receive any job.
        let limit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: prlimit reads `limit` and writes nothing (the old-limit pointer is null).
        if unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_DATA,
                &limit,
                std::ptr::null_mut(),
            )
        } != 0
        {
            let err = io::Error::last_os_error();
            discard(child, keeper.as_deref());
            return Err(fatal(format!(
                "cannot apply --memory-limit to worker {pid}: {err}"
            )));
        }
    }
    let mut pipes = Pipes {
        stdin: child.stdin.take(),
        stdout: None,
        stopped: None,
    };
    // A stdio worker's stdout is read until it is reaped, not until the pipe closes (a
    // descendant that escaped its group may hold it): this pipe says when.
    let mut reaped = None;
    if config.transport == Transport::Stdio {
        match io::pipe() {
            Ok((reader, writer)) => {
                pipes.stopped = Some(reader);
                reaped = Some(writer);
            }
            Err(err) => {
                discard(child, keeper.as_deref());
                return Err(transient(format!("cannot create a pipe: {err}")));
            }
        }
    }
    let stdout = child.stdout.take();
    let mut logs = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        logs.push(LogStream::new(pid, "stderr", stderr));
    }
    match config.transport {
        Transport::Native => logs.extend(stdout.map(|out| LogStream::new(pid, "stdout", out))),
        Transport::Stdio => pipes.stdout = stdout,
    }
    let (handshake_tx, exits_during_handshake) = bounded(1);
    let (exits_tx, exits) = bounded(1);
    monitor.watch(Watch {
        child,
        logs,
        keeper,
        slot,
        slots: slots.clone(),
        reaped,
        exits: vec![handshake_tx, exits_tx],
    });
    Ok(Launched {
        worker,
        pid,
        slot,
        program,
        bootstrap,
        pipes,
        exits_during_handshake,
        exits,
    })
}

/// Kills and reaps a worker that will not be handed over, and takes it off the keeper's list.
fn discard(mut child: Child, keeper: Option<&Keeper>) {
    let pid = child.id();
    kill_group(pid);
    let _ = child.wait();
    crate::cgroup::forget_worker(pid);
    if let Some(keeper) = keeper {
        keeper.forget(pid);
    }
}
