//! `corral serve`: one engine and its pool of workers, shared by every client of a Unix
//! socket. Each connection is a source of its own (see [`crate::engine`]): it writes job
//! lines, and gets back one result line per job, as they complete. Sources take turns in the
//! queue a batch at a time, each client may have at most `max_client_jobs` jobs in the
//! service at once, and a client that goes away has its queued jobs dropped.
//!
//! The socket is `--socket PATH`, or the one systemd passes (`LISTEN_FDS`). Under systemd
//! (`NOTIFY_SOCKET`), the service says `READY=1` once its workers have said hello, keeps
//! `STATUS=` up to date, sends `WATCHDOG=1` at half of `WATCHDOG_USEC` each time the
//! engine's loop has answered, and `STOPPING=1` on SIGTERM or SIGINT, after which the batches
//! in flight finish within the grace period and the service exits. SIGHUP reads the
//! `--config` file again (`RELOADING=1`, then `READY=1`): the new users, tasks and limits
//! hold for the connections that follow, and a new worker count takes effect at once.

mod connection;
pub mod notify;
pub mod policy;
mod state;

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, select, tick, unbounded};

use crate::engine::{
    Control, Engine, EngineConfig, EngineEnd, EngineReport, EngineStatus, Observers,
};
use crate::input::InputFormat;
use crate::metrics::{Listener, Metrics};
use crate::ports::Intake;
use crate::record::TaskNames;
use policy::{ConfigFile, Policy, PolicyArgs};
use state::{RefusalLog, Shared};

/// How often the service looks at its engine when no watchdog asks for more.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// How long a scrape of `--metrics` waits for the engine's state.
const STATUS_WAIT: Duration = Duration::from_secs(1);
/// Jobs the queue may hold, summed over every client.
const QUEUED_JOBS: usize = 1 << 20;
/// How often the service looks whether its workers are ready, until they are.
const READY_POLL: Duration = Duration::from_millis(20);
/// How long writers may take to send their last lines once the engine has ended.
const LAST_WRITES: Duration = Duration::from_secs(2);

/// Where the service listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A socket file it creates (and removes at the end).
    Path(PathBuf),
    /// The sockets systemd passed (`LISTEN_FDS`), or `systemd-socket-activate`.
    Activated,
}

/// Everything the service needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The engine's settings.
    pub engine: EngineConfig,
    /// How lines become jobs (the line limit comes from the policy).
    pub format: InputFormat,
    /// Where to listen.
    pub listen: Listen,
    /// What the command line says about users, tasks and limits.
    pub policy: PolicyArgs,
    /// The `--config` file, read at the start and on SIGHUP.
    pub config_file: Option<PathBuf>,
}

/// How the service ended.
#[derive(Debug)]
pub enum ServeEnd {
    /// Stopped by a signal, after its drain.
    Stopped,
    /// The workers could not be run; the message says why.
    Fatal(String),
}

/// The sockets to listen on: bound now, before any worker starts, so that a bad path is
/// reported at once.
pub fn listeners(listen: &Listen) -> anyhow::Result<Vec<UnixListener>> {
    match listen {
        Listen::Path(path) => Ok(vec![bind(path)?]),
        Listen::Activated => {
            let fds = notify::listen_fds()?;
            if fds.is_empty() {
                anyhow::bail!(
                    "no --socket PATH given, and no socket passed by systemd (LISTEN_FDS is not set for this process)"
                );
            }
            Ok(fds)
        }
    }
}

/// Binds `path` with mode 0660. A socket file left by a service that is gone is replaced; one
/// that a live service answers on is not.
fn bind(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "--socket {}: a file that is not a socket is there",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "--socket {}: another corral service is listening there",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // SAFETY: umask only swaps the process's file mode mask; no thread has started yet that
    // creates files, and the old mask is put back at once.
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// The socket file's device, inode and change time, to know it again (an inode number freed
/// by the removal of this service's file may be given to a successor's at once).
fn file_id(path: &std::path::Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()))
}

/// Removes the socket file this service bound, and only that: a service that took the path
/// over while this one drained keeps its own.
fn remove_own_socket(path: &std::path::Path, bound: Option<(u64, u64, i64, i64)>) {
    if bound.is_some() && file_id(path) == bound {
        let _ = std::fs::remove_file(path);
    }
}

