//! The policy exactly as written: YAML nodes read into structs that keep the
//! position of every value, with the shape checked (unknown keys, lists where
//! lists belong) but no meaning given yet. Values are still strings, with
//! `${VARS}` unexpanded; [`super::lower`] validates and normalizes them.

use fw_common::Direction;

pub(crate) use super::yaml::Text;
use super::{
    error::{ErrorKind, PolicyError},
    ir::Pos,
    yaml::{self, Mapping, Node},
};

/// A key's value that may be written as one scalar or as a list of scalars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TextList {
    /// Position of the key, for errors about the whole list.
    pub key_pos: Pos,
    pub items: Vec<Text>,
}

#[derive(Debug)]
pub(crate) struct RawPolicy {
    pub name: Option<Text>,
    /// Named address sets, in file order.
    pub addresses: Vec<(Text, TextList)>,
    pub phases: Vec<RawPhase>,
    /// Position of the `phases` key (or of the document when absent).
    pub phases_pos: Pos,
}

#[derive(Debug)]
pub(crate) struct RawPhase {
    pub name: Text,
    pub extends: Option<Text>,
    pub inbound_default: Option<Text>,
    pub egress_default: Option<Text>,
    pub mode: Option<Text>,
    pub reject: Option<Text>,
    pub dns: Option<RawDns>,
    /// `timeouts:`: (key, value) pairs in file order.
    pub timeouts: Vec<(Text, Text)>,
    pub rules: Vec<RawRule>,
}

/// `dns: { resolvers: [...], queries: any|policy, refuse_with: refused|nxdomain,
/// min_ttl: SECONDS, max_addresses_per_name: N, max_addresses: N }`.
#[derive(Debug)]
pub(crate) struct RawDns {
    /// Position of the `dns` key.
    pub key_pos: Pos,
    pub resolvers: Option<TextList>,
    pub queries: Option<Text>,
    pub refuse_with: Option<Text>,
    pub min_ttl: Option<Text>,
    pub max_per_name: Option<Text>,
    pub max_total: Option<Text>,
}

#[derive(Debug)]
pub(crate) struct RawRule {
    /// Where the rule's mapping starts; also what orders rules (file order).
    pub pos: Pos,
    pub direction: Direction,
    pub name: Option<Text>,
    /// `to` (egress) or `from` (inbound).
    pub peers: Option<TextList>,
    pub proto: Option<TextList>,
    pub ports: Option<TextList>,
    pub action: Option<Text>,
    pub optional: Option<(Pos, bool)>,
}

const POLICY_KEYS: &[&str] = &["name", "addresses", "phases"];
const PHASE_KEYS: &[&str] =
    &["extends", "inbound_default", "egress_default", "mode", "reject", "dns", "timeouts", "inbound", "egress"];
const DNS_KEYS: &[&str] =
    &["resolvers", "queries", "refuse_with", "min_ttl", "max_addresses_per_name", "max_addresses"];
/// The keys of a phase's `timeouts:` mapping.
pub(crate) const TIMEOUT_KEYS: &[&str] = &["tcp_established", "tcp_closing", "udp", "other"];
const EGRESS_RULE_KEYS: &[&str] = &["name", "to", "proto", "ports", "action", "optional"];
const INBOUND_RULE_KEYS: &[&str] = &["name", "from", "proto", "ports", "action", "optional"];

/// Parses `text` (the contents of `file`) into the raw policy. A leading
/// UTF-8 BOM is skipped; a second YAML document is an error (the loader
/// would drop it silently).
pub(crate) fn parse(file: &str, text: &str) -> Result<RawPolicy, PolicyError> {
    let root = yaml::load(file, skip_bom(text))?;
    Reader { file }.policy(root)
}

