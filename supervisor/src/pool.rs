//! Worker processes: spawning (fork+exec), the handshake with its own deadline, reaping,
//! killing, and the per-worker threads that carry batches, results and log lines. What goes
//! over the wire is the worker's [`Transport`]'s business (`crate::transport`); everything
//! about the process is here, the same for every transport.
//!
//! Every worker runs in its own process group, so that the terminal's Ctrl-C reaches only the
//! supervisor (shutdown is its decision) and a kill of the group also takes the worker's own
//! children. `PR_SET_PDEATHSIG` kills a worker when the thread that started it exits; all
//! workers are forked on the spawner thread, which lives as long as the pool, so workers die
//! with the supervisor even if it is killed with SIGKILL. The worker library arms it at
//! start-up (so that the spawn itself can be a fast posix_spawn) and exits at once if its parent
//! is already not the supervisor whose pid it was given; for a stdio worker, which cannot, the
//! spawn arms it before the exec. The worker's children are reached by the [`Keeper`], which
//! kills every listed group once corral is gone.
//!
//! Each live worker has a slot, a number from 1 in its environment (`CORRAL_WORKER_SLOT`):
//! the lowest one free when it starts, freed when it is reaped.
//!
//! Starting is two steps: the spawner thread only forks (about a millisecond), and each
//! worker's handshake then runs on that worker's own thread, so one slow or silent worker never
//! delays another start or a replacement. The handshake thread goes on as the worker's receiver
//! once the hello is accepted; since one thread reports `Started`, every `Done` and `Gone`, they
//! always arrive in that order.
//!
//! Reaping: each worker has a waiter thread blocked in `waitpid` on exactly its pid, so exits
//! are reaped at once (no zombies) without touching other children of the process. The waiter
//! then kills the worker's process group, so no grandchild outlives it, and ends the worker's
//! log reader: a descendant that escaped the group and still holds the output pipes costs
//! nothing after that.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{self, PipeReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;
use tracing::Level;

use corral_protocol::{
    Batch, BatchDone, ENV_SUPERVISOR_PID, ENV_WORKER_SLOT, RunningSlot, WorkerId,
};
use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};

use crate::cgroup::RunCgroup;
use crate::keeper::Keeper;
use crate::os::{kill_group, poll_readable, set_nonblocking};
use crate::scheduler::{StartFailure, WorkerExit};
use crate::transport::{Bootstrap, Inbox, Outbox, Pipes, Received, Transport};

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

/// Longest line of a worker's stdout or stderr that is logged whole; the rest of a longer line
/// is counted, not kept, so a worker that prints without newlines costs bounded memory.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// How long a worker whose hello failed (its pipe closed) is given to exit, so that its exit
/// status can be reported rather than the closed pipe.
const EXIT_AFTER_HANGUP: Duration = Duration::from_millis(500);

/// After a worker is reaped, at most this much of its output still in the pipes is logged.
const MAX_LOG_DRAIN: usize = 1 << 20;

/// How to start workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The worker binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// What it speaks.
    pub transport: Transport,
    /// More environment for it (`CORRAL_EXEC` for the built-in worker's `exec` task).
    pub env: Vec<(OsString, OsString)>,
    /// How long a worker may take to say hello.
    pub handshake_timeout: Duration,
    /// Cap on each worker's data segment (heap and private mappings), in bytes: `RLIMIT_DATA`.
    pub memory_limit: Option<u64>,
    /// A corral binary to run as the [`Keeper`]; without one, a SIGKILLed corral can leave its
    /// workers' children behind.
    pub keeper: Option<PathBuf>,
    /// With the stdio transport, how long answers may gather in a worker's pipe before they
    /// are read (see [`crate::transport::stdio::GATHER`]): fewer wakeups for a run's
    /// throughput, at this much latency per read. A library's short calls want none.
    pub gather: Duration,
}

/// What the pool's threads report to the runtime.
pub enum PoolEvent {
    /// A worker said hello and is ready for batches.
    Started(StartedWorker),
    /// A worker could not be started; it has been killed.
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
    /// Its slot (`CORRAL_WORKER_SLOT`): a replacement takes the slot of the worker it replaces.
    pub slot: u32,
    /// The tasks it serves.
    pub tasks: Vec<String>,
    /// Whether its batches must carry the jobs' ids.
    pub job_ids: bool,
    /// Where to send its batches.
    pub outbox: Outbox,
    /// Its running word.
    pub running: RunningSlot,
    /// Why the pool killed it, set before the kill: its `Gone` then says so, and the death is
    /// not taken for one from outside.
    kill_note: Arc<OnceLock<String>>,
}

