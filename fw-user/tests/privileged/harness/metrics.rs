//! The Prometheus endpoint of a running `fw run --metrics 127.0.0.1:0`:
//! where it listens (fw prints it) and one sample of a scrape.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::{fw::Fw, netns::Netns, traffic::in_netns};

/// The address `fw run` says it serves metrics at, polled from its log
/// (at most 5 s).
pub fn address(fw: &Fw) -> SocketAddr {
    let start = Instant::now();
    loop {
        let found =
            fw.log_text().lines().find_map(|l| l.split("http://").nth(1)?.strip_suffix("/metrics")?.parse().ok());
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "fw run did not say where its metrics are:\n{}",
            fw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET /metrics from inside `ns` (where `fw run` listens).
pub fn scrape(ns: &Netns, addr: SocketAddr) -> String {
    in_netns(ns, || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connecting to /metrics");
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: fw\r\n\r\n").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).expect("reading /metrics");
        assert!(reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"), "{reply}");
        reply
    })
}

/// The value of `series` (name and labels, exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .parse()
        .expect("a number")
}
