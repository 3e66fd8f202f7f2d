//! Facts of this host that checking a policy depends on, read here so that
//! the policy core (`policy::lint`) stays free of files.

use crate::policy::ir::PortRange;

/// This host's ephemeral port range (`net.ipv4.ip_local_port_range`, which
/// Linux applies to IPv6 too), `None` when it cannot be read.
pub fn ephemeral_range() -> Option<PortRange> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

fn parse_port_range(text: &str) -> Option<PortRange> {
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (first, last) = (numbers.next()??, numbers.next()??);
    (first <= last).then_some(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctl_text_becomes_a_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(PortRange { first: 32768, last: 60999 }));
        assert_eq!(parse_port_range("61000 32768\n"), None);
        assert_eq!(parse_port_range("garbage"), None);
    }
}
