//! `fw` userspace. The folders are the architecture:
//!
//! * [`policy`]: the pure core. YAML in, compiled tables out: the language
//!   (raw -> lower -> IR), the compiler, the reference evaluator (kept
//!   apart from the compiler), explain, export, lint and report. No kernel,
//!   no async, no libc (`tests/architecture.rs` checks).
//! * [`source`]: where a policy comes from (files read safely, the shipped
//!   policies, env files) -> a compiled phase.
//! * [`kernel`]: the eBPF object, its maps, pins and links.
//! * [`instance`]: the lifecycle of one enforcer (start, adopt, switch,
//!   confirm, rollback, stop) as transactions any interruption leaves whole,
//!   and what it keeps on disk.
//! * [`daemon`]: what `fw run` does while it runs: control socket, drop
//!   events, metrics, interface watch, policy-file watch, readiness,
//!   rollback timer.
//! * [`cli`]: argument parsing and printing, one module per verb.

/// `println!` that never panics. `fw run` is a daemon whose stdout may be
/// a pipe whose reader went away (a journal stream closed, `fw run | head`,
/// a supervisor that stopped reading): SIGPIPE is ignored there, so the
/// write fails with EPIPE, which `println!` turns into a panic that would
/// end the process serving DNS and timing rollbacks. A lost log line is
/// not worth that.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see `say!`).
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Writes each warning to stderr as a `fw: ` line, all in one write:
/// stderr is unbuffered, and a merged 100,000-rule allowlist can have tens
/// of thousands (one write each took a second at that scale). Like
/// [`say_err!`], a stderr whose reader is gone is not an error.
pub fn say_warnings(warnings: &[policy::Warning]) {
    use std::{fmt::Write as _, io::Write as _};
    let mut text = String::new();
    for warning in warnings {
        let _ = writeln!(text, "fw: {warning}");
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub mod allocator;
pub mod cli;
pub mod daemon;
pub mod instance;
pub mod kernel;
pub mod policy;
pub mod source;

/// Time since the Unix epoch (zero for a clock set before 1970).
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Whole seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix_time().as_secs()
}

/// The SHA-256 of `parts` one after the other, in hex: the name of a file
/// named by what it holds (the state's rule lists, the phases compiled
/// ahead).
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update(part);
    }
    hex(&hash.finalize())
}

/// Lower-case hex of `bytes` (a digest's usual spelling).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs (at debug level: `RUST_LOG=fw_user=debug`) that `step` is done,
/// with the milliseconds since the previous mark of this thread: where a
/// slow `fw switch` or `fw run` spends its time, on the operator's own
/// policy and machine, without a profiler.
pub fn mark(step: &str) {
    use std::{cell::Cell, time::Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let now = Instant::now();
    let since = LAST.with(|last| last.replace(Some(now))).map_or(0.0, |t| (now - t).as_secs_f64() * 1e3);
    log::debug!("{step}: {since:.1} ms");
}
