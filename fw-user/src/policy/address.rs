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
pub(crate) fn parse_peer(text: &str) -> Result<Peer, ErrorKind> {
    let bad = || ErrorKind::BadAddress(text.to_string());
    if text == "any" {
        return Ok(Peer::Any);
    }
    if let Some((scheme, rest)) = text.split_once("://") {
        return parse_url(scheme, rest).ok_or_else(bad);
    }
    if text.contains('/') {
        let net: IpNet = text.parse().map_err(|_| bad())?;
        let canonical = net.trunc();
        return Ok(Peer::Net { net: canonical, had_host_bits: canonical != net });
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(Peer::Net { net: IpNet::from(addr), had_host_bits: false });
    }
    if text.contains('*') {
        return Ok(Peer::Wildcard(text.to_string()));
    }
    if is_host_name(text) {
        return Ok(Peer::Host(text.to_ascii_lowercase()));
    }
    Err(bad())
}

/// `scheme://[user@]host[:port][/path...]`.
fn parse_url(scheme: &str, rest: &str) -> Option<Peer> {
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
    let host_ok = host.parse::<IpAddr>().is_ok() || is_host_name(host);
    host_ok.then(|| Peer::Url { host: host.to_ascii_lowercase(), port })
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
}
