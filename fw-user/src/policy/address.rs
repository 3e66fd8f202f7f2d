//! What one entry of `to:` / `from:` (or of a named address set) means,
//! before any name is resolved.

use std::net::IpAddr;

use ipnet::IpNet;

use super::error::ErrorKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// `any`: 0.0.0.0/0 and ::/0.
    Any,
    /// An address or CIDR, normalized; `had_host_bits` if it was written
    /// with host bits set (203.0.113.7/24).
    Net { net: IpNet, had_host_bits: bool },
    /// A host name to resolve now (or the name of an address set: the
    /// caller checks those first).
    Host(String),
    /// `*.vonage.com`: needs DNS awareness, which `fw` does not have yet.
    Wildcard(String),
    /// `https://host:port/path`: the host (an IP literal or a name) and the
    /// port, explicit or the scheme's default.
    Url { host: String, port: u16 },
}

/// Parses one entry. Errors carry no position; the caller adds it.
///
/// Addresses are written one way only: IPv4 as dotted-quad (what
/// `Ipv4Addr` parses: four decimal numbers, no leading zeros), IPv6 as
/// `Ipv6Addr` parses it. Anything else made of numbers (`010.0.0.1`,
/// `1.2.3`, `2130706433`, `0x7f.1`) is an error, never a host name: the
/// resolver's `inet_aton` would turn it into an address that is not the one
/// it looks like (`010` is octal 8).
pub(crate) fn parse_peer(text: &str) -> Result<Peer, ErrorKind> {
    let bad = || ErrorKind::BadAddress(text.to_string());
    if text == "any" {
        return Ok(Peer::Any);
    }
    if let Some((scheme, rest)) = text.split_once("://") {
        return parse_url(scheme, rest).ok_or_else(bad)?;
    }
    if let Some((addr, _prefix)) = text.split_once('/') {
        if addr.parse::<IpAddr>().is_err() && looks_numeric(addr) {
            return Err(ErrorKind::NumericName(addr.to_string()));
        }
        let net: IpNet = text.parse().map_err(|_| bad())?;
        let canonical = net.trunc();
        return Ok(Peer::Net { net: canonical, had_host_bits: canonical != net });
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(Peer::Net { net: IpNet::from(addr), had_host_bits: false });
    }
    if looks_numeric(text) {
        return Err(ErrorKind::NumericName(text.to_string()));
    }
    if text.contains('*') {
        return Ok(Peer::Wildcard(text.to_string()));
    }
    if is_host_name(text) {
        return Ok(Peer::Host(text.to_ascii_lowercase()));
    }
    Err(bad())
}

/// Text that is not an address to `IpAddr::from_str` yet reads as a number:
/// its last label is all digits (no top-level domain is, RFC 3696 2), or
/// every label is a number in C syntax (decimal, `0x` hex), which is what
/// `inet_aton` accepts (`0x7f000001`, `0x7f.0x1`).
fn looks_numeric(text: &str) -> bool {
    let labels: Vec<&str> = text.strip_suffix('.').unwrap_or(text).split('.').collect();
    let digits = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit());
    let hex = |l: &str| {
        let rest = l.strip_prefix("0x").or_else(|| l.strip_prefix("0X"));
        rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    labels.last().is_some_and(|l| digits(l)) || labels.iter().all(|l| digits(l) || hex(l))
}

/// `scheme://[user@]host[:port][/path...]`; `None` if malformed, an error
/// for a host that looks like a number.
fn parse_url(scheme: &str, rest: &str) -> Option<Result<Peer, ErrorKind>> {
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // [2001:db8::1]:8443
        let (host, after) = bracketed.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
        None => match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return None,
        },
    };
    if host.parse::<IpAddr>().is_err() && looks_numeric(host) {
        return Some(Err(ErrorKind::NumericName(host.to_string())));
    }
    let host_ok = host.parse::<IpAddr>().is_ok() || is_host_name(host);
    host_ok.then(|| Ok(Peer::Url { host: host.to_ascii_lowercase(), port }))
}

/// Letters, digits, hyphens and dots, in labels of 1-63 characters.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn literals_cidrs_and_host_bits() {
        assert_eq!(parse_peer("any"), Ok(Peer::Any));
        assert_eq!(parse_peer("203.0.113.7"), Ok(Peer::Net { net: net("203.0.113.7/32"), had_host_bits: false }));
        assert_eq!(parse_peer("2001:db8::1"), Ok(Peer::Net { net: net("2001:db8::1/128"), had_host_bits: false }));
        assert_eq!(parse_peer("203.0.113.7/24"), Ok(Peer::Net { net: net("203.0.113.0/24"), had_host_bits: true }));
        assert_eq!(parse_peer("2001:db8::/32"), Ok(Peer::Net { net: net("2001:db8::/32"), had_host_bits: false }));
        assert_eq!(parse_peer("203.0.113.0/33"), Err(ErrorKind::BadAddress("203.0.113.0/33".into())));
    }

    #[test]
    fn names_wildcards_and_urls() {
        assert_eq!(parse_peer("Hooks.Example.com"), Ok(Peer::Host("hooks.example.com".into())));
        assert_eq!(parse_peer("*.vonage.com"), Ok(Peer::Wildcard("*.vonage.com".into())));
        assert_eq!(
            parse_peer("https://hooks.example.com:8443/path?x=1"),
            Ok(Peer::Url { host: "hooks.example.com".into(), port: 8443 })
        );
        assert_eq!(parse_peer("http://user@203.0.113.9/hook"), Ok(Peer::Url { host: "203.0.113.9".into(), port: 80 }));
        assert_eq!(parse_peer("https://[2001:db8::5]/"), Ok(Peer::Url { host: "2001:db8::5".into(), port: 443 }));
        assert_eq!(parse_peer("https://[2001:db8::5]:7777"), Ok(Peer::Url { host: "2001:db8::5".into(), port: 7777 }));
        assert!(parse_peer("ftp://example.com/").is_err());
        assert!(parse_peer("https://example.com:0/").is_err());
        assert!(parse_peer("under_score").is_err());
    }

    #[test]
    fn names_made_of_numbers_are_not_names() {
        for text in
            ["010.000.000.001", "1.2.3", "2130706433", "0x7f.1", "0X7F000001", "1.2.3.4.5", "127.1.", "example.123"]
        {
            assert_eq!(parse_peer(text), Err(ErrorKind::NumericName(text.into())), "{text}");
        }
        assert_eq!(parse_peer("010.0.0.0/8"), Err(ErrorKind::NumericName("010.0.0.0".into())));
        assert_eq!(parse_peer("https://2130706433:8443/x"), Err(ErrorKind::NumericName("2130706433".into())));
        // Names with digits, and hex-looking words without 0x, are names.
        for text in ["3com.example", "123.example.com", "deadbeef", "0x", "a1.b2"] {
            assert_eq!(parse_peer(text), Ok(Peer::Host(text.to_ascii_lowercase())), "{text}");
        }
        assert!(matches!(parse_peer("::ffff:198.51.100.1"), Ok(Peer::Net { .. })));
        assert!(matches!(parse_peer("2001:0db8::1"), Ok(Peer::Net { .. })));
    }
}
