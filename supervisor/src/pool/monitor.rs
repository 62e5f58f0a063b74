//! The pool's monitor: one thread for every worker's exit and log pipes. It waits on each
//! worker's pidfd (or, where the kernel has none, looks for exits on a short timer) and on its
//! stdout and stderr together, logs what the workers print, and reaps each worker as soon as it
//! exits, so no zombie is left and no other child of the process is touched.
//!
//! Once a worker is reaped the monitor kills what is left of its process group (no grandchild
//! outlives it), takes it off the keeper's list and the run's cgroup, logs what it left in its
//! pipes (at most [`MAX_LOG_DRAIN`]: a descendant that escaped the group and still holds them
//! costs nothing after that), frees its slot and reports the exit.

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use tracing::Level;

use super::types::Slots;
use crate::keeper::Keeper;
use crate::os::{kill_group, pidfd_open, poll_readable_within, set_nonblocking};

/// Longest line of a worker's stdout or stderr that is logged whole; the rest of a longer line
/// is counted, not kept, so a worker that prints without newlines costs bounded memory.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// After a worker is reaped, at most this much of its output still in the pipes is logged.
const MAX_LOG_DRAIN: usize = 1 << 20;

/// How often exits are looked for when the kernel gives no pidfd.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// A worker for the monitor to watch, from its spawn to its reaping.
pub(super) struct Watch {
    pub(super) child: Child,
    /// Its stderr and, for a native worker, its stdout: logged line by line.
    pub(super) logs: Vec<LogStream>,
    pub(super) keeper: Option<Arc<Keeper>>,
    pub(super) slot: u32,
    pub(super) slots: Slots,
    /// Dropped once the worker is reaped: a stdio worker's reads end then.
    pub(super) reaped: Option<PipeWriter>,
    /// Where its exit is reported: the handshake's watchdog and whoever reads its answers.
    pub(super) exits: Vec<Sender<ExitStatus>>,
}

/// The handle that hands the monitor workers to watch. The monitor's thread ends once every
/// handle is dropped and every worker it watches is reaped.
#[derive(Clone)]
pub(super) struct Monitor {
    watches: Sender<Watch>,
    wake: Arc<PipeWriter>,
}

impl Monitor {
    /// Starts the monitor's thread; `on_exit` runs after each exit is reported.
    pub(super) fn start(on_exit: impl Fn() + Send + 'static) -> io::Result<Monitor> {
        let (wake_rx, wake) = io::pipe()?;
        set_nonblocking(wake_rx.as_fd())?;
        set_nonblocking(wake.as_fd())?;
        let (watches, incoming) = unbounded();
        thread::Builder::new()
            .name("corral-monitor".into())
            .spawn(move || run(&incoming, wake_rx, &on_exit, true))?;
        Ok(Monitor {
            watches,
            wake: Arc::new(wake),
        })
    }

    /// Watches a worker from now until it is reaped.
    pub(super) fn watch(&self, watch: Watch) {
        let _ = self.watches.send(watch);
        // A full pipe already holds a wakeup.
        let _ = (&*self.wake).write(&[1]);
    }
}

/// A watched worker and its pidfd, when the kernel gives one.
struct Watched {
    watch: Watch,
    pidfd: Option<OwnedFd>,
}

/// Where the monitor looks: the wakeup pipe, or a worker's pidfd or one of its log pipes.
#[derive(Clone, Copy)]
enum Look {
    Wake,
    Exit(usize),
    Log(usize, usize),
}

