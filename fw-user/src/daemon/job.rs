//! One piece of work at a time on the blocking pool, beside the daemon
//! loop: the phases compiled ahead (`ahead`) and the phase written ahead
//! (`standby`). The loop waits for it in a `select!` arm guarded by
//! [`Job::is_running`], so that it never stops answering meanwhile.

use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

pub struct Job<T> {
    running: Option<(Instant, JoinHandle<T>)>,
}

impl<T> Default for Job<T> {
    fn default() -> Self {
        Self { running: None }
    }
}

impl<T: Send + 'static> Job<T> {
    /// Starts `work` (the caller checks [`Job::is_running`] first: one at a
    /// time).
    pub fn start(&mut self, work: impl FnOnce() -> T + Send + 'static) {
        debug_assert!(self.running.is_none(), "a job is running already");
        self.running = Some((Instant::now(), tokio::task::spawn_blocking(work)));
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Waits for the work in progress and returns how long it ran and what
    /// it returned (an error if it panicked). Never returns while none runs.
    pub async fn finish(&mut self) -> (Duration, Result<T, JoinError>) {
        let Some((started, task)) = self.running.as_mut() else { return std::future::pending().await };
        let outcome = task.await;
        let took = started.elapsed();
        self.running = None;
        (took, outcome)
    }

    /// Waits for the work in progress, if any, and forgets its outcome.
    pub async fn abandon(&mut self) {
        if let Some((_, task)) = self.running.take() {
            let _ = task.await;
        }
    }
}
