//! Settings built once from the command line: the scheduler's and the pool's, shared by every
//! mode that runs workers, the worker to start, and `--exec`'s command.

use std::ffi::OsString;
use std::num::NonZero;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use corral_protocol::exec::ExecSpec;

use crate::cli::{PoolArgs, RunArgs};
use crate::pool::PoolConfig;
use crate::scheduler::{RestartPolicy, SchedulerConfig};
use crate::transport::Transport;

/// The scheduler's and the pool's settings, shared by `run` and `serve`; `env` is for the
/// workers.
pub(super) fn pool_settings(
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
        gather: crate::transport::stdio::GATHER,
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
pub(super) fn exec_spec(template: &str, args: &RunArgs) -> anyhow::Result<ExecSpec> {
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
        tell_command: args.joblog.is_some(),
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
