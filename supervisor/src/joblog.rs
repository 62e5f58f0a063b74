//! `--joblog FILE`: one line per finished job in GNU parallel's joblog format (`Seq Host
//! Starttime JobRuntime Send Receive Exitval Signal Command`, tab-separated, behind a header),
//! written on a thread of its own in the order jobs finish, so that the tools that read
//! parallel's joblogs read corral's.
//!
//! The columns, for corral:
//! - `Seq`: the job's line in its input; `Host`: `:` (this machine), as parallel writes it.
//! - `Starttime`: seconds since the epoch, 3 decimals; `JobRuntime`: seconds, `%10.3f`. A job
//!   that never ran (a bad line, an unknown task) has its result's time and 0.
//! - `Send`: 0; `Receive`: the bytes an `--exec` command wrote on stdout, 0 for a task.
//! - `Exitval`: 0 for a success; an `--exec` command's exit status; the worker's exit status
//!   for a job that made it exit; 1 for a task's failure; -1 for a line that never ran.
//! - `Signal`: the signal that ended the command, or the worker running the job (a timeout
//!   is 9, the SIGKILL that ended it), else 0.
//! - `Command`: an `--exec` job's command, its words quoted as a shell reads them (as parallel
//!   quotes its replacements); for a task, its name. Tabs and newlines become spaces.

use std::fs::File;
use std::io::{self, Write};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, bounded};

use crate::notes::{JobNote, Noted};
use crate::record::{ErrorKind, TaskId, TaskNames};

/// The header line.
pub const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// The joblog being written.
#[derive(Debug)]
pub struct Joblog {
    notes: Option<Sender<Noted>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Joblog {
    /// Starts the writer of the joblog `file`; task numbers are `names`'.
    pub fn start(file: File, names: TaskNames) -> Joblog {
        let (tx, rx) = bounded::<Noted>(64);
        let thread = thread::Builder::new()
            .name("corral-joblog".into())
            .spawn(move || {
                // Each batch of notes is one write: no buffer between.
                let mut out = file;
                out.write_all(HEADER.as_bytes())?;
                let mut formatter = Formatter::new(names, Clock::now());
                let mut lines = Vec::with_capacity(64 * 1024);
                for noted in rx {
                    // The workers' lines as they wrote them, then those of the jobs seen whole.
                    for written in &noted.joblog_lines {
                        out.write_all(written.as_bytes())?;
                    }
                    if noted.notes.is_empty() {
                        continue;
                    }
                    for note in &noted.notes {
                        formatter.line(note, &mut lines);
                    }
                    out.write_all(&lines)?;
                    lines.clear();
                }
                Ok(())
            })
            .expect("spawning a thread");
        Joblog {
            notes: Some(tx),
            thread: Some(thread),
        }
    }

    /// Where notes go to be written.
    pub fn sender(&self) -> Sender<Noted> {
        self.notes.clone().expect("only `finish` takes it")
    }

    /// Waits for every line to be written.
    ///
    /// # Errors
    ///
    /// If the file could not be written.
    pub fn finish(&mut self) -> io::Result<()> {
        self.notes = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(io::Error::other("the joblog writer panicked")),
            None => Ok(()),
        }
    }
}

/// Instants as milliseconds since the epoch.
struct Clock {
    instant: Instant,
    epoch_nanos: u128,
}

impl Clock {
    fn now() -> Clock {
        let epoch_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Clock {
            instant: Instant::now(),
            epoch_nanos,
        }
    }

    /// `at` in milliseconds since the epoch, rounded.
    fn epoch_millis(&self, at: Instant) -> u64 {
        let nanos = match at.checked_duration_since(self.instant) {
            Some(after) => self.epoch_nanos + after.as_nanos(),
            None => self
                .epoch_nanos
                .saturating_sub(self.instant.duration_since(at).as_nanos()),
        };
        u64::try_from((nanos + 500_000) / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// The name of `task`, looked up in `names` once and kept in `known`.
fn name_of<'a>(
    known: &'a mut Vec<Option<std::sync::Arc<str>>>,
    names: &TaskNames,
    task: TaskId,
) -> &'a str {
    let at = task.index();
    if known.len() <= at {
        known.resize(at + 1, None);
    }
    known[at].get_or_insert_with(|| names.name(task))
}

/// What an `--exec` job's output says of its command.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Command<'a> {
    #[serde(borrow)]
    command: Option<std::borrow::Cow<'a, str>>,
    status: Option<i32>,
    signal: Option<String>,
    #[serde(borrow)]
    stdout: Option<&'a serde_json::value::RawValue>,
}

/// Writes joblog lines; keeps the task names it has looked up.
struct Formatter {
    names: TaskNames,
    known: Vec<Option<std::sync::Arc<str>>>,
    clock: Clock,
    writer: corral_protocol::joblog::Writer,
}

impl Formatter {
    fn new(names: TaskNames, clock: Clock) -> Formatter {
        Formatter {
            names,
            known: Vec::new(),
            clock,
            writer: corral_protocol::joblog::Writer::default(),
        }
    }

