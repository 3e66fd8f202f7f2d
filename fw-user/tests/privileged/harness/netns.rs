//! Network namespaces and the veth pair that joins two of them.
//!
//! Veths are created directly inside their namespaces (`ip link add ...
//! netns NS`), so nothing ever appears in the root namespace, and deleting
//! the namespaces deletes them.

use std::{
    ffi::OsStr,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{self, Command, Output},
    time::Duration,
};

use super::{owner_pid, pid_alive, PREFIX};

const NETNS_DIR: &str = "/run/netns";
const PIN_ROOT: &str = "/sys/fs/bpf/fw";
const FW_RUN_DIR: &str = "/run/fw";

/// Runs `cmd` to completion; panics with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace (`/run/netns/NAME`) with loopback up,
/// deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        assert!(owner_pid(&name).is_some(), "{name} must come from unique_name()");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        // Like any host: loopback up (a new namespace has it down).
        ns.ip(&["link", "set", "dev", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `program` to be run inside this namespace: the child joins it with
    /// setns() between fork and exec (like `nsenter --net`, and unlike `ip
    /// netns exec` it keeps this mount namespace, so bpffs stays visible).
    /// The child is also killed if the thread that started it dies first.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let ns = fs::File::open(self.path()).unwrap_or_else(|e| panic!("opening {}: {e}", self.path().display()));
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
        // setns) on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// `sysctl -w KEY=VALUE` in this namespace (the `net.*` keys are per
    /// namespace), which must succeed.
    pub fn sysctl(&self, key: &str, value: &str) {
        run_ok(self.command("sysctl").args(["-q", "-w", &format!("{key}={value}")]));
    }

    /// Output of `ip -n NAME ARGS`, which must succeed.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `dev` reports operstate UP: before that the kernel may
    /// still drop packets on it (no qdisc activated yet). A bounded poll of a
    /// kernel state, not a sleep standing in for it.
    pub fn wait_link_up(&self, dev: &str) {
        for _ in 0..300 {
            let out = run_ok(Command::new("ip").args(["-n", &self.name, "-o", "link", "show", "dev", dev]));
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{dev} in {} did not come up within 3 s", self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "del", &self.name]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// A veth pair with one end in `a`, the other in `b`, both down and
/// without addresses; returns (name in `a`, name in `b`). Created inside the
/// namespaces: nothing appears in the root namespace.
pub fn veth(a: &Netns, b: &Netns) -> (String, String) {
    // fw<pid mod 100000><n>a: at most 15 characters (IFNAMSIZ - 1).
    let tag = format!("fw{}{}", process::id() % 100_000, super::next_n());
    let (a_if, b_if) = (format!("{tag}a"), format!("{tag}b"));
    assert!(a_if.len() <= 15, "{a_if} is longer than IFNAMSIZ allows");
    veth_named(a, &a_if, b, &b_if);
    (a_if, b_if)
}

/// A veth pair named `a_if` in `a` and `b_if` in `b` (down, no addresses).
fn veth_named(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run_ok(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
}

/// Gives `dev` in `ns` an IPv4 /24 and an IPv6 /64 (`nodad`) and brings it
/// up.
pub fn address(ns: &Netns, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
    ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
    ns.ip(&["link", "set", "dev", dev, "up"]);
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

/// Removes namespaces, pin directories, fw state files and scratch
/// directories named `fwt-<pid>-...` whose pid is no longer alive: what a
/// test run killed before its guards ran left behind. Leaves everything
/// else, including the leftovers of runs that are still going.
pub fn sweep_leftovers() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| pid != process::id() && !pid_alive(pid));
    for name in names_in(Path::new(NETNS_DIR)).into_iter().filter(|n| dead(n)) {
        eprintln!("sweeping leftover namespace {name}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
    for dir in [Path::new(PIN_ROOT), Path::new(FW_RUN_DIR), Path::new(super::fw::FW_LIB_DIR), &std::env::temp_dir()] {
        for name in names_in(dir).into_iter().filter(|n| dead(n)) {
            let path = dir.join(&name);
            eprintln!("sweeping leftover {}", path.display());
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(PREFIX)).collect()
        })
        .unwrap_or_default()
}
