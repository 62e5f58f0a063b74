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
use std::os::unix::net::{UnixListener, UnixStream};
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

use crate::notes::JobNote;
use crate::record::{TaskId, TaskNames};

/// Task names given labels of their own; later ones count as `other`.
pub const MAX_TASK_LABELS: usize = 32;
/// Users given labels of their own in the per-client counts; later ones count as `other`.
pub const MAX_USER_LABELS: usize = 64;
/// Upper bounds of the job-duration histogram's buckets, in seconds (the last is `+Inf`).
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

/// A job-duration histogram.
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let at = BUCKETS.partition_point(|&bound| bound < seconds);
        self.counts[at.min(BUCKETS.len() - 1)] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// The counters.
#[derive(Debug, Default)]
struct Counts {
    /// Label of each task number seen: an index into `labels`.
    label_of: Vec<Option<usize>>,
    labels: Vec<String>,
    /// Jobs by (task label, outcome).
    jobs: HashMap<(usize, &'static str), u64>,
    /// Durations by task label.
    durations: HashMap<usize, Histogram>,
    worker_starts: u64,
    start_failures: HashMap<&'static str, u64>,
    worker_exits: HashMap<String, u64>,
}

/// The label index for jobs with no task.
const NO_TASK: usize = usize::MAX;

impl Counts {
    fn label(&mut self, names: &TaskNames, task: Option<TaskId>) -> usize {
        let Some(task) = task else { return NO_TASK };
        let at = task.index();
        if let Some(Some(label)) = self.label_of.get(at) {
            return *label;
        }
        let name = names.name(task);
        let label = if self.labels.len() < MAX_TASK_LABELS {
            self.labels.push(name.to_string());
            self.labels.len() - 1
        } else {
            match self.labels.iter().position(|l| l == "other") {
                Some(other) => other,
                None => {
                    self.labels.push("other".into());
                    self.labels.len() - 1
                }
            }
        };
        if self.label_of.len() <= at {
            self.label_of.resize(at + 1, None);
        }
        self.label_of[at] = Some(label);
        label
    }

    fn label_name(&self, label: usize) -> &str {
        self.labels.get(label).map_or("", String::as_str)
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

    /// Counts the jobs of `notes`.
    pub fn observe(&self, notes: &[JobNote]) {
        let mut counts = self.counts();
        for note in notes {
            let label = counts.label(&self.names, note.task);
            *counts.jobs.entry((label, note.outcome())).or_default() += 1;
            if note.started.is_some() {
                counts
                    .durations
                    .entry(label)
                    .or_default()
                    .observe(note.nanos as f64 / 1e9);
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
        let mut jobs: Vec<_> = counts.jobs.iter().collect();
        jobs.sort_by_key(|((label, outcome), _)| (counts.label_name(*label), *outcome));
        family(
            &mut encoder,
            (
                "corral_jobs",
                "Jobs finished, by task and outcome (ok or the error kind).",
                None,
            ),
            MetricType::Counter,
            jobs.into_iter().map(|(&(label, outcome), &n)| {
                let labels = vec![
                    ("task", counts.label_name(label).to_owned()),
                    ("outcome", outcome.to_owned()),
                ];
                (labels, ConstCounter::new(n))
            }),
        )?;
        let mut durations: Vec<_> = counts.durations.iter().collect();
        durations.sort_by_key(|(label, _)| counts.label_name(**label));
        let mut histograms = encoder.encode_descriptor(
            "corral_job_duration",
            "Time jobs took in their workers, by task (their last attempt).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (&label, histogram) in durations {
            let labels = [("task", counts.label_name(label).to_owned())];
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .zip(histogram.counts.iter().copied())
                .collect();
            histograms
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(histogram.sum, histogram.count, &buckets, None)?;
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
    match listener {
        Listener::Tcp(listener) => {
            spawn(move || {
                for stream in listener.incoming().flatten() {
                    let deadline = Some(CONNECTION_DEADLINE);
                    if stream.set_read_timeout(deadline).is_ok()
                        && stream.set_write_timeout(deadline).is_ok()
                    {
                        answer(stream, &metrics);
                    }
                }
            });
        }
        Listener::Unix(listener) => {
            spawn(move || {
                for stream in listener.incoming().flatten() {
                    let deadline = Some(CONNECTION_DEADLINE);
                    if stream.set_read_timeout(deadline).is_ok()
                        && stream.set_write_timeout(deadline).is_ok()
                    {
                        answer::<UnixStream>(stream, &metrics);
                    }
                }
            });
        }
    }
}

fn spawn(run: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name("corral-metrics".into())
        .spawn(run)
        .expect("spawning a thread");
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
