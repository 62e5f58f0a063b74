//! One client of `corral serve`: its jobs are a source of the shared engine, its results go
//! back on the same connection.
//!
//! Two threads serve a connection. The reader checks the peer, reads the optional hello, then
//! parses job lines and feeds them to the engine, never holding more than the policy's
//! `max_client_jobs` in the service at once (credit: it waits until results have been written
//! back), so a client that writes fast only fills its own socket buffer. The writer formats
//! results as they come and writes them, then, for a client that said hello, the summary line.
//! A write that fails (the client is gone) marks the source failed, and the engine drops what
//! it still has queued.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};

use super::state::{Client, Counts, Shared};
use crate::input::{InputFormat, JobParser, TaskGate};
use crate::output::{Echo, echo_of, format_result};
use crate::ports::{Feed, Intake, Sink, SourceError};
use crate::record::{
    ErrorKind, InputChunk, InputItem, JobError, JobResult, SourceId, TaskId, Work,
};
use crate::serve::policy::Peer;
use crate::wire::{Hello, Said};

/// Items handed to the engine at once, at most.
const FEED_CHUNK: usize = 1024;
/// Blocks of input one connection may hold (64 KiB each, more for a longer line).
const CONNECTION_BLOCKS: usize = 8;
/// How long a status request waits for the engine.
const STATUS_WAIT: Duration = Duration::from_secs(5);
/// Connections beyond `max_connections` that may be open for status requests.
const STATUS_ROOM: usize = 16;
/// How long, and how many bytes, a refused connection's input is read before it is closed:
/// closing with its lines unread could reset the connection before the client reads why.
const REFUSAL_DRAIN: Duration = Duration::from_millis(200);
const REFUSAL_DRAIN_BYTES: usize = 1 << 20;

/// Serves one connection to its end.
pub(super) fn serve(mut counted: Counted) {
    let shared = counted.shared.clone();
    let Ok(stream) = counted.stream.try_clone() else {
        return;
    };
    let refused = |peer: Option<&Peer>, reason: &'static str, why: &str, detail: &str| {
        shared
            .refusals
            .lock()
            .expect("never poisoned")
            .note(peer, reason, why, detail);
        refuse(&stream, why);
    };
    let peer = match &counted.peer {
        Ok(peer) => peer.clone(),
        Err(err) => {
            let detail = format!(" ({err})");
            refused(
                None,
                "no_identity",
                "corral cannot tell who you are (SO_PEERCRED failed)",
                &detail,
            );
            return;
        }
    };
    let policy = shared.policy();
    if let Err(why) = policy.admits(&peer) {
        refused(
            Some(&peer),
            "not_allowed",
            &why,
            &format!("; allowed: {}", policy.allowed()),
        );
        return;
    }
    // Connections of any kind, those yet to send their first line among them, are bounded
    // for each user, and for all, with room for status requests beside the job connections.
    let too_many_of_user = |peer: &Peer| {
        format!(
            "too many connections from uid {}: this corral service takes at most {} job connections from one user at once (--max-user-connections); try again later",
            peer.uid, policy.max_user_connections
        )
    };
    if counted.open > policy.max_user_connections + USER_STATUS_ROOM {
        refused(
            Some(&peer),
            "user_connections",
            &too_many_of_user(&peer),
            "",
        );
        return;
    }
    let open = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
    let _open = CountGuard(&shared.open);
    if open > policy.max_connections + STATUS_ROOM {
        refused(
            Some(&peer),
            "connections",
            "too many connections to this corral service; try again later",
            "",
        );
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    // The first line comes within a deadline: a connection that sends nothing, or half a
    // line, is not held.
    let wait = policy.first_line_timeout;
    if read_half.set_read_timeout(Some(wait)).is_err() {
        return;
    }
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut first = Vec::new();
    let limit = policy.max_line_bytes as u64 + 2;
    match (&mut reader).take(limit).read_until(b'\n', &mut first) {
        Ok(_) => {}
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            let why = format!(
                "no line within {}: closing the connection",
                humantime::format_duration(wait)
            );
            refused(Some(&peer), "first_line_timeout", &why, "");
            return;
        }
        Err(err) => {
            tracing::debug!("a client left before its first line: {err}");
            return;
        }
    }
    if reader.get_ref().set_read_timeout(None).is_err() {
        return;
    }
    let hello = match Hello::parse(first.trim_ascii_end()) {
        Ok(hello) => hello,
        Err(why) => {
            shared
                .refusals
                .lock()
                .expect("never poisoned")
                .count("bad_hello");
            refuse(&stream, &why);
            return;
        }
    };
    if hello == Some(Hello::Status) {
        answer_status(&stream, &shared);
        return;
    }
    // Status requests are short and not counted: a full service still answers them.
    if counted.runs_jobs(peer.uid) > policy.max_user_connections {
        refused(
            Some(&peer),
            "user_connections",
            &too_many_of_user(&peer),
            "",
        );
        return;
    }
    let connections = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
    let _count = CountGuard(&shared.connections);
    if connections > policy.max_connections {
        let why = format!(
            "too many connections: this corral service takes at most {} at once (--max-connections); try again later",
            policy.max_connections
        );
        refused(Some(&peer), "connections", &why, "");
        return;
    }

    if hello.is_some() {
        first.clear();
    }
    let jobs = Cursor::new(first).chain(reader);
    run_jobs(stream, jobs, hello.is_some(), peer, &shared);
}

