//! `--joblog FILE`: one line per finished job in GNU parallel's joblog format (`Seq Host
//! Starttime JobRuntime Send Receive Exitval Signal Command`, tab-separated, behind a header),
//! written on a thread of its own in the order jobs finish, so that the tools that read
//! parallel's joblogs read corral's. The lines of blocks are written from what their workers
//! noted of them ([`BlockJoblog`]); a worker does not format them.
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

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corral_protocol::joblog::{Ran, Unpacker};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use crate::notes::{BlockJoblog, JobNote, Noted};
use crate::record::{ErrorKind, TaskId, TaskNames};

/// The header line.
pub use corral_protocol::joblog::HEADER;

/// A joblog's file, opened for a run ([`Joblog::open`]).
#[derive(Debug)]
pub struct JoblogFile {
    file: File,
    /// Whether it needs its header: it is new, or held none.
    header: bool,
}

/// The joblog being written.
#[derive(Debug)]
pub struct Joblog {
    notes: Option<Sender<Noted>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Joblog {
    /// Opens the joblog at `path` for a run: a new one, or with `resume`, the one a run
    /// before it left, to go on after its last whole line (as parallel's `--resume` goes on
    /// with its joblog; a line torn by a crash is dropped).
    ///
    /// # Errors
    ///
    /// If the file cannot be created, read or cut.
    pub fn open(path: &Path, resume: bool) -> io::Result<JoblogFile> {
        if !resume {
            return File::create(path).map(|file| JoblogFile { file, header: true });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        // Where the last whole line ends: a crash can tear the last one.
        let mut whole = 0;
        let mut chunk = vec![0; 64 << 10];
        let mut end = len;
        while end > 0 {
            let start = end.saturating_sub(chunk.len() as u64);
            let chunk = &mut chunk[..(end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(chunk)?;
            if let Some(at) = memchr::memrchr(b'\n', chunk) {
                whole = start + at as u64 + 1;
                break;
            }
            end = start;
        }
        if whole < len {
            file.set_len(whole)?;
        }
        Ok(JoblogFile {
            file,
            header: whole == 0,
        })
    }

    /// Starts the writer of the joblog `file`; task numbers are `names`'.
    pub fn start(file: JoblogFile, names: TaskNames) -> Joblog {
        let (tx, rx) = bounded::<Noted>(64);
        let thread = thread::Builder::new()
            .name("corral-joblog".into())
            .spawn(move || write_lines(file, names, &rx))
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

/// Lines go to the file in writes of about this many bytes: a buffer that stays in the cache
/// of the core that fills it, for the kernel to copy from (larger writes cost it fewer calls,
/// but cost the run more, measured with tiny jobs)...
const WRITE_BYTES: usize = 64 << 10;
/// ...or sooner, once the first of them has waited this long, so that the file keeps up with
/// the run.
const WRITE_AFTER: Duration = Duration::from_millis(100);

/// Writes the lines of the notes from `rx` to `out`, after the header if it needs one, until
/// every sender is gone.
fn write_lines(out: JoblogFile, names: TaskNames, rx: &Receiver<Noted>) -> io::Result<()> {
    let JoblogFile {
        file: mut out,
        header,
    } = out;
    if header {
        out.write_all(HEADER.as_bytes())?;
    }
    let mut formatter = Formatter::new(names, Clock::now());
    let mut lines = Vec::with_capacity(2 * WRITE_BYTES);
    // When the first line not yet written was made.
    let mut waiting_since: Option<Instant> = None;
    loop {
        let noted = match waiting_since {
            None => rx.recv().ok(),
            Some(since) => match rx.recv_timeout(WRITE_AFTER.saturating_sub(since.elapsed())) {
                Ok(noted) => Some(noted),
                Err(RecvTimeoutError::Timeout) => {
                    out.write_all(&lines)?;
                    lines.clear();
                    waiting_since = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            },
        };
        let Some(noted) = noted else { break };
        // The lines of blocks, as their workers noted them, then those of the jobs seen whole.
        for block in &noted.block_joblogs {
            formatter.block(block, &mut lines);
        }
        for note in &noted.notes {
            formatter.line(note, &mut lines);
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        if lines.len() >= WRITE_BYTES || since.elapsed() >= WRITE_AFTER {
            out.write_all(&lines)?;
            lines.clear();
            waiting_since = None;
        }
    }
    out.write_all(&lines)
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
    /// Whether a worker's notes were found cut short (said once).
    cut_seen: bool,
}

impl Formatter {
    fn new(names: TaskNames, clock: Clock) -> Formatter {
        Formatter {
            names,
            known: Vec::new(),
            clock,
            writer: corral_protocol::joblog::Writer::default(),
            cut_seen: false,
        }
    }

    /// Appends the joblog lines of the lines of a batch of blocks, from what its worker noted
    /// of them.
    fn block(&mut self, block: &BlockJoblog, out: &mut Vec<u8>) {
        let mut alikes = Unpacker::new(block.alike.as_bytes());
        let mut cut = false;
        for alike in alikes.by_ref() {
            // No more lines than the batch has.
            if alike
                .first
                .checked_add(alike.count)
                .is_none_or(|end| end > block.lines)
            {
                cut = true;
                break;
            }
            let task = alike
                .task
                .and_then(|index| block.task_ids.get(index as usize).copied().flatten());
            let command = match task {
                Some(task) => name_of(&mut self.known, &self.names, task).as_bytes(),
                None => b"",
            };
            // The writer writes only the Seq anew when the rest is its last line's.
            let line = corral_protocol::joblog::Line {
                seq: block.first_line.saturating_add(alike.first),
                start_millis: alike.start_millis,
                nanos: alike.runtime_millis.saturating_mul(1_000_000),
                received: 0,
                exitval: match alike.ran {
                    Ran::Ok => 0,
                    Ran::Failed => 1,
                    Ran::Never => -1,
                },
                signal: 0,
                command,
            };
            self.writer.write(&line, out);
            self.writer.write_next(alike.count.saturating_sub(1), out);
        }
        if (cut || alikes.is_cut()) && !self.cut_seen {
            self.cut_seen = true;
            tracing::warn!(
                "a worker's notes of the lines of a block (from line {}) were not whole: the \
                 joblog lacks the lines after the last one it could read",
                block.first_line
            );
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
    use std::sync::Arc;

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

    #[test]
    fn the_lines_of_a_block_are_written_as_one_by_one() {
        use corral_protocol::joblog::{Line, Packer};
        let names = TaskNames::default();
        let cube = names.intern("cube").unwrap();
        let sum = names.intern("sum_squares").unwrap();
        // The worker's tasks: its 0 is unknown to the run, 1 is sum_squares, 2 is cube.
        let task_ids: Arc<[Option<TaskId>]> = Arc::from(vec![None, Some(sum), Some(cube)]);
        let started = 1_796_646_867_445_123_456;
        let (mut packer, mut packed) = (Packer::new(started), Vec::new());
        let mut expected = Vec::new();
        let (mut state, mut elapsed) = (7u64, 0);
        for index in 0..3_000u64 {
            // A few hundred nanoseconds mostly; now and then a longer one, a failure, a line
            // that did not run, another task, or a skipped (blank) line.
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let pick = state >> 33;
            let (task, ran, nanos) = match pick % 50 {
                0 => (Some(1), Ran::Failed, 900),
                1 => (None, Ran::Never, 0),
                2 => (Some(2), Ran::Ok, 300),
                3 => (Some(1), Ran::Ok, 2_600_000),
                4 => (Some(0), Ran::Ok, 499_999),
                5..=9 => (Some(1), Ran::Ok, 180_000 + pick % 1000),
                10 => (Some(1), Ran::Ok, 500_000 + pick % 100_000),
                _ => (Some(1), Ran::Ok, 100 + pick % 400),
            };
            if pick % 97 == 0 {
                continue;
            }
            packer.line(index, task, ran, nanos, &mut packed);
            let command = match task {
                Some(1) => "sum_squares",
                Some(2) => "cube",
                _ => "",
            };
            Line {
                seq: 41 + index,
                start_millis: (started + elapsed + 500_000) / 1_000_000,
                nanos,
                received: 0,
                exitval: match ran {
                    Ran::Ok => 0,
                    Ran::Failed => 1,
                    Ran::Never => -1,
                },
                signal: 0,
                command: command.as_bytes(),
            }
            .write(&mut expected);
            elapsed += nanos;
        }
        packer.finish(&mut packed);
        let bytes = bytes::Bytes::from(packed);
        let block = BlockJoblog {
            alike: SharedBytes::new(&bytes, 0..bytes.len()),
            first_line: 41,
            lines: 3_000,
            task_ids,
        };
        let mut formatter = Formatter::new(names.clone(), Clock::now());
        let mut written = Vec::new();
        formatter.block(&block, &mut written);
        // Twice: the second block starts from what the first one left.
        formatter.block(&block, &mut written);
        let expected = [expected.clone(), expected].concat();
        assert_eq!(String::from_utf8(written), String::from_utf8(expected));
        assert!(!formatter.cut_seen);

        // A worker that claims more lines than its batch has gets no more than it has.
        let short = BlockJoblog {
            lines: 2_000,
            ..block
        };
        let mut written = Vec::new();
        formatter.block(&short, &mut written);
        assert!(bytecount::count(&written, b'\n') < 2_000);
        assert!(formatter.cut_seen);
    }
}
