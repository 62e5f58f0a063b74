//! Fixed rings of reused buffers: the input reader's blocks and job vectors, which travel to
//! the scheduler and come back when it lets them go.
//!
//! A ring makes its first `max` buffers as they are first needed; from then on every buffer it
//! hands out is one that came back, and taking waits while none has. So a ring never holds more
//! than `max` buffers, and once a run has needed that many it holds exactly that many: the
//! memory those buffers take is set by the ring's size, the same for a million jobs as for a
//! billion, however far behind the workers fall at one moment or another.

use crossbeam_channel::{Receiver, Sender, unbounded};

/// A ring of at most `max` buffers of type `T`. See the module documentation.
#[derive(Debug)]
pub struct Ring<T> {
    max: usize,
    made: usize,
    /// Buffers given back, oldest first.
    returned: Receiver<T>,
    home: Sender<T>,
}

impl<T> Ring<T> {
    /// A ring of at most `max` buffers (at least one).
    pub fn new(max: usize) -> Ring<T> {
        let (home, returned) = unbounded();
        Ring {
            max: max.max(1),
            made: 0,
            returned,
            home,
        }
    }

    /// A buffer: a new one from `fresh` while fewer than `max` were made, else the oldest one
    /// given back, waiting for one if none has been.
    pub fn take(&mut self, fresh: impl FnOnce() -> T) -> T {
        if self.made < self.max {
            self.made += 1;
            return fresh();
        }
        self.returned
            .recv()
            .expect("the ring holds a sender of its own")
    }

    /// Buffers given back and not taken again.
    #[cfg(test)]
    pub(crate) fn given_back(&self) -> usize {
        self.returned.len()
    }

    /// Where buffers are given back. A buffer given back to a ring that is gone is dropped.
    pub fn home(&self) -> Home<T> {
        Home(self.home.clone())
    }
}

/// Gives buffers back to their ring, from any thread.
#[derive(Debug)]
pub struct Home<T>(Sender<T>);

impl<T> Clone for Home<T> {
    fn clone(&self) -> Home<T> {
        Home(self.0.clone())
    }
}

impl<T> Home<T> {
    /// Gives `buffer` back (or drops it, if its ring is gone).
    pub fn give_back(&self, buffer: T) {
        let _ = self.0.send(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_up_to_max_then_reuses_the_oldest_given_back() {
        let mut ring = Ring::new(2);
        let mut made = 0;
        let mut fresh = || {
            made += 1;
            made
        };
        let (a, b) = (ring.take(&mut fresh), ring.take(&mut fresh));
        assert_eq!((a, b), (1, 2));
        let home = ring.home();
        home.give_back(b);
        home.give_back(a);
        assert_eq!(
            ring.take(&mut fresh),
            2,
            "the oldest given back comes first"
        );
        assert_eq!(ring.take(&mut fresh), 1);
        assert_eq!(made, 2, "no third buffer is made");
    }

    #[test]
    fn taking_waits_until_a_buffer_comes_back() {
        let mut ring = Ring::new(1);
        let first: Vec<u8> = ring.take(|| vec![7]);
        let home = ring.home();
        let (taken_tx, taken_rx) = crossbeam_channel::bounded(1);
        let taker = std::thread::spawn(move || {
            let buffer = ring.take(Vec::new);
            taken_tx.send(()).unwrap();
            buffer
        });
        assert!(
            taken_rx
                .recv_timeout(std::time::Duration::from_millis(50))
                .is_err(),
            "nothing came back yet"
        );
        home.give_back(first);
        assert_eq!(taker.join().unwrap(), vec![7]);
    }
}
