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

/// One source's waiting jobs, oldest first.
#[derive(Debug)]
struct Lane {
    source: SourceId,
    groups: VecDeque<Group>,
}

/// Waiting jobs. Jobs put back ahead of the others (those of a worker that died) come first;
/// then each source's jobs in the order they were read, the sources taking turns: the lane
/// in front is served until [`JobQueue::rotate`] sends it to the back, so that one source
/// with many jobs waiting does not hold back another with few.
#[derive(Debug, Default)]
pub(super) struct JobQueue {
    first: VecDeque<Group>,
    lanes: VecDeque<Lane>,
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

    /// Sources with jobs waiting.
    pub(super) fn sources(&self) -> usize {
        self.lanes.len()
    }

    /// Queues `jobs` behind every other job of their source. A source reads its own jobs, so
    /// a chunk is of one source; one that is not is split.
    pub(super) fn push_back(&mut self, mut jobs: Jobs) {
        let Some(source) = jobs.front().map(|job| job.source) else {
            return;
        };
        if let Some(at) = jobs.iter().position(|job| job.source != source) {
            let rest: Jobs = jobs.drain(at..).collect();
            self.push_back(jobs);
            self.push_back(rest);
            return;
        }
        let Some(group) = self.group(jobs) else {
            return;
        };
        // Most runs have one source, and a service a few dozen: a scan is cheaper than a map.
        match self
            .lanes
            .iter_mut()
            .rev()
            .find(|lane| lane.source == source)
        {
            Some(lane) => lane.groups.push_back(group),
            None => self.lanes.push_back(Lane {
                source,
                groups: VecDeque::from([group]),
            }),
        }
    }

    /// Queues `jobs`, in their order, ahead of every other.
    pub(super) fn push_front(&mut self, jobs: Jobs) {
        if let Some(group) = self.group(jobs) {
            self.first.push_front(group);
        }
    }

    /// Sends the source in front to the back of the turns.
    pub(super) fn rotate(&mut self) {
        if self.lanes.len() > 1 {
            self.lanes.rotate_left(1);
        }
    }

    fn group(&mut self, jobs: Jobs) -> Option<Group> {
        if jobs.is_empty() {
            return None;
        }
        let bytes = jobs.iter().map(|job| job.bytes().as_bytes().len()).sum();
        let retries = jobs.iter().any(|job| job.failed_attempts > 0);
        self.len += jobs.len();
        self.bytes += bytes;
        Some(Group {
            jobs,
            bytes,
            retries,
        })
    }

    /// The group served next, and the lane it is in, if any.
    fn next_groups(&mut self) -> Option<(&mut VecDeque<Group>, bool)> {
        if !self.first.is_empty() {
            return Some((&mut self.first, false));
        }
        self.lanes.front_mut().map(|lane| (&mut lane.groups, true))
    }

    /// Drops the lane in front once it has nothing left.
    fn tidy(&mut self, in_lane: bool) {
        if in_lane
            && self
                .lanes
                .front()
                .is_some_and(|lane| lane.groups.is_empty())
        {
            self.lanes.pop_front();
        }
    }

    /// The next job.
    pub(super) fn front(&self) -> Option<&Job> {
        self.front_group().and_then(|group| group.jobs.front())
    }

    /// Takes the next job.
    pub(super) fn pop_front(&mut self) -> Option<Job> {
        let (groups, in_lane) = self.next_groups()?;
        let group = groups
            .front_mut()
            .expect("lanes in the queue are not empty");
        let job = group
            .jobs
            .pop_front()
            .expect("groups in the queue are not empty");
        let bytes = job.bytes().as_bytes().len();
        group.bytes -= bytes;
        if group.jobs.is_empty() {
            groups.pop_front();
        }
        self.tidy(in_lane);
        self.len -= 1;
        self.bytes -= bytes;
        Some(job)
    }

    /// The group the next job is in, with the jobs of it not taken yet.
    pub(super) fn front_group(&self) -> Option<&Group> {
        self.first
            .front()
            .or_else(|| self.lanes.front().and_then(|lane| lane.groups.front()))
    }

    /// Takes the group the next job is in.
    pub(super) fn pop_group(&mut self) -> Option<Group> {
        let (groups, in_lane) = self.next_groups()?;
        let group = groups
            .pop_front()
            .expect("lanes in the queue are not empty");
        self.tidy(in_lane);
        self.len -= group.jobs.len();
        self.bytes -= group.bytes;
        Some(group)
    }

