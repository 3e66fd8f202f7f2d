//! `${NAME}` variables: values from an env file (the `KEY=VALUE` format of
//! OpenVidu's `/opt/openvidu/.env`), else from the process environment.
//!
//! A peer entry that is exactly one `${NAME}` takes a *list*: OpenVidu 2.x
//! names its media nodes `KMS_URIS=["ws://IP:8888/kurento",...]` (a JSON
//! array of strings), and an operator's `NTP_SERVERS=a,b c` is a list too.
//! Every element counts; a value that does not parse as a list is an error
//! naming the variable, never its first element.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    os::unix::ffi::OsStringExt,
};

use super::{
    error::{ErrorKind, PolicyError},
    ir::Pos,
    raw::skip_bom,
};

/// Where variable values come from.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    file_values: HashMap<String, String>,
    /// Fall back to the process environment (off in tests, so that a
    /// developer's environment cannot change their outcome).
    use_process_env: bool,
    /// What the process environment answered, by name (`None`: unset):
    /// the inputs of a compile beyond its files ([`Vars::consulted`]).
    consulted: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
}

/// The process environment's variables a policy read, with their values
/// (raw bytes; `None`: unset).
pub type Consulted = Vec<(String, Option<Vec<u8>>)>;

/// Why a string could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// The variable is unset or empty.
    Unset(String),
    /// `${` without a closing `}` or with an invalid name.
    Malformed,
    /// The value of `name` is (or looks like) a list that cannot be used
    /// here: it does not parse, or it is part of a longer entry.
    BadList { name: String, problem: String },
}

impl Vars {
    /// The process environment only (no env file).
    pub fn from_process_env() -> Vars {
        Vars { file_values: HashMap::new(), use_process_env: true, consulted: RefCell::default() }
    }

    /// Values of env-file text read elsewhere (`file` names it in errors),
    /// then the process environment.
    pub fn from_env_text(file: &str, text: &str) -> Result<Vars, PolicyError> {
        Ok(Vars { file_values: parse_env_file(file, text)?, use_process_env: true, consulted: RefCell::default() })
    }

    /// Only these values; the process environment is not consulted.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Vars {
        Vars {
            file_values: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            use_process_env: false,
            consulted: RefCell::default(),
        }
    }

    /// The env file's value of `name` alone (not the environment's), when
    /// not empty.
    pub fn get_from_file(&self, name: &str) -> Option<String> {
        self.file_values.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// Whether `name` is given at all, even empty (`KEY=` in an env file
    /// says "not configured" on purpose).
    pub fn defines(&self, name: &str) -> bool {
        self.file_values.contains_key(name) || (self.use_process_env && self.process_env(name).is_some())
    }

    /// The value of `name`; `None` if unset or empty (both mean "not
    /// configured" in an OpenVidu env file, where `KEY=` is common).
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match self.file_values.get(name) {
            Some(v) => Some(v.clone()),
            None if self.use_process_env => self.process_env(name).and_then(|v| String::from_utf8(v).ok()),
            None => None,
        };
        value.filter(|v| !v.is_empty())
    }

    /// Every variable read from the process environment so far, and what
    /// it said: a compile of the same files gives the same result wherever
    /// these say the same (`source::precompiled` checks them).
    pub fn consulted(&self) -> Consulted {
        self.consulted.borrow().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn process_env(&self, name: &str) -> Option<Vec<u8>> {
        let value = std::env::var_os(name).map(OsStringExt::into_vec);
        self.consulted.borrow_mut().insert(name.to_string(), value.clone());
        value
    }

    /// Replaces every `${NAME}` in `text`.
    pub(crate) fn expand(&self, text: &str) -> Result<String, ExpandError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(ExpandError::Malformed)?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ExpandError::Malformed);
            }
            out.push_str(&self.get(name).ok_or_else(|| ExpandError::Unset(name.to_string()))?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Expands an entry that may hold a list. An entry that is exactly
    /// `${NAME}` becomes the elements of NAME's value ([`parse_list`]; an
    /// empty list is unset, like an empty value). In a longer entry a
    /// variable is one string, and one whose value is a `[...]` list is an
    /// error: `ws://${HOSTS}:8888` cannot mean every host.
    pub(crate) fn expand_list(&self, text: &str) -> Result<Vec<String>, ExpandError> {
        if let Some(name) = whole_reference(text) {
            let value = self.get(name).ok_or_else(|| ExpandError::Unset(name.to_string()))?;
            let items =
                parse_list(&value).map_err(|problem| ExpandError::BadList { name: name.to_string(), problem })?;
            if items.is_empty() {
                return Err(ExpandError::Unset(name.to_string()));
            }
            return Ok(items);
        }
        let expanded = self.expand(text)?;
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(ExpandError::Malformed)?;
            let name = &after[..end];
            if self.get(name).is_some_and(|v| v.trim_start().starts_with('[')) {
                let problem = "a list-valued variable must be the whole entry (`\"${NAME}\"`)".to_string();
                return Err(ExpandError::BadList { name: name.to_string(), problem });
            }
            rest = &after[end + 1..];
        }
        Ok(vec![expanded])
    }
}

