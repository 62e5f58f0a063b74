//! What `corral serve` and its clients say on the socket besides job and result lines.
//!
//! A connection carries the JSON lines of `corral run`: jobs from the client, one result line
//! per job back, as they complete. A client may open with a hello line, and the service may
//! say something of its own; either is one JSON object whose first key is `"corral"`, which no
//! result line has (a result opens with `"id"` or `"line"`), so a line is told apart by its
//! first bytes:
//!
//! - client hello `{"corral":"submit"}`: jobs follow, and the service ends its answer with
//!   [`Said::End`] or [`Said::Stopped`]; without a hello it sends only result lines (and
//!   [`Said::Error`] if it refuses the connection), so `socat` or `nc -U` work too;
//! - client hello `{"corral":"status"}`: the service answers one [`Said::Status`] line and
//!   closes.

use serde::{Deserialize, Serialize};

use crate::engine::EngineStatus;

/// What opens every line the service or a client says of its own.
pub const PREFIX: &[u8] = b"{\"corral\":";

/// A client's first line, when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "corral", rename_all = "snake_case")]
pub enum Hello {
    /// Jobs follow; end the answer with a summary line.
    Submit,
    /// Answer with the service's state, then close.
    Status,
}

/// What the service says of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "corral", rename_all = "snake_case")]
pub enum Said {
    /// The connection is refused; nothing of it runs.
    Error {
        /// Why.
        message: String,
    },
    /// Every job line sent has its result, above.
    End {
        /// Result lines sent.
        results: u64,
        /// Of them, jobs that succeeded.
        ok: u64,
        /// Of them, failures (any error kind).
        failed: u64,
    },
    /// The service is stopping: the jobs whose result is not above did not run (or could not
    /// be read: `results` of `read` were answered).
    Stopped {
        /// Result lines sent.
        results: u64,
        /// Job lines read from the client.
        read: u64,
        /// Why it stopped.
        reason: String,
    },
    /// The answer to [`Hello::Status`].
    Status(Box<ServiceStatus>),
}

/// The service's state, as `corral status` shows it: the engine's, and each client's. A field
/// a service does not send (an older one) reads as its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceStatus {
    /// Workers, queue and counters.
    #[serde(flatten)]
    pub engine: EngineStatus,
    /// The service's pid.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// Connections open, clients or not.
    pub connections: usize,
    /// Each connected client, by number.
    pub clients: Vec<ClientStatus>,
}

/// One client of the service, as [`ServiceStatus`] shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientStatus {
    /// Its number in the service.
    pub client: u32,
    /// Its user.
    pub uid: u32,
    /// Its process.
    pub pid: i32,
    /// Seconds since it connected.
    pub connected_secs: f64,
    /// Job lines read from it.
    pub jobs_read: u64,
    /// Result lines written to it.
    pub results_written: u64,
    /// Jobs read and not answered yet.
    pub in_service: u64,
    /// Results waiting for it to read them.
    pub results_waiting: usize,
    /// Of its results, successes.
    pub ok: u64,
    /// Of its results, failures.
    pub failed: u64,
}

impl Said {
    /// The line, with its newline.
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("messages serialize");
        line.push(b'\n');
        line
    }

    /// Reads a line that opens with [`PREFIX`]; `None` if it is not a message.
    pub fn parse(line: &[u8]) -> Option<Said> {
        if !line.starts_with(PREFIX) {
            return None;
        }
        serde_json::from_slice(line).ok()
    }
}

impl Hello {
    /// The line, with its newline.
    pub fn line(self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&self).expect("messages serialize");
        line.push(b'\n');
        line
    }

    /// Reads a client's first line: `None` if it is a job line, an error if it opens like a
    /// hello but is not one.
    pub fn parse(line: &[u8]) -> Result<Option<Hello>, String> {
        if !line.starts_with(PREFIX) {
            return Ok(None);
        }
        serde_json::from_slice(line)
            .map(Some)
            .map_err(|err| format!("not a hello corral understands: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_open_with_the_prefix() {
        for said in [
            Said::Error {
                message: "no".into(),
            },
            Said::End {
                results: 3,
                ok: 2,
                failed: 1,
            },
            Said::Stopped {
                results: 1,
                read: 5,
                reason: "SIGTERM".into(),
            },
            Said::Status(Box::new(ServiceStatus {
                pid: 7,
                clients: vec![ClientStatus {
                    client: 1,
                    ok: 2,
                    ..ClientStatus::default()
                }],
                ..ServiceStatus::default()
            })),
        ] {
            let line = said.line();
            assert!(
                line.starts_with(PREFIX),
                "{}",
                String::from_utf8_lossy(&line)
            );
            assert_eq!(Said::parse(line.trim_ascii_end()), Some(said));
        }
        for hello in [Hello::Submit, Hello::Status] {
            assert_eq!(Hello::parse(hello.line().trim_ascii_end()), Ok(Some(hello)));
        }
        assert_eq!(Hello::parse(br#"{"id":1,"task":"t"}"#), Ok(None));
        assert!(Hello::parse(br#"{"corral":"launch"}"#).is_err());
        assert_eq!(Said::parse(br#"{"id":1,"ok":true}"#), None);
    }
}