    /// Drops every job of `source`; returns how many there were.
    pub(super) fn remove_source(&mut self, source: SourceId) -> usize {
        let before = self.len;
        for group in &mut self.first {
            let mut removed_bytes = 0;
            group.jobs.retain(|job| {
                let keep = job.source != source;
                if !keep {
                    removed_bytes += job.bytes().as_bytes().len();
                }
                keep
            });
            group.bytes -= removed_bytes;
            self.bytes -= removed_bytes;
        }
        self.first.retain(|group| !group.jobs.is_empty());
        if let Some(at) = self.lanes.iter().position(|lane| lane.source == source) {
            let lane = self.lanes.remove(at).expect("just found");
            self.bytes -= lane.groups.iter().map(|group| group.bytes).sum::<usize>();
        }
        self.len = self
            .first
            .iter()
            .map(|group| group.jobs.len())
            .sum::<usize>()
            + self
                .lanes
                .iter()
                .flat_map(|lane| &lane.groups)
                .map(|group| group.jobs.len())
                .sum::<usize>();
        before - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{JobId, OneJob, SharedBytes, TaskNames, Work};
    use corral_protocol::JobSeq;

    fn jobs(seqs: std::ops::Range<u64>, failed_attempts: u32) -> Vec<Job> {
        let task = TaskNames::default().intern("t").unwrap();
        seqs.map(|seq| {
            let one = OneJob {
                id: JobId::from(seq.to_string().into_bytes()),
                task,
                input: SharedBytes::from(vec![b'1'; seq as usize + 1]),
                meta: None,
            };
            Job {
                failed_attempts,
                ..Job::one(JobSeq(seq), SourceId(0), seq + 1, one)
            }
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

    /// Jobs of one source, as a source's chunk is.
    fn from(source: u32, seqs: &[u64]) -> Jobs {
        jobs(0..seqs.len() as u64, 0)
            .into_iter()
            .zip(seqs)
            .map(|(mut job, &seq)| {
                if let Work::One(one) = &mut job.work {
                    one.input = SharedBytes::from(vec![b'1'; seq as usize + 1]);
                }
                Job {
                    seq: JobSeq(seq),
                    source: SourceId(source),
                    ..job
                }
            })
            .collect()
    }

    #[test]
    fn a_source_dropped_takes_only_its_jobs_with_it() {
        let mut queue = JobQueue::default();
        // Put back ahead of the rest, mixed: even seqs are source 0, odd ones source 1.
        let mixed = jobs(0..3, 1).into_iter().map(|job| Job {
            source: SourceId((job.seq.0 % 2) as u32),
            ..job
        });
        queue.push_front(mixed.collect());
        queue.push_back(from(1, &[3]));
        queue.push_back(from(0, &[4]));
        queue.push_back(from(1, &[5]));
        // Jobs 1, 3 and 5 go, and the lane of source 1 with them.
        assert_eq!(queue.remove_source(SourceId(1)), 3);
        assert_eq!((queue.len(), queue.bytes()), (3, 1 + 3 + 5));
        assert_eq!(queue.sources(), 1);
        assert_eq!(seqs(&mut queue), [0, 2, 4]);
        assert_eq!(queue.remove_source(SourceId(1)), 0);
    }

    #[test]
    fn sources_take_turns_and_jobs_put_back_go_first() {
        let mut queue = JobQueue::default();
        queue.push_back(from(0, &[0, 1]));
        queue.push_back(from(0, &[2, 3]));
        queue.push_back(from(1, &[10, 11]));
        queue.push_back(from(2, &[20]));
        assert_eq!(queue.sources(), 3);
        // The lane in front is served, across its groups, until it is rotated.
        assert_eq!(queue.pop_front().unwrap().seq, JobSeq(0));
        assert_eq!(queue.pop_group().unwrap().jobs.len(), 1);
        assert_eq!(queue.pop_front().unwrap().seq, JobSeq(2));
        queue.rotate();
        assert_eq!(queue.pop_front().unwrap().seq, JobSeq(10));
        queue.push_front(jobs(12..13, 1).into());
        assert_eq!(queue.front().unwrap().seq, JobSeq(12), "put back: first");
        assert!(queue.front_group().unwrap().retries);
        assert_eq!(queue.pop_front().unwrap().seq, JobSeq(12));
        queue.rotate();
        // Source 1 was rotated behind 2; then 0 is left with job 3, and 1 with job 11.
        assert_eq!(seqs(&mut queue), [20, 3, 11]);
        assert_eq!((queue.len(), queue.bytes(), queue.sources()), (0, 0, 0));
    }
}
