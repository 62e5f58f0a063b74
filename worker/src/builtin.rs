//! The built-in tasks of the default `corral-worker` binary. Each is a plain public function,
//! so that it can be tested without a supervisor and reused (the benchmarks' single-process
//! baseline runs exactly these).

use std::fs::File;
use std::io::{self, Read};
use std::time::Duration;

use serde::Deserialize;

use crate::{TaskFailure, Worker};
use sha2::{Digest, Sha256};

/// Largest `n` that `primes` accepts: its sieve takes n/16 bytes.
const PRIMES_MAX: u64 = 1 << 36;
/// Longest `spin` accepted, in milliseconds.
const SPIN_MAX_MS: u64 = 3_600_000;

/// Adds the built-in tasks (`sum_squares`, `primes`, `sha256`, `spin`, `log`) to `worker`, and
/// `exec` when the supervisor handed over a command (`corral run --exec`).
pub fn register(worker: Worker) -> Worker {
    let worker = worker
        .skimming_task("sum_squares", sum_squares_json, sum_squares_skim)
        .task("primes", primes)
        .task("sha256", sha256_task())
        .task("spin", spin)
        .task("log", log);
    match crate::exec::spec_from_env() {
        Ok(Some(spec)) => {
            let slot = std::env::var(corral_protocol::ENV_WORKER_SLOT).unwrap_or_default();
            worker.raw_task("exec", move |input, out| {
                crate::exec::run(&spec, &slot, input, out)
            })
        }
        Ok(None) => worker,
        Err(err) => {
            // Without the task, every exec job is answered unknown_task, which names the cause.
            eprintln!("corral-worker: {err}");
            worker
        }
    }
}

/// Sum of the squares of an array of integers; an error if it overflows 64 bits.
pub fn sum_squares(values: Vec<i64>) -> Result<i64, String> {
    values
        .iter()
        .try_fold(0i64, |acc, &v| add_square(acc, v))
        .ok_or_else(overflow)
}

fn add_square(acc: i64, v: i64) -> Option<i64> {
    v.checked_mul(v).and_then(|sq| acc.checked_add(sq))
}

fn overflow() -> String {
    "sum of squares overflows a 64-bit integer".to_owned()
}

/// `sum_squares` as the worker runs it, on the job's JSON input. A flat array of plain
/// integers, the usual input, is summed as it is read, with nothing allocated; any other input
/// goes through serde as for every other task, so the answer and any error are the same as
/// [`sum_squares`] would give.
pub fn sum_squares_json(input: &[u8], out: &mut Vec<u8>) -> Result<(), TaskFailure> {
    let sum = match plain_sum_squares(input) {
        Some(sum) => sum,
        None => {
            let values: Vec<i64> = serde_json::from_slice(input)
                .map_err(|err| TaskFailure::BadInput(crate::task::input_message(&err)))?;
            sum_squares(values)
        }
    }
    .map_err(TaskFailure::TaskError)?;
    out.extend_from_slice(itoa::Buffer::new().format(sum).as_bytes());
    Ok(())
}

/// `sum_squares` skimming its input from the job line (see `Worker::skimming_task`): a flat
/// array of plain integers at the start of `rest` is summed as the line is checked, and its
/// length returned with the outcome, as [`sum_squares_json`] gives it.
fn sum_squares_skim(rest: &[u8], out: &mut Vec<u8>) -> Option<(usize, Result<(), TaskFailure>)> {
    let (sum, len) = plain_sum_squares_prefix(rest)?;
    let outcome = sum
        .map(|sum| out.extend_from_slice(itoa::Buffer::new().format(sum).as_bytes()))
        .map_err(TaskFailure::TaskError);
    Some((len, outcome))
}

/// The sum of squares of `input` if it is a JSON array of plain integers (see
/// [`plain_integer`]) with optional whitespace; `None` for anything else.
fn plain_sum_squares(input: &[u8]) -> Option<Result<i64, String>> {
    let (sum, len) = plain_sum_squares_prefix(input)?;
    skip_whitespace(&input[len..]).is_empty().then_some(sum)
}

/// The sum of squares of the JSON array of plain integers at the start of `input` (after
/// optional whitespace), and the bytes up to the end of the array; `None` if anything else is
/// there.
fn plain_sum_squares_prefix(input: &[u8]) -> Option<(Result<i64, String>, usize)> {
    let mut rest = skip_whitespace(skip_whitespace(input).strip_prefix(b"[")?);
    // `None` once the sum has overflowed; the rest must still be read, as it may be malformed.
    let mut sum = Some(0i64);
    if let Some(after) = rest.strip_prefix(b"]") {
        return Some((Ok(0), input.len() - after.len()));
    }
    loop {
        let (value, after) = plain_integer(rest)?;
        sum = sum.and_then(|acc| add_square(acc, value));
        rest = skip_whitespace(after);
        match rest.split_first()? {
            (b',', after) => rest = skip_whitespace(after),
            (b']', after) => return Some((sum.ok_or_else(overflow), input.len() - after.len())),
            _ => return None,
        }
    }
}

