//! `corral-bench`: helpers for `scripts/bench/run`.
//!
//! - `corral-bench gen tiny N`: N `sum_squares` jobs of 8 integers, deterministic, on stdout.
//! - `corral-bench gen primes N LIMIT`: N `primes` jobs counting primes below about LIMIT.
//! - `corral-bench gen spin N MS`: N `spin` jobs of MS milliseconds each.
//! - `corral-bench floor`: the single-process baseline: reads job lines on stdin and writes the
//!   same result lines corral would, with corral's own parser, tasks and formatter, in one
//!   process with no IPC.
//! - `corral-bench serde-loop`: the plainest single-process program a Rust user would write for
//!   the tiny jobs: a `read_line` loop, serde_json into a derived struct, the sum, serde_json
//!   out. It checks less than corral does (no line numbers, no line length cap).
//! - `corral-bench parse`: the input stage alone: reads and parses job lines on stdin as corral
//!   does and prints how many jobs it read and how long it took, to profile the serial stage.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use corral::input::{InputFormat, JobParser, ring_blocks};
use corral::output::format_result;
use corral::record::{Completed, ErrorKind, InputItem, JobError, TaskId, TaskNames};
use corral_worker::{TaskFailure, Worker, builtin};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["gen", "tiny", n] => generate(n.parse().expect("N"), |rng, i, out| {
            write!(out, "{{\"id\":{i},\"task\":\"sum_squares\",\"input\":[")?;
            for k in 0..8 {
                let v = (rng.next() % 2001) as i64 - 1000;
                write!(out, "{}{v}", if k == 0 { "" } else { "," })?;
            }
            writeln!(out, "]}}")
        }),
        ["gen", "primes", n, limit] => {
            let limit: u64 = limit.parse().expect("LIMIT");
            generate(n.parse().expect("N"), move |_, i, out| {
                writeln!(
                    out,
                    "{{\"id\":{i},\"task\":\"primes\",\"input\":{}}}",
                    limit + i % 7
                )
            })
        }
        ["gen", "spin", n, ms] => {
            let ms: u64 = ms.parse().expect("MS");
            generate(n.parse().expect("N"), move |_, i, out| {
                writeln!(out, "{{\"id\":{i},\"task\":\"spin\",\"input\":{ms}}}")
            })
        }
        ["floor"] => floor(),
        ["serde-loop"] => serde_loop(),
        ["parse"] => parse_only(),
        _ => {
            eprintln!(
                "usage: corral-bench gen tiny N | gen primes N LIMIT | gen spin N MS | floor | serde-loop | parse"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("corral-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A 64-bit linear congruential generator: the same jobs on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn generate(
    n: u64,
    mut line: impl FnMut(&mut Lcg, u64, &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut rng = Lcg(42);
    for i in 1..=n {
        line(&mut rng, i, &mut out)?;
    }
    out.flush()
}

fn floor() -> io::Result<()> {
    let worker = builtin::register(Worker::new());
    let pid = std::process::id();
    let format = InputFormat {
        plain_lines: false,
        exec: false,
        default_task: None,
        max_line_bytes: 16 << 20,
        max_blocks: ring_blocks(1),
        shard: None,
    };
    let names = TaskNames::default();
    let mut parser = JobParser::new(format, names.clone());
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 17, stdout.lock());
    let mut line = Vec::with_capacity(256);
    let mut task_cache: Option<(TaskId, Option<usize>)> = None;
    let mut error = None;
    parser.read_all(io::stdin().lock(), |item, _| {
        let result = match item {
            InputItem::Rejected(result) => *result,
            InputItem::Job(job) => {
                let one = job.as_one().expect("read_all reads each job line");
                let index = match task_cache {
                    Some((task, index)) if task == one.task => index,
                    _ => {
                        let index = worker.task_index(&names.name(one.task));
                        task_cache = Some((one.task, index));
                        index
                    }
                };
                let started = Instant::now();
                let mut output = Vec::new();
                let outcome = match index {
                    None => Err(JobError::new(
                        ErrorKind::UnknownTask,
                        format!("unknown task {:?}", &*names.name(one.task)),
                    )),
                    Some(index) => {
                        match worker.run_task(index, one.input.as_bytes(), &mut output) {
                            Ok(()) => Ok(Completed {
                                output: output.into(),
                                nanos: started.elapsed().as_nanos() as u64,
                            }),
                            Err(TaskFailure::BadInput(m)) => {
                                Err(JobError::new(ErrorKind::BadInput, m))
                            }
                            Err(TaskFailure::Panic(m)) => Err(JobError::new(ErrorKind::Panic, m)),
                            Err(other) => {
                                Err(JobError::new(ErrorKind::TaskError, other.to_string()))
                            }
                        }
                    }
                };
                job.into_result(1, Some(pid), outcome)
            }
        };
        line.clear();
        format_result(&result, corral::output::Echo::Meta, &mut line);
        if let Err(err) = out.write_all(&line) {
            error = Some(err);
            return false;
        }
        true
    })?;
    if let Some(err) = error {
        return Err(err);
    }
    out.flush()
}

/// A `sum_squares` job line, as a plain program reads it.
#[derive(serde::Deserialize)]
struct PlainJob {
    id: serde_json::Value,
    task: String,
    input: Vec<i64>,
}

/// A result line, as a plain program writes it.
#[derive(serde::Serialize)]
struct PlainResult<'a> {
    id: &'a serde_json::Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn serde_loop() -> io::Result<()> {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut line = String::new();
    loop {
        line.clear();
        if io::BufRead::read_line(&mut input, &mut line)? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (id, outcome) = match serde_json::from_str::<PlainJob>(&line) {
            Ok(job) if job.task == "sum_squares" => (job.id, builtin::sum_squares(job.input)),
            Ok(job) => (job.id, Err(format!("unknown task {:?}", job.task))),
            Err(err) => (serde_json::Value::Null, Err(err.to_string())),
        };
        let result = PlainResult {
            id: &id,
            ok: outcome.is_ok(),
            output: outcome.as_ref().ok().copied(),
            error: outcome.err(),
        };
        serde_json::to_writer(&mut out, &result)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads and parses job lines on stdin, doing nothing with the jobs, and reports the time.
fn parse_only() -> io::Result<()> {
    let format = InputFormat {
        plain_lines: false,
        exec: false,
        default_task: None,
        max_line_bytes: 16 << 20,
        max_blocks: ring_blocks(1),
        shard: None,
    };
    let mut parser = JobParser::new(format, TaskNames::default());
    let (mut jobs, mut rejected) = (0u64, 0u64);
    let started = Instant::now();
    parser.read_all(io::stdin().lock(), |item, _| {
        match item {
            InputItem::Job(_) => jobs += 1,
            InputItem::Rejected(_) => rejected += 1,
        }
        true
    })?;
    eprintln!(
        "parsed {jobs} jobs and rejected {rejected} lines in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
