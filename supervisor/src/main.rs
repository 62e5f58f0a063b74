//! `corral`: the command-line entry point. Maps the outcome of a run to the documented exit
//! statuses: 0 all jobs ok, 1 some jobs failed (or `--halt` stopped the run), 2 usage or
//! configuration error, 128+N stopped by signal N.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::num::NonZero;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use corral::cli::{
    Cli, Command, LogFormat, MergeArgs, MuxArgs, PoolArgs, RunArgs, ServeArgs, SubmitArgs,
};
use corral::engine::EngineConfig;
use corral::exit::{Exit, say};
use corral::input::{EXEC_TASK, InputFormat, ring_blocks};
use corral::pool::PoolConfig;
use corral::run::{RunConfig, RunEnd, RunReport, Source, run};
use corral::scheduler::{RestartPolicy, SchedulerConfig};
use corral::transport::Transport;
use corral_protocol::exec::{ENV_EXEC, ExecSpec};
use corral_worker::Worker;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    corral_protocol::keep_freed_memory();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Keeper => {
            corral::keeper::serve(io::stdin().lock());
            return Exit::Success.into();
        }
        Command::Worker => return corral_worker::builtin::register(Worker::new()).run(),
        Command::Generate { dir } => {
            return match corral::manual::generate(&dir) {
                Ok(()) => Exit::Success.into(),
                Err(err) => {
                    say(format_args!("cannot write under {}: {err}", dir.display()));
                    Exit::Usage.into()
                }
            };
        }
        Command::Status(args) => {
            return corral::client::status(&args.socket, args.json).into();
        }
        command => command,
    };
    let service = matches!(args, Command::Serve(_));
    init_logging(cli.verbose, cli.quiet, cli.log_format, service);
    let done = match args {
        Command::Run(args) => run_command(args, cli.quiet),
        Command::Serve(args) => serve_command(args),
        Command::Submit(args) => submit_command(args, cli.quiet),
        Command::Merge(args) => merge_command(args, cli.quiet),
        Command::Mux(args) => mux_command(args),
        Command::Keeper | Command::Worker | Command::Status(_) | Command::Generate { .. } => {
            unreachable!("handled above")
        }
    };
    done.unwrap_or_else(|err| {
        say(format_args!("{err:#}"));
        Exit::Usage.into()
    })
}

fn init_logging(verbose: u8, quiet: bool, format: LogFormat, service: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        // A service's log is its journal: who connected and what it did belong there.
        (false, 0) if service => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let journal = corral::journal::stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(!journal && io::stderr().is_terminal())
        .with_writer(io::stderr)
        // Its default reports a failed write with eprintln!, which panics when stderr is a
        // closed pipe or a hung-up terminal: logging must never take the run down.
        .log_internal_errors(false);
    match (format, journal) {
        (LogFormat::Json, _) => builder.json().init(),
        // The journal stamps each line itself, and keeps its priority from the prefix.
        (LogFormat::Text, true) => builder
            .event_format(corral::journal::Prefixed(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false),
            ))
            .init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

/// How often `--exit-with-parent` looks for its parent.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Exits the process (status 129, like a hang-up) once its parent is gone, removing `scratch`
/// first if given. Exiting is what a SIGKILL of corral does, and that is already safe: the
/// workers die with the spawner thread (their death signal) and the keeper kills their groups.
fn exit_with_parent(scratch: Option<PathBuf>) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    std::thread::Builder::new()
        .name("corral-parent".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PARENT_CHECK);
                // SAFETY: as above.
                if unsafe { libc::getppid() } != parent {
                    say(format_args!(
                        "the process that started corral is gone: stopping"
                    ));
                    if let Some(dir) = &scratch {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    std::process::exit(Exit::Signal(libc::SIGHUP).code().into());
                }
            }
        })
        .expect("spawning a thread");
}

