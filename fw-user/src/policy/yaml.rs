//! A policy file's YAML as a tree whose every node keeps its line and
//! column, built from yaml-rust2's events in one pass.
//!
//! The policy language is plain YAML: one document, a mapping at the top,
//! string keys, no anchors, aliases or tags, no key twice in a mapping.
//! The tree is as small as that allows (a scalar is its text and
//! position, a mapping a list of pairs in file order), because at 100,000
//! rules the tree is most of what parsing a policy costs: a general
//! location-aware tree (marked-yaml's, used before this module: a span of
//! two markers per node, a linked hash map per mapping) took 1.1 s and
//! most of the parse's peak memory for an 11.7 MB policy whose events
//! alone take 0.4 s.
//!
//! Which error wins when a file has several (pinned by the tests below, as
//! marked-yaml had them): a syntax error anywhere in the first document;
//! else the first anchor, tag, non-scalar key, duplicate key or top level
//! that is not a mapping, in event order (a duplicate key when its value
//! ends); else a second document, or text after the first that starts
//! none (a top-level line indented less than the first key: marked-yaml
//! stopped before it and the policy lost its tail without a word). What
//! the values mean is `raw`'s.

use std::collections::HashSet;

use yaml_rust2::{
    parser::{Event, Parser},
    scanner::Marker,
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

#[derive(Debug)]
pub(crate) enum Node {
    Scalar(Text),
    Mapping(Mapping),
    Sequence(Sequence),
}

/// A mapping: where it starts (a block mapping: at its first value, as
/// yaml-rust2 marks it) and its pairs in file order, keys unique.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub pos: Pos,
    pub entries: Vec<(Text, Node)>,
}

#[derive(Debug)]
pub(crate) struct Sequence {
    pub pos: Pos,
    pub items: Vec<Node>,
}

impl Node {
    pub fn pos(&self) -> Pos {
        match self {
            Node::Scalar(text) => text.pos,
            Node::Mapping(map) => map.pos,
            Node::Sequence(seq) => seq.pos,
        }
    }

    /// What it is, for "expected X, found Y".
    pub fn kind_name(&self) -> &'static str {
        match self {
            Node::Scalar(_) => "a string",
            Node::Mapping(_) => "a mapping",
            Node::Sequence(_) => "a list",
        }
    }
}

impl Text {
    /// YAML 1.2's core booleans, the only ones the policy accepts.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }
}

/// The first document of `text` (an empty one is an empty mapping at its
/// end); `file` only labels errors.
pub(crate) fn load(file: &str, text: &str) -> Result<Mapping, PolicyError> {
    let error = |(pos, kind): (Pos, ErrorKind)| PolicyError::new(file, pos, kind);
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let document_end = loop {
        match parser.next_token().map_err(|e| error(syntax(e)))? {
            // No document at all: an empty mapping where the text ends.
            (Event::StreamEnd, mark) => return Ok(Mapping { pos: pos(mark), entries: Vec::new() }),
            (Event::DocumentEnd, mark) => break pos(mark),
            (event, mark) => builder.event(event, mark),
        }
    };
    if let Some(problem) = builder.problem {
        return Err(error(problem));
    }
    // Every top level but a mapping is a problem above; this only keeps a
    // parser that ends a document without its node from panicking here.
    let Some((root, end)) = builder.root else {
        return Err(error((document_end, top_level())));
    };
    // The policy is the first document: anything but the stream's end
    // after it is a second one, which a YAML loader would drop silently.
    match parser.next_token() {
        Ok((Event::StreamEnd, _)) => Ok(root),
        Ok((_, mark)) => Err(error((pos(mark), ErrorKind::SecondDocument))),
        // Text after the document that does not start another: a line
        // indented less than the top level's, where the top level ended.
        Err(_) => Err(error((end, ErrorKind::TopLevelEnds))),
    }
}

fn pos(mark: Marker) -> Pos {
    Pos { line: mark.line(), col: mark.col() + 1 }
}

fn syntax(e: yaml_rust2::ScanError) -> (Pos, ErrorKind) {
    (pos(*e.marker()), ErrorKind::Syntax(e.info().to_string()))
}

/// Mappings with more pairs than this find duplicate keys through a hash
/// set; smaller ones (every rule) by comparing with each key.
const LINEAR_KEYS: usize = 8;

