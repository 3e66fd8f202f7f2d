//! The daemon's control socket, /run/fw/NAME.sock: root only (mode 0600 in
//! a root-only directory). One JSON request line, one JSON reply line.
//!
//! Changes to the instance do not go through it (`fw switch` works on the
//! pinned maps under the instance lock, daemon or not); it answers who
//! runs the instance, which `fw run` uses to refuse a second daemon and
//! `fw status` to show the daemon, and hands out the drop events the
//! daemon kept:
//!
//! ```text
//! {"op":"ping"}                       -> {"pid":812,"started_at":1700000000}
//! {"op":"events","since_seq":N}       -> {"events":[...],"next_seq":M,"undecodable":0}
//! {"op":"events","since_secs":600}    -> the events of the last 10 minutes
//! {"op":"names"}                      -> the DNS proxy's learned addresses, or null
//! ```

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::{
    daemon::events::{log::EventBatch, SharedLog},
    instance::paths,
};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonInfo {
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Ping,
    /// Kept events with `seq >= since_seq` and not older than `since_secs`
    /// (both optional: all kept events).
    Events {
        since_seq: Option<u64>,
        since_secs: Option<u64>,
    },
    /// What the DNS proxy learned (`null` when this daemon runs none).
    Names,
}

/// Which kept events to fetch.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventQuery {
    pub since_seq: Option<u64>,
    pub since_secs: Option<u64>,
}

/// Binds the socket for `name`, replacing a stale one (no daemon behind
/// it). Fails when another daemon answers on it.
pub fn bind(name: &str) -> Result<tokio::net::UnixListener> {
    let path = paths::control_socket(name);
    std::fs::create_dir_all(paths::RUN_DIR).with_context(|| format!("creating {}", paths::RUN_DIR))?;
    std::fs::set_permissions(paths::RUN_DIR, std::fs::Permissions::from_mode(0o700))?;
    if let Some(info) = ping(name)? {
        anyhow::bail!("an fw daemon (pid {}) already runs instance {name}", info.pid);
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Answers requests until the listener is dropped.
pub async fn serve(listener: tokio::net::UnixListener, info: DaemonInfo, log: SharedLog) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let info = info.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Ping) => serde_json::to_string(&info),
                Ok(Request::Events { since_seq, since_secs }) => {
                    let since_time = since_secs.map_or(0.0, |s| crate::unix_time().as_secs_f64() - s as f64);
                    let batch = log.lock().expect("event log lock").query(since_seq.unwrap_or(0), since_time);
                    serde_json::to_string(&batch)
                }
                Ok(Request::Names) => serde_json::to_string(&crate::daemon::dns::report()),
                Err(e) => Ok(serde_json::json!({ "error": e.to_string() }).to_string()),
            }
            .unwrap_or_default();
            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

/// Asks the daemon of `name` who it is; `None` when no daemon answers.
pub fn ping(name: &str) -> Result<Option<DaemonInfo>> {
    ping_at(&paths::control_socket(name))
}

/// The events the daemon of `name` kept that match `query`; `None` when no
/// daemon answers.
pub fn events(name: &str, query: EventQuery) -> Result<Option<EventBatch>> {
    let request = Request::Events { since_seq: query.since_seq, since_secs: query.since_secs };
    let reply = ask(&paths::control_socket(name), &request)?;
    reply.map(|line| serde_json::from_str(&line).context("the daemon's reply to an events request")).transpose()
}

/// What the DNS proxy of `name`'s daemon learned; `None` when no daemon
/// answers or it runs no proxy.
pub fn names(name: &str) -> Result<Option<crate::daemon::dns::NamesReport>> {
    let reply = ask(&paths::control_socket(name), &Request::Names)?;
    Ok(reply
        .map(|line| serde_json::from_str(&line).context("the daemon's reply to a names request"))
        .transpose()?
        .flatten())
}

fn ping_at(path: &Path) -> Result<Option<DaemonInfo>> {
    Ok(ask(path, &Request::Ping)?.and_then(|line| serde_json::from_str(&line).ok()))
}

/// Sends one request line and returns the reply line; `None` when nobody
/// answers on `path`.
fn ask(path: &Path, request: &Request) -> Result<Option<String>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("the control socket {} is root-only: run fw with sudo", path.display())
        }
        // Absent, or left behind by a daemon that died: nobody answers.
        Err(_) => return Ok(None),
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{}\n", serde_json::to_string(request)?).as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(Some(line))
}

/// Removes the socket file when dropped: held by the daemon from the bind
/// on, so that no exit path (a bad argument found after binding included)
/// leaves a socket nobody answers.
pub struct SocketFile {
    name: String,
}

impl SocketFile {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string() }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(paths::control_socket(&self.name));
    }
}
