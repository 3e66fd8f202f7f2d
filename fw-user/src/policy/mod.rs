//! The policy language: YAML in, a validated [`ir::Policy`] out.
//!
//! This folder is the pure core of fw: text in, tables and verdicts out,
//! with no kernel, async runtime or libc (tests/architecture.rs checks its
//! imports). Reading files is `crate::source`'s.
//!
//! Pipeline (one concern per module):
//! * [`yaml`] loads the file's one YAML document into a tree that keeps
//!   every node's line and column;
//! * [`raw`] reads that tree into structs, rejecting unknown keys and
//!   wrong shapes;
//! * [`vars`] expands `${NAME}` from an env file or the environment;
//! * [`address`] and [`protocols`] give meaning to peer entries and to
//!   protocols/ports;
//! * [`lower`] validates and normalizes into [`ir`], resolving host names;
//! * [`lint`] finds what is legal but suspicious (needs the compiled phases);
//! * [`compile`] turns a phase into the kernel's tables; [`eval`] is the
//!   reference evaluator the compiler is tested against (kept apart from
//!   it); [`explain`], [`export`] and [`report`] read the tables.
//!
//! Public API:
//! * [`parse_str`]`(text, file, &Vars)`: the same from a string (`file` only
//!   labels diagnostics);
//! * [`parse_str_with_resolver`]`(text, file, &Vars, &Resolve)`: with the
//!   resolver given (tests use a fake one, never real DNS);
//! * [`Vars::from_env_text`], [`Vars::from_process_env`], [`Vars::from_pairs`];
//! * [`lint::lint`]`(&Policy, &[CompiledPhase], ephemeral ports) -> Vec<Warning>`.
//!
//! The semantics are written out in `docs/policy.md`.

mod address;
pub mod compile;
pub mod error;
pub mod eval;
pub mod explain;
pub mod export;
pub mod ir;
pub mod lint;
mod lower;
pub mod names;
pub mod preflight;
pub mod protocols;
mod raw;
pub mod report;
pub mod vars;
mod yaml;

use std::net::{IpAddr, ToSocketAddrs};

pub use self::{
    error::{ErrorKind, PolicyError, Warning},
    vars::Vars,
};

/// A validated policy and what loading it had to say.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    pub policy: ir::Policy,
    /// Warnings of loading: host bits, resolved and wildcard names, optional
    /// rules left out. `fw check` adds those of [`lint::lint`].
    pub warnings: Vec<Warning>,
}

/// Resolves a host name to all its addresses (A and AAAA), or says why not.
pub type Resolve = dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// The system resolver (`getaddrinfo`, so /etc/hosts and DNS).
pub fn system_resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    (host, 0u16).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect()).map_err(|e| e.to_string())
}

/// Validates policy text, resolving names with the system resolver; `file`
/// is only used in diagnostics.
pub fn parse_str(text: &str, file: &str, vars: &Vars) -> Result<LoadedPolicy, PolicyError> {
    parse_str_with_resolver(text, file, vars, &system_resolve)
}

/// [`parse_str`] with the host-name resolver given.
pub fn parse_str_with_resolver(
    text: &str,
    file: &str,
    vars: &Vars,
    resolve: &Resolve,
) -> Result<LoadedPolicy, PolicyError> {
    let raw = raw::parse(file, text)?;
    let (policy, warnings) = lower::lower(file, raw, vars, resolve)?;
    Ok(LoadedPolicy { policy, warnings })
}
