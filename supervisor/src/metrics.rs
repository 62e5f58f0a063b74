//! `--metrics ADDR`: the counts an operator alerts on, in Prometheus' (OpenMetrics) text
//! format on a loopback TCP address or a Unix socket, encoded with `prometheus-client`.
//!
//! Counters of jobs and worker lives are kept here, updated once per engine step from the
//! scheduler's notes ([`JobNote`]) and the pool's events; what is a state rather than a count
//! (queue, jobs in flight, workers by state, clients, refusals) is asked of the mode at each
//! scrape ([`Live`]), within a deadline. Task names are labels only up to [`MAX_TASK_LABELS`]
//! of them; the rest count as `other`, so no client can grow the label set without bound.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use corral_protocol::DURATION_BUCKET_NANOS;

use crate::notes::{Counted, JobNote};
use crate::record::{ErrorKind, TaskId, TaskNames};

/// Task names given labels of their own; later ones count as `other`.
pub const MAX_TASK_LABELS: usize = 32;
/// Users given labels of their own in the per-client counts; later ones count as `other`.
pub const MAX_USER_LABELS: usize = 64;
/// Upper bounds of the job-duration histogram's buckets, in seconds (the last is `+Inf`):
/// [`DURATION_BUCKET_NANOS`], which the workers count blocks of lines in.
const BUCKETS: [f64; 14] = [
    0.000_1,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
    300.0,
    f64::MAX,
];
/// How long a scrape's connection may take to send its request and read the answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);
/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Where `--metrics` listens: `HOST:PORT`, or a Unix socket's path (it has a `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(addr) => write!(f, "{addr}"),
            MetricsAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<MetricsAddr, String> {
        if text.contains('/') {
            return Ok(MetricsAddr::Unix(PathBuf::from(text)));
        }
        text.parse().map(MetricsAddr::Tcp).map_err(|_| {
            format!(
                "{text:?} is neither HOST:PORT (127.0.0.1:9464) nor a socket path (./metrics.sock)"
            )
        })
    }
}

/// What is asked of the mode at each scrape: its state now.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs received and not answered yet.
    pub in_flight: u64,
    /// Workers by state (`starting`, `idle`, `busy`...).
    pub workers: Vec<(&'static str, u64)>,
    /// Workers replaced after dying, and recycled, since the start.
    pub restarts: u64,
    /// Workers recycled since the start.
    pub recycled: u64,
    /// Clients connected (a service only).
    pub clients: Option<u64>,
    /// Connections refused, by reason (a service only).
    pub refusals: Vec<(&'static str, u64)>,
    /// Result lines written back, by user (a service only).
    pub client_jobs: Vec<(u32, u64)>,
}

/// Outcomes: `ok`, then each error kind.
const OUTCOMES: [Option<ErrorKind>; 9] = [
    None,
    Some(ErrorKind::TaskError),
    Some(ErrorKind::Panic),
    Some(ErrorKind::Crashed),
    Some(ErrorKind::Timeout),
    Some(ErrorKind::BadInput),
    Some(ErrorKind::UnknownTask),
    Some(ErrorKind::TooLarge),
    Some(ErrorKind::Cancelled),
];

/// The place of `failed` in [`OUTCOMES`].
fn outcome_index(failed: Option<ErrorKind>) -> usize {
    match failed {
        None => 0,
        Some(ErrorKind::TaskError) => 1,
        Some(ErrorKind::Panic) => 2,
        Some(ErrorKind::Crashed) => 3,
        Some(ErrorKind::Timeout) => 4,
        Some(ErrorKind::BadInput) => 5,
        Some(ErrorKind::UnknownTask) => 6,
        Some(ErrorKind::TooLarge) => 7,
        Some(ErrorKind::Cancelled) => 8,
    }
}

/// A job-duration histogram.
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    nanos: u128,
    count: u64,
}

impl Histogram {
    fn add(&mut self, lines: &Counted) {
        for (mine, theirs) in self.counts.iter_mut().zip(lines.buckets) {
            *mine += theirs;
        }
        self.nanos += u128::from(lines.nanos);
        self.count += lines.count;
    }

