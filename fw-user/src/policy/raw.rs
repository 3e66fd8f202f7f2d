//! The policy exactly as written: YAML nodes read into structs that keep the
//! position of every value, with the shape checked (unknown keys, lists where
//! lists belong) but no meaning given yet. Values are still strings, with
//! `${VARS}` unexpanded; [`super::lower`] validates and normalizes them.

use fw_common::Direction;
use marked_yaml::{
    loader::{parse_yaml_with_options, LoadError, LoaderOptions},
    types::{MarkedMappingNode, MarkedScalarNode},
    Node, Span,
};

use super::{
    error::{ErrorKind, PolicyError},
    ir::Pos,
};

/// A scalar with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Text {
    pub value: String,
    pub pos: Pos,
}

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
    let text = skip_bom(text);
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = parse_yaml_with_options(0, text, options).map_err(|e| load_error(file, e))?;
    if let Some(pos) = second_document(text) {
        return Err(PolicyError::new(file, pos, ErrorKind::SecondDocument));
    }
    let reader = Reader { file };
    reader.policy(&root)
}

/// Where a second document starts, if there is one. Only a line starting
/// with `---` or `...` can end the first document, so text without one
/// (nearly every policy) is not parsed a second time.
fn second_document(text: &str) -> Option<Pos> {
    if !text.lines().any(|line| line.starts_with("---") || line.starts_with("...")) {
        return None;
    }
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    let mut documents = 0;
    loop {
        match parser.next_token() {
            Ok((yaml_rust2::Event::DocumentStart, mark)) => {
                documents += 1;
                if documents == 2 {
                    return Some(Pos { line: mark.line(), col: mark.col() + 1 });
                }
            }
            Ok((yaml_rust2::Event::StreamEnd, _)) => return None,
            Ok(_) => {}
            // Past the first document, which loaded: the second is broken,
            // but it is there.
            Err(e) => return Some(Pos { line: e.marker().line(), col: e.marker().col() + 1 }),
        }
    }
}

fn load_error(file: &str, error: LoadError) -> PolicyError {
    let at = |m: &marked_yaml::Marker| Pos { line: m.line(), col: m.column() };
    let (pos, kind) = match &error {
        LoadError::DuplicateKey(inner) => {
            let first_line = inner.prev_key.span().start().map_or(0, |m| m.line());
            (
                inner.key.span().start().map(at).unwrap_or_default(),
                ErrorKind::DuplicateKey { key: inner.key.as_str().to_string(), first_line },
            )
        }
        LoadError::TopLevelMustBeMapping(m) => (
            at(m),
            ErrorKind::WrongType {
                what: "the policy".into(),
                expected: "a mapping (name:, phases:)",
                found: "something else",
            },
        ),
        LoadError::ScanError(m, e) => (at(m), ErrorKind::Syntax(e.info().to_string())),
        LoadError::UnexpectedAnchor(m) => (at(m), ErrorKind::Syntax("anchors and aliases are not supported".into())),
        LoadError::UnexpectedTag(m) => (at(m), ErrorKind::Syntax("YAML tags are not supported".into())),
        LoadError::MappingKeyMustBeScalar(m) => (at(m), ErrorKind::Syntax("mapping keys must be plain strings".into())),
        other => (Pos::default(), ErrorKind::Syntax(other.to_string())),
    };
    PolicyError::new(file, pos, kind)
}

fn pos_of(span: &Span) -> Pos {
    span.start().map(|m| Pos { line: m.line(), col: m.column() }).unwrap_or_default()
}