/// Connections of any kind one user may hold beyond its job connections: room for status
/// requests, and for connections yet to send their first line.
const USER_STATUS_ROOM: usize = 2;

/// A connection just accepted, with its peer, counted for its user (as open, and once it
/// runs jobs as that too) while it lasts.
pub(crate) struct Counted {
    stream: UnixStream,
    shared: Arc<Shared>,
    peer: io::Result<Peer>,
    /// The user's open connections when this one was counted.
    open: usize,
    jobs: bool,
}

impl Counted {
    /// Counts `stream`'s peer's connection (done on the accepting thread, so that a user's
    /// connections are counted in the order they came).
    pub(crate) fn new(stream: UnixStream, shared: Arc<Shared>) -> Counted {
        let peer = Peer::of(&stream);
        let mut open = 0;
        if let Ok(peer) = &peer {
            let mut users = shared.per_user.lock().expect("never poisoned");
            let counts = users.entry(peer.uid).or_default();
            counts.open += 1;
            open = counts.open;
        }
        Counted {
            stream,
            shared,
            peer,
            open,
            jobs: false,
        }
    }

    /// Counts the connection as running jobs; returns the user's job connections now.
    fn runs_jobs(&mut self, uid: u32) -> usize {
        let mut users = self.shared.per_user.lock().expect("never poisoned");
        let counts = users.entry(uid).or_default();
        if !self.jobs {
            self.jobs = true;
            counts.jobs += 1;
        }
        counts.jobs
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Ok(peer) = &self.peer else { return };
        let mut users = self.shared.per_user.lock().expect("never poisoned");
        if let Some(counts) = users.get_mut(&peer.uid) {
            counts.open -= 1;
            counts.jobs -= usize::from(self.jobs);
            if counts.open == 0 {
                users.remove(&peer.uid);
            }
        }
    }
}

