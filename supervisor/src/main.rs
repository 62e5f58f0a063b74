//! `corral`: the command-line entry point. Maps the outcome of a run to the documented exit
//! statuses: 0 all jobs ok, 1 some jobs failed, 2 usage or configuration error.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::num::NonZero;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use corral::cli::{Cli, Command, RunArgs};
use corral::input::InputFormat;
use corral::output::Tally;
use corral::pool::PoolConfig;
use corral::run::{RunConfig, RunEnd, RunReport, Source, run};
use corral::scheduler::SchedulerConfig;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Run(args) => run_command(args, cli.quiet),
    };
    result.unwrap_or_else(|err| {
        eprintln!("corral: {err:#}");
        ExitCode::from(2)
    })
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(io::stderr)
        .init();
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
    let output: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(io::stdout()),
    };
    let max_line_bytes = usize::try_from(args.max_job_bytes).unwrap_or(usize::MAX);
    let config = RunConfig {
        scheduler: SchedulerConfig {
            workers,
            retries: args.retries,
            timeout: args.timeout,
            ..SchedulerConfig::default()
        },
        pool: PoolConfig {
            program,
            args: Vec::new(),
            handshake_timeout: args.start_timeout,
        },
        format: InputFormat {
            plain_lines: args.lines,
            default_task: args.task,
            max_line_bytes,
        },
        sources,
    };
    let report = run(config, output);
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
    match &report.end {
        RunEnd::Fatal(message) => {
            eprintln!("corral: {message}");
            return ExitCode::from(2);
        }
        RunEnd::InputFailed(message) => {
            eprintln!("corral: {message}");
            return ExitCode::from(2);
        }
        // A reader that went away (`corral run | head -1`) is a normal way to end.
        RunEnd::OutputFailed(io::ErrorKind::BrokenPipe, _) => {}
        RunEnd::OutputFailed(_, message) => {
            eprintln!("corral: cannot write results: {message}");
            return ExitCode::from(2);
        }
        RunEnd::Completed => {
            if !quiet {
                eprintln!("corral: {}", summary(&report.tally, report.elapsed));
            }
        }
    }
    if report.tally.failed_total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn summary(tally: &Tally, elapsed: Duration) -> String {
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
    let secs = elapsed.as_secs_f64();
    line.push_str(&format!(
        " in {secs:.2}s, {:.0} jobs/s",
        total as f64 / secs.max(1e-9)
    ));
    line
}
