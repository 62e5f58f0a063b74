//! `corral report`: a run's joblog (and its `--stats`) as one HTML page.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::ReportArgs;
use crate::exit::Exit;

pub(super) fn command(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    // The page is built whole first (it is bounded), so that a bad joblog leaves no file.
    let mut page = Vec::new();
    crate::report::build(&args.joblog, args.stats.as_deref(), &mut page)?;
    match &args.output {
        Some(path) => std::fs::write(path, &page)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&page)
                .and_then(|()| stdout.flush())
                .context("cannot write the report")?;
        }
    }
    Ok(Exit::Success.into())
}