/// Runs the service until a stop signal and its drain, or until its workers cannot run.
pub fn serve(
    config: ServeConfig,
    listeners: Vec<UnixListener>,
    metrics: Option<Listener>,
) -> ServeEnd {
    let bound = match &config.listen {
        Listen::Path(path) => file_id(path),
        Listen::Activated => None,
    };
    let file = match &config.config_file {
        Some(path) => ConfigFile::read(path).unwrap_or_else(|err| {
            // Checked by the caller before it got here; a file gone since then is empty.
            tracing::error!("{err}");
            ConfigFile::default()
        }),
        None => ConfigFile::default(),
    };
    let policy = Arc::new(Policy::new(&config.policy, &file));
    let mut engine_config = config.engine.clone();
    // Each client's credit bounds its jobs in the service; the queue must hold every client's
    // share, so that the clients take turns in the queue rather than race for room in it.
    // Its bytes stay bounded by `max_queued_bytes`.
    engine_config.scheduler.max_queued = engine_config.scheduler.max_queued.max(QUEUED_JOBS);
    if let Some(workers) = file.workers {
        engine_config.scheduler.workers = workers as usize;
    }
    let workers = engine_config.scheduler.workers;
    let names = TaskNames::default();
    let (intake, intake_rx) = bounded::<Intake>(1);
    let (control, control_rx) = unbounded::<Control>();
    if metrics.is_some() {
        engine_config.scheduler.notes = corral_protocol::Notes::Counts;
    }
    let mut engine = Engine::new(engine_config, names.clone());
    let shared = Arc::new(Shared {
        intake,
        control: control.clone(),
        names: names.clone(),
        format: config.format.clone(),
        policy: RwLock::new(policy),
        next_source: Mutex::new(0),
        clients: Mutex::new(HashMap::new()),
        connections: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        stopping: Mutex::new(None),
        started: Instant::now(),
        per_user: Mutex::new(HashMap::new()),
        refusals: Mutex::new(RefusalLog::default()),
        served: RwLock::new(None),
        results_of_gone: Mutex::new(HashMap::new()),
    });
    if let Some(listener) = metrics {
        let live = {
            let shared = shared.clone();
            move || shared.live(STATUS_WAIT)
        };
        let metrics = Arc::new(Metrics::new(names, Box::new(live)));
        crate::metrics::serve(listener, metrics.clone());
        engine.observe_with(Observers {
            joblog: None,
            metrics: Some(metrics),
        });
    }
    let (done_tx, done_rx) = bounded::<EngineReport>(1);
    thread::Builder::new()
        .name("corral-engine".into())
        .spawn(move || {
            let report = engine.run(&intake_rx, &control_rx);
            // The intake closes with the engine: readers waiting to send are let go.
            drop(intake_rx);
            let _ = done_tx.send(report);
        })
        .expect("spawning a thread");

    let closing = Arc::new(AtomicBool::new(false));
    // Closed to wake the accept threads. A socket systemd passed is shared with it, and must
    // not be shut down: systemd would see it hung up and fail the socket unit.
    let (woken, wake) = std::io::pipe().expect("a pipe");
    let mut wake = Some(wake);
    for listener in listeners {
        let shared = shared.clone();
        let closing = closing.clone();
        let woken = woken.try_clone().expect("a pipe's end duplicates");
        thread::Builder::new()
            .name("corral-accept".into())
            .spawn(move || accept(&listener, &shared, &closing, &woken))
            .expect("spawning a thread");
    }
    drop(woken);

    let signals = signal_channel();
    let watchdog = notify::watchdog_period();
    let period = watchdog.map_or(STATUS_PERIOD, |w| (w / 2).min(STATUS_PERIOD));
    let ticker = tick(period);
    // Until the workers have said hello, looked at often, so READY=1 follows their hello.
    let starting = tick(READY_POLL);
    let never = crossbeam_channel::never();
    let mut ready = false;
    let mut stopping = false;
    let mut workers = workers;
    let report = loop {
        select! {
            recv(done_rx) -> report => break report.expect("the engine thread sends its report"),
            recv(signals) -> signal => {
                let Ok(signal) = signal else { continue };
                if signal == libc::SIGHUP {
                    workers = reload(&config, &shared, workers);
                    continue;
                }
                let name = crate::os::Signal(signal);
                if !stopping {
                    stopping = true;
                    notify::stopping();
                    *shared.stopping.lock().expect("never poisoned") =
                        Some(format!("the service is stopping ({name})"));
                    closing.store(true, Ordering::Release);
                    // The accept threads end, and their listening sockets close with them.
                    drop(wake.take());
                }
                let _ = control.send(Control::Stop(signal));
            }
            recv(if ready { &never } else { &starting }) -> _ => {
                if let Some(status) = shared.engine_status(period)
                    && status.ready >= workers.min(status.workers.len().max(1))
                {
                    ready = true;
                    tracing::info!("{} workers ready: serving", status.ready);
                    notify::ready();
                    notify::status(&status_line(&status, &shared));
                }
            }
            recv(ticker) -> _ => {
                let Some(status) = shared.engine_status(period) else {
                    tracing::warn!("the engine did not answer within {}", humantime::format_duration(period));
                    continue;
                };
                // The engine's loop answered: it is not wedged.
                if watchdog.is_some() {
                    notify::watchdog();
                }
                notify::status(&status_line(&status, &shared));
            }
        }
    };
    closing.store(true, Ordering::Release);
    // Every sink went with the engine: the writers send their last lines, then end.
    let until = Instant::now() + LAST_WRITES;
    while shared.connections.load(Ordering::Acquire) > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    if let Listen::Path(path) = &config.listen {
        remove_own_socket(path, bound);
    }
    match report.end {
        EngineEnd::Fatal(message) | EngineEnd::Halted(message) => ServeEnd::Fatal(message),
        EngineEnd::Interrupted(_) | EngineEnd::Completed | EngineEnd::SinkFailed => {
            ServeEnd::Stopped
        }
    }
}

