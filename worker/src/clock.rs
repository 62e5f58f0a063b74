//! The clock that times each line of a block: the CPU's time-stamp counter where the kernel
//! itself keeps time by it, scaled to nanoseconds by its rate measured against the monotonic
//! clock; the monotonic clock itself elsewhere, and until that rate is known.
//!
//! A line of a tiny job runs in well under a microsecond, and reading the monotonic clock
//! costs tens of nanoseconds, so timing every line with it is a visible part of its cost;
//! the counter reads in a few.

use std::time::Instant;

/// The counter is scaled only once this long has passed since it was first read, so that the
/// rate is known to a part in a million or better.
const CALIBRATION_NANOS: u64 = 2_000_000;

/// A clock that times consecutive lines: each [`LineClock::lap`] is the time since the last.
pub(crate) struct LineClock {
    /// The counter and the monotonic clock, read together when the clock was made.
    anchor: Option<(u64, Instant)>,
    /// Nanoseconds per tick of the counter, once measured.
    nanos_per_tick: Option<f64>,
    /// The last lap's end, in the clock's current units.
    mark: Mark,
}

/// Where a lap started.

#[derive(Clone, Copy)]
enum Mark {
    Ticks(u64),
    Instant(Instant),
}

impl LineClock {
    /// A clock for one worker; the counter is used only if the kernel keeps time by it.
    pub(crate) fn new() -> LineClock {
        let anchor = counter_trusted().then(|| (counter(), Instant::now()));
        LineClock {
            anchor,
            nanos_per_tick: None,
            mark: Mark::Instant(Instant::now()),
        }
    }

    /// Starts timing a block's lines: its first lap runs from now. The counter's rate is
    /// measured again each time, over all the time since the clock was made.
    pub(crate) fn start(&mut self) {
        if let Some((start_ticks, start)) = self.anchor {
            let (now_ticks, now) = (counter(), Instant::now());
            let nanos = now.duration_since(start).as_nanos() as u64;
            let elapsed = now_ticks.wrapping_sub(start_ticks);
            if nanos >= CALIBRATION_NANOS && elapsed > 0 {
                let rate = nanos as f64 / elapsed as f64;
                // A counter that runs at less than 10 MHz or more than 100 GHz is not believed.
                self.nanos_per_tick = (0.01..100.0).contains(&rate).then_some(rate);
            }
        }
        self.mark = match self.nanos_per_tick {
            Some(_) => Mark::Ticks(counter()),
            None => Mark::Instant(Instant::now()),
        };
    }

    /// Nanoseconds since the last lap (or since [`LineClock::start`]).
    pub(crate) fn lap(&mut self) -> u64 {
        match (self.mark, self.nanos_per_tick) {
            (Mark::Ticks(mark), Some(rate)) => {
                let now = counter();
                self.mark = Mark::Ticks(now);
                (now.saturating_sub(mark) as f64 * rate) as u64
            }
            (mark, _) => {
                let now = Instant::now();
                self.mark = Mark::Instant(now);
                match mark {
                    Mark::Instant(mark) => now.duration_since(mark).as_nanos() as u64,
                    Mark::Ticks(_) => 0,
                }
            }
        }
    }
}

/// Whether the time-stamp counter can time lines: the kernel keeps the system's time by it,
/// which it does only when the counter runs at a constant rate and agrees across CPUs.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn counter_trusted() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|source| source.trim() == "tsc")
}

/// The time-stamp counter.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline]
fn counter() -> u64 {
    // SAFETY: every x86_64 processor has the RDTSC instruction.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Elsewhere only the monotonic clock is used.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn counter_trusted() -> bool {
    false
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn counter() -> u64 {
    unreachable!("the counter is read only where it is trusted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_to_the_monotonic_time_they_span() {
        let mut clock = LineClock::new();
        // Past calibration, whichever clock is in use.
        let until = Instant::now() + std::time::Duration::from_nanos(3 * CALIBRATION_NANOS);
        while Instant::now() < until {}
        for _ in 0..3 {
            let started = Instant::now();
            clock.start();
            let mut laps = 0;
            for _ in 0..1000 {
                std::hint::black_box((0..100u64).sum::<u64>());
                laps += clock.lap();
            }
            let spanned = started.elapsed().as_nanos() as u64;
            // Within 5% and a microsecond of the time measured around them.
            assert!(laps <= spanned + spanned / 20 + 1000, "{laps} vs {spanned}");
            assert!(laps + spanned / 20 + 1000 >= spanned, "{laps} vs {spanned}");
        }
    }
}
