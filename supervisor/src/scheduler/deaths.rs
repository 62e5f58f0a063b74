//! Deaths in the scheduler: a worker gone, the job its running word names taking the failed
//! attempt (retried, or failed once it has none left), the rest of what it held requeued, its
//! replacement within the restart budget; and the timer's part: jobs that run past `--timeout`
//! or long enough to be said in the log, and retired workers that do not exit.

use std::time::Instant;

use corral_protocol::{Notes, RunningWord, WorkerId};

use super::lines;
use super::{Action, Phase, STALL_NOTE, Scheduler, WorkerExit, say};
use crate::os::Signal;
use crate::record::{ErrorKind, Job, JobError};

impl Scheduler {
    pub(super) fn on_gone(
        &mut self,
        now: Instant,
        worker: WorkerId,
        exit: WorkerExit,
        running: RunningWord,
        note: Option<String>,
    ) {
        let Some(slot) = self.workers.remove(&worker) else {
            return;
        };
        let timed_out = slot.timed_out.is_some();
        let culprit = slot.timed_out.unwrap_or(running);
        let note = note.or(slot.violation);
        let mut requeue = Vec::new();
        let mut attributed = false;
        let death = lines::Death {
            pid: slot.pid,
            exit: &exit,
            timed_out,
            note: note.as_deref(),
            since: slot.word_since,
            at: now,
        };
        for mut batch in slot.in_flight {
            if batch.jobs.front().is_some_and(Job::is_lines) {
                let blocks = std::mem::take(&mut batch.jobs);
                attributed |= self.lines_lost(batch.id, blocks, culprit, &death, &mut requeue);
                continue;
            }
            for (index, mut job) in batch.jobs.drain(..).enumerate() {
                if !culprit.is(batch.id, batch.answered + index) {
                    requeue.push(job);
                    continue;
                }
                attributed = true;
                job.failed_attempts += 1;
                self.failed_attempt(job, &death, &mut requeue);
            }
        }
        self.pending.push_front(requeue.into());
        if slot.phase == Phase::Retiring || slot.recycle.is_some() || self.finishing() {
            // Retired at the end, or recycled (its replacement is already on the way).
            return;
        }
        // A worker that died (or broke the protocol) before finishing anything, with no job to
        // blame, is what a broken build or environment looks like: count it towards giving up.
        // A SIGKILL that corral did not send (kill -9, the OOM killer) is not.
        let killed_from_outside =
            note.is_none() && !timed_out && exit == WorkerExit::Signal(Signal::KILL);
        if !attributed && slot.jobs_done == 0 && !killed_from_outside {
            self.start_failures += 1;
            if self.start_failures >= self.cfg.max_start_failures {
                self.fatal(say::died_before_work(
                    self.start_failures,
                    slot.pid,
                    &exit,
                    note.as_deref(),
                ));
                return;
            }
        }
        self.counters.restarts += 1;
        if attributed {
            // The crash is the job's: its own attempts bound how often it can happen (each one
            // costs it an attempt), so it must not spend the budget that protects everyone's
            // run from workers that die for no job's fault.
            self.spawns_due.push(now);
            return;
        }
        self.restart_within_budget(now, &say::last_death(slot.pid, &exit));
    }

    /// A job whose worker died running it: says so, and requeues it while it has attempts
    /// left, or fails it.
    pub(super) fn failed_attempt(
        &mut self,
        job: Job,
        death: &lines::Death<'_>,
        requeue: &mut Vec<Job>,
    ) {
        let name = &job.as_one().expect("a block's line fails as a job line").id;
        self.actions.push(Action::Note(say::failed_attempt(
            &name.to_string(),
            job.line,
            death.timed_out,
            death.pid,
            death.exit,
            job.failed_attempts,
            self.cfg.retries + 1,
        )));
        if job.failed_attempts <= self.cfg.retries {
            requeue.push(job);
            return;
        }
        let error = self.attempt_error(&job, death.pid, death.exit, death.timed_out, death.note);
        self.outstanding -= 1;
        let attempts = job.failed_attempts;
        if self.cfg.notes != Notes::None {
            self.note_death(&job, &error, death);
        }
        self.emit(job.into_result(attempts, Some(death.pid), Err(error)));
    }

    /// Schedules a replacement for a worker that died for no job's fault, as the restart
    /// budget allows; stops the run when even backoff cannot keep workers alive.
    pub(super) fn restart_within_budget(&mut self, now: Instant, last: &str) {
        let jitter = self.next_jitter();
        let Some(delay) = self.budget.delay(now, jitter) else {
            self.fatal(say::restarts_spent(&self.cfg.restart, last));
            return;
        };
        self.spawns_due.push(now + delay);
    }

    pub(super) fn attempt_error(
        &self,
        job: &Job,
        pid: u32,
        exit: &WorkerExit,
        timed_out: bool,
        note: Option<&str>,
    ) -> Box<JobError> {
        let attempts = (job.failed_attempts, self.cfg.retries + 1);
        if timed_out {
            let message = say::timed_out(self.cfg.timeout, pid, attempts.0, attempts.1);
            return JobError::new(ErrorKind::Timeout, message);
        }
        let memory_signal = matches!(exit, WorkerExit::Signal(s) if [Signal::ABRT, Signal::SEGV, Signal::BUS, Signal::KILL].contains(s));
        let memory_limit = self.cfg.memory_limit.filter(|_| memory_signal);
        let message = say::crashed(pid, exit, attempts, note, memory_limit);
        let mut error = JobError::new(ErrorKind::Crashed, message);
        match exit {
            WorkerExit::Code(code) => error.exit_code = Some(*code),
            WorkerExit::Signal(signal) => error.signal = Some(signal.name()),
        }
        error
    }

    pub(super) fn on_tick(&mut self, now: Instant, running: Vec<(WorkerId, RunningWord)>) {
        self.kill_lingering(now);
        let timeout = self.cfg.timeout;
        for (worker, word) in running {
            let Some(slot) = self.workers.get_mut(&worker) else {
                continue;
            };
            if slot.phase != Phase::Ready || slot.timed_out.is_some() {
                continue;
            }
            if word != slot.word {
                slot.word = word;
                slot.word_since = now;
                slot.stall_noted = None;
                continue;
            }
            if word == RunningWord::IDLE {
                continue;
            }
            let Some(job) = slot
                .in_flight
                .iter()
                .find_map(|b| b.running(word).map(|i| b.running_name(i, word)))
            else {
                continue;
            };
            let ran = now.duration_since(slot.word_since);
            if let Some(timeout) = timeout
                && ran >= timeout
            {
                slot.timed_out = Some(word);
                let why = say::ran_longer(&job, timeout);
                self.actions.push(Action::Kill { worker, why });
                continue;
            }
            // A job that runs long is said in the log, and again each time its time doubles,
            // so that a stall is never silent.
            let next = slot.stall_noted.map_or(STALL_NOTE, |noted| noted * 2);
            if ran >= next {
                slot.stall_noted = Some(next);
                let note = say::running_long(&job, next, slot.pid, timeout.is_some());
                self.actions.push(Action::Note(note));
            }
        }
    }

    /// Kills each retired worker that has not exited within `exit_grace` of the end of its
    /// input.
    pub(super) fn kill_lingering(&mut self, now: Instant) {
        let grace = self.cfg.exit_grace;
        for (&worker, slot) in &mut self.workers {
            let Some(at) = slot.retired_at else { continue };
            if now.duration_since(at) < grace {
                continue;
            }
            slot.retired_at = None;
            let why = say::lingering(grace);
            self.actions.push(Action::Kill { worker, why });
        }
    }
}
