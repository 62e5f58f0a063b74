//! `corral run`: the job files (or stdin) through one pool of workers, one result line per job
//! line, and the run's last words and exit status.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use corral_protocol::exec::ENV_EXEC;

use super::common::{Results, exit_with_parent, refuse_input_as_output, sources};
use super::settings::{exec_spec, pool_settings};
use crate::cli::RunArgs;
use crate::exit::{Exit, count, say};
use crate::input::{EXEC_TASK, InputFormat, ring_blocks};
use crate::joblog::Joblog;
use crate::metrics::Listener;
use crate::run::{Observing, RunConfig, RunEnd, RunReport, run};

pub(super) fn command(mut args: RunArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    if args.exit_with_parent {
        exit_with_parent(None);
    }
    let shard = shard_of(&mut args)?;
    let mut worker_env = Vec::new();
    if let Some(template) = &args.exec {
        let spec = exec_spec(template, &args)?;
        worker_env.push((
            ENV_EXEC.into(),
            serde_json::to_string(&spec)
                .expect("a spec serializes")
                .into(),
        ));
    }
    let (mut scheduler, pool) = pool_settings(&args.pool, worker_env)?;
    scheduler.keep_order = args.keep_order.then_some(args.order_window);
    scheduler.halt = args.halt;
    let workers = scheduler.workers;
    if args.lines && args.task.is_none() && args.exec.is_none() {
        bail!("--lines needs --task NAME (the task each line is the input of) or --exec COMMAND");
    }
    let default_task = match &args.exec {
        Some(_) => Some(EXEC_TASK.to_owned()),
        None => args.task.clone(),
    };
    let sources = sources(&args.files)?;
    if let Some(output) = &args.output {
        refuse_input_as_output(&sources, output)?;
    }
    // Found unwritable now, not after the whole run.
    let stats = args
        .stats
        .as_ref()
        .map(|path| {
            File::create(path)
                .map(|file| (path, file))
                .with_context(|| format!("cannot write --stats {}", path.display()))
        })
        .transpose()?;
    let observing = Observing {
        joblog: args
            .joblog
            .as_ref()
            .map(|path| {
                Joblog::open(path, args.resume)
                    .with_context(|| format!("cannot write --joblog {}", path.display()))
            })
            .transpose()?,
        metrics: args
            .metrics
            .as_ref()
            .map(|addr| {
                Listener::bind(addr).with_context(|| format!("cannot serve --metrics on {addr}"))
            })
            .transpose()?,
    };
    let Results {
        output,
        finished,
        earlier_failed,
    } = Results::open(args.output.as_deref(), args.resume, quiet)?;
    let max_line_bytes = usize::try_from(args.max_job_bytes).unwrap_or(usize::MAX);
    let config = RunConfig {
        scheduler,
        pool,
        format: InputFormat {
            plain_lines: args.lines,
            default_task,
            exec: args.exec.is_some(),
            max_line_bytes,
            max_blocks: ring_blocks(workers),
            shard,
        },
        sources,
        grace: args.pool.grace,
        progress: !quiet && (args.progress || io::stderr().is_terminal()),
        finished,
        parse_threads: args
            .parse_threads
            .map_or_else(crate::ordered::machine_threads, |n| n as usize),
    };
    let report = run(config, output, observing);
    if let Some((path, file)) = stats {
        write_stats(path, file, &report)?;
    }
    Ok(finish(&report, earlier_failed, quiet))
}

/// The shard `--shard` names, if any, with `{shard}` in `-o` and `--stats` replaced by it.
fn shard_of(args: &mut RunArgs) -> anyhow::Result<Option<crate::shard::Shard>> {
    let Some(arg) = args.shard else {
        for path in [&args.output, &args.stats].into_iter().flatten() {
            if path.to_string_lossy().contains("{shard}") {
                bail!(
                    "{} names {{shard}}, but no --shard is given",
                    path.display()
                );
            }
        }
        return Ok(None);
    };
    let shard = arg
        .resolve(args.shard_by, args.shards, |name| std::env::var(name).ok())
        .map_err(anyhow::Error::msg)?;
    for path in [&mut args.output, &mut args.stats].into_iter().flatten() {
        *path = PathBuf::from(shard.name(&path.to_string_lossy()));
    }
    tracing::info!("running shard {shard}");
    Ok(Some(shard))
}

/// The run's exit status, and its last words; `earlier_failed` counts the failures already in
/// the results file it resumed, which its status describes too.
fn finish(report: &RunReport, earlier_failed: u64, quiet: bool) -> ExitCode {
    let failed_status = Exit::failed_if(report.tally.failed_total() + earlier_failed > 0);
    let (message, status) = match &report.end {
        RunEnd::Fatal(message) | RunEnd::InputFailed(message) => {
            (Some(message.clone()), Exit::Usage)
        }
        // A reader that went away (`corral run | head -1`) is a normal way to end.
        RunEnd::OutputFailed(io::ErrorKind::BrokenPipe, _) => return failed_status.into(),
        RunEnd::OutputFailed(_, message) => (
            Some(format!(
                "cannot write results: {message}; {} results were not written",
                report.unwritten
            )),
            Exit::Usage,
        ),
        RunEnd::Interrupted(signal) => {
            let name = crate::os::Signal(*signal);
            (
                Some(format!("stopped by {name}; {}", not_run(report))),
                Exit::Signal(*signal),
            )
        }
        RunEnd::Halted(reason) => (Some(format!("{reason}; {}", not_run(report))), Exit::Failed),
        RunEnd::Completed => (None, failed_status),
    };
    if let Some(message) = message {
        say(format_args!("{message}"));
    }
    if !quiet && !matches!(report.end, RunEnd::Fatal(_)) {
        say(format_args!("{}", summary(report)));
        if earlier_failed > 0 {
            say(format_args!(
                "the results file also holds {} from earlier runs",
                count(earlier_failed, "failure")
            ));
        }
    }
    status.into()
}

fn not_run(report: &RunReport) -> String {
    let unread = if report.input_complete {
        ""
    } else {
        ", and input was not read to its end"
    };
    let unwritten = match report.unwritten {
        0 => String::new(),
        n => format!(" and {} could not be written", count(n, "result")),
    };
    let not_run = report.counters.not_run;
    let were = if not_run == 1 { "was" } else { "were" };
    format!(
        "{} read {were} not run{unwritten}{unread}; run again with -o FILE --resume to finish them",
        count(not_run, "job")
    )
}

fn summary(report: &RunReport) -> String {
    let tally = &report.tally;
    let total = tally.ok + tally.failed_total();
    let mut line = format!(
        "{}: {} ok, {} failed",
        count(total, "job"),
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
        "; {}, {} recycled",
        count(counters.restarts, "restart"),
        counters.recycled
    ));
    let secs = report.elapsed.as_secs_f64();
    line.push_str(&format!(
        "; {secs:.2}s, {:.0} jobs/s",
        total as f64 / secs.max(1e-9)
    ));
    line
}

fn write_stats(path: &Path, mut file: File, report: &RunReport) -> anyhow::Result<()> {
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
        "unwritten": report.unwritten,
        "input_complete": report.input_complete,
        "restarts": report.counters.restarts,
        "recycled": report.counters.recycled,
        "wall_seconds": secs,
        "peak_rss_bytes": peak_rss_bytes(),
        "jobs_per_second": total as f64 / secs.max(1e-9),
    });
    let text = serde_json::to_string_pretty(&stats).expect("JSON values serialize");
    file.write_all((text + "\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
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