/// The long-lived thread that forks every worker (see the module docs for why it is one
/// thread).
pub struct Spawner {
    requests: Option<Sender<WorkerId>>,
    /// Dropped to cancel: queued requests are skipped and handshakes in progress are abandoned.
    cancel: Option<Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread (and the keeper, when configured); it reports on `events`.
    pub fn new(config: PoolConfig, events: Sender<PoolEvent>) -> Spawner {
        let keeper = config
            .keeper
            .as_deref()
            .and_then(|program| match Keeper::start(program) {
                Ok(keeper) => Some(Arc::new(keeper)),
                Err(err) => {
                    tracing::warn!(
                        "cannot start the keeper ({}: {err}): workers' children may outlive a killed corral",
                        program.display()
                    );
                    None
                }
            });
        // With the keeper (corral's own runs, not a library's bare pool), a cgroup too, where
        // corral may make one: it reaches what left the workers' process groups.
        let cgroup = config
            .keeper
            .as_ref()
            .and_then(|_| RunCgroup::create())
            .map(Arc::new);
        if let (Some(keeper), Some(cgroup)) = (&keeper, &cgroup) {
            keeper.watch_cgroup(cgroup.dir());
        }
        let (requests, inbox) = unbounded::<WorkerId>();
        let (cancel, cancelled) = bounded::<()>(0);
        let slots = Slots::default();
        let thread = thread::Builder::new()
            .name("corral-spawner".into())
            .spawn(move || {
                for worker in inbox {
                    if cancelled.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
                        return;
                    }
                    let launched =
                        launch(&config, worker, keeper.clone(), cgroup.as_deref(), &slots);
                    let sent = match launched {
                        Ok(launched) => {
                            launched.handshake(config.handshake_timeout, &events, &cancelled);
                            Ok(())
                        }
                        Err(failure) => events.send(PoolEvent::StartFailed { worker, failure }),
                    };
                    if sent.is_err() {
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
        // Requests still queued, and handshakes under way, are for a run that is over.
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
    /// When it said hello.
    pub started: std::time::Instant,
    /// Its slot.
    pub slot: u32,
    batches: Option<Sender<Batch>>,
    /// Set when the runtime kills it: a batch that can then not be sent is no surprise.
    killed: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Takes over a started worker: its batches go out on a thread of their own, since a send
    /// blocks while the socket buffer or pipe is full.
    pub fn new(started: StartedWorker) -> (WorkerId, Vec<String>, bool, WorkerHandle) {
        let (batches, queued) = unbounded::<Batch>();
        let mut outbox = started.outbox;
        let pid = started.pid;
        let kill_note = started.kill_note;
        let killed = Arc::new(AtomicBool::new(false));
        let killed_by_runtime = killed.clone();
        thread::Builder::new()
            .name(format!("corral-send-{pid}"))
            .spawn(move || {
                for batch in queued {
                    if let Err(err) = outbox.send(batch) {
                        if killed_by_runtime.load(Ordering::Relaxed) {
                            return;
                        }
                        // Whatever the reason, a worker that cannot be sent its batch would
                        // hold it forever: kill it, so that its death requeues the batch.
                        tracing::warn!(
                            pid,
                            "cannot send a batch to the worker ({err}): killing it"
                        );
                        let _ = kill_note.set(format!("corral could not send it a batch ({err})"));
                        kill_group(pid);
                        return;
                    }
                }
                outbox.shutdown();
            })
            .expect("spawning a thread");
        let handle = WorkerHandle {
            pid,
            running: started.running,
            started: std::time::Instant::now(),
            slot: started.slot,
            batches: Some(batches),
            killed,
        };
        (started.worker, started.tasks, started.job_ids, handle)
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
        self.killed.store(true, Ordering::Relaxed);
        kill_group(self.pid);
    }
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

/// A worker process that has been forked and not yet said hello.
struct Launched {
    worker: WorkerId,
    pid: u32,
    slot: u32,
    program: String,
    bootstrap: Bootstrap,
    pipes: Pipes,
    /// The waiter's report of the exit, for the handshake watchdog and then the receiver.
    exits_during_handshake: Receiver<ExitStatus>,
    exits: Receiver<ExitStatus>,
}

/// The slots of live workers (see the module docs).
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<SlotTable>>);

#[derive(Default)]
struct SlotTable {
    free: BTreeSet<u32>,
    next: u32,
}

impl Slots {
    /// The lowest free slot, from 1.
    fn take(&self) -> u32 {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match table.free.pop_first() {
            Some(slot) => slot,
            None => {
                table.next += 1;
                table.next
            }
        }
    }

    fn give_back(&self, slot: u32) {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.free.insert(slot);
    }
}

/// Forks the worker and starts its waiter and log reader; the handshake is not waited for.
fn launch(
    config: &PoolConfig,
    worker: WorkerId,
    keeper: Option<Arc<Keeper>>,
    cgroup: Option<&RunCgroup>,
    slots: &Slots,
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
    let bootstrap = config.transport.prepare(&mut command, config.gather)?;
    let slot = slots.take();
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
    let pipe_pair =
        io::pipe().and_then(|(reader, writer)| Ok((reader.try_clone()?, reader, writer)));
    let (transport_stopped, logging_stopped, stop_logging) = match pipe_pair {
        Ok(pair) => pair,
        Err(err) => {
            discard(child, keeper.as_deref());
            return Err(transient(format!("cannot create a pipe: {err}")));
        }
    };
    let mut pipes = Pipes {
        stdin: child.stdin.take(),
        stdout: None,
        stopped: Some(transport_stopped),
    };
    let stdout = child.stdout.take();
    let log_stdout = match config.transport {
        Transport::Native => stdout,
        Transport::Stdio => {
            pipes.stdout = stdout;
            None
        }
    };
    if let Some(stderr) = child.stderr.take() {
        log_worker_output(pid, log_stdout, stderr, logging_stopped);
    }
    let (exits_during_handshake, exits) =
        reap_in_background(child, keeper, stop_logging, slots.clone(), slot);
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

impl Launched {
    /// Runs the handshake on the worker's own thread, which then goes on as its receiver.
    fn handshake(self, timeout: Duration, events: &Sender<PoolEvent>, cancelled: &Receiver<()>) {
        let (events, cancelled) = (events.clone(), cancelled.clone());
        let pid = self.pid;
        thread::Builder::new()
            .name(format!("corral-recv-{pid}"))
            .spawn(move || {
                let worker = self.worker;
                match self.accept(timeout, &cancelled) {
                    Ok((started, inbox, exits)) => {
                        let kill_note = started.kill_note.clone();
                        if events.send(PoolEvent::Started(started)).is_ok() {
                            receive(worker, pid, inbox, exits, &kill_note, &events);
                        } else {
                            kill_group(pid);
                        }
                    }
                    Err(failure) => {
                        let _ = events.send(PoolEvent::StartFailed { worker, failure });
                    }
                }
            })
            .expect("spawning a thread");
    }

    /// Waits for the hello, checks it, and returns the started worker with its inbox. On
    /// failure the worker is killed.
    fn accept(
        self,
        timeout: Duration,
        cancelled: &Receiver<()>,
    ) -> Result<(StartedWorker, Inbox, Receiver<ExitStatus>), StartFailure> {
        let Launched {
            worker,
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
                            let mut failure = StartFailure::transient(match &exit {
                                Ok(exit) => format!("worker {pid} ({program}) {exit} before saying hello"),
                                Err(_) => format!("worker {pid} ({program}) vanished before saying hello"),
                            });
                            failure.killed = exit == Ok(WorkerExit::Signal("SIGKILL".into()));
                            failure
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
            && !refusal.fatal
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
            let message = format!("worker {pid} ({program}) {}", refusal.message);
            if refusal.fatal {
                StartFailure::fatal(message)
            } else {
                StartFailure::transient(message)
            }
        })?;
        tracing::info!(pid, "worker started");
        let started = StartedWorker {
            worker,
            pid,
            slot,
            tasks: greeting.tasks,
            job_ids: greeting.job_ids,
            outbox: greeting.outbox,
            running: greeting.running,
            kill_note: Arc::default(),
        };
        Ok((started, greeting.inbox, exits))
    }
}

/// Waits for `child` on a thread of its own; once reaped, kills what is left of its process
/// group, takes it off the keeper's list, ends its log reader (by dropping `stop_logging`) and
/// reports the status twice: to the handshake watchdog and to the receiver, each of which may
/// or may not still be listening.
fn reap_in_background(
    mut child: Child,
    keeper: Option<Arc<Keeper>>,
    stop_logging: io::PipeWriter,
    slots: Slots,
    slot: u32,
) -> (Receiver<ExitStatus>, Receiver<ExitStatus>) {
    let (tx, rx) = bounded(1);
    let (handshake_tx, handshake_rx) = bounded(1);
    let pid = child.id();
    thread::Builder::new()
        .name(format!("corral-wait-{pid}"))
        .spawn(move || {
            let status = loop {
                match child.wait() {
                    Ok(status) => break status,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        tracing::error!(pid, "cannot wait for worker: {err}");
                        return;
                    }
                }
            };
            kill_group(pid);
            crate::cgroup::forget_worker(pid);
            if let Some(keeper) = &keeper {
                keeper.forget(pid);
            }
            drop(stop_logging);
            slots.give_back(slot);
            let _ = handshake_tx.send(status);
            let _ = tx.send(status);
        })
        .expect("spawning a thread");
    (handshake_rx, rx)
}

/// Forwards a worker's messages to the runtime until its channel closes, then waits for its
/// exit, so that `Gone` always comes after the worker's last result.
fn receive(
    worker: WorkerId,
    pid: u32,
    mut inbox: Inbox,
    exits: Receiver<ExitStatus>,
    kill_note: &OnceLock<String>,
    events: &Sender<PoolEvent>,
) {
    let mut note = None;
    loop {
        match inbox.recv() {
            Received::Done(done) => {
                if events.send(PoolEvent::Done { worker, done }).is_err() {
                    return;
                }
            }
            Received::Closed => break,
            Received::Violation(what) => {
                note = Some(what);
                kill_group(pid);
                break;
            }
        }
    }
    drop(inbox);
    let exit = match exits.recv() {
        Ok(status) => describe_exit(status),
        Err(_) => WorkerExit::Code(-1),
    };
    let note = note.or_else(|| kill_note.get().cloned());
    if let Some(note) = &note {
        tracing::warn!(pid, "worker killed: {note}");
    }
    let _ = events.send(PoolEvent::Gone { worker, exit, note });
}

/// Logs each line a worker prints on stdout or stderr, with its pid: stdout never mixes with
/// results, and stderr lines can be told apart between workers. One thread serves both pipes
/// and ends when they close or, at the latest, once the worker is reaped (`stopped` closes).
fn log_worker_output(
    pid: u32,
    stdout: Option<ChildStdout>,
    stderr: ChildStderr,
    stopped: PipeReader,
) {
    thread::Builder::new()
        .name(format!("corral-log-{pid}"))
        .spawn(move || {
            let mut streams = vec![LogStream::new(pid, "stderr", Box::new(stderr))];
            if let Some(stdout) = stdout {
                streams.push(LogStream::new(pid, "stdout", Box::new(stdout)));
            }
            loop {
                let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].open).collect();
                if open.is_empty() {
                    return;
                }
                let fds: Vec<BorrowedFd<'_>> = open
                    .iter()
                    .map(|&i| streams[i].fd())
                    .chain([stopped.as_fd()])
                    .collect();
                let ready = poll_readable(&fds);
                if ready.last() == Some(&true) {
                    // The worker was reaped: log what it left in the pipes, then stop, even if
                    // an escaped descendant still holds them open.
                    for stream in &mut streams {
                        stream.drain(MAX_LOG_DRAIN);
                        stream.finish();
                    }
                    return;
                }
                for (&i, &ready) in open.iter().zip(&ready) {
                    if ready {
                        streams[i].drain(usize::MAX);
                    }
                }
            }
        })
        .expect("spawning a thread");
}

/// One of a worker's output pipes, read without blocking and cut into bounded log lines.
struct LogStream {
    pid: u32,
    name: &'static str,
    pipe: Box<dyn ReadFd>,
    open: bool,
    lines: LogLines,
}

/// A pipe that is read and polled.
trait ReadFd: Read + AsFd + Send {}
impl<T: Read + AsFd + Send> ReadFd for T {}

impl LogStream {
    fn new(pid: u32, name: &'static str, pipe: Box<dyn ReadFd>) -> LogStream {
        let _ = set_nonblocking(pipe.as_fd());
        LogStream {
            pid,
            name,
            pipe,
            open: true,
            lines: LogLines::default(),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Reads what the pipe holds now (at most `limit` bytes) and logs each complete line.
    fn drain(&mut self, limit: usize) {
        let mut buf = [0u8; 16 * 1024];
        let mut taken = 0;
        while self.open && taken < limit {
            match self.pipe.read(&mut buf) {
                Ok(0) => {
                    self.open = false;
                    self.finish();
                }
                Ok(n) => {
                    taken += n;
                    let (pid, name) = (self.pid, self.name);
                    self.lines.push(&buf[..n], |line| log_line(pid, name, line));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.open = false,
            }
        }
    }

    /// Logs a last line left without its newline.
    fn finish(&mut self) {
        let (pid, name) = (self.pid, self.name);
        self.lines.flush(|line| log_line(pid, name, line));
    }
}

/// Logs a worker's line at warning level, or at the level its syslog prefix (`<4>`) names.
fn log_line(pid: u32, stream: &str, line: LogLine<'_>) {
    let text = String::from_utf8_lossy(line.text);
    let (level, text) = crate::journal::worker_level(&text).unwrap_or((Level::WARN, &text));
    let cut = match line.cut {
        0 => String::new(),
        n => format!("... ({n} more bytes of this line not logged)"),
    };
    match level {
        Level::ERROR => tracing::error!(pid, "worker {stream}: {text}{cut}"),
        Level::WARN => tracing::warn!(pid, "worker {stream}: {text}{cut}"),
        Level::INFO => tracing::info!(pid, "worker {stream}: {text}{cut}"),
        _ => tracing::debug!(pid, "worker {stream}: {text}{cut}"),
    }
}

/// A line of a worker's output as logged: at most [`MAX_LOG_LINE`] bytes of it, and how many
/// more there were.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The start of the line.
    pub text: &'a [u8],
    /// Bytes of the line past [`MAX_LOG_LINE`], not kept.
    pub cut: u64,
}

/// Cuts a stream of bytes into log lines at `\n` or `\r` (a progress bar's redraw), keeping at
/// most [`MAX_LOG_LINE`] bytes of any one line. Empty lines are skipped.
#[derive(Debug, Default)]
pub struct LogLines {
    line: Vec<u8>,
    cut: u64,
}

impl LogLines {
    /// Takes more bytes; calls `emit` for each line they complete.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(LogLine<'_>)) {
        while !bytes.is_empty() {
            let end = memchr::memchr2(b'\n', b'\r', bytes);
            let part = &bytes[..end.unwrap_or(bytes.len())];
            let room = MAX_LOG_LINE - self.line.len();
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.cut += part.len().saturating_sub(room) as u64;
            match end {
                Some(end) => {
                    self.flush(&mut emit);
                    bytes = &bytes[end + 1..];
                }
                None => return,
            }
        }
    }

    /// Emits what is held as a line, if anything.
    pub fn flush(&mut self, mut emit: impl FnMut(LogLine<'_>)) {
        if !self.line.is_empty() || self.cut > 0 {
            emit(LogLine {
                text: &self.line,
                cut: self.cut,
            });
        }
        self.line.clear();
        self.cut = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut lines = LogLines::default();
        for chunk in chunks {
            lines.push(chunk, |l| {
                out.push((String::from_utf8_lossy(l.text).into_owned(), l.cut))
            });
        }
        lines.flush(|l| out.push((String::from_utf8_lossy(l.text).into_owned(), l.cut)));
        out
    }

    #[test]
    fn log_lines_split_at_newlines_and_carriage_returns_across_reads() {
        assert_eq!(
            lines(&[b"one\ntw", b"o\r\nthr", b"ee\r40%\r80%", b"\n\n", b"last"]),
            [
                ("one".into(), 0),
                ("two".into(), 0),
                ("three".into(), 0),
                ("40%".into(), 0),
                ("80%".into(), 0),
                ("last".into(), 0)
            ]
        );
    }

    #[test]
    fn a_long_line_keeps_its_start_and_counts_the_rest() {
        let long = vec![b'x'; MAX_LOG_LINE + 10];
        let got = lines(&[&long, &long, b"\nnext"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), MAX_LOG_LINE);
        assert_eq!(got[0].1, (MAX_LOG_LINE + 20) as u64);
        assert_eq!(got[1], ("next".into(), 0));
        let mut lines = LogLines::default();
        for _ in 0..1000 {
            lines.push(&long, |_| {});
        }
        assert!(lines.line.capacity() <= 2 * MAX_LOG_LINE, "bounded memory");
    }
}