/// Takes connections until the service closes.
fn accept(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    closing: &AtomicBool,
    woken: &std::io::PipeReader,
) {
    use std::os::fd::AsFd;
    loop {
        let ready = crate::os::poll_readable(&[listener.as_fd(), woken.as_fd()]);
        if ready[1] || closing.load(Ordering::Acquire) {
            return;
        }
        if !ready[0] {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if closing.load(Ordering::Acquire) {
                    return;
                }
                // Counted for its user here, in the order the connections came.
                let counted = connection::Counted::new(stream, shared.clone());
                let spawned = thread::Builder::new()
                    .name("corral-conn".into())
                    .spawn(move || connection::serve(counted));
                if let Err(err) = spawned {
                    tracing::warn!("cannot start a thread for a connection: {err}");
                }
            }
            Err(_) if closing.load(Ordering::Acquire) => return,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                // Out of file descriptors, say: the connection waits in the backlog.
                tracing::warn!("cannot accept a connection: {err}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// SIGHUP: reads the config file again and applies it; returns the worker count now asked.
fn reload(config: &ServeConfig, shared: &Shared, workers: usize) -> usize {
    let Some(path) = &config.config_file else {
        tracing::info!("SIGHUP: no --config file to read again");
        return workers;
    };
    notify::reloading();
    let file = match ConfigFile::read(path) {
        Ok(file) => file,
        Err(err) => {
            tracing::error!("SIGHUP: {err}; keeping the configuration in force");
            notify::ready();
            return workers;
        }
    };
    let policy = Policy::new(&config.policy, &file);
    *shared.policy.write().expect("never poisoned") = Arc::new(policy);
    let wanted = file
        .workers
        .map_or(config.engine.scheduler.workers, |w| w as usize);
    if wanted != workers {
        let _ = shared.control.send(Control::Resize(wanted));
    }
    tracing::info!("SIGHUP: read {} again; {wanted} workers", path.display());
    notify::ready();
    wanted
}

fn status_line(status: &EngineStatus, shared: &Shared) -> String {
    let busy = status
        .workers
        .iter()
        .filter(|w| w.state == crate::scheduler::WorkerState::Busy)
        .count();
    format!(
        "{} clients, {} jobs queued, {busy}/{} workers busy, {} results, {} restarts",
        shared.clients.lock().expect("never poisoned").len(),
        status.queued,
        status.workers.len(),
        status.answered,
        status.restarts
    )
}

/// SIGINT, SIGTERM and SIGHUP as they come.
fn signal_channel() -> Receiver<i32> {
    let (tx, rx) = unbounded();
    // Forwarding stops only with the process.
    let _ = crate::os::forward_stop_signals(tx, |signal| signal);
    rx
}
