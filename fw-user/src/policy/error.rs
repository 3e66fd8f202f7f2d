//! Diagnostics of the policy front end: [`PolicyError`] (the policy is
//! rejected) and [`Warning`] (accepted, but the operator should look).
//! Both render as `FILE:LINE:COL: message`, the format editors jump to.

use std::fmt;

use super::ir::Pos;

/// Why a policy (or an env file) was rejected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    /// 1-based; 0 when the problem has no position (unreadable file).
    pub line: usize,
    pub col: usize,
    pub kind: ErrorKind,
}

impl PolicyError {
    pub(crate) fn new(file: &str, pos: Pos, kind: ErrorKind) -> Self {
        PolicyError { file: file.to_string(), line: pos.line, col: pos.col, kind }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.kind)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.kind)
        }
    }
}

impl std::error::Error for PolicyError {}

/// Every way a policy can be wrong. Each message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Io(String),
    /// A FIFO, a device, a directory: reading it could block or never end.
    #[error("not a regular file but {0} (a policy or env file must be one)")]
    NotRegularFile(&'static str),
    #[error("larger than {limit_mib} MiB: not a policy or env file")]
    TooLarge { limit_mib: u64 },
    /// Positioned at the first byte that is not UTF-8.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// A policy is one YAML document; a reader would silently drop the rest.
    #[error("a second YAML document starts here: a policy file holds one document (remove the `---` or `...` line, or split the file)")]
    SecondDocument,
    /// The first document ended before the text does, without a `---`: a
    /// top-level line indented less than the first (YAML ends the
    /// document there; a reader would silently drop the rest).
    #[error("the policy's top level ends here but the file goes on: indent this line as the policy's first key is indented (a policy file holds one YAML document)")]
    TopLevelEnds,
    /// Not well-formed YAML (or YAML features the language does not use:
    /// anchors, tags, non-scalar keys).
    #[error("YAML syntax: {0}")]
    Syntax(String),
    /// The same key twice in one mapping.
    #[error("duplicate key `{key}` (first at line {first_line})")]
    DuplicateKey { key: String, first_line: usize },
    /// A node of the wrong shape, e.g. a mapping where a list was expected.
    #[error("{what}: expected {expected}, found {found}")]
    WrongType { what: String, expected: &'static str, found: &'static str },
    /// A key the language does not know (typos are errors, not ignored).
    #[error("unknown key `{key}` in {context} (expected one of: {})", expected.join(", "))]
    UnknownKey { key: String, context: &'static str, expected: &'static [&'static str] },
    #[error("{context} is missing the required key `{key}`")]
    MissingKey { key: &'static str, context: String },
    /// A value outside a fixed set of words.
    #[error("`{key}: {value}` is not valid (expected {expected})")]
    InvalidValue { key: &'static str, value: String, expected: &'static str },
    /// A `timeouts:` value that is no duration, or out of bounds.
    #[error("`timeouts.{key}: {value}`: {problem}")]
    BadTimeout { key: String, value: String, problem: String },
    #[error("an empty list for `{key}` matches nothing (leave the key out to match any, or write `any`)")]
    EmptyList { key: &'static str },
    #[error("phase `{phase}` extends `{parent}`, which is not a phase of this policy (phases: {}) nor a builtin one (essentials)", known.join(", "))]
    UnknownPhase { phase: String, parent: String, known: Vec<String> },
    #[error("phases extend each other in a cycle: {}", cycle.join(" -> "))]
    ExtendsCycle { cycle: Vec<String> },
    #[error("the policy has no phases (expected a `phases:` mapping with at least one phase)")]
    NoPhases,
    #[error("a rule named `{name}` already exists at line {first_line} (rule names are unique across all phases)")]
    DuplicateRuleName { name: String, first_line: usize },
    /// `to` in an inbound rule or `from` in an egress rule.
    #[error("{direction} rules name their peer with `{expected}`, not `{found}`")]
    WrongPeerKey { direction: &'static str, expected: &'static str, found: String },
    #[error("unknown protocol `{0}` (expected tcp, udp, icmp, icmpv6, sctp or any)")]
    UnknownProtocol(String),
    #[error("`proto: any` takes no ports (name the protocols, e.g. `proto: [tcp, udp]`)")]
    PortsWithAnyProtocol,
    #[error("ports without a protocol: say which one, e.g. `proto: tcp`")]
    PortsWithoutProtocol,
    #[error(
        "protocol without ports where ports are needed: {proto} matches by port (write `ports: any` for all ports)"
    )]
    MissingPorts { proto: String },
    #[error(
        "ports mean port numbers for {port_protocols} but type/code for {icmp_protocols}: write one rule for each"
    )]
    MixedPortMeaning { port_protocols: String, icmp_protocols: String },
    #[error("`{0}` is not a port (expected a number 1-65535, a range \"a-b\", or any)")]
    BadPort(String),
    #[error("{0} out of bounds (ports are 1-65535)")]
    PortOutOfBounds(String),
    #[error("port range {0} is inverted (write the lower port first)")]
    InvertedRange(String),
    #[error("`{0}` is not an ICMP type (expected a type 0-255 or \"type/code\", e.g. 8 or \"3/4\", or any)")]
    BadIcmpType(String),
    #[error("`{0}` is not an address (expected an IPv4/IPv6 address or CIDR, `any`, a named address set, a host name or an http(s) URL)")]
    BadAddress(String),
    /// `010.0.0.1` (octal to the resolver), `1.2.3`, `2130706433`,
    /// `0x7f.1`: forms `inet_aton` reads as an address, each differently
    /// from how it looks; never passed to the resolver.
    #[error(
        "`{0}` is not an address: use dotted-quad (four decimal numbers 0-255 without leading zeros, \
         e.g. 10.0.0.1) or an IPv6 address; a name that is all numbers is never resolved"
    )]
    NumericName(String),
    #[error("cannot resolve host name `{host}`: {reason} (mark the rule `optional: true` to leave it out instead)")]
    UnresolvedHost { host: String, reason: String },
    /// A name entry that is not a name or whose `*` is misplaced.
    #[error("`{name}` is not a DNS name pattern: {why}")]
    BadName { name: String, why: &'static str },
    /// A wildcard (or any run-time name) in a phase without `dns:`.
    #[error(
        "`{name}` is a DNS name tracked at run time, which needs `dns: {{ resolvers: [...] }}` in phase `{phase}` \
         (or in a phase it extends): the resolvers its answers come from"
    )]
    NameNeedsResolvers { name: String, phase: String },
    /// A deny rule, or an inbound rule, naming a DNS name in a phase with `dns:`.
    #[error("`{name}`: DNS names are tracked only in egress allow rules (`to:`), not in {what}")]
    NameInWrongRule { name: String, what: &'static str },
    #[error("`{0}` is not a resolver (expected `system`, an IPv4 or IPv6 address, or ${{VAR}} holding addresses)")]
    BadResolver(String),
    #[error("phase `{phase}` has {count} {family} resolvers; at most {max} are supported")]
    TooManyResolvers { phase: String, family: &'static str, count: usize, max: usize },
    #[error("variable `{0}` is not set or empty (set it in the env file or the environment, or mark the rule `optional: true`)")]
    UnsetVariable(String),
    #[error("variable `{name}`: {problem}")]
    BadListVariable { name: String, problem: String },
    #[error("malformed variable reference in `{0}` (expected ${{NAME}})")]
    MalformedVariable(String),
    #[error("env file line is not KEY=VALUE: `{0}`")]
    BadEnvLine(String),
}

/// Something `fw check` reports without rejecting the policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Stable short name: `host-bits`, `resolved-host`,
    /// `optional-left-out`, `shadowed-rule`, `open-egress`,
    /// `allow-everything`, `ephemeral-overlap`.
    /// (Owned only when read back from a precompiled phase.)
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
}

impl Warning {
    pub(crate) fn new(file: &str, pos: Pos, code: &'static str, message: String) -> Self {
        Warning { file: file.to_string(), line: pos.line, col: pos.col, code: code.into(), message }
    }

    /// The runtime phase's egress allows every address on every port (see
    /// [`super::lint`]): a phase that should not be applied without the
    /// operator insisting.
    pub fn is_open_egress(&self) -> bool {
        self.code == super::lint::OPEN_EGRESS
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: warning: {}", self.file, self.line, self.col, self.message)
    }
}