fn kind_name(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a string",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn error(&self, pos: Pos, kind: ErrorKind) -> PolicyError {
        PolicyError::new(self.file, pos, kind)
    }

    fn wrong_type(&self, node: &Node, what: impl Into<String>, expected: &'static str) -> PolicyError {
        let kind = ErrorKind::WrongType { what: what.into(), expected, found: kind_name(node) };
        self.error(pos_of(node.span()), kind)
    }

    fn mapping<'n>(&self, node: &'n Node, what: &str) -> Result<&'n MarkedMappingNode, PolicyError> {
        node.as_mapping().ok_or_else(|| self.wrong_type(node, what, "a mapping"))
    }

    fn text(&self, node: &Node, what: &str) -> Result<Text, PolicyError> {
        let scalar = node.as_scalar().ok_or_else(|| self.wrong_type(node, what, "a string"))?;
        Ok(scalar_text(scalar))
    }

    /// A scalar or a flat list of scalars.
    fn text_list(&self, key: &MarkedScalarNode, node: &Node) -> Result<TextList, PolicyError> {
        let key_pos = pos_of(key.span());
        let items = match node {
            Node::Scalar(s) => vec![scalar_text(s)],
            Node::Sequence(seq) => seq
                .iter()
                .map(|item| self.text(item, &format!("an entry of `{}`", key.as_str())))
                .collect::<Result<_, _>>()?,
            Node::Mapping(_) => return Err(self.wrong_type(node, format!("`{}`", key.as_str()), "a value or a list")),
        };
        Ok(TextList { key_pos, items })
    }

    /// Rejects keys outside `allowed`.
    fn check_keys(
        &self,
        map: &MarkedMappingNode,
        context: &'static str,
        allowed: &'static [&'static str],
    ) -> Result<(), PolicyError> {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let kind = ErrorKind::UnknownKey { key: key.as_str().to_string(), context, expected: allowed };
                return Err(self.error(pos_of(key.span()), kind));
            }
        }
        Ok(())
    }

    fn policy(&self, root: &Node) -> Result<RawPolicy, PolicyError> {
        let map = self.mapping(root, "the policy")?;
        self.check_keys(map, "the policy", POLICY_KEYS)?;
        let top = Pos { line: 1, col: 1 };
        let mut policy = RawPolicy { name: None, addresses: Vec::new(), phases: Vec::new(), phases_pos: top };
        for (key, value) in map.iter() {
            match key.as_str() {
                "name" => policy.name = Some(self.text(value, "`name`")?),
                "addresses" => {
                    for (set_name, set) in self.mapping(value, "`addresses`")?.iter() {
                        policy.addresses.push((scalar_text(set_name), self.text_list(set_name, set)?));
                    }
                }
                "phases" => {
                    policy.phases_pos = pos_of(key.span());
                    for (phase_name, phase) in self.mapping(value, "`phases`")?.iter() {
                        policy.phases.push(self.phase(phase_name, phase)?);
                    }
                }
                _ => unreachable!("check_keys admitted only POLICY_KEYS"),
            }
        }
        Ok(policy)
    }

    fn phase(&self, name: &MarkedScalarNode, node: &Node) -> Result<RawPhase, PolicyError> {
        let map = self.mapping(node, format!("phase `{}`", name.as_str()).as_str())?;
        self.check_keys(map, "a phase", PHASE_KEYS)?;
        let mut phase = RawPhase {
            name: scalar_text(name),
            extends: None,
            inbound_default: None,
            egress_default: None,
            mode: None,
            reject: None,
            dns: None,
            timeouts: Vec::new(),
            rules: Vec::new(),
        };
        for (key, value) in map.iter() {
            let what = format!("`{}`", key.as_str());
            match key.as_str() {
                "extends" => phase.extends = Some(self.text(value, &what)?),
                "inbound_default" => phase.inbound_default = Some(self.text(value, &what)?),
                "egress_default" => phase.egress_default = Some(self.text(value, &what)?),
                "mode" => phase.mode = Some(self.text(value, &what)?),
                "reject" => phase.reject = Some(self.text(value, &what)?),
                "dns" => phase.dns = Some(self.dns(key, value)?),
                "timeouts" => {
                    let map = self.mapping(value, "`timeouts`")?;
                    self.check_keys(map, "`timeouts`", TIMEOUT_KEYS)?;
                    for (k, v) in map.iter() {
                        phase.timeouts.push((scalar_text(k), self.text(v, &format!("`timeouts.{}`", k.as_str()))?));
                    }
                }
                "inbound" | "egress" => {
                    let direction = if key.as_str() == "egress" { Direction::Egress } else { Direction::Inbound };
                    let rules = value.as_sequence().ok_or_else(|| self.wrong_type(value, what, "a list of rules"))?;
                    for rule in rules.iter() {
                        phase.rules.push(self.rule(direction, rule)?);
                    }
                }
                _ => unreachable!("check_keys admitted only PHASE_KEYS"),
            }
        }
        Ok(phase)
    }

    fn dns(&self, key: &MarkedScalarNode, node: &Node) -> Result<RawDns, PolicyError> {
        let map = self.mapping(node, "`dns`")?;
        self.check_keys(map, "`dns`", DNS_KEYS)?;
        let mut dns = RawDns {
            key_pos: pos_of(key.span()),
            resolvers: None,
            queries: None,
            refuse_with: None,
            min_ttl: None,
            max_per_name: None,
            max_total: None,
        };
        for (key, value) in map.iter() {
            let what = format!("`dns.{}`", key.as_str());
            match key.as_str() {
                "resolvers" => dns.resolvers = Some(self.text_list(key, value)?),
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

    fn rule(&self, direction: Direction, node: &Node) -> Result<RawRule, PolicyError> {
        let map = self.mapping(node, "a rule")?;
        let (peer_key, wrong_peer_key, allowed) = match direction {
            Direction::Egress => ("to", "from", EGRESS_RULE_KEYS),
            Direction::Inbound => ("from", "to", INBOUND_RULE_KEYS),
        };
        if let Some(key) = map.keys().find(|k| k.as_str() == wrong_peer_key) {
            let kind = ErrorKind::WrongPeerKey {
                direction: direction.as_str(),
                expected: peer_key,
                found: key.as_str().to_string(),
            };
            return Err(self.error(pos_of(key.span()), kind));
        }
        self.check_keys(map, "a rule", allowed)?;
        // A block mapping's span starts at its first value; its first key is
        // where an operator sees the rule begin.
        let first_key = map.keys().next().map(|k| pos_of(k.span()));
        let pos = first_key.map_or(pos_of(map.span()), |k| k.min(pos_of(map.span())));
        let mut rule =
            RawRule { pos, direction, name: None, peers: None, proto: None, ports: None, action: None, optional: None };
        for (key, value) in map.iter() {
            match key.as_str() {
                "name" => rule.name = Some(self.text(value, "`name`")?),
                "to" | "from" => rule.peers = Some(self.text_list(key, value)?),
                "proto" => rule.proto = Some(self.text_list(key, value)?),
                "ports" => rule.ports = Some(self.text_list(key, value)?),
                "action" => rule.action = Some(self.text(value, "`action`")?),
                "optional" => {
                    let text = self.text(value, "`optional`")?;
                    let flag = value.as_scalar().and_then(MarkedScalarNode::as_bool).ok_or_else(|| {
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

fn scalar_text(scalar: &MarkedScalarNode) -> Text {
    Text { value: scalar.as_str().to_string(), pos: pos_of(scalar.span()) }
}

/// A UTF-8 byte order mark, which some Windows editors write first: not
/// part of the text (YAML and env readers would make it part of the first
/// key).
pub(crate) fn skip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}