/// `NAME` if `text` is exactly `${NAME}`.
fn whole_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix("${")?.strip_suffix('}')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(name)
}

/// The elements of a variable's value: a JSON array of strings when it
/// starts with `[` (OpenVidu's `KMS_URIS`), else words separated by commas
/// or white space (one word is a one-element list).
pub(crate) fn parse_list(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.starts_with('[') {
        let items: Vec<String> = serde_json::from_str(value)
            .map_err(|e| format!("not a list of strings like [\"ws://10.0.0.2:8888/kurento\"] ({e})"))?;
        return Ok(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    }
    Ok(value.split([',', ' ', '\t']).filter(|w| !w.is_empty()).map(str::to_string).collect())
}

/// `KEY=VALUE` lines; blank lines and `#` comments are skipped, an `export `
/// prefix is allowed, and a value in matching single or double quotes loses
/// them. A line that is none of these is an error with its line number.
fn parse_env_file(file: &str, text: &str) -> Result<HashMap<String, String>, PolicyError> {
    let mut values = HashMap::new();
    for (index, raw_line) in skip_bom(text).lines().enumerate() {
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let bad = || {
            let pos = Pos { line: index + 1, col: 1 };
            PolicyError::new(file, pos, ErrorKind::BadEnvLine(raw_line.to_string()))
        };
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|&(open, close)| value.strip_prefix(open)?.strip_suffix(close))
            .unwrap_or(value);
        values.insert(key.to_string(), unquoted.to_string());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_comments_and_quotes() {
        let text = "# OpenVidu\nDOMAIN_OR_PUBLIC_IP=203.0.113.10\n\nexport A='x y'\nB=\"q\"\nEMPTY=\n";
        let values = parse_env_file(".env", text).unwrap();
        assert_eq!(values["DOMAIN_OR_PUBLIC_IP"], "203.0.113.10");
        assert_eq!(values["A"], "x y");
        assert_eq!(values["B"], "q");
        assert_eq!(values["EMPTY"], "");
    }

    #[test]
    fn env_file_error_names_the_line() {
        let err = parse_env_file(".env", "A=1\nnot a pair\n").unwrap_err();
        assert_eq!((err.line, err.col), (2, 1));
        assert_eq!(err.to_string(), ".env:2:1: env file line is not KEY=VALUE: `not a pair`");
    }

    #[test]
    fn expansion_replaces_every_reference_and_reports_unset_or_empty() {
        let vars = Vars::from_pairs([("HOST", "203.0.113.5"), ("PORT", "8443"), ("EMPTY", "")]);
        assert_eq!(vars.expand("https://${HOST}:${PORT}/x").unwrap(), "https://203.0.113.5:8443/x");
        assert_eq!(vars.expand("plain").unwrap(), "plain");
        assert_eq!(vars.expand("${NOPE}"), Err(ExpandError::Unset("NOPE".into())));
        assert_eq!(vars.expand("${EMPTY}"), Err(ExpandError::Unset("EMPTY".into())));
        assert_eq!(vars.expand("${OPEN"), Err(ExpandError::Malformed));
        assert_eq!(vars.expand("${a b}"), Err(ExpandError::Malformed));
    }
}
