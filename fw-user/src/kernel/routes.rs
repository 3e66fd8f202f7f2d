//! What the kernel programs need to know of the routing table, read over
//! rtnetlink from the network namespace `fw` runs in (every routing table,
//! policy routing's included, and every address), whenever the daemon hears
//! of a change (`daemon::iface_watch` subscribes to the route and address
//! notifications):
//!
//! * the destinations the cgroup socket hooks must leave alone, because
//!   they do not leave through the enforced interface, so its TC program
//!   never sees them and its policy is not theirs: loopback, this host's own
//!   addresses, every non-default route through another interface (in any
//!   table: a connection there gets no EPERM, and if policy routing sends
//!   it through the enforced interface after all, its TC program still
//!   judges it on the wire);
//! * the enforced interface's on-link IPv6 prefixes, the neighbours that
//!   neighbour discovery may address whatever the policy says.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::{
    packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST},
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
        AddressFamily, RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};

/// One route of the kernel's tables, reduced to what fw uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    /// The output interface; `None` for routes without one (blackhole,
    /// unreachable, prohibit) and for multipath routes.
    pub oif: Option<u32>,
    pub gateway: bool,
    pub kind: RouteType,
}

/// The routing tables and addresses of a network namespace.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub routes: Vec<Route>,
    pub addresses: Vec<IpAddr>,
}

impl Table {
    /// Every route of every table, and every address, of this namespace.
    pub fn read() -> Result<Table> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        socket.bind_auto().context("binding a netlink socket")?;
        socket.connect(&SocketAddr::new(0, 0)).context("connecting a netlink socket")?;
        let mut table = Table::default();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            for message in dump(&socket, RouteNetlinkMessage::GetRoute(request))? {
                if let RouteNetlinkMessage::NewRoute(route) = message {
                    table.routes.extend(Route::from_message(&route));
                }
            }
        }
        for message in dump(&socket, RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
            if let RouteNetlinkMessage::NewAddress(address) = message {
                table.addresses.extend(address_of(&address));
            }
        }
        Ok(table)
    }

    /// The prefixes the hooks bypass, for the enforced interface `ifindex`.
    pub fn bypass_prefixes(&self, ifindex: u32) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        out.insert(IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("a valid prefix")));
        out.insert(IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("a valid prefix")));
        out.extend(self.addresses.iter().copied().map(IpNet::from));
        out.extend(
            self.routes
                .iter()
                .filter(|r| r.destination.prefix_len() > 0 && r.oif.is_some_and(|oif| oif != ifindex))
                // Multicast and the local table's broadcast entries are
                // addresses of a link, not destinations somewhere else.
                .filter(|r| matches!(r.kind, RouteType::Unicast | RouteType::Local))
                .filter(|r| !r.destination.addr().is_multicast())
                .map(|r| r.destination),
        );
        out
    }

    /// Routes of `ifindex` with no gateway: its on-link IPv6 prefixes.
    pub fn onlink6_prefixes(&self, ifindex: u32) -> BTreeSet<IpNet> {
        self.routes
            .iter()
            .filter(|r| r.oif == Some(ifindex) && !r.gateway && r.kind == RouteType::Unicast)
            .filter(|r| matches!(r.destination, IpNet::V6(_)) && r.destination.prefix_len() > 0)
            .filter(|r| !r.destination.addr().is_multicast())
            .map(|r| r.destination)
            .collect()
    }
}

impl Route {
    fn from_message(message: &RouteMessage) -> Option<Route> {
        let len = message.header.destination_prefix_length;
        let mut destination = None;
        let mut oif = None;
        let mut gateway = false;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => destination = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => destination = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = true,
                _ => {}
            }
        }
        // No destination attribute: the default route of its family.
        let destination = match (destination, message.header.address_family) {
            (Some(d), _) => d,
            (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let destination = IpNet::new(destination, len).ok()?.trunc();
        Some(Route { destination, oif, gateway, kind: message.header.kind })
    }
}

/// The address an RTM_NEWADDRESS assigns: IFA_LOCAL where there is one
/// (on point-to-point links IFA_ADDRESS is the peer's), else IFA_ADDRESS.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// Sends one dump request and collects the answers until NLMSG_DONE.
fn dump(socket: &Socket, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0).context("sending a netlink dump request")?;
    let mut out = Vec::new();
    loop {
        let (bytes, _) = socket.recv_from_full().context("reading a netlink dump")?;
        let mut offset = 0;
        while offset < bytes.len() {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                .context("decoding a netlink dump")?;
            let length = answer.header.length as usize;
            match answer.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => bail!("netlink dump refused: {e:?}"),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if length == 0 {
                bail!("a netlink message of length 0");
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, oif: Option<u32>, gateway: bool, kind: RouteType) -> Route {
        Route { destination: destination.parse().unwrap(), oif, gateway, kind }
    }

    #[test]
    fn routes_through_other_interfaces_are_bypassed_and_defaults_are_not() {
        // Interface 2 is enforced; 3 is docker0; 1 is lo.
        let table = Table {
            routes: vec![
                route("0.0.0.0/0", Some(2), true, RouteType::Unicast),
                route("192.0.2.0/24", Some(2), false, RouteType::Unicast),
                route("172.17.0.0/16", Some(3), false, RouteType::Unicast),
                // Policy routing: a table of its own sends 10.8/16 to a VPN.
                route("10.8.0.0/16", Some(4), false, RouteType::Unicast),
                route("203.0.113.0/24", None, false, RouteType::BlackHole),
                route("172.17.255.255/32", Some(3), false, RouteType::Broadcast),
                route("ff00::/8", Some(3), false, RouteType::Multicast),
                route("::/0", Some(2), true, RouteType::Unicast),
                route("fd00::/64", Some(2), false, RouteType::Unicast),
                route("2001:db8::/64", Some(3), false, RouteType::Unicast),
            ],
            addresses: vec!["192.0.2.10".parse().unwrap()],
        };
        let bypass: Vec<String> = table.bypass_prefixes(2).iter().map(|n| n.to_string()).collect();
        assert_eq!(
            bypass,
            ["10.8.0.0/16", "127.0.0.0/8", "172.17.0.0/16", "192.0.2.10/32", "::1/128", "2001:db8::/64"]
        );
        let onlink: Vec<String> = table.onlink6_prefixes(2).iter().map(|n| n.to_string()).collect();
        assert_eq!(onlink, ["fd00::/64"]);
    }

    #[test]
    fn route_messages_become_routes() {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 16;
        message.header.kind = RouteType::Unicast;
        message.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(172, 17, 0, 0))));
        message.attributes.push(RouteAttribute::Oif(3));
        assert_eq!(Route::from_message(&message), Some(route("172.17.0.0/16", Some(3), false, RouteType::Unicast)));
        // No destination: the family's default route.
        let mut default = RouteMessage::default();
        default.header.address_family = AddressFamily::Inet6;
        default.header.kind = RouteType::Unicast;
        default.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet6(Ipv6Addr::LOCALHOST)));
        default.attributes.push(RouteAttribute::Oif(2));
        assert_eq!(Route::from_message(&default), Some(route("::/0", Some(2), true, RouteType::Unicast)));
    }

    #[test]
    fn every_table_of_this_namespace_is_read() {
        // Needs no privileges. 127.0.0.0/8 is routed in the `local` table
        // only, never in `main`: seeing it proves the dump covers them all.
        let table = Table::read().unwrap();
        assert!(table.addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{table:?}");
        assert!(
            table.routes.iter().any(|r| r.kind == RouteType::Local && r.destination.to_string() == "127.0.0.0/8"),
            "{table:?}"
        );
    }
}