enum Frame {
    Mapping {
        map: Mapping,
        /// A key read, its value not yet.
        key: Option<Text>,
        /// The keys, once the mapping outgrows `LINEAR_KEYS`.
        seen: Option<HashSet<String>>,
    },
    Sequence(Sequence),
}

/// Builds the tree from events. After the first problem it only waits for
/// the document's end (a syntax error further on still wins: it stops the
/// parser).
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// The top-level mapping, and where it ended.
    root: Option<(Mapping, Pos)>,
    problem: Option<(Pos, ErrorKind)>,
}

impl Builder {
    /// Takes one event of the document (between its start and its end).
    fn event(&mut self, event: Event, mark: Marker) {
        let at = pos(mark);
        match event {
            _ if self.problem.is_some() => {}
            Event::StreamStart | Event::DocumentStart | Event::Nothing => {}
            Event::StreamEnd | Event::DocumentEnd => unreachable!("load handles the ends"),
            Event::Alias(_) => self.fail(at, anchors()),
            Event::Scalar(_, _, anchor, _) if anchor != 0 => self.fail(at, anchors()),
            Event::Scalar(_, _, _, Some(_)) => self.fail(at, tags()),
            Event::Scalar(value, ..) => self.node(Node::Scalar(Text { value, pos: at })),
            Event::MappingStart(_, Some(_)) | Event::SequenceStart(_, Some(_)) => self.fail(at, tags()),
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) if anchor != 0 => self.fail(at, anchors()),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_mapping = matches!(event, Event::MappingStart(..));
                if self.stack.is_empty() && !is_mapping {
                    return self.fail(at, top_level());
                }
                if let Some(Frame::Mapping { key: None, .. }) = self.stack.last() {
                    return self.fail(at, ErrorKind::Syntax("mapping keys must be plain strings".into()));
                }
                self.stack.push(if is_mapping {
                    Frame::Mapping { map: Mapping { pos: at, entries: Vec::new() }, key: None, seen: None }
                } else {
                    Frame::Sequence(Sequence { pos: at, items: Vec::new() })
                });
            }
            Event::MappingEnd | Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Mapping { map, .. }) if self.stack.is_empty() => self.root = Some((map, at)),
                Some(Frame::Mapping { map, .. }) => self.node(Node::Mapping(map)),
                Some(Frame::Sequence(seq)) => self.node(Node::Sequence(seq)),
                None => unreachable!("the parser balances starts and ends"),
            },
        }
    }

    /// A complete node: a key, a value, an item, or the top level.
    fn node(&mut self, node: Node) {
        match self.stack.last_mut() {
            // A top-level mapping ends in `event`; anything else at the top
            // is not a policy.
            None => self.fail(node.pos(), top_level()),
            Some(Frame::Sequence(seq)) => seq.items.push(node),
            Some(Frame::Mapping { key: slot @ None, .. }) => {
                let Node::Scalar(key) = node else { unreachable!("a mapping or list as a key fails at its start") };
                *slot = Some(key);
            }
            Some(Frame::Mapping { map, key, seen }) => {
                let key = key.take().expect("matched above");
                let is_new = match seen {
                    Some(seen) => seen.insert(key.value.clone()),
                    None => map.entries.iter().all(|(k, _)| k.value != key.value),
                };
                if !is_new {
                    let first_line =
                        map.entries.iter().find(|(k, _)| k.value == key.value).map_or(0, |(k, _)| k.pos.line);
                    return self.fail(key.pos, ErrorKind::DuplicateKey { key: key.value, first_line });
                }
                map.entries.push((key, node));
                if seen.is_none() && map.entries.len() > LINEAR_KEYS {
                    *seen = Some(map.entries.iter().map(|(k, _)| k.value.clone()).collect());
                }
            }
        }
    }

    fn fail(&mut self, at: Pos, kind: ErrorKind) {
        self.problem.get_or_insert((at, kind));
        self.stack.clear();
    }
}

fn anchors() -> ErrorKind {
    ErrorKind::Syntax("anchors and aliases are not supported".into())
}

fn tags() -> ErrorKind {
    ErrorKind::Syntax("YAML tags are not supported".into())
}