    fn observe(&mut self, nanos: u64) {
        let at = DURATION_BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[at] += 1;
        self.nanos += u128::from(nanos);
        self.count += 1;
    }
}

/// What is counted of the jobs of one task label.
#[derive(Debug, Clone, Default)]
struct TaskCounts {
    /// Jobs by outcome, as [`OUTCOMES`] orders them.
    jobs: [u64; OUTCOMES.len()],
    durations: Histogram,
}

/// The counters.
#[derive(Debug, Default)]
struct Counts {
    /// Label of each task number seen: an index into `labels`.
    label_of: Vec<Option<usize>>,
    /// Task labels; the first is the empty one, of lines that named no task they could run.
    labels: Vec<String>,
    /// By label.
    tasks: Vec<TaskCounts>,
    worker_starts: u64,
    start_failures: HashMap<&'static str, u64>,
    worker_exits: HashMap<String, u64>,
}

impl Counts {
    /// The label of `task`, given one now if it has none.
    fn label(&mut self, names: &TaskNames, task: Option<TaskId>) -> usize {
        if self.labels.is_empty() {
            self.labels.push(String::new());
            self.tasks.push(TaskCounts::default());
        }
        let Some(task) = task else { return 0 };
        let at = task.index();
        if let Some(Some(label)) = self.label_of.get(at) {
            return *label;
        }
        let name = if self.labels.len() <= MAX_TASK_LABELS {
            names.name(task).to_string()
        } else {
            "other".to_owned()
        };
        let label = match self.labels.iter().position(|l| *l == name) {
            Some(label) => label,
            None => {
                self.labels.push(name);
                self.tasks.push(TaskCounts::default());
                self.labels.len() - 1
            }
        };
        if self.label_of.len() <= at {
            self.label_of.resize(at + 1, None);
        }
        self.label_of[at] = Some(label);
        label
    }
}