fn run_command(mut args: RunArgs, quiet: bool) -> anyhow::Result<ExitCode> {
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
    // Failures already in a results file that this run completes: final, and reported.
    let mut earlier_failed = 0;
    let (output, finished): (Box<dyn Write + Send>, _) = match &args.output {
        Some(path) => {
            let (finished, file) = corral::resume::open_results(path, args.resume)?;
            if finished.dropped_torn_line {
                tracing::warn!(
                    "{}: dropped a torn last line; its job runs again",
                    path.display()
                );
            }
            if args.resume {
                earlier_failed = finished.failed;
            }
            let keys = args.resume.then_some(finished.keys);
            // Unbuffered: the result writer buffers, and knows what reached the file.
            (Box::new(file), keys)
        }
        None => (Box::new(io::stdout()), None),
    };
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
            .map_or_else(corral::ordered::machine_threads, |n| n as usize),
    };
    let report = run(config, output);
    if let Some((path, file)) = stats {
        write_stats(path, file, &report)?;
    }
    Ok(finish(&report, earlier_failed, quiet))
}

/// The shard `--shard` names, if any, with `{shard}` in `-o` and `--stats` replaced by it.
fn shard_of(args: &mut RunArgs) -> anyhow::Result<Option<corral::shard::Shard>> {
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

fn merge_command(args: MergeArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let output: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let jobs = corral::merge::JobFiles {
        paths: args.jobs,
        max_line_bytes: args.max_job_bytes,
        lines: args.lines,
    };
    let report = corral::merge::merge(&jobs, &args.results, output)?;
    let lines = |lines: &[u64], more: bool| {
        let list: Vec<String> = lines.iter().map(u64::to_string).collect();
        format!("{}{}", list.join(", "), if more { ", ..." } else { "" })
    };
    if report.missing.0 > 0 {
        say(format_args!(
            "{} jobs have no result (lines {})",
            report.missing.0,
            lines(
                &report.missing.1,
                report.missing.0 > report.missing.1.len() as u64
            )
        ));
    }
    if report.duplicated.0 > 0 {
        say(format_args!(
            "{} results repeat a job's result, not written again (lines {})",
            report.duplicated.0,
            lines(
                &report.duplicated.1,
                report.duplicated.0 > report.duplicated.1.len() as u64
            )
        ));
    }
    if report.unknown > 0 {
        say(format_args!(
            "{} results answer no job of the input",
            report.unknown
        ));
    }
    if report.unreadable > 0 {
        let places: Vec<String> = report
            .unreadable_at
            .iter()
            .map(|(path, line)| format!("{}:{line}", path.display()))
            .collect();
        let more = report.unreadable > report.unreadable_at.len() as u64;
        say(format_args!(
            "{} lines of the result files are not results ({}{})",
            report.unreadable,
            places.join(", "),
            if more { ", ..." } else { "" }
        ));
    }
    if report.repeated_ids > 0 {
        say(format_args!(
            "{} job lines repeat an earlier line's id; their results cannot be told apart",
            report.repeated_ids
        ));
    }
    if !quiet {
        say(format_args!(
            "{} jobs, {} results written; {} missing, {} duplicated, {} unknown",
            report.jobs, report.written, report.missing.0, report.duplicated.0, report.unknown
        ));
    }
    Ok(Exit::failed_if(!report.complete()).into())
}

fn serve_command(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use corral::serve::policy::{ConfigFile, PolicyArgs};
    use corral::serve::{Listen, ServeConfig, ServeEnd};
    // A bad file is an error now, before the socket or any worker.
    if let Some(path) = &args.config {
        ConfigFile::read(path).map_err(anyhow::Error::msg)?;
    }
    let listen = match &args.socket {
        Some(path) => Listen::Path(path.clone()),
        None => Listen::Activated,
    };
    let listeners = corral::serve::listeners(&listen)?;
    // The built-in worker reads no file for a service's clients.
    let shared = vec![(
        OsString::from(corral_protocol::ENV_SHARED_SERVICE),
        OsString::from("1"),
    )];
    let (scheduler, pool) = pool_settings(&args.pool, shared)?;
    let workers = scheduler.workers;
    let config = ServeConfig {
        engine: EngineConfig {
            scheduler,
            pool,
            grace: args.pool.grace,
            progress: false,
        },
        format: InputFormat::json(workers),
        listen,
        policy: PolicyArgs {
            allow_uid: args.allow_uid,
            allow_gid: args.allow_gid,
            allow_task: args.allow_task,
            max_job_bytes: args.max_job_bytes,
            max_client_jobs: args.max_client_jobs,
            max_connections: args.max_connections.map(|n| n as usize),
            max_user_connections: args.max_user_connections.map(|n| n as usize),
            first_line_timeout: args.first_line_timeout,
        },
        config_file: args.config,
    };
    Ok(match corral::serve::serve(config, listeners) {
        ServeEnd::Stopped(_) => Exit::Success.into(),
        ServeEnd::Fatal(message) => {
            say(format_args!("{message}"));
            Exit::Usage.into()
        }
    })
}

fn mux_command(args: MuxArgs) -> anyhow::Result<ExitCode> {
    if args.exit_with_parent {
        exit_with_parent(args.scratch.clone());
    }
    let (scheduler, pool) = pool_settings(&args.pool, Vec::new())?;
    let workers = scheduler.workers;
    let config = EngineConfig {
        scheduler,
        pool,
        grace: args.pool.grace,
        progress: false,
    };
    let format = InputFormat {
        max_line_bytes: usize::try_from(args.max_job_bytes).unwrap_or(usize::MAX),
        ..InputFormat::json(workers)
    };
    // The results pipe, as a file of its own (corral mux makes it non-blocking).
    let stdout = File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot use standard output")?,
    );
    Ok(
        match corral::mux::mux(config, format, io::stdin(), stdout) {
            corral::mux::MuxEnd::Done => Exit::Success.into(),
            corral::mux::MuxEnd::Fatal(message) => {
                tracing::debug!("{message}");
                Exit::Usage.into()
            }
        },
    )
}

