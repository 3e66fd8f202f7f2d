//! A real DHCP exchange across a veth pair: dnsmasq's DHCP server on the
//! far end (no DNS: `--port=0`), ISC dhclient on the near one. dhclient
//! runs with `-sf /bin/true`: no script, so it configures nothing (this
//! machine's resolv.conf and routes are never touched); it only writes its
//! lease file, which is what a host's lease is to `fw preflight`, and its
//! packets cross fw like any DHCP client's (raw sockets go through TC).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fw_lab::process::Guarded;

use super::{netns::VethPair, poll};

/// dnsmasq handing out leases of `pair`'s IPv4 /24 (`.100`-`.150`, the
/// shortest lease it allows, 2 minutes) on far's end; files under `dir`.
pub struct DhcpServer {
    _child: Guarded,
}

impl DhcpServer {
    pub fn start(pair: &VethPair, dir: &Path) -> Self {
        let net = pair.far4.octets();
        let range = format!("{0}.{1}.{2}.100,{0}.{1}.{2}.150,255.255.255.0,2m", net[0], net[1], net[2]);
        let child = Guarded::spawn(
            super::dnsmasq::command(&pair.far)
                .args(["--port=0", "--log-facility=-"])
                .arg(format!("--interface={}", pair.far_if))
                .arg(format!("--dhcp-range={range}"))
                .arg(format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display()))
                .arg(format!("--pid-file={}", dir.join("dnsmasq-dhcp.pid").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("starting dnsmasq's DHCP server (cargo xtask test installs dnsmasq-base)");
        Self { _child: child }
    }
}

/// dhclient on near's end, in the foreground (renewing until dropped),
/// its lease in `lease`.
pub struct DhcpClient {
    _child: Guarded,
    pub lease: PathBuf,
}

impl DhcpClient {
    pub fn start(pair: &VethPair, lease: &Path, dir: &Path) -> Self {
        let conf = dir.join("dhclient.conf");
        std::fs::write(&conf, "").expect("dhclient.conf");
        let child = Guarded::spawn(
            pair.near
                .command("dhclient")
                .args(["-d", "-4", "-sf", "/bin/true", "-cf"])
                .arg(&conf)
                .arg("-lf")
                .arg(lease)
                .arg("-pf")
                .arg(dir.join("dhclient.pid"))
                .arg(&pair.near_if)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("starting dhclient (cargo xtask test installs isc-dhcp-client)");
        Self { _child: child, lease: lease.to_path_buf() }
    }

    /// Whether a lease from `server` arrives within `limit`.
    pub fn leased_from(&self, server: std::net::Ipv4Addr, limit: Duration) -> bool {
        let identifier = format!("dhcp-server-identifier {server};");
        poll(limit, || std::fs::read_to_string(&self.lease).is_ok_and(|l| l.contains(&identifier)))
    }
}
