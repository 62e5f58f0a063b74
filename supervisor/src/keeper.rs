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
//! `setpgid`) is in no group corral knows. Only a cgroup holds those (under systemd,
//! `KillMode=control-group` does); without one they are the user's to manage.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// The hidden subcommand of `corral` that runs [`serve`].
pub const SUBCOMMAND: &str = "keeper";

/// corral's end of a running keeper.
#[derive(Debug)]
pub struct Keeper {
    pipe: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl Keeper {
    /// Starts `program keeper`; `program` is a corral binary.
    pub fn start(program: &Path) -> io::Result<Keeper> {
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group: a Ctrl-C or a hangup of the terminal must not end it before corral.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Keeper {
            pipe: Mutex::new(pipe),
            child: Mutex::new(child),
        })
    }

    /// Lists a worker's process group: killed if corral dies before [`Keeper::forget`].
    pub fn watch(&self, pgid: u32) {
        self.tell(b'+', pgid);
    }

    /// Takes a reaped worker's group off the list.
    pub fn forget(&self, pgid: u32) {
        self.tell(b'-', pgid);
    }

    fn tell(&self, sign: u8, pgid: u32) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stdin) = pipe.as_mut() else { return };
        let mut line = Vec::with_capacity(12);
        line.push(sign);
        line.extend_from_slice(itoa::Buffer::new().format(pgid).as_bytes());
        line.push(b'\n');
        if let Err(err) = stdin.write_all(&line) {
            tracing::warn!(
                "the keeper is gone ({err}): workers' children may outlive a killed corral"
            );
            pipe.take();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Closing the pipe tells the keeper to finish: it kills what is still listed and exits.
        self.pipe
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let _ = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .wait();
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
    for line in input.split(b'\n') {
        let Ok(line) = line else { break };
        apply(&mut groups, &line);
    }
    for pgid in groups {
        crate::pool::kill_group(pgid);
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
