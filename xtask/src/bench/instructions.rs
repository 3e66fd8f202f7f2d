//! Part 3c: what the compiler does at each size, counted rather than timed.
//!
//! Valgrind's callgrind runs `fw-bench compile --repeat 1` and counts the
//! instructions executed inside `compile_phase` (`--toggle-collect`; the
//! parse before it is not counted) and, with its cache simulation sized
//! as this machine's L2, the data reads and writes that miss it. Both are
//! deterministic: where the nested policy's compile time grows faster
//! than its rules, they say whether the compiler does more work per rule
//! or the same work out of cache. Full runs only (a 100,000-rule policy
//! under valgrind takes a few minutes); the sizes run side by side.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::Tools;

/// One callgrind run per size, all at once: `{"l2_bytes", "rows": [{"rules",
/// "instructions", "l2_misses"}]}`.
pub fn count(tools: &Tools, sizes: &[usize], work: &Path) -> Result<Value> {
    let l2 = L2::of_this_machine()?;
    let runs: Vec<(usize, std::path::PathBuf, std::process::Child)> = sizes
        .iter()
        .map(|&rules| {
            let out = work.join(format!("callgrind.{rules}"));
            let child = Command::new("valgrind")
                .args(["--tool=callgrind", "--cache-sim=yes", "--toggle-collect=*compile_phase*"])
                .arg(format!("--LL={},{},{}", l2.bytes, l2.ways, l2.line))
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&tools.runner)
                .args(["compile", "--shape", "nested", "--repeat", "1", "--sizes", &rules.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("failed to start valgrind")?;
            Ok((rules, out, child))
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for (rules, out, child) in runs {
        let done = child.wait_with_output()?;
        if !done.status.success() {
            bail!("callgrind of {rules} rules failed: {}", String::from_utf8_lossy(&done.stderr).trim());
        }
        let (instructions, l2_misses) = summary(&std::fs::read_to_string(&out)?)
            .with_context(|| format!("{}: no callgrind summary", out.display()))?;
        rows.push(json!({ "rules": rules, "instructions": instructions, "l2_misses": l2_misses }));
    }
    Ok(json!({ "l2_bytes": l2.bytes, "rows": rows }))
}

/// (instructions, last-level data read + write misses) from the `events:`
/// and `summary:` lines of a callgrind output file.
fn summary(out: &str) -> Option<(u64, u64)> {
    let field = |prefix: &str| out.lines().find_map(|l| l.strip_prefix(prefix)).map(str::split_whitespace);
    let events: Vec<&str> = field("events:")?.collect();
    let values: Vec<u64> = field("summary:")?.map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let get = |name: &str| events.iter().position(|e| *e == name).and_then(|i| values.get(i)).copied();
    Some((get("Ir")?, get("DLmr")? + get("DLmw")?))
}

/// The L2 data cache of CPU 0 (sysfs), as valgrind's `--LL` wants it.
struct L2 {
    bytes: u64,
    ways: u64,
    line: u64,
}

impl L2 {
    fn of_this_machine() -> Result<L2> {
        let dir = Path::new("/sys/devices/system/cpu/cpu0/cache/index2");
        let read = |name: &str| -> Result<String> {
            Ok(std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("{}/{name}", dir.display()))?
                .trim()
                .to_string())
        };
        let size = read("size")?;
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<u64>()? * 1024,
            None => size.parse()?,
        };
        Ok(L2 { bytes, ways: read("ways_of_associativity")?.parse()?, line: read("coherency_line_size")?.parse()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_read_by_event_name() {
        let out = "version: 1\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\nfn=x\nsummary: 57 9 8 7 6 5 4 3 2\ntotals: 57 9 8 7 6 5 4 3 2\n";
        assert_eq!(summary(out), Some((57, 5)));
        assert_eq!(summary("events: Ir\nsummary: 12\n"), None, "no cache simulation: no misses to report");
    }
}
