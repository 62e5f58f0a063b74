//! Runs jobs from Rust code on one pool of corral workers: two submissions share the pool, and
//! each gets back exactly its own results.
//!
//! Run it from the workspace: `cargo build --bins && cargo run -p corral-supervisor --example service`
//! (it starts the `corral-worker` built beside it; give another worker's path as its argument).

use std::io::Cursor;
use std::path::PathBuf;

use corral::{EngineConfig, InputFormat, Service};

fn main() {
    let worker = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(worker_beside_this_example);
    let workers = 2;
    let mut service = Service::start(
        EngineConfig::native(worker, workers),
        InputFormat::json(workers),
    );

    let squares: String = (1..=5)
        .map(|n| {
            format!("{{\"id\": \"square-{n}\", \"task\": \"sum_squares\", \"input\": [{n}]}}\n")
        })
        .collect();
    let primes: String = [10, 100, 1000]
        .iter()
        .map(|n| format!("{{\"id\": \"below-{n}\", \"task\": \"primes\", \"input\": {n}}}\n"))
        .collect();
    // Both run at once on the same two workers; each iterator yields its own results only.
    let first = service.submit(Cursor::new(squares.into_bytes()));
    let second = service.submit(Cursor::new(primes.into_bytes()));
    let counted = std::thread::spawn(move || second.collect::<Vec<_>>());
    for line in first {
        print!("squares: {}", String::from_utf8_lossy(&line));
    }
    for line in counted.join().expect("the reading thread does not panic") {
        print!("primes:  {}", String::from_utf8_lossy(&line));
    }
    let report = service.shutdown();
    eprintln!("{:?}, {} restarts", report.end, report.counters.restarts);
}

/// `target/<profile>/corral-worker`, for this example at `target/<profile>/examples/service`.
fn worker_beside_this_example() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this example");
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("examples live in target/<profile>/examples");
    profile_dir.join("corral-worker")
}