    /// Appends the joblog line of `note` to `out`.
    fn line(&mut self, note: &JobNote, out: &mut Vec<u8>) {
        let ended = note.ended.as_deref();
        let exec: Command<'_> = ended
            .and_then(|ended| ended.exec_output.as_ref())
            .and_then(|output| serde_json::from_slice(output.as_bytes()).ok())
            .unwrap_or_default();
        let started = note.started.unwrap_or_else(Instant::now);
        let signal = exec
            .signal
            .as_deref()
            .and_then(|name| name.parse::<nix::sys::signal::Signal>().ok())
            .map(|signal| signal as i32)
            .or(ended.and_then(|ended| ended.signal));
        let exitval = match (note.failed, exec.status, ended.and_then(|e| e.exit_code)) {
            (_, Some(status), _) => status,
            (_, None, Some(code)) => code,
            (None, _, _) => 0,
            (Some(_), _, _) if signal.is_some() => 0,
            (Some(ErrorKind::BadInput | ErrorKind::UnknownTask | ErrorKind::TooLarge), ..)
                if note.started.is_none() =>
            {
                -1
            }
            (Some(_), ..) => 1,
        };
        let received = exec
            .stdout
            .and_then(|text| corral_protocol::byte_string::decode(text.get().as_bytes()))
            .map_or(0, |bytes| bytes.len());
        let start_millis = self.clock.epoch_millis(started);
        let command: &[u8] = match (&exec.command, note.task) {
            (Some(command), _) => command.as_bytes(),
            (None, Some(task)) => name_of(&mut self.known, &self.names, task).as_bytes(),
            (None, None) => b"",
        };
        let line = corral_protocol::joblog::Line {
            seq: note.line,
            start_millis,
            nanos: note.nanos,
            received: received as u64,
            exitval,
            signal: signal.unwrap_or(0),
            command,
        };
        self.writer.write(&line, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notes::Ended;
    use crate::record::SharedBytes;

    fn exec(output: Option<SharedBytes>) -> Option<Box<Ended>> {
        Some(Box::new(Ended {
            exec_output: output,
            ..Ended::default()
        }))
    }

    fn line(note: &JobNote, names: &TaskNames) -> String {
        let mut out = Vec::new();
        Formatter::new(names.clone(), Clock::now()).line(note, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn fields(text: &str) -> Vec<String> {
        text.trim_end_matches('\n')
            .split('\t')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_task_job_is_its_line_its_times_and_its_task() {
        let names = TaskNames::default();
        let task = names.intern("sum_squares").unwrap();
        let note = JobNote {
            task: Some(task),
            started: Some(Instant::now()),
            nanos: 1_500_000,
            ..JobNote::unrun(7, None)
        };
        let f = fields(&line(&note, &names));
        assert_eq!(f.len(), 9);
        assert_eq!(f[0], "7");
        assert_eq!(f[1], ":");
        let start: f64 = f[2].parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - start).abs() < 5.0, "{start} vs {now}");
        assert_eq!(f[3], "     0.002");
        assert_eq!(&f[4..], ["0", "0", "0", "0", "sum_squares"]);
    }

    #[test]
    fn an_exec_job_says_its_command_status_signal_and_output_bytes() {
        let names = TaskNames::default();
        let task = names.intern("exec").unwrap();
        let output = |json: &str| {
            let bytes = bytes::Bytes::copy_from_slice(json.as_bytes());
            Some(SharedBytes::new(&bytes, 0..bytes.len()))
        };
        let failed = JobNote {
            task: Some(task),
            started: Some(Instant::now()),
            failed: Some(ErrorKind::TaskError),
            ended: exec(output(
                r#"{"command":"grep 'x y'\tz","status":3,"signal":null,"stdout":"ab\n","stderr":""}"#,
            )),
            ..JobNote::unrun(2, None)
        };
        let f = fields(&line(&failed, &names));
        assert_eq!(&f[4..], ["0", "3", "3", "0", "grep 'x y' z"]);
        let killed = JobNote {
            ended: exec(output(
                r#"{"command":"sleep 9","status":null,"signal":"SIGKILL"}"#,
            )),
            ..failed
        };
        assert_eq!(&fields(&line(&killed, &names))[6..], ["0", "9", "sleep 9"]);
    }

    #[test]
    fn a_line_that_never_ran_is_minus_one_and_a_crash_names_its_signal() {
        let names = TaskNames::default();
        let bad = JobNote::unrun(3, Some(ErrorKind::BadInput));
        assert_eq!(
            &fields(&line(&bad, &names))[3..],
            ["     0.000", "0", "0", "-1", "0", ""]
        );
        let crashed = JobNote {
            started: Some(Instant::now()),
            ended: Some(Box::new(Ended {
                signal: Some(11),
                ..Ended::default()
            })),
            ..JobNote::unrun(4, Some(ErrorKind::Crashed))
        };
        assert_eq!(&fields(&line(&crashed, &names))[6..8], ["0", "11"]);
    }
}
