//! `dns: { resolvers: [system] }`: the nameservers this host uses.
//!
//! `/etc/resolv.conf`'s `nameserver` lines; when that names only
//! systemd-resolved's stub (127.0.0.53 / 127.0.0.54), the stub *and* the
//! upstream servers it uses, from `/run/systemd/resolve/resolv.conf`.
//! Applications ask the stub: their queries reach fw's proxy first (the
//! stub is a resolver of the phase), so answers are learned for, and
//! refusals charged to, the application that asked, not to the stub
//! (issue 14, behaviour 7); the stub's own queries to its upstreams go
//! through the proxy too (the upstreams are resolvers of the phase).

use std::{net::IpAddr, path::Path};

pub const RESOLV_CONF: &str = "etc/resolv.conf";
pub const RESOLVED_UPSTREAMS: &str = "run/systemd/resolve/resolv.conf";

/// The system's resolvers, in file order; empty when none can be read
/// (then DNS from local sockets is refused: fail closed).
pub fn system_resolvers() -> Vec<IpAddr> {
    system_resolvers_under(Path::new("/"))
}

/// [`system_resolvers`] of the file tree at `root` (`fw preflight --root`).
pub fn system_resolvers_under(root: &Path) -> Vec<IpAddr> {
    resolvers_of(&read(&root.join(RESOLV_CONF)), || read(&root.join(RESOLVED_UPSTREAMS)))
}

/// `main`'s nameservers, and when they are only systemd-resolved's stub,
/// its upstreams after them.
fn resolvers_of(main: &[IpAddr], upstreams: impl FnOnce() -> Vec<IpAddr>) -> Vec<IpAddr> {
    let mut all = main.to_vec();
    if !main.is_empty() && main.iter().all(is_resolved_stub) {
        all.extend(upstreams().into_iter().filter(|a| !main.contains(a)));
    }
    all
}

fn is_resolved_stub(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V4(a) if a.octets()[..3] == [127, 0, 0] && (a.octets()[3] == 53 || a.octets()[3] == 54))
}

fn read(path: &Path) -> Vec<IpAddr> {
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

    #[test]
    fn a_resolved_stub_comes_with_its_upstreams() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let upstreams = || vec![ip("198.18.0.53"), ip("2001:db8::53")];
        assert_eq!(
            resolvers_of(&[ip("127.0.0.53")], upstreams),
            [ip("127.0.0.53"), ip("198.18.0.53"), ip("2001:db8::53")]
        );
        assert_eq!(resolvers_of(&[ip("198.18.0.1")], upstreams), [ip("198.18.0.1")], "no stub: resolv.conf only");
        assert_eq!(
            resolvers_of(&[ip("127.0.0.53")], Vec::new),
            [ip("127.0.0.53")],
            "upstreams unknown: the stub alone"
        );
    }
}
