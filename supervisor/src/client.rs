//! The clients of `corral serve`: `corral submit` sends job files and writes back their
//! results as `corral run` would, and `corral status` shows the service's state. What they
//! say on the socket is in [`crate::wire`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use crate::exit::{Exit, count, say};
use crate::ports::SourceError;
use crate::resume::{FinishedKeys, Meeting, job_line_key, line_digest};
use crate::run::Source;
use crate::wire::{Hello, Said, ServiceStatus};

/// What `corral submit` does.
pub struct Submit {
    /// Job files, sent in order.
    pub sources: Vec<Source>,
    /// The service's socket.
    pub socket: PathBuf,
    /// Where results go.
    pub output: Box<dyn Write + Send>,
    /// With `--resume`: jobs whose result is already written, which are not sent.
    pub finished: Option<FinishedKeys>,
    /// With `--resume`: failures already in the results file, which the status describes.
    pub earlier_failed: u64,
    /// No summary line.
    pub quiet: bool,
}

/// Connects to the service, or says why not.
fn connect(socket: &Path) -> Result<UnixStream, Exit> {
    UnixStream::connect(socket).map_err(|err| {
        let hint = match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                "; is the service running? (systemctl status corral.socket corral.service)"
            }
            io::ErrorKind::PermissionDenied => {
                "; the socket's group (SocketGroup= of corral.socket) must include you"
            }
            _ => "",
        };
        say(format_args!(
            "cannot reach the corral service at {}: {err}{hint}",
            socket.display()
        ));
        // Trying again cannot help a client the socket's permissions keep out.
        if err.kind() == io::ErrorKind::PermissionDenied {
            Exit::Usage
        } else {
            Exit::Unavailable
        }
    })
}

/// Runs `corral submit`; returns its exit status.
pub fn submit(config: Submit) -> Exit {
    let started = Instant::now();
    let stream = match connect(&config.socket) {
        Ok(stream) => stream,
        Err(status) => return status,
    };
    let Ok(send_half) = stream.try_clone() else {
        say(format_args!("cannot use the connection to the service"));
        return Exit::Unavailable;
    };
    let sources = config.sources;
    let finished = config.finished;
    let sender = thread::Builder::new()
        .name("corral-send".into())
        .spawn(move || send_jobs(send_half, sources, finished))
        .expect("spawning a thread");
    let mut out = io::BufWriter::with_capacity(64 * 1024, config.output);
    let outcome = receive(&stream, &mut out);
    // The sender ends once its input is sent, or at its next write once the service is gone.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let sent = sender.join().unwrap_or(Err(SendError::Service));
    let repeated = match sent {
        Err(SendError::Input(message)) => {
            say(format_args!("{message}"));
            return Exit::Usage;
        }
        Err(SendError::Service) => Vec::new(),
        Ok(repeated) => repeated,
    };
    // The results of repeated ids (--resume), made here: they are final whatever the service
    // did, as with `corral run --resume`.
    let outcome = match write_lines(&mut out, &repeated) {
        Ok(()) => outcome,
        Err(err) => Received::Output(err),
    };
    let extra = repeated.len() as u64;
    match outcome {
        Received::Output(err) => {
            if err.kind() == io::ErrorKind::BrokenPipe {
                return Exit::Success;
            }
            say(format_args!("cannot write results: {err}"));
            Exit::Usage
        }
        Received::Refused(message) => {
            say(format_args!("the service refused: {message}"));
            Exit::Usage
        }
        Received::End {
            results,
            ok,
            failed,
        } => {
            let (results, failed) = (results + extra, failed + extra);
            let earlier = config.earlier_failed;
            if !config.quiet {
                let secs = started.elapsed().as_secs_f64();
                say(format_args!(
                    "{}: {ok} ok, {failed} failed; {secs:.2}s, {:.0} jobs/s",
                    count(results, "job"),
                    results as f64 / secs.max(1e-9)
                ));
                if earlier > 0 {
                    say(format_args!(
                        "the results file also holds {} from earlier runs",
                        count(earlier, "failure")
                    ));
                }
            }
            Exit::failed_if(failed + earlier > 0)
        }
        Received::Stopped { results, reason } => {
            say(format_args!(
                "{reason}: {results} results came before it stopped; the other jobs did not run. Run again with -o FILE --resume to finish them"
            ));
            Exit::Unavailable
        }
        Received::Lost { results, error } => {
            let error = error.map_or_else(String::new, |e| format!(" ({e})"));
            say(format_args!(
                "the connection to the service was lost{error} after {results} results; run again with -o FILE --resume to finish"
            ));
            Exit::Unavailable
        }
    }
}

