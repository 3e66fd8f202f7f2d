//! Forwards the kernel programs' aya-log records to this process's log.
//!
//! Attached by program id (from the pinned egress link), so it works the
//! same for a fresh start and for an adopted instance.

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

use crate::{kernel::linkinfo, kernel::loader::Hook};

/// Runs until the process exits; logs (once) why it cannot.
pub async fn forward(name: String) {
    if let Err(e) = forward_inner(&name).await {
        log::warn!("{name}: kernel log records are not forwarded: {e:#}");
    }
}

async fn forward_inner(name: &str) -> Result<()> {
    let link =
        linkinfo::tcx_link_info(&Hook::Egress.link_pin(name))?.context("no pinned TCX egress link (clsact mode)")?;
    let logger = aya_log::EbpfLogger::init_from_id(link.program_id).context("opening the aya-log ring buffer")?;
    // SAFETY: the logger owns its ring buffer's descriptor and keeps it open,
    // unreplaced, for as long as the AsyncFd holds the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
