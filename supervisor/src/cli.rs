//! Command-line definitions of `corral` (clap derive; doc comments are the help text). Only
//! definitions live here: turning them into a run is `main.rs`'s job.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scheduler::HaltRule;

/// corral: run batches of CPU jobs on a supervised pool of worker processes.
///
/// Jobs are JSON lines in, results are JSON lines out, exactly one result per job line, in the
/// order jobs complete. Workers that crash are replaced; the jobs they held are retried or
/// failed, never lost.
#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on stderr, and no summary line.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CORRAL_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
// Parsed once per process: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every job of the input files (or stdin) and write one result line per job.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Run as a service on a Unix socket: one supervised pool shared by every client, which
    /// submit jobs with `corral submit` (or write job lines to the socket).
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Run job files on a `corral serve` service: same input, output and exit statuses as
    /// `corral run`.
    #[command(after_help = SUBMIT_EXAMPLES)]
    Submit(SubmitArgs),
    /// Show a `corral serve` service's workers, queue and clients.
    Status(StatusArgs),
    /// Merge the results of every shard of a run: checks that each job of the input has
    /// exactly one result, writes each once, and reports the missing and the duplicated.
    #[command(after_help = MERGE_EXAMPLES)]
    Merge(MergeArgs),
    /// Make one HTML page of a run from its joblog (--joblog, or GNU parallel's): the jobs on a
    /// timeline, throughput, the distribution of job times, outcomes, the slowest jobs.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Write the man pages and shell completions under DIR (DIR/man, DIR/completions).
    #[command(hide = true)]
    Generate {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Internal: one pool for a library that talks to it on standard input and output, many
    /// calls at once, each a source of its own (Python's corral.Pool; see `corral::mux`).
    #[command(hide = true)]
    Mux(MuxArgs),
    /// Internal: the keeper process a run starts (see `corral::keeper`).
    #[command(hide = true)]
    Keeper,
    /// Internal: the built-in worker, for an installation without `corral-worker` beside
    /// `corral` (a Python wheel ships the one binary).
    #[command(hide = true)]
    Worker,
}

