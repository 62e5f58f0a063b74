//! `corral-worker`: the default worker, with the built-in tasks `sum_squares`, `primes`,
//! `sha256` and `spin`.

use std::process::ExitCode;

use corral_worker::{Worker, builtin};

fn main() -> ExitCode {
    builtin::register(Worker::new()).run()
}
