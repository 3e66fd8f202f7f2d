//! Facts of this host that checking a policy depends on, read here so that
//! the policy core (`policy::lint`, `policy::preflight`) stays free of
//! files: the ephemeral port range, and for `fw preflight` what the host
//! needs at run time ([`facts`]).

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
};

use fw_common::policy::proto::{TCP, UDP};

use super::resolv_conf;
use crate::policy::{
    ir::PortRange,
    preflight::{HostFacts, Served, Sourced},
};

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

/// What the host at `root` needs at run time (`/` but in tests, which
/// give a tree of their own; `/proc` is always this process's, so the
/// ports served are those of its network namespace).
pub fn facts(root: &Path) -> HostFacts {
    let resolvers = resolv_conf::system_resolvers_under(root)
        .into_iter()
        .map(|value| Sourced { value, from: format!("/{}", resolv_conf::RESOLV_CONF) })
        .collect();
    let served = listening(Path::new("/proc"), ephemeral_range()).into_iter().chain(published_ports()).collect();
    HostFacts { resolvers, ntp: ntp_servers(root), dhcp_servers: dhcp_servers(root), served }
}

/// `root` + an absolute path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The files of `dir` whose names end in `suffix`, sorted.
fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The servers chrony and systemd-timesyncd are configured with, where
/// their configuration exists.
pub fn ntp_servers(root: &Path) -> Vec<Sourced<String>> {
    let mut chrony = vec![under(root, "/etc/chrony/chrony.conf"), under(root, "/etc/chrony.conf")];
    chrony.extend(files_in(&under(root, "/etc/chrony/sources.d"), ".sources"));
    chrony.extend(files_in(&under(root, "/etc/chrony/conf.d"), ".conf"));
    let mut timesyncd = vec![under(root, "/etc/systemd/timesyncd.conf")];
    timesyncd.extend(files_in(&under(root, "/etc/systemd/timesyncd.conf.d"), ".conf"));
    let mut out = Vec::new();
    for (files, parse) in [(chrony, parse_chrony as fn(&str) -> Vec<String>), (timesyncd, parse_timesyncd)] {
        for file in files {
            let Ok(text) = fs::read_to_string(&file) else { continue };
            let from = format!("/{}", file.strip_prefix(root).unwrap_or(&file).display());
            out.extend(parse(&text).into_iter().map(|value| Sourced { value, from: from.clone() }));
        }
    }
    out
}

/// chrony.conf's `server`, `pool` and `peer` directives.
fn parse_chrony(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            matches!(words.next()?, "server" | "pool" | "peer").then_some(())?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// timesyncd.conf's `NTP=` (a later `NTP=` replaces the list; an empty
/// one clears it).
fn parse_timesyncd(text: &str) -> Vec<String> {
    let mut servers = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.trim().strip_prefix("NTP=") {
            servers = value.split_whitespace().map(str::to_string).collect();
        }
    }
    servers
}

/// OpenVidu 3.x's LiveKit webhooks: `webhook.urls` of the `livekit.yaml`
/// in `dir` (the directory of `openvidu.env`), as a list-valued variable
/// (`["https://a", "https://b"]`); `None` without the file or the key.
pub fn livekit_webhook_urls(dir: &Path) -> Option<Sourced<String>> {
    let path = dir.join("livekit.yaml");
    let text = fs::read_to_string(&path).ok()?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).ok()?;
    let urls: Vec<String> =
        docs.first()?["webhook"]["urls"].as_vec()?.iter().filter_map(|u| u.as_str().map(str::to_string)).collect();
    (!urls.is_empty()).then(|| Sourced {
        value: serde_json::to_string(&urls).expect("strings serialize"),
        from: format!("{} webhook.urls", path.display()),
    })
}

/// `key`'s value in the KEY=VALUE file `file` of `dir` (OpenVidu 3.x keeps
/// `meet.env` and `v2compatibility.env` beside `openvidu.env`); `None`
/// without the file, the key, or a value.
pub fn env_file_value(dir: &Path, file: &str, key: &str) -> Option<Sourced<String>> {
    let path = dir.join(file);
    let text = fs::read_to_string(&path).ok()?;
    let vars = crate::policy::Vars::from_env_text(&path.display().to_string(), &text).ok()?;
    let value = vars.get_from_file(key)?;
    Some(Sourced { value, from: format!("{} {key}", path.display()) })
}

/// The DHCP servers of the leases of dhclient (its own and
/// NetworkManager's) and systemd-networkd.
pub fn dhcp_servers(root: &Path) -> Vec<Sourced<IpAddr>> {
    let mut out = Vec::new();
    let dhclient = ["/var/lib/dhcp", "/var/lib/dhclient", "/var/lib/NetworkManager"].iter().flat_map(|dir| {
        files_in(&under(root, dir), ".leases").into_iter().chain(files_in(&under(root, dir), ".lease"))
    });
    let networkd = files_in(&under(root, "/run/systemd/netif/leases"), "");
    for (file, parse) in dhclient
        .map(|f| (f, parse_dhclient_lease as fn(&str) -> Option<IpAddr>))
        .chain(networkd.into_iter().map(|f| (f, parse_networkd_lease as fn(&str) -> Option<IpAddr>)))
    {
        let Some(value) = fs::read_to_string(&file).ok().as_deref().and_then(parse) else { continue };
        let from = format!("/{}", file.strip_prefix(root).unwrap_or(&file).display());
        if !out.iter().any(|s: &Sourced<IpAddr>| s.value == value) {
            out.push(Sourced { value, from });
        }
    }
    out
}

