//! `corral submit`: job files (or stdin) through a running service, written as `corral run`
//! would write them.

use std::process::ExitCode;

use super::common::{Results, refuse_input_as_output, sources};
use crate::cli::SubmitArgs;

pub(super) fn command(args: SubmitArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let sources = sources(&args.files)?;
    if let Some(output) = &args.output {
        refuse_input_as_output(&sources, output)?;
    }
    let Results {
        output,
        finished,
        earlier_failed,
    } = Results::open(args.output.as_deref(), args.resume, quiet)?;
    let status = crate::client::submit(crate::client::Submit {
        sources,
        socket: args.socket,
        output,
        finished,
        earlier_failed,
        quiet,
    });
    Ok(status.into())
}
