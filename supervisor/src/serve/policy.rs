//! Who may connect to `corral serve`, what their jobs may run, and the limits on each
//! connection: from the command line and the `--config` file, which SIGHUP reads again.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// Jobs a client may have in the service at once (queued or running), unless set.
pub const DEFAULT_CLIENT_JOBS: u64 = 4096;
/// Connections at once, unless set.
pub const DEFAULT_CONNECTIONS: usize = 256;
/// The share of the connections one user may hold at once, unless set: a quarter.
pub const USER_SHARE: usize = 4;
/// How long a connection may take to send its first line, unless set.
pub const DEFAULT_FIRST_LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest job line, unless set: smaller than `corral run`'s, as many clients share memory.
pub const DEFAULT_MAX_JOB_BYTES: u64 = 1 << 20;

/// The `--config` file (TOML). Every key is optional; a key the command line also gives adds
/// to it (the allowed lists) or is overridden by it (the numbers).
///
/// ```toml
/// workers = 4
/// allow_uid = [1000, 1001]
/// allow_gid = [100]
/// allow_task = ["sum_squares", "sha256"]
/// max_job_bytes = "1MiB"
/// max_client_jobs = 4096
/// max_connections = 256
/// max_user_connections = 64
/// first_line_timeout = "10s"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Worker processes.
    pub workers: Option<u32>,
    /// Users that may connect, besides the service's own user and root.
    #[serde(default)]
    pub allow_uid: Vec<u32>,
    /// Groups whose members may connect (primary or supplementary).
    #[serde(default)]
    pub allow_gid: Vec<u32>,
    /// Tasks jobs may name; none given means every task the workers serve.
    #[serde(default)]
    pub allow_task: Vec<String>,
    /// Longest job line accepted.
    pub max_job_bytes: Option<bytesize::ByteSize>,
    /// Jobs one client may have in the service at once.
    pub max_client_jobs: Option<u64>,
    /// Connections at once.
    pub max_connections: Option<usize>,
    /// Connections one user may hold at once.
    pub max_user_connections: Option<usize>,
    /// How long a connection may take to send its first line.
    #[serde(default, deserialize_with = "duration_text")]
    pub first_line_timeout: Option<std::time::Duration>,
}

/// A duration written as text ("10s", "500ms").
fn duration_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl ConfigFile {
    /// Reads and checks the file.
    pub fn read(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
        // As -j 0 is refused: a service with no worker would run nothing.
        if file.workers == Some(0) {
            return Err(format!(
                "{}: workers = 0; a service needs at least one worker",
                path.display()
            ));
        }
        Ok(file)
    }
}

