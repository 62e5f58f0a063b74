//! A cgroup for the run's workers, where corral may make one: each worker goes in a cgroup of
//! its own under the run's, so that `cgroup.kill` reaches what a process group cannot, a
//! descendant that left its worker's group (`setsid`). A worker's cgroup is killed whenever its
//! process group is (a timeout, a kill, its reaping), and the run's at the end, by the keeper
//! too if corral dies first.
//!
//! The run's cgroup is made beside none other: under this process's own cgroup of the cgroup2
//! hierarchy (`/proc/self/cgroup`, the mount from `/proc/self/mountinfo`), named
//! `corral-PID`. That needs write access there (root; a delegated subtree under systemd; a
//! `systemd-run --scope`); without it, or without `cgroup.kill` (Linux before 5.14), corral
//! does without, as before, and says so in its debug log.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cgroups of the live workers, by pid (which is also their process group).
static WORKERS: Mutex<Option<HashMap<u32, PathBuf>>> = Mutex::new(None);

/// How long a killed cgroup's processes may take to be gone before its directory is left.
const EMPTY_WAIT: Duration = Duration::from_secs(1);

/// The run's cgroup.
#[derive(Debug)]
pub struct RunCgroup {
    dir: PathBuf,
}

impl RunCgroup {
    /// Makes `corral-PID` under this process's cgroup, if it can.
    pub fn create() -> Option<RunCgroup> {
        match Self::try_create() {
            Ok(run) => Some(run),
            Err(err) => {
                tracing::debug!("no cgroup for the workers ({err}): process groups only");
                None
            }
        }
    }

    fn try_create() -> io::Result<RunCgroup> {
        let mount = cgroup2_mount()?;
        let own = own_cgroup()?;
        let parent = mount.join(own.trim_start_matches('/'));
        let dir = parent.join(format!("corral-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        if !dir.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&dir);
            return Err(io::Error::other(
                "cgroup.kill is missing (Linux before 5.14)",
            ));
        }
        Ok(RunCgroup { dir })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Puts worker `pid` in a cgroup of its own under the run's.
    pub fn enter(&self, pid: u32) {
        let dir = self.dir.join(format!("worker-{pid}"));
        let entered = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
        match entered {
            Ok(()) => {
                WORKERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(HashMap::new)
                    .insert(pid, dir);
            }
            Err(err) => {
                tracing::debug!(pid, "cannot put the worker in a cgroup: {err}");
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        kill_and_remove(&self.dir);
    }
}

/// Kills everything in worker `pid`'s cgroup, if it has one.
pub fn kill_worker(pid: u32) {
    let dir = WORKERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|workers| workers.get(&pid).cloned());
    if let Some(dir) = dir {
        kill(&dir);
    }
}

/// Worker `pid` is reaped: what is left in its cgroup is killed, and the cgroup removed.
pub fn forget_worker(pid: u32) {
    let dir = WORKERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|workers| workers.remove(&pid));
    if let Some(dir) = dir {
        kill_and_remove(&dir);
    }
}

/// `cgroup.kill`: SIGKILL to every process in `dir` and below.
pub fn kill(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
}

/// Kills `dir`'s processes and removes it (and the cgroups below it) once they are gone.
pub fn kill_and_remove(dir: &Path) {
    kill(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_and_remove(&entry.path());
            }
        }
    }
    let until = Instant::now() + EMPTY_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => {
                tracing::warn!("cannot remove the cgroup {}: {err}", dir.display());
                return;
            }
        }
    }
}

/// Where the cgroup2 hierarchy is mounted.
fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            // Fields: ID PARENT MAJ:MIN ROOT MOUNT OPTIONS [OPTIONAL...] - TYPE SOURCE ...
            let (before, after) = line.split_once(" - ")?;
            (after.split(' ').next() == Some("cgroup2"))
                .then(|| before.split(' ').nth(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or_else(|| io::Error::other("no cgroup2 hierarchy is mounted"))
}

/// This process's cgroup in the cgroup2 hierarchy (`0::PATH`).
fn own_cgroup() -> io::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        .ok_or_else(|| io::Error::other("no cgroup2 entry in /proc/self/cgroup"))
}
