//! DNS through fw's proxy or straight to the resolver: one query at a time
//! at a fixed rate, each for a name not asked before (so the resolver's
//! answer, not a cache, is measured, and each answer teaches new
//! addresses), timing each exchange. Run inside the sender's namespace,
//! in or out of the cgroup fw hooks.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;

pub struct Options {
    pub server: SocketAddr,
    /// Names `{prefix}{first + i}.{domain}` for i in 0..count.
    pub prefix: String,
    pub first: usize,
    pub domain: String,
    pub count: usize,
    /// Queries per second (0: as fast as answers come).
    pub rate: u32,
}

/// An A query for `name` with an EDNS0 OPT record offering 4096-byte
/// answers (many addresses per answer fit in one datagram).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    // OPT: root name, type 41, class = UDP size 4096, TTL 0, no data.
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    q
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(o: &Options) -> Result<serde_json::Value> {
    let bind: SocketAddr = if o.server.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socket = UdpSocket::bind(bind).context("binding the DNS client")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let gap = (o.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(o.rate)));
    let mut latencies_us = Vec::with_capacity(o.count);
    let (mut failed, mut addresses) = (0u64, 0u64);
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    for i in 0..o.count {
        if let Some(gap) = gap {
            let due = started + gap * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let id = (i % 65_536) as u16;
        let q = query(id, &format!("{}{}.{}", o.prefix, o.first + i, o.domain));
        let sent = Instant::now();
        socket.send_to(&q, o.server).context("sending a query")?;
        let answered = loop {
            match socket.recv_from(&mut buf) {
                Ok((len, _)) if len >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id => break Some(len),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        match answered {
            Some(_) if buf[3] & 0x0f == 0 => {
                latencies_us.push(sent.elapsed().as_secs_f64() * 1e6);
                addresses += u64::from(u16::from_be_bytes([buf[6], buf[7]]));
            }
            _ => failed += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_us.sort_by(|a, b| a.total_cmp(b));
    Ok(json!({
        "queries": o.count,
        "answered": latencies_us.len(),
        "failed": failed,
        "addresses": addresses,
        "seconds": seconds,
        "p50_us": percentile(&latencies_us, 0.50),
        "p90_us": percentile(&latencies_us, 0.90),
        "p99_us": percentile(&latencies_us, 0.99),
    }))
}
