//! Small helpers over the operating system that every layer may use: signalling a worker's
//! process group, reading a process's memory, and waiting on file descriptors.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A signal, by number; shown by its name (`SIGSEGV`), or as `signal N` when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub i32);

impl Signal {
    /// What `kill -9`, the OOM killer and corral's own kills send.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// A segmentation fault.
    pub const SEGV: Signal = Signal(libc::SIGSEGV);
    /// An abort (a failed allocation in Rust, `abort()` in C).
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// A bus error.
    pub const BUS: Signal = Signal(libc::SIGBUS);

    /// Its name, as result lines and logs show it.
    pub fn name(self) -> String {
        nix::sys::signal::Signal::try_from(self.0)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {}", self.0))
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// SIGKILL to a whole process group, and to the worker's cgroup when it has one (what left
/// the group). A group that is already gone is not an error.
pub fn kill_group(pgid: u32) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
    crate::cgroup::kill_worker(pgid);
}

/// Resident memory of a process in bytes, from `/proc/PID/statm`; `None` if it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Waits until any of `fds` is readable (or closed); says which.
pub fn poll_readable(fds: &[BorrowedFd<'_>]) -> Vec<bool> {
    poll_readable_within(fds, None)
}

/// Waits until any of `fds` is readable (or closed), or `timeout` has passed; says which.
pub fn poll_readable_within(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<bool> {
    // To the microsecond (ppoll): a stdio worker's answers gather for well under a millisecond.
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos().into(),
    });
    let timeout_ptr = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs, and every fd in it
        // is borrowed for the duration of the call; the timeout is null or a valid timespec,
        // and no signal mask is given.
        let n = unsafe {
            libc::ppoll(
                polls.as_mut_ptr(),
                polls.len() as libc::nfds_t,
                timeout_ptr,
                std::ptr::null(),
            )
        };
        if n >= 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    polls.iter().map(|p| p.revents != 0).collect()
}

/// Waits until `fd` has room to write (or is closed).
pub fn poll_writable(fd: BorrowedFd<'_>) {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd struct, and its fd is borrowed for the call. An
    // interrupted wait returns early: the caller writes again and, if need be, waits again.
    unsafe { libc::poll(&mut poll, 1, -1) };
}

/// Makes reads and writes of `fd` return at once instead of waiting.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a file descriptor borrowed for the call; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd of the child `pid`: readable once it has exited (Linux 5.3 and later).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory involved.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Forwards SIGINT, SIGTERM and SIGHUP, as `wrap` makes them, to `tx` from a thread of their
/// own, until `tx` is closed; the handle stops the forwarding. `None` (with a warning) if they
/// cannot be caught.
pub fn forward_stop_signals<T: Send + 'static>(
    tx: crossbeam_channel::Sender<T>,
    wrap: fn(i32) -> T,
) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(err) => {
            tracing::warn!("cannot handle stop signals: {err}");
            return None;
        }
    };
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("corral-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(wrap(signal)).is_err() {
                    return;
                }
            }
        })
        .expect("spawning a thread");
    Some(handle)
}