fn top_level() -> ErrorKind {
    ErrorKind::WrongType { what: "the policy".into(), expected: "a mapping (name:, phases:)", found: "something else" }
}

#[cfg(test)]
mod tests {
    //! `load` against marked-yaml (the loader it replaced, on the same
    //! yaml-rust2) as the oracle: the same tree, or the same first error,
    //! on generated YAML with duplicate keys, anchors, aliases, tags,
    //! complex keys, second documents and broken syntax spliced in.

    use proptest::prelude::*;

    use super::*;

    /// A tree in a form both loaders' results convert to.
    #[derive(Debug, PartialEq)]
    enum Tree {
        Scalar(String, Pos),
        Mapping(Pos, Vec<(String, Pos, Tree)>),
        Sequence(Pos, Vec<Tree>),
    }

    fn of_node(node: Node) -> Tree {
        match node {
            Node::Scalar(t) => Tree::Scalar(t.value, t.pos),
            Node::Mapping(map) => of_mapping(map),
            Node::Sequence(seq) => Tree::Sequence(seq.pos, seq.items.into_iter().map(of_node).collect()),
        }
    }

    fn of_mapping(map: Mapping) -> Tree {
        Tree::Mapping(map.pos, map.entries.into_iter().map(|(k, v)| (k.value, k.pos, of_node(v))).collect())
    }

    fn mine(text: &str) -> Result<Tree, (Pos, ErrorKind)> {
        load("x.yaml", text).map(of_mapping).map_err(|e| (Pos { line: e.line, col: e.col }, e.kind))
    }

    fn oracle(text: &str) -> Result<Tree, (Pos, ErrorKind)> {
        use marked_yaml::{loader::LoadError, Marker, Node as M, Span};
        let at = |m: &Marker| Pos { line: m.line(), col: m.column() };
        let start = |span: &Span| span.start().map(at).unwrap_or_default();
        fn tree(node: &M, start: &dyn Fn(&Span) -> Pos) -> Tree {
            match node {
                M::Scalar(s) => Tree::Scalar(s.as_str().to_string(), start(s.span())),
                M::Mapping(m) => Tree::Mapping(
                    start(m.span()),
                    m.iter().map(|(k, v)| (k.as_str().to_string(), start(k.span()), tree(v, start))).collect(),
                ),
                M::Sequence(s) => Tree::Sequence(start(s.span()), s.iter().map(|n| tree(n, start)).collect()),
            }
        }
        let options = marked_yaml::loader::LoaderOptions::default().error_on_duplicate_keys(true);
        let root = marked_yaml::loader::parse_yaml_with_options(0, text, options).map_err(|error| match &error {
            LoadError::DuplicateKey(inner) => (
                start(inner.key.span()),
                ErrorKind::DuplicateKey {
                    key: inner.key.as_str().to_string(),
                    first_line: inner.prev_key.span().start().map_or(0, |m| m.line()),
                },
            ),
            LoadError::TopLevelMustBeMapping(m) => (at(m), top_level()),
            LoadError::ScanError(m, e) => (at(m), ErrorKind::Syntax(e.info().to_string())),
            LoadError::UnexpectedAnchor(m) => (at(m), anchors()),
            LoadError::UnexpectedTag(m) => (at(m), tags()),
            LoadError::MappingKeyMustBeScalar(m) => {
                (at(m), ErrorKind::Syntax("mapping keys must be plain strings".into()))
            }
            other => panic!("not an error of the policy's options: {other}"),
        })?;
        // The second document, as raw.rs looked for it with marked-yaml.
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0;
        loop {
            match parser.next_token() {
                Ok((Event::DocumentStart, mark)) => {
                    documents += 1;
                    if documents == 2 {
                        return Err((pos(mark), ErrorKind::SecondDocument));
                    }
                }
                Ok((Event::StreamEnd, _)) => break,
                Ok(_) => {}
                Err(e) if documents >= 2 => return Err((pos(*e.marker()), ErrorKind::SecondDocument)),
                // Where marked-yaml dropped the tail silently: since
                // `load`, an error where the top level ended.
                Err(_) => return Err((root.span().end().map(at).unwrap_or_default(), ErrorKind::TopLevelEnds)),
            }
        }
        Ok(tree(&root, &start))
    }

