//! `corral`: the command-line entry point. Maps the outcome of a run to the documented exit
//! statuses: 0 all jobs ok, 1 some jobs failed (or `--halt` stopped the run), 2 usage or
//! configuration error, 128+N stopped by signal N.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::num::NonZero;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use corral::cli::{Cli, Command, LogFormat, RunArgs};
use corral::input::{InputFormat, ring_blocks};
use corral::pool::PoolConfig;
use corral::run::{RunConfig, RunEnd, RunReport, Source, run};
use corral::scheduler::{RestartPolicy, SchedulerConfig};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet, cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run_command(args, cli.quiet),
    };
    result.unwrap_or_else(|err| {
        eprintln!("corral: {err:#}");
        ExitCode::from(2)
    })
}

fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run_command(args: RunArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let workers = match args.jobs {
        Some(n) => n as usize,
        // Rust's available_parallelism honours the affinity mask and the cgroup CPU quota.
        None => std::thread::available_parallelism().map_or(1, NonZero::get),
    };
    let program = match args.worker {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot locate the corral binary to find corral-worker next to it")?
            .with_file_name("corral-worker"),
    };
    let sources = sources(&args.files)?;
    let (output, finished): (Box<dyn Write + Send>, _) = match (&args.output, args.resume) {
        (Some(path), true) => {
            let (finished, file) = corral::resume::prepare(path)?;
            if finished.dropped_torn_line {
                tracing::warn!(
                    "{}: dropped a torn last line; its job runs again",
                    path.display()
                );
            }
            (Box::new(BufWriter::new(file)), Some(finished.keys))
        }
        (Some(path), false) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            (Box::new(BufWriter::new(file)), None)
        }
        (None, _) => (Box::new(io::stdout()), None),
    };
    let max_line_bytes = usize::try_from(args.max_job_bytes).unwrap_or(usize::MAX);
    let config = RunConfig {
        scheduler: SchedulerConfig {
            workers,
            retries: args.retries,
            timeout: args.timeout,
            keep_order: args.keep_order.then_some(args.order_window),
            halt: args.halt,
            max_jobs_per_worker: args.max_jobs_per_worker,
            max_rss: args.max_rss,
            memory_limit: args.memory_limit,
            restart: RestartPolicy {
                max_restarts: args.max_restarts,
                period: args.restart_period,
                ..RestartPolicy::default()
            },
            ..SchedulerConfig::default()
        },
        pool: PoolConfig {
            program,
            args: Vec::new(),
            handshake_timeout: args.start_timeout,
            memory_limit: args.memory_limit,
        },
        format: InputFormat {
            plain_lines: args.lines,
            default_task: args.task,
            max_line_bytes,
            max_blocks: ring_blocks(workers),
        },
        sources,
        grace: args.grace,
        progress: !quiet && (args.progress || io::stderr().is_terminal()),
        finished,
    };
    let report = run(config, output);
    if let Some(path) = &args.stats {
        write_stats(path, &report)?;
    }
    Ok(finish(&report, quiet))
}

fn sources(files: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    if files.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    files
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                return Ok(Source::Stdin);
            }
            // Fail before any worker starts when an input cannot be opened at all.
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            Ok(Source::File(path.clone()))
        })
        .collect()
}

fn finish(report: &RunReport, quiet: bool) -> ExitCode {
    let failed_status = if report.tally.failed_total() == 0 {
        0
    } else {
        1
    };
    let (message, status) = match &report.end {
        RunEnd::Fatal(message) | RunEnd::InputFailed(message) => (Some(message.clone()), 2),
        // A reader that went away (`corral run | head -1`) is a normal way to end.
        RunEnd::OutputFailed(io::ErrorKind::BrokenPipe, _) => return ExitCode::from(failed_status),
        RunEnd::OutputFailed(_, message) => (Some(format!("cannot write results: {message}")), 2),
        RunEnd::Interrupted(signal) => {
            let name =
                nix::sys::signal::Signal::try_from(*signal).map_or("a signal", |s| s.as_str());
            (
                Some(format!("stopped by {name}; {}", not_run(report))),
                128 + *signal as u8,
            )
        }
        RunEnd::Halted(reason) => (Some(format!("{reason}; {}", not_run(report))), 1),
        RunEnd::Completed => (None, failed_status),
    };
    if let Some(message) = message {
        eprintln!("corral: {message}");
    }
    if !quiet && !matches!(report.end, RunEnd::Fatal(_)) {
        eprintln!("corral: {}", summary(report));
    }
    ExitCode::from(status)
}

fn not_run(report: &RunReport) -> String {
    let unread = if report.input_complete {
        ""
    } else {
        ", and input was not read to its end"
    };
    format!(
        "{} jobs read were not run{unread}; run again with -o FILE --resume to finish them",
        report.counters.not_run
    )
}

fn summary(report: &RunReport) -> String {
    let tally = &report.tally;
    let total = tally.ok + tally.failed_total();
    let mut line = format!(
        "{total} jobs: {} ok, {} failed",
        tally.ok,
        tally.failed_total()
    );
    if !tally.failed.is_empty() {
        let kinds: Vec<String> = tally
            .failed
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        line.push_str(&format!(" ({})", kinds.join(", ")));
    }
    let counters = report.counters;
    line.push_str(&format!(
        "; {} restarts, {} recycled",
        counters.restarts, counters.recycled
    ));
    let secs = report.elapsed.as_secs_f64();
    line.push_str(&format!(
        "; {secs:.2}s, {:.0} jobs/s",
        total as f64 / secs.max(1e-9)
    ));
    line
}

fn write_stats(path: &Path, report: &RunReport) -> anyhow::Result<()> {
    let tally = &report.tally;
    let failed: serde_json::Map<String, serde_json::Value> = tally
        .failed
        .iter()
        .map(|(kind, n)| (kind.to_string(), (*n).into()))
        .collect();
    let end = match &report.end {
        RunEnd::Completed => "completed",
        RunEnd::Interrupted(_) => "interrupted",
        RunEnd::Halted(_) => "halted",
        RunEnd::Fatal(_) => "fatal",
        RunEnd::InputFailed(_) => "input_failed",
        RunEnd::OutputFailed(..) => "output_failed",
    };
    let secs = report.elapsed.as_secs_f64();
    let total = tally.ok + tally.failed_total();
    let stats = serde_json::json!({
        "end": end,
        "jobs": total,
        "ok": tally.ok,
        "failed": tally.failed_total(),
        "failed_by_kind": failed,
        "not_run": report.counters.not_run,
        "input_complete": report.input_complete,
        "restarts": report.counters.restarts,
        "recycled": report.counters.recycled,
        "wall_seconds": secs,
        "peak_rss_bytes": peak_rss_bytes(),
        "jobs_per_second": total as f64 / secs.max(1e-9),
    });
    let text = serde_json::to_string_pretty(&stats).expect("JSON values serialize");
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// This process's own peak resident memory (not its workers'): `VmHWM` from
/// `/proc/self/status`. (`getrusage`'s `ru_maxrss` would not do: Linux carries it across
/// `execve`, so it can report the memory of whatever process forked corral.)
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