fn run(incoming: &Receiver<Watch>, wake: PipeReader, on_exit: &dyn Fn(), use_pidfd: bool) {
    let mut watched: Vec<Watched> = Vec::new();
    let mut open = true;
    loop {
        let mut looks = Vec::new();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if open {
            looks.push(Look::Wake);
            fds.push(wake.as_fd());
        }
        for (i, w) in watched.iter().enumerate() {
            if let Some(pidfd) = &w.pidfd {
                looks.push(Look::Exit(i));
                fds.push(pidfd.as_fd());
            }
            for (j, log) in w.watch.logs.iter().enumerate() {
                if log.open {
                    looks.push(Look::Log(i, j));
                    fds.push(log.fd());
                }
            }
        }
        let polled = watched.iter().any(|w| w.pidfd.is_none());
        let ready = poll_readable_within(&fds, polled.then_some(WAIT_POLL));
        drop(fds);
        let mut exited: Vec<usize> = Vec::new();
        for (&look, _) in looks.iter().zip(&ready).filter(|(_, ready)| **ready) {
            match look {
                Look::Wake => open = take_wakeups(&wake),
                Look::Exit(i) => exited.push(i),
                Look::Log(i, j) => watched[i].watch.logs[j].drain(usize::MAX),
            }
        }
        loop {
            match incoming.try_recv() {
                Ok(watch) => {
                    let pid = watch.child.id();
                    let pidfd = use_pidfd.then(|| pidfd_open(pid).ok()).flatten();
                    watched.push(Watched { watch, pidfd });
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if polled {
            exited.extend((0..watched.len()).filter(|&i| watched[i].pidfd.is_none()));
        }
        // Highest first, so that each removal leaves the lower indices in place.
        exited.sort_unstable();
        exited.dedup();
        for &i in exited.iter().rev() {
            let pid = watched[i].watch.child.id();
            let status = match watched[i].watch.child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(err) => {
                    tracing::error!(pid, "cannot wait for worker: {err}");
                    ExitStatus::from_raw(255 << 8)
                }
            };
            reaped(watched.swap_remove(i).watch, status);
            on_exit();
        }
        if !open && watched.is_empty() {
            return;
        }
    }
}

/// Empties the wakeup pipe; false once every handle is gone.
fn take_wakeups(mut wake: &PipeReader) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match wake.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// What is done once a worker is reaped (see the module docs).
fn reaped(watch: Watch, status: ExitStatus) {
    let Watch {
        child,
        mut logs,
        keeper,
        slot,
        slots,
        reaped,
        exits,
    } = watch;
    let pid = child.id();
    kill_group(pid);
    crate::cgroup::forget_worker(pid);
    if let Some(keeper) = &keeper {
        keeper.forget(pid);
    }
    for log in &mut logs {
        log.drain(MAX_LOG_DRAIN);
        log.finish();
    }
    drop(reaped);
    slots.give_back(slot);
    for exit in exits {
        let _ = exit.send(status);
    }
}

/// One of a worker's output pipes, read without blocking and cut into bounded log lines.
pub(super) struct LogStream {
    pid: u32,
    name: &'static str,
    pipe: Box<dyn ReadFd>,
    open: bool,
    lines: LogLines,
}

/// A pipe that is read and polled.
trait ReadFd: Read + AsFd + Send {}
impl<T: Read + AsFd + Send> ReadFd for T {}

impl LogStream {
    /// Logs what `pipe`, the worker's stream `name`, carries.
    pub(super) fn new(
        pid: u32,
        name: &'static str,
        pipe: impl Read + AsFd + Send + 'static,
    ) -> LogStream {
        let _ = set_nonblocking(pipe.as_fd());
        LogStream {
            pid,
            name,
            pipe: Box::new(pipe),
            open: true,
            lines: LogLines::default(),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Reads what the pipe holds now (at most `limit` bytes) and logs each complete line.
    fn drain(&mut self, limit: usize) {
        let mut buf = [0u8; 16 * 1024];
        let mut taken = 0;
        while self.open && taken < limit {
            match self.pipe.read(&mut buf) {
                Ok(0) => {
                    self.open = false;
                    self.finish();
                }
                Ok(n) => {
                    taken += n;
                    let (pid, name) = (self.pid, self.name);
                    self.lines.push(&buf[..n], |line| log_line(pid, name, line));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.open = false,
            }
        }
    }

    /// Logs a last line left without its newline.
    fn finish(&mut self) {
        let (pid, name) = (self.pid, self.name);
        self.lines.flush(|line| log_line(pid, name, line));
    }
}

/// Logs a worker's line at warning level, or at the level its syslog prefix (`<4>`) names.
fn log_line(pid: u32, stream: &str, line: LogLine<'_>) {
    let text = String::from_utf8_lossy(line.text);
    let (level, text) = crate::journal::worker_level(&text).unwrap_or((Level::WARN, &text));
    let cut = match line.cut {
        0 => String::new(),
        n => format!("... ({n} more bytes of this line not logged)"),
    };
    match level {
        Level::ERROR => tracing::error!(pid, "worker {stream}: {text}{cut}"),
        Level::WARN => tracing::warn!(pid, "worker {stream}: {text}{cut}"),
        Level::INFO => tracing::info!(pid, "worker {stream}: {text}{cut}"),
        _ => tracing::debug!(pid, "worker {stream}: {text}{cut}"),
    }
}

/// A line of a worker's output as logged: at most [`MAX_LOG_LINE`] bytes of it, and how many
/// more there were.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The start of the line.
    pub text: &'a [u8],
    /// Bytes of the line past [`MAX_LOG_LINE`], not kept.
    pub cut: u64,
}

/// Cuts a stream of bytes into log lines at `\n` or `\r` (a progress bar's redraw), keeping at
/// most [`MAX_LOG_LINE`] bytes of any one line. Empty lines are skipped.
#[derive(Debug, Default)]
pub struct LogLines {
    line: Vec<u8>,
    cut: u64,
}

impl LogLines {
    /// Takes more bytes; calls `emit` for each line they complete.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(LogLine<'_>)) {
        while !bytes.is_empty() {
            let end = memchr::memchr2(b'\n', b'\r', bytes);
            let part = &bytes[..end.unwrap_or(bytes.len())];
            let room = MAX_LOG_LINE - self.line.len();
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.cut += part.len().saturating_sub(room) as u64;
            match end {
                Some(end) => {
                    self.flush(&mut emit);
                    bytes = &bytes[end + 1..];
                }
                None => return,
            }
        }
    }

    /// Emits what is held as a line, if anything.
    pub fn flush(&mut self, mut emit: impl FnMut(LogLine<'_>)) {
        if !self.line.is_empty() || self.cut > 0 {
            emit(LogLine {
                text: &self.line,
                cut: self.cut,
            });
        }
        self.line.clear();
        self.cut = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    fn lines(chunks: &[&[u8]]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut lines = LogLines::default();
        for chunk in chunks {
            lines.push(chunk, |l| {
                out.push((String::from_utf8_lossy(l.text).into_owned(), l.cut))
            });
        }
        lines.flush(|l| out.push((String::from_utf8_lossy(l.text).into_owned(), l.cut)));
        out
    }

    #[test]
    fn log_lines_split_at_newlines_and_carriage_returns_across_reads() {
        assert_eq!(
            lines(&[b"one\ntw", b"o\r\nthr", b"ee\r40%\r80%", b"\n\n", b"last"]),
            [
                ("one".into(), 0),
                ("two".into(), 0),
                ("three".into(), 0),
                ("40%".into(), 0),
                ("80%".into(), 0),
                ("last".into(), 0)
            ]
        );
    }

    #[test]
    fn a_long_line_keeps_its_start_and_counts_the_rest() {
        let long = vec![b'x'; MAX_LOG_LINE + 10];
        let got = lines(&[&long, &long, b"\nnext"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), MAX_LOG_LINE);
        assert_eq!(got[0].1, (MAX_LOG_LINE + 20) as u64);
        assert_eq!(got[1], ("next".into(), 0));
        let mut lines = LogLines::default();
        for _ in 0..1000 {
            lines.push(&long, |_| {});
        }
        assert!(lines.line.capacity() <= 2 * MAX_LOG_LINE, "bounded memory");
    }

    /// Children that exit in another order than they started are each reaped and reported with
    /// their own status, with a pidfd and without one (the timer), by one thread that ends when
    /// its handle is gone and nothing is left to watch.
    #[test]
    fn one_thread_reaps_every_child_with_or_without_pidfds() {
        for use_pidfd in [true, false] {
            let (wake_rx, wake) = io::pipe().unwrap();
            set_nonblocking(wake_rx.as_fd()).unwrap();
            let (watches, incoming) = unbounded();
            let (exited_tx, exited) = unbounded::<()>();
            let monitor = thread::spawn(move || {
                run(
                    &incoming,
                    wake_rx,
                    &move || {
                        let _ = exited_tx.send(());
                    },
                    use_pidfd,
                )
            });
            let handle = Monitor {
                watches,
                wake: Arc::new(wake),
            };
            let slots = Slots::default();
            let mut reports = Vec::new();
            for (code, pause) in [(3, "0.3"), (4, "0"), (5, "0.1")] {
                let mut child = Command::new("/bin/sh")
                    .args([
                        "-c",
                        &format!("echo said {code} >&2; sleep {pause}; exit {code}"),
                    ])
                    .stdin(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let stderr = child.stderr.take().unwrap();
                let (tx, rx) = crossbeam_channel::bounded(1);
                handle.watch(Watch {
                    logs: vec![LogStream::new(child.id(), "stderr", stderr)],
                    child,
                    keeper: None,
                    slot: slots.take(),
                    slots: slots.clone(),
                    reaped: None,
                    exits: vec![tx],
                });
                reports.push((code, rx));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for (code, rx) in &reports {
                let status = rx.recv_deadline(deadline).expect("reported in time");
                assert_eq!(status.code(), Some(*code));
            }
            for _ in 0..3 {
                exited.recv_deadline(deadline).unwrap();
            }
            assert_eq!(slots.take(), 1, "every slot was given back");
            drop(handle);
            monitor.join().unwrap();
        }
    }
}
