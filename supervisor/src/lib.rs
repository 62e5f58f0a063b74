//! corral, the supervisor: runs batches of CPU jobs on a pool of worker processes that it
//! starts, feeds, watches and replaces, writing exactly one result per job.
//!
//! The parts, from the core out:
//! - [`scheduler`]: the pure state machine that decides everything;
//! - [`pool`]: worker processes, their handshake, threads and deaths; [`keeper`] takes their
//!   process groups down even when corral is killed, and [`cgroup`] what left those groups;
//! - [`input`] and [`output`]: job lines in, result lines out ([`jobline`] scans each line);
//!   [`resume`] for `--resume`; [`shard`] for `--shard` and [`merge`] for `corral merge`;
//!   [`ring`] for the reused buffers
//!   that keep their memory fixed; [`ordered`] for the threads that parse input and format
//!   results on every core;
//! - [`engine`]: the loop that wires them together, fed by any number of sources, each with a
//!   sink of its own; [`run`] drives it for `corral run`;
//! - [`serve`]: the engine as a service on a Unix socket, one source per connection;
//!   [`client`] is `corral submit` and `corral status`, and [`wire`] what they say besides
//!   job and result lines; [`mux`] is the engine for one library client's many calls at once
//!   (Python's corral.Pool);
//! - [`cli`]: the command-line definitions, and [`manual`] the man pages and completions
//!   made from them.

pub mod cgroup;
pub mod cli;
pub mod client;
pub mod engine;
pub mod exit;
pub mod input;
pub use corral_protocol::jobline;
pub mod journal;
pub mod keeper;
pub mod manual;
pub mod merge;
pub mod mux;
pub mod ordered;
pub mod os;
pub mod output;
pub mod pool;
pub mod ports;
pub mod progress;
pub mod record;
pub mod resume;
pub mod ring;
pub mod run;
pub mod scheduler;
pub mod serve;
pub mod shard;
pub mod transport;
pub mod wire;
