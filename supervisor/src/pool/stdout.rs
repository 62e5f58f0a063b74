//! Stdio workers' answers in: one thread reads every stdio worker's stdout. It waits on all of
//! their pipes together (and on each one's pipe that says it was reaped), keeps the time their
//! answers gather ([`crate::transport::stdio::GATHER`]), and hands each answer on; once a
//! worker's output has ended it sends the worker's `Gone` as soon as the monitor has reported
//! its exit, so that it always comes after the worker's last answer.

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};

use super::answering::{Answering, Ending, send_exited};
use super::types::PoolEvent;
use crate::os::{kill_group, poll_readable_within, set_nonblocking};
use crate::transport::Received;
use crate::transport::stdio::{Inbox, Step};

/// Once nobody can add a worker or wake the thread, how often it looks for the exits it still
/// waits for (the monitor has reported them all by then: this is only a bound).
const AFTER_CLOSE: Duration = Duration::from_millis(20);

/// The handle on the thread. The thread ends once every handle is dropped and every worker it
/// reads has ended, or when nobody takes the pool's events any more.
#[derive(Clone)]
pub(super) struct StdoutReader {
    adds: Sender<(Inbox, Answering)>,
    wake: Arc<PipeWriter>,
}

impl StdoutReader {
    /// Starts the thread; answers and ends go out on `events`.
    pub(super) fn start(events: Sender<PoolEvent>) -> io::Result<StdoutReader> {
        let (woken, wake) = io::pipe()?;
        set_nonblocking(woken.as_fd())?;
        set_nonblocking(wake.as_fd())?;
        let (adds, added) = unbounded();
        thread::Builder::new()
            .name("corral-stdout".into())
            .spawn(move || {
                Readers {
                    woken,
                    added,
                    events,
                    reading: Vec::new(),
                    ending: Vec::new(),
                }
                .run();
            })?;
        Ok(StdoutReader {
            adds,
            wake: Arc::new(wake),
        })
    }

    /// Reads a started worker's answers from now until it ends.
    pub(super) fn add(&self, inbox: Inbox, answering: Answering) {
        let _ = self.adds.send((inbox, answering));
        self.wake();
    }

    /// Wakes the thread: a worker was added, or the monitor reported an exit.
    pub(super) fn wake(&self) {
        // A full pipe already wakes it.
        let _ = (&*self.wake).write(&[1]);
    }
}

/// When a worker's inbox may next have something.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Step it now.
    Due,
    /// Once its pipe is readable.
    Readable,
    /// At this time (its answers are gathering).
    Until(Instant),
}

/// A stdio worker being read.
struct Reading {
    inbox: Inbox,
    answering: Answering,
    wait: Wait,
}

/// The thread.
struct Readers {
    woken: PipeReader,
    added: Receiver<(Inbox, Answering)>,
    events: Sender<PoolEvent>,
    reading: Vec<Reading>,
    ending: Vec<Ending>,
}

/// What stepping a worker's inbox came to.
enum Stepped {
    /// Nothing more for now.
    Wait(Wait),
    /// Its output ended.
    Ended(Option<String>),
    /// Nobody takes the pool's events: the run is over.
    Unheard,
}

impl Readers {
    fn run(&mut self) {
        let mut open = true;
        loop {
            self.take_added();
            if !self.step_due() {
                return;
            }
            send_exited(&mut self.ending, &self.events);
            if !open && self.reading.is_empty() && self.ending.is_empty() {
                return;
            }
            open &= self.wait(open);
        }
    }

    fn take_added(&mut self) {
        for (inbox, answering) in self.added.try_iter() {
            self.reading.push(Reading {
                inbox,
                answering,
                wait: Wait::Due,
            });
        }
    }

    /// Steps every inbox whose wait is over; false once nobody takes events.
    fn step_due(&mut self) -> bool {
        let now = Instant::now();
        let mut i = 0;
        while i < self.reading.len() {
            let reading = &mut self.reading[i];
            if let Wait::Until(at) = reading.wait
                && at <= now
            {
                reading.wait = Wait::Due;
            }
            if reading.wait != Wait::Due {
                i += 1;
                continue;
            }
            match step(reading, now, &self.events) {
                Stepped::Wait(wait) => {
                    reading.wait = wait;
                    i += 1;
                }
                Stepped::Ended(violation) => {
                    // Its pipe is closed now, before the wait for its exit: a worker still
                    // writing to it ends, not blocks.
                    let Reading { answering, .. } = self.reading.swap_remove(i);
                    self.ending.push(Ending {
                        answering,
                        violation,
                    });
                }
                Stepped::Unheard => return false,
            }
        }
        true
    }

    /// Waits for a pipe, the end of a gathering time, or a wake; false once the handles are
    /// all dropped (`open` says whether they still were).
    fn wait(&mut self, open: bool) -> bool {
        let now = Instant::now();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(1 + 2 * self.reading.len());
        if open {
            fds.push(self.woken.as_fd());
        }
        let mut deadline = (!open).then(|| now + AFTER_CLOSE);
        // Where each worker's fds are in `fds`: its pipe (when it waits for it) and its reaped
        // pipe.
        let mut places = Vec::with_capacity(self.reading.len());
        for reading in &self.reading {
            let (pipe, reaped) = reading.inbox.fds();
            let pipe_at = (reading.wait == Wait::Readable).then(|| {
                fds.push(pipe);
                fds.len() - 1
            });
            let reaped_at = reaped.map(|fd| {
                fds.push(fd);
                fds.len() - 1
            });
            if let Wait::Until(at) = reading.wait {
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
            places.push((pipe_at, reaped_at));
        }
        let timeout = deadline.map(|at| at.saturating_duration_since(now));
        let ready = poll_readable_within(&fds, timeout);
        drop(fds);
        let mut still_open = open;
        if open && ready[0] {
            still_open = self.drain_wakes();
        }
        let now = Instant::now();
        for (reading, (pipe_at, reaped_at)) in self.reading.iter_mut().zip(places) {
            if reaped_at.is_some_and(|at| ready[at]) {
                reading.inbox.reaped();
                reading.wait = Wait::Due;
            } else if pipe_at.is_some_and(|at| ready[at]) {
                // Answers that come close behind each other are read together.
                reading.wait = if reading.inbox.gathers() {
                    Wait::Until(now + reading.inbox.gather_for())
                } else {
                    Wait::Due
                };
            }
        }
        still_open
    }

    /// Empties the wake pipe; false once every handle is gone (it is closed).
    fn drain_wakes(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.woken.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// Hands on what `reading`'s worker has answered, until it has nothing more for now.
fn step(reading: &mut Reading, now: Instant, events: &Sender<PoolEvent>) -> Stepped {
    loop {
        match reading.inbox.step(now) {
            Step::Answer(Received::Done(done)) => {
                let worker = reading.answering.worker;
                if events.send(PoolEvent::Done { worker, done }).is_err() {
                    return Stepped::Unheard;
                }
            }
            Step::Answer(Received::Closed) => return Stepped::Ended(None),
            Step::Answer(Received::Violation(what)) => {
                kill_group(reading.answering.pid);
                return Stepped::Ended(Some(what.to_string()));
            }
            Step::Readable => return Stepped::Wait(Wait::Readable),
            Step::Until(at) => return Stepped::Wait(Wait::Until(at)),
        }
    }
}
