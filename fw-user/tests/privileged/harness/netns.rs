//! Network namespaces and the veth pair that joins two of them.
//!
//! Veths are created directly inside their namespaces (`ip link add ...
//! netns NS`), so nothing ever appears in the root namespace, and deleting
//! the namespaces deletes them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Deref,
    process::{self, Command, Output},
};

use super::owner_pid;

/// A failed setup step is the test's failure, with everything the lab said.
fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `cmd` to completion; panics with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    must(fw_lab::netns::run(cmd))
}

/// The lab's namespace ([`fw_lab::netns::Netns`]: loopback up, deleted on
/// drop, [`command`](fw_lab::netns::Netns::command) runs a program inside
/// it), with the calls a test makes panicking on failure.
pub struct Netns(fw_lab::netns::Netns);

impl Deref for Netns {
    type Target = fw_lab::netns::Netns;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netns {
    pub fn new(name: String) -> Self {
        assert!(owner_pid(&name).is_some(), "{name} must come from unique_name()");
        Self(must(fw_lab::netns::Netns::create(name)))
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        must(self.0.ip(args));
    }

    /// `sysctl -w KEY=VALUE` in this namespace, which must succeed.
    pub fn sysctl(&self, key: &str, value: &str) {
        must(self.0.sysctl(key, value));
    }

    /// Output of `ip -n NAME ARGS`, which must succeed.
    pub fn ip_output(&self, args: &[&str]) -> String {
        must(self.0.ip(args))
    }

    /// Waits (bounded) until `dev` reports operstate UP.
    pub fn wait_link_up(&self, dev: &str) {
        must(self.0.wait_link_up(dev));
    }
}

/// A veth pair with one end in `a`, the other in `b`, both down and
/// without addresses; returns (name in `a`, name in `b`).
pub fn veth(a: &Netns, b: &Netns) -> (String, String) {
    // fw<pid mod 100000><n>a: at most 15 characters (IFNAMSIZ - 1).
    let tag = format!("fw{}{}", process::id() % 100_000, super::next_n());
    let (a_if, b_if) = (format!("{tag}a"), format!("{tag}b"));
    veth_named(a, &a_if, b, &b_if);
    (a_if, b_if)
}

fn veth_named(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    must(fw_lab::netns::veth(a, a_if, b, b_if));
}

/// Gives `dev` in `ns` an IPv4 /24 and an IPv6 /64 (`nodad`) and brings it
/// up.
pub fn address(ns: &Netns, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    must(fw_lab::netns::address(ns, dev, v4, v6));
}

/// Three namespaces in a line, `client - router - server`, the router
/// forwarding IPv4 and IPv6 between its two links:
///
/// * server link, subnet `x`: server 198.18.x.1 / 2001:db8:x::1 on
///   `server_if` (where fw enforces), router .254 / ::fe;
/// * client link, subnet `x + 1`: client 198.18.(x+1).1 / 2001:db8:(x+1)::1,
///   router .254 / ::fe.
///
/// Every MTU is 1500 unless [`Routed::new`] is told otherwise for the
/// router's end of the client link.
pub struct Routed {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    pub server_if: String,
    pub client_if: String,
    /// The router's end of the client link.
    pub router_client_if: String,
    /// The router's end of the server link.
    pub router_server_if: String,
    pub server4: Ipv4Addr,
    pub server6: Ipv6Addr,
    pub client4: Ipv4Addr,
    pub client6: Ipv6Addr,
}

impl Routed {
    /// `router_client_mtu`: the MTU of the router's end of the client link
    /// (the client's own end stays at 1500, so the client advertises a full
    /// MSS and nothing but path MTU discovery can shrink the server's
    /// segments).
    pub fn new(x: u8, router_client_mtu: u32) -> Self {
        let base = super::unique_name();
        let client = Netns::new(format!("{base}-client"));
        let router = Netns::new(format!("{base}-router"));
        let server = Netns::new(format!("{base}-server"));
        let (server_if, router_server_if) = veth(&server, &router);
        let (router_client_if, client_if) = veth(&router, &client);
        let y = x + 1;
        let v4 = |net: u8, host: u8| Ipv4Addr::new(198, 18, net, host);
        let v6 = |net: u8, host: u16| Ipv6Addr::new(0x2001, 0xdb8, u16::from(net), 0, 0, 0, 0, host);
        address(&server, &server_if, v4(x, 1), v6(x, 1));
        address(&router, &router_server_if, v4(x, 254), v6(x, 0xfe));
        address(&router, &router_client_if, v4(y, 254), v6(y, 0xfe));
        address(&client, &client_if, v4(y, 1), v6(y, 1));
        router.ip(&["link", "set", "dev", &router_client_if, "mtu", &router_client_mtu.to_string()]);
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv6.conf.all.forwarding", "1");
        for (ns, via4, via6) in [(&server, v4(x, 254), v6(x, 0xfe)), (&client, v4(y, 254), v6(y, 0xfe))] {
            ns.ip(&["route", "add", "default", "via", &via4.to_string()]);
            ns.ip(&["-6", "route", "add", "default", "via", &via6.to_string()]);
        }
        for (ns, dev) in
            [(&server, &server_if), (&router, &router_server_if), (&router, &router_client_if), (&client, &client_if)]
        {
            ns.wait_link_up(dev);
        }
        Self {
            server4: v4(x, 1),
            server6: v6(x, 1),
            client4: v4(y, 1),
            client6: v6(y, 1),
            client,
            router,
            server,
            server_if,
            client_if,
            router_client_if,
            router_server_if,
        }
    }
}

/// Two namespaces, `near` (where fw enforces, on `near_if`'s egress) and
/// `far` (the servers), joined by one veth pair, with IPv4 and IPv6
/// addresses ready to use (IPv6 with `nodad`).
pub struct VethPair {
    pub near: Netns,
    pub far: Netns,
    pub near_if: String,
    pub far_if: String,
    pub near4: Ipv4Addr,
    pub far4: Ipv4Addr,
    pub near6: Ipv6Addr,
    pub far6: Ipv6Addr,
}

impl VethPair {
    /// Subnet `x`: near 198.18.x.1/24 and 2001:db8:x::1/64, far .2 / ::2.
    pub fn new(x: u8) -> Self {
        let base = super::unique_name();
        let near = Netns::new(format!("{base}-near"));
        let far = Netns::new(format!("{base}-far"));
        let (near_if, far_if) = veth(&near, &far);
        let pair = Self {
            near4: Ipv4Addr::new(198, 18, x, 1),
            far4: Ipv4Addr::new(198, 18, x, 2),
            near6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(x), 0, 0, 0, 0, 1),
            far6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(x), 0, 0, 0, 0, 2),
            near,
            far,
            near_if,
            far_if,
        };
        address(&pair.near, &pair.near_if, pair.near4, pair.near6);
        address(&pair.far, &pair.far_if, pair.far4, pair.far6);
        pair.near.wait_link_up(&pair.near_if);
        pair.far.wait_link_up(&pair.far_if);
        pair
    }

    /// Deletes the veth pair (both ends go), as an operator or a hotplug
    /// would: the namespaces stay.
    pub fn delete_link(&self) {
        self.near.ip(&["link", "del", "dev", &self.near_if]);
    }

    /// Creates the pair again after [`VethPair::delete_link`]: same names,
    /// same addresses, new interface indexes.
    pub fn recreate_link(&self) {
        veth_named(&self.near, &self.near_if, &self.far, &self.far_if);
        address(&self.near, &self.near_if, self.near4, self.near6);
        address(&self.far, &self.far_if, self.far4, self.far6);
        self.near.wait_link_up(&self.near_if);
        self.far.wait_link_up(&self.far_if);
    }

    /// The far host's addresses, IPv4 first.
    pub fn far_addrs(&self) -> [IpAddr; 2] {
        [self.far4.into(), self.far6.into()]
    }
}