/// Decrements the connection count when the connection ends.
struct CountGuard<'a>(&'a AtomicUsize);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Says why, then closes; what the client sent meanwhile is read first (a little, briefly),
/// so that the close does not reset the connection before the client has read why.
fn refuse(mut stream: &UnixStream, why: &str) {
    let said = Said::Error {
        message: why.to_owned(),
    };
    let _ = stream.set_write_timeout(Some(REFUSAL_DRAIN));
    let _ = stream.write_all(&said.line());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + REFUSAL_DRAIN;
    let mut buf = [0u8; 16 * 1024];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn answer_status(mut stream: &UnixStream, shared: &Shared) {
    let said = match shared.status(STATUS_WAIT) {
        Some(status) => Said::Status(Box::new(status)),
        None => Said::Error {
            message: "the service's engine did not answer in time".into(),
        },
    };
    let _ = stream.write_all(&said.line());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn run_jobs(stream: UnixStream, jobs: impl Read, summary: bool, peer: Peer, shared: &Arc<Shared>) {
    let policy = shared.policy();
    let format = InputFormat {
        max_line_bytes: policy.max_line_bytes,
        max_blocks: CONNECTION_BLOCKS,
        ..shared.format.clone()
    };
    let counts = Arc::new(Counts::default());
    let (tx, rx) = unbounded::<Vec<JobResult>>();
    let sink = Box::new(ConnectionSink {
        tx,
        counts: counts.clone(),
    });
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    // Opened in id order: the id is taken and the source opened under one lock.
    let source = {
        let mut next = shared.next_source.lock().expect("never poisoned");
        let source = SourceId(*next);
        *next += 1;
        if shared.intake.send(Intake::Open { source, sink }).is_err() {
            drop(next);
            refuse(&stream, "the service is stopping");
            return;
        }
        source
    };
    shared.clients.lock().expect("never poisoned").insert(
        source,
        Client {
            uid: peer.uid,
            pid: peer.pid,
            since: Instant::now(),
            counts: counts.clone(),
        },
    );
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid,
        "client {} connected",
        source.0
    );
    let writer = {
        let counts = counts.clone();
        let shared = shared.clone();
        let echo = echo_of(&format);
        thread::Builder::new()
            .name(format!("corral-client-{}", source.0))
            .spawn(move || write_results(write_half, &rx, echo, &counts, summary, &shared))
            .expect("spawning a thread")
    };
    let parser = JobParser::new(format, shared.names.clone())
        .with_source(source)
        .with_task_gate(task_gate(shared.clone()));
    feed(jobs, parser, source, &counts, &policy, shared);
    let _ = writer.join();
    // Unblocks the reader of a client that is still writing when the service is done with it.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    shared
        .clients
        .lock()
        .expect("never poisoned")
        .remove(&source);
    shared.client_left(peer.uid, counts.written.load(Ordering::Acquire));
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid,
        "client {} done: {} results written",
        source.0,
        counts.written.load(Ordering::Acquire)
    );
}

/// Parses the client's job lines and hands them to the engine within the client's credit.
fn feed(
    jobs: impl Read,
    mut parser: JobParser,
    source: SourceId,
    counts: &Counts,
    policy: &crate::serve::policy::Policy,
    shared: &Shared,
) {
    let cap = policy.max_client_jobs;
    let chunk_len = FEED_CHUNK.min(cap as usize).max(1);
    let send = |feed: Feed| shared.intake.send(Intake::Feed { source, feed }).is_ok();
    let mut allowed: Vec<(TaskId, bool)> = Vec::new();
    let hand_over = |chunk: InputChunk| {
        let n = chunk.len() as u64;
        if !counts.wait_for_credit(n, cap) {
            return false;
        }
        counts.sent.fetch_add(n, Ordering::AcqRel);
        send(Feed::Jobs(chunk))
    };
    let read = parser.read_chunks(
        jobs,
        chunk_len,
        InputChunk::default,
        |item| check_task(item, &mut allowed, policy, shared),
        hand_over,
    );
    let ended = match read {
        Ok(true) => {
            counts.read_all.store(true, Ordering::Release);
            Some(Feed::Ended)
        }
        Ok(false) => None,
        // The client's own connection failed: what it sent still runs, but it will not see
        // the results, so they are not kept for it.
        Err(err) => Some(Feed::Failed(SourceError::Connection(err))),
    };
    if let Some(feed) = ended {
        send(feed);
    }
}

/// Task names one client may add to the service's table before the workers have said which
/// tasks they serve.
const CLIENT_NEW_NAMES: usize = 64;

/// What a client's task names must pass before they join the service's table of names, which
/// every client shares for the life of the service: a name the workers serve, or, before any
/// worker has said hello, one of the client's first few. Any other job gets its result at
/// once (`unknown_task`, as the scheduler would say it), so one client naming thousands of
/// tasks cannot fill the table for everyone.
fn task_gate(shared: Arc<Shared>) -> TaskGate {
    let new_names = AtomicUsize::new(0);
    TaskGate(Arc::new(move |name: &str| {
        if let Some(served) = shared.served() {
            if served.iter().any(|task| task == name) {
                return Ok(());
            }
            let served: Vec<&str> = served.iter().map(String::as_str).collect();
            return Err((
                ErrorKind::UnknownTask,
                corral_protocol::jobline::unknown_task_message(name, &served),
            ));
        }
        if new_names.fetch_add(1, Ordering::Relaxed) < CLIENT_NEW_NAMES {
            return Ok(());
        }
        Err((
            ErrorKind::BadInput,
            format!(
                "more than {CLIENT_NEW_NAMES} distinct task names from one client before the workers were up; is \"task\" the right field?"
            ),
        ))
    }))
}

