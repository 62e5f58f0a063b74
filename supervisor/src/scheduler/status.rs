//! What `corral status` (and the metrics) are told of the scheduler: each worker as it is
//! now, and the tasks the workers serve.

use corral_protocol::RunningWord;

use super::{Phase, Scheduler, WorkerState, WorkerView};

impl Scheduler {
    /// Each worker as it is now, for `corral status`.
    pub fn workers(&self) -> Vec<WorkerView> {
        let mut views: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(&worker, slot)| WorkerView {
                worker,
                pid: slot.pid,
                state: match slot.phase {
                    Phase::Starting => WorkerState::Starting,
                    Phase::Ready if slot.in_flight.is_empty() => WorkerState::Idle,
                    Phase::Ready if slot.recycle.is_some() => WorkerState::Recycling,
                    Phase::Ready => WorkerState::Busy,
                    Phase::Retiring => WorkerState::Retiring,
                },
                jobs_done: slot.jobs_done,
                in_flight: slot.jobs_in_flight(),
                current: slot
                    .in_flight
                    .iter()
                    .find_map(|f| f.running(slot.word).map(|i| f.running_name(i, slot.word))),
                current_since: (slot.word != RunningWord::IDLE).then_some(slot.word_since),
            })
            .collect();
        views.sort_by_key(|view| view.worker);
        views
    }

    /// The tasks the workers that said hello serve, sorted.
    pub fn served_tasks(&self) -> Vec<String> {
        let mut tasks: Vec<String> = self
            .workers
            .values()
            .filter(|slot| slot.phase != Phase::Starting)
            .flat_map(|slot| slot.tasks.keys().map(|name| name.to_string()))
            .collect();
        tasks.sort_unstable();
        tasks.dedup();
        tasks
    }
}