/// Reads the tree into the raw structs, taking its strings. A mapping's
/// keys are checked before its values are read, so the first error of a
/// mapping's own keys wins over errors inside its values.
struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn error(&self, pos: Pos, kind: ErrorKind) -> PolicyError {
        PolicyError::new(self.file, pos, kind)
    }

    fn wrong_type(&self, node: &Node, what: impl Into<String>, expected: &'static str) -> PolicyError {
        let kind = ErrorKind::WrongType { what: what.into(), expected, found: node.kind_name() };
        self.error(node.pos(), kind)
    }

    fn mapping(&self, node: Node, what: &str) -> Result<Mapping, PolicyError> {
        match node {
            Node::Mapping(map) => Ok(map),
            other => Err(self.wrong_type(&other, what, "a mapping")),
        }
    }

    fn text(&self, node: Node, what: &str) -> Result<Text, PolicyError> {
        match node {
            Node::Scalar(text) => Ok(text),
            other => Err(self.wrong_type(&other, what, "a string")),
        }
    }

    /// A scalar or a flat list of scalars.
    fn text_list(&self, key: &Text, node: Node) -> Result<TextList, PolicyError> {
        let items = match node {
            Node::Scalar(text) => vec![text],
            Node::Sequence(seq) => seq
                .items
                .into_iter()
                .map(|item| match item {
                    Node::Scalar(text) => Ok(text),
                    // Named only when wrong: this runs for every entry.
                    other => Err(self.wrong_type(&other, format!("an entry of `{}`", key.value), "a string")),
                })
                .collect::<Result<_, _>>()?,
            Node::Mapping(_) => return Err(self.wrong_type(&node, format!("`{}`", key.value), "a value or a list")),
        };
        Ok(TextList { key_pos: key.pos, items })
    }

    /// Rejects keys outside `allowed`.
    fn check_keys(
        &self,
        map: &Mapping,
        context: &'static str,
        allowed: &'static [&'static str],
    ) -> Result<(), PolicyError> {
        for (key, _) in &map.entries {
            if !allowed.contains(&key.value.as_str()) {
                let kind = ErrorKind::UnknownKey { key: key.value.clone(), context, expected: allowed };
                return Err(self.error(key.pos, kind));
            }
        }
        Ok(())
    }

    fn policy(&self, map: Mapping) -> Result<RawPolicy, PolicyError> {
        self.check_keys(&map, "the policy", POLICY_KEYS)?;
        let top = Pos { line: 1, col: 1 };
        let mut policy = RawPolicy { name: None, addresses: Vec::new(), phases: Vec::new(), phases_pos: top };
        for (key, value) in map.entries {
            match key.value.as_str() {
                "name" => policy.name = Some(self.text(value, "`name`")?),
                "addresses" => {
                    for (set_name, set) in self.mapping(value, "`addresses`")?.entries {
                        let list = self.text_list(&set_name, set)?;
                        policy.addresses.push((set_name, list));
                    }
                }
                "phases" => {
                    policy.phases_pos = key.pos;
                    for (phase_name, phase) in self.mapping(value, "`phases`")?.entries {
                        policy.phases.push(self.phase(phase_name, phase)?);
                    }
                }
                _ => unreachable!("check_keys admitted only POLICY_KEYS"),
            }
        }
        Ok(policy)
    }

    fn phase(&self, name: Text, node: Node) -> Result<RawPhase, PolicyError> {
        let map = self.mapping(node, format!("phase `{}`", name.value).as_str())?;
        self.check_keys(&map, "a phase", PHASE_KEYS)?;
        let mut phase = RawPhase {
            name,
            extends: None,
            inbound_default: None,
            egress_default: None,
            mode: None,
            reject: None,
            dns: None,
            timeouts: Vec::new(),
            rules: Vec::new(),
        };
        for (key, value) in map.entries {
            let what = || format!("`{}`", key.value);
            match key.value.as_str() {
                "extends" => phase.extends = Some(self.text(value, &what())?),
                "inbound_default" => phase.inbound_default = Some(self.text(value, &what())?),
                "egress_default" => phase.egress_default = Some(self.text(value, &what())?),
                "mode" => phase.mode = Some(self.text(value, &what())?),
                "reject" => phase.reject = Some(self.text(value, &what())?),
                "dns" => phase.dns = Some(self.dns(&key, value)?),
                "timeouts" => {
                    let map = self.mapping(value, "`timeouts`")?;
                    self.check_keys(&map, "`timeouts`", TIMEOUT_KEYS)?;
                    for (k, v) in map.entries {
                        let v = self.text(v, &format!("`timeouts.{}`", k.value))?;
                        phase.timeouts.push((k, v));
                    }
                }
                "inbound" | "egress" => {
                    let direction = if key.value == "egress" { Direction::Egress } else { Direction::Inbound };
                    let rules = match value {
                        Node::Sequence(seq) => seq.items,
                        other => return Err(self.wrong_type(&other, what(), "a list of rules")),
                    };
                    phase.rules.reserve(rules.len());
                    for rule in rules {
                        phase.rules.push(self.rule(direction, rule)?);
                    }
                }
                _ => unreachable!("check_keys admitted only PHASE_KEYS"),
            }
        }
        Ok(phase)
    }

    fn dns(&self, key: &Text, node: Node) -> Result<RawDns, PolicyError> {
        let map = self.mapping(node, "`dns`")?;
        self.check_keys(&map, "`dns`", DNS_KEYS)?;
        let mut dns = RawDns {
            key_pos: key.pos,
            resolvers: None,
            queries: None,
            refuse_with: None,
            min_ttl: None,
            max_per_name: None,
            max_total: None,
        };
        for (key, value) in map.entries {
            let what = format!("`dns.{}`", key.value);
            match key.value.as_str() {
                "resolvers" => dns.resolvers = Some(self.text_list(&key, value)?),
                "queries" => dns.queries = Some(self.text(value, &what)?),
                "refuse_with" => dns.refuse_with = Some(self.text(value, &what)?),
                "min_ttl" => dns.min_ttl = Some(self.text(value, &what)?),
                "max_addresses_per_name" => dns.max_per_name = Some(self.text(value, &what)?),
                "max_addresses" => dns.max_total = Some(self.text(value, &what)?),
                _ => unreachable!("check_keys admitted only DNS_KEYS"),
            }
        }
        Ok(dns)
    }

    fn rule(&self, direction: Direction, node: Node) -> Result<RawRule, PolicyError> {
        let map = self.mapping(node, "a rule")?;
        let (peer_key, wrong_peer_key, allowed) = match direction {
            Direction::Egress => ("to", "from", EGRESS_RULE_KEYS),
            Direction::Inbound => ("from", "to", INBOUND_RULE_KEYS),
        };
        if let Some((key, _)) = map.entries.iter().find(|(k, _)| k.value == wrong_peer_key) {
            let kind =
                ErrorKind::WrongPeerKey { direction: direction.as_str(), expected: peer_key, found: key.value.clone() };
            return Err(self.error(key.pos, kind));
        }
        self.check_keys(&map, "a rule", allowed)?;
        // A block mapping starts at its first value; its first key is where
        // an operator sees the rule begin.
        let pos = map.entries.first().map_or(map.pos, |(k, _)| k.pos.min(map.pos));
        let mut rule =
            RawRule { pos, direction, name: None, peers: None, proto: None, ports: None, action: None, optional: None };
        for (key, value) in map.entries {
            match key.value.as_str() {
                "name" => rule.name = Some(self.text(value, "`name`")?),
                "to" | "from" => rule.peers = Some(self.text_list(&key, value)?),
                "proto" => rule.proto = Some(self.text_list(&key, value)?),
                "ports" => rule.ports = Some(self.text_list(&key, value)?),
                "action" => rule.action = Some(self.text(value, "`action`")?),
                "optional" => {
                    let text = self.text(value, "`optional`")?;
                    let flag = text.as_bool().ok_or_else(|| {
                        let kind = ErrorKind::InvalidValue {
                            key: "optional",
                            value: text.value.clone(),
                            expected: "true or false",
                        };
                        self.error(text.pos, kind)
                    })?;
                    rule.optional = Some((text.pos, flag));
                }
                _ => unreachable!("check_keys admitted only the rule keys"),
            }
        }
        Ok(rule)
    }
}

/// A UTF-8 byte order mark, which some Windows editors write first: not
/// part of the text (YAML and env readers would make it part of the first
/// key).
pub(crate) fn skip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}
