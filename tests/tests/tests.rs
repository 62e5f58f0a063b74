//! The integration tests of corral: one test binary that runs the real `corral`,
//! `corral-worker` and `corral-fault-worker` binaries.

mod util;

mod bad_input;
mod batch;
mod engine;
mod exec;
mod hardening;
mod mux;
mod observe;
mod operate;
mod report;
mod serve;
mod shard;
mod startup;
mod stdio;
mod supervision;
