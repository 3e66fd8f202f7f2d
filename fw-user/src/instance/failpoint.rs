//! Failpoints for the crash tests: with `FW_FAILPOINT=N` in its environment,
//! the process kills itself with SIGKILL at the N-th step of a transaction
//! (a map write or delete, an activation, a record written to disk), with no
//! destructor run, exactly as a `kill -9` or a power cut at that point would.
//! `FW_FAILPOINT=list` prints each step to stderr instead, so a test can
//! count the steps of a command and then try every one (or a sample).
//!
//! Unset (production), a step costs one relaxed atomic increment.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    OnceLock,
};

/// The environment variable read once per process.
pub const ENV: &str = "FW_FAILPOINT";

enum Mode {
    Off,
    List,
    KillAt(u64),
}

static MODE: OnceLock<Mode> = OnceLock::new();
static STEPS: AtomicU64 = AtomicU64::new(0);

fn mode() -> &'static Mode {
    MODE.get_or_init(|| match std::env::var(ENV).as_deref() {
        Ok("list") => Mode::List,
        Ok(n) => n.parse().map(Mode::KillAt).unwrap_or(Mode::Off),
        Err(_) => Mode::Off,
    })
}

/// One step of a transaction, named for the listing.
pub fn step(what: &str) {
    let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
    match mode() {
        Mode::Off => {}
        Mode::List => eprintln!("fw: failpoint {n}: {what}"),
        Mode::KillAt(at) if *at == n => {
            eprintln!("fw: failpoint {n}: {what}: killing this process");
            // SAFETY: raising a signal at ourselves; SIGKILL cannot be caught.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        Mode::KillAt(_) => {}
    }
}
