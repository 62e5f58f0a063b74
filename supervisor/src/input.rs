//! Job readers: turn JSON-lines (or plain lines) into jobs, streaming, with a cap on line length
//! so that a huge or endless line never lands in memory whole.
//!
//! Lines are numbered from 1 across all inputs, as if they were concatenated; a job without an
//! `id` takes its line number. Empty lines (also `\r\n` and whitespace-only ones) are skipped
//! but counted.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Range;
use std::sync::Arc;

use corral_protocol::JobSeq;

use crate::jobline;
use crate::record::{
    ErrorKind, InputItem, Job, JobError, JobId, JobResult, ResultKey, SharedBytes,
};
use crate::resume::{ResultKeyText, id_key, line_key};

/// How lines become jobs.
#[derive(Debug, Clone)]
pub struct InputFormat {
    /// Each line is a plain string input rather than a JSON job.
    pub plain_lines: bool,
    /// The task of jobs that name none.
    pub default_task: Option<String>,
    /// Longest line accepted, in bytes (without its line ending).
    pub max_line_bytes: usize,
}

/// One physical line, or the news that it was too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line's bytes, without the line ending, in the reader's buffer.
    Text,
    /// The line was this many bytes long, over the limit; it was skipped.
    TooLong(u64),
}

/// Reads one line of at most `max` bytes into `buf` (cleared first), dropping `\n` or `\r\n`.
/// Returns `None` at end of input. A longer line is consumed without being stored.
pub fn read_line_limited(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<Line>> {
    buf.clear();
    let mut total: u64 = 0;
    let mut too_long = false;
    let mut ends_with_cr = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            if total == 0 {
                return Ok(None);
            }
            break;
        }
        let (chunk, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        total += chunk.len() as u64;
        if let Some(&last) = chunk.last() {
            ends_with_cr = last == b'\r';
        }
        if !too_long {
            if buf.len() + chunk.len() > max + 1 {
                // One spare byte for a '\r' that a CRLF ending may put past the limit.
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            if total == 0 {
                // An empty line: report it as such.
                return Ok(Some(Line::Text));
            }
            break;
        }
    }
    if ends_with_cr {
        buf.pop();
        total -= 1;
    }
    if too_long || buf.len() > max {
        buf.clear();
        return Ok(Some(Line::TooLong(total)));
    }
    Ok(Some(Line::Text))
}

/// Turns lines into [`InputItem`]s, numbering lines and jobs.
#[derive(Debug)]
pub struct JobParser {
    format: InputFormat,
    line: u64,
    next_seq: u64,
    /// Task names seen so far, shared between the jobs that name them.
    tasks: HashMap<Box<str>, Arc<str>>,
    /// The task named last, checked first.
    last_task: Option<Arc<str>>,
    /// The task of jobs that name none.
    default_task: Option<Arc<str>>,
    /// The input of jobs that give none.
    null: SharedBytes,
    resume: Option<ResumeFilter>,
}

/// With `--resume`: results already written, and every id seen so far with its line, so that
/// finished jobs are skipped and a repeated id is reported instead of merged.
#[derive(Debug)]
struct ResumeFilter {
    finished: HashSet<ResultKeyText>,
    seen: HashMap<ResultKeyText, u64>,
}

enum Verdict {
    Run,
    Skip,
    Duplicate(u64),
}

impl JobParser {
    /// A parser at line 1.
    pub fn new(format: InputFormat) -> JobParser {
        JobParser {
            default_task: format.default_task.as_deref().map(Arc::from),
            format,
            line: 0,
            next_seq: 0,
            tasks: HashMap::new(),
            last_task: None,
            null: SharedBytes::from(&b"null"[..]),
            resume: None,
        }
    }

    /// Skips lines whose result is among `finished` (keys from [`crate::resume`]), and
    /// reports repeated ids as `bad_input` results keyed by line.
    pub fn resume(&mut self, finished: HashSet<ResultKeyText>) {
        self.resume = Some(ResumeFilter {
            finished,
            seen: HashMap::new(),
        });
    }

    fn verdict(&mut self, id: Option<&[u8]>) -> Verdict {
        let Some(filter) = &mut self.resume else {
            return Verdict::Run;
        };
        let key = match id {
            Some(raw) => id_key(raw).unwrap_or_else(|| line_key(self.line)),
            None => format!("i:{}", self.line),
        };
        if let Some(&first) = filter.seen.get(&key) {
            return Verdict::Duplicate(first);
        }
        filter.seen.insert(key.clone(), self.line);
        if filter.finished.contains(&key) {
            Verdict::Skip
        } else {
            Verdict::Run
        }
    }

    /// Reads all of `reader`, passing each item to `sink` together with whether the reader has
    /// nothing more buffered (the next line would wait for I/O: a good moment to hand over what
    /// was read). Stops early when `sink` returns false. Returns whether it read to the end.
    pub fn read_all<R: Read>(
        &mut self,
        reader: &mut BufReader<R>,
        mut sink: impl FnMut(InputItem, bool) -> bool,
    ) -> io::Result<bool> {
        let mut buf = Vec::with_capacity(1024);
        while let Some(line) = read_line_limited(reader, &mut buf, self.format.max_line_bytes)? {
            let item = match line {
                Line::Text => self.parse(&buf),
                Line::TooLong(len) => {
                    self.line += 1;
                    Some(self.rejected(
                        ErrorKind::TooLarge,
                        format!(
                            "line is {len} bytes, over the limit of {} (--max-job-bytes)",
                            self.format.max_line_bytes
                        ),
                    ))
                }
            };
            if let Some(item) = item
                && !sink(item, reader.buffer().is_empty())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Parses one line (without its ending). `None` for a blank line.
    pub fn parse(&mut self, line: &[u8]) -> Option<InputItem> {
        self.line += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if let Some(filter) = &self.resume
            && filter.finished.contains(&line_key(self.line))
        {
            return None;
        }
        if self.format.plain_lines {
            let Ok(text) = std::str::from_utf8(line) else {
                return Some(self.rejected(ErrorKind::BadInput, "line is not valid UTF-8".into()));
            };
            match self.verdict(None) {
                Verdict::Run => {}
                Verdict::Skip => return None,
                Verdict::Duplicate(first) => return Some(self.duplicate(first)),
            }
            let input = SharedBytes::from(serde_json::to_vec(text).expect("a string serializes"));
            let task = self.default_task.clone().expect("--lines requires --task");
            return Some(self.job(None, task, input, None));
        }
        // Validating UTF-8 once for the whole line is faster than string by string.
        let Ok(text) = std::str::from_utf8(line) else {
            return Some(self.rejected(ErrorKind::BadInput, "line is not valid UTF-8".into()));
        };
        let parsed = match jobline::scan(text) {
            Ok(parsed) => parsed,
            Err(err) => {
                return Some(self.rejected(ErrorKind::BadInput, format!("not a JSON job: {err}")));
            }
        };
        let id = match parsed.id.map(|span| &line[span]) {
            None => None,
            Some(raw) if matches!(raw.first(), Some(b'"' | b'-' | b'0'..=b'9')) => Some(raw),
            Some(_) => {
                return Some(self.rejected(
                    ErrorKind::BadInput,
                    "\"id\" must be a string or a number".into(),
                ));
            }
        };
        match self.verdict(id) {
            Verdict::Run => {}
            Verdict::Skip => return None,
            Verdict::Duplicate(first) => return Some(self.duplicate(first)),
        }
        let task = match (&parsed.task, &self.default_task) {
            (Some(name), _) => self.intern(name),
            (None, Some(task)) => task.clone(),
            (None, None) => {
                let message = "no \"task\" in the line and no --task given".to_owned();
                return Some(self.rejected_job(id, ErrorKind::BadInput, message));
            }
        };
        // One copy of the line holds the job's input and meta.
        let text: Arc<[u8]> = Arc::from(line);
        let span = |range: Range<usize>| SharedBytes::new(text.clone(), range);
        let input = parsed.input.map_or_else(|| self.null.clone(), span);
        let meta = parsed.meta.map(span);
        Some(self.job(id, task, input, meta))
    }

    /// The shared name of task `name`; most jobs name the task the previous one named.
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(last) = &self.last_task
            && **last == *name
        {
            return last.clone();
        }
        let shared = match self.tasks.get(name) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(name);
                self.tasks.insert(name.into(), shared.clone());
                shared
            }
        };
        self.last_task = Some(shared.clone());
        shared
    }

    fn job(
        &mut self,
        id: Option<&[u8]>,
        task: Arc<str>,
        input: SharedBytes,
        meta: Option<SharedBytes>,
    ) -> InputItem {
        let seq = JobSeq(self.next_seq);
        self.next_seq += 1;
        let id = match id {
            Some(id) => JobId::from(id),
            None => JobId::from(self.line.to_string().into_bytes()),
        };
        InputItem::Job(Job {
            seq,
            line: self.line,
            id,
            task,
            input,
            meta,
            failed_attempts: 0,
        })
    }

    fn duplicate(&mut self, first: u64) -> InputItem {
        let message =
            format!("duplicate id: line {first} has the same id; ids must be unique to resume");
        self.rejected(ErrorKind::BadInput, message)
    }

    fn rejected(&mut self, kind: ErrorKind, message: String) -> InputItem {
        self.rejected_job(None, kind, message)
    }

    fn rejected_job(&mut self, id: Option<&[u8]>, kind: ErrorKind, message: String) -> InputItem {
        let key = match id {
            Some(id) => ResultKey::Job {
                id: JobId::from(id),
                line: self.line,
            },
            None => ResultKey::Line(self.line),
        };
        let seq = JobSeq(self.next_seq);
        self.next_seq += 1;
        InputItem::Rejected(JobResult {
            seq,
            key,
            meta: None,
            attempts: 0,
            worker: None,
            outcome: Err(JobError::new(kind, message)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> InputFormat {
        InputFormat {
            plain_lines: false,
            default_task: None,
            max_line_bytes: 64,
        }
    }

    fn read(text: &[u8], format: InputFormat) -> Vec<InputItem> {
        let mut items = Vec::new();
        let mut parser = JobParser::new(format);
        parser
            .read_all(&mut io::BufReader::with_capacity(8, text), |item, _| {
                items.push(item);
                true
            })
            .unwrap();
        items
    }

    fn error_of(item: &InputItem) -> (&ResultKey, ErrorKind) {
        match item {
            InputItem::Rejected(result) => (&result.key, result.outcome.as_ref().unwrap_err().kind),
            InputItem::Job(job) => panic!("expected a rejection, got {job:?}"),
        }
    }

    #[test]
    fn line_reader_splits_strips_crlf_and_caps_length() {
        let text = b"abc\r\n\nxyz\n0123456789\nlast";
        let mut reader = io::BufReader::with_capacity(4, &text[..]);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while let Some(line) = read_line_limited(&mut reader, &mut buf, 5).unwrap() {
            lines.push((line, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            lines,
            [
                (Line::Text, "abc".into()),
                (Line::Text, "".into()),
                (Line::Text, "xyz".into()),
                (Line::TooLong(10), "".into()),
                (Line::Text, "last".into()),
            ]
        );
    }

    #[test]
    fn a_line_at_the_limit_with_crlf_fits() {
        let mut reader = io::BufReader::new(&b"12345\r\n123456\r\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_limited(&mut reader, &mut buf, 5).unwrap(),
            Some(Line::Text)
        );
        assert_eq!(buf, b"12345");
        assert_eq!(
            read_line_limited(&mut reader, &mut buf, 5).unwrap(),
            Some(Line::TooLong(6))
        );
        assert_eq!(read_line_limited(&mut reader, &mut buf, 5).unwrap(), None);
    }

    #[test]
    fn jobs_keep_raw_json_and_default_their_id_to_the_line_number() {
        let text = b"{\"id\": \"a\", \"task\": \"t\", \"input\": [1, 2], \"meta\": {\"k\": 1}}\n\n{\"task\":\"t\"}\n";
        let items = read(text, format());
        assert_eq!(items.len(), 2);
        let InputItem::Job(first) = &items[0] else {
            panic!()
        };
        assert_eq!(first.id.as_bytes(), b"\"a\"");
        assert_eq!(first.input.as_bytes(), b"[1, 2]");
        assert_eq!(
            first.meta.as_ref().map(SharedBytes::as_bytes),
            Some(&b"{\"k\": 1}"[..])
        );
        assert_eq!((first.seq, first.line), (JobSeq(0), 1));
        let InputItem::Job(second) = &items[1] else {
            panic!()
        };
        assert_eq!(second.id.as_bytes(), b"3", "blank line 2 is counted");
        assert_eq!(second.input.as_bytes(), b"null");
        assert!(
            Arc::ptr_eq(&first.task, &second.task),
            "task names are shared"
        );
    }

    #[test]
    fn bad_lines_each_get_a_rejection_with_their_line() {
        let long = format!("{{\"task\":\"t\",\"input\":\"{}\"}}", "x".repeat(100));
        let text = format!(
            "not json\n{{\"id\": [1], \"task\": \"t\"}}\n{{\"id\": 5}}\n{long}\n{{\"task\":\"t\"}}\n"
        );
        let items = read(text.as_bytes(), format());
        assert_eq!(items.len(), 5);
        assert_eq!(
            error_of(&items[0]),
            (&ResultKey::Line(1), ErrorKind::BadInput)
        );
        assert_eq!(
            error_of(&items[1]),
            (&ResultKey::Line(2), ErrorKind::BadInput)
        );
        assert_eq!(
            error_of(&items[2]),
            (
                &ResultKey::Job {
                    id: b"5".to_vec().into(),
                    line: 3
                },
                ErrorKind::BadInput
            )
        );
        assert_eq!(
            error_of(&items[3]),
            (&ResultKey::Line(4), ErrorKind::TooLarge)
        );
        assert!(matches!(&items[4], InputItem::Job(job) if job.line == 5));
    }

    #[test]
    fn resume_skips_finished_jobs_and_reports_duplicates() {
        let mut items = Vec::new();
        let mut parser = JobParser::new(InputFormat {
            default_task: Some("t".into()),
            ..format()
        });
        parser.resume(HashSet::from([
            "i:\"a\"".to_owned(),
            "l:3".to_owned(),
            "i:4".to_owned(),
        ]));
        let text = b"{\"id\":\"a\"}\n{\"id\":\"b\"}\nbroken\n{}\n{\"id\":\"\\u0062\"}\n{}\n";
        parser
            .read_all(&mut io::BufReader::new(&text[..]), |item, _| {
                items.push(item);
                true
            })
            .unwrap();
        // a: finished; b: runs; line 3: finished; line 4 (id 4): finished; line 5 repeats b;
        // line 6 (id 6): runs.
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(
            matches!(&items[0], InputItem::Job(job) if job.id.as_bytes() == b"\"b\"" && job.seq == JobSeq(0))
        );
        assert_eq!(
            error_of(&items[1]),
            (&ResultKey::Line(5), ErrorKind::BadInput)
        );
        assert!(
            matches!(&items[2], InputItem::Job(job) if job.id.as_bytes() == b"6" && job.seq == JobSeq(2))
        );
    }

    #[test]
    fn default_task_and_plain_lines() {
        let with_task = InputFormat {
            default_task: Some("t".into()),
            ..format()
        };
        let items = read(b"{\"input\": 1}\n", with_task.clone());
        assert!(matches!(&items[0], InputItem::Job(job) if &*job.task == "t"));
        let plain = InputFormat {
            plain_lines: true,
            ..with_task
        };
        let items = read(b"a \"quoted\" path\r\n", plain);
        let InputItem::Job(job) = &items[0] else {
            panic!()
        };
        assert_eq!(job.input.as_bytes(), br#""a \"quoted\" path""#);
        assert_eq!(job.id.as_bytes(), b"1");
    }
}
