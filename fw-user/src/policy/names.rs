//! DNS names in rules: `acme-v02.api.letsencrypt.org`, `*.opentok.com`,
//! `**.tokbox.com`, and what each one matches.
//!
//! The semantics are Cilium's `toFQDNs` `matchPattern` (its policy
//! language documentation, "DNS based"): names are case-insensitive and a
//! trailing dot is ignored; `*.example.com` matches exactly one label in
//! front of `example.com` (`a.example.com`, not `a.b.example.com`);
//! `**.example.com` matches one or more labels; a wildcard never matches the
//! apex (`example.com` itself). A `*` anywhere but as the whole leftmost
//! label (`a*.example.com`, `api.*.example.com`, `*`) is an error, never a
//! pattern that silently matches something else.
//!
//! Addresses are attributed to the name that was asked (the question), not to
//! the CNAME targets of the answer: a rule for `*.opentok.com` allows what a
//! query for `x.opentok.com` was answered, even when the answer went through
//! `x.opentok.com.cdn.example.net` (OpenSnitch keyed addresses on the CNAME
//! target and missed them, evilsocket/opensnitch#176).

use std::fmt;

use super::error::ErrorKind;

/// One name entry of a rule, normalized: lower case, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum NamePattern {
    /// This name only.
    Exact(String),
    /// `*.SUFFIX`: one label in front of `SUFFIX`.
    OneLabel(String),
    /// `**.SUFFIX`: one or more labels in front of `SUFFIX`.
    OneOrMore(String),
}

/// Lower case, without the trailing dot: the form names are compared in.
pub fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Letters, digits, hyphens (not first or last) and underscores (service
/// names such as `_acme-challenge` are real), in dot-separated labels of
/// 1-63 characters, 253 at most in all.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl NamePattern {
    /// Parses one `to:` entry that is a name. Errors carry no position; the
    /// caller adds it.
    pub fn parse(text: &str) -> Result<NamePattern, ErrorKind> {
        let bad = |why: &'static str| ErrorKind::BadName { name: text.to_string(), why };
        let name = normalize(text);
        let (pattern, rest): (fn(String) -> NamePattern, &str) = if let Some(rest) = name.strip_prefix("**.") {
            (NamePattern::OneOrMore, rest)
        } else if let Some(rest) = name.strip_prefix("*.") {
            (NamePattern::OneLabel, rest)
        } else {
            (NamePattern::Exact, name.as_str())
        };
        if rest.contains('*') {
            return Err(bad(
                "a `*` may only be the whole leftmost label (`*.example.com` one label, `**.example.com` one or more)",
            ));
        }
        if !valid_name(rest) {
            return Err(bad("expected dot-separated labels of letters, digits, `-` and `_`, 1-63 characters each"));
        }
        Ok(pattern(rest.to_string()))
    }

    /// Does `name` (already [`normalize`]d) match?
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => name == exact,
            NamePattern::OneLabel(suffix) => leading_labels(name, suffix).is_some_and(|front| !front.contains('.')),
            NamePattern::OneOrMore(suffix) => leading_labels(name, suffix).is_some(),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self, NamePattern::Exact(_))
    }
}

/// Whether `name`, written in a `to:` list, means exactly that name: not
/// an address or a number, not a wildcard, and a host name the policy
/// language accepts (`fw learn` writes only such names as name rules).
pub fn is_exact_name(name: &str) -> bool {
    use super::address::{parse_peer, Peer};
    matches!(NamePattern::parse(name), Ok(NamePattern::Exact(n)) if n == name)
        && matches!(parse_peer(name), Ok(Peer::Host(h)) if h == name)
}

/// The labels of `name` in front of `.suffix`, if `name` ends with it and
/// has at least one (non-empty) label more: never the apex.
fn leading_labels<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let front = name.strip_suffix(suffix)?.strip_suffix('.')?;
    (!front.is_empty() && !front.starts_with('.') && !front.ends_with('.') && !front.contains("..")).then_some(front)
}

/// What the DNS proxy needs of a phase: its name rules with their
/// patterns, and its `dns:` settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NameRules {
    /// (rule id, patterns), in file order.
    pub rules: Vec<(u32, Vec<NamePattern>)>,
    pub only_policy_names: bool,
    pub refuse_with: super::ir::Refusal,
    pub min_ttl: u32,
    /// `dns.max_addresses_per_name` and `dns.max_addresses`.
    pub max_per_name: u32,
    pub max_total: u32,
}

impl NameRules {
    /// The name rules of `phase` (its own and inherited); `None` when the
    /// phase has no `dns:` or does not exist.
    pub fn of_phase(policy: &super::ir::Policy, phase: &str) -> Option<NameRules> {
        let dns = policy.dns_of_phase(phase)?;
        let rules = policy
            .rules_of_phase(phase)?
            .into_iter()
            .filter(|r| !r.names.is_empty())
            .map(|r| (r.id, r.names.clone()))
            .collect();
        Some(NameRules {
            rules,
            only_policy_names: dns.only_policy_names,
            refuse_with: dns.refuse_with,
            min_ttl: dns.min_ttl,
            max_per_name: dns.max_per_name,
            max_total: dns.max_total,
        })
    }

