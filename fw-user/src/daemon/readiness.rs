//! Readiness for systemd (`Type=notify`): `READY=1` goes out once, when the
//! instance first enforces (after `fw run` started or adopted it and found
//! the enforcer attached to its interface), never before; `STATUS=` lines
//! say what it enforces, or that the interface is missing. Without
//! `$NOTIFY_SOCKET` (not under systemd) these do nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

static READY_SENT: AtomicBool = AtomicBool::new(false);

/// The instance enforces, as `status` says: READY=1 the first time.
pub fn enforcing(status: &str) {
    if READY_SENT.swap(true, Ordering::SeqCst) {
        send(&[NotifyState::Status(status)]);
    } else {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// A status line for `systemctl status`, readiness unchanged.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    // A manager that cannot be told is no reason to stop enforcing; say it.
    if let Err(e) = sd_notify::notify(states) {
        say_err!("fw: telling systemd ({}): {e}", std::env::var("NOTIFY_SOCKET").unwrap_or_default());
    }
}
