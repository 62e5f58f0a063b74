//! The corral worker library: turn a `main()` and a few closures into a worker binary that a
//! corral supervisor starts, feeds batches of jobs and supervises.
//!
//! ```no_run
//! use corral_worker::Worker;
//!
//! fn main() -> std::process::ExitCode {
//!     Worker::new()
//!         .task("double", |n: i64| -> Result<i64, String> { Ok(n * 2) })
//!         .task("greet", |name: String| -> Result<String, std::convert::Infallible> {
//!             Ok(format!("hello, {name}"))
//!         })
//!         .run()
//! }
//! ```
//!
//! Inputs and outputs are any serde types, carried as JSON. A task that returns `Err` yields a
//! `task_error` result with the error's `Display`; a task that panics yields a `panic` result
//! and the worker goes on serving. The binary is started by `corral run --worker PATH`; run by
//! hand it explains that and exits with status 2.

pub mod builtin;
mod clock;
pub mod exec;
mod lines;
mod native;
mod stdio;
mod task;

pub use native::ServeError;
pub use task::TaskFailure;

use std::fmt::Display;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::task::{BoxedTask, Registry};

/// A worker under construction: a set of named tasks, then [`Worker::run`].
#[derive(Default)]
pub struct Worker {
    registry: Registry,
}

impl Worker {
    /// A worker with no tasks yet.
    pub fn new() -> Worker {
        Worker::default()
    }

    /// Registers `name`, run by `f`. The job's `input` is parsed as `I`; the output is written
    /// as JSON. A later registration of the same name replaces the earlier one.
    pub fn task<I, O, E, F>(mut self, name: &str, f: F) -> Worker
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Display,
        F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
    {
        self.registry.insert(name, BoxedTask::new(f));
        self
    }

    /// Registers `name`, run by `f` on the job's input as JSON bytes; `f` appends its output
    /// as JSON to the buffer it is given. For built-in tasks only, which are trusted to write
    /// valid JSON.
    pub(crate) fn raw_task<F>(mut self, name: &str, f: F) -> Worker
    where
        F: Fn(&[u8], &mut Vec<u8>) -> Result<(), TaskFailure> + Send + Sync + 'static,
    {
        self.registry.insert(name, BoxedTask::raw(f));
        self
    }

    /// [`Worker::raw_task`], with a skim that reads and runs the task's commonest inputs as
    /// their job lines are checked (see [`BoxedTask::skimming`]). Built-in pure tasks only.
    pub(crate) fn skimming_task<F>(mut self, name: &str, f: F, skim: task::SkimFn) -> Worker
    where
        F: Fn(&[u8], &mut Vec<u8>) -> Result<(), TaskFailure> + Send + Sync + 'static,
    {
        self.registry.insert(name, BoxedTask::raw(f).skimming(skim));
        self
    }

    /// Names of the registered tasks, in registration order.
    pub fn task_names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// Runs one job by hand, outside any supervisor: what the worker would answer for `input`
    /// (JSON text) given to `task`. Useful in a worker's own unit tests.
    pub fn call(&self, task: &str, input: &str) -> Result<String, TaskFailure> {
        let index = self
            .task_index(task)
            .ok_or_else(|| TaskFailure::UnknownTask(task.to_owned()))?;
        let mut out = Vec::new();
        self.run_task(index, input.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
    }

    /// The index of task `name`, for [`Worker::run_task`].
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.registry.index_of(name)
    }

    /// Runs task `index` on `input` (JSON bytes), appending its JSON output to `out`; panics
    /// are caught. This is what the worker does for each job of a batch.
    pub fn run_task(
        &self,
        index: usize,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TaskFailure> {
        self.registry.run(index, input, out)
    }

    /// Serves the supervisor that started this process until it says to stop, and returns the
    /// exit status to leave with: 0 after a clean shutdown, 2 when the process was not started
    /// by a supervisor or the handshake failed. The transport is the one the supervisor chose:
    /// native when it named a bootstrap server (`corral run --worker`), else JSON lines on
    /// stdin and stdout (`corral run --worker-cmd`).
    pub fn run(self) -> ExitCode {
        let served = if std::env::var_os(corral_protocol::ENV_BOOTSTRAP).is_some()
            || std::env::var_os(corral_protocol::ENV_SUPERVISOR_PID).is_none()
        {
            native::serve(&self.registry)
        } else {
            stdio::serve(&self.registry)
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(ServeError::NotSupervised) => {
                eprintln!(
                    "this is a corral worker; it serves tasks [{}] to a supervisor.\n\
                     Run it with: corral run --worker {} jobs.jsonl",
                    self.registry.names().join(", "),
                    std::env::args().next().unwrap_or_else(|| "PATH".into())
                );
                ExitCode::from(2)
            }
            Err(err) => {
                eprintln!("corral worker: {err}");
                ExitCode::from(2)
            }
        }
    }
}