fn submit_command(args: SubmitArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let sources = sources(&args.files)?;
    if let Some(output) = &args.output {
        refuse_input_as_output(&sources, output)?;
    }
    let mut earlier_failed = 0;
    let (output, finished): (Box<dyn Write + Send>, _) = match &args.output {
        Some(path) => {
            let (finished, file) = corral::resume::open_results(path, args.resume)?;
            if finished.dropped_torn_line {
                tracing::warn!(
                    "{}: dropped a torn last line; its job runs again",
                    path.display()
                );
            }
            if args.resume {
                earlier_failed = finished.failed;
            }
            (Box::new(file), args.resume.then_some(finished.keys))
        }
        None => (Box::new(io::stdout()), None),
    };
    let status = corral::client::submit(corral::client::Submit {
        sources,
        socket: args.socket,
        output,
        finished,
        earlier_failed,
        quiet,
    });
    Ok(status.into())
}

/// The scheduler's and the pool's settings, shared by `run` and `serve`; `env` is for the
/// workers.
fn pool_settings(
    args: &PoolArgs,
    env: Vec<(OsString, OsString)>,
) -> anyhow::Result<(SchedulerConfig, PoolConfig)> {
    let workers = match args.jobs {
        Some(n) => n as usize,
        // Rust's available_parallelism honours the affinity mask and the cgroup CPU quota.
        None => std::thread::available_parallelism().map_or(1, NonZero::get),
    };
    let (program, worker_args, transport) = worker_command(args)?;
    let scheduler = SchedulerConfig {
        workers,
        retries: args.retries,
        timeout: args.timeout,
        max_jobs_per_worker: args.max_jobs_per_worker,
        max_rss: args.max_rss,
        memory_limit: args.memory_limit,
        exit_grace: args.exit_grace,
        restart: RestartPolicy {
            max_restarts: args.max_restarts,
            period: args.restart_period,
            ..RestartPolicy::default()
        },
        ..SchedulerConfig::default()
    };
    let pool = PoolConfig {
        program,
        args: worker_args,
        transport,
        env,
        handshake_timeout: args.start_timeout,
        memory_limit: args.memory_limit,
        // This binary is a corral: it is its own keeper.
        keeper: std::env::current_exe().ok(),
        gather: corral::transport::stdio::GATHER,
        own_readers: PoolConfig::own_readers_default(),
    };
    Ok((scheduler, pool))
}