/// A JSON integer at the start of `s` that serde reads as the same `i64`, and the rest of `s`:
/// an optional minus, then `0` or up to 18 digits not starting with `0`, not followed by a
/// fraction or exponent. `-0` is not one (serde reads it as a float), nor are longer numbers.
fn plain_integer(s: &[u8]) -> Option<(i64, &[u8])> {
    // No branch on the sign, which comes and goes at random in typical input.
    let negative = s.first() == Some(&b'-');
    let digits = &s[usize::from(negative)..];
    // Most numbers have under eight digits, read from one word at once; longer ones (up to 19
    // digits, which fit a u64; 19 is one too many for a plain integer) a digit at a time.
    let short = digits
        .get(..8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("eight bytes")))
        .map(|word| (word, digit_run(word)))
        .filter(|&(_, len)| len < 8);
    let (magnitude, len) = match short {
        Some((word, len)) => (word_value(word, len), len),
        None => {
            let (mut magnitude, mut len) = (0u64, 0);
            for &d in digits.iter().take(19) {
                if !d.is_ascii_digit() {
                    break;
                }
                magnitude = magnitude * 10 + u64::from(d - b'0');
                len += 1;
            }
            (magnitude, len)
        }
    };
    if len == 0 || len > 18 || (digits[0] == b'0' && (len > 1 || negative)) {
        return None;
    }
    let rest = &digits[len..];
    if matches!(rest.first(), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    // 0 or -1: the value is the magnitude, or its two's complement negation.
    let sign = -i64::from(negative);
    Some(((magnitude as i64 ^ sign) - sign, rest))
}

/// The bytes of `word` (lowest first) before the first that is not an ASCII digit.
fn digit_run(word: u64) -> usize {
    // A digit (0x30..=0x39) has a high nibble of 3, and still has after adding 6; a carry may
    // misjudge bytes after the first that is not a digit, never one before it.
    const ONES: u64 = 0x0101_0101_0101_0101;
    let (nibbles, threes) = (0xF0 * ONES, 0x30 * ONES);
    let not_digits =
        ((word & nibbles) ^ threes) | ((word.wrapping_add(6 * ONES) & nibbles) ^ threes);
    (not_digits.trailing_zeros() / 8) as usize
}