/// The server of the newest lease (the last one) in a dhclient lease file:
/// `option dhcp-server-identifier 10.0.0.1;`.
fn parse_dhclient_lease(text: &str) -> Option<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("option dhcp-server-identifier "))
        .filter_map(|rest| rest.trim_end_matches(';').trim().parse().ok())
        .next_back()
}

/// systemd-networkd's lease file: `SERVER_ADDRESS=10.0.0.1`.
fn parse_networkd_lease(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| line.strip_prefix("SERVER_ADDRESS=")?.trim().parse().ok())
}

/// Sockets listening for other hosts in `proc`'s `net/` tables: TCP in
/// LISTEN, UDP bound and unconnected outside the ephemeral range (a UDP
/// socket on an ephemeral port is a client's), loopback left out. Named
/// by the process that holds them when it can be found.
pub fn listening(proc: &Path, ephemeral: Option<PortRange>) -> Vec<Served> {
    let mut sockets = Vec::new();
    for (table, proto) in [("tcp", TCP), ("tcp6", TCP), ("udp", UDP), ("udp6", UDP)] {
        let Ok(text) = fs::read_to_string(proc.join("net").join(table)) else { continue };
        for socket in parse_proc_net(&text, proto) {
            let client_port =
                proto == UDP && ephemeral.is_some_and(|r| r.first <= socket.port && socket.port <= r.last);
            if !socket.addr.is_loopback() && !client_port {
                sockets.push((socket, table));
            }
        }
    }
    let owners = if sockets.is_empty() { HashMap::new() } else { socket_owners(proc) };
    sockets
        .into_iter()
        .map(|(s, table)| {
            let who = owners.get(&s.inode).cloned().unwrap_or_else(|| "a process".to_string());
            Served { proto: s.proto, port: s.port, by: format!("{who}, /proc/net/{table}") }
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Socket {
    proto: u8,
    addr: IpAddr,
    port: u16,
    inode: u64,
}

/// Rows of /proc/net/{tcp,udp}{,6} that listen: TCP state 0A, UDP state
/// 07 with no remote address.
fn parse_proc_net(text: &str, proto: u8) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            let listens = if proto == TCP { *state == "0A" } else { *state == "07" && remote_is_unset(remote) };
            if !listens {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some(Socket {
                proto,
                addr: kernel_addr(addr)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

fn remote_is_unset(remote: &str) -> bool {
    remote.split_once(':').is_some_and(|(addr, port)| addr.bytes().all(|b| b == b'0') && port == "0000")
}

/// The kernel's hex address: 8 digits (one host-order u32) or 32 (four).
fn kernel_addr(hex: &str) -> Option<IpAddr> {
    let words: Vec<u32> =
        (0..hex.len() / 8).map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()).collect::<Option<_>>()?;
    match words.as_slice() {
        [w] => Some(Ipv4Addr::from(w.to_le_bytes()).into()),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            Some(Ipv6Addr::from(bytes).into())
        }
        _ => None,
    }
}

/// Socket inode -> `comm[pid]`, from the `socket:[INODE]` links of every
/// process's descriptors (those this user may read).
fn socket_owners(proc: &Path) -> HashMap<u64, String> {
    let mut owners = HashMap::new();
    for entry in fs::read_dir(proc).into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        for fd in fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten() {
            let Ok(link) = fs::read_link(fd.path()) else { continue };
            let link = link.to_string_lossy();
            if let Some(inode) = link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(inode) = inode.parse() {
                    owners.entry(inode).or_insert_with(|| format!("{}[{pid}]", comm.trim()));
                }
            }
        }
    }
    owners
}

/// Ports that podman or docker publish (`ps --format`): with netavark
/// they are nftables DNAT rules, not listening sockets, so /proc/net does
/// not show them.
fn published_ports() -> Vec<Served> {
    let mut out = Vec::new();
    for engine in ["podman", "docker"] {
        let Ok(ps) = Command::new(engine).args(["ps", "--format", "{{.Names}}\t{{.Ports}}"]).output() else { continue };
        if !ps.status.success() {
            continue;
        }
        for line in String::from_utf8_lossy(&ps.stdout).lines() {
            let Some((name, ports)) = line.split_once('\t') else { continue };
            out.extend(parse_published(ports).into_iter().map(|(proto, port)| Served {
                proto,
                port,
                by: format!("container {name}, {engine} ps"),
            }));
        }
    }
    out
}

/// `0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, 127.0.0.1:9000->9000/tcp`:
/// the host ports published beyond loopback.
fn parse_published(ports: &str) -> Vec<(u8, u16)> {
    ports
        .split(", ")
        .filter_map(|p| {
            let (host, inner) = p.trim().split_once("->")?;
            let proto = match inner.rsplit_once('/')?.1 {
                "tcp" => TCP,
                "udp" => UDP,
                _ => return None,
            };
            let (addr, port) = host.rsplit_once(':')?;
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            if addr.parse::<IpAddr>().is_ok_and(|a| a.is_loopback()) {
                return None;
            }
            // A published range (`0.0.0.0:50000-50010->...`): its first port.
            Some((proto, port.split('-').next()?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrony_and_timesyncd_name_their_servers() {
        let chrony =
            "# Use Debian vendor zone.\npool 2.debian.pool.ntp.org iburst\nserver 169.254.169.123 prefer iburst\n\
                      driftfile /var/lib/chrony/chrony.drift\n#server 10.0.0.9\n";
        assert_eq!(parse_chrony(chrony), ["2.debian.pool.ntp.org", "169.254.169.123"]);
        assert_eq!(
            parse_timesyncd("[Time]\n#NTP=\nNTP=a.example b.example\nFallbackNTP=c.example\n"),
            ["a.example", "b.example"]
        );
        assert!(parse_timesyncd("[Time]\n").is_empty());
    }

    #[test]
    fn leases_name_their_server() {
        let dhclient = "lease {\n  interface \"eth0\";\n  option dhcp-server-identifier 10.0.0.1;\n}\n\
                        lease {\n  option dhcp-server-identifier 10.0.0.2;\n}\n";
        assert_eq!(parse_dhclient_lease(dhclient), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            parse_networkd_lease("ADDRESS=10.0.0.5\nSERVER_ADDRESS=10.0.0.1\n"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_networkd_lease("ADDRESS=10.0.0.5\n"), None);
    }

    #[test]
    fn proc_net_rows_that_listen() {
        let tcp =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                   0: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1\n   \
                   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1\n   \
                   2: 0200A8C0:C350 0100A8C0:01BB 01 00000000:00000000 00:00000000 00000000     0        0 1236 1\n";
        let rows = parse_proc_net(tcp, TCP);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].addr, rows[0].port, rows[0].inode), ("0.0.0.0".parse().unwrap(), 8443, 1234));
        assert_eq!(rows[1].addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        let tcp6 = "header\n 0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 0 0 0 0 0 99 1\n";
        assert_eq!(parse_proc_net(tcp6, TCP)[0].addr, "::1".parse::<IpAddr>().unwrap());
        let udp = "header\n 0: 00000000:0D96 00000000:0000 07 0 0 0 0 0 77 1\n 1: 00000000:9C40 0100A8C0:0035 01 0 0 0 0 0 78 1\n";
        assert_eq!(parse_proc_net(udp, UDP).iter().map(|s| s.port).collect::<Vec<_>>(), [3478]);
    }

    #[test]
    fn livekit_webhooks_and_openvidu_env_files_beside_the_env_file() {
        let dir = std::env::temp_dir().join(format!("fw-host-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("livekit.yaml"),
            "port: 7880\nwebhook:\n  api_key: k\n  urls:\n    - http://hooks.example:8443/a\n    - 'https://b.example'\n",
        )
        .unwrap();
        fs::write(dir.join("meet.env"), "# meet\nMEET_INITIAL_WEBHOOK_URL=https://meet.example/hook\nOTHER=\n")
            .unwrap();
        let urls = livekit_webhook_urls(&dir);
        let meet = env_file_value(&dir, "meet.env", "MEET_INITIAL_WEBHOOK_URL");
        let other = env_file_value(&dir, "meet.env", "OTHER");
        let missing = env_file_value(&dir, "v2compatibility.env", "V2COMPAT_OPENVIDU_WEBHOOK_ENDPOINT");
        fs::write(dir.join("livekit.yaml"), "port: 7880\n").unwrap();
        let no_webhook = livekit_webhook_urls(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(urls.unwrap().value, r#"["http://hooks.example:8443/a","https://b.example"]"#);
        assert_eq!(meet.unwrap().value, "https://meet.example/hook");
        assert_eq!((other, missing, no_webhook), (None, None, None));
    }

    #[test]
    fn published_ports_beyond_loopback() {
        assert_eq!(
            parse_published(
                "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, 127.0.0.1:9000->9000/tcp, 0.0.0.0:3478->3478/udp"
            ),
            [(TCP, 8080), (TCP, 8080), (UDP, 3478)]
        );
        assert!(parse_published("").is_empty());
    }

    #[test]
    fn the_sysctl_text_becomes_a_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(PortRange { first: 32768, last: 60999 }));
        assert_eq!(parse_port_range("61000 32768\n"), None);
        assert_eq!(parse_port_range("garbage"), None);
    }
}
