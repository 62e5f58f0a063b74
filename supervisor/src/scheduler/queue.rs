//! The queue of jobs waiting for a worker. Jobs stay in the groups they were read in, so that a
//! batch can take a whole group by moving one vector, not each of its jobs.

use std::collections::VecDeque;

use crate::record::{Job, Jobs, SourceId};

/// Jobs read together, in order.
#[derive(Debug)]
pub(super) struct Group {
    /// The jobs not taken yet.
    pub(super) jobs: Jobs,
    /// Their input bytes.
    pub(super) bytes: usize,
    /// Whether one of them has failed before (and so must run alone).
    pub(super) retries: bool,
}

/// Waiting jobs, oldest first.
#[derive(Debug, Default)]
pub(super) struct JobQueue {
    groups: VecDeque<Group>,
    len: usize,
    bytes: usize,
}

impl JobQueue {
    /// Jobs waiting.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Input bytes of the jobs waiting.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `jobs` behind every other.
    pub(super) fn push_back(&mut self, jobs: Jobs) {
        if let Some(group) = self.group(jobs) {
            self.groups.push_back(group);
        }
    }

    /// Queues `jobs`, in their order, ahead of every other.
    pub(super) fn push_front(&mut self, jobs: Jobs) {
        if let Some(group) = self.group(jobs) {
            self.groups.push_front(group);
        }
    }

    fn group(&mut self, jobs: Jobs) -> Option<Group> {
        if jobs.is_empty() {
            return None;
        }
        let bytes = jobs.iter().map(|job| job.input.as_bytes().len()).sum();
        let retries = jobs.iter().any(|job| job.failed_attempts > 0);
        self.len += jobs.len();
        self.bytes += bytes;
        Some(Group {
            jobs,
            bytes,
            retries,
        })
    }

    /// The next job.
    pub(super) fn front(&self) -> Option<&Job> {
        self.groups.front().and_then(|group| group.jobs.front())
    }

    /// Takes the next job.
    pub(super) fn pop_front(&mut self) -> Option<Job> {
        let group = self.groups.front_mut()?;
        let job = group
            .jobs
            .pop_front()
            .expect("groups in the queue are not empty");
        let bytes = job.input.as_bytes().len();
        group.bytes -= bytes;
        if group.jobs.is_empty() {
            self.groups.pop_front();
        }
        self.len -= 1;
        self.bytes -= bytes;
        Some(job)
    }

    /// The group the next job is in, with the jobs of it not taken yet.
    pub(super) fn front_group(&self) -> Option<&Group> {
        self.groups.front()
    }

    /// Takes the group the next job is in.
    pub(super) fn pop_group(&mut self) -> Option<Group> {
        let group = self.groups.pop_front()?;
        self.len -= group.jobs.len();
        self.bytes -= group.bytes;
        Some(group)
    }

    /// Drops every job of `source`; returns how many there were.
    pub(super) fn remove_source(&mut self, source: SourceId) -> usize {
        let before = self.len;
        for group in &mut self.groups {
            let mut removed_bytes = 0;
            group.jobs.retain(|job| {
                let keep = job.source != source;
                if !keep {
                    removed_bytes += job.input.as_bytes().len();
                }
                keep
            });
            group.bytes -= removed_bytes;
            self.bytes -= removed_bytes;
        }
        self.groups.retain(|group| !group.jobs.is_empty());
        self.len = self.groups.iter().map(|group| group.jobs.len()).sum();
        before - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{JobId, SharedBytes, TaskNames};
    use corral_protocol::JobSeq;

    fn jobs(seqs: std::ops::Range<u64>, failed_attempts: u32) -> Vec<Job> {
        let task = TaskNames::default().intern("t").unwrap();
        seqs.map(|seq| Job {
            seq: JobSeq(seq),
            source: SourceId((seq % 2) as u32),
            line: seq + 1,
            id: JobId::from(seq.to_string().into_bytes()),
            task,
            input: SharedBytes::from(vec![b'1'; seq as usize + 1]),
            meta: None,
            failed_attempts,
        })
        .collect()
    }

    fn seqs(queue: &mut JobQueue) -> Vec<u64> {
        std::iter::from_fn(|| queue.pop_front().map(|job| job.seq.0)).collect()
    }

    #[test]
    fn jobs_come_out_in_order_with_counts_kept() {
        let mut queue = JobQueue::default();
        queue.push_back(jobs(2..4, 0).into());
        queue.push_back(Jobs::default());
        queue.push_back(jobs(4..5, 0).into());
        queue.push_front(jobs(0..2, 1).into());
        assert_eq!((queue.len(), queue.bytes()), (5, 1 + 2 + 3 + 4 + 5));
        assert!(queue.front_group().unwrap().retries);
        assert_eq!(queue.pop_front().unwrap().seq, JobSeq(0));
        assert_eq!((queue.len(), queue.bytes()), (4, 2 + 3 + 4 + 5));
        assert_eq!(seqs(&mut queue), [1, 2, 3, 4]);
        assert!(queue.is_empty() && queue.bytes() == 0 && queue.front().is_none());
    }

    #[test]
    fn a_group_goes_whole_with_what_is_left_of_it() {
        let mut queue = JobQueue::default();
        queue.push_back(jobs(0..3, 0).into());
        queue.push_back(jobs(3..5, 0).into());
        queue.pop_front();
        let group = queue.pop_group().unwrap();
        assert_eq!(group.jobs.len(), 2);
        assert_eq!(group.bytes, 2 + 3);
        assert!(!group.retries);
        assert_eq!((queue.len(), queue.bytes()), (2, 4 + 5));
        assert_eq!(seqs(&mut queue), [3, 4]);
        assert!(queue.pop_group().is_none());
    }

    #[test]
    fn a_source_dropped_takes_only_its_jobs_with_it() {
        let mut queue = JobQueue::default();
        queue.push_back(jobs(0..3, 0).into());
        queue.push_back(jobs(3..4, 0).into());
        queue.push_back(jobs(4..6, 0).into());
        // Odd seqs are source 1: jobs 1, 3 and 5 go, and the group of job 3 with them.
        assert_eq!(queue.remove_source(SourceId(1)), 3);
        assert_eq!((queue.len(), queue.bytes()), (3, 1 + 3 + 5));
        assert_eq!(seqs(&mut queue), [0, 2, 4]);
        assert_eq!(queue.remove_source(SourceId(1)), 0);
    }
}
