//! The task registry: named, type-erased closures that turn a job's JSON input into JSON output,
//! catching panics so that one bad job never takes the worker down.

use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a job produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    /// The task returned an error.
    #[error("{0}")]
    TaskError(String),
    /// The task failed and says how, with output describing the failure already written (a
    /// command that exited non-zero: its status and what it printed). Built-in tasks only.
    #[error("{message}")]
    Described {
        /// A name for the kind of failure, e.g. `exit_status`.
        error_type: String,
        /// What went wrong, in words.
        message: String,
    },
    /// The input did not parse as the task's input type.
    #[error("input does not fit the task: {0}")]
    BadInput(String),
    /// The task panicked.
    #[error("task panicked: {0}")]
    Panic(String),
    /// No task has this name.
    #[error("unknown task {0:?}")]
    UnknownTask(String),
}

/// A job's outcome as the native protocol carries it.
pub(crate) fn task_result(result: Result<(), TaskFailure>) -> corral_protocol::TaskResult {
    use corral_protocol::TaskResult;
    {
        match result {
            Ok(()) => TaskResult::Ok,
            Err(TaskFailure::BadInput(message)) => TaskResult::BadInput(message),
            Err(TaskFailure::Panic(message)) => TaskResult::Panic(message),
            Err(TaskFailure::Described {
                error_type,
                message,
            }) => TaskResult::TaskError {
                message,
                error_type: Some(error_type),
            },
            Err(failure @ (TaskFailure::TaskError(_) | TaskFailure::UnknownTask(_))) => {
                TaskResult::TaskError {
                    message: failure.to_string(),
                    error_type: None,
                }
            }
        }
    }
}

type ErasedFn = dyn Fn(&[u8], &mut Vec<u8>) -> Result<(), TaskFailure> + Send + Sync;

/// A task's skim: see [`BoxedTask::skimming`].
pub(crate) type SkimFn = fn(&[u8], &mut Vec<u8>) -> Option<(usize, Result<(), TaskFailure>)>;

/// Why a job's input does not fit the task's input type, as the job's `bad_input` message.
fn input_error(err: serde_json::Error) -> TaskFailure {
    let mut message = input_message(&err);
    if message.contains("surrogate") {
        // The escapes `corral_protocol::byte_string` writes for a line's bytes that are not UTF-8.
        message.push_str(
            " (the input holds bytes that are not UTF-8, written \\udc80..\\udcff, which a \
             String cannot hold)",
        );
    }
    TaskFailure::BadInput(message)
}

/// serde_json's message for a job's input, with its position said as a place in the input value:
/// serde_json's "at line 1 column 3" would read as a line of the job file.
pub(crate) fn input_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&position) {
        Some(message) if err.line() == 1 => {
            format!("{message} at column {} of the input", err.column())
        }
        Some(message) => format!(
            "{message} at line {} column {} of the input",
            err.line(),
            err.column()
        ),
        None => text,
    }
}

/// One task with its types erased: JSON bytes in, JSON bytes appended to a buffer.
pub(crate) struct BoxedTask(Box<ErasedFn>, Option<SkimFn>);

impl BoxedTask {
    pub(crate) fn new<I, O, E, F>(f: F) -> BoxedTask
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Display,
        F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
    {
        let task = Box::new(move |input: &[u8], out: &mut Vec<u8>| {
            let input: I = serde_json::from_slice(input).map_err(input_error)?;
            let output = f(input).map_err(|err| TaskFailure::TaskError(err.to_string()))?;
            serde_json::to_writer(out, &output)
                .map_err(|err| TaskFailure::TaskError(format!("output is not JSON: {err}")))
        });
        BoxedTask(task, None)
    }

    /// A task that reads its JSON input and writes its JSON output itself. Only for built-in
    /// tasks: the supervisor passes a task's output on as it is, so it must be valid JSON.
    pub(crate) fn raw<F>(f: F) -> BoxedTask
    where
        F: Fn(&[u8], &mut Vec<u8>) -> Result<(), TaskFailure> + Send + Sync + 'static,
    {
        BoxedTask(Box::new(f), None)
    }

    /// The task, with `skim` to read and run the commonest inputs straight from their job line
    /// as the line is checked ([`corral_protocol::jobline::fields_skimming`]). Given the line
    /// from the input on, `skim` either declines (`None`) or reads one whole JSON value there
    /// and returns its length with the task's outcome, its output appended to the buffer, which
    /// must be what the task itself gives that input. Only for a pure task: a line may still
    /// be refused after its input was skimmed, and the outcome is then dropped.
    pub(crate) fn skimming(self, skim: SkimFn) -> BoxedTask {
        BoxedTask(self.0, Some(skim))
    }
}