/// The worker to start: `--worker-cmd` split into words (a stdio worker), or `--worker` (a
/// native one), or the built-in worker next to this binary.
fn worker_command(args: &PoolArgs) -> anyhow::Result<(PathBuf, Vec<OsString>, Transport)> {
    if let Some(line) = &args.worker_cmd {
        let words = shell_words::split(line)
            .with_context(|| format!("cannot split --worker-cmd {line:?} into words"))?;
        let Some((program, rest)) = words.split_first() else {
            bail!("--worker-cmd is empty");
        };
        return Ok((
            PathBuf::from(program),
            rest.iter().map(OsString::from).collect(),
            Transport::Stdio,
        ));
    }
    if let Some(path) = &args.worker {
        return Ok((path.clone(), Vec::new(), Transport::Native));
    }
    // The built-in worker: corral-worker next to corral, or else this binary's own copy.
    let exe = std::env::current_exe().context("cannot locate the corral binary")?;
    let beside = exe.with_file_name("corral-worker");
    if beside.exists() {
        return Ok((beside, Vec::new(), Transport::Native));
    }
    Ok((exe, vec!["worker".into()], Transport::Native))
}

/// The `--exec` command as the built-in worker's `exec` task runs it. A program that cannot
/// be found is refused now rather than failing every job.
fn exec_spec(template: &str, args: &RunArgs) -> anyhow::Result<ExecSpec> {
    let argv = if args.shell {
        vec!["sh".to_owned(), "-c".to_owned(), template.to_owned()]
    } else {
        shell_words::split(template)
            .with_context(|| format!("cannot split --exec {template:?} into words"))?
    };
    let Some(program) = argv.first() else {
        bail!("--exec is empty");
    };
    if !program.contains('{') && !on_path(program) {
        if program.contains('/') && Path::new(program).is_file() {
            bail!(
                "--exec: {program:?} is there but is not executable (chmod +x it, or name its interpreter: --exec 'sh {program} ...')"
            );
        }
        bail!("--exec: program {program:?} not found (on $PATH, or as a path)");
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --output-dir {}", dir.display()))?;
    }
    Ok(ExecSpec {
        argv,
        shell: args.shell,
        colsep: args.colsep.as_ref().map(|sep| sep.replace("\\t", "\t")),
        capture: args.capture,
        output_dir: args
            .output_dir
            .as_ref()
            .map(|dir| std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
            .map(|dir| dir.display().to_string()),
    })
}

/// Whether `program` names an executable file, as a path or on `$PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

/// Refuses an `-o` that is one of the input files: it would be truncated (or appended to)
/// before its jobs are read.
fn refuse_input_as_output(sources: &[Source], output: &Path) -> anyhow::Result<()> {
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    for source in sources {
        let same = match source {
            Source::File(_, Some(file)) => file.metadata().ok(),
            Source::File(path, None) => std::fs::metadata(path).ok(),
            Source::Stdin => std::fs::metadata("/dev/stdin").ok(),
        }
        .is_some_and(|input| input.dev() == out.dev() && input.ino() == out.ino());
        if same {
            let name = source.name();
            anyhow::bail!(
                "-o {} is also the input ({name}): its jobs would be overwritten before they are read",
                output.display()
            );
        }
    }
    Ok(())
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
            // Fail before any worker starts when an input cannot be opened at all; the file
            // is read through this descriptor.
            Source::open(path).with_context(|| format!("cannot open {}", path.display()))
        })
        .collect()
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
            let name = corral::os::Signal(*signal);
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
                "the results file also holds {earlier_failed} failures from earlier runs"
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
        n => format!(" and {n} results could not be written"),
    };
    format!(
        "{} jobs read were not run{unwritten}{unread}; run again with -o FILE --resume to finish them",
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