const RUN_EXAMPLES: &str = "\
Job lines:
  {\"id\": 17, \"task\": \"sum_squares\", \"input\": [1, 2, 3], \"meta\": {\"any\": \"json\"}}
  id defaults to the line number, task to --task, input to null; meta is echoed back.

Result lines:
  {\"id\":17,\"ok\":true,\"output\":14,\"attempts\":1,\"worker\":4242,\"ms\":0.008,\"meta\":{\"any\":\"json\"}}
  {\"id\":18,\"ok\":false,\"error\":{\"kind\":\"crashed\",\"signal\":\"SIGSEGV\",\"message\":\"...\"},\"attempts\":3}
  {\"line\":19,\"ok\":false,\"error\":{\"kind\":\"bad_input\",\"message\":\"...\"}}
  Error kinds: task_error, panic, crashed, timeout, bad_input, unknown_task, too_large.

Built-in tasks (the default worker; --worker or --worker-cmd brings your own):
  sum_squares  [1, 2, 3] -> 14: the sum of the squares of integers
  primes       1000 -> 168: how many primes are below N
  sha256       \"path\" or {\"text\": \"...\"} -> the SHA-256 of the file or text, as hex
  spin         25 -> 25: burns that many milliseconds of CPU time
  log          {\"message\": \"...\", \"priority\": 6} -> null: writes a line to the log
  exec         with --exec: runs the command on the job's line or input

Examples:
  corral run jobs.jsonl > results.jsonl
  generate-jobs | corral run -j 8 --timeout 30s | post-process
  corral run --task primes jobs.jsonl -o results.jsonl
  find . -name '*.png' | corral run --lines --task sha256
  corral run --worker target/release/my-worker --retries 0 jobs.jsonl
  corral run --worker-cmd 'python3 my_worker.py' jobs.jsonl
  ls *.wav | corral run --lines --exec 'flac -s {}' --timeout 5m

Stopping: the first SIGINT/SIGTERM/SIGHUP stops reading input and lets the batches in
flight finish (at most --grace); a second one kills the workers at once. Jobs that did not
run have no result line: run again with -o FILE --resume to finish them.

Exit status: 0 every job succeeded; 1 some jobs failed (see their result lines), or
--halt stopped the run; 2 usage or configuration error (bad flag, unreadable input, worker
binary missing or failing at start-up, workers dying beyond the restart budget);
128+N stopped by signal N (130 for SIGINT, 143 for SIGTERM).";

const SERVE_EXAMPLES: &str = "\
Examples:
  corral serve --socket /tmp/corral.sock -j 8
  corral serve --config /etc/corral/corral.toml      (socket passed by systemd)
  systemd-socket-activate -l /tmp/corral.sock corral serve

Who may connect: the service's own user, root, and --allow-uid / --allow-gid (checked with
SO_PEERCRED; others are refused with a message and logged, at most once a second). Each
connection sends its first line within --first-line-timeout (10 s) or is closed; one user holds at most
--max-user-connections at once. What may run: every task the
workers serve, or only --allow-task; jobs of the `exec` task never run on a service.

Signals: SIGTERM or SIGINT stops taking jobs and lets the batches in flight finish (at most
--grace); clients then get a `stopped` line and can finish with `corral submit --resume`.
SIGHUP reads --config again (users, tasks, limits, workers) without dropping jobs.

Config file (TOML, every key optional):
  workers = 4
  allow_uid = [1000]
  allow_gid = [100]
  allow_task = [\"sum_squares\"]
  max_job_bytes = \"1MiB\"
  max_client_jobs = 4096
  max_connections = 256
  max_user_connections = 64
  first_line_timeout = \"10s\"";

const SUBMIT_EXAMPLES: &str = "\
Examples:
  corral submit jobs.jsonl > results.jsonl
  corral submit jobs.jsonl -o results.jsonl --resume
  generate-jobs | corral submit --socket /tmp/corral.sock | post-process

Exit status: as corral run (0 every job succeeded, 1 some failed, 2 usage error or refused by
the service), and 75 when the service is not there or stopped before every job had its
result: run again with -o FILE --resume to finish.";

const MERGE_EXAMPLES: &str = "\
Examples:
  corral merge --jobs jobs.jsonl results.*.jsonl > all.jsonl
  corral merge --jobs part1.jsonl --jobs part2.jsonl shard-*/results.jsonl -o all.jsonl
  corral merge --lines --jobs files.txt shard-*.jsonl -o all.jsonl    (a run of --lines)

Exit status: 0 every job has exactly one result; 1 some jobs have none, or more than one, or
results answer no job of the input (each kind is counted on stderr, with the first few line
numbers); 2 usage error or unreadable file.";

const REPORT_EXAMPLES: &str = "\
Examples:
  corral run jobs.jsonl -o results.jsonl --joblog run.joblog --stats run.json
  corral report run.joblog --stats run.json -o report.html
  parallel --joblog p.joblog gzip ::: *.log && corral report p.joblog -o report.html

The page stands alone (no script, nothing fetched) and stays small whatever the number of
jobs: past 2,000 jobs the timeline shows how many workers were busy rather than each job.
The joblog is read twice, never held in memory.";

/// Options of `corral report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's joblog (`corral run --joblog FILE`, or GNU parallel's `--joblog`).
    #[arg(value_name = "JOBLOG")]
    pub joblog: PathBuf,

    /// The run's `--stats` file, for failures by kind and restarts.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,

    /// Write the page here instead of standard output.
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
}

/// Options of `corral merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The job files of the run, in the order it read them (line numbers count across them).
    #[arg(long = "jobs", value_name = "FILE", required = true)]
    pub jobs: Vec<PathBuf>,

    /// The shards' result files.
    #[arg(value_name = "RESULTS", required = true)]
    pub results: Vec<PathBuf>,

    /// Write the merged results here instead of standard output.
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// The run's --max-job-bytes: a longer job line got a `too_large` result by its line
    /// number, whatever id it holds.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_job_size)]
    pub max_job_bytes: u64,

    /// The run had --lines: every line but a blank one was a job, its id its line number.
    #[arg(long)]
    pub lines: bool,
}

/// Where clients find the service unless told.
pub const DEFAULT_SOCKET: &str = "/run/corral.sock";

/// Options of `corral serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen on this socket file (created with mode 0660) [default: the socket systemd
    /// passes].
    #[arg(long, value_name = "PATH", help_heading = "Service")]
    pub socket: Option<PathBuf>,

    /// Read users, tasks, limits and workers from this TOML file, and again on SIGHUP.
    #[arg(long, value_name = "FILE", help_heading = "Service")]
    pub config: Option<PathBuf>,

    /// Also let this user connect (repeatable); the service's own user and root always may.
    #[arg(long, value_name = "UID", help_heading = "Service")]
    pub allow_uid: Vec<u32>,

    /// Also let members of this group connect (repeatable).
    #[arg(long, value_name = "GID", help_heading = "Service")]
    pub allow_gid: Vec<u32>,

    /// Only run jobs of this task (repeatable) [default: every task of the workers].
    #[arg(long, value_name = "NAME", help_heading = "Service")]
    pub allow_task: Vec<String>,

    /// Jobs one client may have in the service at once, queued or running; past it the service
    /// reads no more of its lines until results have gone back [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Service")]
    pub max_client_jobs: Option<u64>,

    /// Connections at once; more are refused with a message [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Service")]
    pub max_connections: Option<u64>,

    /// Connections one user may hold at once, so that no user can take them all
    /// [default: a quarter of --max-connections].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Service")]
    pub max_user_connections: Option<u64>,

    /// How long a connection may take to send its first line (a hello, a status request, a
    /// job); one that sends nothing, or half a line, is then closed [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, help_heading = "Service")]
    pub first_line_timeout: Option<Duration>,

    /// Longest job line accepted; a longer one gets a `too_large` result [default: 1MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_job_size, help_heading = "Service")]
    pub max_job_bytes: Option<u64>,

    /// Serve Prometheus metrics on this address (HOST:PORT, or a Unix socket's path), at
    /// /metrics: corral_jobs_total{task,outcome}, corral_job_duration_seconds{task},
    /// corral_queued_jobs, corral_jobs_in_flight, corral_workers{state},
    /// corral_worker_starts_total, corral_worker_start_failures_total{cause},
    /// corral_worker_exits_total{cause}, corral_worker_restarts_total, corral_clients,
    /// corral_refusals_total{reason}, corral_client_results_total{uid}, corral_build_info.
    #[arg(long, value_name = "ADDR", help_heading = "Service")]
    pub metrics: Option<crate::metrics::MetricsAddr>,

    /// The workers and how they are supervised.
    #[command(flatten)]
    pub pool: PoolArgs,
}

/// Options of `corral submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Job files, sent in order; none or `-` means standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// The service's socket.
    #[arg(long, value_name = "PATH", env = "CORRAL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Write results to this file instead of standard output (it is truncated, unless
    /// --resume).
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Skip the jobs that already have a result in the -o file and append the rest: after a
    /// service stopped or restarted, this finishes the job file. Ids must be unique.
    #[arg(long, requires = "output")]
    pub resume: bool,
}

/// Options of `corral status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The service's socket.
    #[arg(long, value_name = "PATH", env = "CORRAL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Print the state as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Options of `corral mux`.
#[derive(Debug, Args)]
pub struct MuxArgs {
    /// Longest job line accepted; a longer one gets a `too_large` result.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_job_size)]
    pub max_job_bytes: u64,

    /// End at once, as if killed, when the process that started corral is gone.
    #[arg(long)]
    pub exit_with_parent: bool,

    /// With --exit-with-parent: a directory of the client's (its files for the workers) that
    /// corral removes when the client is gone, as nobody else is left to.
    #[arg(long, value_name = "DIR", requires = "exit_with_parent")]
    pub scratch: Option<PathBuf>,

    /// The workers and how they are supervised.
    #[command(flatten)]
    pub pool: PoolArgs,
}

/// Options of `corral run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job files, read in order; none or `-` means standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// The workers and how they are supervised (first in --help: -j is the option most runs
    /// want).
    #[command(flatten)]
    pub pool: PoolArgs,

    /// Write results to this file instead of standard output (it is truncated, unless
    /// --resume).
    #[arg(short, long, value_name = "OUT", help_heading = "Output")]
    pub output: Option<PathBuf>,

    /// Skip the jobs that already have a result in the -o file and append the rest. A torn
    /// last line (from a crash) is dropped and its job run again. Ids must be unique.
    #[arg(long, requires = "output", help_heading = "Output")]
    pub resume: bool,

    /// Write results in input order rather than completion order. Only jobs within
    /// --order-window of the oldest unfinished one run, so one slow job holds back the rest.
    #[arg(long, help_heading = "Output")]
    pub keep_order: bool,

    /// With --keep-order: how many jobs may run or wait ahead of the oldest unfinished one.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16_384,
        help_heading = "Output"
    )]
    pub order_window: usize,

    /// Show progress even when stderr is not a terminal (on a terminal it is shown anyway):
    /// there, a plain `corral: progress:` line after a second and every 5 s, results or not.
    #[arg(long, help_heading = "Output")]
    pub progress: bool,

    /// Also write the end-of-run summary as JSON to this file.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub stats: Option<PathBuf>,

    /// Also write a line per finished job to this file in GNU parallel's joblog format (Seq,
    /// Host, Starttime, JobRuntime, Send, Receive, Exitval, Signal, Command; Seq is the job's
    /// line), for the tools that read parallel's joblogs and for `corral report`. With
    /// --resume, the lines go on after those the last run left, as parallel's do.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub joblog: Option<PathBuf>,

    /// Serve Prometheus metrics on this address while the run lasts (HOST:PORT, or a Unix
    /// socket's path): jobs by task and outcome, job durations, queue, workers. See
    /// `corral serve --help` for the list.
    #[arg(long, value_name = "ADDR", help_heading = "Output")]
    pub metrics: Option<crate::metrics::MetricsAddr>,

    /// Run only shard I of N of the input (numbered from 1), for one supervisor per node;
    /// `auto` takes it from a Slurm job array or a Kubernetes Indexed Job. Every shard splits
    /// the same way without talking to the others; `corral merge` checks the union. `{shard}`
    /// in -o and --stats becomes I.
    #[arg(long, value_name = "I/N|auto", help_heading = "Shards")]
    pub shard: Option<crate::shard::ShardArg>,

    /// How many shards there are, for `--shard auto` under Kubernetes (which does not say);
    /// also read from CORRAL_SHARDS.
    #[arg(long, value_name = "N", requires = "shard", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Shards")]
    pub shards: Option<u32>,

    /// What decides a line's shard: its line number (other shards' lines are skipped
    /// unparsed), or its job's id (stable when lines move; jobs without one go by line).
    #[arg(long, value_enum, default_value_t = crate::shard::ShardBy::Line, requires = "shard", help_heading = "Shards")]
    pub shard_by: crate::shard::ShardBy,

    /// Task for job lines that name none (required with --lines, unless --exec).
    #[arg(long, value_name = "NAME", help_heading = "Input")]
    pub task: Option<String>,

    /// Treat each input line as a plain string input rather than a JSON job; its result
    /// carries the line back as `input`. Any bytes will do (GNU parallel passes them through
    /// too): in JSON, a byte that is not part of UTF-8 is the escape \udc80..\udcff, as
    /// Python's surrogateescape writes it (os.fsencode(line) has the bytes back).
    #[arg(long, help_heading = "Input")]
    pub lines: bool,

    /// Run this command for each job (each line, with --lines) inside the workers, so that
    /// --timeout, --retries and --halt apply to it. Placeholders as GNU parallel spells them,
    /// giving the commands it gives: {} the input, {.} without its extension, {/} its
    /// basename, {//} its directory, {/.} the basename without extension, {#} the job number,
    /// {%} the worker slot; with --colsep, {1}, {2}... and {-1} (the last column), each with
    /// the same forms ({1.}, {1/}...), {} every column, a word each, and a word that is only
    /// a missing column is left out. Without any placeholder the input comes last. No shell
    /// runs unless --shell. The output is {"status", "signal", "stdout", "stderr"}; a command
    /// that fails is a task_error. A job file naming the task `exec` runs only with --exec.
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["worker", "worker_cmd", "task"], help_heading = "Commands")]
    pub exec: Option<String>,

    /// With --exec: run the command with `sh -c` (pipes, redirections, `&&`). Each replacement
    /// goes to the shell as a positional parameter, never as script text, so no quoting
    /// around a placeholder (`"{}"`, `'{}'`) can make a line run as code.
    #[arg(long, requires = "exec", help_heading = "Commands")]
    pub shell: bool,

    /// With --exec: cut each input into the columns {1}, {2}... at this string (`\t` is a tab).
    #[arg(long, value_name = "SEP", requires = "exec", value_parser = parse_colsep, help_heading = "Commands")]
    pub colsep: Option<String>,

    /// With --exec: most bytes of a command's stdout, and of its stderr, kept in its result;
    /// past it the output is counted, not kept. At most 8MiB (a result must fit in a message;
    /// --output-dir keeps any size).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_capture, help_heading = "Commands")]
    pub capture: u64,

    /// With --exec: write each command's stdout and stderr to DIR/N.out and DIR/N.err (N the
    /// job number) instead of into its result, which then names the files.
    #[arg(long, value_name = "DIR", requires = "exec", help_heading = "Commands")]
    pub output_dir: Option<PathBuf>,

    /// Stop after failures, like GNU parallel: `soon,fail=N` lets running jobs finish,
    /// `now,fail=N` kills them; `fail=P%` counts a share of the jobs read so far.
    #[arg(long, value_name = "RULE", help_heading = "Failures")]
    pub halt: Option<HaltRule>,

    /// Longest job line accepted; a longer one gets a `too_large` result. E.g. 64KiB, 16MiB;
    /// at most 1GiB.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_job_size, help_heading = "Limits")]
    pub max_job_bytes: u64,

    /// Threads that parse job lines in corral, beside the one that reads them, when they
    /// must be parsed before they run (--keep-order, --shard, --lines, --exec,
    /// --max-jobs-per-worker, --worker-cmd workers); otherwise blocks of raw lines go to the
    /// workers, which read them [default: the CPUs available to this process]. 0 parses on
    /// the reading thread itself, one core's rate at most; --resume always does.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=64), help_heading = "Limits")]
    pub parse_threads: Option<u32>,

    /// End at once, as if killed, when the process that started corral is gone: for a corral
    /// run by a library on behalf of its program (Python's corral.Pool), whose death must not
    /// leave the run going. Its workers go with it.
    #[arg(long, help_heading = "Workers")]
    pub exit_with_parent: bool,
}

