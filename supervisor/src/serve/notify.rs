//! The service manager's protocols, through the `sd-notify` crate: readiness and state
//! (`NOTIFY_SOCKET`), the watchdog (`WATCHDOG_USEC`), and sockets passed at activation
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`). Outside systemd each call does nothing.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

/// The name a socket unit gives the service's socket (`FileDescriptorName=`); sockets passed
/// under other names are not the service's and are left alone.
pub const SOCKET_NAME: &str = "corral";

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {err}");
    }
}

/// `READY=1`.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1`, with the time systemd asks for since version 253.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `STATUS=...`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period systemd asks for, if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|period| !period.is_zero())
}

/// The listening sockets systemd passed to this process: those named [`SOCKET_NAME`], or all
/// of them when none has a name (`systemd-socket-activate` without `--fdname`).
pub fn listen_fds() -> anyhow::Result<Vec<UnixListener>> {
    let passed: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
        .map_err(|err| anyhow::anyhow!("cannot read the sockets systemd passed: {err}"))?
        .collect();
    let named = passed.iter().any(|(_, name)| name == SOCKET_NAME);
    let mut listeners = Vec::new();
    for (fd, name) in passed {
        if named && name != SOCKET_NAME {
            continue;
        }
        listeners.push(listener_from_fd(fd));
    }
    Ok(listeners)
}

/// A listening socket from a file descriptor systemd passed.
fn listener_from_fd(fd: i32) -> UnixListener {
    // SAFETY: the fd was passed to this process by its service manager to own, and is used
    // nowhere else.
    UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) })
}
