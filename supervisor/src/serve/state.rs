//! What the service's threads share: the engine's channels, the policy, the clients and
//! their counts, the connections by user, and the log of refusals; and `corral status` made
//! from them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

use super::policy::{Peer, Policy};
use crate::engine::{Control, EngineStatus};
use crate::input::InputFormat;
use crate::metrics::{Live, MAX_USER_LABELS};
use crate::ports::Intake;
use crate::record::{SourceId, TaskNames};
use crate::wire::{ClientStatus, ServiceStatus};

/// How often a reader waiting for credit looks whether its client is gone.
const CREDIT_POLL: Duration = Duration::from_millis(100);
/// Refusals logged at most this often (the rest are counted into the next one logged).
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);

/// A connected client, for `corral status`.
pub(crate) struct Client {
    pub(super) uid: u32,
    pub(super) pid: i32,
    pub(super) since: Instant,
    pub(super) counts: Arc<Counts>,
}

/// What the connections share.
pub(crate) struct Shared {
    pub(super) intake: Sender<Intake>,
    pub(super) control: Sender<Control>,
    pub(super) names: TaskNames,
    pub(super) format: InputFormat,
    pub(super) policy: RwLock<Arc<Policy>>,
    pub(super) next_source: Mutex<u32>,
    pub(super) clients: Mutex<HashMap<SourceId, Client>>,
    /// Job connections open.
    pub(super) connections: AtomicUsize,
    /// Connections open, of any kind.
    pub(super) open: AtomicUsize,
    pub(super) stopping: Mutex<Option<String>>,
    pub(super) started: Instant,
    /// Connections open, by user.
    pub(super) per_user: Mutex<HashMap<u32, UserCounts>>,
    /// Refusals, for the log.
    pub(super) refusals: Mutex<RefusalLog>,
    /// The tasks the workers serve, once one has said hello: the only names a client's jobs
    /// may add to the service's table of task names.
    pub(super) served: RwLock<Option<Arc<Vec<String>>>>,
    /// Result lines written back to the clients that left, by uid (past
    /// [`MAX_USER_LABELS`] users, under `u32::MAX`).
    pub(super) results_of_gone: Mutex<HashMap<u32, u64>>,
}

impl Shared {
    pub(super) fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("never poisoned").clone()
    }

    pub(super) fn stop_reason(&self) -> String {
        self.stopping
            .lock()
            .expect("never poisoned")
            .clone()
            .unwrap_or_else(|| "the service stopped".into())
    }

    /// The engine's state and the clients', as `corral status` shows them; `None` if the
    /// engine does not answer within `wait`.
    pub(super) fn status(&self, wait: Duration) -> Option<ServiceStatus> {
        let engine = self.engine_status(wait)?;
        let now = Instant::now();
        let clients = {
            let clients = self.clients.lock().expect("never poisoned");
            let mut list: Vec<(&SourceId, &Client)> = clients.iter().collect();
            list.sort_by_key(|(id, _)| **id);
            list.into_iter()
                .map(|(id, c)| {
                    let sent = c.counts.sent.load(Ordering::Acquire);
                    let written = c.counts.written.load(Ordering::Acquire);
                    ClientStatus {
                        client: id.0,
                        uid: c.uid,
                        pid: c.pid,
                        connected_secs: now.duration_since(c.since).as_secs_f64(),
                        jobs_read: sent,
                        results_written: written,
                        in_service: sent - written,
                        results_waiting: c.counts.backlog.load(Ordering::Acquire),
                        ok: c.counts.ok.load(Ordering::Relaxed),
                        failed: c.counts.failed.load(Ordering::Relaxed),
                    }
                })
                .collect()
        };
        Some(ServiceStatus {
            engine,
            pid: std::process::id(),
            uptime_secs: now.duration_since(self.started).as_secs_f64(),
            connections: self.connections.load(Ordering::Acquire),
            clients,
        })
    }

    pub(super) fn engine_status(&self, wait: Duration) -> Option<EngineStatus> {
        let (tx, rx) = bounded(1);
        self.control.send(Control::Status(tx)).ok()?;
        let status = rx.recv_timeout(wait).ok()?;
        if !status.tasks.is_empty() {
            let mut served = self.served.write().expect("never poisoned");
            if served.as_deref() != Some(&status.tasks) {
                *served = Some(Arc::new(status.tasks.clone()));
            }
        }
        Some(status)
    }

    /// The tasks the workers serve, once known.
    pub(super) fn served(&self) -> Option<Arc<Vec<String>>> {
        self.served.read().expect("never poisoned").clone()
    }

    /// Counts the results written to a client of `uid` that left.
    pub(super) fn client_left(&self, uid: u32, written: u64) {
        let mut gone = self.results_of_gone.lock().expect("never poisoned");
        let uid = if gone.contains_key(&uid) || gone.len() < MAX_USER_LABELS {
            uid
        } else {
            u32::MAX
        };
        *gone.entry(uid).or_default() += written;
    }

    /// What the metrics say of the service now; `None` if the engine does not answer within
    /// `wait`.
    pub(super) fn live(&self, wait: Duration) -> Option<Live> {
        let mut live = self.engine_status(wait)?.live();
        let mut by_uid = self.results_of_gone.lock().expect("never poisoned").clone();
        let clients = self.clients.lock().expect("never poisoned");
        live.clients = Some(clients.len() as u64);
        for client in clients.values() {
            let uid = if by_uid.contains_key(&client.uid) || by_uid.len() < MAX_USER_LABELS {
                client.uid
            } else {
                u32::MAX
            };
            *by_uid.entry(uid).or_default() += client.counts.written.load(Ordering::Acquire);
        }
        drop(clients);
        live.client_jobs = by_uid.into_iter().collect();
        live.client_jobs.sort_unstable();
        live.refusals = self
            .refusals
            .lock()
            .expect("never poisoned")
            .by_reason
            .clone();
        Some(live)
    }
}