/// Options of the workers and their supervision, shared by `corral run` and `corral serve`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Worker processes [default: the CPUs available to this process, cgroup quota included].
    #[arg(short = 'j', long, value_name = "N", env = "CORRAL_JOBS", value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Workers")]
    pub jobs: Option<u32>,

    /// The worker binary: any program built on the corral-worker library
    /// [default: corral-worker next to corral].
    #[arg(
        long,
        value_name = "PATH",
        env = "CORRAL_WORKER",
        help_heading = "Workers"
    )]
    pub worker: Option<PathBuf>,

    /// A worker in any language: the command line that starts one, split as a shell would
    /// split it (but no shell runs unless you write `sh -c '...'`). It speaks JSON lines on
    /// stdin and stdout, as docs/worker-protocol.md describes; Python workers use
    /// corral.worker. E.g. 'python3 my_worker.py --model small'.
    #[arg(
        long,
        value_name = "CMD",
        env = "CORRAL_WORKER_CMD",
        conflicts_with = "worker",
        help_heading = "Workers"
    )]
    pub worker_cmd: Option<String>,

    /// Kill a job's worker (and its process group) when the job runs longer than this, and
    /// fail the job with `timeout` once its retries are spent. E.g. 500ms, 30s, 2m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, help_heading = "Failures")]
    pub timeout: Option<Duration>,

    /// Extra attempts for a job that crashes its worker or times out. Task errors and panics
    /// are not retried.
    #[arg(long, value_name = "N", default_value_t = 2, help_heading = "Failures")]
    pub retries: u32,

    /// After the first stop signal, how long the batches in flight may take to finish.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration, help_heading = "Failures")]
    pub grace: Duration,

    /// How long a worker may take to exit once corral has closed its input (at the end of the
    /// run, or when it is recycled); then it is killed, with a warning. A worker that ignores
    /// the end of its input (a live thread, a timer) never holds up the end of the run.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration, help_heading = "Failures")]
    pub exit_grace: Duration,

    /// Restarts allowed within --restart-period without delay; beyond, restarts back off
    /// exponentially, and if workers keep dying the run stops (status 2).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        help_heading = "Failures"
    )]
    pub max_restarts: u32,

    /// The window of --max-restarts.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration, help_heading = "Failures")]
    pub restart_period: Duration,

    /// Replace a worker with a fresh one after it has run this many jobs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    pub max_jobs_per_worker: Option<u64>,

    /// Replace a worker, between batches, once its resident memory passes this. E.g. 512MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Limits")]
    pub max_rss: Option<u64>,

    /// Hard cap on each worker's heap (RLIMIT_DATA). A job that allocates past it fails as
    /// `crashed`, with a message naming the limit. E.g. 1GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Limits")]
    pub memory_limit: Option<u64>,

    /// How long a starting worker may take to say hello before it counts as failed (three
    /// failed starts in a row end the run).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration, help_heading = "Workers")]
    pub start_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{err} (examples: 500ms, 30s, 2m)"))
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("{err} (examples: 64KiB, 16MiB, 1GB)"))
}

