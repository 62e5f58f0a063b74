//! The `corral` command line: one module per subcommand on the engine's modes, the settings
//! they share built once (`cmd/settings.rs`), and the exit statuses of `crate::exit`. The
//! binary's `main` is [`main`].

mod common;
mod merge;
mod mux;
mod report;
mod run;
mod serve;
mod settings;
mod submit;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use corral_worker::Worker;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};
use crate::exit::{Exit, say};

/// Runs the command line this process was given; its exit status.
pub fn main() -> ExitCode {
    corral_protocol::keep_freed_memory();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Keeper => {
            crate::keeper::serve(io::stdin().lock());
            return Exit::Success.into();
        }
        Command::Worker => return corral_worker::builtin::register(Worker::new()).run(),
        Command::Generate { dir } => {
            return match crate::manual::generate(&dir) {
                Ok(()) => Exit::Success.into(),
                Err(err) => {
                    say(format_args!("cannot write under {}: {err}", dir.display()));
                    Exit::Usage.into()
                }
            };
        }
        Command::Status(args) => {
            return crate::client::status(&args.socket, args.json).into();
        }
        command => command,
    };
    let service = matches!(args, Command::Serve(_));
    init_logging(cli.verbose, cli.quiet, cli.log_format, service);
    let done = match args {
        Command::Run(args) => run::command(args, cli.quiet),
        Command::Serve(args) => serve::command(args),
        Command::Submit(args) => submit::command(args, cli.quiet),
        Command::Merge(args) => merge::command(args, cli.quiet),
        Command::Report(args) => report::command(&args),
        Command::Mux(args) => mux::command(args),
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
    let journal = crate::journal::stderr_is_journal();
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
            .event_format(crate::journal::Prefixed(
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
