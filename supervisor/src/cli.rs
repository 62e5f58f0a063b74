//! Command-line definitions of `corral` (clap derive; doc comments are the help text). Only
//! definitions live here: turning them into a run is `main.rs`'s job.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every job of the input files (or stdin) and write one result line per job.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
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

Examples:
  corral run jobs.jsonl > results.jsonl
  generate-jobs | corral run -j 8 --timeout 30s | post-process
  corral run --task primes jobs.jsonl -o results.jsonl
  find . -name '*.png' | corral run --lines --task sha256
  corral run --worker target/release/my-worker --retries 0 jobs.jsonl

Exit status: 0 every job succeeded; 1 some jobs failed (see their result lines);
2 usage or configuration error (bad flag, unreadable input, worker binary missing or
failing at start-up).";

/// Options of `corral run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job files, read in order; none or `-` means standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Write results to this file instead of standard output (it is truncated).
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Worker processes [default: the CPUs available to this process, cgroup quota included].
    #[arg(short = 'j', long, value_name = "N", env = "CORRAL_JOBS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub jobs: Option<u32>,

    /// The worker binary: any program built on the corral-worker library
    /// [default: corral-worker next to corral].
    #[arg(long, value_name = "PATH", env = "CORRAL_WORKER")]
    pub worker: Option<PathBuf>,

    /// Task for job lines that name none (required with --lines).
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,

    /// Treat each input line as a plain string input rather than a JSON job.
    #[arg(long, requires = "task")]
    pub lines: bool,

    /// Kill a job's worker (and its process group) when the job runs longer than this, and
    /// fail the job with `timeout` once its retries are spent. E.g. 500ms, 30s, 2m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Extra attempts for a job that crashes its worker or times out. Task errors and panics
    /// are not retried.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,

    /// Longest job line accepted; a longer one gets a `too_large` result. E.g. 64KiB, 16MiB.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_job_bytes: u64,

    /// How long a starting worker may take to say hello before it counts as failed.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
    }
}
