//! `corral merge`: the results of a run's shards, one per job line in the jobs' order, and
//! what is missing, repeated or unknown.

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::MergeArgs;
use crate::exit::{Exit, say};

pub(super) fn command(args: MergeArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let output: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let jobs = crate::merge::JobFiles {
        paths: args.jobs,
        max_line_bytes: args.max_job_bytes,
        lines: args.lines,
    };
    let report = crate::merge::merge(&jobs, &args.results, output)?;
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