/// How the answer ended.
enum Received {
    End {
        results: u64,
        ok: u64,
        failed: u64,
    },
    Stopped {
        results: u64,
        reason: String,
    },
    Refused(String),
    Lost {
        results: u64,
        error: Option<io::Error>,
    },
    Output(io::Error),
}

/// Writes `lines` and flushes.
fn write_lines(out: &mut impl Write, lines: &[Vec<u8>]) -> io::Result<()> {
    for line in lines {
        out.write_all(line)?;
    }
    out.flush()
}

/// Writes result lines as they come, flushing each time the socket has no more for now, so
/// that what the service sent is on disk as soon as it can be.
fn receive(stream: &UnixStream, out: &mut impl Write) -> Received {
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    let mut results = 0u64;
    let mut reader = stream;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                return Received::Lost {
                    results,
                    error: None,
                };
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Received::Lost {
                    results,
                    error: Some(err),
                };
            }
        };
        let mut chunk = &buf[..n];
        while let Some(end) = memchr::memchr(b'\n', chunk) {
            let line: &[u8] = if partial.is_empty() {
                &chunk[..=end]
            } else {
                partial.extend_from_slice(&chunk[..=end]);
                &partial
            };
            if let Some(said) = Said::parse(line.trim_ascii_end()) {
                if let Err(err) = out.flush() {
                    return Received::Output(err);
                }
                match said {
                    Said::End { ok, failed, .. } => {
                        return Received::End {
                            results,
                            ok,
                            failed,
                        };
                    }
                    Said::Stopped { reason, .. } => return Received::Stopped { results, reason },
                    Said::Error { message } => return Received::Refused(message),
                    Said::Status(_) => {}
                }
            } else {
                if let Err(err) = out.write_all(line) {
                    return Received::Output(err);
                }
                results += 1;
            }
            partial.clear();
            chunk = &chunk[end + 1..];
        }
        partial.extend_from_slice(chunk);
        if let Err(err) = out.flush() {
            return Received::Output(err);
        }
    }
}

enum SendError {
    /// An input could not be read.
    Input(SourceError),
    /// The service is gone; the receiving side says so.
    Service,
}

/// Sends the hello, then every input in order, each line ending in a newline, then closes
/// the sending side. Returns the result lines of the jobs that repeat an id (`--resume`),
/// which are not sent.
fn send_jobs(
    stream: UnixStream,
    sources: Vec<Source>,
    finished: Option<FinishedKeys>,
) -> Result<Vec<Vec<u8>>, SendError> {
    let mut repeated = Vec::new();
    let mut out = io::BufWriter::with_capacity(64 * 1024, &stream);
    out.write_all(&Hello::Submit.line())
        .map_err(|_| SendError::Service)?;
    let mut filter = finished.map(|keys| ResumeFilter { keys, line: 0 });
    for source in sources {
        let name = source.name();
        let reader = source.reader().map_err(SendError::Input)?;
        let Some(filter) = filter.as_mut() else {
            copy_whole(reader, &mut out, &name)?;
            continue;
        };
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    return Err(SendError::Input(SourceError::read(name, err)));
                }
            }
            if line.last() != Some(&b'\n') {
                // The last line of a file without its newline: the next file starts a line of
                // its own, as with `corral run`.
                line.push(b'\n');
            }
            // A job skipped is sent as a blank line, so that the line numbers stay those of
            // the file (a job without an id has its line number as id).
            let sent = match filter.keep(&line) {
                Verdict::Send => &line[..],
                Verdict::Skip => b"\n",
                Verdict::Repeated(first) => {
                    repeated.push(repeated_result(filter.line, first));
                    b"\n"
                }
            };
            out.write_all(sent).map_err(|_| SendError::Service)?;
        }
    }
    out.flush().map_err(|_| SendError::Service)?;
    drop(out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(repeated)
}

