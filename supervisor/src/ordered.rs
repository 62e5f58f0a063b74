//! A pool of threads that maps items and hands each result back in the order the items were
//! given: the stages that parse the input and format the results run on every core, while the
//! one thread before them and the one after see every item in order.

use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

/// Most threads a pool sized to the machine has.
pub const MAX_THREADS: usize = 64;

/// Threads for a pool sized to the machine: one per CPU this process may run on, at most
/// [`MAX_THREADS`].
pub fn machine_threads() -> usize {
    thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
}

/// A result on its way from a thread of the pool.
#[derive(Debug)]
pub struct Pending<O>(Receiver<O>);

impl<O> Pending<O> {
    /// Waits for the result; `None` if the thread making it panicked.
    pub fn wait(self) -> Option<O> {
        self.0.recv().ok()
    }
}

/// See the module documentation. Its threads end once the pool is dropped and every item
/// given to it is mapped.
pub struct OrderedPool<I, O> {
    work: Sender<(I, Sender<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> OrderedPool<I, O> {
    /// One thread named `name` for each of `states`, mapping items with `map` and its own
    /// state. At most `queue` items wait for a thread, so that giving waits while the pool is
    /// that far behind; with `None`, giving never waits.
    pub fn start<S: Send + 'static>(
        name: &str,
        states: Vec<S>,
        queue: Option<usize>,
        map: impl Fn(&mut S, I) -> O + Send + Clone + 'static,
    ) -> OrderedPool<I, O> {
        let (work, todo) = match queue {
            Some(n) => bounded::<(I, Sender<O>)>(n),
            None => unbounded(),
        };
        for mut state in states {
            let todo = todo.clone();
            let map = map.clone();
            thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    for (item, done) in todo {
                        let _ = done.send(map(&mut state, item));
                    }
                })
                .expect("spawning a thread");
        }
        OrderedPool { work }
    }

    /// Gives `item` to the pool; its result comes on the [`Pending`], which the caller hands
    /// on in order.
    pub fn give(&self, item: I) -> Pending<O> {
        let (done, pending) = bounded(1);
        // Should every thread have panicked, the item is dropped and waiting for it gives None.
        let _ = self.work.send((item, done));
        Pending(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_the_order_given_whichever_thread_is_faster() {
        let pool = OrderedPool::start("test", vec![0u64; 4], Some(2), |count, n: u64| {
            // Early items take longest, so later ones finish first on other threads.
            std::thread::sleep(std::time::Duration::from_micros(200 * (20 - n % 20)));
            *count += 1;
            n * n
        });
        let pending: Vec<Pending<u64>> = (0..60).map(|n| pool.give(n)).collect();
        let squares: Vec<u64> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        assert_eq!(squares, (0..60).map(|n| n * n).collect::<Vec<_>>());
    }

    #[test]
    fn a_panic_is_a_missing_result_not_a_hang() {
        let pool = OrderedPool::start("test", vec![(); 1], None, |_, n: u32| {
            assert_ne!(n, 1, "the item that fails");
            n
        });
        let (a, b) = (pool.give(0), pool.give(1));
        assert_eq!(a.wait(), Some(0));
        assert_eq!(b.wait(), None);
    }
}
