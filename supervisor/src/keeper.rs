//! The keeper: a small process of corral's own that outlives corral by a moment, so that even a
//! SIGKILLed corral leaves nothing of its workers' process groups behind.
//!
//! `PR_SET_PDEATHSIG` reaches a worker when corral dies, but not the worker's own children: they
//! are reparented and would run on. So every run starts one keeper (`corral keeper`, the same
//! binary), in a process group of its own so that no terminal signal reaches it, reading its
//! standard input: corral writes `+PGID` when it starts a worker and `-PGID` once the worker is
//! reaped and its group killed. When that pipe closes, however corral ended, the keeper sends
//! SIGKILL to every group still listed and exits.
//!
//! What this does not reach: a descendant that left its worker's process group (`setsid`,
//! `setpgid`) is in no group corral knows. Only a cgroup holds those: where corral could make
//! one for the run ([`crate::cgroup`]), it tells the keeper (`=PATH`), which kills it too;
//! otherwise (and under systemd, `KillMode=control-group` does) they are the user's to manage.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

/// The hidden subcommand of `corral` that runs [`serve`].
pub const SUBCOMMAND: &str = "keeper";

/// corral's end of a running keeper. A keeper that dies while corral runs (killed by hand, by
/// the OOM killer) is noticed at once and replaced, and the new one is told every group still
/// listed, so a later SIGKILL of corral still takes the workers' children.
#[derive(Debug)]
pub struct Keeper {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    program: PathBuf,
    /// The running keeper's input; `None` once corral is done with it, or none could start.
    pipe: Option<io::PipeWriter>,
    /// The groups listed, to tell a replacement.
    groups: HashSet<u32>,
    /// The run's cgroup, killed at the end whatever is listed.
    cgroup: Option<PathBuf>,
    /// Set when corral closes the pipe itself: the keeper's exit is then expected.
    closing: bool,
    /// The thread waiting for the current keeper; joined at the end.
    watcher: Option<thread::JoinHandle<()>>,
}

impl Keeper {
    /// Starts `program keeper`; `program` is a corral binary.
    pub fn start(program: &Path) -> io::Result<Keeper> {
        let inner = Arc::new(Mutex::new(Inner {
            program: program.to_owned(),
            pipe: None,
            groups: HashSet::new(),
            cgroup: None,
            closing: false,
            watcher: None,
        }));
        let (child, pipe) = spawn(program, b"")?;
        let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
        adopt(&inner, &mut guard, child, pipe);
        drop(guard);
        Ok(Keeper { inner })
    }

    /// Lists a worker's process group: killed if corral dies before [`Keeper::forget`].
    pub fn watch(&self, pgid: u32) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.groups.insert(pgid);
        tell(&mut inner, b'+', pgid);
    }

    /// The run's cgroup (see [`crate::cgroup`]): killed and removed when corral dies.
    pub fn watch_cgroup(&self, dir: &Path) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.cgroup = Some(dir.to_owned());
        tell_cgroup(&mut inner);
    }

    /// Takes a reaped worker's group off the list.
    pub fn forget(&self, pgid: u32) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.groups.remove(&pgid);
        tell(&mut inner, b'-', pgid);
    }
}

/// What fits in a pipe's buffer with room to spare (Linux gives 64 KiB): a replacement's list
/// up to this size is in its pipe before it starts.
const PREFILL: usize = 16 * 1024;

/// Starts a keeper whose pipe already holds `told` (when it fits the pipe's buffer; else it is
/// written once the keeper reads), so that a corral killed the moment the keeper starts still
/// leaves it the whole list.
fn spawn(program: &Path, told: &[u8]) -> io::Result<(Child, io::PipeWriter)> {
    let (reader, mut writer) = io::pipe()?;
    let before = told.len() <= PREFILL;
    if before {
        writer.write_all(told)?;
    }
    let child = Command::new(program)
        .arg(SUBCOMMAND)
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C or a hangup of the terminal must not end it before corral.
        .process_group(0)
        .spawn()?;
    if !before {
        writer.write_all(told)?;
    }
    Ok((child, writer))
}

