//! corral, the supervisor: runs batches of CPU jobs on a pool of worker processes that it
//! starts, feeds, watches and replaces, writing exactly one result per job.
//!
//! The parts, from the core out:
//! - `scheduler`: the pure state machine that decides everything;
//! - `pool`: worker processes, their handshake, threads and deaths; `keeper` takes their
//!   process groups down even when corral is killed, and `cgroup` what left those groups;
//! - [`input`] and [`output`]: job lines in, result lines out ([`jobline`] scans each line);
//!   [`resume`] for `--resume`; `shard` for `--shard` and `merge` for `corral merge`;
//!   `ring` for the reused buffers
//!   that keep their memory fixed; `ordered` for the threads that parse input and format
//!   results on every core;
//! - `engine`: the loop that wires them together, fed by any number of sources, each with a
//!   sink of its own; `run` drives it for `corral run`;
//! - `serve`: the engine as a service on a Unix socket, one source per connection;
//!   `client` is `corral submit` and `corral status`, and `wire` what they say besides
//!   job and result lines; `mux` is the engine for one library client's many calls at once
//!   (Python's corral.Pool);
//! - `cli`: the command-line definitions, and `manual` the man pages and completions
//!   made from them; [`cmd`] runs them, one module per subcommand, and `exit` is the table
//!   of exit statuses they end with.
//!
//! # The Rust API
//!
//! What the crate root re-exports is the supported API: [`Service`] runs one pool of workers
//! for a Rust program, shared by any number of submissions of job lines, each answered with
//! exactly its own result lines ([`Results`]); [`EngineConfig`] (with [`SchedulerConfig`],
//! [`RestartPolicy`], [`HaltRule`], [`PoolConfig`] and [`Transport`]) and [`InputFormat`]
//! (with [`Shard`]) are its settings, and [`EngineReport`] what it did.
//! `supervisor/examples/service.rs` is a whole program.
//!
//! ```no_run
//! use corral::{EngineConfig, InputFormat, Service};
//!
//! let worker = std::path::PathBuf::from("target/release/corral-worker");
//! let mut service = Service::start(EngineConfig::native(worker, 2), InputFormat::json(2));
//! let results = service.submit(std::io::Cursor::new(b"{\"task\": \"echo\", \"input\": 1}\n".to_vec()));
//! for line in results {
//!     println!("{}", String::from_utf8_lossy(&line));
//! }
//! let report = service.shutdown();
//! ```
//!
//! Everything else is the implementation, private to the crate, but for [`cmd`] (the `corral`
//! binary's commands) and a few modules the benchmark tool and the fuzz targets reach into,
//! hidden from these docs; they change without notice.

pub use engine::{EngineConfig, EngineEnd, EngineReport};
pub use input::InputFormat;
pub use pool::PoolConfig;
pub use scheduler::{HaltRule, HaltThreshold, RestartPolicy, RunCounters, SchedulerConfig};
pub use service::{Results, Service};
pub use shard::{Shard, ShardBy};
pub use transport::Transport;

pub(crate) mod cgroup;
pub(crate) mod cli;
pub(crate) mod client;
pub mod cmd;
pub(crate) mod engine;
pub(crate) mod exit;
#[doc(hidden)]
pub mod input;
#[doc(hidden)]
pub use corral_protocol::jobline;
pub(crate) mod joblog;
pub(crate) mod journal;
pub(crate) mod keeper;
pub(crate) mod manual;
pub(crate) mod merge;
pub(crate) mod metrics;
pub(crate) mod mux;
pub(crate) mod notes;
pub(crate) mod ordered;
pub(crate) mod os;
#[doc(hidden)]
pub mod output;
pub(crate) mod pool;
pub(crate) mod ports;
pub(crate) mod progress;
#[doc(hidden)]
pub mod record;
pub(crate) mod report;
#[doc(hidden)]
pub mod resume;
pub(crate) mod ring;
pub(crate) mod run;
pub(crate) mod scheduler;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod shard;
pub(crate) mod transport;
pub(crate) mod wire;