    /// The rules a question for `name` (already [`normalize`]d) teaches
    /// addresses to, in file order.
    pub fn matching(&self, name: &str) -> Vec<u32> {
        self.rules.iter().filter(|(_, patterns)| patterns.iter().any(|p| p.matches(name))).map(|(id, _)| *id).collect()
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(name) => write!(f, "{name}"),
            NamePattern::OneLabel(suffix) => write!(f, "*.{suffix}"),
            NamePattern::OneOrMore(suffix) => write!(f, "**.{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(text: &str) -> NamePattern {
        NamePattern::parse(text).unwrap()
    }

    #[test]
    fn exact_names_ignore_case_and_the_trailing_dot() {
        let acme = p("ACME-v02.api.LetsEncrypt.org.");
        assert_eq!(acme, NamePattern::Exact("acme-v02.api.letsencrypt.org".into()));
        assert!(acme.matches(&normalize("acme-v02.api.letsencrypt.org.")));
        assert!(acme.matches(&normalize("Acme-V02.Api.Letsencrypt.Org")));
        assert!(!acme.matches("api.letsencrypt.org"));
        assert!(!acme.matches("x.acme-v02.api.letsencrypt.org"));
    }

    #[test]
    fn exact_names_are_what_learn_may_write_as_names() {
        for name in ["media.example.test", "localhost", "a-1.b2.test"] {
            assert!(is_exact_name(name), "{name}");
        }
        for text in [
            "*.example.test",
            "**.example.test",
            "198.18.0.1",
            "2001:db8::1",
            "1.2.3",
            "Upper.test",
            "a..b",
            "_sip.test",
        ] {
            assert!(!is_exact_name(text), "{text}");
        }
    }

    #[test]
    fn one_label_wildcard_matches_one_label_and_never_the_apex() {
        let w = p("*.opentok.com");
        assert!(w.matches("a.opentok.com"));
        assert!(w.matches("anvil-1.opentok.com"));
        assert!(!w.matches("opentok.com"), "never the apex");
        assert!(!w.matches("a.b.opentok.com"), "exactly one label");
        assert!(!w.matches("aopentok.com"), "label boundary");
        assert!(!w.matches("a.opentok.com.evil.net"));
    }

    #[test]
    fn double_star_matches_one_or_more_labels_and_never_the_apex() {
        let w = p("**.tokbox.com");
        assert!(w.matches("a.tokbox.com"));
        assert!(w.matches("a.b.c.tokbox.com"));
        assert!(!w.matches("tokbox.com"));
        assert!(!w.matches("xtokbox.com"));
        assert!(!w.matches("a.tokbox.com.evil.net"));
    }

    #[test]
    fn a_star_anywhere_else_is_an_error() {
        for text in [
            "*",
            "**",
            "*.",
            "a*.example.com",
            "api.*.example.com",
            "*example.com",
            "*.*.example.com",
            "***.x.com",
            "**x.com",
            "x.com*",
        ] {
            assert!(matches!(NamePattern::parse(text), Err(ErrorKind::BadName { .. })), "{text}");
        }
        for text in ["a..b", "-", ".x.com", "has space.com", &"a".repeat(64)] {
            assert!(NamePattern::parse(text).is_err(), "{text}");
        }
    }

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), "[a-z0-9]{1,6}"]
    }

    fn name() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(label(), 1..6)
    }

    proptest! {
        /// The matcher against its definition in labels: an exact name is
        /// the same labels; `*.S` is S with one label in front; `**.S` is S
        /// with one or more in front.
        #[test]
        fn matcher_agrees_with_the_label_definition(pattern in name(), query in name(), kind in 0..3u8, upper in any::<bool>(), dot in any::<bool>()) {
            let suffix = pattern.join(".");
            let text = match kind { 0 => suffix.clone(), 1 => format!("*.{suffix}"), _ => format!("**.{suffix}") };
            let text = if upper { text.to_ascii_uppercase() } else { text };
            let text = if dot { format!("{text}.") } else { text };
            let compiled = NamePattern::parse(&text).unwrap();
            let ends_with = query.len() > pattern.len() && query[query.len() - pattern.len()..] == pattern[..];
            let expected = match kind {
                0 => query == pattern,
                1 => ends_with && query.len() == pattern.len() + 1,
                _ => ends_with,
            };
            let asked = if dot { format!("{}.", query.join(".").to_ascii_uppercase()) } else { query.join(".") };
            prop_assert_eq!(compiled.matches(&normalize(&asked)), expected, "{} vs {}", text, asked);
        }

        /// Printing and parsing again gives the same pattern.
        #[test]
        fn display_round_trips(pattern in name(), kind in 0..3u8) {
            let suffix = pattern.join(".");
            let text = match kind { 0 => suffix, 1 => format!("*.{suffix}"), _ => format!("**.{suffix}") };
            let compiled = NamePattern::parse(&text).unwrap();
            prop_assert_eq!(NamePattern::parse(&compiled.to_string()).unwrap(), compiled);
        }
    }
}