/// Makes `child` the keeper: its pipe is written to, and a thread waits for it, to replace
/// it should it die while corral still needs it.
fn adopt(shared: &Arc<Mutex<Inner>>, inner: &mut Inner, mut child: Child, pipe: io::PipeWriter) {
    inner.pipe = Some(pipe);
    let shared = shared.clone();
    let pid = child.id();
    let watcher = thread::Builder::new()
        .name("corral-keeper".into())
        .spawn(move || {
            let status = child.wait();
            let mut inner = shared.lock().unwrap_or_else(|e| e.into_inner());
            if inner.closing {
                return;
            }
            let how = match status {
                Ok(status) => match status.signal() {
                    Some(signal) => format!("was killed by signal {signal}"),
                    None => format!("exited with {status}"),
                },
                Err(err) => format!("could not be waited for ({err})"),
            };
            inner.pipe = None;
            let mut told = Vec::new();
            for &pgid in &inner.groups {
                told.extend_from_slice(&told_line(b'+', pgid));
            }
            if let Some(dir) = &inner.cgroup {
                told.extend_from_slice(&cgroup_line(dir));
            }
            match spawn(&inner.program, &told) {
                Ok((child, pipe)) => {
                    tracing::warn!(
                        "the keeper (pid {pid}) {how}: started another, and told it the {} worker groups listed",
                        inner.groups.len()
                    );
                    // This thread ends; the replacement has its own.
                    drop(inner.watcher.take());
                    adopt(&shared, &mut inner, child, pipe);
                }
                Err(err) => tracing::error!(
                    "the keeper (pid {pid}) {how}, and another cannot start ({err}): workers' children may outlive a killed corral"
                ),
            }
        })
        .expect("spawning a thread");
    inner.watcher = Some(watcher);
}

/// Tells the keeper the run's cgroup: `=PATH`.
/// The line that lists (`+`) or unlists (`-`) a group.
fn told_line(sign: u8, pgid: u32) -> Vec<u8> {
    let mut line = Vec::with_capacity(12);
    line.push(sign);
    line.extend_from_slice(itoa::Buffer::new().format(pgid).as_bytes());
    line.push(b'\n');
    line
}

/// The line that names the run's cgroup.
fn cgroup_line(dir: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut line = b"=".to_vec();
    line.extend_from_slice(dir.as_os_str().as_bytes());
    line.push(b'\n');
    line
}

fn tell_cgroup(inner: &mut Inner) {
    let (Some(dir), Some(stdin)) = (&inner.cgroup, inner.pipe.as_mut()) else {
        return;
    };
    if stdin.write_all(&cgroup_line(dir)).is_err() {
        inner.pipe = None;
    }
}

fn tell(inner: &mut Inner, sign: u8, pgid: u32) {
    let Some(stdin) = inner.pipe.as_mut() else {
        return;
    };
    if let Err(err) = stdin.write_all(&told_line(sign, pgid)) {
        // The keeper is gone: its watcher replaces it and lists every group again.
        tracing::debug!("cannot write to the keeper ({err})");
        inner.pipe = None;
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Closing the pipe tells the keeper to finish: it kills what is still listed and exits;
        // its watcher ends once it has.
        let watcher = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.closing = true;
            inner.pipe = None;
            inner.watcher.take()
        };
        if let Some(watcher) = watcher {
            let _ = watcher.join();
        }
    }
}

/// The keeper's side: reads `+PGID` / `-PGID` lines until end of input, then kills every group
/// still listed. Returns once done.
pub fn serve(input: impl BufRead) {
    // Stop signals are for corral; the keeper's life ends with corral's pipe.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: setting a signal to be ignored has no memory-safety preconditions.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let mut groups = HashSet::new();
    let mut cgroup = None;
    for line in input.split(b'\n') {
        let Ok(line) = line else { break };
        if let Some(path) = line.strip_prefix(b"=") {
            use std::os::unix::ffi::OsStrExt;
            cgroup = Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
            continue;
        }
        apply(&mut groups, &line);
    }
    for pgid in groups {
        crate::os::kill_group(pgid);
    }
    if let Some(dir) = cgroup {
        crate::cgroup::kill_and_remove(&dir);
    }
}

fn apply(groups: &mut HashSet<u32>, line: &[u8]) {
    let Some((&sign, digits)) = line.split_first() else {
        return;
    };
    let Some(pgid) = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|&p| p > 1)
    else {
        return;
    };
    match sign {
        b'+' => {
            groups.insert(pgid);
        }
        b'-' => {
            groups.remove(&pgid);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_groups_are_added_and_removed_and_junk_is_ignored() {
        let mut groups = HashSet::new();
        for line in [
            &b"+10"[..],
            b"+11",
            b"-10",
            b"+x",
            b"",
            b"+1",
            b"*12",
            b"+0",
        ] {
            apply(&mut groups, line);
        }
        assert_eq!(groups, HashSet::from([11]));
    }
}
