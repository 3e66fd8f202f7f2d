//! What the kernel programs need to know of the routing table, read from
//! /proc/net/route, /proc/net/ipv6_route and getifaddrs(3) of the namespace
//! `fw` runs in (the daemon refreshes them):
//!
//! * the destinations the cgroup socket hooks must leave alone, because
//!   they do not leave through the enforced interface, so its TC program
//!   never sees them and its policy is not theirs: loopback, this host's own
//!   addresses (routed over `lo`), every non-default route through another
//!   interface;
//! * the enforced interface's on-link IPv6 prefixes, the neighbours that
//!   neighbour discovery may address whatever the policy says.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The prefixes the hooks bypass, for an enforced interface `iface`.
pub fn bypass_prefixes(iface: &str) -> Result<BTreeSet<IpNet>> {
    let mut out = BTreeSet::new();
    out.insert(IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8)?));
    out.insert(IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128)?));
    for addr in local_addresses()? {
        out.insert(IpNet::from(addr));
    }
    let v4 = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    out.extend(routes_v4(&v4, iface));
    // Absent when IPv6 is disabled.
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(routes_v6(&v6, iface));
    }
    Ok(out)
}

/// Routes of `iface` with no gateway: its on-link IPv6 prefixes.
pub fn onlink6_prefixes(iface: &str) -> Result<BTreeSet<IpNet>> {
    match std::fs::read_to_string("/proc/net/ipv6_route") {
        Ok(table) => Ok(onlink_v6(&table, iface).into_iter().collect()),
        // IPv6 disabled: no neighbours to discover.
        Err(_) => Ok(BTreeSet::new()),
    }
}

/// IPv6 routes through `iface` without a next hop, multicast aside.
fn onlink_v6(table: &str, iface: &str) -> Vec<IpNet> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, len, next_hop, dev) = (*f.first()?, *f.get(1)?, *f.get(4)?, *f.get(9)?);
            let dest = Ipv6Addr::from(u128::from_str_radix(dest, 16).ok()?);
            let len = u8::from_str_radix(len, 16).ok()?;
            let direct = u128::from_str_radix(next_hop, 16).ok()? == 0;
            if dev != iface || !direct || len == 0 || dest.is_multicast() {
                return None;
            }
            Ipv6Net::new(dest, len).ok().map(IpNet::V6)
        })
        .collect()
}

/// Non-default IPv4 routes via interfaces other than `iface`.
fn routes_v4(table: &str, iface: &str) -> Vec<IpNet> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, mask) = (*f.first()?, *f.get(1)?, *f.get(7)?);
            // The table prints the network-order words as little-endian hex.
            let dest = Ipv4Addr::from(u32::from_str_radix(dest, 16).ok()?.swap_bytes());
            let mask = u32::from_str_radix(mask, 16).ok()?.swap_bytes();
            if dev == iface || mask == 0 {
                return None;
            }
            Ipv4Net::new(dest, mask.count_ones() as u8).ok().map(IpNet::V4)
        })
        .collect()
}

/// Non-default IPv6 routes via interfaces other than `iface` (not `lo`'s
/// local entries either: those are covered by the local addresses).
fn routes_v6(table: &str, iface: &str) -> Vec<IpNet> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, len, dev) = (*f.first()?, *f.get(1)?, *f.get(9)?);
            let dest = Ipv6Addr::from(u128::from_str_radix(dest, 16).ok()?);
            let len = u8::from_str_radix(len, 16).ok()?;
            if dev == iface || dev == "lo" || len == 0 {
                return None;
            }
            Ipv6Net::new(dest, len).ok().map(IpNet::V6)
        })
        .collect()
}

/// Every address assigned to an interface of this namespace.
fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned.
        let entry = unsafe { &*cur };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            unsafe {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        cur = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_through_other_interfaces_are_bypassed_and_defaults_are_not() {
        let v4 = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(routes_v4(v4, "eth0"), vec!["172.17.0.0/16".parse::<IpNet>().unwrap()]);
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001  docker0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n";
        assert_eq!(routes_v6(v6, "eth0"), vec!["2001:db8::/64".parse::<IpNet>().unwrap()]);
        // eth0's on-link prefix is fd00::/64; the default route has a next hop.
        assert_eq!(onlink_v6(v6, "eth0"), vec!["fd00::/64".parse::<IpNet>().unwrap()]);
    }
}
