//! The built-in tasks of the default `corral-worker` binary. Each is a plain public function,
//! so that it can be tested without a supervisor and reused (the benchmarks' single-process
//! baseline runs exactly these).

use std::fs::File;
use std::io::{self, Read};
use std::time::Duration;

use serde::Deserialize;

use crate::Worker;
use sha2::{Digest, Sha256};

/// Largest `n` that `primes` accepts: its sieve takes n/16 bytes.
const PRIMES_MAX: u64 = 1 << 36;
/// Longest `spin` accepted, in milliseconds.
const SPIN_MAX_MS: u64 = 3_600_000;

/// Adds the built-in tasks (`sum_squares`, `primes`, `sha256`, `spin`) to `worker`.
pub fn register(worker: Worker) -> Worker {
    worker
        .task("sum_squares", sum_squares)
        .task("primes", primes)
        .task("sha256", sha256)
        .task("spin", spin)
}

/// Sum of the squares of an array of integers; an error if it overflows 64 bits.
pub fn sum_squares(values: Vec<i64>) -> Result<i64, String> {
    values.iter().try_fold(0i64, |acc, &v| {
        v.checked_mul(v)
            .and_then(|sq| acc.checked_add(sq))
            .ok_or_else(|| "sum of squares overflows a 64-bit integer".to_owned())
    })
}

/// How many primes are below `n`, by an odd-only sieve of Eratosthenes.
pub fn primes(n: u64) -> Result<u64, String> {
    if n > PRIMES_MAX {
        return Err(format!("n must be at most {PRIMES_MAX}"));
    }
    if n <= 2 {
        return Ok(0);
    }
    // Bit i stands for the odd number 2i+1; bit 0 (the number 1) is not prime.
    let odds = (n / 2) as usize;
    let mut composite = vec![0u64; odds.div_ceil(64)];
    let mut i = 1usize;
    while (2 * i + 1) * (2 * i + 1) < n as usize {
        if composite[i / 64] & (1 << (i % 64)) == 0 {
            let p = 2 * i + 1;
            let mut j = p * p / 2;
            while j < odds {
                composite[j / 64] |= 1 << (j % 64);
                j += p;
            }
        }
        i += 1;
    }
    let composites: u64 = composite.iter().map(|w| u64::from(w.count_ones())).sum();
    // Of the `odds` numbers 1, 3, 5, ... below n, all but the composites and 1 are prime;
    // add 2, the even prime, and the two corrections cancel out.
    Ok(odds as u64 - composites)
}

/// What `sha256` hashes: a file named by its path, or a text given inline.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum HashInput {
    /// A file to hash.
    Path(String),
    /// A text to hash.
    Text {
        /// The text.
        text: String,
    },
}

/// SHA-256 of a file (input: its path) or of a text (input: `{"text": ...}`), as hex.
pub fn sha256(input: HashInput) -> Result<String, String> {
    let mut hasher = Sha256::new();
    match input {
        HashInput::Text { text } => hasher.update(text.as_bytes()),
        HashInput::Path(path) => {
            let mut file = File::open(&path).map_err(|err| format!("{path}: {err}"))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => hasher.update(&buf[..n]),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(format!("{path}: {err}")),
                }
            }
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Burns `ms` milliseconds of this thread's CPU time and returns `ms`: a job of known cost.
///
/// It counts CPU time, not wall time, so a job that has to share its core takes longer, as real
/// work would: that is what makes it a fair measure of parallel efficiency.
pub fn spin(ms: u64) -> Result<u64, String> {
    if ms > SPIN_MAX_MS {
        return Err(format!("ms must be at most {SPIN_MAX_MS}"));
    }
    let budget = Duration::from_millis(ms);
    let start = thread_cpu_time();
    let mut x = 0u64;
    while thread_cpu_time().saturating_sub(start) < budget {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    Ok(ms)
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_THREAD_CPUTIME_ID always exists
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_squares_adds_and_reports_overflow() {
        assert_eq!(sum_squares(vec![1, 2, 3]), Ok(14));
        assert_eq!(sum_squares(vec![]), Ok(0));
        assert_eq!(sum_squares(vec![-4]), Ok(16));
        assert!(sum_squares(vec![i64::MAX]).is_err());
    }

    #[test]
    fn primes_counts_like_a_naive_count() {
        let naive = |n: u64| {
            (2..n)
                .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
                .count() as u64
        };
        for n in 0..300 {
            assert_eq!(primes(n), Ok(naive(n)), "n = {n}");
        }
        assert_eq!(primes(1_000_000), Ok(78_498));
        assert!(primes(PRIMES_MAX + 1).is_err());
    }

    #[test]
    fn sha256_of_text_and_file() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            sha256(HashInput::Text {
                text: String::new()
            })
            .unwrap(),
            empty
        );
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256(HashInput::Text { text: "abc".into() }).unwrap(), abc);
        let dir = std::env::temp_dir().join(format!("corral-sha-{}", std::process::id()));
        std::fs::write(&dir, "abc").unwrap();
        assert_eq!(
            sha256(HashInput::Path(dir.display().to_string())).unwrap(),
            abc
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(
            sha256(HashInput::Path("/nonexistent/corral".into()))
                .unwrap_err()
                .contains("/nonexistent/corral")
        );
    }

    #[test]
    fn spin_burns_cpu_time_and_returns_its_argument() {
        let before = thread_cpu_time();
        assert_eq!(spin(20), Ok(20));
        assert!(thread_cpu_time() - before >= Duration::from_millis(20));
        assert!(spin(SPIN_MAX_MS + 1).is_err());
    }
}