/// A connection's counts, shared by its reader, its writer, its sink and `corral status`.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Items (jobs and rejected lines) handed to the engine.
    pub(super) sent: AtomicU64,
    /// Result lines written back.
    pub(super) written: AtomicU64,
    pub(super) ok: AtomicU64,
    pub(super) failed: AtomicU64,
    /// Results handed to the writer and not yet written.
    pub(super) backlog: AtomicUsize,
    /// The reader read the client's input to its end.
    pub(super) read_all: AtomicBool,
    /// The client is gone (a write failed) or the service is done with it.
    pub(super) gone: AtomicBool,
    /// Wakes a reader waiting for credit.
    pub(super) credit: (Mutex<()>, Condvar),
}

impl Counts {
    pub(super) fn in_service(&self) -> u64 {
        self.sent.load(Ordering::Acquire) - self.written.load(Ordering::Acquire)
    }

    pub(super) fn gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub(super) fn wake(&self) {
        let _guard = self.credit.0.lock().expect("never poisoned");
        self.credit.1.notify_all();
    }

    /// Waits until `n` more items fit under `cap` (or nothing is in the service, so a chunk
    /// larger than the cap still goes); false when the client is gone.
    pub(super) fn wait_for_credit(&self, n: u64, cap: u64) -> bool {
        let mut guard = self.credit.0.lock().expect("never poisoned");
        loop {
            if self.gone() {
                return false;
            }
            let in_service = self.in_service();
            if in_service == 0 || in_service + n <= cap {
                return true;
            }
            guard = self
                .credit
                .1
                .wait_timeout(guard, CREDIT_POLL)
                .expect("never poisoned")
                .0;
        }
    }
}

/// Refusals, logged at most once a period whatever a hostile peer does.
#[derive(Default)]
pub(super) struct RefusalLog {
    pub(super) last: Option<Instant>,
    /// Refusals not logged since the last one that was.
    pub(super) quiet: u64,
    /// Every refusal, by reason, for the metrics.
    pub(super) by_reason: Vec<(&'static str, u64)>,
}

impl RefusalLog {
    /// Counts a refusal for `reason` (a metrics label), without logging it.
    pub(super) fn count(&mut self, reason: &'static str) {
        match self.by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.by_reason.push((reason, 1)),
        }
    }

    /// Counts a refusal for `reason`, and logs it (`why`, `detail`) unless one was logged
    /// within the period.
    pub(super) fn note(
        &mut self,
        peer: Option<&Peer>,
        reason: &'static str,
        why: &str,
        detail: &str,
    ) {
        self.count(reason);
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_PERIOD)
        {
            self.quiet += 1;
            return;
        }
        self.last = Some(now);
        let more = std::mem::take(&mut self.quiet);
        let (uid, pid) = peer.map_or((None, None), |p| (Some(p.uid), Some(p.pid)));
        tracing::warn!(
            uid,
            pid,
            "refused: {why}{detail} ({more} more refused since the last line)"
        );
    }
}

/// A user's connections: all of them, and those running jobs.
#[derive(Debug, Default)]
pub(super) struct UserCounts {
    pub(super) open: usize,
    pub(super) jobs: usize,
}