/// What `--resume` decides for a line.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Send,
    /// Its result is already written.
    Skip,
    /// Its id is an earlier line's (that line, if known): it gets a bad_input result.
    Repeated(Option<u64>),
}

/// The result line of line `line`, whose id repeats that of `first`: as `corral run
/// --resume` words it.
fn repeated_result(line: u64, first: Option<u64>) -> Vec<u8> {
    use crate::record::{ErrorKind, JobError, JobResult, ResultKey, SourceId};
    let earlier = first.map_or_else(|| "an earlier line".to_owned(), |l| format!("line {l}"));
    let result = JobResult {
        seq: corral_protocol::JobSeq(0),
        source: SourceId(0),
        key: ResultKey::Line(line),
        meta: None,
        attempts: 0,
        worker: None,
        outcome: Err(JobError::new(
            ErrorKind::BadInput,
            format!("duplicate id: {earlier} has the same id; ids must be unique to resume"),
        )),
    };
    let mut out = Vec::new();
    crate::output::format_result(&result, crate::output::Echo::Meta, &mut out);
    out
}

/// Sends all of `reader` as it is, in blocks, ending it with a newline if its last line has
/// none (the next file starts a line of its own, as with `corral run`).
fn copy_whole(
    mut reader: Box<dyn Read>,
    out: &mut impl Write,
    name: &str,
) -> Result<(), SendError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = b'\n';
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(SendError::Input(SourceError::read(name, err))),
        };
        last = buf[n - 1];
        out.write_all(&buf[..n]).map_err(|_| SendError::Service)?;
    }
    if last != b'\n' {
        out.write_all(b"\n").map_err(|_| SendError::Service)?;
    }
    Ok(())
}

/// `--resume` on the client's side: which lines already have their result, decided as
/// `corral run --resume` decides it.
struct ResumeFilter {
    keys: FinishedKeys,
    line: u64,
}

impl ResumeFilter {
    /// What to do with `raw` (a line with its ending).
    fn keep(&mut self, raw: &[u8]) -> Verdict {
        self.line += 1;
        let Some(key) = job_line_key(raw, self.line, false) else {
            return Verdict::Send;
        };
        if self.keys.contains(line_digest(self.line)) {
            return Verdict::Skip;
        }
        match self.keys.meet(key, self.line) {
            Meeting::Run => Verdict::Send,
            Meeting::Finished => Verdict::Skip,
            Meeting::Repeated(first) => Verdict::Repeated(first),
        }
    }
}

/// Runs `corral status`; returns its exit status.
pub fn status(socket: &Path, json: bool) -> Exit {
    let mut stream = match connect(socket) {
        Ok(stream) => stream,
        Err(status) => return status,
    };
    if stream.write_all(&Hello::Status.line()).is_err() {
        say(format_args!("the service closed the connection"));
        return Exit::Unavailable;
    }
    let mut line = Vec::new();
    if let Err(err) = BufReader::new(&stream).read_until(b'\n', &mut line) {
        say(format_args!("cannot read the service's answer: {err}"));
        return Exit::Unavailable;
    }
    match Said::parse(line.trim_ascii_end()) {
        Some(Said::Status(value)) => {
            let text = if json {
                serde_json::to_string(&value).expect("a value serializes")
            } else {
                table(&value)
            };
            let _ = writeln!(io::stdout().lock(), "{text}");
            Exit::Success
        }
        Some(Said::Error { message }) => {
            say(format_args!("the service refused: {message}"));
            Exit::Usage
        }
        _ => {
            say(format_args!(
                "the service did not answer with its status (it may be stopping)"
            ));
            Exit::Unavailable
        }
    }
}