/// The metrics of one run or service.
pub struct Metrics {
    names: TaskNames,
    counts: Mutex<Counts>,
    live: Box<dyn Fn() -> Option<Live> + Send + Sync>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics whose task numbers are `names`', and whose state `live` tells at each scrape
    /// (`None` when it cannot within its deadline: the scrape then has only the counters).
    pub fn new(names: TaskNames, live: Box<dyn Fn() -> Option<Live> + Send + Sync>) -> Metrics {
        Metrics {
            names,
            counts: Mutex::new(Counts::default()),
            live,
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the jobs of `notes`, and the lines of blocks `counted`.
    pub fn observe(&self, notes: &[JobNote], counted: &[Counted]) {
        let mut counts = self.counts();
        for lines in counted {
            let label = counts.label(&self.names, lines.task);
            let task = &mut counts.tasks[label];
            task.jobs[outcome_index(lines.failed)] += lines.count;
            if lines.task.is_some() {
                task.durations.add(lines);
            }
        }
        // Jobs mostly name the task the one before named.
        let mut last: Option<(Option<TaskId>, usize)> = None;
        for note in notes {
            let label = match last {
                Some((task, label)) if task == note.task => label,
                _ => {
                    let label = counts.label(&self.names, note.task);
                    last = Some((note.task, label));
                    label
                }
            };
            let task = &mut counts.tasks[label];
            task.jobs[outcome_index(note.failed)] += 1;
            if note.started.is_some() {
                task.durations.observe(note.nanos);
            }
        }
    }

    /// Counts a worker that said hello.
    pub fn worker_started(&self) {
        self.counts().worker_starts += 1;
    }

    /// Counts a worker that could not start, by `cause` (`transient`, `fatal`...).
    pub fn start_failed(&self, cause: &'static str) {
        *self.counts().start_failures.entry(cause).or_default() += 1;
    }

    /// Counts a worker that ended, by `cause` (`status_0`, `status_1`, `SIGKILL`...).
    pub fn worker_exited(&self, cause: String) {
        *self.counts().worker_exits.entry(cause).or_default() += 1;
    }

    /// The metrics now, in the OpenMetrics text format.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            live: (self.live)(),
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// One scrape: the counters, and the state the mode told.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    live: Option<Live>,
}

/// Writes a metric family of one type, each of `samples` with its labels.
fn family<'a, M: EncodeMetric + 'a>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, unit): (&str, &str, Option<&Unit>),
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'a str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_some_and(|(labels, _)| labels.is_empty()) {
        // One sample, with no labels.
        let (_, metric) = samples.next().expect("peeked");
        return metric.encode(family);
    }
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counts = self.metrics.counts();
        family(
            &mut encoder,
            (
                "corral_build_info",
                "The corral that runs, by version (always 1).",
                None,
            ),
            MetricType::Gauge,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
                ConstGauge::new(1),
            )],
        )?;
        let mut by_name: Vec<(&String, &TaskCounts)> =
            counts.labels.iter().zip(&counts.tasks).collect();
        by_name.sort_by_key(|(name, _)| *name);
        let jobs = by_name.iter().flat_map(|(name, task)| {
            OUTCOMES
                .iter()
                .zip(task.jobs)
                .filter(|(_, n)| *n > 0)
                .map(|(outcome, n)| {
                    let outcome = outcome.map_or("ok", ErrorKind::as_str);
                    let labels = vec![("task", (*name).clone()), ("outcome", outcome.to_owned())];
                    (labels, ConstCounter::new(n))
                })
        });
        family(
            &mut encoder,
            (
                "corral_jobs",
                "Jobs finished, by task and outcome (ok or the error kind).",
                None,
            ),
            MetricType::Counter,
            jobs,
        )?;
        let mut histograms = encoder.encode_descriptor(
            "corral_job_duration",
            "Time jobs took in their workers, by task (their last attempt).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (name, task) in &by_name {
            let histogram = &task.durations;
            if histogram.count == 0 {
                continue;
            }
            let labels = [("task", (*name).clone())];
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .zip(histogram.counts.iter().copied())
                .collect();
            histograms
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    histogram.nanos as f64 / 1e9,
                    histogram.count,
                    &buckets,
                    None,
                )?;
        }
        family(
            &mut encoder,
            (
                "corral_worker_starts",
                "Workers that started and said hello.",
                None,
            ),
            MetricType::Counter,
            [(vec![], ConstCounter::new(counts.worker_starts))],
        )?;
        let mut failures: Vec<_> = counts.start_failures.iter().collect();
        failures.sort();
        family(
            &mut encoder,
            (
                "corral_worker_start_failures",
                "Workers that could not start, by cause (transient, fatal, killed).",
                None,
            ),
            MetricType::Counter,
            failures
                .into_iter()
                .map(|(cause, &n)| (vec![("cause", (*cause).to_owned())], ConstCounter::new(n))),
        )?;
        let mut exits: Vec<_> = counts.worker_exits.iter().collect();
        exits.sort();
        family(
            &mut encoder,
            (
                "corral_worker_exits",
                "Workers that ended, by cause: status_N for an exit status, or the signal.",
                None,
            ),
            MetricType::Counter,
            exits
                .into_iter()
                .map(|(cause, &n)| (vec![("cause", cause.clone())], ConstCounter::new(n))),
        )?;
        drop(counts);
        let Some(live) = &self.live else {
            return Ok(());
        };
        family(
            &mut encoder,
            (
                "corral_worker_restarts",
                "Workers replaced after dying.",
                None,
            ),
            MetricType::Counter,
            [(vec![], ConstCounter::new(live.restarts))],
        )?;
        family(
            &mut encoder,
            (
                "corral_worker_recycles",
                "Workers recycled (--max-jobs-per-worker, --max-rss).",
                None,
            ),
            MetricType::Counter,
            [(vec![], ConstCounter::new(live.recycled))],
        )?;
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        family(
            &mut encoder,
            ("corral_queued_jobs", "Jobs waiting for a worker.", None),
            MetricType::Gauge,
            [(vec![], gauge(live.queued))],
        )?;
        family(
            &mut encoder,
            (
                "corral_jobs_in_flight",
                "Jobs received and not answered yet.",
                None,
            ),
            MetricType::Gauge,
            [(vec![], gauge(live.in_flight))],
        )?;
        family(
            &mut encoder,
            ("corral_workers", "Workers by state.", None),
            MetricType::Gauge,
            live.workers
                .iter()
                .map(|&(state, n)| (vec![("state", state.to_owned())], gauge(n))),
        )?;
        if let Some(clients) = live.clients {
            family(
                &mut encoder,
                ("corral_clients", "Clients connected.", None),
                MetricType::Gauge,
                [(vec![], gauge(clients))],
            )?;
            family(
                &mut encoder,
                ("corral_refusals", "Connections refused, by reason.", None),
                MetricType::Counter,
                live.refusals.iter().map(|&(reason, n)| {
                    (vec![("reason", reason.to_owned())], ConstCounter::new(n))
                }),
            )?;
            family(
                &mut encoder,
                (
                    "corral_client_results",
                    "Result lines written back to clients, by the client's uid.",
                    None,
                ),
                MetricType::Counter,
                live.client_jobs.iter().map(|&(uid, n)| {
                    let uid = if uid == u32::MAX {
                        "other".to_owned()
                    } else {
                        uid.to_string()
                    };
                    (vec![("uid", uid)], ConstCounter::new(n))
                }),
            )?;
        }
        Ok(())
    }
}