/// The tasks of one worker, in registration order; a task's index is its place here.
#[derive(Default)]
pub(crate) struct Registry {
    tasks: Vec<(String, BoxedTask)>,
}

impl Registry {
    pub(crate) fn insert(&mut self, name: &str, task: BoxedTask) {
        match self.index_of(name) {
            Some(index) => self.tasks[index].1 = task,
            None => self.tasks.push((name.to_owned(), task)),
        }
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.tasks.iter().map(|(name, _)| name.clone()).collect()
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|(n, _)| n == name)
    }

    /// Whether task `index` skims its inputs ([`BoxedTask::skimming`]).
    pub(crate) fn skims(&self, index: usize) -> bool {
        self.tasks
            .get(index)
            .is_some_and(|(_, task)| task.1.is_some())
    }

    /// Skims with task `index` the input at the start of `rest` ([`BoxedTask::skimming`]);
    /// on `None` (declined, or the skim panicked) `out` is left as it was.
    pub(crate) fn skim(
        &self,
        index: usize,
        rest: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<(usize, Result<(), TaskFailure>)> {
        let skim = self.tasks.get(index)?.1.1?;
        let start = out.len();
        let skimmed = catch_unwind(AssertUnwindSafe(|| skim(rest, out)))
            .ok()
            .flatten();
        match &skimmed {
            Some((_, Ok(()) | Err(TaskFailure::Described { .. }))) => {}
            _ => out.truncate(start),
        }
        skimmed
    }

    /// Runs task `index` on `input`, appending its JSON output to `out`. On failure `out` is
    /// left as it was, except for a [`TaskFailure::Described`] one.
    pub(crate) fn run(
        &self,
        index: usize,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TaskFailure> {
        let Some((_, task)) = self.tasks.get(index) else {
            return Err(TaskFailure::UnknownTask(format!("#{index}")));
        };
        let start = out.len();
        let result = catch_unwind(AssertUnwindSafe(|| (task.0)(input, out)))
            .unwrap_or_else(|payload| Err(TaskFailure::Panic(panic_message(payload.as_ref()))));
        if matches!(&result, Err(failure) if !matches!(failure, TaskFailure::Described { .. })) {
            out.truncate(start);
        }
        result
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad input's position is a place in the input value, not a line of the job file.
    #[test]
    fn a_bad_input_says_where_in_the_input() {
        let err = serde_json::from_slice::<Vec<i64>>(b"[1, x]").unwrap_err();
        assert_eq!(
            input_message(&err),
            "expected value at column 5 of the input"
        );
        let err = serde_json::from_slice::<Vec<i64>>(b"[1,\r\n x]").unwrap_err();
        assert_eq!(
            input_message(&err),
            "expected value at line 2 column 2 of the input"
        );
    }

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.insert(
            "sum",
            BoxedTask::new(|v: Vec<i64>| -> Result<i64, String> { Ok(v.iter().sum()) }),
        );
        registry.insert(
            "boom",
            BoxedTask::new(|_: serde_json::Value| -> Result<(), String> { panic!("kaboom") }),
        );
        registry.insert(
            "fail",
            BoxedTask::new(|s: String| -> Result<(), String> { Err(format!("no {s}")) }),
        );
        registry
    }

    #[test]
    fn runs_parses_and_reports_each_failure_kind() {
        let registry = registry();
        let mut out = b"prefix".to_vec();
        registry.run(0, b"[1,2,3]", &mut out).unwrap();
        assert_eq!(out, b"prefix6");
        assert_eq!(
            registry.run(1, b"null", &mut out),
            Err(TaskFailure::Panic("kaboom".into()))
        );
        assert_eq!(
            registry.run(2, b"\"way\"", &mut out),
            Err(TaskFailure::TaskError("no way".into()))
        );
        assert!(matches!(
            registry.run(0, b"\"x\"", &mut out),
            Err(TaskFailure::BadInput(_))
        ));
        assert!(matches!(
            registry.run(9, b"1", &mut out),
            Err(TaskFailure::UnknownTask(_))
        ));
        assert_eq!(out, b"prefix6", "failures leave the buffer untouched");
    }

    #[test]
    fn later_registration_replaces_earlier() {
        let mut registry = registry();
        registry.insert(
            "sum",
            BoxedTask::new(|_: Vec<i64>| -> Result<i64, String> { Ok(0) }),
        );
        assert_eq!(registry.names(), ["sum", "boom", "fail"]);
        let mut out = Vec::new();
        registry.run(0, b"[1]", &mut out).unwrap();
        assert_eq!(out, b"0");
    }
}
