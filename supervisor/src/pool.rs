//! Worker processes: spawning (fork+exec), the bootstrap handshake with its own deadline,
//! reaping, killing, and the per-worker threads that carry batches and results.
//!
//! Every worker runs in its own process group, so that the terminal's Ctrl-C reaches only the
//! supervisor (shutdown is its decision) and a kill of the group also takes the worker's own
//! children. `PR_SET_PDEATHSIG` kills a worker when the thread that started it exits; all
//! workers are started on the spawner thread, which lives as long as the pool, so workers die
//! with the supervisor even if it is killed with SIGKILL. The worker library arms it at
//! start-up (so that the spawn itself can be a fast posix_spawn) and exits at once if its parent
//! is already not the supervisor whose pid it was given.
//!
//! Reaping: each worker has a waiter thread blocked in `waitpid` on exactly its pid, so exits
//! are reaped at once (no zombies) without touching other children of the process. The waiter
//! then kills the worker's process group, so no grandchild outlives it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use corral_protocol::{
    Batch, BatchDone, ENV_BOOTSTRAP, ENV_NONCE, ENV_SUPERVISOR_PID, FromWorker, Hello,
    PROTOCOL_VERSION, RunningSlot, ToWorker, WorkerId,
};
use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};
use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};

use crate::scheduler::{StartFailure, WorkerExit};

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

/// How to start workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The worker binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// How long a worker may take to say hello.
    pub handshake_timeout: Duration,
    /// Cap on each worker's data segment (heap and private mappings), in bytes: `RLIMIT_DATA`.
    pub memory_limit: Option<u64>,
}

/// What the pool's threads report to the runtime.
pub enum PoolEvent {
    /// A worker said hello and is ready for batches.
    Started(StartedWorker),
    /// A worker could not be started; nothing of it is left running.
    StartFailed {
        /// Which worker.
        worker: WorkerId,
        /// Why.
        failure: StartFailure,
    },
    /// A worker answered a batch.
    Done {
        /// Which worker.
        worker: WorkerId,
        /// The answer.
        done: BatchDone,
    },
    /// A worker's process has exited and been reaped, and every message it sent was delivered.
    Gone {
        /// Which worker.
        worker: WorkerId,
        /// How it ended.
        exit: WorkerExit,
        /// Why the pool killed it, when it did (a malformed message).
        note: Option<String>,
    },
}

/// A worker that completed the handshake.
pub struct StartedWorker {
    /// Which worker.
    pub worker: WorkerId,
    /// Its pid (also its process group id).
    pub pid: u32,
    /// The tasks it serves.
    pub tasks: Vec<String>,
    /// Where to send its batches.
    pub sender: IpcSender<ToWorker>,
    /// Its running word.
    pub running: RunningSlot,
}

