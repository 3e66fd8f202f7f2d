//! The mount table, read once per question from /proc/mounts.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// (mount point, filesystem type) of every mount, in table order.
pub fn mounts() -> Result<Vec<(PathBuf, String)>> {
    let table = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(table
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_device, dir, fstype) = (f.next(), f.next()?, f.next()?);
            Some((PathBuf::from(dir), fstype.to_string()))
        })
        .collect())
}
