//! `corral mux`: the engine for one library client's many calls at once (Python's
//! `corral.Pool`), on stdin and stdout.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;

use super::common::exit_with_parent;
use super::settings::pool_settings;
use crate::cli::MuxArgs;
use crate::engine::EngineConfig;
use crate::exit::Exit;
use crate::input::InputFormat;

pub(super) fn command(args: MuxArgs) -> anyhow::Result<ExitCode> {
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
    Ok(match crate::mux::mux(config, format, io::stdin(), stdout) {
        crate::mux::MuxEnd::Done => Exit::Success.into(),
        crate::mux::MuxEnd::Fatal(message) => {
            tracing::debug!("{message}");
            Exit::Usage.into()
        }
    })
}