/// A bound `--metrics` address, not answering yet.
#[derive(Debug)]
pub enum Listener {
    /// On TCP.
    Tcp(TcpListener),
    /// On a Unix socket.
    Unix(UnixListener),
}

impl Listener {
    /// Binds `addr`; a Unix socket file left there by an earlier run is replaced, any other
    /// file is not.
    ///
    /// # Errors
    ///
    /// If `addr` cannot be listened on.
    pub fn bind(addr: &MetricsAddr) -> io::Result<Listener> {
        match addr {
            MetricsAddr::Tcp(addr) => TcpListener::bind(addr).map(Listener::Tcp),
            MetricsAddr::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
                {
                    std::fs::remove_file(path)?;
                }
                UnixListener::bind(path).map(Listener::Unix)
            }
        }
    }
}

/// Answers each scrape on `listener` with `metrics`, on a thread of its own, one connection at
/// a time, each within [`CONNECTION_DEADLINE`]: a client that stalls delays the next scrape
/// by that much at most, and can reach nothing else.
pub fn serve(listener: Listener, metrics: Arc<Metrics>) {
    let deadline = Some(CONNECTION_DEADLINE);
    let run = move || match listener {
        Listener::Tcp(listener) => answer_each(listener.incoming(), &metrics, |s| {
            s.set_read_timeout(deadline)
                .and_then(|()| s.set_write_timeout(deadline))
        }),
        Listener::Unix(listener) => answer_each(listener.incoming(), &metrics, |s| {
            s.set_read_timeout(deadline)
                .and_then(|()| s.set_write_timeout(deadline))
        }),
    };
    thread::Builder::new()
        .name("corral-metrics".into())
        .spawn(run)
        .expect("spawning a thread");
}

/// Answers each of `incoming` in turn, once `bound` has set its deadlines.
fn answer_each<S: Read + Write>(
    incoming: impl Iterator<Item = io::Result<S>>,
    metrics: &Arc<Metrics>,
    bound: impl Fn(&S) -> io::Result<()>,
) {
    for stream in incoming.flatten() {
        if bound(&stream).is_ok() {
            answer(stream, metrics);
        }
    }
}

/// Answers one HTTP request: `GET /metrics` (or `/`) with the metrics, anything else with an
/// error status.
fn answer<S: Read + Write>(mut stream: S, metrics: &Arc<Metrics>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
            return;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.trim_ascii().split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    let _ = match (method, path) {
        (Some(b"GET"), Some(b"/metrics" | b"/")) => respond(
            &mut stream,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &metrics.render(),
        ),
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "text/plain", "see /metrics\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        ),
    };
}

fn respond(stream: &mut impl Write, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
