//! Result lines, the one place they are written: by the supervisor, and by a native worker
//! answering a block of job lines itself. Raw JSON (ids, outputs, metas) is spliced in as it
//! came, never re-parsed.
//!
//! Field order: `id`, `line` (only for results about the line itself), `ok`, `output` or
//! `error` (then `output`, when a failed task still produced one), `attempts`, `worker`, `ms`,
//! `meta` (or `input`, the line itself, in `--lines` mode).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of failure a result can carry.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The task returned an error.
    TaskError,
    /// The task panicked.
    Panic,
    /// The job killed its worker on every attempt.
    Crashed,
    /// The job ran past `--timeout` on every attempt.
    Timeout,
    /// The line is not a valid job, or its input does not fit the task.
    BadInput,
    /// No worker serves the named task.
    UnknownTask,
    /// The line is longer than `--max-job-bytes`.
    TooLarge,
    /// The job was not run because the run stopped.
    Cancelled,
}

impl ErrorKind {
    /// The kind as it appears in result lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TaskError => "task_error",
            ErrorKind::Panic => "panic",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::UnknownTask => "unknown_task",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a result is about.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// A job: its id as JSON, and the line it was read from (written only when the job never
    /// ran, `attempts` 0).
    Job {
        /// The id's JSON text.
        id: &'a [u8],
        /// Its line number.
        line: u64,
    },
    /// A line that is no job at all.
    Line(u64),
}

/// How a job ended, as its result line says.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The task's output, as JSON, and the time it took.
    Ok {
        /// The output's JSON text.
        output: &'a [u8],
        /// Nanoseconds in the task.
        nanos: u64,
    },
    /// Why it failed.
    Err(&'a Failure<'a>),
}

/// A failure, as its result line says.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// What kind.
    pub kind: ErrorKind,
    /// The signal that ended the worker, for `crashed`.
    pub signal: Option<&'a str>,
    /// The worker's exit status, for `crashed`.
    pub exit_code: Option<i32>,
    /// The name the worker gave the error, for `task_error`.
    pub error_type: Option<&'a str>,
    /// What went wrong, in words.
    pub message: &'a str,
    /// Output the failed task still produced, as JSON.
    pub output: Option<&'a [u8]>,
}

impl<'a> Failure<'a> {
    /// A failure of `kind` that says only `message`.
    pub fn new(kind: ErrorKind, message: &'a str) -> Failure<'a> {
        Failure {
            kind,
            signal: None,
            exit_code: None,
            error_type: None,
            message,
            output: None,
        }
    }
}

/// What the echo a job carries back is, and the field it is written as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Echo {
    /// The job line's `meta`, written as `meta`.
    #[default]
    Meta,
    /// In `--lines` mode, the input line itself, written as `input`.
    Input,
}

/// One result line's parts; [`ResultLine::write`] appends it.
#[derive(Debug, Clone, Copy)]
pub struct ResultLine<'a> {
    /// What it is about.
    pub key: Key<'a>,
    /// How the job ended.
    pub outcome: Outcome<'a>,
    /// Attempts made (0: the job never ran).
    pub attempts: u32,
    /// The pid of the worker that ran it last.
    pub worker: Option<u32>,
    /// The echo's JSON text, and what it is.
    pub echo: Option<(&'a [u8], Echo)>,
}

impl ResultLine<'_> {
    /// Appends the line, with its `\n`, to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        // Room for the line at once: the raw JSON, and less than 128 bytes for the rest unless
        // there is an error message.
        let id_len = match self.key {
            Key::Job { id, .. } => id.len(),
            Key::Line(_) => 0,
        };
        let output_len = match self.outcome {
            Outcome::Ok { output, .. } => output.len(),
            Outcome::Err(_) => 0,
        };
        let echo_len = self.echo.map_or(0, |(echo, _)| echo.len());
        out.reserve(128 + id_len + output_len + echo_len);
        out.push(b'{');
        match self.key {
            Key::Job { id, line } => {
                out.extend_from_slice(b"\"id\":");
                out.extend_from_slice(id);
                if self.attempts == 0 {
                    out.extend_from_slice(b",\"line\":");
                    write_u64(out, line);
                }
            }
            Key::Line(line) => {
                out.extend_from_slice(b"\"line\":");
                write_u64(out, line);
            }
        }
        match self.outcome {
            Outcome::Ok { output, .. } => {
                out.extend_from_slice(b",\"ok\":true,\"output\":");
                out.extend_from_slice(output);
            }
            Outcome::Err(error) => {
                out.extend_from_slice(b",\"ok\":false,\"error\":{\"kind\":\"");
                out.extend_from_slice(error.kind.as_str().as_bytes());
                out.push(b'"');
                if let Some(signal) = error.signal {
                    out.extend_from_slice(b",\"signal\":");
                    write_json_str(out, signal);
                }
                if let Some(code) = error.exit_code {
                    out.extend_from_slice(b",\"exit_code\":");
                    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
                }
                if let Some(error_type) = error.error_type {
                    out.extend_from_slice(b",\"type\":");
                    write_json_str(out, error_type);
                }
                out.extend_from_slice(b",\"message\":");
                write_json_str(out, error.message);
                out.push(b'}');
                if let Some(output) = error.output {
                    out.extend_from_slice(b",\"output\":");
                    out.extend_from_slice(output);
                }
            }
        }
        if matches!(self.key, Key::Job { .. }) {
            out.extend_from_slice(b",\"attempts\":");
            write_u64(out, u64::from(self.attempts));
        }
        if let Some(pid) = self.worker {
            out.extend_from_slice(b",\"worker\":");
            write_u64(out, u64::from(pid));
        }
        if let Outcome::Ok { nanos, .. } = self.outcome {
            // Milliseconds with microsecond precision, written without floating-point
            // formatting.
            let micros = nanos / 1_000;
            out.extend_from_slice(b",\"ms\":");
            write_u64(out, micros / 1_000);
            out.push(b'.');
            let frac = micros % 1_000;
            out.extend_from_slice(&[
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ]);
        }
        if let Some((echo, what)) = self.echo {
            out.extend_from_slice(match what {
                Echo::Meta => b",\"meta\":",
                Echo::Input => b",\"input\":",
            });
            out.extend_from_slice(echo);
        }
        out.extend_from_slice(b"}\n");
    }
}

fn write_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("writing to a Vec cannot fail");
}
