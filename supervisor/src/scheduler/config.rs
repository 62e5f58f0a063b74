//! The scheduler's settings: how many workers, batching, retries and deadlines, the restart
//! budget and its backoff, the halt rule, recycling.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use corral_protocol::Notes;

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Worker processes to keep running.
    pub workers: usize,
    /// Extra attempts for a job that crashes its worker or times out.
    pub retries: u32,
    /// Longest a single job may run.
    pub timeout: Option<Duration>,
    /// Most jobs held in the queue before input reading pauses.
    pub max_queued: usize,
    /// Most bytes of job lines held in the queue before input reading pauses (a single line
    /// larger than this is still taken, alone).
    pub max_queued_bytes: usize,
    /// How much work one batch should hold, judged from the measured time per job. Each
    /// batch costs a round trip and wakeups on both sides, which on two busy cores is CPU time
    /// the jobs need: 16 ms made 5,000 one-millisecond commands 15% faster than 4 ms did, and a
    /// crash re-runs at most this much finished work. Fast jobs are bounded by
    /// `max_batch_jobs` instead, the end of the input spreads what is left over every worker,
    /// and a job slower than this goes alone.
    pub batch_target: Duration,
    /// Most jobs in one batch.
    pub max_batch_jobs: usize,
    /// Most input bytes in one batch (a single larger job still goes, alone).
    pub max_batch_bytes: usize,
    /// Batches sent to one worker ahead of its answers (one once jobs prove slower than
    /// `batch_target`).
    pub batches_in_flight: usize,
    /// Spread a short queue over every worker as at the end of the input, even while more
    /// input may come: for a client whose calls are short and come one after another (a
    /// library's pool), where loading one worker with a whole call leaves the others idle.
    pub spread_always: bool,
    /// Restart budget and backoff.
    pub restart: RestartPolicy,
    /// Start-up failures in a row, with no batch completed in between, that end the run.
    pub max_start_failures: u32,
    /// Emit results in input order, dispatching at most this many jobs past the oldest
    /// unanswered one.
    pub keep_order: Option<usize>,
    /// Stop the run after failures.
    pub halt: Option<HaltRule>,
    /// Replace a worker after it has run this many jobs.
    pub max_jobs_per_worker: Option<u64>,
    /// Replace a worker, between batches, once its resident memory passes this many bytes.
    pub max_rss: Option<u64>,
    /// The per-worker memory cap in force, in bytes; only used to explain crashes.
    pub memory_limit: Option<u64>,
    /// How long a retired worker may take to exit once its input has ended before it is
    /// killed: a worker that ignores the end of its input (a live thread, a timer) must not
    /// hold up the end of the run.
    pub exit_grace: Duration,
    /// Make a note of each result (its line, task, start, time and how it ended), in the order
    /// jobs finish, for `--joblog` (`Runs`: the worker of a block notes each of its lines'
    /// runs, packed) and `--metrics` (`Counts`: the lines of a block are only counted, by
    /// their worker), or both, which set it.
    pub notes: Notes,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            workers: 1,
            retries: 2,
            timeout: None,
            max_queued: 4_096,
            max_queued_bytes: 64 << 20,
            batch_target: Duration::from_millis(16),
            max_batch_jobs: 1024,
            max_batch_bytes: 4 << 20,
            batches_in_flight: 2,
            spread_always: false,
            restart: RestartPolicy::default(),
            max_start_failures: 3,
            keep_order: None,
            halt: None,
            max_jobs_per_worker: None,
            max_rss: None,
            memory_limit: None,
            exit_grace: Duration::from_secs(5),
            notes: Notes::None,
        }
    }
}

/// OTP-style restart intensity: up to `max_restarts` replacements in any `period` go ahead at
/// once; past that each replacement waits, with exponential backoff and jitter, until the rate
/// falls back under the budget. After `give_up_after` replacements in a row over budget the run
/// stops: workers that keep dying that fast are a fault, not bad luck.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Restarts allowed per period without delay.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
    /// First backoff delay once over budget.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Replacements in a row over budget after which the run stops.
    pub give_up_after: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 100,
            period: Duration::from_secs(10),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
            give_up_after: 10,
        }
    }
}

/// Counts restarts in a sliding window and says how long the next one must wait.
#[derive(Debug)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    over: u32,
}

impl RestartBudget {
    /// A budget with nothing spent.
    pub fn new(policy: RestartPolicy) -> RestartBudget {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
            over: 0,
        }
    }

    /// Records a restart at `now`; returns how long it must wait, or `None` when the budget is
    /// spent beyond recovery. `jitter` in `[0, 1)` spreads the delay over its upper half.
    pub fn delay(&mut self, now: Instant, jitter: f64) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.policy.period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() <= self.policy.max_restarts as usize {
            self.over = 0;
            return Some(Duration::ZERO);
        }
        if self.over >= self.policy.give_up_after {
            return None;
        }
        let exp = self
            .policy
            .backoff_base
            .saturating_mul(1 << self.over.min(20));
        self.over += 1;
        Some(exp.min(self.policy.backoff_max).mul_f64(0.5 + jitter / 2.0))
    }
}

/// When to stop a run because jobs fail, like GNU parallel's `--halt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltRule {
    /// Kill running jobs at once (`now`) or let them finish (`soon`).
    pub now: bool,
    /// How many failures trigger it.
    pub threshold: HaltThreshold,
}

/// The failure count that triggers a [`HaltRule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltThreshold {
    /// This many failed jobs.
    Count(u64),
    /// This percentage of the jobs read so far failed.
    Percent(f64),
}

impl std::str::FromStr for HaltRule {
    type Err = String;

    /// Parses `soon,fail=N`, `now,fail=N`, `soon,fail=P%`, or `fail=...` (meaning `soon`).
    fn from_str(text: &str) -> Result<HaltRule, String> {
        let usage = || format!("{text:?}: expected soon,fail=N, now,fail=N or soon,fail=P%");
        let (when, rest) = match text.split_once(',') {
            Some((when, rest)) => (when, rest),
            None => ("soon", text),
        };
        let now = match when {
            "soon" => false,
            "now" => true,
            _ => return Err(usage()),
        };
        let value = rest.strip_prefix("fail=").ok_or_else(usage)?;
        let threshold = match value.strip_suffix('%') {
            Some(percent) => match percent.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => HaltThreshold::Percent(p),
                _ => return Err(usage()),
            },
            None => match value.parse::<u64>() {
                Ok(n) if n > 0 => HaltThreshold::Count(n),
                _ => return Err(usage()),
            },
        };
        Ok(HaltRule { now, threshold })
    }
}

impl std::fmt::Display for HaltRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = if self.now { "now" } else { "soon" };
        match self.threshold {
            HaltThreshold::Count(n) => write!(f, "{when},fail={n}"),
            HaltThreshold::Percent(p) => write!(f, "{when},fail={p}%"),
        }
    }
}