/// What the command line says, before the file is merged in.
#[derive(Debug, Clone, Default)]
pub struct PolicyArgs {
    /// `--allow-uid`.
    pub allow_uid: Vec<u32>,
    /// `--allow-gid`.
    pub allow_gid: Vec<u32>,
    /// `--allow-task`.
    pub allow_task: Vec<String>,
    /// `--max-job-bytes`.
    pub max_job_bytes: Option<u64>,
    /// `--max-client-jobs`.
    pub max_client_jobs: Option<u64>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-user-connections`.
    pub max_user_connections: Option<usize>,
    /// `--first-line-timeout`.
    pub first_line_timeout: Option<std::time::Duration>,
}

/// Who may connect and what they may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Users that may connect.
    pub uids: HashSet<u32>,
    /// Groups whose members may connect.
    pub gids: HashSet<u32>,
    /// Tasks jobs may name; `None`: any the workers serve.
    pub tasks: Option<HashSet<String>>,
    /// Longest job line accepted, in bytes.
    pub max_line_bytes: usize,
    /// Jobs one client may have in the service at once.
    pub max_client_jobs: u64,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections one user may hold at once (of any kind, before their first line too), so
    /// that no user can fill the service's connections and lock the others out.
    pub max_user_connections: usize,
    /// How long a connection may take to send its first line before it is closed.
    pub first_line_timeout: std::time::Duration,
}

impl Policy {
    /// The command line merged with the file; the service's own user and root may always
    /// connect.
    pub fn new(args: &PolicyArgs, file: &ConfigFile) -> Policy {
        // SAFETY: getuid has no preconditions.
        let own = unsafe { libc::getuid() };
        let uids = [own, 0]
            .into_iter()
            .chain(args.allow_uid.iter().copied())
            .chain(file.allow_uid.iter().copied())
            .collect();
        let gids = args
            .allow_gid
            .iter()
            .chain(&file.allow_gid)
            .copied()
            .collect();
        let tasks: HashSet<String> = args
            .allow_task
            .iter()
            .chain(&file.allow_task)
            .cloned()
            .collect();
        let max_job_bytes = args
            .max_job_bytes
            .or(file.max_job_bytes.map(|b| b.as_u64()))
            .unwrap_or(DEFAULT_MAX_JOB_BYTES);
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_CONNECTIONS)
            .max(1);
        Policy {
            uids,
            gids,
            tasks: (!tasks.is_empty()).then_some(tasks),
            max_line_bytes: usize::try_from(max_job_bytes).unwrap_or(usize::MAX),
            max_client_jobs: args
                .max_client_jobs
                .or(file.max_client_jobs)
                .unwrap_or(DEFAULT_CLIENT_JOBS)
                .max(1),
            max_connections,
            max_user_connections: args
                .max_user_connections
                .or(file.max_user_connections)
                .unwrap_or(max_connections.div_ceil(USER_SHARE))
                .max(1),
            first_line_timeout: args
                .first_line_timeout
                .or(file.first_line_timeout)
                .unwrap_or(DEFAULT_FIRST_LINE_TIMEOUT),
        }
    }

    /// Whether a peer may connect; `Err` is what the peer is told: who it is and how it may
    /// be let in, never who else may connect.
    pub fn admits(&self, peer: &Peer) -> Result<(), String> {
        if self.uids.contains(&peer.uid) || peer.groups.iter().any(|g| self.gids.contains(g)) {
            return Ok(());
        }
        Err(format!(
            "uid {} may not use this corral service (its administrator can allow it: --allow-uid, --allow-gid, or the config file)",
            peer.uid
        ))
    }

    /// Who may connect, for the service's own log.
    pub fn allowed(&self) -> String {
        format!("uids {}; gids {}", list(&self.uids), list(&self.gids))
    }

    /// Whether jobs may name `task`.
    pub fn allows_task(&self, task: &str) -> bool {
        self.tasks.as_ref().is_none_or(|tasks| tasks.contains(task))
    }
}

fn list(ids: &HashSet<u32>) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    let mut ids: Vec<u32> = ids.iter().copied().collect();
    ids.sort_unstable();
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The process at the other end of a connection, as the kernel says (`SO_PEERCRED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its process id.
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its primary group, then its supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The peer of a connected Unix socket.
    pub fn of(stream: &std::os::unix::net::UnixStream) -> std::io::Result<Peer> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let creds = getsockopt(stream, PeerCredentials)?;
        let mut groups = vec![creds.gid()];
        groups.extend(peer_groups(stream)?);
        Ok(Peer {
            pid: creds.pid(),
            uid: creds.uid(),
            groups,
        })
    }
}

/// The peer's supplementary groups, as the kernel recorded them when it connected
/// (`SO_PEERGROUPS`): no `/proc` needed, which a hardened service may not see.
fn peer_groups(stream: &std::os::unix::net::UnixStream) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of gid_t, and the fd is a socket this stream owns.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // Too small: `len` says how much is needed.
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_adds_to_the_lists_and_the_command_line_wins_on_numbers() {
        let file: ConfigFile = toml::from_str(
            "workers = 3\nallow_uid = [1000]\nallow_gid = [50]\nallow_task = [\"t\"]\nmax_client_jobs = 10\nmax_job_bytes = \"2KiB\"\nfirst_line_timeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(file.workers, Some(3));
        let args = PolicyArgs {
            allow_uid: vec![1001],
            max_client_jobs: Some(20),
            ..PolicyArgs::default()
        };
        let policy = Policy::new(&args, &file);
        assert!(policy.uids.contains(&0) && policy.uids.contains(&1000));
        assert!(policy.uids.contains(&1001));
        assert_eq!(policy.max_client_jobs, 20);
        assert_eq!(policy.max_line_bytes, 2048);
        assert_eq!(policy.max_connections, DEFAULT_CONNECTIONS);
        assert!(policy.allows_task("t") && !policy.allows_task("u"));
        let peer = |uid, groups: &[u32]| Peer {
            pid: 7,
            uid,
            groups: groups.to_vec(),
        };
        assert!(policy.admits(&peer(1000, &[1000])).is_ok());
        assert!(policy.admits(&peer(2000, &[2000, 50])).is_ok(), "by group");
        let refused = policy.admits(&peer(2000, &[2000])).unwrap_err();
        assert!(refused.contains("uid 2000"), "{refused}");
        assert!(
            !refused.contains("1000"),
            "the allow list is not told: {refused}"
        );
        assert_eq!(
            policy.max_user_connections,
            DEFAULT_CONNECTIONS / USER_SHARE
        );
        assert_eq!(policy.first_line_timeout, std::time::Duration::from_secs(3));
    }

    #[test]
    fn a_file_with_an_unknown_key_is_refused_with_its_name() {
        let err = toml::from_str::<ConfigFile>("wrokers = 3\n").unwrap_err();
        assert!(err.to_string().contains("wrokers"), "{err}");
        let all = Policy::new(&PolicyArgs::default(), &ConfigFile::default());
        assert!(all.allows_task("anything"));
    }
}
