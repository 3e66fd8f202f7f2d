//! Protocol names and the two meanings of `ports`: port numbers for
//! tcp/udp/sctp, `type` or `type/code` for icmp/icmpv6 (stored as
//! `type << 8 | code`, the value the kernel puts in the port field).

use fw_common::policy::proto::{ICMP, ICMPV6, SCTP, TCP, UDP};

use super::{error::ErrorKind, ir::PortRange};

/// `None` for `any`.
pub(crate) fn parse_protocol(text: &str) -> Result<Option<u8>, ErrorKind> {
    match text.to_ascii_lowercase().as_str() {
        "any" => Ok(None),
        "tcp" => Ok(Some(TCP)),
        "udp" => Ok(Some(UDP)),
        "sctp" => Ok(Some(SCTP)),
        "icmp" => Ok(Some(ICMP)),
        "icmpv6" | "ipv6-icmp" => Ok(Some(ICMPV6)),
        _ => Err(ErrorKind::UnknownProtocol(text.to_string())),
    }
}

/// The policy-language name of a protocol number, or the number.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        SCTP => "sctp".into(),
        ICMP => "icmp".into(),
        ICMPV6 => "icmpv6".into(),
        other => other.to_string(),
    }
}

/// The number of a protocol named as [`protocol_name`] writes it (a name,
/// or a number for others); `None` for anything else.
pub fn protocol_number(name: &str) -> Option<u8> {
    parse_protocol(name).ok().flatten().or_else(|| name.parse().ok())
}

/// Protocols whose `ports` are ICMP type/code.
pub(crate) fn is_icmp(proto: u8) -> bool {
    proto == ICMP || proto == ICMPV6
}

/// `443`, `"40000-65535"` or `any`.
pub(crate) fn parse_port_entry(text: &str) -> Result<PortRange, ErrorKind> {
    if text == "any" {
        return Ok(PortRange::ALL);
    }
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| ErrorKind::BadPort(text.to_string()));
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(text)?;
            (p, p)
        }
    };
    let in_bounds = |p: u64| (1..=65535).contains(&p);
    if !in_bounds(first) || !in_bounds(last) {
        let what = if text.contains('-') { format!("port range {first}-{last}") } else { format!("port {first}") };
        return Err(ErrorKind::PortOutOfBounds(what));
    }
    if first > last {
        return Err(ErrorKind::InvertedRange(format!("{first}-{last}")));
    }
    Ok(PortRange { first: first as u16, last: last as u16 })
}

/// `8` (every code of type 8), `"3/4"` (type 3 code 4) or `any`.
pub(crate) fn parse_icmp_entry(text: &str) -> Result<PortRange, ErrorKind> {
    if text == "any" {
        return Ok(PortRange::ALL);
    }
    let byte = |s: &str| s.trim().parse::<u8>().map_err(|_| ErrorKind::BadIcmpType(text.to_string()));
    match text.split_once('/') {
        Some((t, c)) => {
            let value = u16::from(byte(t)?) << 8 | u16::from(byte(c)?);
            Ok(PortRange { first: value, last: value })
        }
        None => {
            let t = u16::from(byte(text)?) << 8;
            Ok(PortRange { first: t, last: t | 0xff })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_ranges_and_bounds() {
        assert_eq!(parse_port_entry("443"), Ok(PortRange { first: 443, last: 443 }));
        assert_eq!(parse_port_entry("40000-65535"), Ok(PortRange { first: 40000, last: 65535 }));
        assert_eq!(parse_port_entry("any"), Ok(PortRange::ALL));
        assert_eq!(parse_port_entry("0"), Err(ErrorKind::PortOutOfBounds("port 0".into())));
        assert_eq!(parse_port_entry("70000-80000"), Err(ErrorKind::PortOutOfBounds("port range 70000-80000".into())));
        assert_eq!(parse_port_entry("90-80"), Err(ErrorKind::InvertedRange("90-80".into())));
        assert_eq!(parse_port_entry("https"), Err(ErrorKind::BadPort("https".into())));
    }

    #[test]
    fn icmp_types_and_codes() {
        assert_eq!(parse_icmp_entry("8"), Ok(PortRange { first: 0x0800, last: 0x08ff }));
        assert_eq!(parse_icmp_entry("3/4"), Ok(PortRange { first: 0x0304, last: 0x0304 }));
        assert_eq!(parse_icmp_entry("0"), Ok(PortRange { first: 0, last: 0xff }));
        assert_eq!(parse_icmp_entry("256"), Err(ErrorKind::BadIcmpType("256".into())));
    }
}
