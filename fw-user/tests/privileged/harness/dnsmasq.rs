//! dnsmasq as the tests run it: in the foreground, no configuration file,
//! no /etc/resolv.conf or /etc/hosts of this machine, bound to the
//! interfaces it is given only, as root (it would drop to `nobody` and
//! lose the files it writes). Every test adds what it serves: names
//! (`--listen-address`, `--addn-hosts`), DHCP (`--dhcp-range`), a stub.

use std::{path::Path, process::Command};

use super::netns::Netns;

/// The dnsmasq binary (Debian's dnsmasq-base puts it in /usr/sbin, which a
/// non-root PATH may lack).
fn binary() -> &'static str {
    if Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

/// `dnsmasq` in `ns` with the options every test shares.
pub fn command(ns: &Netns) -> Command {
    let mut cmd = ns.command(binary());
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
    ]);
    cmd
}