    #[derive(Clone, Debug)]
    enum Gen {
        Scalar(&'static str),
        Mapping(Vec<(&'static str, Gen)>),
        Sequence(Vec<Gen>),
    }

    fn gen() -> impl Strategy<Value = Gen> {
        let scalars = prop::sample::select(vec!["a", "x y", "1", "true", "'q'", "\"d\"", ""]);
        // Twenty keys and mappings of up to fourteen pairs: duplicates among
        // few keys and among more than LINEAR_KEYS.
        let keys = prop::sample::select(vec![
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "to",
        ]);
        scalars.prop_map(Gen::Scalar).prop_recursive(4, 64, 14, move |inner| {
            prop_oneof![
                prop::collection::vec((keys.clone(), inner.clone()), 0..15).prop_map(Gen::Mapping),
                prop::collection::vec(inner, 0..4).prop_map(Gen::Sequence),
            ]
        })
    }

    fn flow(node: &Gen, out: &mut String) {
        match node {
            Gen::Scalar(s) => out.push_str(if s.is_empty() { "''" } else { s }),
            Gen::Mapping(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { ", " });
                    out.push_str(k);
                    out.push_str(": ");
                    flow(v, out);
                }
                out.push('}');
            }
            Gen::Sequence(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { ", " });
                    flow(item, out);
                }
                out.push(']');
            }
        }
    }

    /// Block style down to `flow_from` levels, flow style below.
    fn block(node: &Gen, indent: usize, flow_from: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        let value = |v: &Gen, out: &mut String| match v {
            Gen::Scalar(s) => {
                out.push(' ');
                out.push_str(s);
                out.push('\n');
            }
            Gen::Mapping(p) if p.is_empty() => out.push_str(" {}\n"),
            Gen::Sequence(i) if i.is_empty() => out.push_str(" []\n"),
            _ if indent / 2 + 1 >= flow_from => {
                out.push(' ');
                flow(v, out);
                out.push('\n');
            }
            _ => {
                out.push('\n');
                block(v, indent + 2, flow_from, out);
            }
        };
        match node {
            Gen::Mapping(pairs) => {
                for (k, v) in pairs {
                    out.push_str(&format!("{pad}{k}:"));
                    value(v, out);
                }
            }
            Gen::Sequence(items) => {
                for item in items {
                    out.push_str(&format!("{pad}-"));
                    value(item, out);
                }
            }
            Gen::Scalar(_) => value(node, out),
        }
    }

    const SPLICES: &[&str] = &[
        "&x ", "*x", "!t ", "? ", "[", "]", "{", "}", ": ", "- ", "\n---\n", "\n...\n", "\t", "#", "\"", ",", "\n  ",
        "a: ",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn loads_as_marked_yaml_did(
            root in gen(),
            flow_from in 1usize..5,
            splices in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(SPLICES)), 0..3),
            indent_first in any::<bool>(),
        ) {
            // The first line indented alone: the top level ends at the next.
            let mut text = String::from(if indent_first { " " } else { "" });
            block(&root, 0, flow_from, &mut text);
            for (at, splice) in splices {
                text.insert_str(at.index(text.len() + 1), splice);
            }
            prop_assert_eq!(mine(&text), oracle(&text), "text:\n{}", text);
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_mapping_and_the_first_error_wins() {
        assert_eq!(mine(""), Ok(Tree::Mapping(Pos { line: 1, col: 1 }, Vec::new())));
        assert_eq!(mine("# only a comment\n"), oracle("# only a comment\n"));
        // A duplicate key before an anchor: the duplicate; a syntax error
        // after both: the syntax error.
        let text = "a: 1\na: 2\nb: &x 3\n";
        assert!(matches!(mine(text), Err((Pos { line: 2, col: 1 }, ErrorKind::DuplicateKey { first_line: 1, .. }))));
        assert!(matches!(mine(&format!("{text}c: [\n")), Err((_, ErrorKind::Syntax(_)))));
        // A duplicate among many keys (the hash set) names the first line.
        let many: String = (0..20).map(|i| format!("k{i}: v\n")).collect::<String>() + "k3: again\n";
        assert!(matches!(mine(&many), Err((Pos { line: 21, col: 1 }, ErrorKind::DuplicateKey { first_line: 4, .. }))));
        assert_eq!(mine(&many), oracle(&many));
    }
}
