//! The lab that fw's privileged tests and its benchmark (`cargo xtask
//! bench`) share, so that both build their worlds the same way and clean
//! them up the same way:
//!
//! * [`names`]: names unique to this run that carry the owner's pid, so a
//!   later run can tell a leftover from something still in use;
//! * [`netns`]: network namespaces and veth pairs, created inside their
//!   namespaces (nothing ever appears in the root one), deleted on drop;
//! * [`process`]: child processes killed by their pid on drop;
//! * [`sweep`]: removal of what a killed run left behind (namespaces and
//!   the processes in them, fw instances, pins, state files);
//! * [`rng`]: one deterministic generator (SplitMix64), so that a printed
//!   seed reproduces a test or a benchmark policy.
//!
//! Dev-only: nothing here ships in `fw`.

pub mod names;
pub mod netns;
pub mod process;
pub mod rng;
pub mod sweep;
