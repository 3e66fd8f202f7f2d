//! `dns: { resolvers: [system] }`: the nameservers this host uses.
//!
//! `/etc/resolv.conf`'s `nameserver` lines; when that names only
//! systemd-resolved's stub (127.0.0.53 / 127.0.0.54), the upstream servers
//! the stub uses, from `/run/systemd/resolve/resolv.conf` (the stub itself
//! would hide which process asked: behaviour 7 of issue 14, not done yet).

use std::net::IpAddr;

const RESOLV_CONF: &str = "/etc/resolv.conf";
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// The system's resolvers, in file order; empty when none can be read
/// (then DNS from local sockets is refused: fail closed).
pub fn system_resolvers() -> Vec<IpAddr> {
    let main = read(RESOLV_CONF);
    if !main.is_empty() && main.iter().all(is_resolved_stub) {
        let upstream = read(RESOLVED_UPSTREAMS);
        if !upstream.is_empty() {
            return upstream;
        }
    }
    main
}

fn is_resolved_stub(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V4(a) if a.octets()[..3] == [127, 0, 0] && (a.octets()[3] == 53 || a.octets()[3] == 54))
}

fn read(path: &str) -> Vec<IpAddr> {
    std::fs::read_to_string(path).map(|text| parse(&text)).unwrap_or_default()
}

/// `nameserver ADDR` lines (an IPv6 address may carry a `%zone`, which is
/// dropped); comments start with `#` or `;`.
pub fn parse(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_in_order() {
        let text = "# generated\nsearch example.com\nnameserver 198.18.0.53\n;nameserver 1.1.1.1\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(parse(text), vec!["198.18.0.53".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]);
        assert!(is_resolved_stub(&"127.0.0.53".parse().unwrap()));
        assert!(!is_resolved_stub(&"127.0.0.1".parse().unwrap()));
    }
}