/// The status as a few lines for a person.
fn table(status: &ServiceStatus) -> String {
    use std::fmt::Write as _;
    let secs = |s: f64| {
        humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64)).to_string()
    };
    let engine = &status.engine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "corral service pid {}, up {}{}",
        status.pid,
        secs(status.uptime_secs),
        if engine.draining { ", stopping" } else { "" }
    );
    let _ = writeln!(
        out,
        "workers: {} ready of {}; {} restarts, {} recycled",
        engine.ready,
        engine.workers.len(),
        engine.restarts,
        engine.recycled
    );
    let _ = writeln!(
        out,
        "queue: {} jobs waiting from {} clients; {} in service; {} results since start; {} dropped (their client left)",
        engine.queued, engine.queued_sources, engine.outstanding, engine.answered, engine.dropped
    );
    let _ = writeln!(
        out,
        "\n  {:<5} {:<8} {:<10} {:>10} {:>10} {:>10} {:>8}  JOB",
        "SLOT", "PID", "STATE", "UPTIME", "RSS", "DONE", "RESTARTS"
    );
    for w in &engine.workers {
        let rss = w.rss_bytes.map_or_else(
            || "-".to_owned(),
            |b| bytesize::ByteSize(b).display().iec().to_string(),
        );
        let _ = writeln!(
            out,
            "  {:<5} {:<8} {:<10} {:>10} {:>10} {:>10} {:>8}  {}",
            w.slot,
            w.pid,
            w.state.as_str(),
            secs(w.uptime_secs),
            rss,
            w.jobs_done,
            w.restarts,
            match &w.current {
                Some(job) => format!("{job} (for {})", secs(w.current_secs.unwrap_or(0.0))),
                None => "-".to_owned(),
            }
        );
    }
    let _ = writeln!(
        out,
        "\n  {:<8} {:<8} {:<8} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "CLIENT", "UID", "PID", "READ", "WRITTEN", "IN SERVICE", "OK", "FAILED"
    );
    for c in &status.clients {
        let _ = writeln!(
            out,
            "  {:<8} {:<8} {:<8} {:>10} {:>10} {:>10} {:>8} {:>8}",
            c.client,
            c.uid,
            c.pid.max(0),
            c.jobs_read,
            c.results_written,
            c.in_service,
            c.ok,
            c.failed
        );
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::id_digest;

    #[test]
    fn resume_skips_what_run_would_skip_and_keeps_the_rest() {
        let mut keys = FinishedKeys::default();
        keys.insert(id_digest(b"\"a\"").unwrap());
        keys.insert(line_digest(3));
        keys.insert(id_digest(b"4").unwrap());
        let mut filter = ResumeFilter { keys, line: 0 };
        let lines: [&[u8]; 6] = [
            b"{\"id\":\"a\",\"task\":\"t\"}\n",
            b"{\"id\":\"b\",\"task\":\"t\"}\r\n",
            b"not json, answered by line\n",
            b"{\"task\":\"t\"}\n",
            b"   \n",
            b"{\"task\":\"t\"}\n",
        ];
        let kept: Vec<Verdict> = lines.iter().map(|line| filter.keep(line)).collect();
        // a: done; b: runs; line 3: done; line 4 (id 4): done; blank: sent; line 6 runs.
        use Verdict::*;
        assert_eq!(kept, [Skip, Send, Skip, Skip, Send, Send]);
        // A second b repeats line 2's id.
        assert_eq!(filter.keep(b"{\"id\":\"b\"}\n"), Repeated(Some(2)));
        let line = String::from_utf8(repeated_result(7, Some(2))).unwrap();
        assert!(
            line.starts_with(r#"{"line":7,"ok":false,"error":{"kind":"bad_input""#),
            "{line}"
        );
    }
}