/// The number the first `len` bytes of `word` (lowest first, 1 to 7 ASCII digits) spell: the
/// digits are moved to the top of the word behind zeros and combined in pairs, then fours,
/// then eights, with one multiplication each.
fn word_value(word: u64, len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    let x = (word & 0x0F0F_0F0F_0F0F_0F0F) << (8 * (8 - len));
    let x = (x.wrapping_mul(10 << 8 | 1) >> 8) & 0x00FF_00FF_00FF_00FF;
    let x = (x.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_FFFF_0000_FFFF;
    x.wrapping_mul(10_000 << 32 | 1) >> 32
}

fn skip_whitespace(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(s.len());
    &s[start..]
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

/// The `sha256` task: [`sha256`], but in a worker of a shared service (see
/// [`corral_protocol::ENV_SHARED_SERVICE`]) a path is refused before anything is looked up,
/// so that a client can neither read a file through the service nor tell whether one exists.
fn sha256_task() -> impl Fn(HashInput) -> Result<String, String> + Send + 'static {
    let shared = std::env::var_os(corral_protocol::ENV_SHARED_SERVICE).is_some_and(|v| v == "1");
    move |input| {
        match input {
        HashInput::Path(_) if shared => Err(
            "this worker serves a shared corral service, which reads no file for its clients: send {\"text\": ...}"
                .into(),
        ),
        input => sha256(input),
    }
    }
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

/// What the `log` task writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogIn {
    /// The line.
    pub message: String,
    /// Its syslog priority, 0 (emergency) to 7 (debug); corral logs it at the matching level.
    #[serde(default = "info_priority")]
    pub priority: u8,
}

fn info_priority() -> u8 {
    6
}

/// Writes `message` to stderr as one line with its syslog priority prefix (`<4>...`), as a
/// worker's own log line, and returns null: for checking where the logs of a deployment go
/// (the journal, under `corral serve`).
pub fn log(input: LogIn) -> Result<(), String> {
    use std::io::Write;
    if input.priority > 7 {
        return Err("priority must be 0 to 7".into());
    }
    let line = input.message.replace(['\n', '\r'], " ");
    writeln!(io::stderr().lock(), "<{}>{line}", input.priority)
        .map_err(|err| format!("cannot write to stderr: {err}"))
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

    /// Runs `sum_squares` the way every other task runs: serde in, serde out.
    fn through_serde(input: &[u8]) -> Result<Vec<u8>, TaskFailure> {
        let values: Vec<i64> = serde_json::from_slice(input)
            .map_err(|err| TaskFailure::BadInput(crate::task::input_message(&err)))?;
        let sum = sum_squares(values).map_err(TaskFailure::TaskError)?;
        Ok(serde_json::to_vec(&sum).unwrap())
    }

    fn through_json(input: &[u8]) -> Result<Vec<u8>, TaskFailure> {
        let mut out = Vec::new();
        sum_squares_json(input, &mut out).map(|()| out)
    }

    #[test]
    fn sum_squares_json_reads_plain_arrays_and_leaves_the_rest_to_serde() {
        assert_eq!(through_json(b"[1,2,3]").unwrap(), b"14");
        assert_eq!(through_json(b" [ -4 , 0 ]\n").unwrap(), b"16");
        assert_eq!(through_json(b"[]").unwrap(), b"0");
        assert!(plain_sum_squares(b"[1,2,3]").is_some());
        for other in [
            &b"[1.0]"[..],
            b"[-0]",
            b"[01]",
            b"[1e2]",
            b"[1,]",
            b"[1] x",
            b"{}",
            b"3",
        ] {
            assert!(plain_sum_squares(other).is_none(), "{other:?}");
        }
        let big = format!("[{}]", i64::MAX);
        assert!(matches!(
            through_json(big.as_bytes()),
            Err(TaskFailure::TaskError(m)) if m.contains("overflows")
        ));
        assert!(matches!(
            through_json(b"[1,\"x\"]"),
            Err(TaskFailure::BadInput(_))
        ));
    }

    /// Random inputs built from plain and awkward tokens: the fast path must answer exactly as
    /// serde does, result or error.
    #[test]
    fn sum_squares_json_agrees_with_serde() {
        const TOKENS: &[&str] = &[
            "0",
            "7",
            "-7",
            "42",
            "-999",
            "123456789",
            "-0",
            "00",
            "01",
            "1.5",
            "2e3",
            "-1E2",
            "3037000499",
            "3037000500",
            "999999999999999999",
            "-999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            ",",
            ",",
            ",",
            " ",
            "\t",
            "\n",
            "[",
            "]",
            "\"a\"",
            "null",
            "true",
            "-",
            "+1",
            "x",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        let (mut fast, mut total) = (0, 0);
        for _ in 0..50_000 {
            let mut input = String::from("[");
            for k in 0..next(10) {
                if k > 0 && next(8) != 0 {
                    input.push(',');
                }
                input.push_str(TOKENS[next(TOKENS.len())]);
                if next(6) == 0 {
                    input.push_str(TOKENS[next(TOKENS.len())]);
                }
            }
            if next(20) != 0 {
                input.push(']');
            }
            total += 1;
            fast += usize::from(plain_sum_squares(input.as_bytes()).is_some());
            // A skim of the input followed by more of a line reads the input alone, as the
            // task itself would.
            let line = format!("{input} ,\"meta\":1}}");
            let mut out = Vec::new();
            if let Some((len, outcome)) = sum_squares_skim(line.as_bytes(), &mut out) {
                let skimmed = &line.as_bytes()[..len];
                assert!(
                    serde_json::from_slice::<serde_json::Value>(skimmed).is_ok(),
                    "{line}"
                );
                assert_eq!(outcome.map(|()| out), through_json(skimmed), "{line}");
            }
            assert_eq!(
                through_json(input.as_bytes()),
                through_serde(input.as_bytes()),
                "{input}"
            );
        }
        assert!(fast * 10 > total, "too few plain inputs: {fast} of {total}");
        assert!(
            fast * 10 < total * 9,
            "too few awkward inputs: {fast} of {total}"
        );
    }

    #[test]
    fn plain_integers_read_a_word_at_a_time_as_digit_by_digit() {
        let numbers = (0..100_000_000i64).step_by(9_973);
        for n in numbers.chain([9, 99, 999_999, 9_999_999, 12_345_678, 123_456_789_012]) {
            for (sign, suffix) in [("", ",1"), ("-", "]"), ("", ""), ("-", " ,7")] {
                let text = format!("{sign}{n}{suffix}");
                let read = plain_integer(text.as_bytes());
                if n == 0 && sign == "-" {
                    assert_eq!(read, None, "{text}");
                    continue;
                }
                let value = if sign == "-" { -n } else { n };
                assert_eq!(read, Some((value, suffix.as_bytes())), "{text}");
            }
        }
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