/// The most `--capture` takes: both streams, escaped in JSON (up to six bytes a byte), must
/// fit in one message of the protocol.
const MAX_CAPTURE: u64 = 8 << 20;

fn parse_capture(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size > MAX_CAPTURE {
        return Err(format!(
            "{text} is over the most a result can carry, {}; --output-dir writes output of any size to files",
            bytesize::ByteSize(MAX_CAPTURE).display().iec()
        ));
    }
    Ok(size)
}

fn parse_colsep(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("an empty separator would cut nothing: give the string between columns (`\\t` for a tab)".into());
    }
    Ok(text.to_owned())
}

fn parse_job_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    let max = corral_protocol::MAX_JOB_BYTES;
    if size > max {
        return Err(format!(
            "{text} is over the largest job corral carries, {}",
            bytesize::ByteSize(max).display().iec()
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `corral run --help` lists exactly the default worker's tasks (and `exec`, which it has
    /// with --exec).
    #[test]
    fn the_run_help_lists_every_built_in_task() {
        let listed: Vec<&str> = RUN_EXAMPLES
            .split("Built-in tasks")
            .nth(1)
            .expect("the block is there")
            .split("\n\n")
            .next()
            .unwrap()
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().next().unwrap())
            .collect();
        let mut served =
            corral_worker::builtin::register(corral_worker::Worker::new()).task_names();
        served.push("exec".into());
        assert_eq!(listed, served);
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("big").is_err());
        assert_eq!(parse_job_size("1GiB"), Ok(1 << 30));
        assert!(parse_job_size("5GiB").unwrap_err().contains("1.0 GiB"));
        let rule: HaltRule = "now,fail=10%".parse().unwrap();
        assert_eq!(rule.to_string(), "now,fail=10%");
        assert_eq!(
            "fail=3".parse::<HaltRule>().unwrap().to_string(),
            "soon,fail=3"
        );
        assert!("later,fail=3".parse::<HaltRule>().is_err());
        assert!("soon,fail=0".parse::<HaltRule>().is_err());
    }
}