/// A job naming a task the policy does not allow gets its `unknown_task` result instead.
fn check_task(
    item: InputItem,
    allowed: &mut Vec<(TaskId, bool)>,
    policy: &crate::serve::policy::Policy,
    shared: &Shared,
) -> InputItem {
    let InputItem::Job(job) = item else {
        return item;
    };
    if policy.tasks.is_none() {
        return InputItem::Job(job);
    }
    let task = match &job.work {
        Work::One(one) => one.task,
        // A connection's lines are read one by one (a block would pass them unchecked).
        Work::Lines(_) => unreachable!("a service reads each job line of its clients"),
    };
    let ok = match allowed.iter().find(|(seen, _)| *seen == task) {
        Some(&(_, ok)) => ok,
        None => {
            let ok = policy.allows_task(&shared.names.name(task));
            allowed.push((task, ok));
            ok
        }
    };
    if ok {
        return InputItem::Job(job);
    }
    let message = format!(
        "task {:?} is not allowed by this corral service (--allow-task, or allow_task in its config file)",
        &*shared.names.name(task)
    );
    let error = JobError::new(ErrorKind::UnknownTask, message);
    InputItem::Rejected(Box::new(job.into_result(0, None, Err(error))))
}

/// Where the engine hands a connection's results.
struct ConnectionSink {
    tx: Sender<Vec<JobResult>>,
    counts: Arc<Counts>,
}

impl Sink for ConnectionSink {
    fn deliver(&mut self, results: Vec<JobResult>) {
        self.counts
            .backlog
            .fetch_add(results.len(), Ordering::AcqRel);
        let _ = self.tx.send(results);
    }

    /// None counted: a client's results waiting to be written are bounded by its credit, and
    /// the engine's bound on the sum would let one client that stops reading hold back the
    /// input of every other.
    fn backlog(&self) -> usize {
        0
    }

    fn failed(&self) -> bool {
        self.counts.gone()
    }
}

/// Writes results until the engine drops the sink (the source is answered, or the service
/// stops), then the summary line if the client asked for one.
fn write_results(
    stream: UnixStream,
    rx: &Receiver<Vec<JobResult>>,
    echo: Echo,
    counts: &Counts,
    summary: bool,
    shared: &Shared,
) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, stream);
    let mut line = Vec::with_capacity(256);
    let mut write = |results: Vec<JobResult>, out: &mut io::BufWriter<UnixStream>| {
        let n = results.len();
        for result in &results {
            line.clear();
            format_result(result, echo, &mut line);
            if out.write_all(&line).is_err() {
                return false;
            }
            let tally = if result.is_ok() {
                &counts.ok
            } else {
                &counts.failed
            };
            tally.fetch_add(1, Ordering::Relaxed);
        }
        counts.backlog.fetch_sub(n, Ordering::AcqRel);
        counts.written.fetch_add(n as u64, Ordering::AcqRel);
        true
    };
    let mut healthy = true;
    while let Ok(results) = rx.recv() {
        healthy = write(results, &mut out);
        while healthy && let Ok(more) = rx.try_recv() {
            healthy = write(more, &mut out);
        }
        healthy = healthy && out.flush().is_ok();
        counts.wake();
        if !healthy {
            tracing::info!("a client is gone: dropping its jobs not started yet");
            break;
        }
    }
    counts.gone.store(true, Ordering::Release);
    counts.wake();
    // A reader still waiting for lines from this client stops: the service is done with it.
    let _ = out.get_ref().shutdown(std::net::Shutdown::Read);
    if !healthy {
        return;
    }
    if summary {
        let written = counts.written.load(Ordering::Acquire);
        let read = counts.sent.load(Ordering::Acquire);
        let said = if counts.read_all.load(Ordering::Acquire) && written == read {
            Said::End {
                results: written,
                ok: counts.ok.load(Ordering::Relaxed),
                failed: counts.failed.load(Ordering::Relaxed),
            }
        } else {
            Said::Stopped {
                results: written,
                read,
                reason: shared.stop_reason(),
            }
        };
        let _ = out.write_all(&said.line());
    }
    let _ = out.flush();
}
