//! The kernel's flow tables as userspace reads them. Each table (protected,
//! probation) is two maps, one per address family: the IPv4 one keyed by
//! the 16-byte [`FlowKey4`], the IPv6 one by the 40-byte [`FlowKey`] (see
//! `fw_common::flow`: the key's size is most of an established packet's
//! cost). Userspace sees one table of [`FlowKey`]s either way.

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError};
use fw_common::{FlowKey, FlowKey4, FlowValue};

use super::batch;

/// One flow table: its IPv4 and its IPv6 map.
pub struct FlowTable {
    pub v4: HashMap<MapData, FlowKey4, FlowValue>,
    pub v6: HashMap<MapData, FlowKey, FlowValue>,
}

impl FlowTable {
    /// From the two maps named in `names` (`fw_common::maps::FLOWS` or
    /// `FLOWS_IN`: IPv4 first), in whatever way `open` gets a map.
    pub fn new(names: [&str; 2], mut open: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let [n4, n6] = names;
        Ok(Self {
            v4: HashMap::try_from(open(n4)?).with_context(|| format!("{n4}: not an IPv4 flow table"))?,
            v6: HashMap::try_from(open(n6)?).with_context(|| format!("{n6}: not an IPv6 flow table"))?,
        })
    }

    /// Every entry, IPv4 keys widened to [`FlowKey`].
    pub fn iter(&self) -> impl Iterator<Item = Result<(FlowKey, FlowValue), MapError>> + '_ {
        self.v4.iter().map(|r| r.map(|(k, v)| (k.widen(), v))).chain(self.v6.iter())
    }

    /// Calls `visit` with every entry, read in batches (a full table in a
    /// few dozen system calls), IPv4 keys widened to [`FlowKey`].
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, &FlowValue)) -> Result<()> {
        batch::for_each::<FlowKey4, FlowValue>(self.v4.map(), |k, v| visit(&k.widen(), v))?;
        batch::for_each::<FlowKey, FlowValue>(self.v6.map(), visit)
    }

    /// Every key, IPv4 keys widened to [`FlowKey`].
    pub fn keys(&self) -> impl Iterator<Item = Result<FlowKey, MapError>> + '_ {
        self.v4.keys().map(|r| r.map(|k| k.widen())).chain(self.v6.keys())
    }

    pub fn get(&self, key: &FlowKey, flags: u64) -> Result<FlowValue, MapError> {
        match key.narrow() {
            Some(k4) => self.v4.get(&k4, flags),
            None => self.v6.get(key, flags),
        }
    }

    pub fn insert(&mut self, key: &FlowKey, value: &FlowValue, flags: u64) -> Result<(), MapError> {
        match key.narrow() {
            Some(k4) => self.v4.insert(k4, value, flags),
            None => self.v6.insert(key, value, flags),
        }
    }

    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        match key.narrow() {
            Some(k4) => self.v4.remove(&k4),
            None => self.v6.remove(key),
        }
    }
}

/// Calls `visit` with every entry of a flow table's two maps (`maps`: IPv4
/// first, as [`FlowTable`]), read in batches ([`batch::for_each`]), IPv4
/// keys widened to [`FlowKey`].
pub fn for_each(maps: &[MapData; 2], mut visit: impl FnMut(&FlowKey, &FlowValue)) -> Result<()> {
    batch::for_each::<FlowKey4, FlowValue>(&maps[0], |k, v| visit(&k.widen(), v))?;
    batch::for_each::<FlowKey, FlowValue>(&maps[1], visit)
}
