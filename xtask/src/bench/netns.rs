//! The bench's namespace pairs, on the lab the privileged tests use too
//! (`fw-lab`: namespaces and processes are Drop guards, and a sweep at the
//! start removes what an earlier, killed run left behind).
//!
//! Names are `fwb-<pid>-<n>...`, so the sweep only ever touches leftovers
//! of bench runs whose process is gone.

use std::path::Path;

use anyhow::Result;
use fw_lab::netns::{address, veth, Netns};
pub use fw_lab::process::Guarded;

const PREFIX: &str = "fwb";

/// Address of the sending side; the receiver's is in the generated policy.
pub const SENDER4: &str = "198.18.200.1";
pub const RECEIVER4: &str = "198.18.200.2";
pub const SENDER6: &str = "2001:db8:c8::1";
pub const RECEIVER6: &str = "2001:db8:c8::2";
/// The veth end in the sender's namespace, where every filter goes.
pub const IFACE: &str = "va";

/// Reads `stdout` to its end on a thread of its own: a child whose output
/// nobody reads blocks on a full pipe, and one whose reader is gone loses
/// its lines.
pub fn keep_draining(stdout: std::process::ChildStdout) {
    std::thread::spawn(move || std::io::copy(&mut std::io::BufReader::new(stdout), &mut std::io::sink()));
}

/// `fwb-<pid>-<n>-tag`: a name of this run.
pub fn name(tag: &str) -> String {
    format!("{}-{tag}", fw_lab::names::unique(PREFIX))
}

/// Removes namespaces (and the processes in them), fw instances and pins
/// left by bench runs that died; `fw` stops their instances properly.
pub fn sweep(fw: &Path) {
    fw_lab::sweep::sweep(PREFIX, Some(fw), &[]);
}

/// Two namespaces joined by a veth pair: `va` in `a` (sender, filtered) and
/// `vb` in `b` (receiver). Deleted on drop.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

impl Pair {
    pub fn new(tag: &str) -> Result<Pair> {
        let a = Netns::create(name(&format!("{tag}a")))?;
        let b = Netns::create(name(&format!("{tag}b")))?;
        veth(&a, IFACE, &b, "vb")?;
        address(&a, IFACE, SENDER4.parse()?, SENDER6.parse()?)?;
        address(&b, "vb", RECEIVER4.parse()?, RECEIVER6.parse()?)?;
        a.wait_link_up(IFACE)?;
        b.wait_link_up("vb")?;
        Ok(Pair { a, b })
    }
}
