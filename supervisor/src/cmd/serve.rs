//! `corral serve`: the engine as a service on a Unix socket (or systemd's), shared by its
//! clients under the service's policy.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;

use super::settings::pool_settings;
use crate::cli::ServeArgs;
use crate::engine::EngineConfig;
use crate::exit::{Exit, say};
use crate::input::InputFormat;

pub(super) fn command(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use crate::serve::policy::{ConfigFile, PolicyArgs};
    use crate::serve::{Listen, ServeConfig, ServeEnd};
    // A bad file is an error now, before the socket or any worker.
    if let Some(path) = &args.config {
        ConfigFile::read(path).map_err(anyhow::Error::msg)?;
    }
    let listen = match &args.socket {
        Some(path) => Listen::Path(path.clone()),
        None => Listen::Activated,
    };
    let listeners = crate::serve::listeners(&listen)?;
    let metrics = args
        .metrics
        .as_ref()
        .map(|addr| {
            crate::metrics::Listener::bind(addr)
                .with_context(|| format!("cannot serve --metrics on {addr}"))
        })
        .transpose()?;
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
    Ok(match crate::serve::serve(config, listeners, metrics) {
        ServeEnd::Stopped => Exit::Success.into(),
        ServeEnd::Fatal(message) => {
            say(format_args!("{message}"));
            Exit::Usage.into()
        }
    })
}