/// The long-lived thread that forks every worker (see the module docs for why it is one
/// thread).
pub struct Spawner {
    requests: Option<Sender<WorkerId>>,
    /// Dropped to cancel: queued requests are skipped and a handshake in progress is abandoned.
    cancel: Option<Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread; it reports on `events`.
    pub fn new(config: PoolConfig, events: Sender<PoolEvent>) -> Spawner {
        let (requests, inbox) = unbounded::<WorkerId>();
        let (cancel, cancelled) = bounded::<()>(0);
        let thread = thread::Builder::new()
            .name("corral-spawner".into())
            .spawn(move || {
                for worker in inbox {
                    if cancelled.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
                        return;
                    }
                    let event = match start_worker(&config, worker, &events, &cancelled) {
                        Ok(started) => PoolEvent::Started(started),
                        Err(failure) => PoolEvent::StartFailed { worker, failure },
                    };
                    if events.send(event).is_err() {
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

impl Drop for Spawner {
    fn drop(&mut self) {
        // Requests still queued, and a handshake under way, are for a run that is over.
        self.cancel.take();
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The runtime's handle on a live worker.
pub struct WorkerHandle {
    /// The worker's pid and process group.
    pub pid: u32,
    /// Its running word.
    pub running: RunningSlot,
    batches: Option<Sender<Batch>>,
}

impl WorkerHandle {
    /// Takes over a started worker: its batches go out on a thread of their own, since an IPC
    /// send blocks while the socket buffer is full.
    pub fn new(started: StartedWorker) -> (WorkerId, Vec<String>, WorkerHandle) {
        let (batches, outbox) = unbounded::<Batch>();
        let sender = started.sender;
        thread::Builder::new()
            .name(format!("corral-send-{}", started.pid))
            .spawn(move || {
                for batch in outbox {
                    if sender.send(ToWorker::Batch(batch)).is_err() {
                        // The worker is gone; its receiver thread reports that.
                        return;
                    }
                }
                let _ = sender.send(ToWorker::Shutdown);
            })
            .expect("spawning a thread");
        let handle = WorkerHandle {
            pid: started.pid,
            running: started.running,
            batches: Some(batches),
        };
        (started.worker, started.tasks, handle)
    }

    /// Queues a batch for the worker.
    pub fn send(&self, batch: Batch) {
        if let Some(batches) = &self.batches {
            let _ = batches.send(batch);
        }
    }

    /// Lets the worker finish what it has and exit.
    pub fn retire(&mut self) {
        self.batches.take();
    }

    /// Whether [`WorkerHandle::retire`] was called.
    pub fn retired(&self) -> bool {
        self.batches.is_none()
    }

    /// Kills the worker and its process group.
    pub fn kill(&self) {
        kill_group(self.pid);
    }
}

/// SIGKILL to a whole process group. A group that is already gone is not an error.
pub fn kill_group(pgid: u32) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

/// Resident memory of a process in bytes, from `/proc/PID/statm`; `None` if it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Describes how a process ended.
pub fn describe_exit(status: ExitStatus) -> WorkerExit {
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {signal}"));
        WorkerExit::Signal(name)
    } else {
        WorkerExit::Code(status.code().unwrap_or(-1))
    }
}

fn start_worker(
    config: &PoolConfig,
    worker: WorkerId,
    events: &Sender<PoolEvent>,
    cancelled: &Receiver<()>,
) -> Result<StartedWorker, StartFailure> {
    let program = config.program.display().to_string();
    let transient = |message: String| StartFailure {
        fatal: false,
        message,
    };
    let fatal = |message: String| StartFailure {
        fatal: true,
        message,
    };

    let (server, server_name) = IpcOneShotServer::<FromWorker>::new().map_err(|err| {
        transient(format!(
            "cannot create the bootstrap socket: {err} (is $TMPDIR writable?)"
        ))
    })?;
    let nonce =
        getrandom::u64().map_err(|err| transient(format!("no randomness for the nonce: {err}")))?;

    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .env(ENV_BOOTSTRAP, &server_name)
        .env(ENV_NONCE, format!("{nonce:016x}"))
        .env(ENV_SUPERVISOR_PID, std::process::id().to_string())
        .stdin(Stdio::null())
        // The supervisor's stdout is the results stream: a worker's output goes to the log.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    // Own process group: no terminal signals reach the worker, and killpg reaches its children.
    // Nothing runs between fork and exec, so std can use posix_spawn (a vfork), which makes a
    // replacement start about a millisecond sooner than fork would. The worker arms its own
    // PR_SET_PDEATHSIG at start-up, checking that ENV_SUPERVISOR_PID is still its parent.
    command.process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let message = match err.kind() {
                std::io::ErrorKind::NotFound => format!("worker binary {program} not found"),
                std::io::ErrorKind::PermissionDenied => {
                    format!("worker binary {program} is not executable")
                }
                _ => format!("cannot start worker binary {program}: {err}"),
            };
            let fatal_kind = matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            );
            return Err(if fatal_kind {
                fatal(message)
            } else {
                transient(message)
            });
        }
    };
    let pid = child.id();
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
            let err = std::io::Error::last_os_error();
            kill_group(pid);
            let _ = child.wait();
            return Err(fatal(format!(
                "cannot apply --memory-limit to worker {pid}: {err}"
            )));
        }
    }
    if let Some(stdout) = child.stdout.take() {
        log_worker_output(pid, "stdout", stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        log_worker_output(pid, "stderr", stderr);
    }
    let (exits_during_handshake, exits) = reap_in_background(child);

    // The spawner itself waits in accept(), which has no timeout of its own; a watchdog thread
    // ends the wait (by connecting and hanging up) if the child exits first, the deadline
    // passes or the run is over. On the common path nothing hands the hello over between
    // threads, which keeps a replacement's start short.
    let (handshake_over, watch) = bounded::<()>(1);
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    {
        let exits = exits_during_handshake;
        let (cancelled, failure, server_name) =
            (cancelled.clone(), failure.clone(), server_name.clone());
        let timeout = config.handshake_timeout;
        let program = program.clone();
        thread::Builder::new()
            .name(format!("corral-handshake-{pid}"))
            .spawn(move || {
                let reason = select! {
                    recv(watch) -> _ => return,
                    recv(exits) -> exit => match exit {
                        Ok(status) => format!("worker {pid} ({program}) {} before saying hello", describe_exit(status)),
                        Err(_) => format!("worker {pid} ({program}) vanished before saying hello"),
                    },
                    recv(cancelled) -> _ => format!("worker {pid} ({program}) was abandoned: the run is over"),
                    default(timeout) => format!(
                        "worker {pid} ({program}) did not say hello within {}",
                        humantime::format_duration(timeout)
                    ),
                };
                *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                // Ends the accept() below if it still waits.
                let _ = IpcSender::<FromWorker>::connect(server_name);
            })
            .expect("spawning a thread");
    }
    let accepted = server.accept();
    let _ = handshake_over.send(());
    let failed = |message: String, is_fatal: bool| {
        kill_group(pid);
        StartFailure {
            fatal: is_fatal,
            message,
        }
    };
    if let Some(reason) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(failed(reason, false));
    }
    let (receiver, first) = match accepted {
        Ok(pair) => pair,
        Err(err) => {
            return Err(failed(
                format!("worker {pid} ({program}) failed the handshake: {err}"),
                false,
            ));
        }
    };
    let hello: Hello = match first {
        FromWorker::Hello(hello) => hello,
        FromWorker::Done(_) => {
            return Err(failed(
                format!("worker {pid} ({program}) did not start with hello"),
                true,
            ));
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(failed(
            format!(
                "worker {program} speaks protocol version {}, this corral speaks {PROTOCOL_VERSION}; rebuild it against this corral-worker",
                hello.protocol_version
            ),
            true,
        ));
    }
    if hello.nonce != nonce {
        return Err(failed(
            format!("worker {pid} ({program}) answered with the wrong nonce"),
            true,
        ));
    }
    let Some(running) = RunningSlot::from_shared(hello.running) else {
        return Err(failed(
            format!("worker {pid} ({program}) sent a running-word region of the wrong size"),
            true,
        ));
    };
    tracing::info!(pid, "worker started");
    receive_in_background(worker, pid, receiver, exits, events.clone());
    Ok(StartedWorker {
        worker,
        pid,
        tasks: hello.tasks,
        sender: hello.sender,
        running,
    })
}

/// Waits for `child` on a thread of its own; once reaped, kills what is left of its process
/// group and reports the status twice: to the handshake watchdog and to the receiver thread,
/// each of which may or may not still be listening.
fn reap_in_background(mut child: Child) -> (Receiver<ExitStatus>, Receiver<ExitStatus>) {
    let (tx, rx) = bounded(1);
    let (handshake_tx, handshake_rx) = bounded(1);
    let pid = child.id();
    thread::Builder::new()
        .name(format!("corral-wait-{pid}"))
        .spawn(move || {
            let status = loop {
                match child.wait() {
                    Ok(status) => break status,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        tracing::error!(pid, "cannot wait for worker: {err}");
                        return;
                    }
                }
            };
            kill_group(pid);
            let _ = handshake_tx.send(status);
            let _ = tx.send(status);
        })
        .expect("spawning a thread");
    (handshake_rx, rx)
}

/// Forwards a worker's messages to the runtime until its channel closes, then waits for its
/// exit, so that `Gone` always comes after the worker's last result.
fn receive_in_background(
    worker: WorkerId,
    pid: u32,
    receiver: IpcReceiver<FromWorker>,
    exits: Receiver<ExitStatus>,
    events: Sender<PoolEvent>,
) {
    thread::Builder::new()
        .name(format!("corral-recv-{pid}"))
        .spawn(move || {
            let mut note = None;
            loop {
                match receiver.recv() {
                    Ok(FromWorker::Done(done)) => {
                        if events.send(PoolEvent::Done { worker, done }).is_err() {
                            return;
                        }
                    }
                    Ok(FromWorker::Hello(_)) => {
                        note = Some("it sent a second hello".to_owned());
                        kill_group(pid);
                        break;
                    }
                    Err(ipc_channel::IpcError::Disconnected) => break,
                    Err(err) => {
                        note = Some(format!("it sent a malformed message ({err})"));
                        kill_group(pid);
                        break;
                    }
                }
            }
            drop(receiver);
            let exit = match exits.recv() {
                Ok(status) => describe_exit(status),
                Err(_) => WorkerExit::Code(-1),
            };
            if let Some(note) = &note {
                tracing::warn!(pid, "worker killed: {note}");
            }
            let _ = events.send(PoolEvent::Gone { worker, exit, note });
        })
        .expect("spawning a thread");
}

/// Logs each line a worker prints, with its pid: stdout never mixes with results, and stderr
/// lines can be told apart between workers.
fn log_worker_output(pid: u32, stream: &'static str, output: impl std::io::Read + Send + 'static) {
    thread::Builder::new()
        .name(format!("corral-{stream}-{pid}"))
        .spawn(move || {
            for line in BufReader::new(output).split(b'\n') {
                let Ok(line) = line else { return };
                tracing::warn!(pid, "worker {stream}: {}", String::from_utf8_lossy(&line));
            }
        })
        .expect("spawning a thread");
}
